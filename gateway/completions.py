"""Completions through the mesh: submit a job, then answer whole or as a stream of chunks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from events.bus import Bus
from events.envelope import Envelope
from events.ids import new_id
from events.inference import Prompt, SamplingParams, TokenLogprob
from events.job_log import JobFollower
from events.jobs import (
    Choice,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobSubmitted,
    TaskCompleted,
)
from events.text import TextAssembler
from events.tools import CallPart, ToolCall
from events.work import TokensProduced
from gateway import jobs, sse
from gateway.answers import CallDelta
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from services.jobs.admission import INTERACTIVE_PRIORITY
from services.jobs.results import of_only_task
from services.metrics import observe_per_token

log = logging.getLogger(__name__)

_FAILURE_STATUS = {
    "model_not_served": 503,
    "no_capacity": 503,
    "task_failed": 502,
    "invalid_request": 400,
}


@dataclass(frozen=True, slots=True)
class Started:
    """A submitted job and the live feed of its events."""

    job_id: str
    created: int
    model: str
    follower: JobFollower | None  # the live feed (streams); whole answers wait on `Gateway.ends`
    t0: float  # monotonic time the request was submitted


async def start(
    gw: Gateway,
    principal: Principal,
    model: str,
    prompt: Prompt,
    params: SamplingParams,
    *,
    stream: bool,
    end_user: str | None = None,
) -> Started:
    """Listen for a new job id, then submit the job under it (so nothing is missed).

    A stream follows the job's live feed; a whole answer (`stream=False`) needs only the job's
    end, which the gateway's shared `JobEnds` delivers with no subscription of its own.
    """
    job_id = new_id()
    follower = None
    if stream:
        follower = await JobFollower(gw.bus, job_id, replay=False, believe=gw.believe).start()
    else:
        await gw.ends.expect(job_id, first_result=params.n == 1)
    try:
        await jobs.submit_job(
            gw,
            principal,
            JobSubmitted(
                job_id=job_id,
                model=model,
                prompt=prompt,
                params=params,
                max_attempts=gw.settings.max_attempts,
                end_user=end_user,
                priority=INTERACTIVE_PRIORITY,  # before batch lines (services/jobs/admission)
            ),
        )
    except BaseException:
        if follower is not None:
            await follower.close()
        await gw.ends.forget(job_id)
        raise
    return Started(job_id, int(time.time()), model, follower, time.monotonic())


def choice_index(task_id: str) -> int:
    """Which of a job's `n` choices a task produces (task ids end in ``-<i>``)."""
    return int(task_id.rsplit("-", 1)[1])


def choices_of(event: JobCompleted) -> tuple[Choice, ...]:
    """Every answer of a completed job (one, unless n > 1)."""
    return event.choices or (
        Choice(
            index=0,
            output=event.output,
            finish_reason=event.finish_reason,
            tool_calls=event.tool_calls,
            logprobs=event.logprobs,
        ),
    )


def _failure(event: JobFailed | JobCancelled) -> ApiError:
    if isinstance(event, JobCancelled):
        return ApiError(409, f"the job was cancelled: {event.reason}", code="cancelled")
    return ApiError(_FAILURE_STATUS.get(event.code, 500), event.reason, code=event.code)


def _count(gw: Gateway, started: Started, done: JobCompleted) -> None:
    m = gw.metrics
    m.prompt_tokens.labels(model=started.model).inc(done.usage.prompt_tokens)
    m.generation_tokens.labels(model=started.model).inc(done.usage.completion_tokens)


async def answer(gw: Gateway, started: Started) -> JobCompleted:
    """Wait for the job's end; its result, or the failure as an `ApiError`."""
    in_flight = gw.metrics.in_flight.labels(model=started.model)
    in_flight.inc()
    try:
        async with asyncio.timeout(gw.settings.request_timeout_s):
            event = (await gw.ends.wait(started.job_id)).data
            if isinstance(event, TaskCompleted):  # the only task's result: the job's
                event = of_only_task(started.job_id, event)
            if isinstance(event, JobCompleted):
                _count(gw, started, event)
                return event
            if isinstance(event, (JobFailed, JobCancelled)):
                raise _failure(event)
    except TimeoutError:
        await cancel(gw, started.job_id, "the request timed out")
        raise ApiError(
            504, f"no answer within {gw.settings.request_timeout_s:g}s", code="timeout"
        ) from None
    finally:
        in_flight.dec()
        await gw.ends.forget(started.job_id)
    raise ApiError(500, f"the job ended with an unexpected {event.type}", code="incomplete")


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of one choice, with its tokens' logprobs, and new arguments of its tool calls;
    with `finish_reason`, the choice's end (with whatever of its calls was not streamed)."""

    index: int
    text: str | None
    first: bool  # the choice's first delta
    offset: int  # where `text` starts in the choice's answer
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None
    calls: tuple[CallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class Ended:
    """The job's end: its result, or why there is none."""

    completed: JobCompleted | None
    error: ApiError | None = None


async def deltas(gw: Gateway, started: Started) -> AsyncGenerator[Delta | Ended, None]:
    """The job's answer as it arrives, whatever the wire format; a consumer that stops before
    `Ended` (the client went away) cancels the job when it closes this generator."""
    follower = started.follower
    assert follower is not None, "start(stream=True) opens the live feed"
    texts: dict[int, TextAssembler] = {}
    args: dict[tuple[int, int], TextAssembler] = {}  # (choice, call) -> its arguments so far
    streamed_lps: dict[int, int] = {}  # logprobs sent per choice
    done = False
    m = gw.metrics
    in_flight = m.in_flight.labels(model=started.model)
    itl = m.itl.labels(model=started.model)
    in_flight.inc()
    last: float | None = None
    try:
        async with asyncio.timeout(gw.settings.request_timeout_s):
            async for envelope in follower:
                event = envelope.data
                if isinstance(event, TokensProduced) and event.call is not None:
                    index, part = choice_index(event.task_id), event.call
                    first = index not in texts
                    texts.setdefault(index, TextAssembler())
                    called = (index, part.index) not in args
                    new = args.setdefault((index, part.index), TextAssembler()).add(
                        event.offset, event.text
                    )
                    if new or called:
                        calls = (CallDelta(part, new, called),)
                        yield Delta(index, None, first, len(texts[index].text), calls=calls)
                elif isinstance(event, TokensProduced):
                    index = choice_index(event.task_id)
                    first = index not in texts
                    text = texts.setdefault(index, TextAssembler())
                    at = len(text.text)
                    new = text.add(event.offset, event.text)
                    # a chunk's logprobs go with it when it is taken whole, in order
                    lps = event.logprobs if new == event.text and at == event.offset else None
                    if new:
                        now = time.monotonic()
                        if last is None:
                            m.ttft.labels(model=started.model).observe(now - started.t0)
                        elif event.tokens:
                            observe_per_token(itl, now - last, event.tokens)
                        last = now
                    if new or first:
                        if lps:
                            streamed_lps[index] = streamed_lps.get(index, 0) + len(lps)
                        yield Delta(index, new, first, at, lps)
                elif isinstance(event, JobCompleted):
                    done = True
                    _count(gw, started, event)
                    split = _diverged(choices_of(event), texts, args)
                    if split is not None:
                        yield Ended(None, split)
                        return
                    for choice in choices_of(event):
                        seen = texts.get(choice.index, TextAssembler()).text
                        rest = choice.output[len(seen) :] if choice.output.startswith(seen) else ""
                        lps = choice.logprobs
                        yield Delta(
                            choice.index,
                            rest or None,
                            choice.index not in texts,
                            len(seen),
                            lps[streamed_lps.get(choice.index, 0) :] if lps else None,
                            choice.finish_reason,
                            _unstreamed(choice.index, choice.tool_calls, args),
                        )
                    yield Ended(event)
                    return
                elif isinstance(event, (JobFailed, JobCancelled)):
                    done = True
                    yield Ended(None, _failure(event))
                    return
    except TimeoutError:
        yield Ended(None, ApiError(504, "no answer in time", code="timeout"))
    finally:
        in_flight.dec()
        await follower.close()
        if not done:  # the client went away (or the request timed out) mid-answer
            with contextlib.suppress(Exception):
                await cancel(gw, started.job_id, "the client disconnected")


def _diverged(
    choices: tuple[Choice, ...],
    texts: dict[int, TextAssembler],
    args: dict[tuple[int, int], TextAssembler],
) -> ApiError | None:
    """An error when what was streamed is not a beginning of the answer: an attempt that
    could not continue the last one's text (a JSON answer, one with logprobs) regenerated it
    differently after part of it had gone out. Said, not patched over: the client has text
    that is not the answer's."""
    for choice in choices:
        seen = texts.get(choice.index)
        calls = [(k, c.arguments) for k, c in enumerate(choice.tool_calls)]
        parts = [(seen, choice.output)] + [(args.get((choice.index, k)), a) for k, a in calls]
        if any(s is not None and not whole.startswith(s.text) for s, whole in parts):
            return ApiError(
                502,
                "the answer was regenerated on another worker after part of it was streamed, "
                "and differs from what you received: retry the request",
                code="stream_diverged",
            )
    return None


def _unstreamed(
    index: int, calls: tuple[ToolCall, ...], args: dict[tuple[int, int], TextAssembler]
) -> tuple[CallDelta, ...]:
    """What of a choice's tool calls its stream has not carried yet."""
    out = []
    for k, call in enumerate(calls):
        seen = args.get((index, k))
        sent = seen.text if seen is not None else ""
        rest = call.arguments[len(sent) :] if call.arguments.startswith(sent) else ""
        if seen is None or rest:
            out.append(CallDelta(CallPart(index=k, id=call.id, name=call.name), rest, seen is None))
    return tuple(out)


async def stream(
    gw: Gateway, started: Started, *, kind: sse.Kind, id: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """The job as OpenAI SSE chunks; a client that goes away cancels the job."""
    out = sse.ChunkWriter(kind, id, started.created, started.model)
    async with contextlib.aclosing(deltas(gw, started)) as feed:
        async for d in feed:
            if isinstance(d, Ended):
                if d.error is not None:
                    yield sse.event(d.error.body())
                elif include_usage and d.completed is not None:
                    yield out.usage(d.completed.usage)
                yield sse.DONE
                return
            yield out.text(
                d.text,
                finish_reason=d.finish_reason,
                first=d.first,
                index=d.index,
                calls=d.calls,
                logprobs=d.logprobs,
                offset=d.offset,
            )


async def cancel(gw: Gateway, job_id: str, reason: str) -> None:
    """Cancel a job this gateway runs."""
    await cancel_job(gw.bus, job_id, reason)


async def cancel_job(bus: Bus, job_id: str, reason: str, *, actor: str = "gateway") -> None:
    """Record that the job is cancelled: the orchestrator ends it, its worker aborts it."""
    event = JobCancelled(job_id=job_id, reason=reason)
    await bus.publish(bus.names.job(job_id, event.type), Envelope(event, actor=actor))
