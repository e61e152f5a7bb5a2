"""The batch read model: one view per batch, folded from its events in BATCHES and the ends of
its lines' jobs in JOBS.

The two streams are read by two consumers, so a line's end may be folded before the batch's
creation: each fold sets only its own fields, and either order gives the same view. A view
carries the last sequence applied of each stream (`batch_seq`, `jobs_seq`), and which lines
have ended (`ended`, a bitmap): a redelivered event, or a second end of the same line (a job
cancelled after it completed), changes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from events.batches import (
    BatchCancelled,
    BatchCancelling,
    BatchCompleted,
    BatchCreated,
    BatchFailed,
    BatchStarted,
    LineError,
)
from events.envelope import Envelope
from events.jobs import JobCancelled, JobCompleted, JobFailed

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
LineEnd = JobCompleted | JobFailed | JobCancelled


class BatchView(BaseModel):
    """What is known of one batch."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    batch_id: str
    tenant: str | None = None  # None until its creation is folded
    owner: str = ""
    input_file_id: str = ""
    endpoint: str = ""
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    key_id: str | None = None  # the key it came with: its lines' usage counts against it
    total: int = 0
    requests: str = ""  # the object holding its parsed lines
    status: Status = "validating"
    created_at: int = 0
    expires_at: int | None = None
    in_progress_at: int | None = None
    cancelling_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[LineError, ...] = ()
    more_errors: int = 0
    completed: int = 0  # lines whose job completed
    failed: int = 0  # lines whose job failed or was cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ended: str = ""  # base64 bitmap: bit i set when line i's job has ended
    batch_seq: int = 0  # the last BATCHES sequence applied
    jobs_seq: int = 0  # the last JOBS sequence applied

    @property
    def terminal(self) -> bool:
        """Whether the batch has ended."""
        return self.status in TERMINAL

    def ended_lines(self) -> Bitmap:
        """Which lines have ended."""
        return Bitmap.decode(self.ended, self.total)


class Bitmap:
    """A set of line indexes as bits (8 lines a byte: 50,000 lines in 6,250 bytes)."""

    def __init__(self, raw: bytearray) -> None:
        self.raw = raw

    @classmethod
    def decode(cls, text: str, size: int = 0) -> Bitmap:
        """From its stored form, with room for `size` lines at least."""
        raw = bytearray(base64.b64decode(text)) if text else bytearray()
        need = (size + 7) // 8
        if len(raw) < need:
            raw.extend(bytes(need - len(raw)))
        return cls(raw)

    def encode(self) -> str:
        """The stored form."""
        return base64.b64encode(bytes(self.raw)).decode()

    def __contains__(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self.raw) and bool(self.raw[byte] & (1 << (index & 7)))

    def add(self, index: int) -> bool:
        """Set line `index`; whether it was not set before."""
        if index in self:
            return False
        byte = index >> 3
        if byte >= len(self.raw):
            self.raw.extend(bytes(byte + 1 - len(self.raw)))
        self.raw[byte] |= 1 << (index & 7)
        return True

    def missing(self, total: int) -> Iterator[int]:
        """The lines below `total` not set, in order."""
        for byte, bits in enumerate(self.raw[: (total + 7) // 8]):
            if bits == 0xFF:
                continue
            for bit in range(8):
                index = byte * 8 + bit
                if index < total and not bits & (1 << bit):
                    yield index
        for index in range(len(self.raw) * 8, total):
            yield index


# the fields of a batch's first event (created or failed) its view has
_OPENED = (
    "tenant",
    "owner",
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "key_id",
)


def _ts(at: datetime) -> int:
    return int(at.timestamp())


def apply_batch_event(view: BatchView | None, envelope: Envelope, seq: int) -> BatchView | None:
    """Fold one BATCHES event (stored at `seq`) into the batch's view."""
    event = envelope.data
    batch_id = getattr(event, "batch_id", None)
    if not isinstance(batch_id, str):
        return view
    view = view or BatchView(batch_id=batch_id)
    if seq <= view.batch_seq:
        return view
    at = _ts(envelope.at)
    update: dict[str, object] = {"batch_seq": seq}
    if isinstance(event, BatchCreated | BatchFailed):  # the first event: whose, and what
        update |= {f: getattr(event, f) for f in _OPENED} | {"created_at": at}
    if isinstance(event, BatchCreated):
        update |= {
            "total": event.total,
            "requests": event.requests,
            "expires_at": _ts(event.expires_at),
        }
    elif isinstance(event, BatchFailed):
        update |= {
            "status": "failed",
            "failed_at": at,
            "errors": event.errors,
            "more_errors": event.more_errors,
        }
    elif view.terminal:
        pass  # nothing changes an ended batch
    elif isinstance(event, BatchStarted) and view.status == "validating":
        update |= {"status": "in_progress", "in_progress_at": at}
    elif isinstance(event, BatchCancelling) and view.status in ("validating", "in_progress"):
        update |= {"status": "cancelling", "cancelling_at": at}
    elif isinstance(event, BatchCompleted | BatchCancelled):
        ended = "completed" if isinstance(event, BatchCompleted) else "cancelled"
        update |= {
            "status": ended,
            f"{ended}_at": at,
            "output_file_id": event.output_file_id,
            "error_file_id": event.error_file_id,
            "completed": event.completed,  # what its files hold
            "failed": event.failed,
            "finalizing_at": _ts(event.finalizing_at) if event.finalizing_at else at,
        }
    return view.model_copy(update=update)


def apply_line_ends(
    view: BatchView | None, batch_id: str, ends: Iterable[tuple[int, int, LineEnd]]
) -> BatchView:
    """Fold the ends of a batch's line jobs, `(seq, line index, terminal event)` in stream
    order: the first end of each line counts (completed, or failed), with its usage."""
    view = view or BatchView(batch_id=batch_id)
    bits = view.ended_lines()
    seq, completed, failed = view.jobs_seq, view.completed, view.failed
    prompt, completion = view.prompt_tokens, view.completion_tokens
    for at_seq, index, event in ends:
        if at_seq <= seq:
            continue
        seq = at_seq
        if not bits.add(index) or view.terminal:
            continue  # a second end of the line, or after the batch's own end (final counts)
        if isinstance(event, JobCompleted):
            completed += 1
            prompt += event.usage.prompt_tokens
            completion += event.usage.completion_tokens
        else:
            failed += 1
    return view.model_copy(
        update={
            "ended": bits.encode(),
            "jobs_seq": seq,
            "completed": completed,
            "failed": failed,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
    )


def encode_view(view: BatchView) -> bytes:
    """The stored form of a view."""
    return view.model_dump_json().encode()


def decode_view(raw: bytes) -> BatchView:
    """Read a stored view."""
    return BatchView.model_validate_json(raw)


def fold_history(events: Iterable[tuple[int, Envelope]]) -> BatchView | None:
    """A batch's view from its BATCHES events alone (its lines' progress left out): what the
    gateway shows of a batch the projection has not stored yet."""
    view: BatchView | None = None
    for seq, envelope in events:
        view = apply_batch_event(view, envelope, seq)
    return view
