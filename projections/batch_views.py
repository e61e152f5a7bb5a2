"""Reading the batch read model: one batch's view, or a tenant's batches newest first through the
batch index (``<tenant>.<owner>.<batch id>``), so a listing reads only what it may show."""

from __future__ import annotations

from collections.abc import Callable

from events.bus import Bus
from events.history import read_events
from events.subjects import encode_token
from projections.batch_status import BatchView, decode_view, fold_history


def batch_index_key(tenant: str, owner: str, batch_id: str) -> str:
    """The batch index's key of a batch."""
    return f"{encode_token(tenant)}.{encode_token(owner)}.{batch_id}"


async def index_batch(bus: Bus, view: BatchView) -> None:
    """Put the batch in its tenant's index (idempotent)."""
    if view.tenant is None:
        return
    key = batch_index_key(view.tenant, view.owner, view.batch_id)
    await (await bus.bucket("batch_index")).put(key, b"")


async def read_batch(bus: Bus, batch_id: str) -> BatchView | None:
    """The batch's view: as stored, or folded from its events when the projection has not
    stored its creation yet (just created); None if there is no such batch."""
    entry = await (await bus.bucket("batches")).get(batch_id)
    view = decode_view(entry.value) if entry else None
    if view is None or view.tenant is None:
        folded = await read_lifecycle(bus, batch_id)
        if folded is not None and folded.tenant is not None:
            return folded if view is None else with_progress(folded, view)
    return view if view is not None and view.tenant is not None else None


async def read_lifecycle(bus: Bus, batch_id: str) -> BatchView | None:
    """The batch's view folded from its events in BATCHES alone, up to the last one stored
    (its line progress left out): what to decide on when the projection may lag."""
    names = bus.names
    events = [e async for e in read_events(bus, names.batches_stream, names.batch_all(batch_id))]
    return fold_history(events)


def with_progress(lifecycle: BatchView, progress: BatchView) -> BatchView:
    """`lifecycle` (folded from BATCHES) with the line progress `progress` has (from JOBS)."""
    fields: tuple[str, ...] = ("ended", "jobs_seq")
    if not lifecycle.terminal:  # else its own end carries the final counts
        fields += ("completed", "failed", "prompt_tokens", "completion_tokens")
    return lifecycle.model_copy(update={f: getattr(progress, f) for f in fields})


async def newest_batches(
    bus: Bus,
    keep: Callable[[BatchView], bool],
    *,
    tenant: str,
    owner: str | None,
    limit: int,
    after: str | None,
) -> tuple[list[BatchView], bool]:
    """Up to `limit` of the tenant's (or the owner's) batches that `keep` accepts, newest
    first, older than the batch `after`; and whether there are more."""
    index = await bus.bucket("batch_index")
    pattern = (
        f"{encode_token(tenant)}.{encode_token(owner)}.*"
        if owner
        else f"{encode_token(tenant)}.*.*"
    )
    ids = sorted((k.rsplit(".", 1)[1] for k in await index.keys(pattern)), reverse=True)
    out: list[BatchView] = []
    for batch_id in ids:
        if after is not None and batch_id >= after:
            continue
        view = await read_batch(bus, batch_id)
        if view is None or not keep(view):
            continue
        if len(out) == limit:
            return out, True
        out.append(view)
    return out, False
