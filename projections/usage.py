"""The usage read model: tokens and requests per tenant per UTC day, folded from job.completed.

Each record carries the last JOBS sequence it applied, so a redelivered event is not counted
twice. Keys read ``<tenant>.<YYYY-MM-DD>``. Every gateway mirrors these records (the tenant's
quota and its keys' budgets are checked against them, so each holds the day's tokens per API
key too); the day's breakdown by key, model and end user is `projections.usage_detail`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from events.envelope import Envelope
from events.jobs import JobCompleted
from events.subjects import encode_token

USAGE_TOTALS = "*.*"  # the keys of the tenants' days in the usage bucket (not their detail)


class TenantUsage(BaseModel):
    """One tenant's usage on one day."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    day: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_seq: int = 0
    # added with key budgets: tokens per API key id (jobs that came with a key; older events
    # are counted in the tenant's total only)
    by_key: dict[str, int] = {}

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def day_of(at: datetime) -> str:
    """The UTC day an instant falls on, ``YYYY-MM-DD`` (`at` is in UTC, as events' times are)."""
    return at.date().isoformat()  # what strftime("%Y-%m-%d") says, in a tenth of the time


def usage_key(tenant: str, day: str) -> str:
    """The usage-bucket key of a tenant's day."""
    return f"{encode_token(tenant)}.{day}"


def add(record: TenantUsage | None, envelope: Envelope, seq: int) -> TenantUsage | None:
    """Count one job.completed (stored at `seq`) into its tenant's day; None if it has no tenant."""
    event = envelope.data
    if not isinstance(event, JobCompleted) or event.tenant is None:
        return record
    record = record or TenantUsage(tenant=event.tenant, day=day_of(envelope.at))
    if seq <= record.last_seq:
        return record
    by_key = record.by_key
    if event.key_id is not None:
        by_key = by_key | {event.key_id: by_key.get(event.key_id, 0) + event.usage.total_tokens}
    return record.model_copy(
        update={
            "requests": record.requests + 1,
            "prompt_tokens": record.prompt_tokens + event.usage.prompt_tokens,
            "completion_tokens": record.completion_tokens + event.usage.completion_tokens,
            "last_seq": seq,
            "by_key": by_key,
        }
    )


def key_tokens(record: TenantUsage | None, key_id: str) -> int:
    """The tokens the key `key_id` used on the record's day (0 for no record)."""
    return record.by_key.get(key_id, 0) if record is not None else 0
