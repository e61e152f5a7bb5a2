"""An answer's extras in OpenAI's shapes: tool calls, and logprobs as chat (`content` entries) and
legacy completions (`tokens`, `token_logprobs`, ...) report them — for whole bodies and chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from events.inference import TokenLogprob
from events.tools import ToolCall


def tool_calls(calls: Sequence[ToolCall], *, streamed: bool = False) -> list[dict[str, Any]]:
    """`message.tool_calls` (with `streamed`: the entries of a `delta.tool_calls`, indexed)."""
    out = []
    for i, call in enumerate(calls):
        entry: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        out.append({"index": i, **entry} if streamed else entry)
    return out


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
