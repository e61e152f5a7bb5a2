"""Gateway handlers through Litestar's test client, against real NATS and real services."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar.testing import AsyncTestClient

from events.bus import Bus
from events.envelope import Envelope
from events.errors import WrongLastSequence
from events.inference import Prompt
from events.job_log import submit
from events.jobs import JobCancelled, JobCompleted
from gateway.app import create_app
from gateway.completions import cancel_job
from services.accounts.keys import create_key, revoke_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import job_events, mesh, spawn, wait_terminal, wait_until


@pytest.fixture
async def gateway(
    bus: Bus, settings: Settings
) -> AsyncIterator[tuple[AsyncTestClient, dict[str, str]]]:
    """The gateway app in Litestar's test client, with an orchestrator and a worker.

    The services run as child processes: the test client drives the app through a blocking
    portal, which would starve services sharing this test's event loop.
    """
    with spawn(settings, "orchestrator"), spawn(settings, "worker", DIM_NODE_ID="w1"):
        _, key = await create_key(
            bus, principal_id="alice", tenant="acme", roles=("member",), actor="test"
        )
        async with AsyncTestClient(app=create_app(settings)) as client:
            gw = client.app.state.gateway
            await wait_until(
                lambda: _true(bool(gw.nodes.live())), what="worker in the gateway's view"
            )
            yield client, {"Authorization": f"Bearer {key}"}


async def _true(value: bool) -> bool:
    return value


async def test_health_and_readiness(gateway: tuple[AsyncTestClient, dict[str, str]]) -> None:
    client, _ = gateway
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_models_lists_what_live_nodes_serve(
    gateway: tuple[AsyncTestClient, dict[str, str]],
) -> None:
    client, auth = gateway
    r = await client.get("/v1/models", headers=auth)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["sim-small"]
    assert r.headers["x-request-id"]


async def test_chat_completion_whole(
    bus: Bus, gateway: tuple[AsyncTestClient, dict[str, str]]
) -> None:
    client, auth = gateway
    r = await client.post(
        "/v1/chat/completions",
        headers=auth | {"x-request-id": "req-1"},
        json={
            "model": "sim-small",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "sim-small"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert r.headers["x-request-id"] == "req-1"
    job_id = r.headers["x-dim-job-id"]
    assert body["id"] == f"chatcmpl-{job_id}"
    # A one-task job is answered from its task.completed; the job's own end follows from it
    # and records the very same answer and usage.
    events = await wait_terminal(bus, job_id)
    submitted, done = events[0].data, events[-1].data
    assert submitted.owner == "alice" and submitted.tenant == "acme"  # type: ignore[attr-defined]
    assert isinstance(done, JobCompleted)
    assert done.output == body["choices"][0]["message"]["content"]
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 5


async def test_n_choices_whole_and_streamed(
    gateway: tuple[AsyncTestClient, dict[str, str]],
) -> None:
    client, auth = gateway
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "pick"}],
        "n": 3,
        "seed": 5,
    }
    whole = (await client.post("/v1/chat/completions", headers=auth, json=body)).json()
    outputs = [c["message"]["content"] for c in whole["choices"]]
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2]
    assert len(set(outputs)) == 3  # three different answers
    r = await client.post(
        "/v1/chat/completions",
        headers=auth,
        json=body | {"stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = [
        json.loads(e.removeprefix("data: "))
        for e in r.text.split("\n\n")
        if e and e != "data: [DONE]"
    ]
    streamed: dict[int, str] = {}
    finished: set[int] = set()
    for c in chunks[:-1]:
        choice = c["choices"][0]
        streamed[choice["index"]] = streamed.get(choice["index"], "") + (
            choice["delta"].get("content") or ""
        )
        if choice["finish_reason"]:
            finished.add(choice["index"])
    assert finished == {0, 1, 2}
    assert [streamed[i] for i in range(3)] == outputs  # same seed, same three answers
    assert chunks[-1]["usage"] == whole["usage"]


async def test_completion_streamed_as_openai_sse(
    gateway: tuple[AsyncTestClient, dict[str, str]],
) -> None:
    client, auth = gateway
    payload = {
        "model": "sim-small",
        "prompt": "once",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await client.post("/v1/completions", headers=auth, json=payload)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert len(text.split()) == chunks[-1]["usage"]["completion_tokens"] - text.count(".")


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b'{"model": "sim-small", "messages": [}', 400, "invalid_json", None),
        (b'{"model": "sim-small"}', 400, "invalid_request", "messages"),
        (
            b'{"model": "sim-small", "messages": [{"role": "user", "content": "x"}], "n": 17}',
            400,
            "invalid_request",
            "n",
        ),
        (
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model_not_found",
            "model",
        ),
        (  # more than the model's context (the simulated engine's: 32,768 tokens)
            b'{"model": "sim-small", "messages": [{"role": "user", "content": "x"}],'
            b' "max_tokens": 40000}',
            400,
            "context_length_exceeded",
            "max_tokens",
        ),
        (  # over what any request may ask (was a 500)
            b'{"model": "sim-small", "messages": [{"role": "user", "content": "x"}],'
            b' "max_tokens": 1000000000}',
            400,
            "invalid_request",
            "max_tokens",
        ),
    ],
)
async def test_bad_requests_get_openai_errors(
    gateway: tuple[AsyncTestClient, dict[str, str]],
    body: bytes,
    status: int,
    code: str,
    param: str | None,
) -> None:
    client, auth = gateway
    r = await client.post(
        "/v1/chat/completions", headers=auth | {"content-type": "application/json"}, content=body
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]


async def test_odd_ids_and_headers_get_4xx_not_500(
    gateway: tuple[AsyncTestClient, dict[str, str]],
) -> None:
    client, auth = gateway
    for job_id in ("a*", "a.b", "a>", "x" * 200):  # ids NATS takes as no KV key (were 500s)
        for r in (
            await client.get(f"/v1/jobs/{job_id}", headers=auth),
            await client.get(f"/v1/jobs/{job_id}/events", headers=auth),
            await client.delete(f"/v1/jobs/{job_id}", headers=auth),
        ):
            assert r.status_code == 404, (job_id, r.text)
            assert r.json()["error"]["code"] == "job_not_found"
    # a request id that is not printable ASCII is replaced, not echoed (was a 500)
    r = await client.get("/healthz", headers={"x-request-id": b"\xff\xfe"})  # type: ignore[dict-item]
    assert r.status_code == 200 and r.headers["x-request-id"].isascii()
    r = await client.get("/healthz", headers={"x-request-id": "mine-1"})
    assert r.headers["x-request-id"] == "mine-1"


async def test_oversize_body_is_413(
    gateway: tuple[AsyncTestClient, dict[str, str]], settings: Settings
) -> None:
    client, auth = gateway
    big = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "x" * (settings.max_body_bytes + 1)}],
    }
    r = await client.post("/v1/chat/completions", headers=auth, json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("Basic abc", "invalid_api_key"),
        ("Bearer dim_01M81TZQEPB94MFS3ZV89Y30ZZ_" + "0" * 64, "invalid_api_key"),  # forged
        ("Bearer sk-not-ours", "invalid_api_key"),
    ],
)
async def test_requests_without_a_valid_key_are_401(
    gateway: tuple[AsyncTestClient, dict[str, str]], header: str | None, code: str
) -> None:
    client, _ = gateway
    r = await client.get("/v1/models", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and r.json()["error"]["code"] == code
    assert r.json()["error"]["type"] == "authentication_error"


async def test_a_revoked_key_stops_working_at_once(
    bus: Bus, gateway: tuple[AsyncTestClient, dict[str, str]]
) -> None:
    client, _ = gateway
    record, key = await create_key(
        bus, principal_id="bob", tenant="acme", roles=("member",), actor="test"
    )
    auth = {"Authorization": f"Bearer {key}"}
    await wait_until(lambda: _ok(client, auth), timeout_s=2, what="the new key to work")
    await revoke_key(bus, record, by="test")
    loop = asyncio.get_running_loop()
    revoked_at = loop.time()
    await wait_until(lambda: _refused(client, auth), timeout_s=1, what="the key to be refused")
    assert loop.time() - revoked_at < 1.0


async def _ok(client: AsyncTestClient, auth: dict[str, str]) -> bool:
    return (await client.get("/v1/models", headers=auth)).status_code == 200


async def _refused(client: AsyncTestClient, auth: dict[str, str]) -> bool:
    return (await client.get("/v1/models", headers=auth)).status_code == 401


async def test_unknown_route_is_an_openai_404(
    gateway: tuple[AsyncTestClient, dict[str, str]],
) -> None:
    client, auth = gateway
    r = await client.get("/v1/nothing", headers=auth)
    assert (
        r.status_code == 404 and r.json()["error"]["message"] == "no such endpoint: GET /v1/nothing"
    )


async def test_openapi_schema_describes_the_api(
    gateway: tuple[AsyncTestClient, dict[str, str]],
) -> None:
    client, auth = gateway
    schema = (await client.get("/openapi/openapi.json")).json()
    ops = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"listModels", "createChatCompletion", "createCompletion", "healthz", "readyz"} <= ops
    assert "BearerAuth" in schema["components"]["securitySchemes"]
    # every error is declared as the gateway sends it: OpenAI's shape, for the statuses each
    # operation can give (tests/unit/test_openapi_errors.py checks the table)
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    for path, item in schema["paths"].items():
        for op in item.values():
            declared = op["responses"]
            wanted = {"500"} | ({"401", "429", "503"} if path.startswith("/v1/") else set())
            assert wanted <= set(declared), (path, sorted(declared))
            for status in (s for s in declared if int(s) >= 400):
                body = declared[status]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/Error"}, (path, status)
    r = await client.get("/v1/jobs/nope", headers=auth)  # and what is sent matches it
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_cancelled_job_is_aborted_on_its_worker(bus: Bus, settings: Settings) -> None:
    async with mesh(settings) as m:
        await m.orchestrator()
        worker = await m.worker("slow", sim_ttft_ms=0, sim_tokens_per_s=5)  # >= 2.6 s per answer
        await wait_until(lambda: _true(bool(worker.obj.engine.models)), what="worker")
        await asyncio.sleep(0.5)
        job = await submit(bus, model="sim-small", prompt=Prompt(text="take your time"))
        await wait_until(lambda: _has(bus, job.job_id, "task.started"), what="start")
        await cancel_job(bus, job.job_id, "changed my mind")
        events = await wait_terminal(bus, job.job_id)
        await wait_until(lambda: _has(bus, job.job_id, "task.completed"), what="the aborted result")
        events = await job_events(bus, job.job_id)
    cancelled = next(e for e in events if e.type == "job.cancelled")
    completed = next(e for e in events if e.type == "task.completed")
    assert completed.data.finish_reason == "abort"  # type: ignore[attr-defined]
    assert (completed.at - cancelled.at).total_seconds() < 0.5  # long before its natural end
    assert worker.obj.aborted == 1


async def test_an_end_the_log_refused_neither_aborts_nor_skips_the_work(
    bus: Bus, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A JetStream append refused for its expected sequence (another orchestrator decided first)
    still reaches every subscriber of its subject: a worker believes an end only from the log."""
    async with mesh(settings) as m:
        await m.orchestrator()
        worker = await m.worker("slow", sim_ttft_ms=0, sim_tokens_per_s=5)  # >= 2.6 s per answer
        await wait_until(lambda: _true(bool(worker.obj.engine.models)), what="worker")
        await asyncio.sleep(0.5)
        job = await submit(bus, model="sim-small", prompt=Prompt(text="take your time"))
        await wait_until(lambda: _has(bus, job.job_id, "task.started"), what="start")
        end = Envelope(JobCancelled(job_id=job.job_id, reason="a refused append"), actor="test")
        with pytest.raises(WrongLastSequence):  # the job has events: "none yet" is wrong
            await bus.publish(
                bus.names.job(job.job_id, end.type),
                end,
                expected_last_seq=0,
                expected_last_subject=bus.names.job_all(job.job_id),
            )
        events = await wait_terminal(bus, job.job_id)
    assert events[-1].type == "job.completed", [e.type for e in events]
    completed = next(e for e in events if e.type == "task.completed")
    assert completed.data.finish_reason != "abort"  # type: ignore[attr-defined]
    assert worker.obj.aborted == 0
    assert f"job {job.job_id}: an end was heard that its log does not hold" in caplog.text


async def test_a_client_that_hangs_up_mid_stream_cancels_and_aborts_its_job(
    bus: Bus, settings: Settings
) -> None:
    port = free_port()
    slow = settings.model_copy(update={"gateway_port": port})
    async with mesh(slow) as m:
        await m.orchestrator()
        worker = await m.worker("slow", sim_ttft_ms=0, sim_tokens_per_s=5)
        _, key = await create_key(
            bus, principal_id="dave", tenant="acme", roles=("member",), actor="test"
        )
        with spawn(slow, "gateway"):
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                await wait_until(
                    lambda: _models_listed(http, key), what="gateway to see the worker"
                )
                payload = {
                    "model": "sim-small",
                    "messages": [{"role": "user", "content": "go"}],
                    "stream": True,
                }
                async with http.stream(
                    "POST",
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json=payload,
                ) as r:
                    job_id = r.headers["x-dim-job-id"]
                    async for _ in r.aiter_bytes():
                        break  # one chunk, then hang up
            await wait_until(lambda: _has(bus, job_id, "task.completed"), what="the aborted result")
            events = await job_events(bus, job_id)
    types = [e.type for e in events]
    assert "job.cancelled" in types and "job.completed" not in types
    assert (
        next(e for e in events if e.type == "job.cancelled").data.reason
        == "the client disconnected"
    )  # type: ignore[attr-defined]
    assert next(e for e in events if e.type == "task.completed").data.finish_reason == "abort"  # type: ignore[attr-defined]
    assert worker.obj.aborted == 1


async def _models_listed(http: httpx.AsyncClient, key: str) -> bool:
    try:
        r = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    except httpx.TransportError:
        return False
    return r.status_code == 200 and bool(r.json()["data"])


async def _has(bus: Bus, job_id: str, event_type: str) -> bool:
    return any(e.type == event_type for e in await job_events(bus, job_id))


async def test_work_planned_at_the_door_is_sent_by_the_gateway_itself(
    bus: Bus, settings: Settings
) -> None:
    # No orchestrator runs: a plain request with a free slot is planned at the door, and the
    # gateway puts its work on the model's subject itself once the plan is stored, so the
    # answer comes without waiting for an orchestrator (one process hop fewer on every job).
    quick = settings.model_copy(update={"request_timeout_s": 10.0})
    with spawn(quick, "worker", DIM_NODE_ID="w1"):
        _, key = await create_key(
            bus, principal_id="al", tenant="acme", roles=("member",), actor="t"
        )
        async with AsyncTestClient(app=create_app(quick)) as client:
            gw = client.app.state.gateway
            await wait_until(lambda: _true(bool(gw.nodes.live())), what="worker in the view")
            r = await client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
    events = await job_events(bus, r.headers["x-dim-job-id"])
    assert [e.type for e in events] == ["job.submitted", "task.started", "task.completed"]
    assert events[0].data.plan is not None  # type: ignore[union-attr]
