"""A live in-memory view of the nodes bucket, kept current by a KV watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from nats.js.kv import KeyValue
from pydantic import ValidationError

from events.bus import Bus
from services.registry.records import NodeRecord

log = logging.getLogger(__name__)


class LiveNodes:
    """Every node record, by id; `live()` filters by heartbeat age (expiry sends no delete)."""

    def __init__(self, bus: Bus, ttl_s: float) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self.nodes: dict[str, NodeRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Load the current records and follow changes; returns once the initial load is done."""
        kv = await self.bus.js.key_value(self.bus.names.bucket("nodes"))
        self._task = asyncio.create_task(self._follow(kv))
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, kv: KeyValue) -> None:
        while True:
            watcher = await kv.watchall()
            try:
                async for entry in watcher:
                    if entry is None:  # end of the initial values
                        self._ready.set()
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.nodes.pop(entry.key, None)
                        continue
                    try:
                        self.nodes[entry.key] = NodeRecord.model_validate_json(entry.value)
                    except ValidationError:
                        log.warning("ignoring a malformed node record %r", entry.key)
                    if entry.delta == 0:
                        self._ready.set()
            except Exception:
                log.warning("node watch broke; watching again", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    def live(self, now: datetime | None = None) -> list[NodeRecord]:
        """Nodes that heartbeated recently and are not draining."""
        now = now or datetime.now(UTC)
        return [n for n in self.nodes.values() if n.live(now, self.ttl_s)]

    def serving(self, model: str, now: datetime | None = None) -> list[NodeRecord]:
        """Live nodes that serve `model`."""
        return [n for n in self.live(now) if model in n.models]

    def live_models(self, now: datetime | None = None) -> set[str]:
        """Every model some live node serves."""
        return {m for n in self.live(now) for m in n.models}
