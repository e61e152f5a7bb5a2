"""Token reservations: what each running job may still use of its tenant's daily quota, shared
by every gateway.

A gateway that admits a job reserves `max_tokens` for each of its tasks (`<tenant>.<job id>` in
the reservations bucket); the projector removes the entry when the job's end is folded (by then
the usage projection counts what the job really used). Every gateway mirrors the bucket, so a
tenant's quota holds across gateways: one gateway's reservation is seen by the others as soon as
their watches deliver it (milliseconds), and a gateway that dies leaves no reservation behind
for longer than its job runs (the projector removes it), nor than a day (the bucket's TTL).

A job that came with an API key which has a daily token budget holds the same reservation
against its key too (`key_id`): one entry, counted for the tenant and for the key.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict

from events.bus import Bus
from events.subjects import encode_token
from events.watched import WatchedBucket

RESERVATION_TTL_S = 2 * 24 * 3600.0  # a day and a day's job: beyond it nothing is held


class Reservation(BaseModel):
    """Tokens a running job holds of its tenant's quota."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    tokens: int
    key_id: str | None = None  # added with key budgets: the key it counts against too


def reservation_key(tenant: str, job_id: str) -> str:
    """The reservations bucket's key of a job: ``<tenant>.<job id>``."""
    return f"{encode_token(tenant)}.{job_id}"


class Reservations(WatchedBucket[Reservation]):
    """The reservations bucket, mirrored, with each tenant's total and each key's."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, bus.names.bucket("reservations"), Reservation)
        self.by_tenant: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()
        self._held: dict[str, Reservation] = {}

    def changed(self, key: str, item: Reservation | None) -> None:
        old = self._held.pop(key, None)
        if old is not None:
            _take(self.by_tenant, old.tenant, old.tokens)
            if old.key_id is not None:
                _take(self.by_key, old.key_id, old.tokens)
        if item is not None:
            self._held[key] = item
            self.by_tenant[item.tenant] += item.tokens
            if item.key_id is not None:
                self.by_key[item.key_id] += item.tokens

    async def reserve(
        self, tenant: str, job_id: str, tokens: int, key_id: str | None = None
    ) -> None:
        """Hold `tokens` of `tenant`'s quota (and of `key_id`'s budget) for the job (counted
        here at once)."""
        key = reservation_key(tenant, job_id)
        item = Reservation(tenant=tenant, tokens=tokens, key_id=key_id)
        await (await self.bus.bucket("reservations")).put(key, item.model_dump_json().encode())
        self.items[key] = item
        self.changed(key, item)

    def held(self, tenant: str, job_id: str) -> bool:
        """Whether the job holds a reservation (as this mirror knows)."""
        return reservation_key(tenant, job_id) in self._held

    async def release(self, tenant: str, job_id: str) -> None:
        """The job ended: its reservation goes (its usage is counted instead)."""
        key = reservation_key(tenant, job_id)
        await (await self.bus.bucket("reservations")).delete(key)
        self.items.pop(key, None)
        self.changed(key, None)


def _take(totals: Counter[str], name: str, tokens: int) -> None:
    totals[name] -= tokens
    if totals[name] <= 0:
        del totals[name]
