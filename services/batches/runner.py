"""The batch runner (`dim batcher`): runs each batch's lines as jobs, a bounded number at a time,
and writes the batch's output and error files when they have ended.

It is driven by the batch views (`projections/batch_status`, kept by the projector from the
log): a KV watch delivers every view as it changes, and each change is a reason to look at the
batch again (`services/batches/window.next_step`); so are the seconds passing, for what failed.
Nothing of its own survives it: a runner started after a crash reads the views, which say
which lines have ended, and the window says which lines may be running. Every append it makes
is safe to make twice — a line's job has a fixed id (the log refuses a second
``job.submitted``), and the batch's own events expect the batch's last sequence — so any
number of restarts neither loses nor repeats a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from datetime import UTC, datetime
from typing import IO

from events.batches import (
    BatchCancelled,
    BatchCompleted,
    BatchLine,
    BatchStarted,
    line_job_id,
    parse_lines,
)
from events.bus import Bus
from events.envelope import Envelope, Event
from events.errors import WrongLastSequence, while_unavailable
from events.files import FileRecord, FileStore
from events.job_log import append_submitted, first_end, was_submitted
from events.jobs import JobCancelled, JobCompleted, JobFailed, JobSubmitted
from events.watched import WatchedBucket
from projections.batch_status import BatchView
from services.batches.output import Render, line_result
from services.batches.window import next_step
from services.jobs.admission import BATCH_PRIORITY
from services.settings import Settings

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often every running batch is looked at again
_READ_AT_ONCE = 64  # line ends read concurrently while writing the files


class _Views(WatchedBucket[BatchView]):
    """The batch views of running batches; tells the runner of every change."""

    def __init__(self, bus: Bus, runner: BatchRunner) -> None:
        super().__init__(bus, bus.names.bucket("batches"), BatchView)
        self.runner = runner

    def changed(self, key: str, item: BatchView | None) -> None:
        if item is None or item.terminal:
            self.items.pop(key, None)
            self.runner.forget(key)
        else:
            self.runner.wake(key)


class BatchRunner:
    """One batch runner instance."""

    def __init__(self, bus: Bus, settings: Settings, render: Render) -> None:
        self.bus = bus
        self.settings = settings
        self.render = render
        self.names = bus.names
        self.actor = f"batcher/{settings.instance_id}"
        self.files = FileStore(bus)
        self.views = _Views(bus, self)
        self._dirty: set[str] = set()
        self._woken = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lines: dict[str, list[BatchLine]] = {}  # parsed lines of the batches running
        self._submitted: dict[str, set[int]] = {}  # lines known to have a job (in the window)
        self._cancelled: dict[str, set[int]] = {}  # lines whose cancellation was sent

    def wake(self, batch_id: str) -> None:
        """Look at the batch again soon."""
        self._dirty.add(batch_id)
        self._woken.set()

    def forget(self, batch_id: str) -> None:
        """The batch ended: drop what is kept for it."""
        self._dirty.discard(batch_id)
        for kept in (self._lines, self._submitted, self._cancelled):
            kept.pop(batch_id, None)

    async def run(self, stop: asyncio.Event) -> None:
        """Run batches until `stop` is set."""
        await while_unavailable(self.views.start, stop, "load the batch views")
        log.info("batch runner: %d batches to run", len(self.views.items))
        sweep = time.monotonic() + TICK_S
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), max(0.0, sweep - time.monotonic()))
                if time.monotonic() >= sweep:  # however busy: a turn that failed is tried again
                    self._dirty.update(self.views.items)
                    sweep = time.monotonic() + TICK_S
                self._woken.clear()
                for batch_id in list(self._dirty):
                    if batch_id not in self._tasks:  # else it runs again when that turn ends
                        self._dirty.discard(batch_id)
                        self._tasks[batch_id] = asyncio.create_task(self._turn(batch_id))
        finally:
            for task in list(self._tasks.values()):
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(BaseException):
                    await task
            await self.views.stop()

    async def _turn(self, batch_id: str) -> None:
        try:
            await self.advance(batch_id)
        except Exception as exc:  # looked at again at the next tick
            log.warning("batch %s: %r; trying again", batch_id, exc)
        finally:
            self._tasks.pop(batch_id, None)
            if batch_id in self._dirty:
                self._woken.set()

    async def advance(self, batch_id: str) -> None:
        """Do what the batch's view asks for now."""
        view = self.views.items.get(batch_id)
        if view is None:
            return
        step = next_step(view, self.settings.batch_in_flight)
        if step.start:
            await self._append(view, BatchStarted(batch_id=batch_id))
        if step.submit:
            known = self._submitted.setdefault(batch_id, set())
            known &= set(step.submit)  # the rest have ended
            todo = [i for i in step.submit if i not in known]
            if todo:
                lines = await self._lines_of(view)
                await asyncio.gather(*(self._submit(view, lines[i], i) for i in todo))
                known.update(todo)
        if step.finish == "cancelled":
            running = [i for i in step.cancel if await self._has_job(view, i)]
            sent = self._cancelled.setdefault(batch_id, set())
            for i in running:
                if i not in sent:
                    await self._cancel(view, i)
                    sent.add(i)
            if not running:
                await self._finish(view, cancelled=True)
        elif step.finish == "completed":
            await self._finish(view, cancelled=False)

    async def _lines_of(self, view: BatchView) -> list[BatchLine]:
        lines = self._lines.get(view.batch_id)
        if lines is None:
            raw = await self.files.read(view.requests)
            if raw is None:
                raise RuntimeError(f"the lines of batch {view.batch_id} ({view.requests}) are gone")
            lines = self._lines[view.batch_id] = parse_lines(raw)
        return lines

    async def _submit(self, view: BatchView, line: BatchLine, index: int) -> None:
        """Submit line `index` as its job (once: a second time is refused, and that is fine)."""
        assert view.tenant is not None
        job = JobSubmitted(
            job_id=line_job_id(view.batch_id, index),
            model=line.model,
            prompt=line.prompt,
            params=line.params,
            owner=view.owner,
            tenant=view.tenant,
            max_attempts=self.settings.max_attempts,
            end_user=line.end_user,
            priority=BATCH_PRIORITY,
            key_id=view.key_id,
        )
        with contextlib.suppress(WrongLastSequence):
            await append_submitted(self.bus, job, envelope_id=job.job_id)

    async def _has_job(self, view: BatchView, index: int) -> bool:
        known = self._submitted.setdefault(view.batch_id, set())
        if index in known:
            return True
        if await was_submitted(self.bus, line_job_id(view.batch_id, index)):
            known.add(index)
            return True
        return False

    async def _cancel(self, view: BatchView, index: int) -> None:
        job_id = line_job_id(view.batch_id, index)
        event = JobCancelled(job_id=job_id, reason=f"the batch {view.batch_id} was cancelled")
        await self.bus.publish(self.names.job(job_id, event.type), Envelope(event, self.actor))

    async def _append(self, view: BatchView, event: Event) -> bool:
        """Append a batch event after the last one the view has folded; False if another came
        first (the view will show it, and the batch is looked at again)."""
        envelope = Envelope(event, self.actor, id=f"{view.batch_id}.{event.type}")
        try:
            await self.bus.publish(
                self.names.batch(view.batch_id, event.type),
                envelope,
                expected_last_seq=view.batch_seq,
                expected_last_subject=self.names.batch_all(view.batch_id),
            )
        except WrongLastSequence:
            return False
        return True

    async def _finish(self, view: BatchView, *, cancelled: bool) -> None:
        """Write the batch's output and error files from its lines' ends, then end it."""
        finalizing_at = datetime.now(UTC)
        lines = await self._lines_of(view)
        bits = view.ended_lines()
        ended = [i for i in range(view.total) if i in bits]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            completed = failed = 0
            for at in range(0, len(ended), _READ_AT_ONCE):
                chunk = ended[at : at + _READ_AT_ONCE]
                found = await asyncio.gather(
                    *(first_end(self.bus, line_job_id(view.batch_id, i)) for i in chunk)
                )
                for i, end in zip(chunk, found, strict=True):
                    if end is None:
                        raise RuntimeError(f"line {i} of {view.batch_id} has no end in the log")
                    event = end[1].data
                    assert isinstance(event, JobCompleted | JobFailed | JobCancelled)
                    job_id = line_job_id(view.batch_id, i)
                    ended_at = int(end[1].at.timestamp())
                    result = line_result(
                        view.endpoint, lines[i], job_id, event, ended_at, self.render
                    )
                    (out if result.ok else err).write(result.text)
                    completed += result.ok
                    failed += not result.ok
            output = await self._store(view, out, "output") if completed else None
            errors = await self._store(view, err, "errors") if failed else None
        kind = BatchCancelled if cancelled else BatchCompleted
        event = kind(
            batch_id=view.batch_id,
            output_file_id=output,
            error_file_id=errors,
            completed=completed,
            failed=failed,
            finalizing_at=finalizing_at,
        )
        if await self._append(view, event):
            log.info(
                "batch %s %s: %d completed, %d failed",
                view.batch_id,
                event.type.removeprefix("batch."),
                completed,
                failed,
            )

    async def _store(self, view: BatchView, data: IO[bytes], what: str) -> str:
        """Store one of the batch's files (its id is fixed: writing it again replaces it)."""
        assert view.tenant is not None
        size = data.tell()
        data.seek(0)
        record = FileRecord(
            id=f"file-{view.batch_id.removeprefix('batch_')}-{what}",
            bytes=size,
            created_at=int(time.time()),
            filename=f"{view.batch_id}_{what}.jsonl",
            purpose="batch_output",
            tenant=view.tenant,
            owner=view.owner,
        )
        await self.files.put(record, data)  # type: ignore[arg-type]
        return record.id
