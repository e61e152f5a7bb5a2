"""What the orchestrator's ticker keeps up besides jobs: the nodes whose heartbeats stopped
(recorded as `node.lost`), and each tenant's held jobs in the queues bucket (the gateways bound
them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from events.bus import Bus
from events.envelope import Envelope
from events.nodes import NodeLost
from events.records import TenantQueue
from events.subjects import encode_token
from services.registry.live import LiveNodes

log = logging.getLogger(__name__)


async def record_lost(bus: Bus, nodes: LiveNodes, actor: str) -> None:
    """Drop nodes with stale heartbeats from selection and record each as `node.lost`.

    Every orchestrator instance notices; the message id (node and last heartbeat) makes
    JetStream keep one event. Judged as `LiveNodes.gone` judges: a view that stopped delivering,
    or NATS away, loses no node.
    """
    for node_id, record in nodes.expire():
        lost = NodeLost(
            node_id=node_id, last_heartbeat_at=record.heartbeat_at, in_flight=record.in_flight
        )
        msg_id = f"lost-{node_id}-{int(record.heartbeat_at.timestamp() * 1000)}"
        log.warning("node %s lost: no heartbeat since %s", node_id, record.heartbeat_at)
        await bus.publish(
            bus.names.node_event(node_id, lost.type), Envelope(lost, actor=actor, id=msg_id)
        )


class HeldCounts:
    """Each tenant's held jobs in the queues bucket, written when the number changes (every
    instance writes the same numbers)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._published: dict[str, int] = {}  # tenant -> held jobs last written

    async def publish(self, counts: Mapping[str, int]) -> None:
        """Write the tenants whose count changed (a tenant no longer held: 0)."""
        changed = {t: n for t, n in counts.items() if self._published.get(t) != n}
        changed |= {t: 0 for t in self._published if t not in counts and self._published[t]}
        if not changed:
            return
        kv = await self.bus.bucket("queues")
        for tenant, n in changed.items():
            record = TenantQueue(tenant=tenant, held=n)
            await kv.put(encode_token(tenant), record.model_dump_json().encode())
            self._published[tenant] = n
