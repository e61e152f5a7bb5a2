"""A batch line's answer as its endpoint gives it: the same ``chat.completion`` (or
``text_completion``) body, or the same error, that the request sent alone would have got. The
batch runner (`services/batches`) writes its files with this, given it by the `dim` command."""

from __future__ import annotations

from typing import Any

from events.jobs import JobCompleted, JobFailed
from gateway.completions import Started, _failure
from gateway.controllers.openai import _chat_body, _text_body


def render(
    endpoint: str, model: str, job_id: str, end: JobCompleted | JobFailed, ended_at: int
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the answer to a line run as job `job_id` that ended with `end`."""
    if isinstance(end, JobFailed):
        error = _failure(end)
        return error.status, error.body()
    started = Started(job_id=job_id, created=ended_at, model=model, follower=None, t0=0.0)
    if endpoint == "/v1/chat/completions":
        return 200, _chat_body(started, f"chatcmpl-{job_id}", end).model_dump(mode="json")
    return 200, _text_body(started, f"cmpl-{job_id}", end).model_dump(mode="json")
