"""No request field is silently ignored: what the OpenAI-compatible endpoints do with every field
a client may send that dim does not serve yet.

A field dim serves is a field of the request model (`gateway/protocol.py`). Any other field is
looked up here: sent with its neutral value (the one that asks for nothing: a zero penalty, no
tools, `response_format` text, ...) it changes nothing and passes; a field dim truly does not use
(`IGNORED`, listed in docs/api.md) passes whatever its value; anything else is a 400
`unsupported_parameter` naming the field — not a 200 that silently did something else (the
probe's `tool_choice: "required"` answered with prose). Unknown names (a typo, a field of
another API) are a 400 too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

# Fields of OpenAI's chat and completions requests that no engine of dim serves, with the
# test of a value that asks for nothing (so sending the default is not an error), and what the
# client should know.
_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "functions": (lambda v: not v, "the deprecated functions API is not served: use tools"),
    "function_call": (
        lambda v: v in (None, "none", "auto"),
        "the deprecated function_call is not served: use tool_choice",
    ),
    "store": (lambda v: v in (None, False), "dim does not store completions for later retrieval"),
    "modalities": (lambda v: v in (None, ["text"]), "only text output is served"),
    "audio": (lambda v: v is None, "audio output is not served"),
    "prediction": (lambda v: v is None, "predicted outputs are not served"),
    "reasoning_effort": (lambda v: v is None, "reasoning_effort is not served"),
    "verbosity": (lambda v: v is None, "verbosity is not served"),
    "web_search_options": (lambda v: v is None, "web search is not served"),
    "echo": (lambda v: v in (None, False), "echo is not served"),
    "best_of": (lambda v: v in (None, 1), "best_of is not served (use n)"),
    "suffix": (lambda v: v is None, "suffix (insertion) is not served"),
}

# Fields dim accepts with any value and does not use: hints and labels for OpenAI's own
# services (docs/api.md lists them).
IGNORED = frozenset({"metadata", "service_tier", "prompt_cache_key", "safety_identifier"})

# Fields of a chat message, beyond role and content, and of a content part.
_MESSAGE_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "function_call": (
        lambda v: v is None,
        "the deprecated function_call is not served: use tool_calls",
    ),
    "refusal": (lambda v: v is None, "a refusal in an assistant message is not served"),
    "audio": (lambda v: v is None, "audio is not served"),
}


def unserved(body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, why) for every field of a request body that dim would not honour: the
    known ones first, in a fixed order (`tools` before `tool_choice`), then unknown names."""
    for name, (neutral, why) in _NEUTRAL.items():
        if name in body and not neutral(body[name]):
            yield name, why
    for name in body:
        if name not in _NEUTRAL and name not in IGNORED:
            yield name, f"unknown parameter {name!r}"


def unserved_in_message(index: int, message: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, why) for what a chat message carries that dim would not honour."""
    for name, value in message.items():
        rule = _MESSAGE_NEUTRAL.get(name)
        where = f"messages.{index}.{name}"
        if rule is None:
            yield where, f"unknown message field {name!r}"
        elif not rule[0](value):
            yield where, rule[1]
