"""The container image (Dockerfile) as a user runs it: `dim --help`, and `dim up` in a container
answering a chat completion from the official `openai` SDK through the published gateway port.

Needs a Docker engine (skipped, saying so, without one). The image is `DIM_TEST_IMAGE` when set
(one `just image` built from this tree); else this builds it with infra/docker/image.sh — the
same as `just image`: it tags dim:<version> and dim:latest, and Docker's layer cache makes it
quick when the lockfile has not changed (the first build downloads the locked dependencies).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import nats_source

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 90


def _docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    """The tag of an image of this tree: DIM_TEST_IMAGE, else built now."""
    problem = nats_source.docker_problem()
    if problem is not None:
        pytest.skip(f"needs a Docker engine: {problem}")
    given = os.environ.get("DIM_TEST_IMAGE")
    if given:
        return given
    done = subprocess.run(
        ["infra/docker/image.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"the image did not build:\n{done.stderr[-4000:]}"
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_the_image_runs_dim(image: str) -> None:
    out = _docker("run", "--rm", image, "--help")
    assert "usage: dim" in out and "gateway" in out and "worker" in out, out
    user = _docker("run", "--rm", "--entrypoint", "id", image, "-u").strip()
    assert user != "0", "the image runs as root"


@pytest.fixture
def dim_up(image: str) -> Iterator[tuple[str, str]]:
    """`dim up` in a container, its gateway published on a loopback port: (container, URL)."""
    name = f"dim-test-up-{uuid.uuid4().hex[:8]}"
    _docker("run", "-d", "--name", name, "-p", "127.0.0.1::8000", image, "up", "--workers", "2")
    try:
        port = _docker("port", name, "8000/tcp").splitlines()[0].rsplit(":", 1)[1]
        yield name, f"http://127.0.0.1:{port}"
    finally:
        logs = _docker("logs", "--tail", "40", name, check=False)
        _docker("rm", "-f", "-v", name, check=False)
        print(logs)


def _wait_ready(url: str, container: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    logs = _docker("logs", "--tail", "60", container, check=False)
    raise AssertionError(f"{url}/readyz not ready in {READY_TIMEOUT_S} s ({last})\n{logs}")


def _health(container: str) -> str:
    state = json.loads(_docker("inspect", "-f", "{{json .State.Health}}", container))
    return str(state["Status"]) if state else "none"


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 180)
def test_dim_up_in_a_container_answers_the_openai_sdk(dim_up: tuple[str, str]) -> None:
    from openai import OpenAI

    container, url = dim_up
    _wait_ready(url, container)
    out = _docker("exec", container, "dim", "keys", "create", "--name", "image-test")
    key = re.search(r"dim_\S+", out)
    assert key, out

    client = OpenAI(base_url=f"{url}/v1", api_key=key.group(0), max_retries=0, timeout=30)
    deadline = time.monotonic() + 30  # the workers register a moment after the gateway is ready
    while not any(m.id == "sim-small" for m in client.models.list().data):
        assert time.monotonic() < deadline, "no worker serves sim-small"
        time.sleep(0.5)
    answer = client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "hello from a container"}]
    )
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    # the dashboard's files are in the installed package, not only in the source tree
    with urllib.request.urlopen(f"{url}/ui", timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read().lower()

    # the image's HEALTHCHECK (infra/docker/healthcheck.py) finds the gateway of `dim up`
    deadline = time.monotonic() + 60
    while (health := _health(container)) != "healthy":
        assert health in ("starting", "healthy"), f"health {health}"
        assert time.monotonic() < deadline, f"still {health} after 60 s"
        time.sleep(2)
