"""A tenant's token usage per day, and its quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter
from pydantic import BaseModel, Field

from gateway.auth import GatewayDep, PrincipalDep
from projections.usage import day_of, usage_key


class UsageDay(BaseModel):
    """One UTC day of a tenant's usage (jobs that completed that day)."""

    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageReport(BaseModel):
    """`GET /v1/usage`."""

    object: str = "usage"
    tenant: str
    daily_tokens: int | None = Field(description="the tenant's daily quota (null: none)")
    reserved_tokens: int = Field(description="what its running jobs may still use (max_tokens)")
    data: list[UsageDay] = Field(description="newest first; days with no usage are left out")


class UsageController(Controller):
    """`/v1/usage`."""

    path = "/v1/usage"
    tags = ["usage"]

    @get(operation_id="getUsage", summary="Your tenant's tokens and requests per day, its quota")
    async def usage(
        self,
        gateway: GatewayDep,
        principal: PrincipalDep,
        days: Annotated[int, Parameter(ge=1, le=366, description="how many days back")] = 30,
    ) -> UsageReport:
        """From the usage projection: jobs completed per UTC day, with their tokens."""
        items = gateway.quotas.usage.items
        today = datetime.now(UTC)
        out = []
        for back in range(days):
            day = day_of(today - timedelta(days=back))
            record = items.get(usage_key(principal.tenant, day))
            if record is not None:
                out.append(
                    UsageDay(
                        day=day,
                        requests=record.requests,
                        prompt_tokens=record.prompt_tokens,
                        completion_tokens=record.completion_tokens,
                        total_tokens=record.total_tokens,
                    )
                )
        quota = gateway.settings.tenant_daily_tokens
        return UsageReport(
            tenant=principal.tenant,
            daily_tokens=quota or None,
            reserved_tokens=gateway.quotas.reservations.by_tenant[principal.tenant],
            data=out,
        )
