"""A job's log, read and written as a client: appending `job.submitted`, how a job ended, its
events in order, and following its tokens and end live (what `dim submit`, the gateway and the
worker build on)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from events.bus import Bus
from events.envelope import Envelope, Event, decode
from events.errors import EventDecodeError, transient
from events.history import read_events
from events.ids import new_id
from events.inference import Prompt, SamplingParams
from events.jobs import (
    TERMINAL_TYPES,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    TaskCompleted,
    TaskStarted,
)
from events.subjects import Names, job_event_of, report_writer
from events.work import TokensProduced

log = logging.getLogger(__name__)


def single(
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
    """The ``job.submitted`` of one prompt (the `single` pattern)."""
    return JobSubmitted(
        job_id=job_id or new_id(),
        model=model,
        prompt=prompt,
        params=params or SamplingParams(),
        owner=owner,
        tenant=tenant,
        node_id=node_id,
        max_attempts=max_attempts,
    )


async def submit(bus: Bus, **fields: Any) -> JobSubmitted:
    """Append ``job.submitted`` for one prompt (`single`'s fields); returns the event."""
    return await submit_event(bus, single(**fields))


async def submit_event(bus: Bus, event: JobSubmitted) -> JobSubmitted:
    """Append `event` as the first event of its job (refused if the job already has events)."""
    await append_submitted(bus, event)
    return event


async def append_submitted(
    bus: Bus, event: JobSubmitted, *, envelope_id: str | None = None
) -> tuple[Envelope, int]:
    """As `submit_event`; the stored envelope and its stream sequence. `envelope_id` (also the
    message id) names the envelope, for a submitter that may send the same job again."""
    names = bus.names
    envelope = Envelope(event, actor=event.owner)
    if envelope_id is not None:
        envelope = Envelope(event, actor=event.owner, id=envelope_id)
    ack = await bus.publish(
        names.job(event.job_id, event.type),
        envelope,
        expected_last_seq=0,
        expected_last_subject=names.job_all(event.job_id),
    )
    return envelope, ack.seq


async def terminal_from_log(bus: Bus, job_id: str) -> Envelope | None:
    """The job's terminal event from the log, if it has ended; None also while NATS does not
    answer (a reader looks again later: its own deadline bounds the wait)."""
    names = bus.names
    for event_type in TERMINAL_TYPES:
        try:
            msg = await bus.js.get_last_msg(names.jobs_stream, names.job(job_id, event_type))
        except NotFoundError:
            continue
        except Exception as exc:
            if not transient(exc):
                raise
            log.info("cannot look up how job %s ended (NATS: %r); will look again", job_id, exc)
            return None
        return decode(await bus.body(msg.data or b"", msg.headers))
    return None


async def first_end(bus: Bus, job_id: str) -> tuple[int, Envelope] | None:
    """The job's first terminal event and its sequence, if it has ended (a job cancelled after
    it completed has two: the first is how it ended)."""
    names = bus.names
    found: list[tuple[int, Envelope]] = []
    for event_type in sorted(TERMINAL_TYPES):
        try:
            msg = await bus.js.get_last_msg(names.jobs_stream, names.job(job_id, event_type))
        except NotFoundError:
            continue
        found.append((msg.seq or 0, decode(await bus.body(msg.data or b"", msg.headers))))
    return min(found, key=lambda f: f[0]) if found else None


async def was_submitted(bus: Bus, job_id: str) -> bool:
    """Whether the job has a ``job.submitted`` in the log."""
    names = bus.names
    try:
        await bus.js.get_last_msg(names.jobs_stream, names.job(job_id, JobSubmitted.type))
    except NotFoundError:
        return False
    return True


class JobEnds:
    """Every job's end as one process sees it, for the requests waiting on one.

    Wildcard subscriptions to ``task.completed``, ``job.failed`` and ``job.cancelled`` serve
    every request of the process, so a request for a job of one task costs no subscription of
    its own (no SUB/UNSUB per request): `expect(job_id, first_result=True)` takes the task's
    ``task.completed`` as the answer — the job's result, one orchestrator round trip before
    ``job.completed`` (which follows from it and records the same output and usage). Only a job
    of several tasks (`first_result=False`) waits for ``job.completed``, on a subscription to
    that job's alone: a wildcard one would bring this process every job's ``job.completed``,
    one delivery per request for nothing. A terminal event missed while the connection was down
    is found in the log: `wait` looks there whenever the feed has been quiet for `quiet_s`.
    `on_end` is told (job id, event type) of every event these subscriptions bring.
    """

    def __init__(
        self,
        bus: Bus,
        quiet_s: float = 2.0,
        *,
        on_end: Callable[[str, str], None] | None = None,
        believe: Callable[[Event], bool] | None = None,
    ) -> None:
        self.bus = bus
        self.quiet_s = quiet_s
        self.on_end = on_end  # told (job id, event type) of every end that goes by
        self.believe = believe  # a `task.completed` it says no to is no answer
        self._waiting: dict[str, asyncio.Future[Envelope]] = {}
        self._early: set[str] = set()  # jobs whose task.completed is their answer
        self._subs: list[Any] = []
        self._completed: dict[str, Any] = {}  # job id -> its own job.completed subscription

    async def start(self) -> JobEnds:
        """Subscribe; returns self."""
        names = self.bus.names
        for subject in (
            names.reports("*", TaskCompleted.type),
            names.job("*", JobFailed.type),
            names.job("*", JobCancelled.type),
        ):
            self._subs.append(await self.bus.nc.subscribe(subject, cb=self._on))
        return self

    async def stop(self) -> None:
        """Unsubscribe."""
        for sub in [*self._subs, *self._completed.values()]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        self._completed = {}

    async def expect(self, job_id: str, *, first_result: bool = False) -> None:
        """Start listening for `job_id`'s end (before submitting it, so nothing is missed)."""
        self._waiting[job_id] = asyncio.get_running_loop().create_future()
        if first_result:
            self._early.add(job_id)
        else:
            subject = self.bus.names.job(job_id, JobCompleted.type)
            self._completed[job_id] = await self.bus.nc.subscribe(subject, cb=self._on)

    async def forget(self, job_id: str) -> None:
        """Stop listening for `job_id`."""
        self._waiting.pop(job_id, None)
        self._early.discard(job_id)
        sub = self._completed.pop(job_id, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        job_id, event_type = job_event_of(msg.subject)
        if self.on_end is not None:
            self.on_end(job_id, event_type)
        future = self._waiting.get(job_id)
        if future is None or future.done():
            return
        if event_type == TaskCompleted.type and job_id not in self._early:
            return
        try:
            envelope = decode(await self.bus.body(msg.data, msg.headers))
        except EventDecodeError:
            return
        writer = report_writer(msg.subject)
        if writer is not None and writer != getattr(envelope.data, "node_id", None):
            log.warning("job %s: %s filed under node %s names another", job_id, event_type, writer)
            return
        if self.believe is not None and not self.believe(envelope.data):
            log.warning("job %s: not believing %s from %s", job_id, event_type, envelope.actor)
            return
        if not future.done():
            future.set_result(envelope)

    async def wait(self, job_id: str) -> Envelope:
        """The job's terminal event (`expect` it first); `forget` it afterwards."""
        future = self._waiting[job_id]
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.quiet_s)
            except TimeoutError:
                found = await terminal_from_log(self.bus, job_id)
                if found is not None:
                    return found


class TokenWriters:
    """Which token chunks of a job to pass on: those written by the node they name (the subject
    says who wrote one: a node may write only under its own id), and, when `bound`, only for an
    attempt that node started (its `task.started`, believed, came); chunks that come before
    their attempt's start wait for it. So an admitted node cannot write into another's answer."""

    PARK_MAX = 10_000  # chunks waiting for their start, at most

    def __init__(self, *, bound: bool) -> None:
        self.bound = bound
        self._ran: set[tuple[str, int, str]] = set()  # (task, attempt, node) started
        self._waiting: dict[tuple[str, int, str], list[Envelope]] = {}
        self._parked = 0

    def admit(self, envelope: Envelope, writer: str) -> list[Envelope]:
        """The chunk `envelope` written under `writer`'s subject, if it may pass now."""
        chunk = envelope.data
        if not isinstance(chunk, TokensProduced) or chunk.node_id != writer:
            return []
        if not self.bound:
            return [envelope]
        ran = (chunk.task_id, chunk.attempt, writer)
        if ran in self._ran:
            return [envelope]
        if self._parked < self.PARK_MAX:  # a bound on what unstarted writers can park here
            self._parked += 1
            self._waiting.setdefault(ran, []).append(envelope)
        return []

    def started(self, event: TaskStarted) -> list[Envelope]:
        """A believed start: the chunks that waited for it, which may pass now."""
        ran = (event.task_id, event.attempt, event.node_id)
        self._ran.add(ran)
        waited = self._waiting.pop(ran, [])
        self._parked -= len(waited)
        return waited


class JobFollower:
    """Every token chunk and job event of one job until it ends; the terminal event comes last.

    `replay=True` reads both streams from the beginning (JetStream ordered consumers): for a
    job submitted earlier. `replay=False` listens live with plain subscriptions, opened by
    `start()` before the job is submitted so nothing is missed, and costing no JetStream
    consumer per request; if the live feed goes quiet (a reconnect can drop core messages) it
    looks the terminal event up in the log (a reader that wants only the result uses `JobEnds`).
    Use as ``async with JobFollower(...) as f``.
    """

    def __init__(
        self,
        bus: Bus,
        job_id: str,
        *,
        replay: bool,
        quiet_s: float = 2.0,
        believe: Callable[[Event], bool] | None = None,
    ) -> None:
        self.bus = bus
        self.job_id = job_id
        self.replay = replay
        self.quiet_s = quiet_s
        # job events it says no to are left out, and token chunks of attempts not started by a
        # report it believes (TokenWriters)
        self.believe = believe
        self._queue: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()
        self._subs: list[Any] = []
        self.seqs: dict[str, int] = {}  # JOBS stream sequence of each job event, by envelope id

    async def start(self) -> JobFollower:
        """Subscribe; returns self."""
        names = self.bus.names

        def into(source: str) -> Callable[[Msg], Awaitable[None]]:
            async def cb(msg: Msg) -> None:
                self._queue.put_nowait((source, msg))

            return cb

        if self.replay:
            for subject, stream, source in (
                (names.job_tokens(self.job_id), names.tokens_stream, "tokens"),
                (names.job_all(self.job_id), names.jobs_stream, "job"),
            ):
                self._subs.append(
                    await self.bus.js.subscribe(
                        subject,
                        stream=stream,
                        cb=into(source),
                        ordered_consumer=True,
                        deliver_policy=DeliverPolicy.ALL,
                    )
                )
        else:
            self._subs.append(
                await self.bus.nc.subscribe(names.job_tokens(self.job_id), cb=into("tokens"))
            )
            self._subs.append(
                await self.bus.nc.subscribe(names.job_all(self.job_id), cb=into("job"))
            )
        return self

    async def close(self) -> None:
        """Unsubscribe."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    async def __aenter__(self) -> JobFollower:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[Envelope]:
        terminal: Envelope | None = None
        writers = TokenWriters(bound=self.believe is not None)
        finished_tasks: set[str] = set()
        completed_tasks: set[str] = set()
        while True:
            try:
                async with asyncio.timeout(1.0 if terminal is not None else self.quiet_s):
                    source, msg = await self._queue.get()
            except TimeoutError:
                if terminal is not None:
                    break  # the terminal event came and the token stream went quiet
                if not self.replay:
                    terminal = await terminal_from_log(self.bus, self.job_id)
                    if terminal is not None:
                        break
                continue
            try:
                envelope = decode(await self.bus.body(msg.data, msg.headers))
            except EventDecodeError:
                continue
            if source == "job" and self.replay:
                self.seqs[envelope.id] = msg.metadata.sequence.stream
            event = envelope.data
            if source == "job" and self.believe is not None and not self.believe(event):
                continue
            if source == "tokens":
                ready = writers.admit(envelope, Names.tokens_writer(msg.subject))
            elif isinstance(event, TaskStarted):
                ready = [envelope, *writers.started(event)]
            else:
                ready = [envelope]
            for out in ready:
                event = out.data
                if isinstance(event, TokensProduced) and event.finish_reason is not None:
                    finished_tasks.add(event.task_id)
                if isinstance(event, TaskCompleted):
                    completed_tasks.add(event.task_id)
                if event.type in TERMINAL_TYPES:
                    terminal = out
                else:
                    yield out
            if terminal is not None and completed_tasks <= finished_tasks:
                break
        if terminal is not None:
            yield terminal


async def history(bus: Bus, job_id: str) -> list[tuple[int, Envelope]]:
    """A job's stored events with their stream sequences, oldest first."""
    names = bus.names
    return [e async for e in read_events(bus, names.jobs_stream, names.job_all(job_id))]
