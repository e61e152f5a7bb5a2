"""The usage read model: tokens and requests per tenant per UTC day, folded from job.completed.

Each record carries the last JOBS sequence it applied, so a redelivered event is not counted
twice. Keys read ``<tenant>.<YYYY-MM-DD>``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from events.envelope import Envelope
from events.jobs import JobCompleted
from events.subjects import encode_token


class TenantUsage(BaseModel):
    """One tenant's usage on one day."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    day: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_seq: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def day_of(at: datetime) -> str:
    """The UTC day an instant falls on."""
    return at.strftime("%Y-%m-%d")


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
    return record.model_copy(
        update={
            "requests": record.requests + 1,
            "prompt_tokens": record.prompt_tokens + event.usage.prompt_tokens,
            "completion_tokens": record.completion_tokens + event.usage.completion_tokens,
            "last_seq": seq,
        }
    )
