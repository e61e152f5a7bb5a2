"""`dim up` gives each process its own metrics port: DIM_METRICS_PORT and the ones after it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.nats_server import free_port, port_open

ROLES = ("orchestrator", "projector", "batcher", "sim-1", "sim-2")


def _free_run(count: int) -> int:
    """A port whose next `count - 1` ports are free too (bounded tries)."""
    for _ in range(50):
        base = free_port()
        if base + count <= 65535 and not any(
            port_open("127.0.0.1", base + i) for i in range(count)
        ):
            return base
    raise AssertionError(f"no {count} free ports in a row")


def test_dim_up_serves_each_process_on_the_next_port_and_says_which(tmp_path: Path) -> None:
    base = _free_run(len(ROLES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIM_")}
    env |= {"PYTHONUNBUFFERED": "1", "DIM_METRICS_PORT": str(base)}
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "up",
                "--nats-port",
                str(free_port()),
                "--gateway-port",
                str(free_port()),
                "--data-dir",
                str(tmp_path / "data"),
                "--workers",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 90
            while "ready:" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            out = log_path.read_text()
            line = next(x for x in out.splitlines() if "/metrics, /healthz, /readyz on" in x)
            said = dict(re.findall(r"([\w-]+) :(\d+)", line))
            assert said == {role: str(base + i) for i, role in enumerate(ROLES)}, line
            with httpx.Client(timeout=5) as http:
                for i, role in enumerate(ROLES):
                    url = f"http://127.0.0.1:{base + i}/readyz"
                    deadline = time.monotonic() + 30
                    while (r := http.get(url)).status_code != 200:
                        assert time.monotonic() < deadline, (role, r.text)
                        time.sleep(0.2)
                    assert r.json()["role"].split()[0] == (
                        "worker" if role.startswith("sim") else role
                    )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(log_path.read_text())
