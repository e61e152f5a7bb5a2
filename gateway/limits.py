"""Rate limits that hold across every gateway replica, counted by NATS itself.

Each request increments a counter for its caller (API key, or user) in the current one-minute
window: a JetStream counter stream (``Nats-Incr``) adds atomically and returns the new count in
the publish ack, so replicas share one count without a coordinator, for one round trip.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from events.bus import Bus
from events.watched import WatchedBucket
from gateway.errors import ApiError
from gateway.principal import Principal
from projections.reservations import Reservations
from projections.usage import TenantUsage, day_of, usage_key

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class RateState:
    """Where a caller stands in the current window."""

    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers."""
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": f"{self.reset_s}s",
        }


@dataclass(frozen=True, slots=True)
class RateLimiter:
    """Requests per minute per caller (key or user), and per tenant as a whole (its many keys
    and users together); 0 means no limit."""

    bus: Bus
    rpm: int
    tenant_rpm: int = 0

    async def hit(self, principal: Principal) -> RateState | None:
        """Count one request against the caller and its tenant (both at once); raise 429 with
        `Retry-After` when over either limit."""
        caller = principal.key_id or principal.principal_id
        if self.tenant_rpm <= 0:
            return await self.count(caller, self.rpm, "requests")
        mine, _ = await asyncio.gather(
            self.count(caller, self.rpm, "requests"),
            self.count(f"tenant-{principal.tenant}", self.tenant_rpm, "requests for your tenant"),
        )
        return mine

    async def attempt(self, account: str, address: str, rpm: int) -> None:
        """Count one login, refresh or registration against both the account it names and the
        address it comes from (`rpm` each, every gateway together); 429 over either."""
        await self.count(f"auth-account-{account}", rpm, "attempts for this account")
        await self.count(f"auth-address-{address}", rpm * 3, "attempts from this address")

    async def count(self, caller: str, rpm: int, what: str) -> RateState | None:
        """Count one for `caller` in this minute (a counter every gateway shares); 429 with
        `Retry-After` when over `rpm`."""
        if rpm <= 0:
            return None
        now = time.time()
        window = int(now // WINDOW_S)
        count = await self.bus.increment(self.bus.names.rate(caller, window))
        reset = max(1, int((window + 1) * WINDOW_S - now + 0.999))
        state = RateState(rpm, max(0, rpm - count), reset)
        if count > rpm:
            raise ApiError(
                429,
                f"rate limit of {rpm} {what} per minute reached; retry in {reset}s",
                code="rate_limit_exceeded",
                headers=state.headers() | {"retry-after": str(reset)},
            )
        return state


@dataclass(slots=True)
class Quotas:
    """Tokens per tenant per UTC day (0: no quota), from the usage projection's mirror, less
    what the tenant's running jobs may still use: each reserves its `max_tokens` for every task
    when admitted, in the reservations bucket every gateway mirrors, until the projector folds
    its end (`projections/reservations.py`)."""

    usage: WatchedBucket[TenantUsage]
    daily_tokens: int
    reservations: Reservations

    def check(self, principal: Principal, need: int = 0) -> None:
        """Raise 429 when the caller's tenant has no room today for `need` more tokens (what
        it used, and what its running jobs reserved, counted)."""
        if self.daily_tokens <= 0:
            return
        now = datetime.now(UTC)
        record = self.usage.items.get(usage_key(principal.tenant, day_of(now)))
        reserved = self.reservations.by_tenant[principal.tenant]
        used = (record.total_tokens if record else 0) + reserved
        left = max(0, self.daily_tokens - used)
        if used < self.daily_tokens and need <= left:
            return
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        wait = max(1, int((midnight - now).total_seconds()))
        why = f"tenant {principal.tenant!r} used {used:,} of its {self.daily_tokens:,} tokens for today"
        if used < self.daily_tokens:
            why = (
                f"this job may use up to {need:,} tokens (max_tokens for each of its tasks); "
                f"tenant {principal.tenant!r} has {left:,} of its {self.daily_tokens:,} left "
                "for today (running jobs' reservations counted)"
            )
        raise ApiError(
            429,
            f"{why}; the quota resets at 00:00 UTC",
            code="quota_exceeded",
            param="max_tokens" if used < self.daily_tokens else None,
            headers={"retry-after": str(wait)},
        )

    async def reserve(self, job_id: str, tenant: str, tokens: int) -> None:
        """An admitted job holds `tokens` of its tenant's quota until its end is folded."""
        if self.daily_tokens > 0 and not self.reservations.held(tenant, job_id):
            await self.reservations.reserve(tenant, job_id, tokens)
