"""What signing costs: a node signing its reports and records, a reader checking them.

Microseconds per operation on this machine, for the reports a task produces (`task.started`,
`task.completed` with a short and a long output) and a node record; each the median of several
repeats. `just bench-jobs --secure` against `--secure --believe-all` measures the same cost in
the whole mesh.

    just bench-signing
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from events.inference import Usage
from events.jobs import TaskCompleted, TaskStarted
from events.records import NodeRecord
from events.signing import (
    NodeKey,
    record_verified,
    report_claims,
    report_verified,
    signed_record,
    signed_report,
)
from tests.secured_nats import new_user_seed


def per_op_us(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `fn` over `n` calls, in µs."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2000, help="calls per repeat")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    key = NodeKey(new_user_seed())
    ids = {"job_id": "01JOB", "task_id": "01JOB.0", "attempt": 1, "node_id": "gpu-1"}
    usage = Usage(prompt_tokens=12, completion_tokens=256)
    started = TaskStarted(**ids)
    short = TaskCompleted(
        **ids, output="x" * 1024, finish_reason="stop", usage=usage, ttft_ms=1, duration_ms=9
    )
    long = short.model_copy(update={"output": "x" * 64 * 1024})
    record = NodeRecord(
        node_id="gpu-1",
        models=("llama",),
        capacity=32,
        engine="vllm",
        version="0.1.0",
        heartbeat_at=datetime.now(UTC),
        started_at=datetime.now(UTC),
    )
    stored = signed_record(record, key).model_dump_json().encode()
    rows: list[tuple[str, float]] = []
    for name, event in (
        ("task.started", started),
        ("task.completed, 1 KiB output", short),
        ("task.completed, 64 KiB output", long),
    ):
        signed = signed_report(event, key)
        assert report_verified(signed, key.public_key)
        rows.append(
            (
                f"{name}: claims only (hash, canonical JSON)",
                per_op_us(lambda e=event: report_claims(e), args.n, args.repeats),
            )
        )
        rows.append(
            (
                f"{name}: sign (the node)",
                per_op_us(lambda e=event: signed_report(e, key), args.n, args.repeats),
            )
        )
        rows.append(
            (
                f"{name}: verify (each reader)",
                per_op_us(
                    lambda s=signed: report_verified(s, key.public_key), args.n, args.repeats
                ),
            )
        )
    rows.append(
        (
            "node record: sign (each heartbeat)",
            per_op_us(lambda: signed_record(record, key), args.n, args.repeats),
        )
    )
    rows.append(
        (
            "node record: verify (each reader, each change)",
            per_op_us(lambda: record_verified(stored, key.public_key), args.n, args.repeats),
        )
    )

    print(
        f"dim bench-signing — {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; Ed25519 (NKeys, PyNaCl); median of {args.repeats} x {args.n}"
    )
    print()
    w = max(len(r[0]) for r in rows)
    print(f"| {'operation':<{w}} | {'µs':>8} |")
    print(f"|{'-' * (w + 2)}|{'-' * 10}|")
    for name, us in rows:
        print(f"| {name:<{w}} | {us:>8.1f} |")


if __name__ == "__main__":
    main()
