"""A worker's presence in the mesh: its node record in the nodes bucket (what selection reads),
rewritten by heartbeats that also check the engine's health and measure the queues, and the
``node.joined`` / ``node.left`` events around its service. A worker with an NKey seed signs its
record with it (events/signing.py), so readers can check it against the key enrolled for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import UTC, datetime
from importlib import metadata

from events.bus import Bus
from events.envelope import Envelope
from events.errors import while_unavailable
from events.kv import Bucket
from events.nodes import NodeJoined, NodeLeft
from events.records import NodeRecord
from events.signing import NodeKey, signed_record
from services.engines.protocol import Engine
from services.metrics import WorkerMetrics
from services.settings import Settings
from services.worker.gpu import gpu_facts
from services.worker.intake import model_durable
from services.worker.tally import Tally

log = logging.getLogger(__name__)


def dim_version() -> str:
    """The installed dim version."""
    try:
        return metadata.version("dim")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Presence:
    """This node's record and announcements, for `engine` serving with `capacity`."""

    def __init__(
        self,
        bus: Bus,
        engine: Engine,
        settings: Settings,
        capacity: int,
        metrics: WorkerMetrics,
        tally: Tally,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.settings = settings
        self.capacity = capacity
        self.metrics = metrics
        self.tally = tally
        self.names = bus.names
        self.node_id = settings.node_id
        self.actor = f"worker/{self.node_id}"
        self.started_at = datetime.now(UTC)
        self.cold_start_s = 0.0
        self.metrics_url = ""
        self.gpus = gpu_facts()
        self.healthy = True
        self._done_at_check = 0  # generations completed when the last health check began
        self._failures = 0  # health checks failed in a row
        self.draining = False
        self.queued: dict[str, int] = {}  # tasks waiting per served model, at the last heartbeat
        seed = settings.nats_nkey_seed
        self.key = NodeKey.from_file(seed) if seed is not None else None  # its NATS identity

    def record(self) -> NodeRecord:
        """This node's current registry record."""
        t = self.tally
        return NodeRecord(
            node_id=self.node_id,
            models=self.engine.models,
            engine=self.engine.kind,
            capacity=self.capacity,
            in_flight=t.in_flight,
            version=dim_version(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            heartbeat_at=datetime.now(UTC),
            tasks_completed=t.completed,
            tasks_failed=t.failed,
            tokens_out=t.tokens_out,
            draining=self.draining,
            max_context=getattr(self.engine, "max_context", None),
            gpus=self.gpus,
            cold_start_s=round(self.cold_start_s, 3),
            avg_latency_ms=t.avg_latency_ms,
            metrics_url=self.metrics_url,
            tenants=self.settings.tenants,
            healthy=self.healthy,
            queued=dict(self.queued),
            capabilities=self.engine.capabilities(),
        )

    def stored(self) -> bytes:
        """This node's current record as the nodes bucket stores it (signed, if it has a key)."""
        record = self.record()
        if self.key is not None:
            record = signed_record(record, self.key)
        return record.model_dump_json().encode()

    async def join(self, stop: asyncio.Event) -> Bucket:
        """Write the node record and announce the node; the nodes bucket, for heartbeats.

        NATS not answering for now (paused, failing over) is waited out at each step: a worker
        starting meanwhile would otherwise end for good."""
        nodes = await while_unavailable(
            lambda: self.bus.bucket("nodes"), stop, "open " + self.names.bucket("nodes")
        )
        record = self.stored()
        await while_unavailable(lambda: nodes.put(self.node_id, record), stop, "register the node")
        joined = Envelope(
            NodeJoined(
                node_id=self.node_id,
                models=self.engine.models,
                engine=self.engine.kind,
                capacity=self.capacity,
                dim_version=dim_version(),
            ),
            actor=self.actor,
        )
        subject = self.names.node_event(self.node_id, joined.type)
        # One envelope, so a retry after a lost ack has its id and is stored once.
        await while_unavailable(lambda: self.bus.publish(subject, joined), stop, "announce")
        return nodes

    async def leave(self, nodes: Bucket) -> None:
        """Remove the node record and say the node left."""
        await nodes.delete(self.node_id)
        left = NodeLeft(node_id=self.node_id, tasks_completed=self.tally.completed)
        await self.bus.publish(
            self.names.node_event(self.node_id, left.type), Envelope(left, actor=self.actor)
        )

    async def heartbeat(self, nodes: Bucket, stop: asyncio.Event) -> None:
        """Rewrite the node record every `heartbeat_s` until `stop` (the last one says
        draining)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_s)
            if stop.is_set():
                self.draining = True
            try:
                await self._check_health()
                with contextlib.suppress(Exception):  # the record goes out regardless
                    await self._measure_queues()
                await nodes.put(self.node_id, self.stored())
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    async def _check_health(self) -> None:
        """Ask the engine; one that fails to answer leaves selection — unless it is plainly
        alive: it finished generations since the last check, or it is busy and this is its
        first failure in a row. A busy engine (say `vllm serve` with its API server on cores its
        model also uses) may answer a health check late; a hung one fails twice."""
        done, t = self.tally.completed, self.tally
        try:
            async with asyncio.timeout(max(1.0, self.settings.heartbeat_s)):
                await self.engine.check_health()
        except Exception as exc:
            self._failures += 1
            busy = done > self._done_at_check or (t.in_flight > 0 and self._failures == 1)
            if busy and self.healthy:
                log.info("engine health check failed while it answers requests: %r", exc)
            else:
                if self.healthy:
                    log.warning("engine unhealthy, leaving selection: %r", exc)
                self.healthy = False
        else:
            self._failures = 0
            if not self.healthy:
                log.info("engine healthy again")
            self.healthy = True
        self._done_at_check = done

    async def _measure_queues(self) -> None:
        """Tasks waiting per served model (its shared consumer's backlog), for /metrics."""
        for model in self.engine.models:
            backlog = await self.bus.backlog(self.names.tasks_stream, model_durable(model))
            if backlog is None:  # a node reserved for tenants has no shared consumer
                continue
            pending, ack_pending = backlog
            self.metrics.queued.labels(model=model).set(pending + ack_pending)
            self.queued[model] = pending
