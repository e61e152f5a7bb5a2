"""Benchmark: how soon a cancelled job's generation stops. Not a test.

A worker streams long answers (simulated engine at 50 tokens/s); for each job this process waits
for its first token, records `job.cancelled` (as `DELETE /v1/jobs/{id}` does), and times until
the worker's last chunk — finish reason ``abort`` — arrives on the job's token subject: the cancel
event stored, delivered to the worker, the engine request aborted at its next token, the final
chunk published and delivered. The target is 100 ms.

    just bench-cancel               # 50 jobs
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from nats.aio.msg import Msg

from events.envelope import decode
from events.ids import new_id
from events.inference import Prompt, SamplingParams
from events.job_log import submit
from events.work import TokensProduced
from gateway.completions import cancel_job
from services.process import connect, ensure_topology
from services.settings import Settings
from services.up import child_env
from tests.bench.bench_jobs import embedded_server, pct, table
from tests.chaos.run import Proc


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = embedded_server(Path(tmp), "dim-bench-cancel")
        server.start()
        settings = Settings(
            metrics_port=0,  # many processes on one host
            nats_url=server.url,
            namespace="cancel",
            sim_ttft_ms=0,
            sim_tokens_per_s=50,
            token_flush_ms=15,
            log_level="WARNING",
        )
        bus = await connect(settings, "bench")
        procs = [
            Proc(role, [role], child_env(settings, DIM_NODE_ID="w1"), Path(tmp) / f"{role}.log")
            for role in ("orchestrator", "worker")
        ]
        try:
            await ensure_topology(bus, settings)
            for p in procs:
                p.start()
            kv = await bus.js.key_value(settings.names.bucket("nodes"))
            for _ in range(300):
                try:
                    if await kv.keys():
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the orchestrator's view of the worker
            stops: list[float] = []
            for i in range(args.jobs):
                job_id = new_id()
                first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                aborted: asyncio.Future[float] = asyncio.get_running_loop().create_future()

                async def on_chunk(
                    msg: Msg,
                    first: asyncio.Future[None] = first,
                    aborted: asyncio.Future[float] = aborted,
                ) -> None:
                    chunk = decode(msg.data).data
                    if not isinstance(chunk, TokensProduced):
                        return
                    if not first.done():
                        first.set_result(None)
                    if chunk.finish_reason == "abort" and not aborted.done():
                        aborted.set_result(time.perf_counter())

                sub = await bus.nc.subscribe(settings.names.job_tokens(job_id), cb=on_chunk)
                await submit(
                    bus,
                    model="sim-small",
                    prompt=Prompt(text=f"a long story {i}"),
                    params=SamplingParams(max_tokens=400),
                    job_id=job_id,
                )
                await asyncio.wait_for(first, 10)
                await asyncio.sleep(0.05)  # mid-generation
                t0 = time.perf_counter()
                await cancel_job(bus, job_id, "bench", actor="bench")
                stops.append((await asyncio.wait_for(aborted, 10) - t0) * 1000)
                await sub.unsubscribe()
        finally:
            await bus.close()
            for p in procs:
                p.stop()
            server.stop()
    print()
    print(f"cancel → generation stopped, {len(stops)} jobs one at a time (1 worker, 50 tokens/s)")
    print(
        table(
            [
                (
                    "cancel → abort chunk received p50 (ms)",
                    f"{statistics.median(stops):.1f}",
                    "≤ 100",
                ),
                ("cancel → abort chunk received p99 (ms)", f"{pct(stops, 99):.1f}", ""),
                ("max (ms)", f"{max(stops):.1f}", ""),
            ]
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    from services.process import run as run_async

    run_async(run(p.parse_args()))


if __name__ == "__main__":
    main()
