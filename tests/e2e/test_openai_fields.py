"""No request field silently ignored, through the official `openai` SDK against real processes:
a field no live node of the model can honour is a 400 naming it (the probe's `tool_choice:
"required"` and `json_schema` requests got prose with 200) — here the only worker is a simulated
engine narrowed to plain chat and completions — and once a node that can joins, such requests go
to it alone; a field dim does not serve at all is refused by name; neutral values and the fields
dim documents as unused pass; `user` is kept on the job; `client.models.retrieve` describes a
served model and what its nodes can do."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from events.bus import Bus
from events.jobs import JobSubmitted
from services.settings import Settings
from services.up import child_env
from tests.mesh import job_events, sdk_mesh, spawn, wait_until

CHAT = [{"role": "user", "content": "hello"}]
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def client(bus: Bus, settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_mesh(bus, settings, DIM_SIM_CAPABILITIES="chat,completions") as c:
        yield c


async def _refused(client: openai.AsyncOpenAI, **fields: Any) -> openai.BadRequestError:
    fields.setdefault("messages", CHAT)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="sim-small", **fields)
    assert refused.value.code == "unsupported_parameter"
    return refused.value


async def test_fields_not_served_are_refused_by_name(client: openai.AsyncOpenAI) -> None:
    cases: dict[str, dict[str, Any]] = {
        "tools": {"tools": [TOOL], "tool_choice": "required"},
        "response_format": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
            }
        },
        "logprobs": {"logprobs": True, "top_logprobs": 2},
        "presence_penalty": {"presence_penalty": 0.5},
        "frequency_penalty": {"frequency_penalty": -1.0},
        "logit_bias": {"logit_bias": {"5": -100}},
    }
    for param, fields in cases.items():
        error = await _refused(client, **fields)
        assert error.param == param, (param, error.body)
        assert param in error.message and "no live node serving 'sim-small'" in error.message
    for param, fields in {
        "store": {"store": True},
        "max_token": {"extra_body": {"max_token": 5}},  # a typo is no silent default
        "messages.0.content.0.type": {"messages": [{"role": "user", "content": [AUDIO]}]},
    }.items():
        error = await _refused(client, **fields)
        assert error.param == param, (param, error.body)
    image = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    error = await _refused(client, messages=[{"role": "user", "content": image}])
    assert error.param == "messages.0.content" and "images" in error.message
    tool_turn = [
        *CHAT,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    error = await _refused(client, messages=tool_turn)
    assert error.param == "messages.1.tool_calls"
    with pytest.raises(openai.BadRequestError) as embeddings:
        await client.embeddings.create(model="sim-small", input="hello")
    assert embeddings.value.param == "input" and "embeddings" in embeddings.value.message


async def test_neutral_values_and_unused_fields_pass_and_user_is_kept(
    client: openai.AsyncOpenAI, bus: Bus
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="sim-small",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        max_tokens=4,
        # neutral: asks for nothing dim does not do
        frequency_penalty=0,
        presence_penalty=0,
        logprobs=False,
        response_format={"type": "text"},
        tool_choice="none",
        # documented as unused by dim
        metadata={"run": "7"},
        service_tier="auto",
        parallel_tool_calls=True,
        user="end-user-42",
    )
    answer = raw.parse()
    assert answer.choices[0].message.content
    events = await job_events(bus, raw.headers["x-dim-job-id"])
    submitted = events[0].data
    assert isinstance(submitted, JobSubmitted) and submitted.end_user == "end-user-42"
    text = await client.completions.create(
        model="sim-small", prompt="hello", max_tokens=4, echo=False, best_of=1
    )
    assert text.choices[0].text
    with pytest.raises(openai.BadRequestError) as echo:
        await client.completions.create(model="sim-small", prompt="hello", echo=True)
    assert echo.value.param == "echo"


async def test_a_model_is_described_and_an_unknown_one_is_404(client: openai.AsyncOpenAI) -> None:
    model = await client.models.retrieve("sim-small")
    assert model.id == "sim-small" and model.object == "model" and model.owned_by == "dim"
    extra = model.model_extra or {}
    assert extra["nodes"] == 1 and extra["engines"] == ["simulated"]
    assert extra["context_length"] and extra["context_length"] > 1000
    assert extra["capabilities"] == ["chat", "completions"]
    listed = [m.id async for m in client.models.list()]
    assert listed == ["sim-small"]
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_usage_per_day_over_http_and_the_cli(
    client: openai.AsyncOpenAI, bus: Bus, settings: Settings
) -> None:
    answer = await client.chat.completions.create(model="sim-small", messages=CHAT, max_tokens=4)
    assert answer.usage is not None
    auth = {"Authorization": f"Bearer {client.api_key}"}

    async def counted() -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{client.base_url}usage", headers=auth)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def shown() -> bool:
        return bool((await counted())["data"])

    await wait_until(shown, what="the usage projection to count the job")
    report = await counted()
    assert report["tenant"] == "acme" and report["daily_tokens"] is None
    (today,) = report["data"]
    assert today["requests"] == 1 and today["total_tokens"] == answer.usage.total_tokens
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "usage", "--tenant", "acme", "--json"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    (row,) = json.loads(cli.stdout)
    assert row["tenant"] == "acme" and row["total_tokens"] == answer.usage.total_tokens


async def test_requests_go_to_the_node_that_can_honour_them(
    client: openai.AsyncOpenAI, settings: Settings, bus: Bus
) -> None:
    port = int(str(client.base_url).split(":")[2].split("/")[0])
    s = settings.model_copy(update={"gateway_port": port})
    with spawn(s, "worker", DIM_NODE_ID="w2", DIM_MODELS="sim-small"):

        async def joined() -> bool:
            card = await client.models.retrieve("sim-small")
            return "tools" in (card.model_extra or {}).get("capabilities", [])

        await wait_until(joined, what="the capable node in the gateway's view")
        card = await client.models.retrieve("sim-small")
        assert (card.model_extra or {})["nodes"] == 2
        ran = set()
        for i in range(6):
            raw = await client.chat.completions.with_raw_response.create(
                model="sim-small",
                messages=[{"role": "user", "content": f"weather {i}"}],
                tools=[TOOL],
                tool_choice="required",
                logprobs=i % 2 == 0,
            )
            answer = raw.parse()
            assert answer.choices[0].message.tool_calls, answer
            events = await job_events(bus, raw.headers["x-dim-job-id"])
            ran |= {e.data.node_id for e in events if e.type == "task.completed"}  # type: ignore[attr-defined]
        assert ran == {"w2"}
        plain = await client.chat.completions.create(model="sim-small", messages=CHAT)
        assert plain.choices[0].message.content
