"""`/metrics`, `/healthz` and `/readyz` of every process but the gateway, as real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx

from events.bus import Bus
from services.nats_server import free_port
from services.settings import Settings
from services.up import child_env
from tests.mesh import all_of, spawn

ROLES = ("orchestrator", "projector", "batcher", "worker")


async def _ready(http: httpx.AsyncClient, base: str, timeout_s: float = 45) -> httpx.Response:
    """`/readyz` once it answers 200 (the last answer fails the test after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    last: object = "no answer"
    while time.monotonic() < deadline:
        try:
            r = await http.get(f"{base}/readyz")
        except httpx.TransportError as exc:
            last = exc
        else:
            if r.status_code == 200:
                return r
            last = r.text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{base}/readyz never 200; last: {last}")


async def test_every_process_serves_metrics_health_and_readiness_on_its_port(
    bus: Bus, settings: Settings
) -> None:
    ports = {role: free_port() for role in ROLES}
    procs = [
        spawn(settings, role, DIM_METRICS_PORT=str(port), DIM_NODE_ID="w1")
        for role, port in ports.items()
    ]
    with all_of(*procs):
        async with httpx.AsyncClient(timeout=5) as http:
            for role, port in ports.items():
                base = f"http://127.0.0.1:{port}"
                ready = await _ready(http, base)
                assert ready.json()["status"] == "ready", ready.text
                assert ready.json()["role"].split()[0] == role
                health = await http.get(f"{base}/healthz")
                assert health.status_code == 200 and health.json()["status"] == "ok"
                text = (await http.get(f"{base}/metrics")).text
                # the process's own metrics, once each, and who it is
                for name in (
                    "process_cpu_seconds_total",
                    "process_resident_memory_bytes",
                    "python_gc_objects_collected_total",
                    "python_info",
                ):
                    assert text.count(f"# TYPE {name} ") == 1, (role, name)
                assert f'dim_process_info{{role="{role}",' in text, text[:2000]
                assert (await http.get(f"{base}/nope")).status_code == 404
            worker = (await http.get(f"http://127.0.0.1:{ports['worker']}/metrics")).text
            assert 'dim_worker_info{engine="simulated"} 1.0' in worker
            projector = (await http.get(f"http://127.0.0.1:{ports['projector']}/metrics")).text
            assert "dim_projector_views_behind 0.0" in projector
            orchestrator = (
                await http.get(f"http://127.0.0.1:{ports['orchestrator']}/metrics")
            ).text
            assert "dim_orchestrator_jobs_active 0.0" in orchestrator
            assert "dim_orchestrator_append_conflicts_total 0.0" in orchestrator


async def test_readiness_says_what_is_missing_until_nats_answers(settings: Settings) -> None:
    # No server at this URL: the process keeps trying to connect, alive but not ready.
    nowhere = settings.model_copy(
        update={"nats_url": f"nats://127.0.0.1:{free_port()}", "connect_timeout_s": 30.0}
    )
    port = free_port()
    with spawn(nowhere, "orchestrator", DIM_METRICS_PORT=str(port)):
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=5) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = await http.get(f"{base}/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server never answered"
                    await asyncio.sleep(0.1)
            assert health.status_code == 200
            ready = await http.get(f"{base}/readyz")
            assert ready.status_code == 503
            assert ready.json() == {
                "status": "unavailable",
                "role": "orchestrator",
                "missing": ["nats connection"],
            }


async def test_a_taken_metrics_port_stops_the_process_naming_the_setting(
    settings: Settings,
) -> None:
    port = free_port()
    first = spawn(settings, "batcher", DIM_METRICS_PORT=str(port))
    with first:
        async with httpx.AsyncClient(timeout=5) as http:
            await _ready(http, f"http://127.0.0.1:{port}")
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "orchestrator"],
            env=child_env(settings, DIM_METRICS_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert f"metrics port 127.0.0.1:{port}" in second.stderr, second.stderr
        assert "DIM_METRICS_PORT" in second.stderr
