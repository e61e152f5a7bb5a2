"""An answer's extras in OpenAI's shapes: tool calls, and logprobs as chat (`content` entries) and
legacy completions (`tokens`, `token_logprobs`, ...) report them — for whole bodies and chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from events.inference import TokenLogprob
from events.tools import CallPart, ToolCall


@dataclass(frozen=True, slots=True)
class CallDelta:
    """New arguments of one tool call; the call's first delta names it (id and function)."""

    call: CallPart
    arguments: str
    first: bool


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """`message.tool_calls`."""
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


def call_delta(delta: CallDelta) -> dict[str, Any]:
    """One entry of a streamed `delta.tool_calls`: the call's first names it (id, type,
    function name), every one carries new arguments — as OpenAI streams them."""
    part = delta.call
    if delta.first:
        return {
            "index": part.index,
            "id": part.id,
            "type": "function",
            "function": {"name": part.name, "arguments": delta.arguments},
        }
    return {"index": part.index, "function": {"arguments": delta.arguments}}


def chat_logprobs(lps: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's `logprobs` (None when not asked for)."""
    if lps is None:
        return None
    return {"content": [lp.model_dump() for lp in lps], "refusal": None}


def text_logprobs(lps: Sequence[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """A text completion choice's `logprobs` (legacy shape); `offset`: where the first token's
    text starts in the answer."""
    if lps is None:
        return None
    offsets = []
    at = offset
    for lp in lps:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs} for lp in lps],
        "text_offset": offsets,
    }
