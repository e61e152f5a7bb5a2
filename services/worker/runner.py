"""The worker process: registers its node, pulls tasks for its models, drives the engine.

The parts: `Intake` takes the tasks (the `Worker` is one), `Generation` runs each attempt and
reports its result, `Presence` keeps the node record and announces the node. On SIGTERM the
worker drains: asks for no more work, finishes what it has, removes its node record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from events.bus import Bus
from events.consume import run_pool
from events.jobs import JobCancelled, JobFailed
from services.engines.protocol import Engine
from services.health import Health
from services.metrics import WorkerMetrics
from services.settings import Settings
from services.worker.generation import Generation
from services.worker.intake import Intake
from services.worker.presence import Presence
from services.worker.tally import Tally

log = logging.getLogger(__name__)


class Worker(Intake):
    """One worker node serving `engine`'s models: the `Intake` its task consumers deliver to,
    with a `Generation` to run the tasks and a `Presence` to keep its node record. Its
    `/metrics`, `/healthz` and `/readyz` are `health`'s (served by `dim worker` from its start),
    else its own server's."""

    def __init__(
        self, bus: Bus, engine: Engine, settings: Settings, health: Health | None = None
    ) -> None:
        tally = Tally()
        metrics = WorkerMetrics(engine.kind)
        generation = Generation(bus, engine, settings, metrics, tally)
        super().__init__(bus, settings, engine.models, metrics, tally, generation)
        self.engine = engine
        self.capacity = min(settings.capacity, engine.capacity)
        self.presence = Presence(bus, engine, settings, self.capacity, metrics, tally)
        self.health = health or Health(settings, f"worker {settings.node_id}")
        self._loaded = False

    # The counts, as the worker reports them.
    @property
    def in_flight(self) -> int:
        return self.tally.in_flight

    @property
    def completed(self) -> int:
        return self.tally.completed

    @property
    def failed(self) -> int:
        return self.tally.failed

    @property
    def tokens_out(self) -> int:
        return self.tally.tokens_out

    @property
    def aborted(self) -> int:
        return self.tally.aborted

    @property
    def skipped(self) -> int:
        return self.tally.skipped

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain and deregister."""
        health = self.health
        own_server = not health.serving  # in tests: a worker in the test's process
        health.include(self.metrics.registry)
        health.include(lambda: getattr(self.engine, "metrics_registry", None))  # vLLM's own
        health.needs(lambda: None if self._loaded else "engine loaded")
        health.needs(lambda: "draining" if self.presence.draining else None)
        for spec in self.consumers():
            health.needs_consumer(spec.stream, spec.durable)
        if own_server:
            health.serve()
        health.attach(self.bus)
        try:
            await self._serve(stop)
        finally:
            if own_server:
                health.close()

    async def _serve(self, stop: asyncio.Event) -> None:
        await self._start_engine()
        presence = self.presence
        nodes = await presence.join(stop)
        heartbeat = asyncio.create_task(presence.heartbeat(nodes, stop))
        # A job that ends early (cancelled, or failed: a deadline, another task's failure) says
        # so on its subject: listen to all of them, abort what this worker runs for it and skip
        # its tasks still queued here.
        ends = [
            await self.bus.subscribe(self.names.job("*", t), self.on_end)
            for t in (JobCancelled.type, JobFailed.type)
        ]
        log.info(
            "worker %s serving %s (capacity %d)",
            self.node_id,
            ", ".join(self.engine.models),
            self.capacity,
        )
        try:
            await run_pool(
                self.bus, self.consumers(), self.handle, capacity=self.capacity, stop=stop
            )
        finally:
            presence.draining = True
            for sub in ends:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):
                await presence.leave(nodes)
            await self.engine.close()
            log.info(
                "worker %s stopped (%d completed, %d failed)",
                self.node_id,
                self.completed,
                self.failed,
            )

    async def _start_engine(self) -> None:
        """Load and warm the model and check it serves; the node record names /metrics."""
        t0 = time.monotonic()
        await self.engine.start()  # load and warm the model before announcing the node
        await self.engine.check_health()  # announce only an engine that can serve
        cold_start_s = time.monotonic() - t0
        self.presence.cold_start_s = cold_start_s
        self.metrics.cold_start.set(cold_start_s)
        self._loaded = True
        self.presence.metrics_url = f"{self.health.base_url}/metrics"
