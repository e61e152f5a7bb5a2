"""Submitting jobs and following them over NATS: what `dim submit` and the gateway build on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from events.bus import Bus
from events.envelope import Envelope, decode
from events.errors import EventDecodeError
from events.history import read_events
from events.ids import new_id
from events.inference import Prompt, SamplingParams
from events.jobs import TERMINAL_TYPES, JobSubmitted
from events.work import TokensProduced


async def submit(
    bus: Bus,
    *,
    model: str,
    prompt: Prompt,
    params: SamplingParams | None = None,
    owner: str = "anonymous",
    tenant: str = "default",
    node_id: str | None = None,
    max_attempts: int = 3,
    job_id: str | None = None,
) -> JobSubmitted:
    """Append ``job.submitted`` as the first event of a new job; returns the event."""
    event = JobSubmitted(
        job_id=job_id or new_id(),
        model=model,
        prompt=prompt,
        params=params or SamplingParams(),
        owner=owner,
        tenant=tenant,
        node_id=node_id,
        max_attempts=max_attempts,
    )
    names = bus.names
    await bus.publish(
        names.job(event.job_id, event.type),
        Envelope(event, actor=owner),
        expected_last_seq=0,
        expected_last_subject=names.job_all(event.job_id),
    )
    return event


@dataclass(slots=True)
class TextAssembler:
    """Joins token chunks into the output, by offset: repeats are dropped, gaps wait.

    A task redelivered to another worker streams again from offset 0; only text past what the
    reader already has is new.
    """

    text: str = ""
    _early: dict[int, str] = field(default_factory=dict)

    def add(self, offset: int, chunk: str) -> str:
        """Take a chunk; returns the text it adds (possibly with earlier-held chunks)."""
        if offset > len(self.text):
            self._early[offset] = chunk
            return ""
        new = chunk[len(self.text) - offset :]
        self.text += new
        while self._early:
            ready = [o for o in self._early if o <= len(self.text)]
            if not ready:
                break
            for o in sorted(ready):
                piece = self._early.pop(o)[len(self.text) - o :]
                self.text += piece
                new += piece
        return new


async def follow(bus: Bus, job_id: str) -> AsyncIterator[Envelope]:
    """Every token chunk and job event of `job_id`, from the beginning, until the job ends.

    The job's terminal event comes last, after the token chunks stored before it.
    """
    names = bus.names
    queue: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()

    async def on_job(msg: Msg) -> None:
        queue.put_nowait(("job", msg))

    async def on_tokens(msg: Msg) -> None:
        queue.put_nowait(("tokens", msg))

    subs = [
        await bus.js.subscribe(
            names.tokens(job_id),
            stream=names.tokens_stream,
            cb=on_tokens,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        ),
        await bus.js.subscribe(
            names.job_all(job_id),
            stream=names.jobs_stream,
            cb=on_job,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        ),
    ]
    try:
        terminal: Envelope | None = None
        finished_tasks: set[str] = set()
        expected_tasks: set[str] = set()
        while True:
            timeout = 1.0 if terminal is not None else None
            try:
                source, msg = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                break  # the terminal event came and the token stream went quiet
            try:
                envelope = decode(msg.data)
            except EventDecodeError:
                continue
            data = envelope.data
            if isinstance(data, TokensProduced) and data.finish_reason is not None:
                finished_tasks.add(data.task_id)
            if source == "job" and data.type == "task.completed":
                expected_tasks.add(getattr(data, "task_id", ""))
            if source == "job" and data.type in TERMINAL_TYPES:
                terminal = envelope
            else:
                yield envelope
            if terminal is not None and expected_tasks <= finished_tasks:
                break
        if terminal is not None:
            yield terminal
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def history(bus: Bus, job_id: str) -> list[tuple[int, Envelope]]:
    """A job's stored events with their stream sequences, oldest first."""
    names = bus.names
    return [e async for e in read_events(bus, names.jobs_stream, names.job_all(job_id))]
