"""Completions through the mesh: submit a job, then answer whole or as a stream of chunks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from events.bus import Bus
from events.envelope import Envelope
from events.ids import new_id
from events.inference import Prompt, SamplingParams
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
from events.work import TokensProduced
from gateway import jobs, sse
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from services.jobs.admission import INTERACTIVE_PRIORITY
from services.jobs.results import of_only_task
from services.metrics import observe_per_token

log = logging.getLogger(__name__)

_FAILURE_STATUS = {"model_not_served": 503, "task_failed": 502}


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
        Choice(index=0, output=event.output, finish_reason=event.finish_reason),
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


async def stream(
    gw: Gateway, started: Started, *, kind: sse.Kind, id: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """The job as OpenAI SSE chunks; a client that goes away cancels the job."""
    follower = started.follower
    assert follower is not None, "start(stream=True) opens the live feed"
    texts: dict[int, TextAssembler] = {}
    done = False
    out = sse.ChunkWriter(kind, id, started.created, started.model)
    m = gw.metrics
    in_flight = m.in_flight.labels(model=started.model)
    itl = m.itl.labels(model=started.model)
    in_flight.inc()
    last: float | None = None
    try:
        async with asyncio.timeout(gw.settings.request_timeout_s):
            async for envelope in follower:
                event = envelope.data
                if isinstance(event, TokensProduced):
                    index = choice_index(event.task_id)
                    first = index not in texts
                    text = texts.setdefault(index, TextAssembler())
                    new = text.add(event.offset, event.text)
                    if new:
                        now = time.monotonic()
                        if last is None:
                            m.ttft.labels(model=started.model).observe(now - started.t0)
                        elif event.tokens:
                            observe_per_token(itl, now - last, event.tokens)
                        last = now
                    if new or first:
                        yield out.text(new, first=first, index=index)
                elif isinstance(event, JobCompleted):
                    done = True
                    _count(gw, started, event)
                    for choice in choices_of(event):
                        text = texts.get(choice.index, TextAssembler())
                        seen = text.text
                        rest = choice.output[len(seen) :] if choice.output.startswith(seen) else ""
                        first = choice.index not in texts
                        yield out.text(
                            rest or None,
                            finish_reason=choice.finish_reason,
                            first=first,
                            index=choice.index,
                        )
                    if include_usage:
                        yield out.usage(event.usage)
                    yield sse.DONE
                    return
                elif isinstance(event, (JobFailed, JobCancelled)):
                    done = True
                    yield sse.event(_failure(event).body())
                    yield sse.DONE
                    return
    except TimeoutError:
        yield sse.event(ApiError(504, "no answer in time", code="timeout").body())
        yield sse.DONE
    finally:
        in_flight.dec()
        await follower.close()
        if not done:  # the client went away (or the request timed out) mid-answer
            with contextlib.suppress(Exception):
                await cancel(gw, started.job_id, "the client disconnected")


async def cancel(gw: Gateway, job_id: str, reason: str) -> None:
    """Cancel a job this gateway runs."""
    await cancel_job(gw.bus, job_id, reason)


async def cancel_job(bus: Bus, job_id: str, reason: str, *, actor: str = "gateway") -> None:
    """Record that the job is cancelled: the orchestrator ends it, its worker aborts it."""
    event = JobCancelled(job_id=job_id, reason=reason)
    await bus.publish(bus.names.job(job_id, event.type), Envelope(event, actor=actor))
