"""Benchmark: completed jobs/s and submit→first-token / submit→completed latency through the mesh.

Everything runs on this machine as `dim up` runs it: an embedded nats-server, one orchestrator, one
projector and N simulated workers at zero delay, each its own process; this process submits jobs
and times them from plain NATS subscriptions. Two phases in one run:

- latency: one job at a time (nothing queues), submit→first token and submit→completed, with
  where the time goes per hop (from the events' own timestamps);
- throughput: many jobs in flight, completed jobs/s and the latency under that load.

For scale, it also measures one awaited JetStream publish round trip in the same run. Not a test.

    just bench                                   # the defaults below
    just bench --jobs 5000 --concurrency 128 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from nats.aio.msg import Msg

from events.bus import Bus
from events.envelope import Envelope
from events.history import read_events
from events.ids import new_id
from events.inference import Prompt, SamplingParams
from events.job_log import submit
from events.jobs import JobSubmitted
from services.local_bus import local_bus, worker_identity
from services.nats_server import EmbeddedNats
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from services.settings import Settings
from services.up import child_env


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def embedded_server(data_dir: Path, name: str, extra: str = "") -> EmbeddedNats:
    """The bench's nats-server, set up as `dim up` sets it up (CPU policy, Go threads), unless
    the environment's DIM_SCHED_BATCH / DIM_NATS_GOMAXPROCS say otherwise (`extra`: more of its
    configuration, e.g. `dim up`'s TLS and identities)."""
    settings = Settings()
    return EmbeddedNats(
        data_dir,
        port=0,
        name=name,
        sched_batch=settings.sched_batch,
        gomaxprocs=settings.nats_gomaxprocs,
        extra=extra,
    )


def spawn(settings: Settings, role: str, node: str | None = None) -> subprocess.Popen[bytes]:
    """Start one dim service process for the bench."""
    tuned = settings.model_copy(
        update={"sim_ttft_ms": 0, "sim_tokens_per_s": 0, "capacity": 256, "log_level": "WARNING"}
    )
    env = child_env(tuned, **({"DIM_NODE_ID": node} if node else {}))
    return subprocess.Popen([sys.executable, "-m", "services.cli", role], env=env)


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes `pids` used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the bench's child processes: SIGTERM, then SIGKILL after 15 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


class Ends:
    """When each job ended (and whether it failed), from plain NATS subscriptions; with
    `answers`, also when its first task's result came (what the gateway answers a one-task job
    from)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.answered: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.failed: set[str] = set()  # a bench of failing jobs measures nothing: it says so

    async def subscribe(self, *, answers: bool = False) -> None:
        names = self.bus.names
        for end in ("job.completed", "job.failed"):
            await self.bus.nc.subscribe(names.job("*", end), cb=self._on_end)
        if answers:
            await self.bus.nc.subscribe(names.reports("*", "task.completed"), cb=self._on_answer)

    def expect(self, job_id: str) -> asyncio.Future[None]:
        """A future set when `job_id` ends (listen before submitting it)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[job_id] = future
        return future

    async def _on_answer(self, msg: Msg) -> None:
        self.answered.setdefault(msg.subject.split(".")[2], time.perf_counter())

    async def _on_end(self, msg: Msg) -> None:
        job_id = msg.subject.split(".")[2]
        if msg.subject.endswith(".job.failed"):
            self.failed.add(job_id)
        self.done[job_id] = time.perf_counter()
        future = self.waiting.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(None)


class Load(Ends):
    """Submits jobs and records, per job, submit / first token / end times."""

    def __init__(self, bus: Bus, max_tokens: int) -> None:
        super().__init__(bus)
        self.params = SamplingParams(max_tokens=max_tokens)
        self.submitted: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.first_at: dict[str, str] = {}

    async def subscribe(self, *, answers: bool = False) -> None:
        await self.bus.nc.subscribe(self.bus.names.tokens_all, cb=self._on_token)
        await super().subscribe(answers=answers)

    async def _on_token(self, msg: Msg) -> None:
        job_id = msg.subject.split(".")[2]  # NS.tokens.<job>.<node>
        if job_id not in self.first:
            self.first[job_id] = time.perf_counter()
            self.first_at[job_id] = json.loads(msg.data)["at"]

    async def run(self, n: int, concurrency: int, label: str) -> tuple[list[str], float]:
        """Submit `n` jobs with at most `concurrency` unfinished; returns their ids and the wall time."""
        slots = asyncio.Semaphore(concurrency)
        ids: list[str] = []

        async def one(i: int) -> None:
            async with slots:
                job_id = new_id()
                ids.append(job_id)
                ended = self.expect(job_id)
                self.submitted[job_id] = time.perf_counter()
                await submit(
                    self.bus,
                    model="sim-small",
                    prompt=Prompt(text=f"{label} {i}"),
                    params=self.params,
                    job_id=job_id,
                )
                await asyncio.wait_for(ended, 60)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return ids, time.perf_counter() - start

    def latencies(self, ids: list[str]) -> tuple[list[float], list[float]]:
        ttft = [(self.first[j] - self.submitted[j]) * 1000 for j in ids if j in self.first]
        total = [(self.done[j] - self.submitted[j]) * 1000 for j in ids if j in self.done]
        return ttft, total


async def hops(bus: Bus, load: Load, ids: list[str]) -> list[tuple[str, float]]:
    """Median time between consecutive steps of a job, from the events' timestamps."""
    gaps: dict[str, list[float]] = defaultdict(list)
    for job_id in ids:
        events = [
            e async for _, e in read_events(bus, bus.names.jobs_stream, bus.names.job_all(job_id))
        ]
        stamps = [(e.type, e.at) for e in events]
        if job_id in load.first_at:
            stamps.append(("first token", datetime.fromisoformat(load.first_at[job_id])))
        stamps.sort(key=lambda s: s[1])
        for (a, ta), (b, tb) in itertools.pairwise(stamps):
            gaps[f"{a} → {b}"].append((tb - ta).total_seconds() * 1000)
    order = sorted(gaps, key=lambda k: -len(gaps[k]))[:8]
    return [(k, statistics.median(gaps[k])) for k in order if len(gaps[k]) >= len(ids) // 2]


async def publish_round_trip(bus: Bus, n: int) -> list[float]:
    """Latency of one awaited JetStream publish (the unit every hop pays)."""
    out = []
    for i in range(n):
        env = Envelope(
            JobSubmitted(job_id=f"cal{i}", model="x", prompt=Prompt(text="x")), actor="bench"
        )
        t = time.perf_counter()
        await bus.publish(f"{bus.names.ns}.jobs.cal{i}.calibration", env)
        out.append((time.perf_counter() - t) * 1000)
    return out


def table(rows: list[tuple[str, str, str]]) -> str:
    w = max(len(r[0]) for r in rows)
    lines = [
        f"| {'metric':<{w}} | {'measured':>10} | {'target':>8} |",
        f"|{'-' * (w + 2)}|{'-' * 12}|{'-' * 10}|",
    ]
    lines += [f"| {a:<{w}} | {b:>10} | {c:>8} |" for a, b, c in rows]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            metrics_port=0, data_dir=Path(tmp), namespace="bench", models=("sim-small",)
        )
        nodes = {f"bench-{i}": settings.models for i in range(args.workers)}
        local = local_bus(settings, nodes) if args.secure else None
        server = embedded_server(
            Path(tmp), "dim-bench", local.server_config(inline=True) if local else ""
        )
        server.start()
        settings = settings.model_copy(update={"nats_url": server.url})

        def as_(identity: str) -> Settings:  # as `dim up` starts each process
            if not local:
                return settings
            mine = local.settings_for(settings, identity)
            # --believe-all: readers take every report as it is (signed_nodes off), the A/B of
            # what checking the signatures costs (the workers sign either way)
            return mine.model_copy(update={"signed_nodes": False}) if args.believe_all else mine

        procs: list[subprocess.Popen[bytes]] = []
        bus = await connect(as_("admin"), "bench")
        try:
            await ensure_topology(bus, settings)
            if local:  # as `dim up` does: the workers' keys, so their reports are believed
                for node, key in local.worker_keys(nodes).items():
                    await enroll(bus, node, key, by="bench")
            procs.append(spawn(as_("orchestrator"), "orchestrator"))
            procs.append(spawn(as_("projector"), "projector"))
            procs += [spawn(as_(worker_identity(n)), "worker", n) for n in nodes]
            kv = await bus.js.key_value(settings.names.bucket("nodes"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    if len(await kv.keys()) >= args.workers:
                        break
                await asyncio.sleep(0.1)
            load = Load(bus, args.max_tokens)
            await load.subscribe()
            print("warming up ...", file=sys.stderr)
            await load.run(args.warmup, args.concurrency, "warmup")
            cal = await publish_round_trip(bus, 300)
            print("latency phase ...", file=sys.stderr)
            lat_ids, _ = await load.run(args.latency_jobs, 1, "latency")
            lat_ttft, lat_total = load.latencies(lat_ids)
            print("throughput phase ...", file=sys.stderr)
            cpu0 = cpu_s([p.pid for p in procs])
            roles0 = [cpu_s([p.pid]) for p in procs]
            ids, wall = await load.run(args.jobs, args.concurrency, "bench")
            cpu = (cpu_s([p.pid for p in procs]) - cpu0) / len(ids) * 1000
            # per process: orchestrator, projector, then the workers together
            roles = [
                (cpu_s([p.pid]) - c0) / len(ids) * 1000 for p, c0 in zip(procs, roles0, strict=True)
            ]
            ttft, total = load.latencies(ids)
            breakdown = await hops(bus, load, lat_ids[:100])
            failed = load.failed & {*lat_ids, *ids}  # (the calibration's jobs fail on purpose)
            if failed:
                raise SystemExit(f"{len(failed)} jobs failed: the numbers would be wrong")

            print()
            print(
                f"dim bench — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                f"nats-server {server.version()}; {args.workers} simulated workers (zero delay), "
                f"1 orchestrator, 1 projector, max_tokens {args.max_tokens}"
            )
            print()
            print(f"latency: {len(lat_ids)} jobs one at a time")
            print(
                table(
                    [
                        (
                            "submit→first token p50 (ms)",
                            f"{statistics.median(lat_ttft):.2f}",
                            "≤ 5",
                        ),
                        ("submit→first token p99 (ms)", f"{pct(lat_ttft, 99):.2f}", ""),
                        ("submit→completed p50 (ms)", f"{statistics.median(lat_total):.2f}", ""),
                        ("submit→completed p99 (ms)", f"{pct(lat_total, 99):.2f}", ""),
                        (
                            "one JetStream publish round trip p50 (ms)",
                            f"{statistics.median(cal):.3f}",
                            "",
                        ),
                        (
                            "first token p50 / publish round trip",
                            f"{statistics.median(lat_ttft) / statistics.median(cal):.1f}x",
                            "",
                        ),
                    ]
                )
            )
            print()
            print(f"throughput: {len(ids)} jobs, {args.concurrency} in flight")
            print(
                table(
                    [
                        ("completed jobs/s", f"{len(ids) / wall:,.0f}", "≥ 1,000"),
                        ("CPU per job, dim's processes (ms)", f"{cpu:.2f}", ""),
                        (
                            "  orchestrator / projector / workers (ms)",
                            f"{roles[0]:.2f} / {roles[1]:.2f} / {sum(roles[2:]):.2f}",
                            "",
                        ),
                        ("submit→first token p50 (ms)", f"{statistics.median(ttft):.2f}", ""),
                        ("submit→first token p99 (ms)", f"{pct(ttft, 99):.2f}", ""),
                        ("submit→completed p50 (ms)", f"{statistics.median(total):.2f}", ""),
                        ("submit→completed p99 (ms)", f"{pct(total, 99):.2f}", ""),
                    ]
                )
            )
            print()
            print(
                "where the time goes, one job at a time (median ms between steps, from event timestamps):"
            )
            for name, ms in breakdown:
                print(f"  {ms:7.2f}  {name}")
        finally:
            await bus.close()
            stop_all(procs)
            server.stop()


def main() -> None:
    """Parse flags and run the benchmark."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=4000, help="jobs in the throughput phase")
    p.add_argument("--latency-jobs", type=int, default=300, help="jobs in the latency phase")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument(
        "--concurrency", type=int, default=64, help="jobs in flight in the throughput phase"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--secure",
        action="store_true",
        help="NATS as `dim up` secures it: TLS, one identity per role (docs/security.md)",
    )
    p.add_argument(
        "--believe-all",
        action="store_true",
        help="with --secure: the orchestrator and projector believe every report unchecked",
    )
    p.add_argument("--max-tokens", type=int, default=16)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
