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


# The largest stored view (NATS takes up to its max_payload, 8 MB as dim configures it; a job
# of 1,000 tasks with long answers, or 16 answers to a long prompt, is larger): beyond it a view
# is stored without its texts, which its log keeps.
VIEW_MAX_BYTES = 1024 * 1024
_ERROR_CHARS = 1000  # an error's text kept in a trimmed view


def encode_view(view: JobState) -> bytes:
    """The stored form of a view (`stored_form`'s bytes)."""
    return stored_form(view)[1]


def stored_form(view: JobState) -> tuple[JobState, bytes]:
    """The view as stored, and its bytes: whole, or once larger than `VIEW_MAX_BYTES` (and from
    then on, so that a rebuild from the log writes the same bytes) `trimmed`."""
    raw = view.model_dump_json().encode()
    if len(raw) <= VIEW_MAX_BYTES and not view.trimmed:
        return view, raw
    small = trimmed(view)
    return small, small.model_dump_json().encode()


def trimmed(view: JobState) -> JobState:
    """The view without its texts: the request's prompts and inputs, every task's prompt and
    output, the job's output and its parts' outputs; errors cut to their first characters.
    What is left is bounded by the number of tasks (at most a few hundred bytes each)."""

    def cut(text: str | None) -> str | None:
        return text if text is None or len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "…"

    tasks = tuple(
        t.model_copy(
            update={
                "prompt": None,
                "output": None,
                "logprobs": None,
                "tool_calls": (),
                "embeddings": (),
                "error": cut(t.error),
            }
        )
        for t in view.tasks
    )
    parts = tuple(p.model_copy(update={"output": None, "error": cut(p.error)}) for p in view.parts)
    return view.model_copy(
        update={
            "trimmed": True,
            "prompt": None,
            "collaborative": None,
            "comparative": None,
            "chained": None,
            "output": None,
            "error": cut(view.error),
            "errors": tuple(cut(e) or "" for e in view.errors[:100]),
            "tasks": tasks,
            "parts": parts,
        }
    )


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
