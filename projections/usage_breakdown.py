"""Usage broken down for a reader: a tenant's days in detail (`projections.usage_detail`),
narrowed to what the reader may see and asks for, grouped by API key, model and/or end user.

Pure: `GET /v1/usage` and `dim usage --by` both read it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

from projections.usage_detail import UsageCell, UsageDetail

Dimension = Literal["key", "model", "user"]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)


class UsageRow(BaseModel):
    """One group of a day's usage: the dimensions it is not grouped by are null."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    day: str
    key_id: str | None = None  # grouped by key: null for jobs that came without a key
    owner: str | None = None  # grouped by key: whose key (or session) it is
    model: str | None = None
    user: str | None = None  # grouped by user: null for jobs that named no end user
    other_users: bool = False  # grouped by user: end users beyond the day's bound, together
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def parse_dimensions(text: str) -> tuple[Dimension, ...]:
    """``"key,model"`` as dimensions, in the canonical order; `ValueError` naming any other."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    wrong = [n for n in names if n not in DIMENSIONS]
    if wrong:
        raise ValueError(
            f"cannot group by {', '.join(map(repr, wrong))}: one or more of {', '.join(DIMENSIONS)}"
        )
    return tuple(d for d in DIMENSIONS if d in names)


def matching(
    *,
    owner: str | None = None,
    key_id: str | None = None,
    model: str | None = None,
    user: str | None = None,
) -> Callable[[UsageCell], bool]:
    """A test of cells: those of `owner` (None: anyone's), with the key, model and end user
    asked for (None: any)."""

    def keep(cell: UsageCell) -> bool:
        return (
            (owner is None or cell.owner == owner)
            and (key_id is None or cell.key_id == key_id)
            and (model is None or cell.model == model)
            and (user is None or cell.user == user)
        )

    return keep


def breakdown(
    details: Iterable[UsageDetail],
    by: Sequence[Dimension],
    keep: Callable[[UsageCell], bool] = lambda _: True,
) -> list[UsageRow]:
    """The kept cells of each day summed per group of `by`: newest day first, then by tenant,
    then the groups with the most tokens first."""
    Group = tuple[str, str, str | None, str | None, str | None, str | None, bool]
    groups: dict[Group, list[int]] = {}
    for detail in details:
        for cell in detail.cells:
            if not keep(cell):
                continue
            # a key has one owner; jobs without a key are told apart by their owner
            key, owner = (cell.key_id, cell.owner) if "key" in by else (None, None)
            model = cell.model if "model" in by else None
            user, others = (cell.user, cell.other_users) if "user" in by else (None, False)
            group = (detail.day, detail.tenant, key, owner, model, user, others)
            counts = groups.setdefault(group, [0, 0, 0])
            counts[0] += cell.requests
            counts[1] += cell.prompt_tokens
            counts[2] += cell.completion_tokens
    rows = [
        UsageRow(
            day=day,
            tenant=tenant,
            key_id=key,
            owner=owner,
            model=model,
            user=user,
            other_users=others,
            requests=requests,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
        )
        for (day, tenant, key, owner, model, user, others), (requests, prompt, completion) in (
            groups.items()
        )
    ]
    rows.sort(key=lambda r: (r.tenant, -r.total_tokens, _order(r)))
    return sorted(rows, key=lambda r: r.day, reverse=True)  # stable: the order within a day stays


def _order(row: UsageRow) -> tuple[str, str, str, str]:
    return (row.owner or "", row.key_id or "", row.model or "", row.user or "")
