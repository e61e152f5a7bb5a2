"""The OpenAI-upstream engine against a real OpenAI-compatible server: a second dim mesh.

The upstream is a dim gateway (its own namespace, orchestrator and simulated worker) serving real
HTTP and SSE; in front of it, a mesh whose worker runs `--engine openai --upstream <that
gateway>/v1`, behind its own gateway. The official `openai` SDK talks to the front gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.registry.live import LiveNodes
from services.settings import Settings
from tests.mesh import all_of, job_events, metric, serving, spawn, wait_ready, wait_until

MESSAGES = [{"role": "user", "content": "tell me about the mesh"}]


@dataclass
class Stack:
    front: str  # base URL of the front gateway
    front_key: str
    upstream: str
    upstream_key: str
    upstream_bus: Bus
    front_bus: Bus


@pytest.fixture
async def stack(bus: Bus, settings: Settings) -> AsyncIterator[Stack]:
    up = settings.model_copy(
        update={
            "namespace": f"{settings.namespace}u",
            "gateway_port": free_port(),
            "sim_ttft_ms": 0,
            "sim_tokens_per_s": 40,  # slow enough to cancel mid-answer
        }
    )
    up_bus = await connect(up, "test-upstream")
    await ensure_topology(up_bus, up)
    _, up_key = await create_key(
        up_bus, principal_id="front", tenant="up", roles=("member",), actor="test"
    )
    _, front_key = await create_key(
        bus, principal_id="alice", tenant="acme", roles=("member",), actor="test"
    )
    front = settings.model_copy(update={"gateway_port": free_port()})
    upstream = f"http://127.0.0.1:{up.gateway_port}"
    with all_of(
        spawn(up, "orchestrator"),
        spawn(up, "worker", DIM_NODE_ID="gpu-box"),
        spawn(up, "gateway"),
    ):
        await wait_ready(upstream)
        await wait_until(lambda: serving(upstream, up_key, "sim-small"), what="upstream model")
        with all_of(
            spawn(front, "orchestrator"),
            spawn(
                front,
                "worker",
                "--engine",
                "openai",
                "--upstream",
                f"{upstream}/v1",
                "--aliases",
                "small=sim-small",
                DIM_NODE_ID="proxy",
                DIM_UPSTREAM_API_KEY=up_key,
            ),
            spawn(front, "gateway"),
        ):
            base = f"http://127.0.0.1:{front.gateway_port}"
            await wait_ready(base)
            await wait_until(lambda: serving(base, front_key, "small"), what="front model")
            try:
                yield Stack(base, front_key, upstream, up_key, up_bus, bus)
            finally:
                await up_bus.close()


async def test_streams_the_upstreams_answer_with_usage(stack: Stack) -> None:
    front = openai.AsyncOpenAI(base_url=f"{stack.front}/v1", api_key=stack.front_key)
    direct = openai.AsyncOpenAI(base_url=f"{stack.upstream}/v1", api_key=stack.upstream_key)
    args = {"model": "sim-small", "messages": MESSAGES, "max_tokens": 12, "seed": 3}
    expected = await direct.chat.completions.create(**args)  # type: ignore[call-overload]
    chunks = [
        c
        async for c in await front.chat.completions.create(  # type: ignore[call-overload]
            **args | {"model": "small"}, stream=True, stream_options={"include_usage": True}
        )
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens  # type: ignore[union-attr]
    assert chunks[-1].usage.prompt_tokens == expected.usage.prompt_tokens  # type: ignore[union-attr]
    whole = await front.completions.create(model="small", prompt="plain text", max_tokens=5)
    assert whole.choices[0].text and whole.usage and whole.usage.completion_tokens == 5
    await front.close()
    await direct.close()


async def test_cancelling_mid_stream_closes_the_upstream_request(stack: Stack) -> None:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST",
            f"{stack.front}/v1/chat/completions",
            headers={"Authorization": f"Bearer {stack.front_key}"},
            json={"model": "small", "messages": MESSAGES, "max_tokens": 200, "stream": True},
        ) as r,
    ):
        async for line in r.aiter_lines():
            if '"content":"' in line:
                break  # text is flowing: hang up
    # The front job is cancelled; its worker closes the upstream stream; the upstream gateway
    # sees its client go away and cancels its own job, whose worker aborts the engine.
    names = stack.upstream_bus.names
    stream = await stack.upstream_bus.js.find_stream_name_by_subject(
        names.job("x", "job.submitted")
    )

    async def upstream_cancelled() -> bool:
        ids = set()
        async for msg in _subjects(stack.upstream_bus, stream):
            ids.add(msg.split(".")[2])
        for job_id in ids:
            events = await job_events(stack.upstream_bus, job_id)
            if "job.cancelled" in [e.type for e in events]:
                return True
        return False

    await wait_until(upstream_cancelled, what="the upstream's job to be cancelled", timeout_s=10)


async def _subjects(bus: Bus, stream: str) -> AsyncIterator[str]:
    info = await bus.js.stream_info(stream, subjects_filter=">")
    for subject in info.state.subjects or {}:
        yield subject


async def test_worker_advertises_facts_and_metrics_move(stack: Stack) -> None:
    nodes = LiveNodes(stack.front_bus, 30)
    await nodes.start()
    await nodes.stop()
    proxy = nodes.nodes["proxy"]
    assert proxy.engine == "openai" and set(proxy.models) == {"sim-small", "small"}
    assert proxy.cold_start_s > 0 and proxy.metrics_url
    front = openai.AsyncOpenAI(base_url=f"{stack.front}/v1", api_key=stack.front_key)
    stream = await front.chat.completions.create(
        model="small",
        messages=MESSAGES,
        max_tokens=6,
        stream=True,  # type: ignore[arg-type]
    )
    async for _ in stream:
        pass
    await front.close()
    async with httpx.AsyncClient() as client:
        gateway = (await client.get(f"{stack.front}/metrics")).text
        worker = (await client.get(proxy.metrics_url)).text
    assert metric(gateway, 'dim_gateway_time_to_first_token_seconds_count{model="small"}') >= 1
    assert metric(gateway, 'dim_gateway_generation_tokens_total{model="small"}') >= 6
    assert (
        metric(
            gateway,
            'dim_gateway_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        )
        >= 1
    )
    assert metric(worker, 'dim_worker_time_to_first_token_seconds_count{model="small"}') >= 1
    assert metric(worker, 'dim_worker_inter_token_latency_seconds_count{model="small"}') >= 1
    assert metric(worker, 'dim_worker_requests_total{model="small",outcome="completed"}') >= 1
    assert metric(worker, "dim_worker_cold_start_seconds") > 0
