"""Files (OpenAI's Files API, for batches): their bytes in the files object store, and a record
of each in the `file_meta` bucket under ``<tenant>.<file id>``, so that listing a tenant's files
reads only that tenant's records and never the objects.

The object of a file is named by its id. Objects without a record (a batch's parsed lines) are
internal: no one lists or downloads them through the API.
"""

from __future__ import annotations

import contextlib
import io
from typing import Literal

from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from pydantic import BaseModel, ConfigDict

from events.bus import Bus
from events.ids import new_id
from events.subjects import encode_token

Purpose = Literal["batch", "batch_output"]


def new_file_id() -> str:
    """A new file id: ``file-<sortable id>``."""
    return f"file-{new_id()}"


class FileRecord(BaseModel):
    """What the API says of a file, and whose it is."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    bytes: int
    created_at: int  # unix seconds
    filename: str
    purpose: Purpose
    tenant: str
    owner: str


def file_key(tenant: str, file_id: str) -> str:
    """The `file_meta` key of a file: ``<tenant>.<file id>`` (each an encoded token)."""
    return f"{encode_token(tenant)}.{encode_token(file_id)}"


class FileStore:
    """The files object store and its records."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._store: ObjectStore | None = None

    async def _objects(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.bus.js.object_store(self.bus.names.bucket("files"))
        return self._store

    async def put_object(self, name: str, data: bytes | io.BufferedIOBase) -> int:
        """Store `data` as object `name` (replacing one of that name); its size."""
        info = await (await self._objects()).put(name, data)
        return int(info.size or 0)

    async def read(self, name: str) -> bytes | None:
        """Object `name`'s bytes; None if there is none."""
        store = await self._objects()
        try:
            return (await store.get(name)).data or b""
        except NotFoundError:
            return None

    async def put(self, record: FileRecord, data: bytes | io.BufferedIOBase) -> None:
        """Store a file: its bytes first, then its record (a listed file is always there)."""
        await self.put_object(record.id, data)
        kv = await self.bus.bucket("file_meta")
        await kv.put(file_key(record.tenant, record.id), record.model_dump_json().encode())

    async def record(self, tenant: str, file_id: str) -> FileRecord | None:
        """The record of `tenant`'s file `file_id`; None if that tenant has no such file."""
        entry = await (await self.bus.bucket("file_meta")).get(file_key(tenant, file_id))
        return FileRecord.model_validate_json(entry.value) if entry else None

    async def records(self, tenant: str) -> list[FileRecord]:
        """Every file record of `tenant`, newest first."""
        kv = await self.bus.bucket("file_meta")
        out = []
        for key in sorted(await kv.keys(f"{encode_token(tenant)}.*"), reverse=True):
            entry = await kv.get(key)
            if entry is not None:
                out.append(FileRecord.model_validate_json(entry.value))
        return out

    async def delete(self, record: FileRecord) -> None:
        """Remove a file: its record first (so it is no longer listed), then its bytes."""
        await (await self.bus.bucket("file_meta")).delete(file_key(record.tenant, record.id))
        store = await self._objects()
        with contextlib.suppress(NotFoundError):  # deleted meanwhile
            await store.delete(record.id)
