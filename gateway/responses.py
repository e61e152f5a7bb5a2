"""A job's answer as the Responses API gives it: the whole `response` object, and its stream of
typed events (`response.created` ... `response.output_text.delta` ... `response.completed`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from events.jobs import JobCompleted
from events.tools import ToolCall
from gateway import completions
from gateway.completions import Ended, Started
from gateway.runtime import Gateway
from gateway.schemas.responses import ResponseRequest


def skeleton(started: Started, request: ResponseRequest) -> dict[str, Any]:
    """The response object's fields that do not depend on the answer."""
    return {
        "id": f"resp_{started.job_id}",
        "object": "response",
        "created_at": started.created,
        "model": started.model,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": (
            request.tool_choice.model_dump()
            if request.tool_choice is not None and not isinstance(request.tool_choice, str)
            else request.tool_choice or "auto"
        ),
        "tools": [t.model_dump(exclude_none=True) for t in request.tools or ()],
        "text": request.text.model_dump(by_alias=True, exclude_none=True)
        if request.text
        else {"format": {"type": "text"}},
        "store": False,
        "user": request.user,
        "metadata": (request.model_extra or {}).get("metadata") or {},
        "output": [],
        "usage": None,
    }


def message_item(job_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """The answer's text as an output message."""
    return {
        "type": "message",
        "id": f"msg_{job_id}",
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" else [],
    }


def call_item(job_id: str, k: int, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    """A tool call as an output item."""
    return {
        "type": "function_call",
        "id": f"fc_{job_id}_{k}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
        "status": status,
    }


def finished(
    base: dict[str, Any], done: JobCompleted, items: list[dict[str, Any]]
) -> dict[str, Any]:
    """The whole response, once its job completed."""
    cut = done.finish_reason == "length"
    return {
        **base,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": items,
        "usage": {
            "input_tokens": done.usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": done.usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": done.usage.total_tokens,
        },
    }


def whole(started: Started, request: ResponseRequest, done: JobCompleted) -> dict[str, Any]:
    """The response of a completed job, answered at once."""
    items = (
        [message_item(started.job_id, done.output)] if done.output or not done.tool_calls else []
    )
    items += [call_item(started.job_id, k, c) for k, c in enumerate(done.tool_calls)]
    return finished(skeleton(started, request), done, items)


async def events(gw: Gateway, started: Started, request: ResponseRequest) -> AsyncIterator[bytes]:
    """The response as the Responses API streams it; a client that goes away cancels the job."""
    base = skeleton(started, request)
    out = _Events()
    job = started.job_id
    yield out.send("response.created", response=base)
    yield out.send("response.in_progress", response=base)
    msg = f"msg_{job}"
    text = ""
    at: dict[str, int] = {}  # item id -> its output_index, in the order items were opened
    async with contextlib.aclosing(completions.deltas(gw, started)) as feed:
        async for d in feed:
            if isinstance(d, Ended):
                if d.error is not None:
                    err = d.error.body()["error"]
                    failed = {
                        **base,
                        "status": "failed",
                        "error": {"code": err["code"], "message": err["message"]},
                    }
                    yield out.send("response.failed", response=failed)
                    return
                done = d.completed
                assert done is not None
                if msg in at or not done.tool_calls:
                    if msg not in at:
                        at[msg] = len(at)
                        for chunk in _open(out, msg, job, at[msg]):
                            yield chunk
                    for chunk in _close(out, msg, job, text, at[msg]):
                        yield chunk
                items: dict[int, dict[str, Any]] = {}
                if msg in at:
                    items[at[msg]] = message_item(job, text)
                for k, call in enumerate(done.tool_calls):
                    item = call_item(job, k, call)
                    index = at[item["id"]]
                    yield out.send(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        arguments=call.arguments,
                    )
                    yield out.send("response.output_item.done", output_index=index, item=item)
                    items[index] = item
                ordered = [items[i] for i in sorted(items)]
                whole = finished(base, done, ordered)
                kind = (
                    "response.incomplete"
                    if whole["status"] == "incomplete"
                    else "response.completed"
                )
                yield out.send(kind, response=whole)
                return
            if d.index != 0:
                continue  # one answer (the Responses API has no `n`)
            if d.text:
                if msg not in at:
                    at[msg] = len(at)
                    for chunk in _open(out, msg, job, at[msg]):
                        yield chunk
                text += d.text
                yield out.send(
                    "response.output_text.delta",
                    item_id=msg,
                    output_index=at[msg],
                    content_index=0,
                    delta=d.text,
                    logprobs=[],
                )
            for c in d.calls:
                part = c.call
                item_id = f"fc_{job}_{part.index}"
                if item_id not in at:
                    at[item_id] = len(at)
                    opened = ToolCall(id=part.id, name=part.name, arguments="")
                    yield out.send(
                        "response.output_item.added",
                        output_index=at[item_id],
                        item=call_item(job, part.index, opened, "in_progress"),
                    )
                if c.arguments:
                    yield out.send(
                        "response.function_call_arguments.delta",
                        item_id=item_id,
                        output_index=at[item_id],
                        delta=c.arguments,
                    )


class _Events:
    """Numbered SSE events of one response."""

    def __init__(self) -> None:
        self.seq = 0

    def send(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _open(out: _Events, msg: str, job_id: str, index: int) -> list[bytes]:
    where = {"item_id": msg, "output_index": index, "content_index": 0}
    return [
        out.send(
            "response.output_item.added",
            output_index=index,
            item=message_item(job_id, "", "in_progress"),
        ),
        out.send("response.content_part.added", **where, part=_text_part("")),
    ]


def _close(out: _Events, msg: str, job_id: str, text: str, index: int) -> list[bytes]:
    where = {"item_id": msg, "output_index": index, "content_index": 0}
    return [
        out.send("response.output_text.done", **where, text=text, logprobs=[]),
        out.send("response.content_part.done", **where, part=_text_part(text)),
        out.send("response.output_item.done", output_index=index, item=message_item(job_id, text)),
    ]
