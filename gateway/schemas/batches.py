"""Schemas of the Files and Batch APIs, as OpenAI's SDK reads them: a file, a batch, their lists,
the batch request."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from events.batches import LineError
from events.files import FileRecord
from projections.batch_status import BatchView, Status

# OpenAI's bounds on a batch's metadata: 16 pairs, keys up to 64 characters, values up to 512
MAX_METADATA = 16


class FileObject(BaseModel):
    """A file (OpenAI's ``file`` object)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, record: FileRecord) -> FileObject:
        """From the stored record."""
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=record.created_at,
            filename=record.filename,
            purpose=record.purpose,
        )


class _Page(BaseModel):
    """A page of a list, as OpenAI pages them (the next page is `after` its `last_id`)."""

    object: Literal["list"] = "list"
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @classmethod
    def of(cls, data: list[Any], more: bool) -> Self:
        """The page holding `data` (objects with an `id`), `more` following."""
        return cls(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=more,
        )


class FileList(_Page):
    """A page of files, newest first."""

    data: list[FileObject]


class FileDeleted(BaseModel):
    """`DELETE /v1/files/{id}`'s answer."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchRequest(BaseModel):
    """`POST /v1/batches`."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(description="/v1/chat/completions or /v1/completions")
    completion_window: str = Field(description="24h (the only window OpenAI offers)")
    metadata: dict[str, str] | None = Field(
        default=None, description="up to 16 pairs; keys up to 64 characters, values up to 512"
    )


class RequestCounts(BaseModel):
    """How many of a batch's requests ended, and how."""

    total: int
    completed: int
    failed: int


class BatchErrors(BaseModel):
    """Why a batch's input file was refused, line by line."""

    object: Literal["list"] = "list"
    data: list[LineError]


class TokenDetails(BaseModel):
    """Token details OpenAI reports (dim has no cached or reasoning tokens to report)."""

    cached_tokens: int = 0
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    """The tokens of a batch's completed requests."""

    input_tokens: int
    input_tokens_details: TokenDetails = TokenDetails()
    output_tokens: int
    output_tokens_details: TokenDetails = TokenDetails()
    total_tokens: int


class BatchObject(BaseModel):
    """A batch (OpenAI's ``batch`` object)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, Any] | None = None

    @classmethod
    def of(cls, view: BatchView) -> BatchObject:
        """From the batch's view. A running batch whose lines have all ended is `finalizing`
        (its files are being written)."""
        status = view.status
        if status == "in_progress" and view.total and view.completed + view.failed >= view.total:
            status = "finalizing"
        errors = None
        if view.errors:
            errors = BatchErrors(data=list(view.errors))
            if view.more_errors:
                errors.data.append(
                    LineError(
                        code="too_many_errors",
                        message=f"and {view.more_errors} more errors, not listed",
                    )
                )
        return cls(
            id=view.batch_id,
            endpoint=view.endpoint,
            input_file_id=view.input_file_id,
            completion_window=view.completion_window,
            status=status,
            output_file_id=view.output_file_id,
            error_file_id=view.error_file_id,
            errors=errors,
            created_at=view.created_at,
            in_progress_at=view.in_progress_at,
            expires_at=view.expires_at,
            finalizing_at=view.finalizing_at,
            completed_at=view.completed_at,
            failed_at=view.failed_at,
            cancelling_at=view.cancelling_at,
            cancelled_at=view.cancelled_at,
            request_counts=RequestCounts(
                total=view.total, completed=view.completed, failed=view.failed
            ),
            usage=BatchUsage(
                input_tokens=view.prompt_tokens,
                output_tokens=view.completion_tokens,
                total_tokens=view.prompt_tokens + view.completion_tokens,
            ),
            metadata=view.metadata,
        )


class BatchList(_Page):
    """A page of batches, newest first."""

    data: list[BatchObject]
