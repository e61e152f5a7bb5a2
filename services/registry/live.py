"""A live in-memory view of the nodes bucket, kept current by a KV watch; and whether each
record is signed by the key enrolled for its node."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

from events.bus import Bus
from events.records import EnrolledKey, NodeRecord
from events.signing import record_verified
from events.watched import WatchedBucket
from services.registry.select import Pool
from services.registry.trust import Trust

# A live list this recent is reused: every request asks several times, heartbeats are seconds
# apart, and a record changing in the bucket drops it at once.
_LIVE_FOR_S = 0.05


class LiveNodes(WatchedBucket[NodeRecord]):
    """Every node record, by id; `live()` filters by heartbeat age (expiry sends no delete).

    With a `trust` that requires signatures, only nodes whose records their enrolled keys
    signed enter the selection pool (and leave it when their key is revoked or replaced)."""

    def __init__(self, bus: Bus, ttl_s: float, trust: Trust | None = None) -> None:
        super().__init__(bus, bus.names.bucket("nodes"), NodeRecord)
        self.ttl_s = ttl_s
        self.trust = trust if trust is not None and trust.required else None
        if self.trust is not None:
            self.trust.enrolled.listeners.append(self._rekeyed)
        self.pool = Pool(ttl_s=ttl_s)  # what selection sees: live, not draining
        self._live: tuple[float, list[NodeRecord]] | None = None  # (when, what) `live()` found
        self._stored: dict[str, bytes] = {}  # each record as written: what its signature covers
        self.unbelieved: set[str] = set()  # nodes whose records their enrolled keys did not sign

    def parse(self, key: str, value: bytes) -> NodeRecord:
        """The record, and its bytes kept for `verified` (checked only when asked)."""
        record = super().parse(key, value)
        self._stored[key] = value
        return record

    def changed(self, key: str, item: NodeRecord | None) -> None:
        """Keep the selection pool in step with the bucket."""
        self._live = None
        self.unbelieved.discard(key)
        if item is None:
            self._stored.pop(key, None)
            self.pool.remove(key)
        elif self.trust is not None and not self.verified(key, self.trust.enrolled.items):
            self.unbelieved.add(key)
            self.pool.remove(key)  # an unknown key never receives work
        elif item.draining or not self.gone(key):
            self.pool.update(item)  # a draining node leaves selection

    def _rekeyed(self, node_id: str) -> None:
        """The node's enrolled key changed (approved, replaced, revoked): judge it again."""
        record = self.items.get(node_id)
        if record is not None:
            self.changed(node_id, record)

    def verified(self, node_id: str, enrolled: Mapping[str, EnrolledKey]) -> bool:
        """Whether the node's record is its own (not another node's, replayed under its id) and
        signed by the key `enrolled` holds for that node id."""
        record, key = self.items.get(node_id), enrolled.get(node_id)
        if record is None or record.node_id != node_id or key is None:
            return False
        stored = self._stored.get(node_id)
        return stored is not None and record_verified(stored, key.public_key)

    def waiting(self, model: str) -> int:
        """Tasks waiting on `model`'s shared subject, as its live nodes last reported (they all
        measure the same consumer)."""
        return max((n.queued.get(model, 0) for n in self.serving(model)), default=0)

    def known(self, model: str) -> bool:
        """Whether any node this view has seen, live or not, serves `model`."""
        return any(model in n.models for n in self.items.values())

    def restarted(self, node_id: str, since: datetime) -> bool:
        """Whether the node's record is of an instance started after `since` (its worker was
        restarted under the same id: what its predecessor was running is lost)."""
        record = self.items.get(node_id)
        return record is not None and record.started_at > since

    def gone(self, node_id: str, now: datetime | None = None) -> bool:
        """Whether the node stopped heartbeating, removed its record, or is no longer believed
        (its key revoked: it is cut off); draining is not gone."""
        record = self.items.get(node_id)
        if record is None or node_id in self.unbelieved:
            return True
        return not record.fresh(now or datetime.now(UTC), self.ttl_s)

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """Every record the bucket holds, live or not."""
        return self.items

    def live(self, now: datetime | None = None) -> list[NodeRecord]:
        """Nodes that heartbeated recently and are not draining (do not change the list)."""
        if now is not None:
            return [
                n
                for n in self.items.values()
                if n.live(now, self.ttl_s) and n.node_id not in self.unbelieved
            ]
        t = time.monotonic()
        if self._live is not None and t - self._live[0] < _LIVE_FOR_S:
            return self._live[1]
        wall = datetime.now(UTC)
        nodes = [
            n
            for n in self.items.values()
            if n.live(wall, self.ttl_s) and n.node_id not in self.unbelieved
        ]
        self._live = (t, nodes)
        return nodes

    def serving(self, model: str, now: datetime | None = None) -> list[NodeRecord]:
        """Live nodes that serve `model`."""
        return [n for n in self.live(now) if model in n.models]

    def live_models(self, now: datetime | None = None) -> set[str]:
        """Every model some live node serves."""
        return {m for n in self.live(now) for m in n.models}
