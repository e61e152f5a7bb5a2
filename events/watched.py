"""A key-value bucket mirrored in memory by a KV watch (node registry, API keys, sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Generic, TypeVar

from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from events.bus import Bus

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class WatchedBucket(Generic[M]):
    """Every entry of one bucket, parsed as `model`, kept current; deletions drop the entry."""

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        model: type[M],
        keys: str = ">",
        quiet_s: float | None = None,
    ) -> None:
        self.bus = bus
        self.bucket = bucket
        self.model = model
        self.keys = keys  # the keys mirrored (subject wildcards): all of them by default
        # With `quiet_s` (only for keys=">": it compares with the whole stream), a watch that
        # delivers nothing for that long is checked against the bucket's last revision and read
        # anew when behind: an ordered consumer lost with a NATS node can take nats-py tens of
        # seconds to notice, and a view that silently stopped is worse than one that says so.
        self.quiet_s = quiet_s
        self.items: dict[str, M] = {}
        self.revision = 0  # the newest bucket revision this view has applied
        # The view is known to hold every write made up to `current_at` (None: not loaded yet).
        # `gap`: the last spell, (from, to), in which it was not known current for two quiet
        # spells (NATS away or not answering: writers could not write either).
        self.current_at: datetime | None = None
        self.gap: tuple[datetime, datetime] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Load every entry and follow changes; returns once the initial load is done, or
        raises `TimeoutError` after 10 s — calling it again then keeps the follower that is
        still trying and waits for it anew."""
        self._stopping = False
        if self._task is None or self._task.done():
            kv = await self.bus.js.key_value(self.bucket)
            self._task = asyncio.create_task(self._follow(kv))
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        """Stop following."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def parse(self, key: str, value: bytes) -> M:
        """The entry `key` as its model; subclasses that need the bytes as stored see them here."""
        return self.model.model_validate_json(value)

    def changed(self, key: str, item: M | None) -> None:
        """Called after every change (None: deleted); subclasses keep indexes with it."""

    def _current(self, at: datetime, heard: datetime) -> None:
        """The view holds every write made up to `at`, as learnt at `heard`."""
        if (
            self.current_at is not None
            and self.quiet_s is not None
            and (heard - self.current_at).total_seconds() > 2 * self.quiet_s
        ):
            self.gap = (self.current_at, heard)
        if self.current_at is None or at > self.current_at:
            self.current_at = at

    def behind_for(self, now: datetime | None = None) -> float:
        """Seconds since the view was last known to hold every write (0 before it loaded)."""
        if self.current_at is None:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - self.current_at).total_seconds())

    async def _caught_up(self, kv: KeyValue) -> bool:
        """Whether the quiet watch has applied the bucket's last revision (then the view is
        current as of now); False when it is behind."""
        asked = datetime.now(UTC)
        status = await kv.status()
        if status.stream_info.state.last_seq <= self.revision:
            self._current(asked, datetime.now(UTC))
            return True
        log.warning(
            "the watch on %s fell behind (bucket at revision %d, view at %d); reading it again",
            self.bucket,
            status.stream_info.state.last_seq,
            self.revision,
        )
        return False

    async def _follow(self, kv: KeyValue) -> None:
        while not self._stopping:
            watcher = None
            try:
                # Inside the try: a watch that cannot be set up (NATS slow to answer, away) is
                # tried again, not the end of the mirror.
                asked = datetime.now(UTC)
                watcher = await kv.watch(self.keys)
                loaded: set[str] | None = set()  # keys of the initial values, until their end
                while not self._stopping:
                    try:
                        # asyncio.timeout, not nats-py's `updates` (wait_for): on Python 3.11
                        # wait_for can swallow a cancel, and `stop` would wait forever
                        async with asyncio.timeout(self.quiet_s):
                            entry = await anext(watcher)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if self._stopping or await self._caught_up(kv):
                            continue
                        break  # behind: watch anew
                    if entry is None:  # the end of the initial values
                        if loaded is not None:
                            # keys that vanished while an earlier watch was not delivering
                            for key in [k for k in self.items if k not in loaded]:
                                self.items.pop(key, None)
                                self.changed(key, None)
                            loaded = None
                        self._current(asked, datetime.now(UTC))
                        self._ready.set()
                        continue
                    self.revision = max(self.revision, entry.revision or 0)
                    written = entry.created  # when the bucket stored it (typed int, is datetime)
                    if isinstance(written, datetime) and self.current_at is not None:
                        self._current(written, written)  # a write stored: NATS took writes
                    if loaded is not None:
                        loaded.add(entry.key)
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
