"""A batch's input file, checked line by line before the batch is accepted, with the request
models and refusals of the endpoint the batch names (`gateway/protocol.py`), so a line runs
exactly as the same request sent to the endpoint would, or the batch fails saying which line
and why (OpenAI's ``errors.data``).

Each line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {...}}``;
`custom_id` is unique in the file, and `stream` is not asked for (a batch has no one to stream
to). Blank lines are skipped; line numbers count every line, from 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from events.batches import BatchLine, LineError
from events.capabilities import needed
from events.jobs import JobSubmitted
from gateway.errors import ApiError
from gateway.protocol import ChatCompletionRequest, CompletionRequest, _Sampling
from services.jobs.bounds import TooLarge, check_bounds

LISTED_ERRORS = 100  # errors a failed batch lists (the count of the rest is given)
MAX_CUSTOM_ID = 512
_LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})

# (model, max_tokens) -> None, or raises `ApiError` when the mesh cannot run it (as the endpoint)
Admit = Callable[[BatchLine], None]


@dataclass(slots=True)
class Parsed:
    """A checked input file: its requests, or why it was refused."""

    lines: list[BatchLine] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the line number of each of `lines`
    errors: list[LineError] = field(default_factory=list)
    more_errors: int = 0  # beyond `errors`

    def refuse(self, line: int, code: str, message: str, param: str | None = None) -> None:
        """Record that line `line` is refused."""
        if len(self.errors) < LISTED_ERRORS:
            self.errors.append(LineError(code=code, message=message, line=line, param=param))
        else:
            self.more_errors += 1


def parse_input(
    raw: bytes, endpoint: str, *, default_max_tokens: int, max_prompt_bytes: int
) -> Parsed:
    """Check every line of an input file for a batch on `endpoint` (what the mesh can run is
    `admit_lines`'s to check: it reads the live nodes)."""
    parsed = Parsed()
    seen: set[str] = set()
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            parsed.refuse(number, "invalid_json", f"not a JSON object: {exc}")
            continue
        if not isinstance(line, dict):
            parsed.refuse(number, "invalid_json", "each line is a JSON object")
            continue
        request = _check_line(parsed, number, line, endpoint, seen)
        if request is None:
            continue
        checked = _request(parsed, number, *request, endpoint, default_max_tokens)
        if checked is None:
            continue
        try:
            check_bounds(job_of(checked), max_prompt_bytes=max_prompt_bytes)
        except TooLarge as exc:
            parsed.refuse(number, "request_too_large", str(exc), _in_body(exc.param))
            continue
        parsed.lines.append(checked)
        parsed.numbers.append(number)
    if not parsed.lines and not parsed.errors:
        parsed.refuse(1, "empty_file", "the input file has no requests")
    return parsed


def admit_lines(parsed: Parsed, admit: Admit) -> None:
    """Refuse the lines `admit` says the mesh cannot run (once per model, max_tokens and the
    capabilities a line needs)."""
    verdicts: dict[tuple[str, int, frozenset[str]], ApiError | None] = {}
    kept: list[tuple[int, BatchLine]] = []
    for number, line in zip(parsed.numbers, parsed.lines, strict=True):
        ask = (line.model, line.params.max_tokens, needed(line.prompt, line.params))
        if ask not in verdicts:
            try:
                admit(line)
                verdicts[ask] = None
            except ApiError as exc:
                verdicts[ask] = exc
        refused = verdicts[ask]
        if refused is None:
            kept.append((number, line))
        else:
            code = refused.code or "invalid_request"
            parsed.refuse(number, code, refused.message, _in_body(refused.param))
    parsed.numbers = [n for n, _ in kept]
    parsed.lines = [line for _, line in kept]
    parsed.errors.sort(key=lambda e: e.line or 0)


def _check_line(
    parsed: Parsed, number: int, line: dict[str, Any], endpoint: str, seen: set[str]
) -> tuple[str, dict[str, Any]] | None:
    """The line's custom_id and body, if its envelope (custom_id, method, url) is right."""
    extra = sorted(set(line) - _LINE_FIELDS)
    custom_id = line.get("custom_id")
    if extra:
        parsed.refuse(number, "invalid_request", f"unknown field {extra[0]!r}", extra[0])
    elif not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        parsed.refuse(
            number,
            "invalid_request",
            f"custom_id is required: a string of 1 to {MAX_CUSTOM_ID} characters",
            "custom_id",
        )
    elif custom_id in seen:
        parsed.refuse(
            number, "duplicate_custom_id", f"custom_id {custom_id!r} is used twice", "custom_id"
        )
    elif line.get("method") != "POST":
        parsed.refuse(number, "invalid_request", "method must be POST", "method")
    elif line.get("url") != endpoint:
        parsed.refuse(
            number,
            "invalid_url",
            f"url {line.get('url')!r} is not the batch's endpoint {endpoint!r}",
            "url",
        )
    elif not isinstance(line.get("body"), dict):
        parsed.refuse(number, "invalid_request", "body must be a JSON object", "body")
    else:
        seen.add(custom_id)
        body: dict[str, Any] = line["body"]
        return custom_id, body
    if isinstance(custom_id, str):
        seen.add(custom_id)
    return None


def _request(
    parsed: Parsed,
    number: int,
    custom_id: str,
    body: dict[str, Any],
    endpoint: str,
    default_max_tokens: int,
) -> BatchLine | None:
    """The body checked as the endpoint checks it, as the job it becomes."""
    model: type[_Sampling] = (
        ChatCompletionRequest if endpoint == "/v1/chat/completions" else CompletionRequest
    )
    try:
        data = model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        parsed.refuse(number, "invalid_request", f"{where}: {first['msg']}", _in_body(where))
        return None
    refused = next(data.unserved(), None)
    if refused is not None:
        name, why = refused
        parsed.refuse(number, "unsupported_parameter", f"{name}: {why}", _in_body(name))
        return None
    if data.stream:
        parsed.refuse(number, "invalid_request", "a batch request cannot stream", "body.stream")
        return None
    if isinstance(data, ChatCompletionRequest):
        prompt = data.prompt()
    else:
        assert isinstance(data, CompletionRequest)
        prompt = data.text_prompt()
    # as the endpoint makes its job (gateway/controllers/openai.py `_respond`)
    return BatchLine(
        custom_id=custom_id,
        model=data.model,
        prompt=prompt,
        params=data.sampling(default_max_tokens),
        end_user=data.user,
    )


def job_of(line: BatchLine) -> JobSubmitted:
    """The job a line becomes (what the bounds of a job are checked on)."""
    return JobSubmitted(
        job_id="batch-line", model=line.model, prompt=line.prompt, params=line.params
    )


def _in_body(param: str | None) -> str | None:
    return f"body.{param}" if param else None
