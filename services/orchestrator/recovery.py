"""Reading jobs back from the log: one job's state, and the jobs submitted since a time that have
not ended (what a restarted orchestrator takes up)."""

from __future__ import annotations

from datetime import datetime

from events.bus import Bus
from events.history import read_events
from events.jobs import TERMINAL_TYPES
from projections.job_state import Believe, JobState, evolve


async def load_job(bus: Bus, job_id: str, believe: Believe | None = None) -> JobState | None:
    """The job's state folded from its whole log (what `believe` says no to left out); None if
    it has no events."""
    state: JobState | None = None
    async for seq, envelope in read_events(bus, bus.names.jobs_stream, bus.names.job_all(job_id)):
        state = evolve(state, envelope, seq, believe)
    return state


async def unfinished_since(bus: Bus, since: datetime) -> list[str]:
    """The jobs submitted since `since` with no terminal event, in submission order."""
    names = bus.names
    ended: set[str] = set()
    submitted: list[str] = []
    subjects = [names.job("*", t) for t in ("job.submitted", *sorted(TERMINAL_TYPES))]
    async for _, envelope in read_events(bus, names.jobs_stream, subjects, since=since):
        job_id = getattr(envelope.data, "job_id", "")
        if envelope.type == "job.submitted":
            submitted.append(job_id)
        else:
            ended.add(job_id)
    return [j for j in submitted if j not in ended]
