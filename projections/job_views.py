"""Reading the job-status read model: one job's view, or the newest views that pass a filter."""

from __future__ import annotations

from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, NoKeysError

from events.bus import Bus
from projections.job_state import JobState
from projections.job_status import decode_view


async def read_view(bus: Bus, job_id: str) -> JobState | None:
    """The stored view of a job, or None if the projection has none (yet)."""
    kv = await bus.js.key_value(bus.names.bucket("jobs"))
    try:
        entry = await kv.get(job_id)
    except KeyNotFoundError:
        return None
    return decode_view(entry.value) if entry.value else None


async def newest_views(
    bus: Bus, keep: Callable[[JobState], bool], *, limit: int, before: str | None = None
) -> list[JobState]:
    """Up to `limit` views that `keep` accepts, newest first, older than the `before` job id."""
    kv = await bus.js.key_value(bus.names.bucket("jobs"))
    try:
        keys = sorted(await kv.keys(), reverse=True)  # ids sort by creation time
    except NoKeysError:
        return []
    out: list[JobState] = []
    for key in keys:
        if before is not None and key >= before:
            continue
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # deleted since it was listed
            continue
        if entry.value:
            view = decode_view(entry.value)
            if keep(view):
                out.append(view)
                if len(out) >= limit:
                    break
    return out
