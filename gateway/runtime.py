"""What one gateway process holds while it runs: the NATS connection and its live views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from events.bus import Bus
from events.envelope import Event
from events.files import FileStore
from events.job_log import JobEnds
from events.records import EnrolledKey, TenantQueue
from events.watched import WatchedBucket
from gateway.keys import KeyRing
from gateway.limits import Quotas, RateLimiter
from gateway.preplan import Preplanner
from gateway.tokens import Signer
from projections.reservations import Reservations
from projections.usage import USAGE_TOTALS, TenantUsage
from services.accounts.sessions import SessionRecord
from services.metrics import GatewayMetrics
from services.process import connect, ensure_topology
from services.registry.live import LiveNodes
from services.registry.trust import Trust
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
    trust: Trust  # the enrolled node keys, and what the gateway believes of the nodes
    sockets: Counter[str] = field(default_factory=Counter)  # open WebSockets per tenant

    @cached_property
    def files(self) -> FileStore:
        """The Batch API's files (their object store and records)."""
        return FileStore(self.bus)

    @property
    def enrolled(self) -> WatchedBucket[EnrolledKey]:
        """Each node's enrolled key, to check its record with."""
        return self.trust.enrolled

    @classmethod
    async def start(cls, settings: Settings, metrics: GatewayMetrics) -> Gateway:
        """Connect, provision, and load the node registry, enrolled keys, API keys and
        sessions."""
        signer = Signer.from_settings(settings)  # fail before connecting if no key is set
        bus = await connect(settings, "dim-gateway")
        await ensure_topology(bus, settings)
        trust = Trust(bus, settings.signed_only)
        nodes = LiveNodes(bus, settings.node_ttl_s, trust)
        keys = KeyRing(bus)
        sessions = WatchedBucket(bus, bus.names.bucket("sessions"), SessionRecord)
        await trust.start()
        await nodes.start()
        await keys.start()
        # each tenant's day (``<tenant>.<day>``), not its detail (`projections.usage_detail`)
        usage = WatchedBucket(bus, bus.names.bucket("usage"), TenantUsage, keys=USAGE_TOTALS)
        await sessions.start()
        await usage.start()
        limiter = RateLimiter(bus, settings.rate_limit_rpm, settings.tenant_rate_limit_rpm)
        reservations = Reservations(bus)
        await reservations.start()
        quotas = Quotas(usage, settings.tenant_daily_tokens, reservations, keys)
        queues = WatchedBucket(bus, bus.names.bucket("queues"), TenantQueue)
        await queues.start()
        preplanner = Preplanner(
            nodes,
            queues,
            bus.names,
            heartbeat_s=settings.heartbeat_s,
            dispatch_timeout_s=settings.dispatch_timeout_s,
        )
        believe = trust.believe if trust.required else None

        ends = await JobEnds(bus, on_end=preplanner.ended, believe=believe).start()
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
            trust,
        )

    @property
    def believe(self) -> Callable[[Event], bool] | None:
        """What job followers of this gateway ask whether to believe an event (None: all)."""
        return self.trust.believe if self.trust.required else None

    async def stop(self) -> None:
        """Stop the watches and close the connection."""
        await self.ends.stop()
        await self.queues.stop()
        await self.quotas.usage.stop()
        await self.quotas.reservations.stop()
        await self.sessions.stop()
        await self.keys.stop()
        await self.nodes.stop()
        await self.trust.stop()
        await self.bus.close()
