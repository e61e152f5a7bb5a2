"""What an engine can do for a model, and what a request needs of it.

A node advertises its capabilities per model in its record (`NodeRecord.capabilities`); a
request needs one for each field that asks for more than plain text (`needs`). The gateway
answers 400 naming the first field no live node of the model can honour, and tasks go only to
nodes that can (`services/registry/select.py`): a field is served or refused, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, get_args

from events.inference import Prompt, SamplingParams

Capability = Literal[
    "chat",
    "completions",
    "tools",
    "structured_outputs",
    "logprobs",
    "penalties",
    "logit_bias",
    "images",
    "embeddings",
]
BASIC: tuple[Capability, ...] = ("chat", "completions")  # what a node that says nothing serves
EVERY: tuple[Capability, ...] = get_args(Capability)  # the simulated engine's
# what a generating engine can do (an OpenAI-compatible upstream is taken to)
GENERATION: tuple[Capability, ...] = tuple(c for c in EVERY if c != "embeddings")


def needs(prompt: Prompt, params: SamplingParams) -> Iterator[tuple[str, Capability]]:
    """(request field, capability) for what the request needs: its kind (chat, completions,
    embeddings), then each field that asks for more than text."""
    if params.embed:
        yield "input", "embeddings"
    elif prompt.messages is not None:
        yield "messages", "chat"
    else:
        yield "prompt", "completions"
    if prompt.tools:
        yield "tools", "tools"
    if params.tool_choice is not None and params.tool_choice.mode != "none" and prompt.tools:
        yield "tool_choice", "tools"
    for i, m in enumerate(prompt.messages or ()):
        if m.tool_calls:
            yield f"messages.{i}.tool_calls", "tools"
        if m.tool_call_id is not None:
            yield f"messages.{i}.tool_call_id", "tools"
        if m.images:
            yield f"messages.{i}.content", "images"
    if params.response_format is not None and params.response_format.structured:
        yield "response_format", "structured_outputs"
    if params.logprobs:
        yield "logprobs", "logprobs"
    if params.presence_penalty:
        yield "presence_penalty", "penalties"
    if params.frequency_penalty:
        yield "frequency_penalty", "penalties"
    if params.logit_bias:
        yield "logit_bias", "logit_bias"


def needed(prompt: Prompt, params: SamplingParams) -> frozenset[str]:
    """The capabilities a request needs."""
    return frozenset(c for _, c in needs(prompt, params))
