"""dim in front of `vllm serve`: vLLM's own OpenAI server (CPU or GPU, the tiny model) started
on a free loopback port, a worker `--engine openai` in front of it, and the official `openai`
SDK asking both. dim must answer exactly as vLLM does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.settings import Settings
from tests.mesh import all_of, serving, spawn, wait_ready, wait_terminal, wait_until
from tests.vllm.support import (
    BUSY_MACHINE,
    CHAT,
    LONG,
    MODEL,
    hang_up_mid_stream,
    vllm_metric,
    vllm_server,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]


@dataclass
class Pair:
    vllm: str  # vLLM's base URL
    dim: str  # the gateway's base URL
    key: str
    bus: Bus

    def clients(self) -> tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]:
        bare = openai.AsyncOpenAI(base_url=f"{self.vllm}/v1", api_key="none", max_retries=0)
        dim = openai.AsyncOpenAI(base_url=f"{self.dim}/v1", api_key=self.key, max_retries=0)
        return bare, dim


@pytest.fixture(scope="module")
def served(tiny_model: Path) -> Iterator[str]:
    with vllm_server(tiny_model) as base:
        yield base


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(module_settings: Settings, served: str) -> AsyncIterator[Pair]:
    s = module_settings.model_copy(update={"gateway_port": free_port(), **BUSY_MACHINE})
    bus = await connect(s, "test-vllm-upstream")
    await ensure_topology(bus, s)
    _, key = await create_key(bus, principal_id="ann", tenant="acme", roles=("member",), actor="t")
    worker = spawn(
        s, "worker", "--engine", "openai", "--upstream", f"{served}/v1", "--model", MODEL,
        DIM_NODE_ID="in-front-of-vllm",
    )  # fmt: skip
    try:
        with all_of(spawn(s, "orchestrator"), spawn(s, "gateway"), worker):
            base = f"http://127.0.0.1:{s.gateway_port}"
            await wait_ready(base)
            await wait_until(lambda: serving(base, key, MODEL), timeout_s=60, what="the model")
            yield Pair(served, base, key, bus)
    finally:
        await bus.close()


async def test_dim_answers_chat_as_vllm_does_streaming_or_not(pair: Pair) -> None:
    bare, dim = pair.clients()
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 40, "temperature": 0}
    try:
        expected = await bare.chat.completions.create(**args)  # type: ignore[call-overload]
        whole = await dim.chat.completions.create(**args)  # type: ignore[call-overload]
        chunks = [
            c
            async for c in await dim.chat.completions.create(  # type: ignore[call-overload]
                **args, stream=True, stream_options={"include_usage": True}
            )
        ]
    finally:
        await bare.close()
        await dim.close()
    text = expected.choices[0].message.content
    assert text and whole.choices[0].message.content == text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert whole.choices[0].finish_reason == expected.choices[0].finish_reason == "length"
    for usage in (whole.usage, chunks[-1].usage):
        assert usage is not None and expected.usage is not None
        assert usage.prompt_tokens == expected.usage.prompt_tokens
        assert usage.completion_tokens == expected.usage.completion_tokens == 40


async def test_dim_answers_text_completions_as_vllm_does(pair: Pair) -> None:
    bare, dim = pair.clients()
    args = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 30, "temperature": 0}
    try:
        expected = await bare.completions.create(**args)  # type: ignore[call-overload]
        whole = await dim.completions.create(**args)  # type: ignore[call-overload]
        streamed = [c async for c in await dim.completions.create(**args, stream=True)]  # type: ignore[call-overload]
    finally:
        await bare.close()
        await dim.close()
    assert whole.choices[0].text == expected.choices[0].text
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.choices[0].text
    assert whole.usage is not None and expected.usage is not None
    assert whole.usage.prompt_tokens == expected.usage.prompt_tokens
    assert whole.usage.completion_tokens == expected.usage.completion_tokens == 30


async def test_n_choices_and_stop_strings_reach_vllm(pair: Pair) -> None:
    bare, dim = pair.clients()
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 40, "temperature": 0}
    try:
        full = (await bare.chat.completions.create(**args)).choices[0].message.content or ""  # type: ignore[call-overload]
        two = await dim.chat.completions.create(**args, n=2)  # type: ignore[call-overload]
        stop = next(full[i : i + 3] for i in range(10, 30) if full.find(full[i : i + 3]) == i)
        expected = await bare.chat.completions.create(**args, stop=[stop])  # type: ignore[call-overload]
        stopped = await dim.chat.completions.create(**args, stop=[stop])  # type: ignore[call-overload]
    finally:
        await bare.close()
        await dim.close()
    assert [c.message.content for c in two.choices] == [full, full]  # one task per choice
    assert two.usage is not None and two.usage.completion_tokens == 80
    assert stopped.choices[0].message.content == expected.choices[0].message.content
    assert stopped.choices[0].message.content == full[: full.index(stop)]
    assert stopped.choices[0].finish_reason == expected.choices[0].finish_reason == "stop"


async def test_a_client_hanging_up_aborts_the_request_in_vllm(pair: Pair) -> None:
    async def vllm_says(name: str) -> float:
        async with httpx.AsyncClient() as client:
            return vllm_metric((await client.get(f"{pair.vllm}/metrics")).text, name)

    before = await vllm_says("vllm:generation_tokens_total")

    async def running() -> float:
        return await vllm_says("vllm:num_requests_running")

    job_id = await hang_up_mid_stream(pair.dim, pair.key)
    events = [e.type for e in await wait_terminal(pair.bus, job_id, timeout_s=120)]
    assert "job.cancelled" in events and "job.completed" not in events

    async def dropped() -> bool:
        return await running() == 0

    await wait_until(dropped, timeout_s=60, what="vLLM to drop the request")
    # vLLM saw its client go and stopped: the answer was not generated to its end
    assert await vllm_says("vllm:generation_tokens_total") - before < LONG


async def test_structured_outputs_and_logprobs_pass_through_to_vllm(pair: Pair) -> None:
    """Fields dim does not run itself reach vLLM as the client sent them, and vLLM's answer
    comes back whole: a schema-constrained answer, logprobs, logit_bias, penalties."""
    schema = {
        "type": "object",
        "properties": {"tag": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
        "required": ["tag", "n"],
        "additionalProperties": False,
    }
    args = {
        "model": MODEL,
        "messages": CHAT,
        "max_tokens": 96,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    }
    scored = {"model": MODEL, "messages": CHAT, "max_tokens": 8, "temperature": 0}
    scored |= {"logprobs": True, "top_logprobs": 2, "frequency_penalty": 1.0}
    scored |= {"logit_bias": {"50": 5.0}}
    bare, dim = pair.clients()
    try:
        expected = await bare.chat.completions.create(**args)  # type: ignore[call-overload]
        got = await dim.chat.completions.create(**args)  # type: ignore[call-overload]
        streamed = [c async for c in await dim.chat.completions.create(**args, stream=True)]  # type: ignore[call-overload]
        want_lps = await bare.chat.completions.create(**scored)  # type: ignore[call-overload]
        got_lps = await dim.chat.completions.create(**scored)  # type: ignore[call-overload]
    finally:
        await bare.close()
        await dim.close()
    text = expected.choices[0].message.content or ""
    assert set(json.loads(text)) == {"tag", "n"}  # vLLM kept to the schema
    assert got.choices[0].message.content == text
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
    want = want_lps.choices[0].logprobs and want_lps.choices[0].logprobs.content
    have = got_lps.choices[0].logprobs and got_lps.choices[0].logprobs.content
    assert (
        want and have and got_lps.choices[0].message.content == want_lps.choices[0].message.content
    )
    assert [(t.token, t.logprob, [x.token for x in t.top_logprobs]) for t in have] == [
        (t.token, t.logprob, [x.token for x in t.top_logprobs]) for t in want
    ]
