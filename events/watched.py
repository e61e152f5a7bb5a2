"""A key-value bucket mirrored in memory by a KV watch (node registry, API keys, sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Generic, TypeVar

from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from events.bus import Bus

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class WatchedBucket(Generic[M]):
    """Every entry of one bucket, parsed as `model`, kept current; deletions drop the entry."""

    def __init__(self, bus: Bus, bucket: str, model: type[M], keys: str = ">") -> None:
        self.bus = bus
        self.bucket = bucket
        self.model = model
        self.keys = keys  # the keys mirrored (subject wildcards): all of them by default
        self.items: dict[str, M] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Load every entry and follow changes; returns once the initial load is done, or
        raises `TimeoutError` after 10 s — calling it again then keeps the follower that is
        still trying and waits for it anew."""
        if self._task is None or self._task.done():
            kv = await self.bus.js.key_value(self.bucket)
            self._task = asyncio.create_task(self._follow(kv))
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def parse(self, key: str, value: bytes) -> M:
        """The entry `key` as its model; subclasses that need the bytes as stored see them here."""
        return self.model.model_validate_json(value)

    def changed(self, key: str, item: M | None) -> None:
        """Called after every change (None: deleted); subclasses keep indexes with it."""

    async def _follow(self, kv: KeyValue) -> None:
        while True:
            watcher = None
            try:
                # Inside the try: a watch that cannot be set up (NATS slow to answer, away) is
                # tried again, not the end of the mirror.
                watcher = await kv.watch(self.keys)
                async for entry in watcher:
                    if entry is None:  # the end of the initial values
                        self._ready.set()
                        continue
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        self.items.pop(entry.key, None)
                        self.changed(entry.key, None)
                        continue
                    try:
                        item = self.parse(entry.key, entry.value)
                    except ValidationError:
                        log.warning("ignoring a malformed entry %r in %s", entry.key, self.bucket)
                        continue
                    self.items[entry.key] = item
                    self.changed(entry.key, item)
            except Exception:  # watch again after connection trouble
                log.warning("watch on %s broke; watching again", self.bucket, exc_info=True)
                await asyncio.sleep(1)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
