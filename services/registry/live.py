"""A live in-memory view of the nodes bucket, kept current by a KV watch."""

from __future__ import annotations

from datetime import UTC, datetime

from events.bus import Bus
from events.watched import WatchedBucket
from services.registry.records import NodeRecord


class LiveNodes(WatchedBucket[NodeRecord]):
    """Every node record, by id; `live()` filters by heartbeat age (expiry sends no delete)."""

    def __init__(self, bus: Bus, ttl_s: float) -> None:
        super().__init__(bus, bus.names.bucket("nodes"), NodeRecord)
        self.ttl_s = ttl_s

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """Every record the bucket holds, live or not."""
        return self.items

    def live(self, now: datetime | None = None) -> list[NodeRecord]:
        """Nodes that heartbeated recently and are not draining."""
        now = now or datetime.now(UTC)
        return [n for n in self.items.values() if n.live(now, self.ttl_s)]

    def serving(self, model: str, now: datetime | None = None) -> list[NodeRecord]:
        """Live nodes that serve `model`."""
        return [n for n in self.live(now) if model in n.models]

    def live_models(self, now: datetime | None = None) -> set[str]:
        """Every model some live node serves."""
        return {m for n in self.live(now) for m in n.models}
