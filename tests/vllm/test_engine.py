"""The vLLM engine in this process, loaded once for the module: streaming, usage, sampling,
abort, resume and health, against vLLM's own counts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema_rs
import psutil
import pytest
import pytest_asyncio

from events.errors import EngineError
from events.inference import ChatMessage, Prompt, SamplingParams
from events.tools import Function, Tool
from services.engines.protocol import Chunk, GenerationRequest
from services.engines.vllm_engine import VllmEngine
from services.settings import Settings
from tests.vllm.support import MODEL, vllm_settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

CHAT = Prompt(messages=(ChatMessage(role="user", content="Count from one to five."),))
TEXT = Prompt(text="The quick brown fox")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model: Path) -> AsyncIterator[VllmEngine]:
    s = vllm_settings(Settings(), tiny_model)
    engine = VllmEngine(s, str(tiny_model), (MODEL,))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


_ids = iter(range(1_000_000))


async def run(
    engine: VllmEngine,
    prompt: Prompt = CHAT,
    *,
    resume: str = "",
    ids: tuple[int, ...] | None = None,
    **params: object,
) -> list[Chunk]:
    request = GenerationRequest(
        f"r{next(_ids)}",
        MODEL,
        prompt,
        SamplingParams.model_validate({"temperature": 0, **params}),
        resume=resume,
        resume_token_ids=ids,
    )
    return [c async for c in engine.generate(request)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def ids_of(chunks: list[Chunk]) -> tuple[int, ...]:
    return tuple(i for c in chunks for i in c.token_ids or ())


async def test_deltas_join_to_the_text_of_exactly_the_tokens_vllm_counted(
    engine: VllmEngine,
) -> None:
    for prompt in (CHAT, TEXT):
        chunks = await run(engine, prompt, max_tokens=40)
        last = chunks[-1]
        assert len([c for c in chunks if c.text]) > 1  # streamed, not one lump
        assert last.finish_reason == "length" and last.usage is not None
        ids = ids_of(chunks)
        assert last.usage.completion_tokens == len(ids) == sum(c.tokens for c in chunks) == 40
        assert text_of(chunks) == engine._decode(ids)
        assert last.usage.prompt_tokens == len(
            engine.prompt_ids(GenerationRequest("x", MODEL, prompt, SamplingParams()))
        )
    # the chat template wrapped the message: more tokens than the message alone
    chat_usage = (await run(engine, CHAT, max_tokens=1))[-1].usage
    assert chat_usage is not None
    assert chat_usage.prompt_tokens > len(engine._encode("Count from one to five.", special=False))


async def test_temperature_zero_is_deterministic_even_batched(engine: VllmEngine) -> None:
    alone = text_of(await run(engine, max_tokens=60))
    together = await asyncio.gather(*(run(engine, max_tokens=60) for _ in range(4)))
    assert [text_of(c) for c in together] == [alone] * 4


async def test_a_stop_string_ends_the_answer_before_it(engine: VllmEngine) -> None:
    full = text_of(await run(engine, max_tokens=80))
    stop = next(full[i : i + 3] for i in range(20, 60) if full.find(full[i : i + 3]) == i)
    chunks = await run(engine, max_tokens=80, stop=[stop])
    assert chunks[-1].finish_reason == "stop"
    assert text_of(chunks) == full[: full.index(stop)]


async def test_a_seed_makes_sampling_repeatable(engine: VllmEngine) -> None:
    a, b, c = [
        text_of(await run(engine, max_tokens=30, temperature=1.0, seed=seed)) for seed in (7, 7, 8)
    ]
    assert a == b and a != c


async def test_abort_frees_the_request_in_vllm(engine: VllmEngine) -> None:
    request = GenerationRequest("long", MODEL, CHAT, SamplingParams(max_tokens=1500, temperature=0))
    stream = engine.generate(request)
    first = await anext(stream)
    assert first.text or first.token_ids
    assert engine.running() == 1  # vLLM's own count
    await engine.abort("long")
    rest = [c async for c in stream]
    assert rest[-1].finish_reason == "abort"
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens < 1500
    assert engine.running() == 0


@pytest.mark.parametrize("cut", [1, 9, 31])
async def test_a_resume_from_token_ids_gives_the_uninterrupted_answer(
    engine: VllmEngine, cut: int
) -> None:
    whole = await run(engine, max_tokens=64)
    ids = ids_of(whole)
    head = engine._decode(ids[:cut])
    rest = await run(engine, resume=head, ids=ids[:cut], max_tokens=64 - cut)
    assert head + text_of(rest) == text_of(whole)
    assert ids[:cut] + ids_of(rest) == ids
    usage, total = rest[-1].usage, whole[-1].usage
    assert usage is not None and total is not None
    assert usage.completion_tokens == 64 - cut  # only the new tokens
    assert usage.prompt_tokens == total.prompt_tokens  # the prompt, not prompt + resumed answer


async def test_text_the_ids_held_back_from_readers_comes_first_on_resume(
    engine: VllmEngine,
) -> None:
    whole = await run(engine, TEXT, max_tokens=40)
    ids = ids_of(whole)
    head = engine._decode(ids[:20])
    # a detokenizer held back the end of the streamed ids' text (a possible stop string)
    rest = await run(engine, TEXT, resume=head[:-3], ids=ids[:20], max_tokens=20)
    assert head[:-3] + text_of(rest) == text_of(whole)
    assert rest[0].text.startswith(head[-3:])


async def test_ids_that_do_not_match_the_text_fall_back_to_the_text(engine: VllmEngine) -> None:
    whole = await run(engine, TEXT, max_tokens=20)
    ids = ids_of(whole)
    rest = await run(engine, TEXT, resume="Somewhere else", ids=ids[:5], max_tokens=10)
    assert rest[-1].finish_reason == "length" and rest[-1].usage is not None
    assert rest[-1].usage.completion_tokens == 10
    assert not text_of(rest).startswith(engine._decode(ids[5:10]))  # not from the ids


BOUNDED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
ADD = Tool(
    function=Function(
        name="add",
        parameters={
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 999},
                "b": {"type": "integer", "minimum": 0, "maximum": 999},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    )
)
ASK = Prompt(messages=(ChatMessage(role="user", content="Add two numbers."),), tools=(ADD,))


def valid(schema: dict[str, object], text: str) -> bool:
    return bool(jsonschema_rs.validator_for(schema).is_valid(json.loads(text)))


async def test_a_json_schema_constrains_even_a_random_model(engine: VllmEngine) -> None:
    for seed in range(3):
        chunks = await run(
            engine,
            max_tokens=128,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": BOUNDED},
        )
        assert chunks[-1].finish_reason == "stop", text_of(chunks)
        assert valid(BOUNDED, text_of(chunks)), text_of(chunks)
    obj = await run(engine, max_tokens=64, response_format={"type": "json_object"})
    assert isinstance(json.loads(text_of(obj)), dict)


async def test_forced_tool_calls_are_constrained_and_parsed(engine: VllmEngine) -> None:
    # one call: a random model asked for any number keeps calling until max_tokens
    for choice in ({"mode": "required", "parallel": False}, {"mode": "function", "name": "add"}):
        chunks = await run(engine, ASK, max_tokens=96, temperature=1.0, seed=4, tool_choice=choice)
        last = chunks[-1]
        assert last.finish_reason == "tool_calls"
        assert "".join(c.text for c in chunks if c.call is None) == ""  # no answer text
        (call,) = last.tool_calls
        streamed = [c for c in chunks if c.call is not None]
        if choice["mode"] == "function":  # a named call's arguments stream as they are made
            assert len(streamed) > 1 and {c.call.id for c in streamed if c.call} == {call.id}
            assert "".join(c.text for c in streamed) == call.arguments
        assert call.name == "add" and valid(ADD.function.parameters or {}, call.arguments)
        assert last.usage is not None and last.usage.completion_tokens > 0
    with pytest.raises(EngineError, match="tool-call parser") as auto:
        await run(engine, ASK, max_tokens=8)
    assert auto.value.kind == "invalid_request" and not auto.value.retriable


async def test_logprobs_penalties_and_logit_bias_reach_vllm(engine: VllmEngine) -> None:
    chunks = await run(engine, max_tokens=12, logprobs=True, top_logprobs=3)
    lps = [lp for c in chunks for lp in c.logprobs or ()]
    assert len(lps) == len(ids_of(chunks)) == 12
    assert "".join(lp.token for lp in lps) == text_of(chunks)
    for lp in lps:
        assert lp.logprob <= 0 and 1 <= len(lp.top_logprobs) <= 3
        tops = [t.logprob for t in lp.top_logprobs]
        assert tops == sorted(tops, reverse=True) and lp.logprob <= tops[0] + 1e-6
    plain = ids_of(await run(engine, max_tokens=24))
    favoured = plain[3]
    forced = ids_of(await run(engine, max_tokens=24, logit_bias={favoured: 100}))
    assert set(forced) == {favoured}
    banned = ids_of(await run(engine, max_tokens=24, logit_bias={favoured: -100}))
    assert favoured not in banned
    longer = ids_of(await run(engine, max_tokens=160))
    assert len(set(longer)) < len(longer)  # greedy decoding repeats tokens: penalties bite
    penalised = ids_of(await run(engine, max_tokens=160, frequency_penalty=2.0))
    assert penalised != longer


async def test_a_pooling_model_embeds(tiny_model: Path) -> None:
    s = vllm_settings(
        Settings(),
        tiny_model,
        vllm_engine_args={"enforce_eager": True, "runner": "pooling", "convert": "embed"},
    )
    pooled = VllmEngine(s, str(tiny_model), (MODEL,))
    await pooled.start()
    try:
        assert pooled.capabilities()[MODEL] == ("embeddings",)
        texts = ("The quick brown fox", "Hello, world!", "The quick brown fox")
        request = GenerationRequest(
            "e1", MODEL, Prompt(texts=texts), SamplingParams(max_tokens=1, embed=True)
        )
        got = await pooled.embed(request)
        assert len(got.vectors) == 3 and got.prompt_tokens > 3
        assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in got.vectors)
        assert got.vectors[0] == got.vectors[2] != got.vectors[1]
        with pytest.raises(EngineError, match="dimensions"):
            await pooled.embed(
                GenerationRequest(
                    "e2",
                    MODEL,
                    Prompt(texts=("x",)),
                    SamplingParams(max_tokens=1, embed=True, dimensions=8),
                )
            )
    finally:
        await pooled.close()


async def test_health_fails_when_vllm_dies(engine: VllmEngine) -> None:
    """Last in the module: it kills the engine."""
    await engine.check_health()
    for child in psutil.Process().children(recursive=True):
        child.kill()

    async def until_unhealthy() -> None:
        for _ in range(100):
            await engine.check_health()
            await asyncio.sleep(0.1)

    with pytest.raises(EngineError, match="unhealthy"):
        await until_unhealthy()
