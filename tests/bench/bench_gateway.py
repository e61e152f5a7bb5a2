"""Benchmark: chat completions through the whole mesh vs. the same engine behind a bare endpoint.

In one run, on this machine: an embedded nats-server, the gateway, an orchestrator, a projector
and two simulated workers at zero delay (each its own process, as `dim up` runs them), and,
for comparison, the simulated engine behind a bare Litestar endpoint (same server, framework and
engine, no mesh). Then: non-streaming requests one at a time (added latency p50/p99), with many
in flight (requests/s), and 100 concurrent streaming clients (SSE tokens/s delivered).

The upstream path, in the same run: a worker with `--engine openai` in front of a zero-latency
OpenAI-shaped mock (`tests/bench/mock_upstream.py`, its own process), serving its own model
through the same gateway; its added latency is measured against calling the mock directly, and
its requests/s against the simulated path's.

    just bench-gateway
    python -m tests.bench.bench_gateway --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.accounts.keys import create_key
from services.local_bus import local_bus, worker_identity
from services.nats_server import free_port, port_open
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from services.settings import Settings
from services.up import child_env
from tests.bench.bench_jobs import embedded_server, pct, stop_all, table
from tests.bench.loadgen import Client, HttpError

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16}
UPSTREAM_MODEL = "mock-small"  # the openai worker's model, which the mock answers
UPSTREAM_BODY = BODY | {"model": UPSTREAM_MODEL}


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child process of the bench."""
    return subprocess.Popen([sys.executable, "-m", *args], env=env)


async def timed(
    client: Client, path: str, n: int, concurrency: int, body: dict[str, object] = BODY
) -> tuple[list[float], float]:
    """`n` non-streaming requests, `concurrency` at a time: latencies (ms) and wall time (s)."""
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            t = time.perf_counter()
            await client.post(path, body)
            latencies.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return latencies, time.perf_counter() - start


async def streams(client: Client, path: str, clients: int, each: int) -> tuple[int, float]:
    """`clients` concurrent streaming clients, `each` requests each: tokens delivered and wall time."""
    tokens = 0
    body = BODY | {"stream": True, "stream_options": {"include_usage": True}, "max_tokens": 64}

    async def one_client() -> None:
        nonlocal tokens
        for _ in range(each):
            text = b"".join([chunk async for chunk in client.stream(path, body)]).decode()
            events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
            assert events[-1] == "[DONE]", events[-3:]
            tokens += json.loads(events[-2])["usage"]["completion_tokens"]

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return tokens, time.perf_counter() - start


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gw_port, bare_port, mock_port = free_port(), free_port(), free_port()
        settings = Settings(
            metrics_port=0,  # many processes on one host
            data_dir=Path(tmp),
            namespace="benchgw",
            gateway_port=gw_port,
            rate_limit_rpm=0,
            tenant_rate_limit_rpm=0,
            jwt_secret="bench-secret-bench-secret-bench-secret",
            sim_ttft_ms=0,
            sim_tokens_per_s=0,
            capacity=256,
            log_level="WARNING",
        )
        nodes = {"w1": settings.models, "w2": settings.models, "w-up": (UPSTREAM_MODEL,)}
        local = local_bus(settings, nodes) if args.secure else None
        server = embedded_server(
            Path(tmp), "dim-bench-gw", local.server_config(inline=True) if local else ""
        )
        server.start()
        settings = settings.model_copy(update={"nats_url": server.url})

        def as_(identity: str) -> Settings:  # as `dim up` starts each process
            return local.settings_for(settings, identity) if local else settings

        procs: list[subprocess.Popen[bytes]] = []
        last: list[subprocess.Popen[bytes]] = []
        bus = await connect(as_("admin"), "bench")
        try:
            await ensure_topology(bus, settings)
            if local:  # as `dim up` does: the workers' keys, so their reports are believed
                for node, key in local.worker_keys(nodes).items():
                    await enroll(bus, node, key, by="bench")
            _, key = await create_key(
                bus, principal_id="bench", tenant="bench", roles=("member",), actor="bench"
            )
            for role, node in (
                ("orchestrator", None),
                ("projector", None),
                ("worker", "w1"),
                ("worker", "w2"),
                ("gateway", None),
            ):
                who = worker_identity(node) if node else role
                env = child_env(as_(who), **({"DIM_NODE_ID": node} if node else {}))
                procs.append(start("services.cli", role, env=env))
            procs.append(start("tests.bench.bare_app", str(bare_port)))
            # stopped after the rest, so the openai worker never sees its upstream gone
            last.append(
                start("tests.bench.mock_upstream", str(mock_port), "--models", UPSTREAM_MODEL)
            )
            upstream_env = child_env(
                as_(worker_identity("w-up")),
                DIM_NODE_ID="w-up",
                DIM_ENGINE="openai",
                DIM_UPSTREAM_URL=f"http://127.0.0.1:{mock_port}/v1",
                DIM_MODELS=UPSTREAM_MODEL,
            )
            mock_deadline = time.monotonic() + 30
            while not port_open("127.0.0.1", mock_port):  # the worker checks it on start
                if last[0].poll() is not None or time.monotonic() > mock_deadline:
                    raise SystemExit("bench: the mock upstream did not start")
                await asyncio.sleep(0.1)
            procs.append(start("services.cli", "worker", env=upstream_env))
            auth = {"authorization": f"Bearer {key}"}
            mesh = Client("127.0.0.1", gw_port, auth)
            bare = Client("127.0.0.1", bare_port, auth)
            mock = Client("127.0.0.1", mock_port)
            path = "/v1/chat/completions"
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if port_open("127.0.0.1", bare_port):
                            await mesh.post(path, BODY)
                            await mesh.post(path, UPSTREAM_BODY)
                            break
                    except (OSError, HttpError):
                        if time.monotonic() > deadline:
                            raise
                        ended = [p.args for p in procs + last if p.poll() is not None]
                        if ended:
                            raise SystemExit(
                                f"bench: a process ended while starting: {ended}"
                            ) from None
                    await asyncio.sleep(0.2)
                print("warming up ...", file=sys.stderr)
                await timed(mesh, path, 200, 16)
                await timed(bare, path, 200, 16)
                await timed(mesh, path, 200, 16, UPSTREAM_BODY)
                await timed(mock, path, 200, 16, UPSTREAM_BODY)
                print("one at a time ...", file=sys.stderr)
                mesh_1, _ = await timed(mesh, path, args.latency_requests, 1)
                bare_1, _ = await timed(bare, path, args.latency_requests, 1)
                up_1, _ = await timed(mesh, path, args.latency_requests, 1, UPSTREAM_BODY)
                mock_1, _ = await timed(mock, path, args.latency_requests, 1, UPSTREAM_BODY)
                print("many in flight ...", file=sys.stderr)
                mesh_n, mesh_wall = await timed(mesh, path, args.requests, args.concurrency)
                up_n, up_wall = await timed(
                    mesh, path, args.requests, args.concurrency, UPSTREAM_BODY
                )
                bare_n, bare_wall = await timed(bare, path, args.requests, args.concurrency)
                mock_n, mock_wall = await timed(
                    mock, path, args.requests, args.concurrency, UPSTREAM_BODY
                )
                print("streaming clients ...", file=sys.stderr)
                tokens, sse_wall = await streams(
                    mesh, path, args.stream_clients, args.stream_requests
                )
            finally:
                mesh.close()
                bare.close()
                mock.close()
            p50m, p50b = statistics.median(mesh_1), statistics.median(bare_1)
            p50u, p50k = statistics.median(up_1), statistics.median(mock_1)
            mesh_rps, up_rps = len(mesh_n) / mesh_wall, len(up_n) / up_wall
            print()
            print(
                f"dim gateway bench — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                f"nats-server {server.version()}; gateway, orchestrator, projector, 2 simulated workers (zero delay), 1 openai worker "
                "in front of a zero-latency mock; max_tokens 16; NATS "
                + ("secured: TLS, one identity per role" if args.secure else "open, no TLS")
            )
            print()
            print(
                table(
                    [
                        ("mesh: latency p50, one at a time (ms)", f"{p50m:.2f}", ""),
                        ("mesh: latency p99, one at a time (ms)", f"{pct(mesh_1, 99):.2f}", ""),
                        ("bare endpoint: latency p50 (ms)", f"{p50b:.2f}", ""),
                        ("bare endpoint: latency p99 (ms)", f"{pct(bare_1, 99):.2f}", ""),
                        ("added latency p50 (ms)", f"{p50m - p50b:.2f}", "≤ 5"),
                        ("added latency p99 (ms)", f"{pct(mesh_1, 99) - pct(bare_1, 99):.2f}", ""),
                        (
                            f"mesh: requests/s, {args.concurrency} in flight",
                            f"{mesh_rps:,.0f}",
                            "≥ 500",
                        ),
                        (
                            f"bare endpoint: requests/s, {args.concurrency} in flight",
                            f"{len(bare_n) / bare_wall:,.0f}",
                            "",
                        ),
                        (
                            "mesh / bare requests/s",
                            f"{mesh_rps / (len(bare_n) / bare_wall):.2f}x",
                            "",
                        ),
                        (
                            f"mesh: latency p50 at {args.concurrency} in flight (ms)",
                            f"{statistics.median(mesh_n):.2f}",
                            "",
                        ),
                        (
                            f"SSE tokens/s delivered to {args.stream_clients} streaming clients",
                            f"{tokens / sse_wall:,.0f}",
                            "",
                        ),
                        ("upstream path: latency p50, one at a time (ms)", f"{p50u:.2f}", ""),
                        (
                            "upstream path: latency p99, one at a time (ms)",
                            f"{pct(up_1, 99):.2f}",
                            "",
                        ),
                        ("mock upstream direct: latency p50 (ms)", f"{p50k:.2f}", ""),
                        ("mock upstream direct: latency p99 (ms)", f"{pct(mock_1, 99):.2f}", ""),
                        ("upstream path: added latency p50 (ms)", f"{p50u - p50k:.2f}", "≤ 5"),
                        (
                            "upstream path: added latency p99 (ms)",
                            f"{pct(up_1, 99) - pct(mock_1, 99):.2f}",
                            "",
                        ),
                        (
                            f"upstream path: requests/s, {args.concurrency} in flight",
                            f"{up_rps:,.0f}",
                            "",
                        ),
                        (
                            f"mock upstream direct: requests/s, {args.concurrency} in flight",
                            f"{len(mock_n) / mock_wall:,.0f}",
                            "",
                        ),
                        (
                            "upstream / simulated path requests/s",
                            f"{up_rps / mesh_rps:.2f}x",
                            "≥ 0.75x",
                        ),
                    ]
                )
            )
        finally:
            await bus.close()
            stop_all(procs)
            stop_all(last)
            server.stop()


def main() -> None:
    """Parse flags and run the benchmark."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--latency-requests", type=int, default=300)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream-clients", type=int, default=100)
    p.add_argument("--stream-requests", type=int, default=3, help="requests per streaming client")
    p.add_argument(
        "--secure",
        action="store_true",
        help="NATS as `dim up` secures it: TLS, one identity per role (docs/security.md)",
    )
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
