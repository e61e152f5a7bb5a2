"""What the vLLM engine asks of vLLM for one request, and how it reads the answer back (pure: no
vllm import, so the unit tests cover it without vLLM).

- Sampling: dim's parameters as vLLM's `SamplingParams` keywords (penalties, `logit_bias` with
  int keys, `logprobs` = how many alternatives).
- Structured outputs: `response_format` json_schema / json_object, and a forced tool call, as
  vLLM's `StructuredOutputsParams` keywords. A forced call is constrained the way vLLM's own
  server does it (`vllm/tool_parsers/utils.py`): a named tool's output is its arguments object; a
  required one is a JSON array of `{"name", "parameters"}` (at most one when parallel calls are
  off), parsed back into calls here.
- Logprobs: vLLM's per-token `{token_id: Logprob}` maps as OpenAI's entries.
- Chat templates get the messages and tools in OpenAI's shape, a call's arguments as a mapping
  (what templates expect; vLLM's server does the same).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from events.inference import Prompt, SamplingParams, TokenLogprob, TopLogprob
from events.tools import ToolCall, ToolChoice
from services.engines import openai_wire


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vLLM `SamplingParams` keyword arguments for one task.

    n is always 1: dim plans one task per requested choice, so choices spread over nodes.
    """
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.presence_penalty:
        kwargs["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        kwargs["frequency_penalty"] = params.frequency_penalty
    if params.logit_bias:
        kwargs["logit_bias"] = {int(k): float(v) for k, v in params.logit_bias.items()}
    if params.logprobs:
        kwargs["logprobs"] = params.top_logprobs  # the sampled token's always comes too
    return kwargs


def forced_choice(prompt: Prompt, params: SamplingParams) -> ToolChoice | None:
    """The tool choice that forces a call, if the request has one."""
    choice = params.tool_choice
    return choice if prompt.tools and choice is not None and choice.forced else None


def structured_kwargs(prompt: Prompt, params: SamplingParams) -> dict[str, Any] | None:
    """`StructuredOutputsParams` keyword arguments, or None for free text."""
    choice = forced_choice(prompt, params)
    if choice is not None:
        return {"json": forced_schema(prompt, choice)}
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_schema":
        return {"json": fmt.json_schema or {}}
    if fmt is not None and fmt.type == "json_object":
        return {"json_object": True}
    return None


def forced_schema(prompt: Prompt, choice: ToolChoice) -> dict[str, Any]:
    """The JSON schema a forced call's output follows (vLLM's server builds the same)."""
    if choice.mode == "function":
        tool = next(t for t in prompt.tools if t.function.name == choice.name)
        return tool.function.schema_of_arguments()
    defs: dict[str, Any] = {}
    branches = []
    for t in prompt.tools:
        schema = dict(t.function.schema_of_arguments())
        defs.update(schema.pop("$defs", {}))
        branches.append(
            {
                "properties": {
                    "name": {"type": "string", "enum": [t.function.name]},
                    "parameters": schema,
                },
                "required": ["name", "parameters"],
            }
        )
    out: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "anyOf": branches},
    }
    if not choice.parallel:
        out["maxItems"] = 1
    if defs:
        out["$defs"] = defs
    return out


def forced_calls(choice: ToolChoice, text: str, call_id: str | None = None) -> tuple[ToolCall, ...]:
    """The calls a forced answer made; none if it does not parse (cut short by max_tokens).
    `call_id`: the id a named call was streamed under."""
    if choice.mode == "function":
        return (ToolCall(id=call_id or new_call_id(), name=choice.name or "", arguments=text),)
    try:
        calls = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(calls, list):
        return ()
    return tuple(
        ToolCall(
            id=new_call_id(),
            name=str(c["name"]),
            arguments=json.dumps(c.get("parameters", {}), ensure_ascii=False),
        )
        for c in calls
        if isinstance(c, dict) and "name" in c
    )


def logprobs_of(
    token_ids: Sequence[int], positions: Sequence[Mapping[int, Any]] | None, top: int
) -> tuple[TokenLogprob, ...] | None:
    """OpenAI's entries for vLLM's logprobs of `token_ids` (each position maps token ids to
    `Logprob(logprob, rank, decoded_token)`; the sampled token is always among them)."""
    if positions is None:
        return None
    out = []
    for tid, position in zip(token_ids, positions, strict=False):
        chosen = position.get(tid)
        ranked = sorted(position.values(), key=lambda lp: lp.rank or 0)[:top]
        token = _text(chosen)
        out.append(
            TokenLogprob(
                token=token,
                logprob=float(chosen.logprob) if chosen is not None else 0.0,
                bytes=tuple(token.encode()),
                top_logprobs=tuple(
                    TopLogprob(
                        token=_text(lp), logprob=float(lp.logprob), bytes=tuple(_text(lp).encode())
                    )
                    for lp in ranked
                ),
            )
        )
    return tuple(out)


def template_inputs(prompt: Prompt) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools a chat template is given."""
    messages = []
    for m in prompt.messages or ():
        wire = openai_wire.message(m)
        for call in wire.get("tool_calls", ()):
            fn = call["function"]
            try:
                args = json.loads(fn["arguments"])
            except ValueError:
                args = {}
            fn["arguments"] = args if isinstance(args, dict) else {}
        messages.append(wire)
    return messages, openai_wire.tools(prompt) or None


def _text(lp: Any) -> str:
    return str(getattr(lp, "decoded_token", "") or "") if lp is not None else ""


def new_call_id() -> str:
    """A tool call's id, as vLLM's server makes them."""
    return f"call_{uuid.uuid4().hex[:24]}"
