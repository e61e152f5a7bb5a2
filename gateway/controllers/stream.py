"""WebSocket streaming of a job: text and status frames, resumable after a dropped connection.

Frames (JSON):
- ``{"type": "text", "seq": n, "task_id": t, "offset": o, "text": "..."}`` — new output text of
  task `t` (a job of several tasks streams each task's text; `offset` is within that task's
  output). `seq` counts text frames from 1 in an order fixed by the TOKENS stream, so it is the
  same on every connection.
- ``{"type": "event", "event_seq": s, "event": "task.started", "status": "running", "data": {...}}``
  — a step of the job; `event_seq` is its sequence in the JOBS stream.
- ``{"type": "end", "status": ..., "output": ..., "usage": {...}, "parts": [...], "consensus": ...,
  "errors": [...]}`` (or ``"error"`` for a job that failed or was cancelled), then the socket
  closes normally.
- ``{"type": "error", "error": {...}}`` (OpenAI-shaped), then the socket closes.

A client that reconnects with ``?after=<last seq>&after_event=<last event_seq>`` gets exactly what
it missed: no gaps, no repeats. Closing the socket does not cancel the job (reconnecting is the
point); send ``{"type": "cancel"}`` to cancel it.

The caller authenticates with the `Authorization` header, or, from a browser, with the
subprotocols ``dim.bearer, <key>`` or ``dim.ticket, <ticket>`` (`gateway/socket_auth.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath
from pydantic import ValidationError

from events.envelope import Envelope, Event
from events.job_log import JobFollower
from events.jobs import JobCancelled, JobCompleted, JobFailed
from events.text import TextAssembler
from events.work import TokensProduced
from gateway import jobs
from gateway.auth import gateway_of
from gateway.completions import cancel_job
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from gateway.schemas.jobs import JobRequest
from gateway.socket_auth import offer_of, socket_principal
from projections.job_state import evolve
from services.jobs.validation import first_problem

_CLOSE_FOR = {401: 4401, 403: 4403, 404: 4404, 408: 4408, 413: 4413, 429: 4429}


async def _fail(socket: WebSocket[Any, Any, Any], error: ApiError) -> None:
    await socket.send_json({"type": "error", "error": error.body()["error"]})
    await socket.close(code=_CLOSE_FOR.get(error.status, 4400 if error.status < 500 else 1011))


def _cursor(socket: WebSocket[Any, Any, Any], name: str) -> int:
    raw = socket.query_params.get(name, "0")
    if not raw.isdigit():
        raise ApiError(
            400, f"'{name}' must be a non-negative integer", code="invalid_request", param=name
        )
    return int(raw)


# Left out of event frames: what can be large (a prompt, a collaborative job's inputs, outputs,
# the plan's tasks); the end frame carries the result, `GET /v1/jobs/{id}` the rest.
_NOT_IN_FRAMES = frozenset({"prompt", "params", "tasks", "output", "parts", "collaborative"})


def _event_frame(envelope: Envelope, event_seq: int, status: str | None) -> dict[str, Any]:
    event = envelope.data
    return {
        "type": "event",
        "event_seq": event_seq,
        "event": event.type,
        "status": status,
        "data": event.model_dump(mode="json", exclude=set(_NOT_IN_FRAMES)),
    }


def _end_frame(event: Event, status: str | None) -> dict[str, Any]:
    end: dict[str, Any] = {"type": "end", "status": status}
    if not isinstance(event, JobCompleted):
        return end | {"error": getattr(event, "reason", None)}
    return end | {
        "output": event.output,
        "finish_reason": event.finish_reason,
        "usage": event.usage.model_dump() | {"total_tokens": event.usage.total_tokens},
        "parts": [p.model_dump(mode="json") for p in event.parts],
        "consensus": event.consensus.model_dump(mode="json") if event.consensus else None,
        "errors": list(event.errors),
    }


async def _listen_for_cancel(
    gw: Gateway, socket: WebSocket[Any, Any, Any], principal: Principal, job_id: str
) -> None:
    while True:
        message = await socket.receive_json()
        if isinstance(message, dict) and message.get("type") == "cancel":
            why = f"cancelled by {principal.principal_id}"
            await cancel_job(gw.bus, job_id, why, actor=principal.principal_id)


async def _pump(
    gw: Gateway,
    socket: WebSocket[Any, Any, Any],
    principal: Principal,
    job_id: str,
    after: int,
    after_event: int,
) -> None:
    """Send the job's frames past the cursors; listen for a cancel while doing so."""
    listener = asyncio.create_task(_listen_for_cancel(gw, socket, principal, job_id))
    texts: dict[str, TextAssembler] = {}
    seq = 0
    state = None
    try:
        async with JobFollower(gw.bus, job_id, replay=True, believe=gw.believe) as follower:
            async for envelope in follower:
                event = envelope.data
                if isinstance(event, TokensProduced):
                    if event.call is not None:
                        continue  # a tool call's arguments: the job's end has the calls
                    text = texts.setdefault(event.task_id, TextAssembler())
                    offset = len(text.text)
                    new = text.add(event.offset, event.text)
                    if new:
                        seq += 1
                        if seq > after:
                            frame = {"type": "text", "seq": seq, "task_id": event.task_id}
                            await socket.send_json(frame | {"offset": offset, "text": new})
                    continue
                event_seq = follower.seqs[envelope.id]
                state = evolve(state, envelope, event_seq)
                status = state.status if state else None
                if event_seq > after_event:
                    await socket.send_json(_event_frame(envelope, event_seq, status))
                if isinstance(event, (JobCompleted, JobFailed, JobCancelled)):
                    await socket.send_json(_end_frame(event, status))
                    await socket.close(code=1000)
                    return
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener


@contextlib.asynccontextmanager
async def _admitted(gw: Gateway, socket: WebSocket[Any, Any, Any]) -> AsyncIterator[Principal]:
    """The socket's caller, authenticated (`gateway/socket_auth.py`), counted against its rate
    limit (a socket is a request, as on HTTP) and its tenant's sockets (`DIM_WS_PER_TENANT` at
    most, per gateway)."""
    principal = await socket_principal(gw, socket, offer_of(socket))
    await gw.limiter.hit(principal)
    tenant, cap = principal.tenant, gw.settings.ws_per_tenant
    if gw.sockets[tenant] >= cap:
        raise ApiError(
            429,
            f"your tenant has {cap} WebSockets open on this gateway, the most it may; close "
            "one first",
            code="too_many_connections",
        )
    gw.sockets[tenant] += 1
    try:
        yield principal
    finally:
        gw.sockets[tenant] -= 1
        if not gw.sockets[tenant]:
            del gw.sockets[tenant]


async def _first_message(gw: Gateway, socket: WebSocket[Any, Any, Any]) -> str:
    """The job request: within `DIM_WS_FIRST_MESSAGE_S`, at most `DIM_MAX_BODY_BYTES`."""
    settings = gw.settings
    try:
        raw = await asyncio.wait_for(socket.receive_text(), settings.ws_first_message_s)
    except TimeoutError:
        raise ApiError(
            408,
            f"no job request within {settings.ws_first_message_s:g}s of connecting",
            code="timeout",
        ) from None
    if len(raw.encode()) > settings.max_body_bytes:
        raise ApiError(
            413,
            f"the job request is over {settings.max_body_bytes:,} bytes (DIM_MAX_BODY_BYTES)",
            code="request_too_large",
        )
    return raw


@websocket("/v1/jobs/{job_id:str}/stream", name="job-stream")
async def job_stream(socket: WebSocket[Any, Any, Any], job_id: FromPath[str]) -> None:
    """Stream one job's text and steps (resumable with ``after`` / ``after_event``)."""
    # a browser drops a socket whose answer names none of the protocols it offered
    await socket.accept(subprotocols=offer_of(socket).protocol)
    gw = gateway_of(socket)  # type: ignore[arg-type]
    try:
        async with _admitted(gw, socket) as principal:
            await jobs.load_view(gw, principal, job_id)
            after, after_event = _cursor(socket, "after"), _cursor(socket, "after_event")
            await _pump(gw, socket, principal, job_id, after, after_event)
    except ApiError as error:
        await _fail(socket, error)
    except WebSocketDisconnect:
        return


@websocket("/v1/jobs/stream", name="submit-and-stream")
async def submit_and_stream(socket: WebSocket[Any, Any, Any]) -> None:
    """Send a job request as the first message; get ``{"type": "accepted", "job_id"}``, then its frames."""
    # a browser drops a socket whose answer names none of the protocols it offered
    await socket.accept(subprotocols=offer_of(socket).protocol)
    gw = gateway_of(socket)  # type: ignore[arg-type]
    try:
        async with _admitted(gw, socket) as principal:
            raw = await _first_message(gw, socket)
            try:
                request = JobRequest.model_validate_json(raw)
            except ValidationError as exc:
                why, param = first_problem(exc)
                raise ApiError(
                    400, f"invalid job request: {why}", code="invalid_request", param=param
                ) from None
            job_id, _ = await jobs.submit_request(gw, principal, request)
            await socket.send_json({"type": "accepted", "job_id": job_id})
            await _pump(gw, socket, principal, job_id, 0, 0)
    except ApiError as error:
        await _fail(socket, error)
    except (WebSocketDisconnect, json.JSONDecodeError):
        return
