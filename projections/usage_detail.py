"""A tenant's day of usage in detail: requests and tokens per (owner, API key, model, end user),
folded from job.completed.

One record per tenant per UTC day, at ``<tenant>.<YYYY-MM-DD>.detail`` in the usage bucket,
beside the day's total (``<tenant>.<YYYY-MM-DD>``, `projections.usage`). The gateways mirror the
totals, not these: `GET /v1/usage` reads the days it reports. Like the totals, a record carries
the last JOBS sequence it applied, so a redelivered event is not counted twice; and the cells of
a day add up to its total.

- A job counts as one request, under its own model; its tokens go to the model of each task
  that produced them (a comparative job's candidates may be of several models).
- An event from before these fields (no owner, key, model or end user) counts in a cell with
  none of them, so the cells still add up to the day's total.
- A day holds at most `MAX_USER_CELLS` cells that name an end user (the caller chooses those
  names, without bound): a job of a new end user beyond that is counted without its end user,
  in a cell marked `other_users`. Owners, keys and models are bounded by what the tenant holds.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from events.envelope import Envelope
from events.inference import Usage
from events.jobs import JobCompleted
from projections.usage import day_of, usage_key

MAX_USER_CELLS = 1_000

# a cell's place: owner, key id, model, end user, and whether it stands for end users over the bound
CellId = tuple[str | None, str | None, str | None, str | None, bool]


class UsageCell(BaseModel):
    """Requests and tokens of one owner's key, one model and one end user, on one day."""

    model_config = ConfigDict(frozen=True)

    owner: str | None = None  # the principal who submitted the jobs (None: older events)
    key_id: str | None = None  # the API key they came with (None: a session, or older events)
    model: str | None = None
    user: str | None = None  # the end user the caller named (OpenAI's `user`)
    other_users: bool = False  # end users beyond the day's bound, counted together
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def place(self) -> CellId:
        """Where the cell stands: what it counts for."""
        return (self.owner, self.key_id, self.model, self.user, self.other_users)


class UsageDetail(BaseModel):
    """One tenant's day, cell by cell."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    day: str
    cells: tuple[UsageCell, ...] = ()
    last_seq: int = 0


def detail_key(tenant: str, day: str) -> str:
    """The usage-bucket key of a tenant's day in detail: ``<tenant>.<day>.detail``."""
    return f"{usage_key(tenant, day)}.detail"


def shares(event: JobCompleted) -> list[tuple[str | None, Usage]]:
    """How a completed job's usage splits over models: by the tasks that completed (`parts`,
    multi-task patterns) when they add up to the job's usage, else all of it under the job's
    model."""
    done = [p for p in event.parts if p.status == "completed"]
    if done:
        by_model: dict[str | None, Usage] = {}
        for part in done:
            by_model[part.model] = by_model.get(part.model, Usage()) + part.usage
        total = sum(by_model.values(), Usage())
        if (total.prompt_tokens, total.completion_tokens) == (
            event.usage.prompt_tokens,
            event.usage.completion_tokens,
        ):
            return list(by_model.items())
    return [(event.model, event.usage)]


def add_detail(
    record: UsageDetail | None, deliveries: Iterable[tuple[int, Envelope]]
) -> UsageDetail | None:
    """Count job.completed events (each with the JOBS sequence it is stored at, in stream
    order) into their tenant's day; events already applied, of no tenant, or of another day
    or tenant than the record's are left out. None when there is nothing to store."""
    cells: dict[CellId, list[int]] = {}
    if record is not None:
        cells = {c.place: [c.requests, c.prompt_tokens, c.completion_tokens] for c in record.cells}
    users = sum(1 for place in cells if place[3] is not None)
    last = record.last_seq if record is not None else 0
    tenant, day = (record.tenant, record.day) if record is not None else (None, None)
    for seq, envelope in deliveries:
        event = envelope.data
        if not isinstance(event, JobCompleted) or event.tenant is None or seq <= last:
            continue
        if tenant is None:
            tenant, day = event.tenant, day_of(envelope.at)
        elif (event.tenant, day_of(envelope.at)) != (tenant, day):
            continue
        last = seq
        split = shares(event)
        # the request goes to the job's own model (to the first share if none is of it)
        asked = next((i for i, (model, _) in enumerate(split) if model == event.model), 0)
        for i, (model, usage) in enumerate(split):
            place: CellId = (event.owner, event.key_id, model, event.end_user, False)
            if place not in cells and event.end_user is not None:
                if users >= MAX_USER_CELLS:
                    place = (event.owner, event.key_id, model, None, True)
                else:
                    users += 1
            counts = cells.setdefault(place, [0, 0, 0])
            counts[0] += i == asked
            counts[1] += usage.prompt_tokens
            counts[2] += usage.completion_tokens
    if tenant is None or day is None:
        return record
    if record is not None and last == record.last_seq:
        return record
    return UsageDetail(
        tenant=tenant,
        day=day,
        cells=tuple(
            UsageCell(
                owner=place[0],
                key_id=place[1],
                model=place[2],
                user=place[3],
                other_users=place[4],
                requests=counts[0],
                prompt_tokens=counts[1],
                completion_tokens=counts[2],
            )
            for place, counts in cells.items()
        ),
        last_seq=last,
    )
