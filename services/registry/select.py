"""Node selection: which live node runs a task. Pure — no I/O, no clock, no hidden randomness.

The strategies are functions over candidate ids and loads. `Pool` keeps what they need between
picks so one pick stays cheap with a thousand nodes: candidate lists per requirement and the
consistent-hash ring are rebuilt only when the membership changes (a node joins, leaves, or
changes what it serves), while heartbeats only update a load number.

Load of a node = (in-flight at its last heartbeat + tasks sent to it since - tasks it finished
since) / capacity: between heartbeats the orchestrator keeps the count from what it dispatches
and the results it folds.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate

from events.patterns import Strategy
from events.records import NodeRecord

VNODES = 40  # points per node on the hash ring
BOUND = 1.25  # affinity: a node takes at most BOUND x its fair share of the load
SHARED = ""  # `pick`'s answer when the model's shared subject is the right place


@dataclass(frozen=True, slots=True)
class Need:
    """What a task needs of a node."""

    model: str
    tenant: str | None = None
    strategy: Strategy | None = None
    key: str | None = None  # affinity: the session key or the prompt's prefix
    min_context: int | None = None
    min_gpu_memory_mib: int | None = None
    exclude: frozenset[str] = frozenset()  # nodes where this task already failed
    spread: bool = False  # place explicitly (fan-out), even with no strategy or filter
    can: frozenset[str] = frozenset()  # capabilities beyond plain text (events/capabilities.py)

    @property
    def filters(self) -> tuple[object, ...]:
        """The part of the need that narrows the candidates (their cache key)."""
        return (self.model, self.tenant, self.min_context, self.min_gpu_memory_mib, self.can)

    @property
    def targeted(self) -> bool:
        """Whether a node must be chosen here rather than by whoever pulls first."""
        return (
            bool(self.strategy or self.min_context or self.min_gpu_memory_mib or self.exclude)
            or self.spread
        )


def eligible(node: NodeRecord, need: Need) -> bool:
    """Whether `node` may run a task with `need` (liveness is the pool's business)."""
    if need.model not in node.models or not node.healthy:
        return False
    if node.tenants and need.tenant not in node.tenants:
        return False
    if need.can and not need.can <= node.can(need.model):
        return False
    if need.min_context and (node.max_context or 0) < need.min_context:
        return False
    gpu = need.min_gpu_memory_mib
    return not gpu or any(g.memory_total_mib >= gpu for g in node.gpus)


def least_loaded(ids: Sequence[str], load: Callable[[str], float]) -> str:
    """The candidate with the lowest load (ties: the first in `ids`)."""
    return min(ids, key=load)


def round_robin(ids: Sequence[str], turn: int) -> str:
    """The `turn`-th candidate, cyclically."""
    return ids[turn % len(ids)]


def capacity_weighted(ids: Sequence[str], free: Callable[[str], float], r: float) -> str:
    """A candidate drawn with probability proportional to its free slots (`free` >= 0,
    `r` in [0, 1)).

    When no candidate has a free slot, every candidate is equally likely.
    """
    cumulative = list(accumulate(map(free, ids)))
    total = cumulative[-1]
    if total <= 0:
        return ids[min(int(r * len(ids)), len(ids) - 1)]
    return ids[min(bisect.bisect_right(cumulative, r * total), len(ids) - 1)]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class Ring:
    """A consistent-hash ring of node ids, `VNODES` points each; nodes join and leave in place."""

    points: list[int] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ids: Iterable[str]) -> Ring:
        """The ring of `ids`."""
        ring = cls()
        for i in ids:
            ring.add(i)
        return ring

    def add(self, node_id: str) -> None:
        """Put the node's points on the ring."""
        for v in range(VNODES):
            h = _hash(f"{node_id}#{v}")
            at = bisect.bisect(self.points, h)
            self.points.insert(at, h)
            self.owners.insert(at, node_id)

    def remove(self, node_id: str) -> None:
        """Take the node's points off the ring."""
        keep = [k for k, o in enumerate(self.owners) if o != node_id]
        self.points = [self.points[k] for k in keep]
        self.owners = [self.owners[k] for k in keep]

    def walk(self, key: str) -> Iterable[str]:
        """Distinct owners clockwise from `key`'s point: its home first."""
        if not self.points:
            return
        start = bisect.bisect(self.points, _hash(key))
        seen: set[str] = set()
        n = len(self.owners)
        for k in range(n):
            owner = self.owners[(start + k) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner


def bounded_affinity(
    ring: Ring,
    key: str,
    busy: Callable[[str], float],
    capacity: Callable[[str], int],
    total_busy: float,
    total_capacity: int,
    allowed: Callable[[str], bool] = lambda _: True,
) -> str | None:
    """Consistent hashing with bounded loads: the key's home node unless it already holds more
    than `BOUND` times its capacity-weighted share of the load, then the next node on the ring.
    """
    first = None
    for node in ring.walk(key):
        if not allowed(node):
            continue
        first = first or node
        share = (total_busy + 1) * capacity(node) / max(1, total_capacity)
        if busy(node) + 1 <= max(1.0, math.ceil(BOUND * share)):
            return node
    return first


def _shape(r: NodeRecord) -> tuple[object, ...]:
    """What selection filters on: a change here rebuilds the indexes."""
    return (r.models, r.tenants, r.max_context, r.gpus, r.healthy, r.capabilities)


@dataclass(slots=True)
class Pool:
    """The live nodes as selection sees them. Not thread-safe; one per process.

    Loads are kept in plain dicts updated on every heartbeat and every task sent, so a pick
    costs a C-level pass over the candidates at most.
    """

    ttl_s: float = 6.0
    records: dict[str, NodeRecord] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # sent - finished since last heartbeat
    loads: dict[str, float] = field(default_factory=dict)  # busy / capacity
    free: dict[str, float] = field(default_factory=dict)  # capacity - busy
    _busy: dict[str, float] = field(default_factory=dict)  # per model, over its nodes
    _capacity: dict[str, int] = field(default_factory=dict)  # per model, over its nodes
    ring: Ring = field(default_factory=Ring)  # every member; a walk skips the ineligible
    _candidates: dict[tuple[object, ...], tuple[str, ...]] = field(default_factory=dict)
    _sets: dict[tuple[object, ...], frozenset[str]] = field(default_factory=dict)
    _shared: dict[tuple[str, frozenset[str]], bool] = field(default_factory=dict)
    _turns: dict[tuple[object, ...], int] = field(default_factory=dict)

    def room(self, model: str) -> float:
        """Free slots across the nodes serving `model`: their capacity less their tasks in
        flight (at their last heartbeats, plus those counted as sent since)."""
        return self._capacity.get(model, 0) - self._busy.get(model, 0.0)

    def busy(self, node_id: str) -> float:
        """Tasks in flight at its last heartbeat, plus those sent since, less those finished."""
        return max(0, self.records[node_id].in_flight + self.pending.get(node_id, 0))

    def _account(self, node_id: str, sign: int) -> None:
        r = self.records[node_id]
        busy = self.busy(node_id)
        for m in r.models:
            self._busy[m] = self._busy.get(m, 0.0) + sign * busy
            self._capacity[m] = self._capacity.get(m, 0) + sign * r.capacity
        if sign > 0:
            self.loads[node_id] = busy / max(1, r.capacity)
            self.free[node_id] = max(0.0, r.capacity - busy)

    def update(self, record: NodeRecord) -> None:
        """A heartbeat (or a new node): refresh its load; rebuild indexes if its shape changed."""
        if record.draining:
            self.remove(record.node_id)
            return
        old = self.records.get(record.node_id)
        if old is not None:
            self._account(record.node_id, -1)
        if old is None:
            self.ring.add(record.node_id)
        if old is None or _shape(old) != _shape(record):
            self._invalidate()
        self.records[record.node_id] = record
        self.pending[record.node_id] = 0
        self._account(record.node_id, +1)

    def remove(self, node_id: str) -> None:
        """The node left or was lost."""
        if node_id not in self.records:
            return
        self._account(node_id, -1)
        del self.records[node_id]
        for d in (self.pending, self.loads, self.free):
            d.pop(node_id, None)
        self.ring.remove(node_id)
        self._invalidate()

    def expire(self, now: datetime) -> list[tuple[str, NodeRecord]]:
        """Remove nodes whose last heartbeat is older than `ttl_s`; returns them."""
        gone = [(i, r) for i, r in self.records.items() if not r.fresh(now, self.ttl_s)]
        for i, _ in gone:
            self.remove(i)
        return gone

    def sent(self, node_id: str) -> None:
        """A task was sent to `node_id`: count it until the node's next heartbeat."""
        if node_id in self.records:
            self._account(node_id, -1)
            self.pending[node_id] = self.pending.get(node_id, 0) + 1
            self._account(node_id, +1)

    def finished(self, node_id: str) -> None:
        """A task on `node_id` completed or failed: count it until the node's next heartbeat."""
        if node_id in self.records:
            self._account(node_id, -1)
            self.pending[node_id] = self.pending.get(node_id, 0) - 1
            self._account(node_id, +1)

    def unsent(self, node_id: str, n: int = 1) -> None:
        """`n` tasks counted as sent to `node_id` were not sent after all."""
        if node_id in self.records:
            self._account(node_id, -1)
            self.pending[node_id] = self.pending.get(node_id, 0) - n
            self._account(node_id, +1)

    def _invalidate(self) -> None:
        self._candidates.clear()
        self._sets.clear()
        self._shared.clear()

    def candidates(self, need: Need) -> tuple[str, ...]:
        """Ids of the eligible nodes, sorted (cached per requirement)."""
        key = need.filters
        ids = self._candidates.get(key)
        if ids is None:
            ids = tuple(sorted(i for i, r in self.records.items() if eligible(r, need)))
            self._candidates[key] = ids
        return ids

    def shared_ok(self, model: str, can: frozenset[str] = frozenset()) -> bool:
        """Whether every node serving `model` takes tasks from its shared subject and can do
        all of `can` (cached)."""
        ok = self._shared.get((model, can))
        if ok is None:
            ok = self._shared[model, can] = all(
                not r.tenants and can <= r.can(model)
                for r in self.records.values()
                if model in r.models
            )
        return ok

    def pick(self, need: Need, r: float = 0.0, now: datetime | None = None) -> str | None:
        """A node id for the task, `SHARED` for the model's shared subject, or None when no live
        node is eligible. `r` in [0, 1) drives capacity-weighted draws; with `now`, a chosen node
        whose heartbeat is too old is dropped and the pick repeated."""
        for _ in range(len(self.records) + 1):
            node = self._pick(need, r)
            if not node or now is None:
                return node
            if self.records[node].fresh(now, self.ttl_s):
                return node
            self.remove(node)
        return None

    def _pick(self, need: Need, r: float) -> str | None:
        ids = self.candidates(need)
        if not ids:
            return None
        if not need.targeted and self.shared_ok(need.model, need.can):
            return SHARED  # every node serving the model pulls from it: least-loaded by pull
        if need.exclude:
            ids = tuple(i for i in ids if i not in need.exclude) or ids  # all failed once: retry
        strategy = need.strategy or "least_loaded"
        if strategy == "round_robin":
            turn = self._turns.get(need.filters, 0)
            self._turns[need.filters] = turn + 1
            return round_robin(ids, turn)
        if strategy == "capacity_weighted":
            return capacity_weighted(ids, self.free.__getitem__, r)
        if strategy == "affinity" and need.key is not None:
            allowed = self._sets.get(need.filters)
            if allowed is None:
                allowed = self._sets[need.filters] = frozenset(self.candidates(need))
            if need.exclude:
                allowed = allowed - need.exclude or allowed
            records = self.records
            node = bounded_affinity(
                self.ring,
                need.key,
                self.busy,
                lambda i: records[i].capacity,
                self._busy.get(need.model, 0.0),
                self._capacity.get(need.model, 0),
                allowed.__contains__,
            )
            if node is not None:
                return node
        return least_loaded(ids, self.loads.__getitem__)
