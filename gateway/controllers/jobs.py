"""The jobs API: submit, read, list, history, cancel."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from events.job_log import history
from gateway import jobs
from gateway.auth import GatewayDep, PrincipalDep
from gateway.completions import cancel_job
from gateway.errors import ApiError
from gateway.schemas.jobs import EventOut, JobAccepted, JobOut, JobPage, JobRequest


class JobsController(Controller):
    """`/v1/jobs`."""

    path = "/v1/jobs"
    tags = ["jobs"]

    @post(operation_id="submitJob", summary="Submit a job (202 with its id)", status_code=202)
    async def submit(
        self,
        data: JSONBody[JobRequest],
        gateway: GatewayDep,
        principal: PrincipalDep,
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", max_length=255)
        ] = None,
    ) -> Response[JobAccepted]:
        """Queue a job; the same Idempotency-Key (per caller, within a day) returns the same job."""
        job_id, created = await jobs.submit_request(
            gateway, principal, data, idempotency_key=idempotency_key
        )
        body = JobAccepted(job_id=job_id, status="queued", created=created)
        return Response(body, status_code=202, headers={"location": f"/v1/jobs/{job_id}"})

    @get(operation_id="listJobs", summary="Your jobs (an admin: the tenant's), newest first")
    async def list_jobs(
        self,
        gateway: GatewayDep,
        principal: PrincipalDep,
        status: Annotated[
            str | None,
            QueryParameter(
                name="status", description="queued, running, completed, failed or cancelled"
            ),
        ] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=200)] = 20,
        before: Annotated[
            str | None, QueryParameter(name="before", description="the `next` of the previous page")
        ] = None,
    ) -> JobPage:
        """A page of jobs."""
        views = await jobs.list_views(gateway, principal, status=status, limit=limit, before=before)
        return JobPage(
            data=[JobOut.of(v) for v in views],
            next=views[-1].job_id if len(views) == limit else None,
        )

    @get("/{job_id:str}", operation_id="getJob", summary="A job's status, result and usage")
    async def get_job(
        self, job_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> JobOut:
        """The job-status view."""
        return JobOut.of(await jobs.load_view(gateway, principal, job_id))

    @get(
        "/{job_id:str}/events",
        operation_id="getJobEvents",
        summary="A job's event history from the log",
    )
    async def events(
        self, job_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> list[EventOut]:
        """Every stored event of the job, oldest first."""
        await jobs.load_view(gateway, principal, job_id)
        return [
            EventOut(
                seq=seq,
                id=e.id,
                type=e.type,
                at=e.at,
                actor=e.actor,
                data=e.data.model_dump(mode="json"),
            )
            for seq, e in await history(gateway.bus, job_id)
        ]

    @delete("/{job_id:str}", operation_id="cancelJob", summary="Cancel a job", status_code=202)
    async def cancel(
        self, job_id: FromPath[str], gateway: GatewayDep, principal: PrincipalDep
    ) -> JobAccepted:
        """Record the cancellation; the orchestrator ends the job and its worker aborts it."""
        view = await jobs.load_view(gateway, principal, job_id)
        if view.terminal:
            raise ApiError(
                409, f"job {job_id} already ended ({view.status})", code="job_ended", param="job_id"
            )
        await cancel_job(
            gateway.bus,
            job_id,
            f"cancelled by {principal.principal_id}",
            actor=principal.principal_id,
        )
        return JobAccepted(job_id=job_id, status="cancelling", created=False)
