"""The worker process: registers its node, pulls tasks for its models, drives the engine.

Per task it publishes ``task.started``, token chunks to TOKENS (coalesced, sent without waiting
for each ack; all acks are awaited before the result), then ``task.completed`` with usage — or
``task.failed`` with a cause, for the orchestrator to retry or fail the job. A long generation
sends in-progress acks so its lease does not lapse; a worker killed mid-task simply stops doing
so and JetStream redelivers the task to another worker. On SIGTERM it drains: asks for no more
work, finishes what it has, removes its node record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from datetime import UTC, datetime
from importlib import metadata

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import propagate, trace

from events.bus import Bus, PendingAcks
from events.consume import ConsumerSpec, Delivery, Reject, run_pool
from events.envelope import Envelope
from events.errors import EngineError, WrongLastSequence, while_unavailable
from events.inference import FinishReason, Usage
from events.job_log import history
from events.jobs import (
    FailureKind,
    JobCancelled,
    JobFailed,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
)
from events.nodes import NodeJoined, NodeLeft
from events.records import NodeRecord
from events.retry import RACED_START
from events.subjects import encode_token, job_id_of
from events.work import TaskRequested, TokensProduced
from projections.job_status import fold
from services.engines.protocol import Engine, GenerationRequest, estimate_tokens
from services.metrics import WorkerMetrics, observe_per_token
from services.settings import Settings
from services.worker.coalesce import Coalescer, Piece
from services.worker.gpu import gpu_facts
from services.worker.resume import Partial, partial_output

log = logging.getLogger(__name__)
_ENDED_MEMORY = 100_000  # job ids remembered as ended, newest kept
tracer = trace.get_tracer("dim.worker")


class _Raced(Exception):
    """Something was recorded for the job between checking a redelivered attempt and starting
    it: check again."""


def dim_version() -> str:
    """The installed dim version."""
    try:
        return metadata.version("dim")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _model_durable(model: str) -> str:
    """The task consumer every worker serving `model` shares."""
    return f"model-{encode_token(model)}"


class Worker:
    """One worker node serving `engine`'s models."""

    def __init__(self, bus: Bus, engine: Engine, settings: Settings) -> None:
        self.bus = bus
        self.engine = engine
        self.settings = settings
        self.names = bus.names
        self.node_id = settings.node_id
        self.actor = f"worker/{self.node_id}"
        self.capacity = min(settings.capacity, engine.capacity)
        self.in_flight = 0
        self.completed = 0
        self.failed = 0
        self.tokens_out = 0
        self.draining = False
        self.aborted = 0
        self._requests: dict[str, set[str]] = {}  # job id -> engine request ids in flight
        self.started_at = datetime.now(UTC)
        self.cold_start_s = 0.0
        self.metrics = WorkerMetrics(engine.kind)
        self.metrics_url = ""
        self.gpus = gpu_facts()
        self.healthy = True
        self.queued: dict[str, int] = {}  # tasks waiting per served model, at the last heartbeat
        self.skipped = 0  # tasks not run: superseded attempts, tasks of jobs that already ended
        self._ended: OrderedDict[str, None] = OrderedDict()  # jobs that ended early, recent
        self._latency_sum_s = 0.0

    def consumers(self) -> list[ConsumerSpec]:
        """One durable per served model (shared by every worker serving it) and one for this node."""
        common = {
            "stream": self.names.tasks_stream,
            "ack_wait_s": self.settings.task_ack_wait_s,
            "max_deliver": self.settings.task_max_deliver,
            "max_ack_pending": 100_000,
        }
        # A node reserved for some tenants takes only the tasks sent to it by name.
        shared = () if self.settings.tenants else self.engine.models
        specs = [
            ConsumerSpec(
                durable=_model_durable(m),
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

    def record(self) -> NodeRecord:
        """This node's current registry record."""
        return NodeRecord(
            node_id=self.node_id,
            models=self.engine.models,
            engine=self.engine.kind,
            capacity=self.capacity,
            in_flight=self.in_flight,
            version=dim_version(),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            heartbeat_at=datetime.now(UTC),
            tasks_completed=self.completed,
            tasks_failed=self.failed,
            tokens_out=self.tokens_out,
            draining=self.draining,
            max_context=getattr(self.engine, "max_context", None),
            gpus=self.gpus,
            cold_start_s=round(self.cold_start_s, 3),
            avg_latency_ms=round(self._latency_sum_s * 1000 / self.completed, 3)
            if self.completed
            else 0.0,
            metrics_url=self.metrics_url,
            tenants=self.settings.tenants,
            healthy=self.healthy,
            queued=dict(self.queued),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain and deregister."""
        t0 = time.monotonic()
        await self.engine.start()  # load and warm the model before announcing the node
        await self.engine.check_health()  # announce only an engine that can serve
        self.cold_start_s = time.monotonic() - t0
        self.metrics.cold_start.set(self.cold_start_s)
        server, _ = self.metrics.serve(
            self.settings.metrics_host,
            self.settings.metrics_port,
            getattr(self.engine, "metrics_registry", None),
        )
        self.metrics_url = f"http://{self.settings.metrics_host}:{server.server_port}/metrics"
        # NATS not answering for now (paused, failing over) is waited out at each step: a worker
        # starting meanwhile would otherwise end for good.
        bucket = self.names.bucket("nodes")
        kv = await while_unavailable(lambda: self.bus.js.key_value(bucket), stop, "open " + bucket)
        record = self.record().model_dump_json().encode()
        await while_unavailable(lambda: kv.put(self.node_id, record), stop, "register the node")
        joined = Envelope(
            NodeJoined(
                node_id=self.node_id,
                models=self.engine.models,
                engine=self.engine.kind,
                capacity=self.capacity,
                dim_version=dim_version(),
            ),
            actor=self.actor,
        )
        subject = self.names.node_event(self.node_id, joined.type)
        # One envelope, so a retry after a lost ack has its id and is stored once.
        await while_unavailable(lambda: self.bus.publish(subject, joined), stop, "announce")
        heartbeat = asyncio.create_task(self._heartbeat(kv, stop))
        # A job that ends early (cancelled, or failed: a deadline, another task's failure) says
        # so on its subject: listen to all of them, abort what this worker runs for it and skip
        # its tasks still queued here.
        ends = [
            await self.bus.nc.subscribe(self.names.job("*", t), cb=self._on_end)
            for t in (JobCancelled.type, JobFailed.type)
        ]
        log.info(
            "worker %s serving %s (capacity %d)",
            self.node_id,
            ", ".join(self.engine.models),
            self.capacity,
        )
        try:
            await run_pool(
                self.bus, self.consumers(), self.handle, capacity=self.capacity, stop=stop
            )
        finally:
            self.draining = True
            for sub in ends:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):
                await kv.delete(self.node_id)
                await self._node_event(
                    NodeLeft(node_id=self.node_id, tasks_completed=self.completed)
                )
            await self.engine.close()
            server.shutdown()
            server.server_close()
            log.info(
                "worker %s stopped (%d completed, %d failed)",
                self.node_id,
                self.completed,
                self.failed,
            )

    async def _heartbeat(self, kv: KeyValue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_s)
            if stop.is_set():
                self.draining = True
            try:
                await self._check_health()
                with contextlib.suppress(Exception):  # the record goes out regardless
                    await self._measure_queues()
                await kv.put(self.node_id, self.record().model_dump_json().encode())
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    async def _node_event(self, event: NodeLeft) -> None:
        await self.bus.publish(
            self.names.node_event(self.node_id, event.type), Envelope(event, actor=self.actor)
        )

    async def _check_health(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.settings.heartbeat_s)):
                await self.engine.check_health()
        except Exception as exc:
            if self.healthy:
                log.warning("engine unhealthy, leaving selection: %r", exc)
            self.healthy = False
        else:
            if not self.healthy:
                log.info("engine healthy again")
            self.healthy = True

    async def _still_wanted(self, request: TaskRequested) -> int | None:
        """For a redelivered attempt: the sequence of the job's last event if the attempt is
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
        return state.last_seq

    async def _measure_queues(self) -> None:
        """Tasks waiting per served model (its shared consumer's backlog), for /metrics."""
        for model in self.engine.models:
            try:
                info = await self.bus.js.consumer_info(
                    self.names.tasks_stream, _model_durable(model)
                )
            except NotFoundError:  # a node reserved for tenants has no shared consumer
                continue
            self.metrics.queued.labels(model=model).set(info.num_pending + info.num_ack_pending)
            self.queued[model] = info.num_pending

    async def handle(self, delivery: Delivery) -> None:
        """Run one task attempt end to end."""
        request = delivery.envelope.data
        if not isinstance(request, TaskRequested):
            raise Reject(f"expected task.requested on a task subject, got {request.type}")
        if request.task.prompt is None:
            raise Reject(f"task {request.task.task_id} has no prompt")
        if request.job_id in self._ended:
            self.skipped += 1
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
            await self._fail(
                request,
                "invalid_request",
                f"node {self.node_id} serves only tenants {', '.join(tenants)}",
                True,  # another node may take it
            )
            return
        ctx = propagate.extract(delivery.headers)
        with tracer.start_as_current_span(
            "worker.task", context=ctx, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("dim.job_id", request.job_id)
            span.set_attribute("dim.task_id", request.task.task_id)
            span.set_attribute("dim.node_id", self.node_id)
            self.in_flight += 1
            running = self.metrics.running.labels(model=request.task.model)
            running.inc()
            try:
                for _ in range(RACED_START.tries or 1):
                    try:
                        await self._run(delivery, request, expected)
                        return
                    except _Raced:
                        expected = await self._still_wanted(request)
                        if expected is None:
                            self._skip_superseded(request)
                            return
                await self._run(delivery, request, None)  # the job keeps moving: go ahead
            finally:
                self.in_flight -= 1
                running.dec()

    def _skip_superseded(self, request: TaskRequested) -> None:
        self.skipped += 1
        log.info("skipping superseded attempt %d of %s", request.attempt, request.task.task_id)

    async def _run(
        self, delivery: Delivery, request: TaskRequested, expected_last_seq: int | None
    ) -> None:
        task, job_id = request.task, request.job_id
        # task.started is not awaited on its own: its ack is awaited with the token chunks',
        # before the result, and one connection keeps the order of what it publishes.
        pending = PendingAcks(self.bus)
        # An attempt after another (its worker died mid-answer) continues the answer from what
        # was already streamed, so a reader's text carries on with nothing repeated or lost.
        done = Partial()
        if request.attempt > 1 or delivery.deliveries > 1:
            done = await partial_output(self.bus, job_id, task.task_id)
        started = TaskStarted(
            job_id=job_id,
            task_id=task.task_id,
            attempt=request.attempt,
            node_id=self.node_id,
            delivery=delivery.deliveries,
            resumed_chars=len(done.text),
            resumed_tokens=done.tokens,
        )
        subject = self.names.job(job_id, started.type)
        if expected_last_seq is None:
            await pending.add(subject, Envelope(started, actor=self.actor))
        else:
            # A redelivered attempt starts only if nothing was recorded for the job since it was
            # found still wanted: the orchestrator may have just given this attempt up (its node
            # lost) and sent the next one — possibly to this very worker.
            try:
                await self.bus.publish(
                    subject,
                    Envelope(started, actor=self.actor),
                    expected_last_seq=expected_last_seq,
                    expected_last_subject=self.names.job_all(job_id),
                )
            except WrongLastSequence:
                raise _Raced from None
        keepalive = asyncio.create_task(self._keep_lease(delivery))
        request_id = f"{task.task_id}.{request.attempt}.{delivery.deliveries}"
        timeout_s = min(
            task.timeout_s or self.settings.task_timeout_s, self.settings.task_timeout_s
        )
        self._requests.setdefault(job_id, set()).add(request_id)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                completed = await self._generate(request, request_id, t0, pending, done)
        except TimeoutError:
            await self.engine.abort(request_id)
            await pending.flush()
            await self._fail(request, "timeout", f"no result within {timeout_s:g}s", True)
            return
        except EngineError as exc:
            await pending.flush()
            await self._fail(request, exc.kind, str(exc), exc.retriable)  # type: ignore[arg-type]
            return
        finally:
            running = self._requests.get(job_id, set())
            running.discard(request_id)
            if not running:
                self._requests.pop(job_id, None)
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        # The result goes out behind the chunks without waiting for their acks (one connection
        # keeps the order); then every ack is awaited, and whatever failed is re-sent.
        # task.completed carries the whole output, so a reader never depends on the chunks.
        await pending.add(
            self.names.job(job_id, completed.type), Envelope(completed, actor=self.actor)
        )
        await pending.flush()
        self.completed += 1
        self._latency_sum_s += completed.duration_ms / 1000
        m, model = self.metrics, request.task.model
        outcome = "aborted" if completed.finish_reason == "abort" else "completed"
        m.requests.labels(model=model, outcome=outcome).inc()
        m.duration.labels(model=model).observe(completed.duration_ms / 1000)
        m.ttft.labels(model=model).observe(completed.ttft_ms / 1000)
        m.prompt_tokens.labels(model=model).inc(completed.usage.prompt_tokens)
        m.generation_tokens.labels(model=model).inc(completed.usage.completion_tokens)

    async def _generate(
        self,
        request: TaskRequested,
        request_id: str,
        started: float,
        pending: PendingAcks,
        done: Partial,
    ) -> TaskCompleted:
        task = request.task
        assert task.prompt is not None  # checked on delivery
        left = task.params.max_tokens - done.tokens
        if done.finish_reason is not None or left <= 0:
            # An earlier attempt streamed the whole answer and died before reporting it.
            return TaskCompleted(
                job_id=request.job_id,
                task_id=task.task_id,
                attempt=request.attempt,
                node_id=self.node_id,
                output=done.text,
                finish_reason=done.finish_reason or "length",
                usage=Usage(
                    prompt_tokens=estimate_tokens(task.prompt.render()),
                    completion_tokens=done.tokens,
                    estimated=True,
                ),
                ttft_ms=0.0,
                duration_ms=round((time.monotonic() - started) * 1000, 3),
            )
        params = task.params.model_copy(update={"max_tokens": left}) if done.tokens else task.params
        gen = GenerationRequest(
            request_id,
            task.model,
            task.prompt,
            params,
            resume=done.text,
            resume_token_ids=done.token_ids,
        )
        with tracer.start_as_current_span("engine.generate") as span:
            span.set_attribute("dim.engine", self.engine.kind)
            span.set_attribute("gen_ai.request.model", task.model)
            span.set_attribute("gen_ai.request.max_tokens", task.params.max_tokens)
            if done.text:
                span.set_attribute("dim.resumed_chars", len(done.text))
            return await self._stream(request, gen, started, pending, span, done)

    async def _stream(
        self,
        request: TaskRequested,
        gen: GenerationRequest,
        started: float,
        pending: PendingAcks,
        span: trace.Span,
        done: Partial,
    ) -> TaskCompleted:
        task = request.task
        coalescer = Coalescer(
            self.settings.token_flush_ms, self.settings.token_flush_chars, offset=len(done.text)
        )
        subject = self.names.tokens(request.job_id)
        output: list[str] = [done.text]
        ttft: float | None = None
        finish = None
        usage = None

        async def send(piece: Piece, finish_reason: FinishReason | None = None) -> None:
            chunk = TokensProduced(
                job_id=request.job_id,
                task_id=task.task_id,
                attempt=request.attempt,
                node_id=self.node_id,
                index=piece.index,
                offset=piece.offset,
                text=piece.text,
                tokens=piece.tokens,
                finish_reason=finish_reason,
                token_ids=piece.token_ids,
            )
            await pending.add(subject, Envelope(chunk, actor=self.actor))

        async def send_first() -> None:
            piece = coalescer.cut(time.monotonic())  # None if the answer ended meanwhile
            if piece is not None:
                await send(piece)

        itl = self.metrics.itl.labels(model=task.model)
        last = started
        first: asyncio.Task[None] | None = None  # the first piece, sent on the loop's next turn
        try:
            async for chunk in self.engine.generate(gen):
                now = time.monotonic()
                if chunk.text:
                    if ttft is None:
                        ttft = now - started
                    elif chunk.tokens:
                        observe_per_token(itl, now - last, chunk.tokens)
                    last = now
                    output.append(chunk.text)
                if chunk.finish_reason is not None:
                    finish, usage = chunk.finish_reason, chunk.usage
                    # Always sent, even empty: it tells readers the stream is complete.
                    last_piece = coalescer.finish(chunk.text, chunk.tokens, now, chunk.token_ids)
                    await send(last_piece, finish)
                    break
                piece = coalescer.add(chunk.text, chunk.tokens, now, chunk.token_ids)
                if piece is not None:
                    await send(piece)
                elif first is None and coalescer.first_waiting:
                    first = asyncio.create_task(send_first())
            if first is not None:
                await first  # its publish failing fails the attempt, as any chunk's would
        finally:
            if first is not None and not first.done():
                first.cancel()  # the attempt ended otherwise (timeout, engine error)
        if finish is None or usage is None:
            raise EngineError("the engine ended the stream without a finish reason")
        if done.tokens:  # the whole answer's usage: what was resumed counts once, here
            usage = usage.model_copy(
                update={"completion_tokens": usage.completion_tokens + done.tokens}
            )
        self.tokens_out += usage.completion_tokens
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [finish])
        return TaskCompleted(
            job_id=request.job_id,
            task_id=task.task_id,
            attempt=request.attempt,
            node_id=self.node_id,
            output="".join(output),
            finish_reason=finish,
            usage=usage,
            ttft_ms=round((ttft if ttft is not None else time.monotonic() - started) * 1000, 3),
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )

    async def _fail(
        self, request: TaskRequested, kind: FailureKind, error: str, retriable: bool
    ) -> None:
        self.failed += 1
        self.metrics.requests.labels(model=request.task.model, outcome="failed").inc()
        self.metrics.errors.labels(model=request.task.model, kind=kind).inc()
        log.warning(
            "task %s attempt %d failed (%s): %s", request.task.task_id, request.attempt, kind, error
        )
        await self._append(
            request.job_id,
            TaskFailed(
                job_id=request.job_id,
                task_id=request.task.task_id,
                attempt=request.attempt,
                node_id=self.node_id,
                kind=kind,
                error=error,
                retriable=retriable,
            ),
        )

    async def _append(self, job_id: str, event: TaskStarted | TaskCompleted | TaskFailed) -> None:
        await self.bus.publish(
            self.names.job(job_id, event.type), Envelope(event, actor=self.actor)
        )

    async def _on_end(self, msg: Msg) -> None:
        job_id = job_id_of(msg.subject)
        self._ended[job_id] = None
        if len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)
        for request_id in list(self._requests.get(job_id, ())):
            log.info("job %s ended: aborting %s", job_id, request_id)
            self.aborted += 1
            await self.engine.abort(request_id)

    async def _keep_lease(self, delivery: Delivery) -> None:
        interval = max(0.2, self.settings.task_ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await delivery.in_progress()
