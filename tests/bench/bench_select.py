"""Benchmark: one node pick over N nodes (default 1,000), per strategy. Not a test.

The pool is built the way the orchestrator's is (one update per node record), then every
strategy picks repeatedly while heartbeats keep changing loads, as they do live: every 10th
pick sees a heartbeat of some node and every pick counts a task sent. Reports µs per pick
(median of 5 rounds) and, for scale, the reference design's budget of 10 ms per pick over 100.

    just bench-select                 # 1,000 nodes
    just bench-select --nodes 10000
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime

from events.records import NodeRecord
from services.registry.select import Need, Pool

MODELS = ("llama-8b", "llama-70b", "qwen-7b", "mistral-7b")


def build(n: int, rng: random.Random) -> tuple[Pool, list[NodeRecord]]:
    now = datetime.now(UTC)
    pool = Pool(ttl_s=6)
    records = []
    for i in range(n):
        capacity = rng.choice((8, 16, 32, 64))
        record = NodeRecord(
            node_id=f"node-{i:05d}",
            models=tuple(rng.sample(MODELS, rng.randint(1, 2))) + ("llama-8b",) * (i % 2),
            engine="simulated",
            capacity=capacity,
            in_flight=rng.randint(0, capacity),
            version="bench",
            started_at=now,
            heartbeat_at=now,
            max_context=rng.choice((8192, 32768, 131072)),
        )
        pool.update(record)
        records.append(record)
    return pool, records


def measure(
    pool: Pool, records: list[NodeRecord], need: Need, picks: int, rng: random.Random
) -> float:
    now = datetime.now(UTC)
    keys = [f"session-{i}" for i in range(500)]
    t0 = time.perf_counter()
    for i in range(picks):
        if i % 10 == 0:
            r = records[rng.randrange(len(records))]
            pool.update(r.model_copy(update={"in_flight": rng.randint(0, r.capacity)}))
        if need.strategy == "affinity":
            need = Need(model=need.model, strategy="affinity", key=keys[i % len(keys)])
        node = pool.pick(need, rng.random(), now)
        if node:
            pool.sent(node)
    return (time.perf_counter() - t0) / picks * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--picks", type=int, default=5000)
    args = ap.parse_args()
    rng = random.Random(7)
    pool, records = build(args.nodes, rng)
    serving = len(pool.candidates(Need(model="llama-8b")))
    cases = [
        ("least_loaded", Need(model="llama-8b", spread=True)),
        ("least_loaded, min_context", Need(model="llama-8b", spread=True, min_context=32768)),
        ("round_robin", Need(model="llama-8b", strategy="round_robin")),
        ("capacity_weighted", Need(model="llama-8b", strategy="capacity_weighted")),
        ("affinity (bounded load)", Need(model="llama-8b", strategy="affinity", key="k")),
        (
            "retry, 3 excluded",
            Need(model="llama-8b", spread=True, exclude=frozenset(r.node_id for r in records[:3])),
        ),
    ]
    print(
        f"\nnode selection: {args.nodes} nodes, {serving} serve the model; {args.picks} picks per round"
    )
    print(f"{'strategy':<28} {'µs/pick (median of 5)':>22} {'target':>8}")
    for name, need in cases:
        rounds = [measure(pool, records, need, args.picks, rng) for _ in range(5)]
        print(f"{name:<28} {statistics.median(rounds):>22.1f} {'≤ 50':>8}")
    # membership change: what a node joining costs the next pick (indexes rebuilt once)
    t0 = time.perf_counter()
    pool.update(records[0].model_copy(update={"node_id": "joiner"}))
    pool.pick(Need(model="llama-8b", strategy="affinity", key="k"), 0.5)
    print(
        f"{'first pick after a join':<28} {(time.perf_counter() - t0) * 1e6:>22.1f} {'(rare)':>8}"
    )


if __name__ == "__main__":
    main()
