"""The stateless Responses API through the official `openai` SDK against real processes: text,
a function-tool loop, `responses.parse` with a pydantic model, the typed event stream, and the
stateful fields refused by name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel

from events.bus import Bus
from services.settings import Settings
from tests.mesh import sdk_mesh

MODEL = "sim-small"
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Answer(BaseModel):
    verdict: bool
    reasons: list[str]


@pytest.fixture
async def client(bus: Bus, settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_mesh(bus, settings, MODEL, DIM_SIM_TOKENS_PER_S="2000") as c:
        yield c


async def test_text_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    whole = await client.responses.create(
        model=MODEL, input="hello there", instructions="be brief", max_output_tokens=12
    )
    assert whole.id.startswith("resp_") and whole.object == "response"
    assert whole.output_text and whole.instructions == "be brief"
    assert whole.usage is not None and whole.usage.output_tokens <= 12
    assert whole.status in ("completed", "incomplete")
    stream = await client.responses.create(
        model=MODEL, input="hello there", instructions="be brief", max_output_tokens=12, stream=True
    )
    kinds, deltas, final = [], "", None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    # cut at max_output_tokens: incomplete, as OpenAI streams it; else completed
    assert kinds[-1] == f"response.{whole.status}" and "response.output_text.done" in kinds
    assert final is not None and final.output_text == deltas == whole.output_text


async def test_a_function_tool_loop(client: openai.AsyncOpenAI) -> None:
    asked = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = await client.responses.create(model=MODEL, input=asked, tools=[WEATHER])  # type: ignore[arg-type]
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert jsonschema_rs.validator_for(WEATHER["parameters"]).is_valid(json.loads(call.arguments))
    second = await client.responses.create(
        model=MODEL,
        input=[
            *asked,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 3}'},
        ],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]
    stream = await client.responses.create(
        model=MODEL,
        input=asked,
        tools=[WEATHER],
        tool_choice="required",
        stream=True,  # type: ignore[arg-type]
    )
    args, done = "", None
    async for event in stream:
        if event.type == "response.function_call_arguments.delta":
            args += event.delta
        if event.type == "response.completed":
            done = event.response
    assert done is not None and done.output[0].type == "function_call"
    assert args == done.output[0].arguments


async def test_parse_a_pydantic_model_and_refusals(client: openai.AsyncOpenAI) -> None:
    parsed = await client.responses.parse(
        model=MODEL, input="is it good?", text_format=Answer, max_output_tokens=1000
    )
    assert isinstance(parsed.output_parsed, Answer)
    for fields, param in (
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"extra_body": {"top_k": 3}}, "top_k"),
        ({"tool_choice": "required"}, "tool_choice"),  # a call asked for, no tools sent
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model=MODEL, input="x", **fields)  # type: ignore[arg-type]
        assert param in refused.value.message, refused.value.body
