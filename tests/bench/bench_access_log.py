"""Benchmark: the gateway's access log on vs off (`DIM_ACCESS_LOG`), as a ratio in one run.

Two gateways against the same mesh (an embedded nats-server, an orchestrator, a projector and
two simulated workers at zero delay, each its own process, as `bench_gateway` runs them): one
with `DIM_ACCESS_LOG=true`, one with `DIM_ACCESS_LOG=false`, both at `DIM_LOG_LEVEL=INFO` (the
default) and the same `DIM_LOG_FORMAT`. Each gateway's stderr, where dim logs, goes to a file,
as an operator's service manager would send it to one. The same load runs on both in
alternating rounds (non-streaming chat completions at fixed concurrency; the side that goes
first alternates too), so the machine's slow and fast stretches fall on both sides. Per side:
requests/s over all rounds, latency p50/p99, the gateway process's CPU per request, and the
ratios on/off. It checks that the "on" gateway did write a line per request, and the "off" one
none. For scale on a noisy machine: the middleware alone, in this process, around an app that
answers at once (µs per request, its line to a file); and `--control`, an A/A run with the log
off on both gateways, shows how far two like gateways differ here. Not a test.

    just bench-access-log
    python -m tests.bench.bench_access_log --rounds 16 --requests 500 --concurrency 32
    python -m tests.bench.bench_access_log --log-format json
    python -m tests.bench.bench_access_log --control
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.access_log import PRINCIPAL, access_log
from gateway.principal import Principal
from services.accounts.keys import create_key
from services.logs import configure, request_id
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.settings import Settings
from services.up import child_env
from tests.bench.bench_gateway import BODY, start, timed
from tests.bench.bench_jobs import cpu_s, embedded_server, pct, stop_all
from tests.bench.loadgen import Client, HttpError

PATH = "/v1/chat/completions"


async def ready(client: Client, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until `client`'s gateway answers a chat completion."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.post(PATH, BODY)
            return
        except (OSError, HttpError):
            if time.monotonic() > deadline:
                raise
            ended = [p.args for p in procs if p.poll() is not None]
            if ended:
                raise SystemExit(f"bench: a process ended while starting: {ended}") from None
        await asyncio.sleep(0.2)


def start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a gateway whose stderr (its log) goes to the file `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "gateway"], env=env, stderr=out
        )


async def middleware_us(log_format: str, log: Path, n: int) -> tuple[float, float]:
    """The access-log middleware alone, in this process: µs per request around an app that
    answers at once, with and without it, the line going to the file `log` as the gateway
    writes it (its formatter, level INFO)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    principal = Principal("bench", "bench", ("member",), key_id="01JDBENCHKEY0000000000000")
    scope = {"type": "http", "method": "POST", "path": PATH, PRINCIPAL: principal}
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure("INFO", log_format, "gateway")
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    try:
        with log.open("w") as out:
            handler.setStream(out)
            times = {}
            for name, asgi in (("on", access_log(app)), ("off", app)):
                token = request_id.set("01JEBENCHREQUEST000000000")
                t = time.perf_counter()
                for _ in range(n):
                    await asgi(scope, receive, send)
                times[name] = (time.perf_counter() - t) / n * 1e6
                request_id.reset(token)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    return times["on"], times["off"]


def access_lines(log: Path) -> int:
    """How many access-log lines of chat completions `log` holds."""
    with log.open("rb") as f:
        return sum(1 for line in f if b"POST /v1/chat/completions" in line)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ports = {"on": free_port(), "off": free_port()}
        settings = Settings(
            metrics_port=0,  # many processes on one host
            data_dir=Path(tmp),
            namespace="benchal",
            rate_limit_rpm=0,
            tenant_rate_limit_rpm=0,
            jwt_secret="bench-secret-bench-secret-bench-secret",
            sim_ttft_ms=0,
            sim_tokens_per_s=0,
            capacity=256,
            log_level="WARNING",  # the rest of the mesh as bench_gateway runs it
        )
        server = embedded_server(Path(tmp), "dim-bench-al")
        server.start()
        settings = settings.model_copy(update={"nats_url": server.url})
        procs: list[subprocess.Popen[bytes]] = []
        gateways: dict[str, subprocess.Popen[bytes]] = {}
        logs = {side: Path(tmp) / f"gateway-{side}.log" for side in ports}
        bus = await connect(settings, "bench")
        try:
            await ensure_topology(bus, settings)
            _, key = await create_key(
                bus, principal_id="bench", tenant="bench", roles=("member",), actor="bench"
            )
            for role, node in (
                ("orchestrator", None),
                ("projector", None),
                ("worker", "w1"),
                ("worker", "w2"),
            ):
                env = child_env(settings, **({"DIM_NODE_ID": node} if node else {}))
                procs.append(start("services.cli", role, env=env))
            for side, port in ports.items():
                gw = settings.model_copy(
                    update={
                        "gateway_port": port,
                        "log_level": "INFO",
                        "log_format": args.log_format,
                        "access_log": side == "on" and not args.control,
                    }
                )
                gateways[side] = start_gateway(child_env(gw), logs[side])
            procs += gateways.values()
            auth = {"authorization": f"Bearer {key}"}
            clients = {side: Client("127.0.0.1", port, auth) for side, port in ports.items()}
            latencies: dict[str, list[float]] = {side: [] for side in ports}
            wall = dict.fromkeys(ports, 0.0)
            cpu = dict.fromkeys(ports, 0.0)
            rps_rounds: dict[str, list[float]] = {side: [] for side in ports}
            try:
                for client in clients.values():
                    await ready(client, procs)
                print("warming up ...", file=sys.stderr)
                for client in clients.values():
                    await timed(client, PATH, 300, args.concurrency)
                before = {side: access_lines(log) for side, log in logs.items()}
                for r in range(args.rounds):
                    order = ("on", "off") if r % 2 == 0 else ("off", "on")
                    for side in order:
                        pid = gateways[side].pid
                        c0 = cpu_s([pid])
                        lat, w = await timed(clients[side], PATH, args.requests, args.concurrency)
                        cpu[side] += cpu_s([pid]) - c0
                        latencies[side] += lat
                        wall[side] += w
                        rps_rounds[side].append(len(lat) / w)
                    print(
                        f"round {r + 1}/{args.rounds}: on {rps_rounds['on'][-1]:,.0f}, "
                        f"off {rps_rounds['off'][-1]:,.0f} requests/s",
                        file=sys.stderr,
                    )
            finally:
                for client in clients.values():
                    client.close()
            await asyncio.sleep(0.5)  # the last lines written
            us_on, us_off = await middleware_us(args.log_format, Path(tmp) / "inproc.log", 20_000)
            written = {side: access_lines(log) - before[side] for side, log in logs.items()}
            sent = args.rounds * args.requests
            if written["on"] < (0 if args.control else sent) or written["off"] != 0:
                raise SystemExit(
                    f"bench: access-log lines on {written['on']}, off {written['off']}; "
                    f"expected {0 if args.control else sent} and 0"
                )
            n = {side: len(latencies[side]) for side in ports}
            rps = {side: n[side] / wall[side] for side in ports}
            p50 = {side: statistics.median(latencies[side]) for side in ports}
            p99 = {side: pct(latencies[side], 99) for side in ports}
            cpu_ms = {side: cpu[side] / n[side] * 1000 for side in ports}
            line_bytes = logs["on"].stat().st_size / max(1, access_lines(logs["on"]))
            print()
            print(
                f"dim access-log bench — {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}, nats-server {server.version()}; "
                f"two gateways (access log {'off on both: A/A control' if args.control else 'on / off'}), orchestrator, projector, 2 simulated "
                f"workers (zero delay); max_tokens 16; {args.rounds} rounds of {args.requests} "
                f"requests each side at {args.concurrency} in flight, alternating; log format "
                f"{args.log_format}, each gateway's stderr to a file "
                f"(on: {written['on']:,} access lines measured, ~{line_bytes:.0f} bytes each)"
            )
            print()

            def row(name: str, fmt: str, values: dict[str, float]) -> tuple[str, str, str]:
                return (
                    name,
                    f"{values['on']:{fmt}} / {values['off']:{fmt}}",
                    f"{values['on'] / values['off']:.3f}x",
                )

            rps_min = {side: min(rps_rounds[side]) for side in ports}
            rps_max = {side: max(rps_rounds[side]) for side in ports}
            paired = [on / off for on, off in zip(rps_rounds["on"], rps_rounds["off"], strict=True)]
            rows = [
                row(f"requests/s, {args.concurrency} in flight (all rounds)", ",.0f", rps),
                (
                    "requests/s, on/off of each round: median (min-max)",
                    f"{min(paired):.3f}-{max(paired):.3f}",
                    f"{statistics.median(paired):.3f}x",
                ),
                row("requests/s, slowest round", ",.0f", rps_min),
                row("requests/s, fastest round", ",.0f", rps_max),
                row(f"latency p50 at {args.concurrency} in flight (ms)", ".2f", p50),
                row(f"latency p99 at {args.concurrency} in flight (ms)", ".2f", p99),
                row("gateway CPU per request (ms)", ".3f", cpu_ms),
            ]
            rows.append(
                (
                    "the middleware alone, in-process, line to a file (µs/request)",
                    f"{us_on:.1f} / {us_off:.1f}",
                    f"+{us_on - us_off:.1f} µs",
                )
            )
            w = max(len(r[0]) for r in rows)
            v = max(10, *(len(r[1]) for r in rows))
            print(f"| {'metric':<{w}} | {'on / off':>{v}} | {'on/off':>8} |")
            print(f"|{'-' * (w + 2)}|{'-' * (v + 2)}|{'-' * 10}|")
            for a, b, c in rows:
                print(f"| {a:<{w}} | {b:>{v}} | {c:>8} |")
            print()
            wins = sum(ratio > 1 for ratio in paired)
            print(
                f"requests/s lost to the access log: {(1 - rps['on'] / rps['off']) * 100:.1f}%; "
                f"the log-on gateway was the faster in {wins} of {args.rounds} rounds"
            )
        finally:
            await bus.close()
            stop_all(procs)
            server.stop()


def main() -> None:
    """Parse flags and run the benchmark."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=16, help="rounds per side, alternating")
    p.add_argument("--requests", type=int, default=500, help="requests per round per side")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--control",
        action="store_true",
        help="A/A: the log off on both gateways, to see how far two like gateways differ here",
    )
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
