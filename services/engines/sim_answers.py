"""What the simulated engine answers, as a pure function of the request: words drawn by its
seeded sampler, JSON for a structured output, or a tool call — each with the log probabilities
of the sampler that drew it.

The sampler draws each word from the vocabulary below (`VOCAB`; a token id is a position in it),
every word weighted by how often it appears in the word list, times ``exp(logit_bias)``, less
the presence and frequency penalties of the words drawn so far — OpenAI's formula over a
vocabulary of words. Its logprobs are that distribution's, so they are true of the sampler, not
made up. A request with no bias and no penalty draws exactly as it always did (the same text
for the same seed), so answers recorded by earlier versions stay reproducible.

Structured outputs and tool arguments come from `json_instance`: valid against the schema by
construction, deterministic per prompt and seed; they are constrained, so each of their tokens
has logprob 0. `tool_choice` auto calls a tool only when the last user turn names what it is
about (a word of its name that is not a verb: "weather" for `get_weather`) — a model deciding to
use the tool asked about — and never right after a tool's result, so a tool loop (call, result,
answer) runs as with a real model.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from events.errors import EngineError
from events.inference import Prompt, SamplingParams, TokenLogprob, TopLogprob
from events.tools import Tool, ToolCall
from services.engines import json_instance

# fmt: off
WORDS = (
    "the", "mesh", "routes", "every", "request", "to", "a", "node", "that", "serves", "its",
    "model", "and", "streams", "tokens", "back", "through", "the", "gateway", "while", "each",
    "event", "lands", "in", "the", "log", "so", "the", "history", "explains", "what", "happened",
    "workers", "pull", "tasks", "from", "subjects", "keep", "their", "batch", "full", "and",
    "report", "usage", "when", "they", "finish", "an", "orchestrator", "folds", "those",
    "events", "into", "jobs", "and", "projections", "keep", "read", "models", "fresh", "for",
    "clients", "that", "ask", "about", "status", "quotas", "and", "traces", "across", "every",
    "hop",
)
# fmt: on
VOCAB = tuple(sorted(set(WORDS)))  # token ids: positions in this tuple
_MULTIPLICITY = Counter(WORDS)
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_NAME_WORD = re.compile(r"[a-z0-9]+")
_VERBS = frozenset(
    [
        "get",
        "set",
        "put",
        "fetch",
        "find",
        "lookup",
        "look",
        "search",
        "list",
        "create",
        "make",
        "add",
        "update",
        "delete",
        "remove",
        "run",
        "call",
        "send",
        "read",
        "write",
        "check",
        "compute",
        "calculate",
        "query",
        "show",
    ]
)


@dataclass(frozen=True, slots=True)
class Answer:
    """The whole natural answer (before max_tokens and stops): its tokens, their logprobs when
    asked, and the tool call it makes instead of text (then `tokens` are its arguments)."""

    tokens: list[str]
    logprobs: list[TokenLogprob] | None = None
    tool_call: ToolCall | None = None


def rng_for(model: str, prompt: str, seed: int) -> random.Random:
    """The sampler's generator for one request."""
    digest = hashlib.blake2b(f"{model}\x00{seed}\x00{prompt}".encode(), digest_size=16).digest()
    return random.Random(digest)


def answer(model: str, prompt: Prompt, params: SamplingParams, seed: int) -> Answer:
    """What the simulated engine answers to `prompt`."""
    _check_bias(params)
    rendered = prompt.render()
    rng = rng_for(model, rendered, seed)
    tool = _tool_to_call(prompt, params)
    if tool is not None:
        args = json.dumps(_instance(tool.function.schema_of_arguments(), rng, "tools"))
        digest = hashlib.blake2b(f"{rendered}\x00{seed}".encode(), digest_size=12).hexdigest()
        call = ToolCall(id=f"call_{digest}", name=tool.function.name, arguments=args)
        return _constrained(pieces(args), params, call)
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_schema":
        text = json.dumps(_instance(fmt.json_schema or {}, rng, "response_format.json_schema"))
        return _constrained(pieces(text), params, None)
    if fmt is not None and fmt.type == "json_object":
        return _constrained(pieces(json.dumps(json_instance.json_object(rng, WORDS))), params, None)
    return _words(rng, params)


def pieces(text: str) -> list[str]:
    """`text` cut into the simulated tokenizer's tokens (words and marks, with the spaces
    before them); they join back to `text`."""
    out = _PIECE.findall(text)
    rest = text[sum(map(len, out)) :]
    return [*out[:-1], out[-1] + rest] if out and rest else out or ([text] if text else [])


def _instance(schema: dict[str, object], rng: random.Random, field: str) -> object:
    try:
        return json_instance.instance(schema, rng, words=WORDS)  # checks the schema first
    except json_instance.UnsupportedSchema as exc:
        raise EngineError(
            f"{field}: the simulated engine cannot honour this schema: {exc}",
            retriable=False,
            kind="invalid_request",
        ) from exc


def _tool_to_call(prompt: Prompt, params: SamplingParams) -> Tool | None:
    choice = params.tool_choice
    if not prompt.tools or (choice is not None and choice.mode == "none"):
        return None
    if choice is not None and choice.mode == "function":
        named = next((t for t in prompt.tools if t.function.name == choice.name), None)
        if named is None:
            raise EngineError(
                f"tool_choice: no tool is named {choice.name!r}",
                retriable=False,
                kind="invalid_request",
            )
        return named
    messages = prompt.messages or ()
    asked = set(
        _NAME_WORD.findall(
            next((m.content for m in reversed(messages) if m.role == "user"), "").lower()
        )
    )
    mentioned = next((t for t in prompt.tools if _topics(t.function.name) & asked), None)
    if choice is not None and choice.mode == "required":
        return mentioned or prompt.tools[0]
    if messages and messages[-1].role == "tool":
        return None  # auto, after a tool's result: answer it
    return mentioned


def _topics(name: str) -> set[str]:
    """What a function's name is about: its words (snake, kebab or camel case) but verbs."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").replace("-", " ")
    return {w for w in spaced.lower().split() if len(w) > 2 and w not in _VERBS}


def _constrained(tokens: list[str], params: SamplingParams, call: ToolCall | None) -> Answer:
    logprobs = None
    if params.logprobs:
        logprobs = [
            TokenLogprob(
                token=t,
                logprob=0.0,
                bytes=tuple(t.encode()),
                top_logprobs=(TopLogprob(token=t, logprob=0.0, bytes=tuple(t.encode())),)
                if params.top_logprobs
                else (),
            )
            for t in tokens
        ]
    return Answer(tokens, logprobs, call)


def _words(rng: random.Random, params: SamplingParams) -> Answer:
    """Sentences of words; with a bias or penalty, drawn from the weighted distribution."""
    weighted = bool(params.presence_penalty or params.frequency_penalty or params.logit_bias)
    want = params.logprobs
    length = rng.randint(12, 60)
    out: list[str] = []
    lps: list[TokenLogprob] = []
    drawn: Counter[str] = Counter()
    sentence = 0
    for i in range(length):
        dist = _distribution(drawn, params) if weighted or want else None
        if weighted:
            assert dist is not None
            word = rng.choices(VOCAB, weights=[dist[w] for w in VOCAB])[0]
        else:
            word = rng.choice(WORDS)
        drawn[word] += 1

        def shown(w: str, first: bool = sentence == 0, lead: str = " " if i else "") -> str:
            return lead + (w.capitalize() if first else w)

        out.append(shown(word))
        if want:
            assert dist is not None
            lps.append(_logprob(shown(word), dist[word], dist, shown, params.top_logprobs))
        sentence += 1
        if sentence >= rng.randint(6, 14) or i == length - 1:
            out.append(".")
            if want:
                lps.append(_logprob(".", 1.0, {".": 1.0}, lambda w: w, params.top_logprobs))
            sentence = 0
    return Answer(out, lps if want else None)


def _check_bias(params: SamplingParams) -> None:
    """Refuse a token id outside the vocabulary, whatever the answer (JSON is constrained: a
    bias changes nothing there, but an id it cannot have is still the client's mistake)."""
    for token in params.logit_bias:
        if token >= len(VOCAB):
            raise EngineError(
                f"logit_bias: token id {token} is not in the simulated vocabulary "
                f"(ids 0 to {len(VOCAB) - 1}, docs/engines.md)",
                retriable=False,
                kind="invalid_request",
            )


def _distribution(drawn: Counter[str], params: SamplingParams) -> dict[str, float]:
    """Each word's probability: its share of the word list, times exp(bias - penalties)."""
    weights = {}
    for token, word in enumerate(VOCAB):
        score = params.logit_bias.get(token, 0.0)
        if drawn[word]:
            score -= params.presence_penalty + params.frequency_penalty * drawn[word]
        weights[word] = _MULTIPLICITY[word] * math.exp(score)
    total = sum(weights.values())
    return {w: x / total for w, x in weights.items()}


def _logprob(
    token: str,
    p: float,
    dist: dict[str, float],
    shown: object,
    top: int,
) -> TokenLogprob:
    def lp(x: float) -> float:
        return math.log(x) if x > 0 else -9999.0

    alternatives: Sequence[TopLogprob] = ()
    if top:
        assert callable(shown)
        best = sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        alternatives = tuple(
            TopLogprob(token=shown(w), logprob=lp(q), bytes=tuple(shown(w).encode()))
            for w, q in best
        )
    return TokenLogprob(
        token=token, logprob=lp(p), bytes=tuple(token.encode()), top_logprobs=tuple(alternatives)
    )
