"""End to end as a new user: `dim up` as a real process, then the `dim` commands against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.nats_server import free_port


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DIM_")} | {
        "PYTHONUNBUFFERED": "1"
    }


@pytest.fixture
def system(tmp_path: Path) -> Iterator[str]:
    """`dim up` with an embedded nats-server on a free port; yields its NATS URL."""
    port = free_port()
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--nats-port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            "2",
            "--sim-ttft-ms",
            "5",
            "--sim-tokens-per-s",
            "400",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while "ready:" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.1)
        assert "ready: 2/2 simulated workers" in (tmp_path / "up.log").read_text()
        yield f"nats://127.0.0.1:{port}"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0
        out = (tmp_path / "up.log").read_text()
        assert "draining workers" in out
        assert "nats-server stopped; bye" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "up.log").read_text())


def dim(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=_env() | {"DIM_NATS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_new_user_submits_a_job_and_reads_its_history(system: str) -> None:
    run = dim(system, "submit", "hello", "--model", "sim-small")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.split()) > 5  # the streamed answer
    m = re.search(
        r"completed \(stop\)\s+prompt 1 \+ completion (\d+) = (\d+) tokens\s+job (\w+)", run.stderr
    )
    assert m, run.stderr
    job_id = m.group(3)

    shown = dim(system, "job", job_id)
    assert shown.returncode == 0, shown.stderr
    order = [
        "job.submitted",
        "job.planned",
        "task.dispatched",
        "task.started",
        "task.completed",
        "job.completed",
    ]
    positions = [shown.stdout.index(t) for t in order]
    assert positions == sorted(positions)
    assert "status   completed" in shown.stdout
    assert run.stdout.strip() in shown.stdout

    nodes = dim(system, "nodes")
    assert nodes.returncode == 0
    assert "sim-1" in nodes.stdout
    assert "sim-2" in nodes.stdout

    deadline = time.monotonic() + 10
    while job_id not in (listed := dim(system, "jobs")).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_id in listed.stdout
    assert "completed" in listed.stdout

    missing = dim(system, "submit", "hi", "--model", "nope")
    assert missing.returncode == 1
    assert "failed (model_not_served): no live node serves model 'nope'" in missing.stderr

    check = dim(system, "projections", "rebuild", "--check")
    assert check.returncode == 0 and "identical" in check.stdout, check.stdout + check.stderr


def test_commands_explain_an_unreachable_server() -> None:
    run = dim(f"nats://127.0.0.1:{free_port()}", "jobs")
    assert run.returncode == 1
    assert "cannot reach NATS" in run.stderr
    assert "dim up" in run.stderr
