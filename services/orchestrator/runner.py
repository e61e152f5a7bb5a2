"""The orchestrator process: folds JOBS events into job state and appends what `decide` says.

Every instance has its own durable consumer on JOBS and so sees every job's events in order
(no gaps, unlike a shared durable). Appends are optimistic: each carries the sequence of the
job's last known *decision* (``Nats-Expected-Last-Subject-Sequence`` over ``NS.jobs.<id>.*.*``,
which the nodes' reports, one token longer, do not match); when another instance or the gateway
decided first the append is refused and nothing is lost — the newer events arrive on this
instance's consumer and the job is decided again from them. A report that arrives while a
decision is made does not refuse it (a 1,000-task job gets a report every few milliseconds:
expecting the job's last event, decisions lost nearly every race): a decision may thus be
stored after reports it did not see, which `evolve` folds to the same state in either order,
and which this instance folds when they arrive (its own appended events are remembered as
folded, not its position in the log). Verdicts a report can contradict are the exception: a
`task.lost` (the node's result may be on its way) and a `job.failed` (one may have come since
the failure it names) expect the job's last event, so one stored after a result it did not see
is refused and decided again on that result. Any instance can be killed and restarted at any time:
its state is the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, OrderedDict
from datetime import UTC, datetime, timedelta

from opentelemetry import propagate, trace

from events.bus import Bus
from events.consume import ConsumerSpec, Delivery, run_ordered
from events.envelope import Envelope
from events.errors import WrongLastSequence, while_unavailable
from events.jobs import (
    JobFailed,
    JobSubmitted,
    TaskCompleted,
    TaskDispatched,
    TaskFailed,
    TaskLost,
    TaskStarted,
)
from events.retry import DECISION
from events.subjects import job_id_of
from projections.job_state import JobState, TaskState, evolve
from services.jobs.admission import FairQueue, Trial
from services.jobs.decide import decide
from services.jobs.placement import NodeView, view_of
from services.jobs.work import dispatches_in, task_request
from services.orchestrator.dead_letters import DeadLetters
from services.orchestrator.recovery import load_job, unfinished_since
from services.orchestrator.upkeep import HeldCounts, record_lost
from services.registry.live import LiveNodes
from services.registry.select import Need
from services.registry.trust import Trust
from services.settings import Settings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("dim.orchestrator")

_MAX_ACTIVE = 200_000
_MAX_FINISHED = 100_000
_DOOR_GRACE_S = 1.0  # a gateway sends the work of its plans at once; orchestrators after this


class _Turn:
    """A job's turn (`Orchestrator._exclusive`): an async context manager that holds the job's
    lock, and leaves the table of turns once nobody holds or waits for it."""

    __slots__ = ("job_id", "lock", "turns", "wanted")

    def __init__(self, turns: dict[str, _Turn], job_id: str) -> None:
        self.turns = turns
        self.job_id = job_id
        self.lock = asyncio.Lock()
        self.wanted = 0

    async def __aenter__(self) -> None:
        self.wanted += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.lock.release()
        self._leave()

    def _leave(self) -> None:
        self.wanted -= 1
        if not self.wanted and self.turns.get(self.job_id) is self:
            del self.turns[self.job_id]


class Orchestrator:
    """One orchestrator instance."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.names = bus.names
        self.actor = f"orchestrator/{settings.instance_id}"
        self.trust = Trust(bus, settings.signed_only)
        self.nodes = LiveNodes(bus, settings.node_ttl_s, self.trust)
        self.active: OrderedDict[str, JobState] = OrderedDict()
        self.finished: OrderedDict[str, int] = OrderedDict()
        # job -> the last seq `_recover` folded: its events up to there are handled again when
        # (re)delivered, for the work they dispatch may never have been sent
        self._recovered: dict[str, int] = {}
        self._sent: OrderedDict[str, None] = OrderedDict()
        # job -> the sequences of this instance's own appends beyond the job's folded position
        # (folded when appended; dropped from their group when they come back, while the
        # reports stored before them are still folded when they arrive)
        self._own: dict[str, set[int]] = {}
        self._turns: dict[str, _Turn] = {}  # job -> its turn, while one is taken or wanted
        # job -> when to send the work of its plan made at the door, if not started by then
        self._door: OrderedDict[str, tuple[float, Envelope]] = OrderedDict()
        self.lost_races = 0  # appends refused because another writer appended first
        self.dead_letters = DeadLetters(bus, settings.instance_id, self.actor)
        self.fair = FairQueue(
            settings.queue_depth,
            room=lambda model: self.nodes.pool.room(model),
            tenant_depth=settings.tenant_queue_depth,
        )
        self._admission: Trial | None = None  # the decision being made asks this, if anything
        self._picks: list[str] = []  # nodes the decision being made chose (counted as sent)
        self.view: NodeView = view_of(self.nodes, admit=self._admit, pick=self._pick)
        self._last_start: dict[str, float] = {}  # model -> when a first attempt last started
        self.queues = HeldCounts(bus)

    def _admit(self, state: JobState, task: TaskState) -> bool:
        """Admission for the decision being made (its trial, made by its first ask)."""
        admission = self._admission
        if admission is None:
            admission = self._admission = self.fair.trial()
        return admission.admit(state, task)

    def _pick(self, need: Need) -> str | None:
        """A node for a task; counted on the node at once, so the next pick (of the same
        decision, say a fan-out's next shard) sees it busier."""
        pool = self.nodes.pool
        node = pool.pick(need, random.random(), self.nodes.as_of())
        if node:
            pool.sent(node)
            self._picks.append(node)  # taken back if the decision's dispatch is not stored
        return node

    def consumer(self) -> ConsumerSpec:
        """This instance's durable consumer on JOBS."""
        return ConsumerSpec(
            stream=self.names.jobs_stream,
            durable=f"orchestrator-{self.settings.instance_id}",
            filter_subjects=(self.names.jobs_all,),
            ack_wait_s=30.0,
            inactive_threshold_s=7 * 24 * 3600.0,
            max_ack_pending=10_000,
            ack_all=True,
            description="dim orchestrator instance",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Orchestrate until `stop` is set."""
        await while_unavailable(self.trust.start, stop, "load the enrolled node keys")
        await while_unavailable(self.nodes.start, stop, "load the node registry")
        await while_unavailable(self._recover, stop, "take up unfinished jobs")
        ticker = asyncio.create_task(self._tick(stop))
        dead = asyncio.create_task(self.dead_letters.run(stop))
        try:
            await run_ordered(
                self.bus, self.consumer(), self.handle, key=job_id_of, seen=self.seen, stop=stop
            )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dead, 5)
            await self.nodes.stop()
            await self.trust.stop()

    def seen(self, job_id: str, seq: int) -> bool:
        """Whether the event at `seq` is already folded (e.g. this instance's own append) and
        its effects performed."""
        upto = self._recovered.get(job_id)
        if upto is not None:
            if seq <= upto:
                return False  # folded on recovery only: handle it, so its work is sent
            del self._recovered[job_id]
        # This instance's own appends are not skipped here though folded: `_fold` drops them
        # from their group and moves the job's position past them, after the reports stored
        # before them (in the same group, perhaps) are folded.
        state = self.active.get(job_id)
        if state is not None:
            return seq <= state.last_seq
        return seq <= self.finished.get(job_id, 0)

    async def handle(self, group: list[Delivery]) -> None:
        """Fold one job's newly delivered events, perform their effects, and advance the job."""
        # Continue the trace of the event that arrived last: what is appended now follows from it.
        parent = propagate.extract(group[-1].headers)
        with tracer.start_as_current_span(
            "orchestrator.advance", context=parent, kind=trace.SpanKind.CONSUMER
        ) as span:
            if span.is_recording():  # no attribute work on the hot path when nothing records
                span.set_attribute("dim.job_id", job_id_of(group[0].subject))
                span.set_attribute("dim.events", [d.envelope.type for d in group])
            await self._handle(group)

    async def _handle(self, group: list[Delivery]) -> None:
        job_id = job_id_of(group[0].subject)
        if job_id in self.finished:
            return
        async with self._exclusive(job_id):
            freed = await self._fold(job_id, group)
        for model in freed:  # other jobs: after this one's turn (no two turns held at once)
            await self._release(model)

    def _exclusive(self, job_id: str) -> _Turn:
        """One turn at a job at a time: its events, a release of held work and the ticker each
        read the job's state, append, and remember the result; interleaved, a turn could
        remember a state without another's appends (which, remembered as folded, never come
        back to be folded). Use as ``async with self._exclusive(job_id):``."""
        turn = self._turns.get(job_id)
        if turn is None:
            turn = self._turns[job_id] = _Turn(self._turns, job_id)
        return turn

    async def _fold(self, job_id: str, group: list[Delivery]) -> set[str]:
        """Fold the job's delivered events, perform their effects and advance the job; the
        models whose queues have room since."""
        own = self._own.get(job_id)
        delivered = max(d.stream_seq for d in group)
        if own:  # appended by this instance while these waited for the job's turn: folded
            group = [d for d in group if d.stream_seq not in own]
            if not group:
                state = self.active.get(job_id)
                if state is not None and delivered > state.last_seq:
                    self._remember(state.model_copy(update={"last_seq": delivered}))
                return set()
        state = self.active.get(job_id)
        if state is None:
            first = group[0].envelope.data
            state = None if isinstance(first, JobSubmitted) else await self._load(job_id)
        believe = await self.trust.screen(self.bus, self.consumer().durable, group)
        for d in group:
            state = evolve(state, d.envelope, d.stream_seq, believe)
        if state is None:
            log.warning("events for job %s, which has no job.submitted; ignoring", job_id)
            return set()
        if delivered > state.last_seq:  # the rest were its own, folded when appended
            state = state.model_copy(update={"last_seq": delivered})
        freed: set[str] = set()
        for d in group:
            event = d.envelope.data
            if believe is not None and not believe(event):
                continue
            dispatches = dispatches_in(d.envelope)
            if dispatches:
                if isinstance(event, JobSubmitted) and d.stream_seq > self._recovered.get(
                    job_id, 0
                ):
                    # Planned at the door: that gateway sent the work; what has not started in
                    # a moment is sent from here (in case it died first).
                    self._door[job_id] = (time.monotonic() + _DOOR_GRACE_S, d.envelope)
                else:
                    await self._send_tasks(state, d.envelope)
                for sent, _ in dispatches:
                    task = state.task(sent.task_id)
                    if sent.attempt == 1 and task is not None:
                        self.fair.seen_dispatch(task.model, state.tenant)
            elif isinstance(event, TaskStarted):
                task = state.task(event.task_id)
                if task is not None and not task.target:
                    # taken from the shared subject: busy from now on as the node will report
                    # at its next heartbeat (a targeted dispatch was counted when sent)
                    self.nodes.pool.sent(event.node_id)
                if task is not None and event.attempt == 1:
                    self.fair.started(task.model, state.tenant)
                    self._last_start[task.model] = time.monotonic()
                    freed.add(task.model)
            elif isinstance(event, TaskCompleted | TaskFailed) and event.node_id:
                self.nodes.pool.finished(event.node_id)
        if state.terminal:
            self.fair.drop(job_id)
        await self._advance(state)
        return freed

    async def _release(self, model: str) -> None:
        """Decide again for the held jobs the model's queue has room for, in fair order."""
        for held in self.fair.release(model):
            await self._advance_active(held)

    async def _advance_active(self, job_id: str) -> None:
        """Decide again for an active job, in its turn."""
        async with self._exclusive(job_id):
            state = self.active.get(job_id)
            if state is not None:
                await self._advance(state)

    async def _recover(self) -> None:
        """Take up the unfinished jobs of the last `DIM_RECOVER_HOURS`: a job that waits (held
        for a full queue, or for an eligible node) has no event coming to wake a restarted
        instance, so each is loaded and decided again by the ticker."""
        since = datetime.now(UTC) - timedelta(hours=self.settings.recover_hours)
        unfinished = await unfinished_since(self.bus, since)
        for job_id in unfinished:
            state = await self._load(job_id)
            if state is not None and not state.terminal:
                self.active[job_id] = state
                self._recovered[job_id] = state.last_seq
        if unfinished:
            log.info(
                "took up %d unfinished jobs from the last %gh",
                len(unfinished),
                self.settings.recover_hours,
            )

    async def _load(self, job_id: str) -> JobState | None:
        return await load_job(self.bus, job_id, self.trust.believe if self.trust.required else None)

    async def _advance(self, state: JobState) -> None:
        for _ in range(DECISION.tries or 1):  # each round appends at least one event or stops
            self._admission = None
            self._picks = []
            events = decide(
                state,
                datetime.now(UTC),
                self.view,
                self.names,
                dispatch_timeout_s=self.settings.dispatch_timeout_s,
            )
            admission = self._admission
            if admission is not None:
                admission.apply()  # before any await: other jobs' decisions see it
            stored: set[str] = set()  # task ids whose dispatch was appended
            sent_to: list[str] = []  # nodes whose dispatch was appended
            picks = self._picks
            # A verdict a report can contradict expects the job's last event (module doc); with
            # appends of its own not delivered yet, that is not known: the feed or the ticker
            # brings the job back.
            whole = any(isinstance(e, TaskLost | JobFailed) for e in events)
            if whole and any(s > state.last_seq for s in self._own.get(state.job_id, ())):
                events = []
            try:
                for event in events:
                    envelope = Envelope(event, actor=self.actor)
                    try:
                        ack = await self.bus.publish(
                            self.names.job(state.job_id, event.type),
                            envelope,
                            expected_last_seq=state.last_seq if whole else state.decided_seq,
                            expected_last_subject=self.names.job_all(state.job_id)
                            if whole
                            else self.names.job_decisions(state.job_id),
                        )
                    except WrongLastSequence:
                        # Someone decided first; their events are on their way to us.
                        self.lost_races += 1
                        self._remember(state)
                        return
                    state = self._fold_own(state, envelope, ack.seq, exact=whole)
                    dispatched = [d for d, _ in dispatches_in(envelope)]
                    if picks:
                        sent_to.extend(d.node_id for d in dispatched if d.node_id)
                    if admission is not None:
                        stored.update(d.task_id for d in dispatched)
                    await self._send_tasks(state, envelope)
            finally:
                if admission is not None:
                    admission.unwind(stored)
                # a choice whose dispatch was not stored (a lost race) sent nothing: the node is
                # not busier for it (else a hot job's lost races would fill every node's count)
                if picks and len(picks) != len(sent_to):
                    for node, n in (Counter(picks) - Counter(sent_to)).items():
                        self.nodes.pool.unsent(node, n)
            if not events:
                break
        self._remember(state)

    async def _send_tasks(self, state: JobState, envelope: Envelope) -> None:
        """Put the work of a dispatch (or of a plan's first dispatches) on its subject."""
        for dispatch, msg_id in dispatches_in(envelope):
            await self._send_task(state, dispatch, msg_id)

    async def _send_task(self, state: JobState, event: TaskDispatched, msg_id: str) -> None:
        request = task_request(state, event)
        if request is None or msg_id in self._sent:
            return  # superseded, already running, or sent
        # The work message's id comes from the dispatch event's: JetStream drops a re-send.
        await self.bus.publish(event.subject, Envelope(request, actor=self.actor, id=msg_id))
        self._sent[msg_id] = None
        if len(self._sent) > _MAX_FINISHED:
            self._sent.popitem(last=False)

    async def _send_door_work(self) -> None:
        """Send the work of plans made at the door whose grace has passed and which has not
        started (the gateway's copy, if it sent one, has the same id: JetStream keeps one)."""
        now = time.monotonic()
        while self._door:
            job_id, (due, envelope) = next(iter(self._door.items()))
            if due > now:
                return
            state = self.active.get(job_id)
            age = (datetime.now(UTC) - envelope.at).total_seconds()
            if state is not None and age > self.settings.dedupe_window_s / 2:
                # This instance is far behind the log: JetStream may no longer know the gateway's
                # copy, so send only what the log itself says has not started.
                state = await self._load(job_id)
            if state is not None:
                await self._send_tasks(state, envelope)
            del self._door[job_id]

    def _fold_own(
        self, state: JobState, envelope: Envelope, seq: int, *, exact: bool = False
    ) -> JobState:
        """Fold this instance's own append, stored at `seq`, without moving the job's folded
        position there: reports stored before it may not have arrived yet — unless it was
        `exact` (appended expecting the job's last event: nothing came between)."""
        self._own.setdefault(state.job_id, set()).add(seq)
        return evolve(state, envelope, seq, at_seq=seq if exact else state.last_seq) or state

    def _remember(self, state: JobState) -> None:
        current = self.active.get(state.job_id)
        if current is not None and current.last_seq > state.last_seq:
            return
        own = self._own.get(state.job_id)
        if own is not None:
            own -= {s for s in own if s <= state.last_seq}
            if not own or state.terminal:
                del self._own[state.job_id]
        if state.terminal:
            self.active.pop(state.job_id, None)
            self._recovered.pop(state.job_id, None)
            self.finished[state.job_id] = max(state.last_seq, state.decided_seq)
            if len(self.finished) > _MAX_FINISHED:
                self.finished.popitem(last=False)
            return
        self.active[state.job_id] = state
        self.active.move_to_end(state.job_id)
        if len(self.active) > _MAX_ACTIVE:
            self.active.popitem(last=False)  # reloaded from the log if it speaks again

    async def _tick(self, stop: asyncio.Event) -> None:
        """Re-decide active jobs once a second, for decisions that depend on time; record the
        nodes whose heartbeats stopped."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(1.0, self.settings.heartbeat_s / 2))
            try:
                await record_lost(self.bus, self.nodes, self.actor)
            except Exception:
                log.warning("recording lost nodes failed", exc_info=True)
            try:
                await self.queues.publish(self.fair.held_by_tenant())
            except Exception:
                log.warning("publishing queue sizes failed", exc_info=True)
            try:
                await self._send_door_work()
            except Exception:
                log.warning("sending work planned at the door failed", exc_info=True)
            for model in list(self.fair.held):
                # Held work with no task starting for a while: the estimate may have drifted up
                # (an append lost to another instance); what the workers last reported wins.
                if time.monotonic() - self._last_start.get(model, 0.0) > 5.0:
                    self.fair.repair(model, self.nodes.waiting(model))
                await self._release(model)
            for job_id in list(self.active):
                try:
                    await self._advance_active(job_id)
                except Exception:
                    log.warning("tick failed for job %s", job_id, exc_info=True)
