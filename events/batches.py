"""Batch lifecycle events (OpenAI's Batch API), stored in the BATCHES stream on
``NS.batches.<batch_id>.<type>``, and the values they carry.

A batch's lines are jobs like any other (``job.submitted`` in JOBS, id `line_job_id`); these
events record only what belongs to the batch as a whole: created (with the lines, normalised,
in the files object store), started, cancelling, and how it ended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from events.envelope import Event, event_type
from events.ids import new_id
from events.inference import Prompt, SamplingParams

Endpoint = Literal["/v1/chat/completions", "/v1/completions"]
ENDPOINTS: tuple[Endpoint, ...] = ("/v1/chat/completions", "/v1/completions")
BATCH_PREFIX = "batch_"


def new_batch_id() -> str:
    """A new batch id: ``batch_<sortable id>``."""
    return f"{BATCH_PREFIX}{new_id()}"


def line_job_id(batch_id: str, index: int) -> str:
    """The id of the job that runs line `index` (from 0) of a batch: the same on every try, so
    a line submitted again after a crash is the same job (stored once)."""
    return f"{batch_id.removeprefix(BATCH_PREFIX)}-{index}"


def line_of(job_id: str) -> tuple[str, int] | None:
    """The batch id and line index of a line's job id; None for any other job."""
    head, sep, tail = job_id.rpartition("-")
    if not sep or not head or not tail.isdigit() or "-" in head:
        return None
    return f"{BATCH_PREFIX}{head}", int(tail)


class BatchLine(BaseModel):
    """One request of a batch, as the gateway parsed it from its input line: what its job
    needs (the rest of the line is checked and refused if dim would not honour it)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    custom_id: str
    model: str
    prompt: Prompt
    params: SamplingParams
    end_user: str | None = None


def parse_lines(raw: bytes) -> list[BatchLine]:
    """A batch's parsed lines, as the gateway stored them (JSONL)."""
    return [BatchLine.model_validate_json(text) for text in raw.splitlines() if text.strip()]


def dump_lines(lines: list[BatchLine]) -> bytes:
    """The stored form of a batch's parsed lines (JSONL)."""
    return b"".join(line.model_dump_json().encode() + b"\n" for line in lines)


class LineError(BaseModel):
    """Why an input file was refused, one line at a time (OpenAI's ``errors.data``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    code: str
    message: str
    line: int | None = None  # from 1, as OpenAI counts
    param: str | None = None


class _Opened(Event):
    """A caller asked for a batch: the first event of every batch, which says whose it is and
    what it asks for."""

    batch_id: str
    tenant: str
    owner: str
    input_file_id: str
    endpoint: Endpoint
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    # added later: the API key it came with, so its lines count against the key (None: a
    # session, or an older event)
    key_id: str | None = None


@event_type
class BatchCreated(_Opened):
    """A caller created a batch whose every line was valid."""

    type = "batch.created"
    total: int  # lines
    requests: str  # the object in the files store holding the lines as `BatchLine` JSONL
    expires_at: datetime


@event_type
class BatchStarted(Event):
    """The batch runner took the batch up: its lines go to the mesh from now on."""

    type = "batch.started"
    batch_id: str


@event_type
class BatchCancelling(Event):
    """The batch's owner asked to cancel it: no more lines start; those running are
    cancelled."""

    type = "batch.cancelling"
    batch_id: str
    by: str


class _Ended(Event):
    """A batch ended with its output: the files it wrote and the counts in them."""

    batch_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    finalizing_at: datetime | None = None  # when the runner began writing the files


@event_type
class BatchCompleted(_Ended):
    """Every line ended; the output and error files are written."""

    type = "batch.completed"


@event_type
class BatchCancelled(_Ended):
    """The batch was cancelled; the lines that had ended are in its files."""

    type = "batch.cancelled"


@event_type
class BatchFailed(_Opened):
    """A caller asked for a batch that cannot run: its input file was refused (`errors` says
    where and why)."""

    type = "batch.failed"
    errors: tuple[LineError, ...]
    more_errors: int = 0  # errors beyond those listed


BatchEvent = (
    BatchCreated | BatchStarted | BatchCancelling | BatchCompleted | BatchCancelled | BatchFailed
)
BATCH_TERMINAL = frozenset({BatchCompleted.type, BatchCancelled.type, BatchFailed.type})
