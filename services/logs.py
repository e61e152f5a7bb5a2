"""Log lines of every dim process: text for people (the default) or one JSON object per line
for log pipelines (``DIM_LOG_FORMAT=json``).

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``role``, ``message``, the
``request_id`` of the HTTP request being answered (the gateway sets it), the ``trace_id`` and
``span_id`` of the current OpenTelemetry span when one is recording, ``exception`` when there is
one, and the fields a line carries in its ``fields`` extra (the access log's method, path, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

# The id of the HTTP request this task answers, for every line logged while it does.
request_id: ContextVar[str | None] = ContextVar("dim_request_id", default=None)

FIELDS = "fields"  # `extra={FIELDS: {...}}`: structured fields of one line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "role": self.role,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            doc["request_id"] = rid
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            doc["trace_id"] = format(context.trace_id, "032x")
            doc["span_id"] = format(context.span_id, "016x")
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            doc.update((k, v) for k, v in fields.items() if k not in doc)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(level: str, fmt: str, role: str) -> None:
    """Send every logger's records to stderr as `fmt` says (``text``: ``time level role:
    message``; ``json``), replacing what was set up before."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role.split()[0]))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {role}: %(message)s", datefmt="%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
