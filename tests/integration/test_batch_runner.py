"""The batch-status projection and the batch runner against a real NATS, with a real
orchestrator and worker: a batch's lines run as jobs, never more at once than the bound (read
back from the log), each submitted once across a restart of the runner, and its output file
holds one answer per line; a cancelled batch keeps what ended and starts nothing more."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

from events.batches import (
    BatchCancelling,
    BatchCreated,
    BatchLine,
    dump_lines,
    line_of,
)
from events.bus import Bus
from events.envelope import Envelope, Event
from events.files import FileStore
from events.history import read_events
from events.ids import new_id
from events.inference import Prompt, SamplingParams
from events.jobs import TERMINAL_TYPES, JobSubmitted
from projections.batch_status import BatchView
from projections.batch_views import newest_batches, read_batch
from services.settings import Settings
from tests.mesh import mesh, wait_until

IN_FLIGHT = 3


async def _create(bus: Bus, lines: int, max_tokens: int = 4) -> str:
    """A batch of `lines` chat requests, recorded as the gateway records one."""
    batch_id = f"batch_{new_id()}"
    requests = [
        BatchLine(
            custom_id=f"req-{i}",
            model="sim-small",
            prompt=Prompt(text=f"question {i}"),
            params=SamplingParams(max_tokens=max_tokens),
        )
        for i in range(lines)
    ]
    await FileStore(bus).put_object(f"{batch_id}.requests", dump_lines(requests))
    await _append(
        bus,
        BatchCreated(
            batch_id=batch_id,
            tenant="acme",
            owner="ann",
            input_file_id="file-x",
            endpoint="/v1/chat/completions",
            total=lines,
            requests=f"{batch_id}.requests",
            expires_at=datetime.now(UTC) + timedelta(hours=24),
        ),
    )
    return batch_id


async def _append(bus: Bus, event: Event) -> None:
    batch_id = getattr(event, "batch_id")  # noqa: B009
    await bus.publish(bus.names.batch(batch_id, event.type), Envelope(event, actor="ann"))


async def _view(bus: Bus, batch_id: str) -> BatchView:
    view = await read_batch(bus, batch_id)
    assert view is not None
    return view


async def _line_events(bus: Bus, batch_id: str) -> list[tuple[int, str, int]]:
    """(seq, type, line) of every submission and end of the batch's line jobs, in log order."""
    names = bus.names
    out = []
    async for seq, envelope in read_events(bus, names.jobs_stream, names.jobs_all):
        line = line_of(getattr(envelope.data, "job_id", ""))
        counted = envelope.type == JobSubmitted.type or envelope.type in TERMINAL_TYPES
        if line is not None and line[0] == batch_id and counted:
            out.append((seq, envelope.type, line[1]))
    return out


def _most_running(events: list[tuple[int, str, int]]) -> int:
    running: set[int] = set()
    ended: set[int] = set()
    most = 0
    for _, kind, line in events:
        if kind == JobSubmitted.type:
            running.add(line)
        elif line not in ended:
            ended.add(line)
            running.discard(line)
        most = max(most, len(running))
    return most


async def test_a_batch_runs_within_its_bound_and_once_across_a_runner_restart(
    bus: Bus, settings: Settings
) -> None:
    s = settings.model_copy(update={"sim_tokens_per_s": 100.0, "batch_in_flight": IN_FLIGHT})
    batch_id = await _create(bus, 15, max_tokens=8)
    async with mesh(s) as m:
        await m.orchestrator()
        await m.worker("w1")
        await m.batch_projector()
        first = await m.batcher()

        async def some_done() -> bool:
            return (await _view(bus, batch_id)).completed >= 4

        await wait_until(some_done, 30, "a few lines to complete")
        await first.halt()
        await asyncio.sleep(0.5)  # lines end meanwhile, with no runner to see them
        await m.batcher()

        async def finished() -> bool:
            return (await _view(bus, batch_id)).terminal

        await wait_until(finished, 60, "the batch to end")
    view = await _view(bus, batch_id)
    assert (view.status, view.completed, view.failed, view.total) == ("completed", 15, 0, 15)
    assert view.in_progress_at and view.completed_at and view.error_file_id is None
    assert view.prompt_tokens > 0 and view.completion_tokens > 0
    raw = await FileStore(bus).read(view.output_file_id or "")
    assert raw is not None
    records = [json.loads(line) for line in raw.splitlines()]
    assert [r["custom_id"] for r in records] == [f"req-{i}" for i in range(15)]
    assert all(r["response"]["body"]["object"] == "chat.completion" for r in records)
    record = await FileStore(bus).record("acme", view.output_file_id or "")
    assert record is not None and record.purpose == "batch_output" and record.owner == "ann"
    events = await _line_events(bus, batch_id)
    submitted = Counter(line for _, kind, line in events if kind == JobSubmitted.type)
    assert submitted == Counter(range(15))  # every line once, none twice
    assert _most_running(events) <= IN_FLIGHT
    listed, more = await newest_batches(
        bus, lambda v: True, tenant="acme", owner=None, limit=10, after=None
    )
    assert [v.batch_id for v in listed] == [batch_id] and not more
    assert (
        await newest_batches(bus, lambda v: True, tenant="evil", owner=None, limit=10, after=None)
    )[0] == []


async def test_a_cancelled_batch_keeps_what_ended_and_starts_nothing_more(
    bus: Bus, settings: Settings
) -> None:
    s = settings.model_copy(update={"sim_tokens_per_s": 20.0, "batch_in_flight": IN_FLIGHT})
    batch_id = await _create(bus, 30, max_tokens=6)
    async with mesh(s) as m:
        await m.orchestrator()
        await m.worker("w1")
        await m.batch_projector()
        await m.batcher()

        async def some_done() -> bool:
            return (await _view(bus, batch_id)).completed >= 2

        await wait_until(some_done, 30, "a few lines to complete")
        await _append(bus, BatchCancelling(batch_id=batch_id, by="ann"))

        async def cancelled() -> bool:
            return (await _view(bus, batch_id)).status == "cancelled"

        await wait_until(cancelled, 30, "the batch to be cancelled")
    view = await _view(bus, batch_id)
    assert 2 <= view.completed < 30 and view.cancelling_at and view.cancelled_at
    raw = await FileStore(bus).read(view.output_file_id or "")
    assert raw is not None and len(raw.splitlines()) == view.completed
    events = await _line_events(bus, batch_id)
    submitted = {line for _, kind, line in events if kind == JobSubmitted.type}
    ended = {line for _, kind, line in events if kind != JobSubmitted.type}
    assert submitted == ended  # every line that started has ended (completed or cancelled)
    assert len(submitted) <= view.completed + IN_FLIGHT  # nothing started after the cancel
    if view.failed:
        errors = await FileStore(bus).read(view.error_file_id or "")
        assert errors is not None and len(errors.splitlines()) == view.failed
