"""One generation on the engine: the request (continuing what earlier attempts streamed), its
token chunks sent to TOKENS as they come (coalesced, without waiting for acks), and the result
with usage and timings."""

from __future__ import annotations

import asyncio
import time

from opentelemetry import trace
from prometheus_client import Histogram

from events import vectors
from events.bus import PendingAcks
from events.capabilities import BASIC
from events.envelope import Envelope
from events.errors import EngineError
from events.inference import MAX_EMBEDDING_DIMENSIONS, FinishReason, TokenLogprob, Usage
from events.jobs import TaskCompleted
from events.subjects import Names
from events.tools import CallPart, ToolCall
from events.work import TaskRequested, TokensProduced
from services.engines.protocol import (
    Chunk,
    Engine,
    GenerationRequest,
    estimate_tokens,
    require_capabilities,
)
from services.metrics import WorkerMetrics, observe_per_token
from services.settings import Settings
from services.worker.coalesce import Coalescer, Piece
from services.worker.resume import Partial
from services.worker.tally import Tally

tracer = trace.get_tracer("dim.worker")

# What the engine's stream ended with: time to the first text (None: no text), finish, usage.
_Ending = tuple[float | None, FinishReason | None, Usage | None]


class _Extras:
    """What an answer has beyond its text: each token's logprob, and the tool calls it makes."""

    __slots__ = ("logprobs", "tool_calls")

    def __init__(self) -> None:
        self.logprobs: list[TokenLogprob] | None = None
        self.tool_calls: tuple[ToolCall, ...] = ()

    def add(self, chunk: Chunk) -> None:
        if chunk.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(chunk.logprobs)
        if chunk.tool_calls:
            self.tool_calls = chunk.tool_calls


class _Chunks:
    """The token chunks of one attempt: pieces cut by its `Coalescer`, published without
    waiting (their acks are awaited with the result's)."""

    __slots__ = (
        "actor",
        "attempt",
        "call",
        "call_coalescer",
        "call_offsets",
        "coalescer",
        "job_id",
        "node_id",
        "pending",
        "subject",
        "task_id",
    )

    def __init__(
        self,
        request: TaskRequested,
        node_id: str,
        actor: str,
        subject: str,
        pending: PendingAcks,
        coalescer: Coalescer,
    ) -> None:
        self.job_id = request.job_id
        self.task_id = request.task.task_id
        self.attempt = request.attempt
        self.node_id = node_id
        self.actor = actor
        self.subject = subject
        self.pending = pending
        self.coalescer = coalescer
        self.call: CallPart | None = None  # the tool call whose arguments stream now
        self.call_coalescer: Coalescer | None = None
        self.call_offsets: dict[int, int] = {}  # where each call's arguments stand

    async def send_call(self, chunk: Chunk, now: float) -> None:
        """Buffer a piece of a tool call's arguments; a call other than the one buffered
        sends that one's rest first."""
        part = chunk.call
        assert part is not None
        if self.call != part:
            await self.end_call(now)
            text = self.coalescer  # the answer's text so far goes first, in order
            before = text.cut(now)
            if before is not None:
                await self.send(before)
            self.call_coalescer = Coalescer(
                text.flush_s * 1000, text.flush_chars, offset=self.call_offsets.get(part.index, 0)
            )
            self.call = part
        buffered = self.call_coalescer
        assert buffered is not None
        piece = buffered.add(chunk.text, chunk.tokens, now)
        if piece is None and buffered.first_waiting:
            piece = buffered.cut(now)  # the call's first piece (its id and name) at once
        if piece is not None:
            await self.send(piece, call=part)

    async def end_call(self, now: float) -> None:
        """Send what is buffered of the current tool call's arguments."""
        if self.call_coalescer is not None and self.call is not None:
            piece = self.call_coalescer.cut(now)
            if piece is not None:
                await self.send(piece, call=self.call)
            self.call_offsets[self.call.index] = self.call_coalescer.offset
        self.call, self.call_coalescer = None, None

    async def send(
        self, piece: Piece, finish_reason: FinishReason | None = None, call: CallPart | None = None
    ) -> None:
        chunk = TokensProduced(
            job_id=self.job_id,
            task_id=self.task_id,
            attempt=self.attempt,
            node_id=self.node_id,
            index=piece.index,
            offset=piece.offset,
            text=piece.text,
            tokens=piece.tokens,
            finish_reason=finish_reason,
            token_ids=piece.token_ids,
            logprobs=piece.logprobs,
            call=call,
        )
        await self.pending.add(self.subject, Envelope(chunk, actor=self.actor))

    async def send_first(self) -> None:
        piece = self.coalescer.cut(time.monotonic())  # None if the answer ended meanwhile
        if piece is not None:
            await self.send(piece)


class Streamer:
    """Runs generations on `engine` and streams their tokens."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        names: Names,
        metrics: WorkerMetrics,
        tally: Tally,
        actor: str,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.names = names
        self.metrics = metrics
        self.tally = tally
        self.node_id = settings.node_id
        self.actor = actor
        self._can: dict[str, frozenset[str]] = {}

    def can(self, model: str) -> frozenset[str]:
        """What the engine does for `model` (asked once: it is fixed once started)."""
        can = self._can.get(model)
        if can is None:
            can = self._can[model] = frozenset(self.engine.capabilities().get(model, BASIC))
        return can

    async def generate(
        self,
        request: TaskRequested,
        request_id: str,
        started: float,
        pending: PendingAcks,
        done: Partial,
    ) -> TaskCompleted:
        """Generate the task's answer, or what is left of it after `done`."""
        task = request.task
        assert task.prompt is not None  # checked on delivery
        left = task.params.max_tokens - done.tokens
        if done.finish_reason is not None or left <= 0:
            # An earlier attempt streamed the whole answer and died before reporting it.
            return self._already_done(request, started, done)
        params = task.params.model_copy(update={"max_tokens": left}) if done.tokens else task.params
        gen = GenerationRequest(
            request_id,
            task.model,
            task.prompt,
            params,
            resume=done.text,
            resume_token_ids=done.token_ids,
        )
        # served or refused, never ignored: a task the mesh should not have sent here
        require_capabilities(gen, self.can(task.model), self.engine.kind)
        if task.params.embed:
            return await self._embedded(request, gen, started)
        with tracer.start_as_current_span("engine.generate") as span:
            span.set_attribute("dim.engine", self.engine.kind)
            span.set_attribute("gen_ai.request.model", task.model)
            span.set_attribute("gen_ai.request.max_tokens", task.params.max_tokens)
            if done.text:
                span.set_attribute("dim.resumed_chars", len(done.text))
            return await self._stream(request, gen, started, pending, span, done)

    async def _embedded(
        self, request: TaskRequested, gen: GenerationRequest, started: float
    ) -> TaskCompleted:
        """An embeddings task: the vectors, whole (nothing to stream)."""
        with tracer.start_as_current_span("engine.embed") as span:
            span.set_attribute("dim.engine", self.engine.kind)
            span.set_attribute("gen_ai.request.model", gen.model)
            embedded = await self.engine.embed(gen)
            if any(len(v) > MAX_EMBEDDING_DIMENSIONS for v in embedded.vectors):
                raise EngineError(f"the engine made vectors over {MAX_EMBEDDING_DIMENSIONS} values")
            span.set_attribute("gen_ai.usage.input_tokens", embedded.prompt_tokens)
        took = round((time.monotonic() - started) * 1000, 3)
        return TaskCompleted(
            job_id=request.job_id,
            task_id=request.task.task_id,
            attempt=request.attempt,
            node_id=self.node_id,
            output="",
            finish_reason="stop",
            usage=Usage(prompt_tokens=embedded.prompt_tokens),
            ttft_ms=took,
            duration_ms=took,
            embeddings=tuple(vectors.encode(v) for v in embedded.vectors),
        )

    def _already_done(self, request: TaskRequested, started: float, done: Partial) -> TaskCompleted:
        task = request.task
        assert task.prompt is not None  # checked on delivery
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

    async def _stream(
        self,
        request: TaskRequested,
        gen: GenerationRequest,
        started: float,
        pending: PendingAcks,
        span: trace.Span,
        done: Partial,
    ) -> TaskCompleted:
        coalescer = Coalescer(
            self.settings.token_flush_ms, self.settings.token_flush_chars, offset=len(done.text)
        )
        subject = self.names.tokens(request.job_id, self.node_id)
        chunks = _Chunks(request, self.node_id, self.actor, subject, pending, coalescer)
        output: list[str] = [done.text]
        extras = _Extras()
        itl = self.metrics.itl.labels(model=request.task.model)
        ending = await self._relay(gen, chunks, output, extras, started, itl)
        return self._result(request, output, extras, ending, started, span, done)

    async def _relay(
        self,
        gen: GenerationRequest,
        chunks: _Chunks,
        output: list[str],
        extras: _Extras,
        started: float,
        itl: Histogram,
    ) -> _Ending:
        """Send the engine's output on as chunks, appending its text to `output`."""
        coalescer, send = chunks.coalescer, chunks.send
        ttft: float | None = None
        finish = None
        usage = None
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
                    if chunk.call is None:
                        output.append(chunk.text)
                extras.add(chunk)
                if chunk.call is not None:  # a tool call's arguments, as they are made
                    await chunks.send_call(chunk, now)
                    continue
                await chunks.end_call(now)
                if chunk.finish_reason is not None:
                    finish, usage = chunk.finish_reason, chunk.usage
                    # Always sent, even empty: it tells readers the stream is complete.
                    last_piece = coalescer.finish(
                        chunk.text, chunk.tokens, now, chunk.token_ids, chunk.logprobs
                    )
                    await send(last_piece, finish)
                    break
                piece = coalescer.add(
                    chunk.text, chunk.tokens, now, chunk.token_ids, chunk.logprobs
                )
                if piece is not None:
                    await send(piece)
                elif first is None and coalescer.first_waiting:
                    first = asyncio.create_task(chunks.send_first())
            if first is not None:
                await first  # its publish failing fails the attempt, as any chunk's would
        finally:
            if first is not None and not first.done():
                first.cancel()  # the attempt ended otherwise (timeout, engine error)
        return ttft, finish, usage

    def _result(
        self,
        request: TaskRequested,
        output: list[str],
        extras: _Extras,
        ending: _Ending,
        started: float,
        span: trace.Span,
        done: Partial,
    ) -> TaskCompleted:
        ttft, finish, usage = ending
        if finish is None or usage is None:
            raise EngineError("the engine ended the stream without a finish reason")
        if done.tokens:  # the whole answer's usage: what was resumed counts once, here
            usage = usage.model_copy(
                update={"completion_tokens": usage.completion_tokens + done.tokens}
            )
        self.tally.tokens_out += usage.completion_tokens
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [finish])
        return TaskCompleted(
            job_id=request.job_id,
            task_id=request.task.task_id,
            attempt=request.attempt,
            node_id=self.node_id,
            output="".join(output),
            finish_reason=finish,
            usage=usage,
            ttft_ms=round((ttft if ttft is not None else time.monotonic() - started) * 1000, 3),
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            tool_calls=extras.tool_calls,
            logprobs=tuple(extras.logprobs) if extras.logprobs is not None else None,
        )
