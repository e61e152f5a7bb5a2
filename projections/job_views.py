"""Reading the job-status read model: one job's view, or the newest views that pass a filter."""

from __future__ import annotations

from collections.abc import Callable

from events.bus import Bus
from projections.job_state import JobState
from projections.job_status import decode_view


async def read_view(bus: Bus, job_id: str) -> JobState | None:
    """The stored view of a job, or None if the projection has none (yet)."""
    entry = await (await bus.bucket("jobs")).get(job_id)
    return decode_view(entry.value) if entry else None


async def newest_views(
    bus: Bus, keep: Callable[[JobState], bool], *, limit: int, before: str | None = None
) -> list[JobState]:
    """Up to `limit` views that `keep` accepts, newest first, older than the `before` job id."""
    kv = await bus.bucket("jobs")
    keys = sorted(await kv.keys(), reverse=True)  # ids sort by creation time
    out: list[JobState] = []
    for key in keys:
        if before is not None and key >= before:
            continue
        entry = await kv.get(key)  # None: deleted since it was listed
        if entry:
            view = decode_view(entry.value)
            if keep(view):
                out.append(view)
                if len(out) >= limit:
                    break
    return out
