"""OpenAI's streaming wire format: Server-Sent Events of completion chunks, ending in [DONE]."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from events.inference import TokenLogprob, Usage
from gateway import answers
from gateway.answers import CallDelta

Kind = Literal["chat", "text"]
DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    """One SSE event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class ChunkWriter:
    """Chunks of one streamed completion (`kind` chat or text) as SSE events."""

    kind: Kind
    id: str
    created: int
    model: str

    @property
    def object(self) -> str:
        """OpenAI's object name for a chunk of this kind."""
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _wrap(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        head = {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        return event({**head, "choices": choices, **more})

    def text(
        self,
        text: str | None,
        *,
        finish_reason: str | None = None,
        first: bool = False,
        index: int = 0,
        logprobs: tuple[TokenLogprob, ...] | None = None,
        offset: int = 0,
        calls: Sequence[CallDelta] = (),
    ) -> bytes:
        """A chunk of choice `index`: new text (at `offset` in the answer), its tokens'
        `logprobs`, new arguments of its tool calls, and/or the finish reason.

        The first chat chunk of each choice names the role.
        """
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [answers.call_delta(c) for c in calls]
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": answers.chat_logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        else:
            choice = {
                "index": index,
                "text": text or "",
                "logprobs": answers.text_logprobs(logprobs, offset),
                "finish_reason": finish_reason,
            }
        return self._wrap([choice])

    def usage(self, usage: Usage) -> bytes:
        """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
        return self._wrap(
            [],
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        )
