"""Benchmark: bare `vllm serve` against dim in front of vLLM, two ways, in one run.

Rows, each with the same tiny model (tests/vllm/tiny_model.py), prompts, `max_tokens` and load
(`--concurrency` streaming chat requests in flight):

1. bare: vLLM's own OpenAI server (`vllm serve`), asked directly;
2. dim, vllm engine: the gateway, an orchestrator and a worker running vLLM in-process;
3. dim, openai engine: the gateway and a worker `--engine openai` in front of the same `vllm serve`.

Printed per row: output tokens/s, time to first token p50/p99 (and one request at a time),
end-to-end p50, each dim row as a ratio to bare, and CPU per 1,000 output tokens by process. The
rows take turns (`--rounds`), so a drift of the machine's speed falls on every row alike. On a GPU node the engine runs on the GPU and dim on the CPU; here both
share two cores, and dim's CPU would come straight out of the engine's. So vLLM is pinned to one
core and dim's processes, NATS and this load generator to the other, the same for every row:
`vllm serve` whole (its API server, engine core and model runner) on core 0; for dim's
in-process worker, the processes vLLM starts (engine core, model runner) on core 0, while the
worker process itself — dim's, hosting vLLM's front end (tokenizing, detokenizing) as
`vllm serve`'s API server does — on core 1.

    just bench-vllm
    python -m tests.bench.bench_vllm --requests 384 --concurrency 32 --max-tokens 128 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from services.accounts.keys import create_key
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.settings import Settings
from services.up import child_env
from tests.bench.bench_gateway import start
from tests.bench.bench_jobs import embedded_server, pct, stop_all
from tests.bench.loadgen import Client, HttpError
from tests.vllm.support import ENGINE_ARGS, MAX_MODEL_LEN, MODEL, vllm_server
from tests.vllm.tiny_model import build

PROMPTS = [
    "Tell me about the mesh.",
    "Count from one to five.",
    "How are you today?",
    "What does a worker do when it dies mid-answer?",
]
ENGINE_CORE, OTHER_CORE = 0, 1
INPROC = f"{MODEL}-inproc"  # the in-process worker's name for the model; `tiny` is vllm serve's


@dataclass
class Run:
    """What one row measured."""

    tokens: int
    wall_s: float
    ttft_ms: list[float]
    e2e_ms: list[float]
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU time by kind of process
    alone_ttft_ms: list[float] = field(default_factory=list)  # one request at a time
    rounds: list[float] = field(default_factory=list)  # output tokens/s of each round

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


async def one(client: Client, body: dict[str, object]) -> tuple[float, float, int]:
    """One streamed chat completion: (TTFT ms, end-to-end ms, completion tokens)."""
    t0 = time.perf_counter()
    first: float | None = None
    frames = b""
    async for chunk in client.stream("/v1/chat/completions", body):
        if first is None and b'"content":"' in chunk and _has_text(chunk):
            first = time.perf_counter()
        frames += chunk
    end = time.perf_counter()
    events = [e.removeprefix(b"data: ") for e in frames.split(b"\n\n") if e.strip()]
    last = json.loads(events[-2]) if len(events) > 1 else {}
    if events[-1] != b"[DONE]" or "usage" not in last:
        raise HttpError(f"{body['model']}: the stream ended with {events[-2:]!r}")
    usage = last["usage"]
    return ((first or end) - t0) * 1000, (end - t0) * 1000, int(usage["completion_tokens"])


def _has_text(chunk: bytes) -> bool:
    for frame in chunk.split(b"\n\n"):
        if frame.startswith(b"data: {"):
            choices = json.loads(frame[6:]).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                return True
    return False


async def load(client: Client, model: str, n: int, concurrency: int, max_tokens: int) -> Run:
    """`n` streamed requests for `model`, `concurrency` at a time, prompts in turn."""
    slots = asyncio.Semaphore(concurrency)
    ttft: list[float] = []
    e2e: list[float] = []
    tokens = 0

    async def request(i: int) -> None:
        nonlocal tokens
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with slots:
            first, total, count = await one(client, body)
        ttft.append(first)
        e2e.append(total)
        tokens += count

    t0 = time.perf_counter()
    await asyncio.gather(*(request(i) for i in range(n)))
    return Run(tokens, time.perf_counter() - t0, ttft, e2e)


async def until_answers(
    client: Client, model: str, procs: list[subprocess.Popen[bytes]], what: str
) -> None:
    """Wait (bounded) until `client` answers a chat completion for `model`."""
    deadline = time.monotonic() + 600
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    while True:
        try:
            await one(client, body)
            return
        except (OSError, HttpError, AssertionError):
            ended = [p.args for p in procs if p.poll() is not None]
            if ended:
                raise SystemExit(f"bench: a process ended while starting: {ended}") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {what} did not answer within 600 s") from None
        await asyncio.sleep(1)


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of process `pid` to `cores` (a process's affinity is per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cores)


def pin_engines(worker: subprocess.Popen[bytes]) -> None:
    """The processes vLLM started under dim's worker, to the engine's core."""
    import psutil  # a dependency of vLLM, which this bench runs

    for child in psutil.Process(worker.pid).children(recursive=True):
        if child.name().startswith("VLLM::"):
            pin(child.pid, {ENGINE_CORE})


async def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {OTHER_CORE})  # this process and every process it starts
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(ENGINE_CORE)  # vLLM's compute threads
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp) / "tiny")
        server = embedded_server(Path(tmp) / "nats", "dim-bench-vllm")
        server.start()
        settings = Settings(
            metrics_port=0,  # many processes on one host
            nats_url=server.url,
            namespace="benchvllm",
            gateway_port=free_port(),
            rate_limit_rpm=0,
            tenant_rate_limit_rpm=0,
            jwt_secret="bench-secret-bench-secret-bench-secret",
            log_level="WARNING",
            heartbeat_s=1.0,
            node_ttl_s=10.0,
        )
        procs: list[subprocess.Popen[bytes]] = []
        bus = await connect(settings, "bench")
        try:
            with vllm_server(model, cpus=str(ENGINE_CORE)) as bare_url:
                await ensure_topology(bus, settings)
                _, key = await create_key(
                    bus, principal_id="bench", tenant="bench", roles=("member",), actor="bench"
                )
                vllm_worker = {
                    "DIM_NODE_ID": "vllm-in-process",
                    "DIM_ENGINE": "vllm",
                    "DIM_MODELS": str(model),
                    "DIM_MODEL_ALIASES": f"{INPROC}={model}",
                    "DIM_CAPACITY": str(args.concurrency),
                    "DIM_VLLM_DTYPE": "bfloat16",
                    "DIM_VLLM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
                    "DIM_VLLM_ENGINE_ARGS": json.dumps(ENGINE_ARGS),
                }
                upstream_worker = {
                    "DIM_NODE_ID": "vllm-upstream",
                    "DIM_ENGINE": "openai",
                    "DIM_UPSTREAM_URL": f"{bare_url}/v1",
                    "DIM_MODELS": MODEL,
                    "DIM_CAPACITY": str(args.concurrency),
                }
                for role, extra in (
                    ("orchestrator", {}),
                    ("gateway", {}),
                    ("worker", vllm_worker),
                    ("worker", upstream_worker),
                ):
                    env = child_env(settings, **extra)
                    procs.append(start("services.cli", role, env=env))
                bare_host = urlparse(bare_url)
                bare = Client(bare_host.hostname or "127.0.0.1", bare_host.port or 80)
                dim = Client("127.0.0.1", settings.gateway_port, {"authorization": f"Bearer {key}"})
                await until_answers(dim, MODEL, procs, "dim in front of vllm serve")
                await until_answers(dim, INPROC, procs, "dim's in-process vLLM worker")
                pin_engines(procs[2])
                rows = await measure(args, bare, dim)
                pinning = affinities()
                bare.close()
                dim.close()
        finally:
            stop_all(procs)
            await bus.close()
            server.stop()
    report(args, rows, pinning)


async def measure(args: argparse.Namespace, bare: Client, dim: Client) -> dict[str, Run]:
    """Warm each path, then take turns: each round runs every row's share of the load, so a
    drift of the machine's speed over the run (seen: ±15% between runs) falls on every row."""
    paths = {
        "bare vllm serve": (bare, MODEL),
        "dim, vllm engine": (dim, INPROC),
        "dim, openai engine → vllm serve": (dim, MODEL),
    }
    for client, model in paths.values():
        await load(client, model, args.concurrency, args.concurrency, args.max_tokens)  # warm
    rows = {name: Run(0, 0.0, [], []) for name in paths}
    share = max(args.concurrency, args.requests // args.rounds)
    for round_ in range(args.rounds):
        for name, (client, model) in paths.items():
            print(f"round {round_ + 1}: {name} ...", file=sys.stderr)
            await settle()
            before = cpu_by_kind()
            run = await load(client, model, share, args.concurrency, args.max_tokens)
            after = cpu_by_kind()
            row = rows[name]
            row.tokens += run.tokens
            row.wall_s += run.wall_s
            row.ttft_ms += run.ttft_ms
            row.e2e_ms += run.e2e_ms
            row.rounds.append(run.tokens_per_s)
            for kind, used in after.items():
                row.cpu_s[kind] = row.cpu_s.get(kind, 0.0) + used - before.get(kind, 0.0)
            row.alone_ttft_ms += (await load(client, model, args.alone, 1, 8)).ttft_ms
    return rows


async def settle(limit_s: float = 20.0) -> None:
    """Wait until vLLM's processes are idle: after a row, an engine's model runner keeps its
    core busy for a while (seen: ~20% of core 0 through the next row, taken from the engine that
    row measures)."""
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        before = cpu_by_kind()
        await asyncio.sleep(0.5)
        after = cpu_by_kind()
        busy = sum(after[k] - before.get(k, 0.0) for k in after if k.startswith("VLLM::"))
        if busy / 0.5 < 0.05:
            return
    print(f"vLLM still busy after {limit_s:g}s; measuring anyway", file=sys.stderr)


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds (user and system) used so far, by kind of process."""
    import psutil  # a dependency of vLLM, which this bench runs

    me = psutil.Process()
    used: dict[str, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            kind = _kind(proc, me)
        except psutil.NoSuchProcess:
            continue
        used[kind] = used.get(kind, 0.0) + times.user + times.system
    return used


def affinities() -> str:
    """The cores the threads of each kind of process may run on, as seen."""
    import psutil  # a dependency of vLLM, which this bench runs

    seen: dict[str, set[str]] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        seen.setdefault(_kind(proc, me), set()).update(
            _allowed(proc.pid, t.id) for t in proc.threads()
        )
    return "cores seen — " + "; ".join(
        f"{k}: {','.join(sorted(c))}" for k, c in sorted(seen.items())
    )


def _kind(proc: Any, me: Any) -> str:
    args = proc.cmdline()
    if proc.pid == me.pid:
        return "load generator"
    if "-m" in args and args.index("-m") + 1 < len(args):
        module = args[args.index("-m") + 1]
        return (
            "vllm serve (API server)"
            if module.startswith("vllm")
            else " ".join(args[args.index("-m") + 1 : args.index("-m") + 3])
        )
    if proc.name().startswith("VLLM::"):
        under = (
            "vllm serve"
            if any("vllm.entrypoints" in " ".join(p.cmdline()) for p in proc.parents())
            else "dim's worker"
        )
        return f"{proc.name()} under {under}"
    if "nats-server" in proc.name():
        return "nats-server"
    return "other"


def _allowed(pid: int, tid: int) -> str:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return (
        next(ln for ln in status.splitlines() if ln.startswith("Cpus_allowed_list"))
        .split(":", 1)[1]
        .strip()
    )


def report(args: argparse.Namespace, rows: dict[str, Run], pinning: str) -> None:
    bare = rows["bare vllm serve"]
    bare_ttft = statistics.median(bare.ttft_ms)
    bare_alone = statistics.median(bare.alone_ttft_ms)
    print()
    print(
        f"vLLM bench — {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the tiny Llama (tests/vllm/tiny_model.py), bf16, eager; "
        f"{args.requests} streamed chat requests, {args.concurrency} in flight, max_tokens "
        f"{args.max_tokens}; vLLM (vllm serve whole; the engine processes under dim's worker) "
        f"pinned to core {ENGINE_CORE}, dim, NATS and the load generator to core {OTHER_CORE}"
    )
    print()
    header = ("row", "output tok/s", "x bare (rounds)", "TTFT p50 ms", "TTFT p99 ms", "TTFT added p50 ms",
              "e2e p50 ms", "alone: TTFT p50 ms", "alone: added")  # fmt: skip
    lines = [header, tuple("-" * len(h) for h in header)]
    for name, r in rows.items():
        lines.append(
            (
                name,
                f"{r.tokens_per_s:,.0f}",
                f"{r.tokens_per_s / bare.tokens_per_s:.3f} ({_spread(r, bare)})",
                f"{statistics.median(r.ttft_ms):.1f}",
                f"{pct(r.ttft_ms, 99):.1f}",
                "" if r is bare else f"{statistics.median(r.ttft_ms) - bare_ttft:+.1f}",
                f"{statistics.median(r.e2e_ms):.1f}",
                f"{statistics.median(r.alone_ttft_ms):.1f}",
                "" if r is bare else f"{statistics.median(r.alone_ttft_ms) - bare_alone:+.1f}",
            )
        )
    print_table(lines)
    print()
    print(f"CPU ms per 1,000 output tokens, by process, at {args.concurrency} in flight:")
    print()
    kinds = sorted({k for r in rows.values() for k, v in r.cpu_s.items() if v > 0.01 * r.wall_s})
    cpu = [("row", *kinds, "core 0", "core 1")]
    cpu.append(tuple("-" * len(h) for h in cpu[0]))
    for name, r in rows.items():
        per = {k: r.cpu_s.get(k, 0.0) * 1e6 / r.tokens for k in kinds}
        engine = sum(v for k, v in per.items() if k.startswith(("VLLM::", "vllm serve")))
        cpu.append(
            (
                name,
                *(f"{per[k]:.0f}" for k in kinds),
                f"{engine:.0f}",
                f"{sum(per.values()) - engine:.0f}",
            )
        )
    print_table(cpu)
    print()
    print(pinning)
    print("targets: dim rows ≥ 0.97x bare output tokens/s; TTFT added ≤ 5 ms p50")


def _spread(row: Run, bare: Run) -> str:
    """The lowest and highest ratio to bare of one round."""
    ratios = [a / b for a, b in zip(row.rounds, bare.rounds, strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def print_table(lines: list[tuple[str, ...]]) -> None:
    """Rows of cells as a Markdown table, the first row the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=384, help="per row, over all rounds")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--alone", type=int, default=20, help="requests one at a time, per round")
    parser.add_argument("--rounds", type=int, default=3, help="turns the rows take")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":  # vLLM starts its processes with spawn: the guard is needed
    main()
