"""The Batch API's logic: create a batch from an input file (every line checked first; a refused
file makes a `failed` batch that lists why), read, list and cancel batches within a tenant."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from events.batches import (
    ENDPOINTS,
    BatchCancelling,
    BatchCreated,
    BatchFailed,
    BatchLine,
    dump_lines,
    new_batch_id,
)
from events.envelope import Envelope, Event
from events.errors import WrongLastSequence
from events.subjects import is_id
from gateway import files
from gateway.batch_lines import admit_lines, job_of, parse_input
from gateway.capable import capable
from gateway.errors import ApiError
from gateway.jobs import require_fits, require_served
from gateway.principal import Principal
from gateway.runtime import Gateway
from gateway.schemas.batches import MAX_METADATA, BatchRequest
from projections.batch_status import BatchView, apply_batch_event
from projections.batch_views import newest_batches, read_batch, read_lifecycle, with_progress
from services.jobs.bounds import reserved_tokens

COMPLETION_WINDOW = "24h"
_CANCEL_TRIES = 5


def _check_request(request: BatchRequest) -> None:
    """400 naming the field for an endpoint, window or metadata dim does not take."""
    if request.endpoint not in ENDPOINTS:
        raise ApiError(
            400,
            f"endpoint {request.endpoint!r} is not served by batches: use {' or '.join(ENDPOINTS)}",
            code="invalid_request",
            param="endpoint",
        )
    if request.completion_window != COMPLETION_WINDOW:
        raise ApiError(
            400,
            f"completion_window {request.completion_window!r} is not offered: use "
            f"{COMPLETION_WINDOW!r}",
            code="invalid_request",
            param="completion_window",
        )
    meta = request.metadata or {}
    if len(meta) > MAX_METADATA or any(len(k) > 64 or len(v) > 512 for k, v in meta.items()):
        raise ApiError(
            400,
            f"metadata holds at most {MAX_METADATA} pairs, keys up to 64 characters and values "
            "up to 512",
            code="invalid_request",
            param="metadata",
        )


async def create(gw: Gateway, principal: Principal, request: BatchRequest) -> BatchView:
    """Check the request and every line of its input file; record the batch (created, or
    failed with the lines' errors). Its view as recorded."""
    _check_request(request)
    gw.quotas.check(principal)  # a tenant out of tokens for today starts no batch
    try:
        record, raw = await files.content(gw, principal, request.input_file_id)
    except ApiError as exc:
        exc.param = "input_file_id"
        raise
    if record.purpose != "batch":
        raise ApiError(
            400,
            f"file {record.id!r} has purpose {record.purpose!r}; a batch reads a 'batch' file",
            code="invalid_request",
            param="input_file_id",
        )

    def admit(line: BatchLine) -> None:
        require_served(gw, line.model)
        require_fits(gw, line.model, line.params.max_tokens)
        capable(
            gw, principal.tenant, line.model, line.prompt, line.params
        )  # a field no node can honour

    settings = gw.settings
    parsed = await asyncio.to_thread(  # a large file takes seconds: not on the event loop
        parse_input,
        raw,
        request.endpoint,
        default_max_tokens=settings.default_max_tokens,
        max_prompt_bytes=settings.max_prompt_bytes,
    )
    admit_lines(parsed, admit)  # here: the live node view is this thread's
    batch_id = new_batch_id()
    # the whole batch at its worst must fit the tenant's quota and the key's budget left today
    # (lines do not hold reservations while they wait; their usage counts against both)
    gw.quotas.check(principal, sum(reserved_tokens(job_of(line)) for line in parsed.lines))
    common = {
        "batch_id": batch_id,
        "tenant": principal.tenant,
        "owner": principal.principal_id,
        "key_id": principal.key_id,
        "input_file_id": record.id,
        "endpoint": request.endpoint,
        "completion_window": request.completion_window,
        "metadata": request.metadata,
    }
    event: Event
    if parsed.errors:
        event = BatchFailed(**common, errors=tuple(parsed.errors), more_errors=parsed.more_errors)
    else:
        requests = f"{batch_id}.requests"
        await gw.files.put_object(requests, dump_lines(parsed.lines))
        expires_at = datetime.now(UTC) + timedelta(hours=24)
        event = BatchCreated(
            **common, total=len(parsed.lines), requests=requests, expires_at=expires_at
        )
    return await _append(gw, principal, batch_id, event, None)


async def _append(
    gw: Gateway, principal: Principal, batch_id: str, event: Event, before: BatchView | None
) -> BatchView:
    """Append a batch event right after the last one `before` folded (None: the batch's first
    event); `WrongLastSequence` if another came in between. Its id is the batch's and the
    event's, so a retry is stored once. The view folded with it."""
    names = gw.bus.names
    envelope = Envelope(event, actor=principal.principal_id, id=f"{batch_id}.{event.type}")
    ack = await gw.bus.publish(
        names.batch(batch_id, event.type),
        envelope,
        expected_last_seq=before.batch_seq if before else 0,
        expected_last_subject=names.batch_all(batch_id),
    )
    view = apply_batch_event(before, envelope, ack.seq)
    assert view is not None
    return view


async def load(gw: Gateway, principal: Principal, batch_id: str) -> BatchView:
    """The caller's batch (its owner's, or any of its tenant's for an admin); 404 otherwise."""
    view = await read_batch(gw.bus, batch_id) if is_id(batch_id) else None
    if view is None or view.tenant is None or not principal.may_see(view.owner, view.tenant):
        raise ApiError(404, f"no batch {batch_id!r}", code="batch_not_found", param="batch_id")
    return view


async def cancel(gw: Gateway, principal: Principal, batch_id: str) -> BatchView:
    """Ask for the batch to be cancelled: no more of its lines start, those running are
    cancelled, and the lines that ended are kept in its files."""
    view = await load(gw, principal, batch_id)
    for _ in range(_CANCEL_TRIES):
        # decided on the batch's own events, up to the last stored (the view may lag them)
        lifecycle = await read_lifecycle(gw.bus, batch_id)
        assert lifecycle is not None  # `load` found it
        lifecycle = with_progress(lifecycle, view)
        if lifecycle.status == "cancelling":
            return lifecycle
        if lifecycle.terminal:
            raise ApiError(
                409,
                f"batch {batch_id} already ended ({lifecycle.status})",
                code="batch_ended",
                param="batch_id",
            )
        event = BatchCancelling(batch_id=batch_id, by=principal.principal_id)
        try:
            return await _append(gw, principal, batch_id, event, lifecycle)
        except WrongLastSequence:
            continue  # the runner appended meanwhile (started, or its end): look again
    raise ApiError(
        409, f"batch {batch_id} keeps changing; try again", code="conflict", param="batch_id"
    )


async def listing(
    gw: Gateway, principal: Principal, *, after: str | None, limit: int
) -> tuple[list[BatchView], bool]:
    """A page of the caller's batches (an admin's: the tenant's), newest first, after the
    batch `after`; and whether more follow."""
    return await newest_batches(
        gw.bus,
        lambda v: principal.may_see(v.owner, v.tenant or ""),
        tenant=principal.tenant,
        owner=None if principal.admin else principal.principal_id,
        limit=limit,
        after=after,
    )
