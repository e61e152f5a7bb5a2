"""A live in-memory view of the nodes bucket, kept current by a KV watch; and whether each
record is signed by the key enrolled for its node."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from events.bus import Bus
from events.records import EnrolledKey, NodeRecord
from events.signing import record_verified
from events.watched import WatchedBucket
from services.registry.select import Pool
from services.registry.trust import Trust

log = logging.getLogger(__name__)

# A live list this recent is reused: every request asks several times, heartbeats are seconds
# apart, and a record changing in the bucket drops it at once.
_LIVE_FOR_S = 0.05


class LiveNodes(WatchedBucket[NodeRecord]):
    """Every node record, by id; `live()` filters by heartbeat age (expiry sends no delete).

    With a `trust` that requires signatures, only nodes whose records their enrolled keys
    signed enter the selection pool (and leave it when their key is revoked or replaced).

    Ages are judged as of `as_of()`: the last moment the view is known to hold every write, not
    the wall clock. A view whose watch stopped delivering (the NATS node it watched through
    died) would otherwise see every live node's heartbeat age and call it gone; while it is
    `stale` (not current for a whole TTL) it cannot tell, and `gone` says no."""

    def __init__(self, bus: Bus, ttl_s: float, trust: Trust | None = None) -> None:
        # Live nodes write every heartbeat (well within the TTL): a watch quiet for a third of
        # it is checked against the bucket.
        super().__init__(bus, bus.names.bucket("nodes"), NodeRecord, quiet_s=ttl_s / 3)
        self.ttl_s = ttl_s
        self._said_stale = False  # whether the stale view was logged (once per spell)
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

    def as_of(self, now: datetime | None = None) -> datetime:
        """The time heartbeat ages are judged at: `now`, or the last moment the view is known
        to be current if that is earlier."""
        now = now or datetime.now(UTC)
        return now if self.current_at is None else min(now, self.current_at)

    def stale(self, now: datetime | None = None) -> bool:
        """Whether the view has not been known current for a whole TTL (its watch stopped
        delivering): it cannot tell whether any node is gone. Logged once per spell."""
        stale = self.behind_for(now) > self.ttl_s
        if stale and not self._said_stale:
            log.warning(
                "the view of %s is stale (not current for %.1f s): no node is called gone "
                "until it is read again",
                self.bucket,
                self.behind_for(now),
            )
        elif not stale and self._said_stale:
            log.info("the view of %s is current again", self.bucket)
        self._said_stale = stale
        return stale

    def fresh(self, record: NodeRecord, now: datetime | None = None) -> bool:
        """Whether the node heartbeated within the TTL, as of `as_of(now)`. A node still fresh
        when the view's last gap began (NATS away: it could not store a heartbeat) counts as
        heartbeating at the gap's end, so it is gone only once the view watched a whole TTL
        pass without one."""
        last, ttl = record.heartbeat_at, timedelta(seconds=self.ttl_s)
        if self.gap is not None and last < self.gap[1] and self.gap[0] - last <= ttl:
            last = self.gap[1]
        return self.as_of(now) - last <= ttl

    def gone(self, node_id: str, now: datetime | None = None) -> bool:
        """Whether the node stopped heartbeating, removed its record, or is no longer believed
        (its key revoked: it is cut off); draining is not gone. A stale view says no (except
        for a node not believed: that is the trust view's word)."""
        if node_id in self.unbelieved:
            return True
        if self.stale(now):
            return False
        record = self.items.get(node_id)
        return record is None or not self.fresh(record, now)

    def expire(self) -> list[tuple[str, NodeRecord]]:
        """Drop the nodes `gone` calls gone (not those not believed: they are out already)
        from the selection pool; returns them."""
        lost = [
            (i, r)
            for i, r in list(self.pool.records.items())
            if i not in self.unbelieved and self.gone(i)
        ]
        for i, _ in lost:
            self.pool.remove(i)
        return lost

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
                if not n.draining and self.fresh(n, now) and n.node_id not in self.unbelieved
            ]
        t = time.monotonic()
        if self._live is not None and t - self._live[0] < _LIVE_FOR_S:
            return self._live[1]
        nodes = [
            n
            for n in self.items.values()
            if not n.draining and self.fresh(n) and n.node_id not in self.unbelieved
        ]
        self._live = (t, nodes)
        return nodes

    def serving(self, model: str, now: datetime | None = None) -> list[NodeRecord]:
        """Live nodes that serve `model`."""
        return [n for n in self.live(now) if model in n.models]

    def live_models(self, now: datetime | None = None) -> set[str]:
        """Every model some live node serves."""
        return {m for n in self.live(now) for m in n.models}
