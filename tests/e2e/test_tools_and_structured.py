"""Tools, structured outputs, logprobs, penalties, logit_bias, images and embeddings through the official
`openai` SDK against real processes (gateway, orchestrator, projector, a simulated worker): a
tool-calling loop whole and streamed, `chat.completions.parse` with a pydantic model, forced and
named tool calls whose arguments satisfy the tool's schema, logprobs true of the sampler."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Literal

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel

from events.bus import Bus
from events.jobs import TaskCompleted
from services.engines.sim_answers import VOCAB
from services.settings import Settings
from tests.mesh import job_events, sdk_mesh

MODEL = "sim-small"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}


class Step(BaseModel):
    explanation: str
    output: int


class Plan(BaseModel):
    title: str
    kind: Literal["trip", "talk"]
    steps: list[Step]
    note: str | None


@pytest.fixture
async def client(bus: Bus, settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_mesh(bus, settings, MODEL, DIM_SIM_TOKENS_PER_S="2000") as c:
        yield c


def _valid(schema: dict[str, Any], arguments: str) -> dict[str, Any]:
    value = json.loads(arguments)
    assert jsonschema_rs.validator_for(schema).is_valid(value), (schema, value)
    assert isinstance(value, dict)
    return value


async def test_a_tool_loop_call_result_answer(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[TIME, WEATHER], max_tokens=200
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # auto: the tool the question names
    _valid(WEATHER["function"]["parameters"], call.function.arguments)  # type: ignore[index]
    assert first.usage is not None and first.usage.completion_tokens > 0
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    final = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[TIME, WEATHER], max_tokens=40
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    # a question that names no tool is answered, not called (auto)
    plain = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], tools=[WEATHER]
    )
    assert plain.choices[0].finish_reason != "tool_calls"


async def test_tool_calls_stream_as_openai_streams_them(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "time please"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        seed=7,
    )
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "time please"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        seed=7,
        stream=True,
    )
    fragments: list[Any] = []
    finish = None
    content = ""
    async for chunk in stream:
        for c in chunk.choices:
            fragments += c.delta.tool_calls or []
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and content == ""
    # as OpenAI streams a call: the first fragment names it, the rest carry arguments as made
    assert len(fragments) >= 2 and all(f.index == 0 for f in fragments)
    assert fragments[0].id and fragments[0].type == "function"
    assert fragments[0].function and fragments[0].function.name == "get_time"
    assert all(f.id is None and f.function and f.function.name is None for f in fragments[1:])
    arguments = "".join((f.function.arguments or "") for f in fragments if f.function)
    (call,) = whole.choices[0].message.tool_calls or []
    assert arguments == call.function.arguments and fragments[0].id == call.id
    _valid(TIME["function"]["parameters"], arguments)  # type: ignore[index]


async def test_required_tool_choice_answers_with_a_valid_call_every_time(
    client: openai.AsyncOpenAI,
) -> None:
    for seed in range(8):
        answer = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"anything {seed}"}],
            tools=[WEATHER],
            tool_choice="required",
            seed=seed,
            n=2,
        )
        for choice in answer.choices:
            (call,) = choice.message.tool_calls or []
            assert choice.finish_reason == "tool_calls" and call.function.name == "get_weather"
            _valid(WEATHER["function"]["parameters"], call.function.arguments)  # type: ignore[index]


async def test_parse_a_pydantic_model_and_json_modes(client: openai.AsyncOpenAI) -> None:
    for seed in range(5):
        parsed = await client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": f"plan {seed}"}],
            response_format=Plan,
            max_tokens=2000,
            seed=seed,
        )
        plan = parsed.choices[0].message.parsed
        assert isinstance(plan, Plan) and plan.kind in ("trip", "talk")
    schema = {
        "type": "object",
        "properties": {"ids": {"type": "array", "items": {"type": "integer"}, "minItems": 2}},
        "required": ["ids"],
        "additionalProperties": False,
    }
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "ids"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "ids", "schema": schema, "strict": True},
        },
        stream=True,
        max_tokens=500,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(text))
    obj = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "any object"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError) as unsupported:  # a schema it cannot honour
        await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "format": "ipv6"}},
            },
        )
    assert "response_format" in unsupported.value.message


async def test_logprobs_are_true_of_the_sampler_whole_and_streamed(
    client: openai.AsyncOpenAI, bus: Bus
) -> None:
    asked: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me"}],
        "logprobs": True,
        "top_logprobs": 3,
        "seed": 3,
        "max_tokens": 30,
    }
    whole = await client.chat.completions.with_raw_response.create(**asked)
    answer = whole.parse()
    content = answer.choices[0].logprobs and answer.choices[0].logprobs.content
    assert content and answer.usage is not None
    assert len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and t.bytes == list(t.token.encode())
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) in (1, 3) and tops == sorted(tops, reverse=True)
        assert sum(math.exp(x) for x in tops) <= 1 + 1e-9
        assert t.logprob <= tops[0] + 1e-9
    events = await job_events(bus, whole.headers["x-dim-job-id"])
    (done,) = [e.data for e in events if isinstance(e.data, TaskCompleted)]
    assert done.logprobs is not None and len(done.logprobs) == len(content)
    stream = await client.chat.completions.create(**asked, stream=True)
    streamed = [
        t
        async for c in stream
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or ()
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    legacy = await client.completions.create(
        model=MODEL, prompt="tell me", logprobs=2, max_tokens=10, seed=3
    )
    lp = legacy.choices[0].logprobs
    assert lp is not None and lp.tokens and "".join(lp.tokens) == legacy.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) <= 2 for top in lp.top_logprobs or [])


async def test_penalties_and_logit_bias_change_the_answer(client: openai.AsyncOpenAI) -> None:
    async def words(**more: Any) -> list[str]:
        answer = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "talk"}],
            seed=11,
            max_tokens=60,
            **more,
        )
        text = answer.choices[0].message.content or ""
        return [w.strip(".").lower() for w in text.split() if w.strip(".")]

    plain = await words()
    banned = await words(logit_bias={str(VOCAB.index("the")): -100})
    assert "the" not in banned and banned != plain
    favoured = await words(logit_bias={str(VOCAB.index("mesh")): 100})
    assert Counter(favoured)["mesh"] > len(favoured) * 0.9
    repeated = await words(logit_bias={str(VOCAB.index("mesh")): 5})
    penalised = await words(logit_bias={str(VOCAB.index("mesh")): 5}, frequency_penalty=2.0)
    assert Counter(penalised)["mesh"] < Counter(repeated)["mesh"]
    with pytest.raises(openai.BadRequestError) as outside:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], logit_bias={"99999": 1}
        )
    assert "logit_bias" in outside.value.message


async def test_an_image_is_part_of_the_prompt(client: openai.AsyncOpenAI) -> None:
    async def ask(content: Any) -> str:
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], seed=1, max_tokens=20
        )
        return answer.choices[0].message.content or ""

    text = [{"type": "text", "text": "what is this?"}]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    other = {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    assert await ask([*text, image]) != await ask(text)
    assert await ask([*text, image]) != await ask([*text, other])
    assert await ask([*text, image]) == await ask([*text, image])


async def test_embeddings_are_deterministic_unit_vectors(
    client: openai.AsyncOpenAI, bus: Bus
) -> None:
    texts = ["the mesh routes", "every request", "the mesh routes"]
    raw = await client.embeddings.with_raw_response.create(model=MODEL, input=texts)
    got = raw.parse()  # the SDK asks for base64 and decodes it
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == MODEL
    vecs = [d.embedding for d in got.data]
    assert all(len(v) == 256 and abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vecs)
    assert vecs[0] == vecs[2] and vecs[0] != vecs[1]
    assert got.usage.prompt_tokens == 8 == got.usage.total_tokens
    events = await job_events(bus, raw.headers["x-dim-job-id"])
    assert [e.type for e in events][-1] == "job.completed"  # a job in the log like any other
    floats = await client.embeddings.create(
        model=MODEL, input="every request", dimensions=64, encoding_format="float"
    )
    short = floats.data[0].embedding
    assert len(short) == 64 and abs(math.fsum(x * x for x in short) - 1) < 1e-5
    scale = math.sqrt(math.fsum(x * x for x in vecs[1][:64]))
    assert all(abs(a - b / scale) < 1e-5 for a, b in zip(short, vecs[1][:64], strict=True))
    for bad, param in (
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": ["x"] * 129}, "input"),
        ({"input": "x", "dimensions": 512}, "dimensions"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.embeddings.create(model=MODEL, **bad)  # type: ignore[arg-type]
        assert param in refused.value.message, refused.value.body
