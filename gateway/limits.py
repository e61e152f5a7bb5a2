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
from projections.usage import TenantUsage, day_of, key_tokens, usage_key
from services.accounts.keys import KeyRecord

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
    """Tokens per tenant per UTC day (0: no quota), and per API key per UTC day (a key's
    `daily_tokens`, 0: no budget), from the usage projection's mirror, less what the running
    jobs may still use: each reserves its `max_tokens` for every task when admitted, in the
    reservations bucket every gateway mirrors, until the projector folds its end
    (`projections/reservations.py`)."""

    usage: WatchedBucket[TenantUsage]
    daily_tokens: int
    reservations: Reservations
    keys: WatchedBucket[KeyRecord] | None = None  # the live keys, with their budgets

    def budget_of(self, principal: Principal) -> int:
        """The caller's key's daily tokens (0: no budget, or no key)."""
        if principal.key_id is None or self.keys is None:
            return 0
        record = self.keys.items.get(principal.key_id)
        return record.daily_tokens if record is not None else 0

    def reserves(self, principal: Principal) -> bool:
        """Whether a job of the caller's holds a reservation while it runs."""
        return self.daily_tokens > 0 or self.budget_of(principal) > 0

    def check(self, principal: Principal, need: int = 0) -> None:
        """Raise 429 when the caller's tenant, or its key, has no room today for `need` more
        tokens (what it used, and what its running jobs reserved, counted)."""
        budget = self.budget_of(principal)
        if self.daily_tokens <= 0 and budget <= 0:
            return
        now = datetime.now(UTC)
        record = self.usage.items.get(usage_key(principal.tenant, day_of(now)))
        if self.daily_tokens > 0:
            reserved = self.reservations.by_tenant[principal.tenant]
            used = (record.total_tokens if record else 0) + reserved
            if not fits(self.daily_tokens, used, need):
                raise _over_quota(principal.tenant, self.daily_tokens, used, need, now)
        if budget > 0 and principal.key_id is not None:
            reserved = self.reservations.by_key[principal.key_id]
            used = key_tokens(record, principal.key_id) + reserved
            if not fits(budget, used, need):
                raise _over_budget(principal.key_id, budget, used, need, now)

    async def reserve(self, job_id: str, principal: Principal, tokens: int) -> None:
        """An admitted job holds `tokens` of its tenant's quota, and of its key's budget, until
        its end is folded."""
        if not self.reserves(principal) or self.reservations.held(principal.tenant, job_id):
            return
        key_id = principal.key_id if self.budget_of(principal) > 0 else None
        await self.reservations.reserve(principal.tenant, job_id, tokens, key_id)


def fits(limit: int, used: int, need: int) -> bool:
    """Whether `need` more tokens fit a daily `limit` of which `used` (reservations counted)
    are taken: a job goes only while something is left and its whole bound fits."""
    return used < limit and need <= limit - used


def _until_midnight(now: datetime) -> int:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def _over_quota(tenant: str, limit: int, used: int, need: int, now: datetime) -> ApiError:
    why = f"tenant {tenant!r} used {used:,} of its {limit:,} tokens for today"
    if used < limit:
        why = (
            f"this job may use up to {need:,} tokens (max_tokens for each of its tasks); "
            f"tenant {tenant!r} has {limit - used:,} of its {limit:,} left "
            "for today (running jobs' reservations counted)"
        )
    return ApiError(
        429,
        f"{why}; the quota resets at 00:00 UTC",
        code="quota_exceeded",
        param="max_tokens" if used < limit else None,
        headers={"retry-after": str(_until_midnight(now))},
    )


def _over_budget(key_id: str, limit: int, used: int, need: int, now: datetime) -> ApiError:
    wait = _until_midnight(now)
    why = f"API key {key_id} used {used:,} of its daily budget of {limit:,} tokens"
    if used < limit:
        why = (
            f"this job may use up to {need:,} tokens (max_tokens for each of its tasks); "
            f"API key {key_id} has {limit - used:,} of its daily budget of {limit:,} tokens "
            f"left ({used:,} used, running jobs' reservations counted)"
        )
    return ApiError(
        429,
        f"{why}; the budget resets at 00:00 UTC, in {wait // 3600}h{wait % 3600 // 60:02d}m",
        code="key_budget_exceeded",
        param="max_tokens" if used < limit else None,
        headers={"retry-after": str(wait)},
    )
