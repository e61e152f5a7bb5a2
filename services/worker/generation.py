"""One task attempt from start to result: ``task.started`` (for a redelivered attempt, only if
its job has not moved on), the generation, then ``task.completed`` with usage — or
``task.failed`` with a cause, for the orchestrator to retry or fail the job.

``task.started`` and the token chunks are sent without waiting for each ack; all acks are
awaited before the result goes out behind them (one connection keeps the order it publishes)."""

from __future__ import annotations

import asyncio
import logging
import time

from events.bus import Bus, PendingAcks
from events.consume import Delivery
from events.envelope import Envelope
from events.errors import EngineError, WrongLastSequence
from events.jobs import FailureKind, TaskCompleted, TaskFailed, TaskStarted
from events.signing import NodeKey, signed_report
from events.work import TaskRequested
from services.engines.protocol import Engine
from services.metrics import WorkerMetrics
from services.settings import Settings
from services.worker.lease import lease_kept
from services.worker.resume import Partial, partial_output
from services.worker.streaming import Streamer
from services.worker.tally import Tally

log = logging.getLogger(__name__)


class Raced(Exception):
    """Something was recorded for the job between checking a redelivered attempt and starting
    it: check again."""


class Generation:
    """Runs task attempts on `engine` and records their start and end in the job's log."""

    def __init__(
        self,
        bus: Bus,
        engine: Engine,
        settings: Settings,
        metrics: WorkerMetrics,
        tally: Tally,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.tally = tally
        self.names = bus.names
        self.node_id = settings.node_id
        self.actor = f"worker/{self.node_id}"
        seed = settings.nats_nkey_seed  # its NATS identity signs what it reports
        self.key = NodeKey.from_file(seed) if seed is not None else None
        self.streamer = Streamer(engine, settings, self.names, metrics, tally, self.actor)
        self._requests: dict[str, set[str]] = {}  # job id -> engine request ids in flight

    async def run(
        self, delivery: Delivery, request: TaskRequested, expected_last_seq: int | None
    ) -> None:
        """Run one attempt; `Raced` if `expected_last_seq` is given and no longer the job's
        last event."""
        task, job_id = request.task, request.job_id
        # task.started is not awaited on its own: its ack is awaited with the token chunks',
        # before the result.
        pending = PendingAcks(self.bus)
        done = await self._resumed(delivery, request)
        await self._start(delivery, request, expected_last_seq, pending, done)
        request_id = f"{task.task_id}.{request.attempt}.{delivery.deliveries}"
        timeout_s = min(
            task.timeout_s or self.settings.task_timeout_s, self.settings.task_timeout_s
        )
        async with lease_kept(delivery, self.settings.task_ack_wait_s):
            self._requests.setdefault(job_id, set()).add(request_id)
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(timeout_s):
                    completed = await self.streamer.generate(request, request_id, t0, pending, done)
            except TimeoutError:
                await self.engine.abort(request_id)
                await pending.flush()
                await self.fail(request, "timeout", f"no result within {timeout_s:g}s", True)
                return
            except EngineError as exc:
                await pending.flush()
                await self.fail(request, exc.kind, str(exc), exc.retriable)  # type: ignore[arg-type]
                return
            finally:
                self._forget(job_id, request_id)
        await self._complete(request, completed, pending)

    async def _resumed(self, delivery: Delivery, request: TaskRequested) -> Partial:
        """What earlier attempts streamed: an attempt after another (its worker died mid-answer)
        continues from there, so a reader's text carries on with nothing repeated or lost."""
        if not request.task.params.resumable:
            return Partial()  # constrained from its first token, or every token's logprob: anew
        if request.attempt > 1 or delivery.deliveries > 1:
            return await partial_output(
                self.bus, request.job_id, request.task.task_id, verify=self.settings.signed_only
            )
        return Partial()

    async def _start(
        self,
        delivery: Delivery,
        request: TaskRequested,
        expected_last_seq: int | None,
        pending: PendingAcks,
        done: Partial,
    ) -> None:
        job_id = request.job_id
        started = signed_report(
            TaskStarted(
                job_id=job_id,
                task_id=request.task.task_id,
                attempt=request.attempt,
                node_id=self.node_id,
                delivery=delivery.deliveries,
                resumed_chars=len(done.text),
                resumed_tokens=done.tokens,
            ),
            self.key,
        )
        subject = self.names.report(job_id, started.type, self.node_id)
        if expected_last_seq is None:
            await pending.add(subject, Envelope(started, actor=self.actor))
            return
        # A redelivered attempt starts only if nothing was decided for the job since it was
        # found still wanted: the orchestrator may have just given this attempt up (its node
        # lost) and sent the next one — possibly to this very worker.
        try:
            await self.bus.publish(
                subject,
                Envelope(started, actor=self.actor),
                expected_last_seq=expected_last_seq,
                expected_last_subject=self.names.job_decisions(job_id),
            )
        except WrongLastSequence:
            raise Raced from None

    async def _complete(
        self, request: TaskRequested, completed: TaskCompleted, pending: PendingAcks
    ) -> None:
        # The result goes out behind the chunks without waiting for their acks; then every ack
        # is awaited, and whatever failed is re-sent. task.completed carries the whole output,
        # so a reader never depends on the chunks.
        completed = signed_report(completed, self.key)
        await pending.add(
            self.names.report(request.job_id, completed.type, self.node_id),
            Envelope(completed, actor=self.actor),
        )
        await pending.flush()
        self.tally.completed += 1
        self.tally.latency_sum_s += completed.duration_ms / 1000
        m, model = self.metrics, request.task.model
        outcome = "aborted" if completed.finish_reason == "abort" else "completed"
        m.requests.labels(model=model, outcome=outcome).inc()
        m.duration.labels(model=model).observe(completed.duration_ms / 1000)
        m.ttft.labels(model=model).observe(completed.ttft_ms / 1000)
        m.prompt_tokens.labels(model=model).inc(completed.usage.prompt_tokens)
        m.generation_tokens.labels(model=model).inc(completed.usage.completion_tokens)

    async def fail(
        self, request: TaskRequested, kind: FailureKind, error: str, retriable: bool
    ) -> None:
        """Record the attempt failed (`retriable`: another attempt may succeed)."""
        self.tally.failed += 1
        self.metrics.requests.labels(model=request.task.model, outcome="failed").inc()
        self.metrics.errors.labels(model=request.task.model, kind=kind).inc()
        log.warning(
            "task %s attempt %d failed (%s): %s", request.task.task_id, request.attempt, kind, error
        )
        failed = signed_report(
            TaskFailed(
                job_id=request.job_id,
                task_id=request.task.task_id,
                attempt=request.attempt,
                node_id=self.node_id,
                kind=kind,
                error=error,
                retriable=retriable,
            ),
            self.key,
        )
        await self.bus.publish(
            self.names.report(request.job_id, failed.type, self.node_id),
            Envelope(failed, actor=self.actor),
        )

    def running(self, job_id: str) -> bool:
        """Whether an engine request runs here for `job_id`."""
        return bool(self._requests.get(job_id))

    async def abort(self, job_id: str) -> None:
        """Abort the engine requests running for `job_id` (it ended)."""
        for request_id in list(self._requests.get(job_id, ())):
            log.info("job %s ended: aborting %s", job_id, request_id)
            self.tally.aborted += 1
            await self.engine.abort(request_id)

    def _forget(self, job_id: str, request_id: str) -> None:
        running = self._requests.get(job_id, set())
        running.discard(request_id)
        if not running:
            self._requests.pop(job_id, None)
