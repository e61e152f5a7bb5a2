"""The jobs API's logic: submit with idempotency, read views and history, within a tenant."""

from __future__ import annotations

import hashlib

from pydantic import ValidationError

from events.envelope import Envelope
from events.errors import WrongLastSequence
from events.ids import new_id
from events.job_log import append_submitted, history
from events.jobs import JobSubmitted
from events.subjects import encode_token, is_id
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from gateway.schemas.jobs import JobRequest
from projections.job_state import JobState, evolve
from projections.job_status import fold
from projections.job_views import newest_views, read_view
from services.jobs.admission import overloaded, tenant_full
from services.jobs.bounds import TooLarge, check_bounds, reserved_tokens, token_asks
from services.jobs.patterns import models_of
from services.jobs.validation import validate
from services.jobs.work import dispatches_in, task_request


def _idempotency_slot(principal: Principal, key: str) -> str:
    raw = f"{principal.tenant}\x00{principal.principal_id}\x00{key}".encode()
    return hashlib.sha256(raw).hexdigest()


async def submit_job(
    gw: Gateway,
    principal: Principal,
    job: JobSubmitted,
    *,
    idempotency_key: str | None = None,
) -> tuple[str, bool]:
    """Check quota, key budget and models, then submit `job` (its owner, tenant and key are
    the caller's).

    Returns the job id and whether the job is new (False: an earlier request with the same
    Idempotency-Key made it, and that job's id is returned).
    """
    need = reserved_tokens(job)
    gw.quotas.check(principal, need)
    require_tenant_room(gw, principal.tenant)
    job = job.model_copy(
        update={
            "owner": principal.principal_id,
            "tenant": principal.tenant,
            "key_id": principal.key_id,
            "reserved": gw.quotas.reserves(principal),
        }
    )
    try:
        validate(job)
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_request", param=job.pattern) from None
    try:
        check_bounds(job, max_prompt_bytes=gw.settings.max_prompt_bytes)
    except TooLarge as exc:
        raise ApiError(400, str(exc), code="request_too_large", param=exc.param) from None
    for model in models_of(job):
        require_served(gw, model)
        require_room(gw, model)
    for model, max_tokens in token_asks(job):
        require_fits(gw, model, max_tokens)
    job_id = job.job_id
    if idempotency_key is not None:
        kv = await gw.bus.bucket("idempotency")
        slot = _idempotency_slot(principal, idempotency_key)
        try:
            await kv.create(slot, job_id.encode())
        except WrongLastSequence:
            entry = await kv.get(slot)
            job_id = entry.value.decode() if entry else job_id  # None: the slot expired since
            if await history(gw.bus, job_id):
                return job_id, False
            # The earlier request stopped between reserving the id and submitting: finish it.
            job = job.model_copy(update={"job_id": job_id})
    if gw.settings.plan_at_door:
        job = gw.preplanner.plan(job)
    try:
        envelope, seq = await append_submitted(gw.bus, job)
    except WrongLastSequence:
        return job_id, False  # a concurrent retry with the same key submitted it first
    await gw.quotas.reserve(job_id, principal, need)
    if job.plan is not None:
        await send_planned_work(gw, envelope, seq)
    return job_id, True


async def send_planned_work(gw: Gateway, envelope: Envelope, seq: int) -> None:
    """Send the work of a plan made here, now that it is stored: no hop through an orchestrator
    before a worker can start. Orchestrators send the same messages (same ids: JetStream keeps
    one) for tasks that have not started a moment later, so this copy may go without an ack: a
    gateway that dies here, or a copy lost on the way, delays the job and loses nothing."""
    state = evolve(None, envelope, seq)
    assert state is not None
    for dispatch, msg_id in dispatches_in(envelope):
        request = task_request(state, dispatch)
        if request is not None:
            await gw.bus.send(dispatch.subject, Envelope(request, actor="gateway", id=msg_id))


async def submit_request(
    gw: Gateway, principal: Principal, request: JobRequest, *, idempotency_key: str | None = None
) -> tuple[str, bool]:
    """Submit a jobs-API request (REST or WebSocket); as `submit_job`."""
    try:
        job = request.to_event(new_id(), max_attempts_default=gw.settings.max_attempts)
    except (ValidationError, ValueError) as exc:
        raise ApiError(400, str(exc), code="invalid_request", param=request.pattern) from None
    return await submit_job(gw, principal, job, idempotency_key=idempotency_key)


def require_served(gw: Gateway, model: str) -> None:
    """404 (OpenAI's `model_not_found`) unless a live node serves `model`."""
    if not gw.nodes.serving(model):
        live = sorted(gw.nodes.live_models())
        raise ApiError(
            404,
            f"the model '{model}' does not exist or no live node serves it; "
            f"available: {', '.join(live) if live else 'none'}",
            code="model_not_found",
            param="model",
        )


def require_tenant_room(gw: Gateway, tenant: str) -> None:
    """429 (`tenant_queue_full`) when more of the tenant's jobs wait for capacity than
    `DIM_MAX_HELD_PER_TENANT` (the orchestrators publish the number)."""
    limit = gw.settings.max_held_per_tenant
    record = gw.queues.items.get(encode_token(tenant))
    if record is not None and tenant_full(record.held, limit):
        raise ApiError(
            429,
            f"tenant '{tenant}' has {record.held} jobs waiting for capacity (the bound is "
            f"{limit}); retry when some have started",
            code="tenant_queue_full",
            headers={"Retry-After": "1"},
        )


def require_fits(gw: Gateway, model: str, max_tokens: int) -> None:
    """400 when `max_tokens` cannot fit the context of any live node serving `model` (as
    their records say; a node that does not say is not held against the request)."""
    contexts = [n.max_context for n in gw.nodes.serving(model) if n.max_context]
    if contexts and max_tokens >= max(contexts):
        raise ApiError(
            400,
            f"max_tokens {max_tokens:,} cannot fit the model '{model}': its context is "
            f"{max(contexts):,} tokens (the largest of its live nodes), prompt included; "
            "ask for fewer",
            code="context_length_exceeded",
            param="max_tokens",
        )


def require_room(gw: Gateway, model: str) -> None:
    """503 (`overloaded`) when more tasks wait for `model` than `DIM_MAX_QUEUED_PER_MODEL`:
    a clear answer now rather than a queue without end (the workers report the backlog of the
    model's shared subject with every heartbeat)."""
    limit = gw.settings.max_queued_per_model
    if not limit:
        return
    waiting = gw.nodes.waiting(model)
    if overloaded(waiting, limit):
        raise ApiError(
            503,
            f"the model '{model}' is overloaded: {waiting} tasks are waiting for a worker "
            f"(the bound is {limit}); retry shortly",
            code="overloaded",
            param="model",
            headers={"Retry-After": "1"},
        )


def visible(view: JobState, principal: Principal) -> bool:
    """Whether the caller may see the job: its owner, or an admin of its tenant."""
    return principal.may_see(view.owner, view.tenant)


async def load_view(gw: Gateway, principal: Principal, job_id: str) -> JobState:
    """The job's view, or 404 — also for a job of another tenant or owner (no existence leak)."""
    if not is_id(job_id):  # no job has such an id (and NATS takes no such key)
        raise ApiError(404, f"no job {job_id!r}", code="job_not_found", param="job_id")
    try:
        view = await read_view(gw.bus, job_id)
    except ValueError:  # an unreadable stored view: the log below is the truth
        view = None
    if view is None or view.trimmed:
        # Not projected yet (just submitted), or stored without its texts (too large to store
        # whole): fold the log directly, believing what the projector believes.
        view = fold(None, await history(gw.bus, job_id), gw.believe) or view
    if view is None or not visible(view, principal):
        raise ApiError(404, f"no job {job_id!r}", code="job_not_found", param="job_id")
    return view


async def list_views(
    gw: Gateway, principal: Principal, *, status: str | None, limit: int, before: str | None
) -> list[JobState]:
    """The caller's jobs (an admin's: the tenant's), newest first, after the cursor."""

    def keep(view: JobState) -> bool:
        return visible(view, principal) and (status is None or view.status == status)

    owner = None if principal.admin else principal.principal_id  # an admin sees the tenant's
    return await newest_views(
        gw.bus, keep, limit=limit, before=before, tenant=principal.tenant, owner=owner
    )
