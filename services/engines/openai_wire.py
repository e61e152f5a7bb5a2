"""dim's request and answer pieces in OpenAI's wire shapes, for engines that speak them: the
OpenAI-upstream engine's request bodies and streamed deltas, and the messages and tools a chat
template is given (vLLM)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from events.inference import ChatMessage, Prompt, SamplingParams, TokenLogprob, TopLogprob
from events.tools import CallPart, ToolCall, ToolChoice


def message(m: ChatMessage) -> dict[str, Any]:
    """One chat message as OpenAI's API takes it."""
    out: dict[str, Any] = {"role": m.role}
    if m.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        parts += [
            {"type": "image_url", "image_url": {"url": i.url, "detail": i.detail}} for i in m.images
        ]
        out["content"] = parts
    else:
        out["content"] = m.content if m.content or not m.tool_calls else None
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def tools(prompt: Prompt) -> list[dict[str, Any]]:
    """The prompt's tools as OpenAI's `tools`."""
    return [t.model_dump(exclude_none=True) for t in prompt.tools]


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    """OpenAI's `tool_choice`."""
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def chat_params(p: SamplingParams) -> dict[str, Any]:
    """The chat request fields beyond the basic sampling ones, as set (defaults left out)."""
    body: dict[str, Any] = _common(p)
    if p.logprobs:
        body["logprobs"] = True
        if p.top_logprobs:
            body["top_logprobs"] = p.top_logprobs
    fmt = p.response_format
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec: dict[str, Any] = {"name": fmt.name or "answer", "schema": fmt.json_schema or {}}
        if fmt.strict:
            spec["strict"] = True
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    if p.tool_choice is not None:
        body["tool_choice"] = tool_choice(p.tool_choice)
        if not p.tool_choice.parallel:
            body["parallel_tool_calls"] = False
    return body


def text_params(p: SamplingParams) -> dict[str, Any]:
    """The legacy completions fields beyond the basic sampling ones, as set."""
    body = _common(p)
    if p.logprobs:
        body["logprobs"] = p.top_logprobs
    return body


def _common(p: SamplingParams) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if p.presence_penalty:
        body["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        body["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in p.logit_bias.items()}
    return body


@dataclass(slots=True)
class CallsSoFar:
    """Tool calls assembled from streamed `delta.tool_calls` fragments, by index."""

    ids: dict[int, str] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    arguments: dict[int, list[str]] = field(default_factory=dict)

    def add(self, fragments: list[Any]) -> list[tuple[int, str]]:
        """Take one delta's fragments; the new arguments, by call index."""
        new: list[tuple[int, str]] = []
        for k, frag in enumerate(fragments):
            if not isinstance(frag, Mapping):
                continue
            i = int(frag.get("index", k))
            if frag.get("id"):
                self.ids[i] = str(frag["id"])
            fn = frag.get("function") or {}
            if isinstance(fn, Mapping):
                if fn.get("name"):
                    self.names[i] = str(fn["name"])
                if fn.get("arguments"):
                    self.arguments.setdefault(i, []).append(str(fn["arguments"]))
                    new.append((i, str(fn["arguments"])))
        return new

    def part(self, index: int) -> CallPart | None:
        """The call at `index`, once its id and name are known (else its arguments wait for
        the answer's end)."""
        if index in self.ids and index in self.names:
            return CallPart(index=index, id=self.ids[index], name=self.names[index])
        return None

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls, in index order."""
        return tuple(
            ToolCall(
                id=self.ids.get(i, f"call_{i}"),
                name=self.names[i],
                arguments="".join(self.arguments.get(i, ())),
            )
            for i in sorted(self.names)
        )


def logprobs_of(choice: Mapping[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """A streamed choice's logprobs, chat shape (`content`) or legacy (`tokens`, ...)."""
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        return None
    content = lp.get("content")
    if isinstance(content, list):
        return tuple(TokenLogprob.model_validate(c) for c in content)
    tokens = lp.get("tokens")
    if isinstance(tokens, list):
        values = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        return tuple(
            TokenLogprob(
                token=t,
                logprob=float(values[i] if i < len(values) and values[i] is not None else 0.0),
                top_logprobs=tuple(
                    TopLogprob(token=k, logprob=float(v))
                    for k, v in ((tops[i] or {}) if i < len(tops) else {}).items()
                ),
            )
            for i, t in enumerate(tokens)
        )
    return None
