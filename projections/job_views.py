"""Reading the job-status read model: one job's view, or the newest views that pass a filter
— of one tenant (or one owner) through the job index, so a listing reads what it may show, not
every tenant's jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError

from events.bus import Bus
from events.subjects import encode_token
from projections.job_state import JobState
from projections.job_status import decode_view

log = logging.getLogger(__name__)


def index_key(tenant: str, owner: str, job_id: str) -> str:
    """The job index's key of a job: ``<tenant>.<owner>.<job id>`` (each an encoded token)."""
    return f"{encode_token(tenant)}.{encode_token(owner)}.{job_id}"


async def index_job(bus: Bus, view: JobState) -> None:
    """Put the job in its tenant's index (idempotent)."""
    await (await bus.bucket("job_index")).put(index_key(view.tenant, view.owner, view.job_id), b"")


def index_filter(tenant: str, owner: str | None) -> str:
    """The index keys of a tenant's jobs (or of one owner's)."""
    return (
        f"{encode_token(tenant)}.{encode_token(owner)}.*"
        if owner
        else f"{encode_token(tenant)}.*.*"
    )


async def read_view(bus: Bus, job_id: str) -> JobState | None:
    """The stored view of a job, or None if the projection has none (yet)."""
    entry = await (await bus.bucket("jobs")).get(job_id)
    return decode_view(entry.value) if entry else None


async def newest_views(
    bus: Bus,
    keep: Callable[[JobState], bool],
    *,
    limit: int,
    before: str | None = None,
    tenant: str | None = None,
    owner: str | None = None,
) -> list[JobState]:
    """Up to `limit` views that `keep` accepts, newest first, older than the `before` job id:
    of `tenant` (and `owner`) by the job index, else of every job. A view that cannot be read
    is skipped with a warning (the listing goes on)."""
    kv = await bus.bucket("jobs")
    if tenant is not None:
        index = await bus.bucket("job_index")
        ids = [k.rsplit(".", 1)[1] for k in await index.keys(index_filter(tenant, owner))]
    else:
        ids = await kv.keys()
    out: list[JobState] = []
    for key in sorted(ids, reverse=True):  # ids sort by creation time
        if before is not None and key >= before:
            continue
        entry = await kv.get(key)  # None: deleted since it was listed
        if not entry:
            continue
        try:
            view = decode_view(entry.value)
        except ValidationError as exc:
            log.warning("job %s: its stored view cannot be read (%s); left out", key, exc)
            continue
        if keep(view):
            out.append(view)
            if len(out) >= limit:
                break
    return out
