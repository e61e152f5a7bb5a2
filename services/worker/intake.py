"""Taking tasks: the consumers a worker pulls them from, and what each delivered task goes
through before it runs — is it a task, has its job already ended, is a redelivered attempt still
wanted, does this node serve its tenant — and the retry of a redelivered attempt whose job moved
on while it was being started."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from opentelemetry import propagate, trace

from events.bus import Bus, Message
from events.consume import ConsumerSpec, Delivery, Reject
from events.job_log import history, terminal_from_log
from events.retry import RACED_START
from events.subjects import encode_token, job_id_of
from events.work import TaskRequested
from projections.job_status import fold
from services.metrics import WorkerMetrics
from services.settings import Settings
from services.worker.generation import Generation, Raced
from services.worker.tally import Tally

log = logging.getLogger(__name__)
tracer = trace.get_tracer("dim.worker")
_ENDED_MEMORY = 100_000  # job ids remembered as ended (and ends heard), newest kept
# An end heard on the bus is believed once the job's log holds it: a JetStream append reaches
# subscribers whether or not the stream stores it (one refused for its expected sequence, or
# lost with a server, is still delivered), and an append stored on three servers may be heard
# a moment before it can be read. Seconds to wait before each look.
_END_LOOKS_S = (0.0, 0.05, 0.2, 0.5, 1.0)


def model_durable(model: str) -> str:
    """The task consumer every worker serving `model` shares."""
    return f"model-{encode_token(model)}"


class Intake:
    """Takes the tasks for `models` and hands those still wanted to `generation`."""

    def __init__(
        self,
        bus: Bus,
        settings: Settings,
        models: tuple[str, ...],
        metrics: WorkerMetrics,
        tally: Tally,
        generation: Generation,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.tally = tally
        self.generation = generation
        self.names = bus.names
        self.node_id = settings.node_id
        self._ended: OrderedDict[str, None] = OrderedDict()  # jobs whose log holds their end
        self._heard: OrderedDict[str, None] = OrderedDict()  # ends heard, not yet looked up
        self._looking: set[asyncio.Task[None]] = set()

    def consumers(self) -> list[ConsumerSpec]:
        """One durable per served model (shared by every worker serving it) and one for this node."""
        common = {
            "stream": self.names.tasks_stream,
            "ack_wait_s": self.settings.task_ack_wait_s,
            "max_deliver": self.settings.task_max_deliver,
            "max_ack_pending": 100_000,
        }
        # A node reserved for some tenants takes only the tasks sent to it by name.
        shared = () if self.settings.tenants else self.models
        specs = [
            ConsumerSpec(
                durable=model_durable(m),
                filter_subjects=(self.names.tasks_for_model(m),),
                description=f"tasks for model {m}",
                **common,  # type: ignore[arg-type]
            )
            for m in shared
        ]
        specs.append(
            ConsumerSpec(
                durable=f"node-{self.node_id}",
                filter_subjects=(self.names.tasks_for_node(self.node_id),),
                inactive_threshold_s=24 * 3600.0,
                description=f"tasks pinned to node {self.node_id}",
                **common,  # type: ignore[arg-type]
            )
        )
        return specs

    async def handle(self, delivery: Delivery) -> None:
        """Run one task attempt end to end."""
        request = delivery.envelope.data
        if not isinstance(request, TaskRequested):
            raise Reject(f"expected task.requested on a task subject, got {request.type}")
        if request.task.prompt is None:
            raise Reject(f"task {request.task.task_id} has no prompt")
        if request.job_id in self._heard:
            self._heard.pop(request.job_id, None)
            if await self._ended_in_log(request.job_id):
                _remember(self._ended, request.job_id)
        if request.job_id in self._ended:
            self.tally.skipped += 1
            log.info("skipping %s: its job has ended", request.task.task_id)
            return
        expected: int | None = None  # the job's last event, for a redelivered attempt
        if delivery.deliveries > 1:
            expected = await self._still_wanted(request)
            if expected is None:
                self._skip_superseded(request)
                return
        tenants = self.settings.tenants
        if tenants and request.task.tenant not in tenants:
            await self.generation.fail(
                request,
                "invalid_request",
                f"node {self.node_id} serves only tenants {', '.join(tenants)}",
                True,  # another node may take it
            )
            return
        await self._run(delivery, request, expected)

    async def _run(self, delivery: Delivery, request: TaskRequested, expected: int | None) -> None:
        ctx = propagate.extract(delivery.headers)
        with tracer.start_as_current_span(
            "worker.task", context=ctx, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("dim.job_id", request.job_id)
            span.set_attribute("dim.task_id", request.task.task_id)
            span.set_attribute("dim.node_id", self.node_id)
            self.tally.in_flight += 1
            running = self.metrics.running.labels(model=request.task.model)
            running.inc()
            try:
                await self._attempt(delivery, request, expected)
            finally:
                self.tally.in_flight -= 1
                running.dec()

    async def _attempt(
        self, delivery: Delivery, request: TaskRequested, expected: int | None
    ) -> None:
        """Run the attempt; a redelivered one whose job moved on as it started is checked again
        (and skipped if no longer wanted), a few times, then run regardless."""
        for _ in range(RACED_START.tries or 1):
            try:
                await self.generation.run(delivery, request, expected)
                return
            except Raced:
                expected = await self._still_wanted(request)
                if expected is None:
                    self._skip_superseded(request)
                    return
        await self.generation.run(delivery, request, None)  # the job keeps moving: go ahead

    async def _still_wanted(self, request: TaskRequested) -> int | None:
        """For a redelivered attempt: the sequence of the job's last decision if the attempt is
        still wanted; None when the job ended, or the task has a result or a newer attempt (the
        orchestrator moved it off a node it thought lost)."""
        state = fold(None, await history(self.bus, request.job_id))
        if state is None:
            return 0
        task = state.task(request.task.task_id)
        if (
            state.terminal
            or task is None
            or task.attempt != request.attempt
            or task.status in ("completed", "failed")
        ):
            return None
        return state.decided_seq

    def _skip_superseded(self, request: TaskRequested) -> None:
        self.tally.skipped += 1
        log.info("skipping superseded attempt %d of %s", request.attempt, request.task.task_id)

    async def on_end(self, msg: Message) -> None:
        """A job ended early (cancelled, or failed), as heard on the bus: once its log holds the
        end, abort what runs for it here; its tasks still queued here are looked up when they
        come (an end the log never holds is not acted on)."""
        job_id = job_id_of(msg.subject)
        if job_id in self._ended:
            return
        if not self.generation.running(job_id):
            _remember(self._heard, job_id)
            return
        looking = asyncio.create_task(self._abort_when_logged(job_id))  # not on the bus's reader
        self._looking.add(looking)
        looking.add_done_callback(self._looking.discard)

    async def _abort_when_logged(self, job_id: str) -> None:
        try:
            ended = await self._ended_in_log(job_id)
        except Exception as exc:  # the log cannot be read now: the end is not believed
            log.warning("job %s: an end was heard, its log could not be read: %r", job_id, exc)
            return
        if ended:
            _remember(self._ended, job_id)
            await self.generation.abort(job_id)
        else:
            log.warning("job %s: an end was heard that its log does not hold; ignored", job_id)

    async def _ended_in_log(self, job_id: str) -> bool:
        """Whether the job's log holds its end, looking a few times over a second or two."""
        for delay in _END_LOOKS_S:
            await asyncio.sleep(delay)
            if await terminal_from_log(self.bus, job_id) is not None:
                return True
        return False


def _remember(jobs: OrderedDict[str, None], job_id: str) -> None:
    jobs[job_id] = None
    if len(jobs) > _ENDED_MEMORY:
        jobs.popitem(last=False)
