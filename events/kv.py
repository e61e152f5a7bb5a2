"""One key-value bucket as dim uses it: read, write, compare-and-set, list; nats-py's errors
become dim's (`WrongLastSequence` when a compare-and-set loses), and "no such key" is None.

`change` is the read/modify/compare-and-set loop every writer of a shared key needs: it reads
the value, asks `modify` for the new one and writes it only if nobody wrote in between, else it
reads again (`events.retry`'s policy bounds the rounds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from events.errors import WrongLastSequence
from events.retry import VIEW_WRITE, Backoff


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value and the revision that wrote it."""

    value: bytes
    revision: int


class Bucket:
    """A key-value bucket (made by `Bus.bucket`)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, key: str) -> Entry | None:
        """The key's entry; None if it has none or was deleted."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return Entry(entry.value, entry.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        """Write whatever is there; the new revision."""
        return await self._kv.put(key, value)

    async def create(self, key: str, value: bytes) -> int:
        """Write a key that has no value; `WrongLastSequence` if it has one."""
        try:
            return await self._kv.create(key, value)
        except KeyWrongLastSequenceError as exc:
            raise WrongLastSequence(f"{key}: already written") from exc

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write if the key is still at `revision`; `WrongLastSequence` if it moved on."""
        try:
            return await self._kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise WrongLastSequence(f"{key}: not at revision {revision} any more") from exc

    async def write(self, key: str, value: bytes, revision: int | None) -> int:
        """`create` when `revision` is None, else `update`."""
        if revision is None:
            return await self.create(key, value)
        return await self.update(key, value, revision)

    async def delete(self, key: str) -> None:
        """Remove the key's value (its history says it was deleted)."""
        await self._kv.delete(key)

    async def keys(self, pattern: str = ">") -> list[str]:
        """Every key with a value that matches `pattern` (subject wildcards), filtered by the
        server: only those travel (nats-py's own `keys(filters=)` reads every key and matches
        substrings). Empty when none."""
        if pattern == ">":
            try:
                return list(await self._kv.keys())
            except NoKeysError:
                return []
        watcher = await self._kv.watch(pattern, ignore_deletes=True, meta_only=True)
        found: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                found.append(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def change(
        self,
        key: str,
        modify: Callable[[Entry | None], bytes | None],
        policy: Backoff = VIEW_WRITE,
    ) -> int | None:
        """Compare-and-set `key` to `modify(current)` (None: leave it); the revision written, or
        None if nothing was. Raises `WrongLastSequence` when other writers won every round."""
        rounds = 0
        while True:
            rounds += 1
            current = await self.get(key)
            new = modify(current)
            if new is None:
                return None
            try:
                return await self.write(key, new, current.revision if current else None)
            except WrongLastSequence:
                if not policy.more(rounds):
                    raise
