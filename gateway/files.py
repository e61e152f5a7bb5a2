"""The Files API's logic: upload a batch input file within its bounds, read, list and delete
files within a tenant (another tenant's file is a 404, as if it did not exist)."""

from __future__ import annotations

import time

from events.files import FileRecord, new_file_id
from events.subjects import is_id
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway

MAX_FILENAME = 255


def require_batch_purpose(purpose: object) -> None:
    """400 naming `purpose` unless it is ``batch``: the only purpose dim serves."""
    if purpose != "batch":
        raise ApiError(
            400,
            f"purpose {purpose!r} is not served: dim's Files API holds the input files of the "
            "Batch API (purpose 'batch'); batch output files are made by dim",
            code="invalid_request",
            param="purpose",
        )


def check_upload(gw: Gateway, data: bytes) -> None:
    """400 for an empty file, a file that is not UTF-8 or over `DIM_BATCH_MAX_LINES` lines;
    413 over `DIM_FILE_MAX_BYTES`."""
    settings = gw.settings
    if len(data) > settings.file_max_bytes:
        raise ApiError(
            413,
            f"the file is {len(data):,} bytes; the most is {settings.file_max_bytes:,} "
            "(DIM_FILE_MAX_BYTES): split it into several batches",
            code="file_too_large",
            param="file",
        )
    if not data.strip():
        raise ApiError(400, "the file is empty", code="empty_file", param="file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"a batch input file is UTF-8 JSONL: {exc}", code="invalid_file", param="file"
        ) from None
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    if lines > settings.batch_max_lines:
        raise ApiError(
            400,
            f"the file has {lines:,} requests; a batch holds at most {settings.batch_max_lines:,} "
            "(DIM_BATCH_MAX_LINES): split it into several batches",
            code="too_many_requests",
            param="file",
        )


async def upload(gw: Gateway, principal: Principal, data: bytes, filename: str) -> FileRecord:
    """Store a checked batch input file as the caller's."""
    check_upload(gw, data)
    record = FileRecord(
        id=new_file_id(),
        bytes=len(data),
        created_at=int(time.time()),
        filename=(filename or "input.jsonl")[:MAX_FILENAME],
        purpose="batch",
        tenant=principal.tenant,
        owner=principal.principal_id,
    )
    await gw.files.put(record, data)
    return record


async def load(gw: Gateway, principal: Principal, file_id: str) -> FileRecord:
    """The caller's file (its owner's, or any of its tenant's for an admin); 404 otherwise."""
    record = await gw.files.record(principal.tenant, file_id) if is_id(file_id) else None
    if record is None or not principal.may_see(record.owner, record.tenant):
        raise ApiError(404, f"no file {file_id!r}", code="file_not_found", param="file_id")
    return record


async def content(gw: Gateway, principal: Principal, file_id: str) -> tuple[FileRecord, bytes]:
    """A file's record and bytes."""
    record = await load(gw, principal, file_id)
    data = await gw.files.read(record.id)
    if data is None:  # deleted meanwhile
        raise ApiError(404, f"no file {file_id!r}", code="file_not_found", param="file_id")
    return record, data


async def listing(
    gw: Gateway,
    principal: Principal,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    ascending: bool,
) -> tuple[list[FileRecord], bool]:
    """A page of the caller's files (and whether more follow), after the file `after`."""
    records = [
        r
        for r in await gw.files.records(principal.tenant)
        if principal.may_see(r.owner, r.tenant) and (purpose is None or r.purpose == purpose)
    ]
    if ascending:
        records.reverse()
    if after is not None:  # ids sort by creation time
        records = [r for r in records if (r.id > after if ascending else r.id < after)]
    return records[:limit], len(records) > limit
