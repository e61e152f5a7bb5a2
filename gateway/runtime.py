"""What one gateway process holds while it runs: the NATS connection and its live views."""

from __future__ import annotations

from dataclasses import dataclass

from events.bus import Bus
from events.job_log import JobEnds
from events.records import EnrolledKey, TenantQueue
from events.watched import WatchedBucket
from gateway.keys import KeyRing
from gateway.limits import Quotas, RateLimiter
from gateway.preplan import Preplanner
from gateway.tokens import Signer
from projections.usage import TenantUsage
from services.accounts.sessions import SessionRecord
from services.metrics import GatewayMetrics
from services.process import connect, ensure_topology
from services.registry.enrolled import enrolled_keys
from services.registry.live import LiveNodes
from services.settings import Settings


@dataclass
class Gateway:
    """The gateway's connection to the mesh; kept on ``app.state.gateway``."""

    settings: Settings
    bus: Bus
    nodes: LiveNodes
    keys: KeyRing
    sessions: WatchedBucket[SessionRecord]
    signer: Signer
    limiter: RateLimiter
    quotas: Quotas
    metrics: GatewayMetrics
    ends: JobEnds  # jobs' ends, for whole (non-streamed) answers
    queues: WatchedBucket[TenantQueue]  # each tenant's jobs held for capacity
    preplanner: Preplanner  # plans plain jobs at the door while their models have room
    enrolled: WatchedBucket[EnrolledKey]  # each node's enrolled key, to check its record with

    @classmethod
    async def start(cls, settings: Settings, metrics: GatewayMetrics) -> Gateway:
        """Connect, provision, and load the node registry, enrolled keys, API keys and
        sessions."""
        signer = Signer.from_settings(settings)  # fail before connecting if no key is set
        bus = await connect(settings, "dim-gateway")
        await ensure_topology(bus, settings)
        nodes = LiveNodes(bus, settings.node_ttl_s)
        keys = KeyRing(bus)
        sessions = WatchedBucket(bus, bus.names.bucket("sessions"), SessionRecord)
        enrolled = enrolled_keys(bus)
        await nodes.start()
        await enrolled.start()
        await keys.start()
        usage = WatchedBucket(bus, bus.names.bucket("usage"), TenantUsage)
        await sessions.start()
        await usage.start()
        limiter = RateLimiter(bus, settings.rate_limit_rpm)
        quotas = Quotas(usage, settings.tenant_daily_tokens)
        queues = WatchedBucket(bus, bus.names.bucket("queues"), TenantQueue)
        await queues.start()
        preplanner = Preplanner(
            nodes,
            queues,
            bus.names,
            heartbeat_s=settings.heartbeat_s,
            dispatch_timeout_s=settings.dispatch_timeout_s,
        )
        ends = await JobEnds(bus, on_end=preplanner.ended).start()
        return cls(
            settings,
            bus,
            nodes,
            keys,
            sessions,
            signer,
            limiter,
            quotas,
            metrics,
            ends,
            queues,
            preplanner,
            enrolled,
        )

    async def stop(self) -> None:
        """Stop the watches and close the connection."""
        await self.ends.stop()
        await self.queues.stop()
        await self.quotas.usage.stop()
        await self.sessions.stop()
        await self.keys.stop()
        await self.enrolled.stop()
        await self.nodes.stop()
        await self.bus.close()
