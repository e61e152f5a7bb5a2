"""A batch's output and error files, line by line, from how each line's job ended (pure).

The output file has one line per request that succeeded, the error file one per request that
failed or was cancelled, in input order, each as OpenAI writes them:
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``. The body
is what the endpoint itself answers (a ``chat.completion``, or its error), rendered by the
gateway's code (`Render`, given to the runner by the `dim` command).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from events.batches import BatchLine
from events.jobs import JobCancelled, JobCompleted, JobFailed

# (endpoint, model, job id, the job's end, when it ended in unix seconds) -> (status, body)
Render = Callable[[str, str, str, JobCompleted | JobFailed, int], tuple[int, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line's place in the batch's files."""

    ok: bool  # the output file (else the error file)
    text: bytes  # the JSONL line, newline included


def line_result(
    endpoint: str,
    line: BatchLine,
    job_id: str,
    end: JobCompleted | JobFailed | JobCancelled,
    ended_at: int,
    render: Render,
) -> LineResult:
    """Where line `line`, run as job `job_id` that ended with `end`, goes, and as what."""
    record: dict[str, Any] = {"id": f"batch_req_{job_id}", "custom_id": line.custom_id}
    if isinstance(end, JobCancelled):
        record |= {"response": None, "error": {"code": "batch_cancelled", "message": end.reason}}
        ok = False
    else:
        status, body = render(endpoint, line.model, job_id, end, ended_at)
        record |= {
            "response": {"status_code": status, "request_id": job_id, "body": body},
            "error": None,
        }
        ok = status == 200
    return LineResult(ok, json.dumps(record, ensure_ascii=False).encode() + b"\n")
