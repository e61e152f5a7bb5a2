"""Benchmark: one tenant's 1,000-shard collaborative job, and another tenant's latency meanwhile.

Everything runs as `dim up` runs it: an embedded nats-server, one orchestrator, one projector and
three simulated workers (32 slots each, 30 ms to the first token, 80 tokens/s: `dim up`'s
defaults), each its own process. Tenant acme submits one collaborative job of `--shards` inputs
(`max_tokens` 16 each); tenant globex submits a one-token job every `--every-s` seconds, before
(idle) and while the fan-out runs. Printed: the fan-out's wall time against the workers' full
speed (every slot busy from the first moment), and globex's latency idle and during, as
ratios. Not a test.

    just bench-fanout                         # 1,000 shards, DIM_QUEUE_DEPTH 64
    just bench-fanout --shards 1000 --depth 0
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from events.bus import Bus
from events.history import read_events
from events.ids import new_id
from events.inference import Prompt, SamplingParams
from events.job_log import submit_event
from events.jobs import JobSubmitted
from events.patterns import Collaborative
from services.process import connect, ensure_topology
from services.settings import Settings
from services.up import child_env
from tests.bench.bench_jobs import Ends, cpu_s, embedded_server, pct, stop_all

_WORKERS = 3
_SLOTS = 32
_TTFT_MS = 30.0
_TOKENS_PER_S = 80.0
_MAX_TOKENS = 16


async def steps(bus: Bus, job_ids: list[str]) -> list[tuple[str, float]]:
    """Median ms between consecutive events of the jobs (by the events' own timestamps)."""
    gaps: dict[str, list[float]] = defaultdict(list)
    for job_id in job_ids:
        events = [
            e async for _, e in read_events(bus, bus.names.jobs_stream, bus.names.job_all(job_id))
        ]
        for a, b in itertools.pairwise(events):
            gaps[f"{a.type} → {b.type}"].append((b.at - a.at).total_seconds() * 1000)
    return [(k, statistics.median(v)) for k, v in gaps.items() if len(v) >= len(job_ids) // 2]


async def one_token(bus: Bus, ends: Ends, ids: list[str] | None = None) -> tuple[float, float]:
    """globex's one-token job: submit to its answer (its task's result, which the gateway
    answers a one-task job from) and to its end (`job.completed`), in ms."""
    job_id = new_id()
    if ids is not None:
        ids.append(job_id)
    ended = ends.expect(job_id)
    start = time.perf_counter()
    job = JobSubmitted(
        job_id=job_id,
        model="sim-small",
        prompt=Prompt(text="hello"),
        params=SamplingParams(max_tokens=1),
        owner="globex-user",
        tenant="globex",
    )
    await submit_event(bus, job)
    await asyncio.wait_for(ended, 120)
    if job_id in ends.failed:
        raise SystemExit(f"globex's job {job_id} failed: the bench measures nothing")
    answered = ends.answered.get(job_id, ends.done[job_id])
    return (answered - start) * 1000, (ends.done[job_id] - start) * 1000


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="dim-bench-fanout-") as tmp:
        server = embedded_server(Path(tmp), "dim-bench-fanout")
        server.start()
        settings = Settings(
            metrics_port=0,  # many processes on one host
            data_dir=Path(tmp),
            namespace="bench",
            models=("sim-small",),
            nats_url=server.url,
            sim_ttft_ms=_TTFT_MS,
            sim_tokens_per_s=_TOKENS_PER_S,
            capacity=_SLOTS,
            queue_depth=args.depth,
            log_level="WARNING",
        )
        procs: list[subprocess.Popen[bytes]] = []

        def spawn(role: str, node: str | None = None) -> None:
            env = child_env(settings, **({"DIM_NODE_ID": node} if node else {}))
            procs.append(subprocess.Popen([sys.executable, "-m", "services.cli", role], env=env))

        bus = await connect(settings, "bench")
        try:
            await ensure_topology(bus, settings)
            spawn("orchestrator")
            spawn("projector")
            for i in range(_WORKERS):
                spawn("worker", f"fan-{i}")
            ends = Ends(bus)
            await ends.subscribe(answers=True)
            await asyncio.sleep(3)  # the workers' first heartbeats
            for _ in range(5):  # warm up
                await one_token(bus, ends)
            idle_both = [await one_token(bus, ends) for _ in range(args.idle)]

            inputs = tuple(Prompt(text=f"shard {i}") for i in range(args.shards))
            fan_id = new_id()
            fan_ended = ends.expect(fan_id)
            fan = JobSubmitted(
                job_id=fan_id,
                pattern="collaborative",
                model="sim-small",
                params=SamplingParams(max_tokens=_MAX_TOKENS),
                owner="acme-user",
                tenant="acme",
                collaborative=Collaborative(inputs=inputs),
            )
            pids = [p.pid for p in procs]
            cpu0 = cpu_s(pids)
            start = time.perf_counter()
            await submit_event(bus, fan)
            during_both: list[tuple[float, float]] = []
            during_ids: list[str] = []
            while not fan_ended.done() and time.perf_counter() - start < args.timeout_s:
                tick = time.perf_counter()
                during_both.append(await one_token(bus, ends, during_ids))
                await asyncio.sleep(max(0.0, args.every_s - (time.perf_counter() - tick)))
            if not fan_ended.done():
                raise SystemExit(f"the {args.shards}-shard job did not end in {args.timeout_s}s")
            if fan_id in ends.failed:
                raise SystemExit("the fan-out job failed: the bench measures nothing")
            wall = ends.done[fan_id] - start
            cpu = cpu_s(pids) - cpu0
            where = await steps(bus, during_ids)
        finally:
            await bus.close()
            stop_all(procs)
            server.stop()

    task_s = _TTFT_MS / 1000 + _MAX_TOKENS / _TOKENS_PER_S
    full_speed = args.shards / (_WORKERS * _SLOTS) * task_s
    rows = [
        ("shards", f"{args.shards}", ""),
        ("DIM_QUEUE_DEPTH", f"{args.depth}", ""),
        ("fan-out wall time", f"{wall:.2f} s", f"{wall / full_speed:.2f}x full speed"),
        ("  full speed (every slot busy)", f"{full_speed:.2f} s", ""),
        ("  CPU, all dim processes", f"{cpu:.1f} s", ""),
        ("globex jobs during", f"{len(during_both)}", ""),
    ]
    for which, label in ((0, "answer"), (1, "job.completed")):
        idle = [b[which] for b in idle_both]
        during = [b[which] for b in during_both] or [0.0]
        idle_med, during_med = statistics.median(idle), statistics.median(during)
        rows += [
            (
                f"globex to {label}: idle median / p95",
                f"{idle_med:.0f} / {pct(idle, 95):.0f} ms",
                "",
            ),
            (
                "  during: median / p95 / max",
                f"{during_med:.0f} / {pct(during, 95):.0f} / {max(during):.0f} ms",
                f"{during_med / idle_med:.2f}x / {pct(during, 95) / idle_med:.2f}x idle median",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\nbench-fanout on {os.cpu_count()} CPUs (python {sys.version.split()[0]})")
    for name, value, ratio in rows:
        print(f"  {name:<{width}}  {value:>22}  {ratio}")
    print("  where globex's time went while the fan-out ran (median ms between its events):")
    for step, ms in where:
        print(f"    {step:<40} {ms:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=64, help="DIM_QUEUE_DEPTH")
    parser.add_argument("--idle", type=int, default=20, help="globex jobs before the fan-out")
    parser.add_argument("--every-s", type=float, default=0.25, help="globex's pace during it")
    parser.add_argument("--timeout-s", type=float, default=180.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
