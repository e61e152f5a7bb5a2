"""Stored job views stay within `VIEW_MAX_BYTES` at the documented limits, and a view trimmed
while it was projected is the bytes a rebuild from the whole log writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events.envelope import Envelope, Event
from events.inference import Prompt, SamplingParams, Usage
from events.jobs import (
    JobCompleted,
    JobPlanned,
    JobSubmitted,
    Part,
    TaskCompleted,
    TaskDispatched,
    TaskSpec,
)
from events.patterns import MAX_SHARDS, Collaborative
from projections.job_state import JobState, evolve
from projections.job_status import VIEW_MAX_BYTES, decode_view, encode_view

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LONG = "w" * 16_000  # an answer of ~4,000 tokens


def _log(shards: int) -> list[Event]:
    inputs = tuple(Prompt(text=f"{i} " + "z" * 900) for i in range(shards))
    tasks = tuple(
        TaskSpec(task_id=f"J-{i}", model="m", prompt=p, index=i) for i, p in enumerate(inputs)
    )
    completed = [
        TaskCompleted(
            job_id="J",
            task_id=t.task_id,
            attempt=1,
            node_id="n",
            output=LONG,
            finish_reason="length",
            usage=Usage(prompt_tokens=1, completion_tokens=4000),
            ttft_ms=1.0,
            duration_ms=2.0,
        )
        for t in tasks
    ]
    parts = tuple(
        Part(
            task_id=t.task_id,
            role="main",
            index=t.index,
            model="m",
            status="completed",
            output=LONG,
        )
        for t in tasks
    )
    return [
        JobSubmitted(
            job_id="J",
            pattern="collaborative",
            model="m",
            params=SamplingParams(max_tokens=4000),
            collaborative=Collaborative(inputs=inputs),
        ),
        JobPlanned(
            job_id="J",
            tasks=tasks,
            dispatched=tuple(
                TaskDispatched(job_id="J", task_id=t.task_id, attempt=1, subject="t.tasks.model.m")
                for t in tasks
            ),
        ),
        *completed,
        JobCompleted(
            job_id="J",
            output="\n".join([LONG] * shards),
            parts=parts,
            finish_reason="length",
            usage=Usage(prompt_tokens=shards, completion_tokens=4000 * shards),
        ),
    ]


def _fold(state: JobState | None, events: list[Event], first_seq: int) -> JobState | None:
    for i, event in enumerate(events):
        at = T0 + timedelta(milliseconds=first_seq + i)
        state = evolve(
            state, Envelope(event, actor="t", at=at, id=f"e{first_seq + i}"), first_seq + i
        )
    return state


def test_a_thousand_long_answers_make_a_view_that_fits() -> None:
    view = _fold(None, _log(MAX_SHARDS), 1)
    assert view is not None and len(view.model_dump_json()) > 40_000_000  # ~48 MB whole
    raw = encode_view(view)
    assert len(raw) <= VIEW_MAX_BYTES
    stored = decode_view(raw)
    assert stored.trimmed and stored.status == "completed" and len(stored.tasks) == MAX_SHARDS
    assert stored.output is None and all(t.output is None for t in stored.tasks)
    assert stored.usage.completion_tokens == 4000 * MAX_SHARDS  # the figures stay


def test_a_small_view_is_stored_whole() -> None:
    view = _fold(None, _log(3), 1)
    assert view is not None and not decode_view(encode_view(view)).trimmed
    assert decode_view(encode_view(view)) == view


def test_a_view_trimmed_on_the_way_is_what_a_rebuild_writes() -> None:
    events = _log(200)
    whole = _fold(None, events, 1)
    assert whole is not None
    # live: the projector stores (trimmed) after the first 150 events, then folds the rest
    # onto what it stored
    early = _fold(None, events[:150], 1)
    assert early is not None
    stored = decode_view(encode_view(early))
    assert stored.trimmed
    live = _fold(stored, events[150:], 151)
    assert live is not None
    assert encode_view(live) == encode_view(whole)
