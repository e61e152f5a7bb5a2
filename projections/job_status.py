"""The job-status read model: one view per job, folded from JOBS by `job_state.evolve`.

A view carries `last_seq`, the stream sequence of the last event applied, so applying an event
twice (JetStream delivers at least once) changes nothing. Views are serialised canonically, so a
rebuild from the log produces byte-identical values.
"""

from __future__ import annotations

from collections.abc import Iterable

from events.envelope import Envelope
from projections.job_state import Believe, JobState, evolve


def fold(
    view: JobState | None, events: Iterable[tuple[int, Envelope]], believe: Believe | None = None
) -> JobState | None:
    """Apply `(seq, envelope)` pairs to a view (None: the job has no view yet), leaving out
    what `believe` says no to."""
    for seq, envelope in events:
        view = evolve(view, envelope, seq, believe)
    return view


def encode_view(view: JobState) -> bytes:
    """The stored form of a view."""
    return view.model_dump_json().encode()


def decode_view(raw: bytes) -> JobState:
    """Read a stored view."""
    return JobState.model_validate_json(raw)


def apply(
    views: dict[str, JobState], seq: int, envelope: Envelope, believe: Believe | None = None
) -> None:
    """Fold one event of a whole log into `views` (every job's view), as a rebuild does."""
    job_id = getattr(envelope.data, "job_id", None)
    if not isinstance(job_id, str):
        return
    view = evolve(views.get(job_id), envelope, seq, believe)
    if view is not None:
        views[job_id] = view
