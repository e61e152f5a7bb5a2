"""A tenant's token usage per day, its quota; broken down by API key, model and end user, within
what the caller may see (their own, or an admin's whole tenant); its keys' budgets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from litestar import Controller, Request, get
from litestar.params import Parameter
from pydantic import BaseModel, Field

from gateway.auth import GatewayDep, PrincipalDep
from gateway.errors import ApiError
from gateway.principal import Principal
from gateway.runtime import Gateway
from projections.usage import day_of, key_tokens, usage_key
from projections.usage_breakdown import DIMENSIONS, UsageRow, breakdown, matching, parse_dimensions
from projections.usage_detail import UsageDetail, detail_key

QUERY = frozenset({"days", "group_by", "key", "model", "user"})


class UsageDay(BaseModel):
    """One UTC day of a tenant's usage (jobs that completed that day)."""

    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class KeyBudget(BaseModel):
    """A live API key's tokens today, and its budget."""

    key_id: str
    name: str
    owner: str
    daily_tokens: int | None = Field(description="its budget of tokens per UTC day (null: none)")
    used_tokens: int = Field(description="tokens its jobs that completed today used")
    reserved_tokens: int = Field(
        description="what its running jobs may still use (max_tokens), held while it has a budget"
    )
    remaining_tokens: int | None = Field(description="left of its budget today (null: no budget)")


class UsageReport(BaseModel):
    """`GET /v1/usage`."""

    object: str = "usage"
    tenant: str
    daily_tokens: int | None = Field(description="the tenant's daily quota (null: none)")
    reserved_tokens: int = Field(description="what its running jobs may still use (max_tokens)")
    data: list[UsageDay] = Field(
        description="the tenant's totals, newest first; days with no usage are left out"
    )
    scope: Literal["own", "tenant"] = Field(
        "own",
        description="whose usage `groups` and `keys` cover: the caller's own (their keys and "
        "sessions), or, for an admin, the whole tenant's",
    )
    group_by: list[str] = Field(default_factory=list, description="what `groups` are grouped by")
    groups: list[UsageRow] = Field(
        default_factory=list,
        description="per UTC day (newest first), per group (most tokens first); the fields "
        "not grouped by are null",
    )
    keys: list[KeyBudget] = Field(
        default_factory=list, description="the live keys in scope: tokens today, budgets"
    )


class UsageController(Controller):
    """`/v1/usage`."""

    path = "/v1/usage"
    tags = ["usage"]

    @get(
        operation_id="getUsage",
        summary="Your tenant's tokens and requests per day, its quota; per key, model and user",
    )
    async def usage(
        self,
        request: Request[Any, Any, Any],
        gateway: GatewayDep,
        principal: PrincipalDep,
        days: Annotated[int, Parameter(ge=1, le=366, description="how many days back")] = 30,
        group_by: Annotated[
            str,
            Parameter(
                description="`groups` per UTC day and per any of key, model, user, comma-"
                "separated (empty: per day)",
                max_length=64,
            ),
        ] = "key,model",
        key: Annotated[
            str | None, Parameter(description="only this API key id", max_length=64)
        ] = None,
        model: Annotated[
            str | None, Parameter(description="only this model", max_length=256)
        ] = None,
        user: Annotated[
            str | None, Parameter(description="only this end user (`user`)", max_length=256)
        ] = None,
    ) -> UsageReport:
        """From the usage projection: jobs completed per UTC day, with their tokens."""
        unknown = sorted(set(request.query_params) - QUERY)
        if unknown:
            raise ApiError(
                400,
                f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}: /v1/usage takes {', '.join(sorted(QUERY))}",
                code="unknown_parameter",
                param=unknown[0],
            )
        try:
            by = parse_dimensions(group_by)
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_request", param="group_by") from None
        today = datetime.now(UTC)
        span = [day_of(today - timedelta(days=back)) for back in range(days)]
        keep = matching(
            owner=None if principal.admin else principal.principal_id,
            key_id=key,
            model=model,
            user=user,
        )
        details = await _details(gateway, principal.tenant, span)
        quota = gateway.settings.tenant_daily_tokens
        return UsageReport(
            tenant=principal.tenant,
            daily_tokens=quota or None,
            reserved_tokens=gateway.quotas.reservations.by_tenant[principal.tenant],
            data=_totals(gateway, principal.tenant, span),
            scope="tenant" if principal.admin else "own",
            group_by=[d for d in DIMENSIONS if d in by],
            groups=breakdown(details, by, keep),
            keys=_budgets(gateway, principal, day_of(today)),
        )


def _totals(gw: Gateway, tenant: str, span: list[str]) -> list[UsageDay]:
    out = []
    for day in span:
        record = gw.quotas.usage.items.get(usage_key(tenant, day))
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
    return out


async def _details(gw: Gateway, tenant: str, span: list[str]) -> list[UsageDetail]:
    """The tenant's days in detail (not mirrored: read now, at most 366 at once)."""
    kv = await gw.bus.bucket("usage")
    entries = await asyncio.gather(*(kv.get(detail_key(tenant, day)) for day in span))
    return [UsageDetail.model_validate_json(e.value) for e in entries if e is not None]


def _budgets(gw: Gateway, principal: Principal, today: str) -> list[KeyBudget]:
    record = gw.quotas.usage.items.get(usage_key(principal.tenant, today))
    out = []
    for k in sorted(gw.keys.items.values(), key=lambda k: k.key_id):
        if not principal.may_see(k.principal_id, k.tenant):
            continue
        used = key_tokens(record, k.key_id)
        reserved = gw.quotas.reservations.by_key[k.key_id]
        out.append(
            KeyBudget(
                key_id=k.key_id,
                name=k.name,
                owner=k.principal_id,
                daily_tokens=k.daily_tokens or None,
                used_tokens=used,
                reserved_tokens=reserved,
                remaining_tokens=max(0, k.daily_tokens - used - reserved)
                if k.daily_tokens
                else None,
            )
        )
    return out
