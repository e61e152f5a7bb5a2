"""The whole mesh in front of the in-process vLLM engine: real processes (gateway, orchestrator,
two `dim worker --engine vllm`), the official `openai` SDK, vLLM's own metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import openai
import psutil
import pytest
import pytest_asyncio
from pydantic import BaseModel, Field

from events.bus import Bus
from events.jobs import TaskCompleted, TaskStarted
from events.records import NodeRecord
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.settings import Settings
from tests.mesh import all_of, job_events, serving, spawn, wait_ready, wait_terminal, wait_until
from tests.vllm.support import (
    CHAT,
    LONG,
    MAX_MODEL_LEN,
    MODEL,
    hang_up_mid_stream,
    vllm_metric,
    vllm_settings,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

NODES = ("vllm-a", "vllm-b")
RESCUED = 2400  # tokens of the answer whose worker is killed


@dataclass
class Stack:
    base: str
    key: str
    bus: Bus
    workers: dict[str, subprocess.Popen[bytes]]
    first_seen: dict[str, str] = field(default_factory=dict)  # node -> its /metrics then

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=self.key, max_retries=0)

    async def record(self, node: str) -> NodeRecord | None:
        kv = await self.bus.js.key_value(self.bus.names.bucket("nodes"))
        try:
            entry = await kv.get(node)
        except Exception:
            return None
        return NodeRecord.model_validate_json(entry.value or b"")

    async def metrics(self, node: str) -> str:
        record = await self.record(node)
        assert record is not None, f"{node} has no record"
        async with httpx.AsyncClient() as client:
            return (await client.get(record.metrics_url)).text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_settings: Settings, tiny_model: Path) -> AsyncIterator[Stack]:
    s = vllm_settings(module_settings, tiny_model, gateway_port=free_port())
    bus = await connect(s, "test-vllm-mesh")
    await ensure_topology(bus, s)
    _, key = await create_key(bus, principal_id="ann", tenant="acme", roles=("member",), actor="t")
    try:
        with all_of(spawn(s, "orchestrator"), spawn(s, "gateway")), _workers(s) as workers:
            stack = Stack(f"http://127.0.0.1:{s.gateway_port}", key, bus, workers)
            await wait_ready(stack.base)

            async def announced(node: str) -> bool:
                if node in stack.first_seen:
                    return True
                record = await stack.record(node)
                assert workers[node].poll() is None, f"worker {node} died while starting"
                if record is not None:  # first seen: what did vLLM do by then?
                    stack.first_seen[node] = await stack.metrics(node)
                return record is not None

            async def all_announced() -> bool:
                return all([await announced(n) for n in NODES])

            await wait_until(all_announced, timeout_s=600, what="both vLLM workers")
            await wait_until(lambda: serving(stack.base, key, MODEL), what="the model listed")
            yield stack
    finally:
        await bus.close()


@contextlib.contextmanager
def _workers(s: Settings) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    with contextlib.ExitStack() as stack:
        yield {n: stack.enter_context(spawn(s, "worker", DIM_NODE_ID=n)) for n in NODES}


async def test_a_node_announces_itself_only_once_its_model_is_warm(stack: Stack) -> None:
    for node in NODES:
        seen = stack.first_seen[node]
        # vLLM had finished the warm-up generation before the node record existed
        assert vllm_metric(seen, "vllm:request_success_total") >= 1, seen[:2000]
        assert vllm_metric(seen, "vllm:num_requests_running") == 0
        record = await stack.record(node)
        assert record is not None and record.engine == "vllm" and record.cold_start_s > 0
        assert record.max_context == MAX_MODEL_LEN and MODEL in record.models


async def test_chat_and_text_completions_stream_and_answer_whole(stack: Stack) -> None:
    client = stack.client()
    try:
        whole = await client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=32,
            temperature=0,  # type: ignore[arg-type]
        )
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model=MODEL,
                messages=CHAT,  # type: ignore[arg-type]
                max_tokens=32,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and text == whole.choices[0].message.content
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finish[-1] == "length" == whole.choices[0].finish_reason
        assert chunks[-1].usage is not None and whole.usage is not None
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 32
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens > 5

        done = await client.completions.create(
            model=MODEL, prompt="The quick brown fox", max_tokens=24, temperature=0
        )
        streamed = [
            c
            async for c in await client.completions.create(
                model=MODEL, prompt="The quick brown fox", max_tokens=24, temperature=0, stream=True
            )
        ]
        assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
        assert done.usage is not None and done.usage.completion_tokens == 24
        assert done.choices[0].finish_reason == "length"
    finally:
        await client.close()


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=150)
    color: Literal["red", "green", "blue"]


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 999},
                "b": {"type": "integer", "minimum": 0, "maximum": 999},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


async def test_structured_outputs_tools_and_logprobs_through_the_sdk(stack: Stack) -> None:
    """vLLM's constrained decoding enforces the schema and the forced call even for a
    random-weight model; logprobs come from vLLM; a field a vLLM node cannot honour (images)
    is refused by name, and auto tool calls without a parser are a 400 too."""
    client = stack.client()
    try:
        parsed = await client.chat.completions.parse(
            model=MODEL, messages=CHAT, response_format=Person, max_tokens=128, seed=1
        )
        assert isinstance(parsed.choices[0].message.parsed, Person)
        called = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Add two numbers."}],
            tools=[ADD],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,  # a random model asked for any number never stops
            max_tokens=96,
            seed=2,
        )
        (call,) = called.choices[0].message.tool_calls or []
        assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "add"
        args = json.loads(call.function.arguments)
        assert set(args) == {"a", "b"} and all(0 <= v <= 999 for v in args.values())
        scored = await client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=8, logprobs=True, top_logprobs=2
        )
        content = scored.choices[0].logprobs and scored.choices[0].logprobs.content
        assert content and len(content) == 8 and all(t.logprob <= 0 for t in content)
        image = [{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": image}],  # type: ignore[list-item]
            )
        assert refused.value.param == "messages.0.content"
        with pytest.raises(openai.BadRequestError) as auto:
            await client.chat.completions.create(
                model=MODEL,
                messages=CHAT,
                tools=[ADD],
                max_tokens=8,  # type: ignore[list-item]
            )
        assert "tool_choice" in auto.value.message
    finally:
        await client.close()


async def test_n_choices_are_sampled_apart(stack: Stack) -> None:
    client = stack.client()
    try:
        answer = await client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=16,
            temperature=1.0,
            n=3,  # type: ignore[arg-type]
        )
    finally:
        await client.close()
    assert sorted(c.index for c in answer.choices) == [0, 1, 2]
    texts = [c.message.content for c in answer.choices]
    assert all(texts) and len(set(texts)) > 1
    assert answer.usage is not None and answer.usage.completion_tokens == 3 * 16


async def test_a_client_hanging_up_aborts_the_vllm_request(stack: Stack) -> None:
    async def running() -> float:
        return sum(
            [vllm_metric(await stack.metrics(n), "vllm:num_requests_running") for n in NODES]
        )

    async def generated() -> float:
        texts = [await stack.metrics(n) for n in NODES]
        return sum(vllm_metric(t, "vllm:generation_tokens_total") for t in texts)

    before = await generated()
    job_id = await hang_up_mid_stream(stack.base, stack.key)
    # hung up: the job is cancelled and the worker aborts the request in vLLM
    events = [e.type for e in await wait_terminal(stack.bus, job_id, timeout_s=120)]
    assert "job.cancelled" in events and "job.completed" not in events

    async def freed() -> bool:
        return await running() == 0

    await wait_until(freed, timeout_s=60, what="vLLM to drop the request")
    assert await generated() - before < LONG  # stopped, not generated to its end


async def test_a_stream_whose_worker_is_killed_carries_on_with_the_same_answer(
    stack: Stack,
) -> None:
    """Last: it kills a worker. At temperature 0 the rescued answer is the uninterrupted one."""
    client = stack.client()
    # long enough that the kill lands mid-answer on a fast CPU too (600 tokens were done first)
    args = {"model": MODEL, "messages": CHAT, "max_tokens": RESCUED, "temperature": 0}
    try:
        reference = await client.chat.completions.create(**args)  # type: ignore[call-overload]
        expected = reference.choices[0].message.content
        raw = await client.chat.completions.with_raw_response.create(**args, stream=True)  # type: ignore[call-overload]
        job_id = raw.headers["x-dim-job-id"]
        deltas: list[str] = []
        victim = ""
        async with asyncio.timeout(180):
            async for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    deltas.append(chunk.choices[0].delta.content)
                if not victim and deltas:  # at the first text: the most of the answer to go
                    starts = [e.data for e in await job_events(stack.bus, job_id)]
                    (started,) = [e for e in starts if isinstance(e, TaskStarted)]
                    victim = started.node_id
                    pid = stack.workers[victim].pid
                    engine = psutil.Process(pid).children(recursive=True)  # vLLM's processes
                    os.kill(pid, signal.SIGKILL)  # mid-answer
    finally:
        await client.close()
    events = await wait_terminal(stack.bus, job_id, timeout_s=60)
    starts = [e.data for e in events if isinstance(e.data, TaskStarted)]
    (done,) = [e.data for e in events if isinstance(e.data, TaskCompleted)]
    rescuer = next(n for n in NODES if n != victim)
    assert [t.node_id for t in starts] == [victim, rescuer]
    assert starts[1].resumed_tokens > 0  # it continued, it did not start over
    received = "".join(deltas)
    assert received == done.output == expected  # nothing repeated, nothing lost, nothing changed
    assert done.usage.completion_tokens == RESCUED  # each token counted once
    # the killed worker's vLLM processes did not outlive it
    _, alive = psutil.wait_procs(engine, timeout=10)
    assert engine and not alive
