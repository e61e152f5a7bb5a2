"""The jobs, keys and nodes APIs, with tenancy, through Litestar's test client and real NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from litestar.testing import AsyncTestClient

from events.bus import Bus
from gateway.app import create_app
from projections.job_status import VIEW_MAX_BYTES
from services.accounts.keys import create_key
from services.settings import Settings
from tests.mesh import job_events, spawn, wait_until


@dataclass
class World:
    """A gateway with callers in two tenants."""

    client: AsyncTestClient
    alice: dict[str, str]  # member of acme
    bob: dict[str, str]  # member of acme
    root: dict[str, str]  # admin of acme
    eve: dict[str, str]  # admin of globex


async def _auth(bus: Bus, who: str, tenant: str, role: str) -> dict[str, str]:
    _, key = await create_key(bus, principal_id=who, tenant=tenant, roles=(role,), actor="test")  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def world(bus: Bus, settings: Settings) -> AsyncIterator[World]:
    with (
        spawn(settings, "orchestrator"),
        spawn(settings, "projector"),
        spawn(settings, "worker", DIM_NODE_ID="w1"),
    ):
        w = [
            await _auth(bus, "alice", "acme", "member"),
            await _auth(bus, "bob", "acme", "member"),
            await _auth(bus, "root", "acme", "admin"),
            await _auth(bus, "eve", "globex", "admin"),
        ]
        async with AsyncTestClient(app=create_app(settings)) as client:
            gw = client.app.state.gateway

            async def ready() -> bool:
                return bool(gw.nodes.live()) and len(gw.keys.items) >= 4

            await wait_until(ready, what="worker and keys in the gateway's view")
            yield World(client, *w)


async def _finished(client: AsyncTestClient, auth: dict[str, str], job_id: str) -> dict:  # type: ignore[type-arg]
    body: dict = {}  # type: ignore[type-arg]

    async def done() -> bool:
        nonlocal body
        r = await client.get(f"/v1/jobs/{job_id}", headers=auth)
        body = r.json()
        return r.status_code == 200 and body["status"] in ("completed", "failed", "cancelled")

    await wait_until(done, what=f"job {job_id} to end")
    return body


async def _stored_completed_view(bus: Bus, job_id: str) -> bytes:
    """The job's view as the projector stores it, once it shows the job completed (it is
    written a moment after the end, which the API answers from the log)."""
    views = await bus.bucket("jobs")
    stored = b""

    async def completed() -> bool:
        nonlocal stored
        entry = await views.get(job_id)
        stored = entry.value if entry is not None else b""
        return b'"status":"completed"' in stored

    await wait_until(completed, what="the projector's view")
    return stored


async def test_submit_read_and_history(world: World) -> None:
    c = world.client
    r = await c.post(
        "/v1/jobs",
        headers=world.alice,
        json={"model": "sim-small", "prompt": "hello", "max_tokens": 6},
    )
    assert r.status_code == 202 and r.json()["created"] is True
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    job = await _finished(c, world.alice, job_id)
    assert job["status"] == "completed" and job["owner"] == "alice" and job["tenant"] == "acme"
    assert job["usage"]["completion_tokens"] == 6 and job["finish_reason"] == "length"
    assert job["tasks"][0]["node_id"] == "w1" and job["output"]
    events = (await c.get(f"/v1/jobs/{job_id}/events", headers=world.alice)).json()
    # a plain job with a free slot waiting is planned at the door: its plan is in job.submitted
    assert [e["type"] for e in events] == [
        "job.submitted",
        "task.started",
        "task.completed",
        "job.completed",
    ]
    (dispatch,) = events[0]["data"]["plan"]["dispatched"]
    assert dispatch["task_id"] == job["tasks"][0]["task_id"] and dispatch["node_id"] is None
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


async def test_a_job_that_must_choose_a_node_is_planned_by_the_orchestrator(world: World) -> None:
    c = world.client
    r = await c.post(
        "/v1/jobs",
        headers=world.alice,
        json={
            "model": "sim-small",
            "prompt": "hello",
            "max_tokens": 4,
            "routing": {"strategy": "round_robin"},
        },
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = await _finished(c, world.alice, job_id)
    assert job["status"] == "completed"
    events = (await c.get(f"/v1/jobs/{job_id}/events", headers=world.alice)).json()
    types = [e["type"] for e in events]
    assert types[:2] == ["job.submitted", "job.planned"], types
    assert events[0]["data"]["plan"] is None
    (dispatch,) = events[1]["data"]["dispatched"]
    assert dispatch["node_id"] == "w1"  # chosen, and sent to that node's own subject


async def test_the_same_idempotency_key_returns_the_same_job(world: World) -> None:
    c = world.client
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "once"}]}
    key = {"Idempotency-Key": "order-42"}
    first, second = await asyncio.gather(
        c.post("/v1/jobs", headers=world.alice | key, json=body),
        c.post("/v1/jobs", headers=world.alice | key, json=body),
    )
    assert first.json()["job_id"] == second.json()["job_id"]
    assert sorted([first.json()["created"], second.json()["created"]]) == [False, True]
    third = await c.post("/v1/jobs", headers=world.alice | key, json=body)
    assert third.json() == {"job_id": first.json()["job_id"], "status": "queued", "created": False}
    other = await c.post("/v1/jobs", headers=world.bob | key, json=body)  # same key, another caller
    assert other.json()["job_id"] != first.json()["job_id"]
    events = (await c.get(f"/v1/jobs/{first.json()['job_id']}/events", headers=world.alice)).json()
    assert [e["type"] for e in events].count("job.submitted") == 1


async def test_nobody_sees_or_cancels_another_tenants_job(world: World) -> None:
    c = world.client
    job_id = (
        await c.post("/v1/jobs", headers=world.alice, json={"model": "sim-small", "prompt": "mine"})
    ).json()["job_id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events"):
        r = await c.get(path, headers=world.eve)  # an admin, but of another tenant
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        assert (
            await c.get(path, headers=world.bob)
        ).status_code == 404  # same tenant, not the owner
        assert (await c.get(path, headers=world.root)).status_code == 200  # the tenant's admin
    assert (await c.delete(f"/v1/jobs/{job_id}", headers=world.eve)).status_code == 404
    await _finished(c, world.alice, job_id)
    assert job_id not in [
        j["job_id"] for j in (await c.get("/v1/jobs", headers=world.eve)).json()["data"]
    ]


async def test_list_pages_and_filters(world: World) -> None:
    c = world.client
    ids = [
        (
            await c.post(
                "/v1/jobs", headers=world.bob, json={"model": "sim-small", "prompt": f"p{i}"}
            )
        ).json()["job_id"]
        for i in range(5)
    ]
    for job_id in ids:
        await _finished(c, world.bob, job_id)

    async def projected() -> bool:  # the list reads the projection, which trails the log a little
        listed = (await c.get("/v1/jobs?limit=200&status=completed", headers=world.bob)).json()[
            "data"
        ]
        return {j["job_id"] for j in listed} >= set(ids)

    await wait_until(projected, what="the projection to catch up")
    page1 = (await c.get("/v1/jobs?limit=3", headers=world.bob)).json()
    page2 = (await c.get(f"/v1/jobs?limit=3&before={page1['next']}", headers=world.bob)).json()
    listed = [j["job_id"] for j in page1["data"] + page2["data"]]
    assert listed == sorted(ids, reverse=True) and page2["next"] is None
    assert all(j["owner"] == "bob" for j in page1["data"])
    done = (await c.get("/v1/jobs?status=completed&limit=200", headers=world.root)).json()["data"]
    assert {"bob"} <= {j["owner"] for j in done}  # the admin sees the tenant's jobs
    assert (await c.get("/v1/jobs?status=failed", headers=world.bob)).json()["data"] == []


async def test_cancel_a_running_job_and_not_an_ended_one(world: World, settings: Settings) -> None:
    c = world.client
    with spawn(settings.model_copy(update={"sim_tokens_per_s": 4}), "worker", DIM_NODE_ID="slow"):
        await wait_until(lambda: _live(world, "slow"), what="the slow worker in the gateway's view")
        r = await c.post(
            "/v1/jobs",
            headers=world.alice,
            json={"model": "sim-small", "prompt": "x", "node": "slow"},
        )
        job_id = r.json()["job_id"]

        async def running() -> bool:
            return (await c.get(f"/v1/jobs/{job_id}", headers=world.alice)).json()[
                "status"
            ] == "running"

        await wait_until(running, what="the job to run")
        cancelled = await c.delete(f"/v1/jobs/{job_id}", headers=world.alice)
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelling"
        job = await _finished(c, world.alice, job_id)
    assert job["status"] == "cancelled" and job["error"] == "cancelled by alice"
    again = await c.delete(f"/v1/jobs/{job_id}", headers=world.alice)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_ended"


async def _live(world: World, node: str) -> bool:
    return any(n.node_id == node for n in world.client.app.state.gateway.nodes.live())


async def test_bad_job_requests(world: World) -> None:
    c = world.client
    both = await c.post(
        "/v1/jobs", headers=world.alice, json={"model": "sim-small", "prompt": "a", "messages": []}
    )
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]
    unknown = await c.post("/v1/jobs", headers=world.alice, json={"model": "ghost", "prompt": "a"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    extra = await c.post(
        "/v1/jobs", headers=world.alice, json={"model": "sim-small", "prompt": "a", "oops": 1}
    )
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "oops"
    assert (await c.get("/v1/jobs/does-not-exist", headers=world.alice)).status_code == 404


async def test_jobs_that_would_grow_past_their_bounds_are_refused_at_the_door(world: World) -> None:
    """The hostile member's requests of the probe: each a 400 naming the field, nothing stored."""
    c = world.client
    amplify = {  # 109 KB that rendered a 100 MB prompt
        "pattern": "chained",
        "model": "sim-small",
        "prompt": "x" * 100_000,
        "steps": [{"name": "boom", "prompt": "{{ input }}" * 1000}],
    }
    r = await c.post("/v1/jobs", headers=world.alice, json=amplify)
    assert r.status_code == 400, r.text
    assert r.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "code": "request_too_large",
        "param": "steps.0.prompt",
    }
    shards = {  # 900 KB split into 900,000 shards: refused before they are built
        "pattern": "collaborative",
        "model": "sim-small",
        "input": "x" * 900_000,
        "split": {"by": "chars", "size": 1},
    }
    r = await c.post("/v1/jobs", headers=world.alice, json=shards)
    assert r.status_code == 400 and "more than 1000 shards" in r.json()["error"]["message"]
    listed = await c.get("/v1/jobs", headers=world.alice)
    assert listed.json()["data"] == []  # nothing was accepted


async def test_admin_endpoints_are_for_admins(world: World) -> None:
    c = world.client
    member = await c.get("/v1/nodes", headers=world.alice)
    assert member.status_code == 403 and member.json()["error"]["type"] == "permission_error"
    nodes = (await c.get("/v1/nodes", headers=world.root)).json()
    assert [n["node_id"] for n in nodes if n["live"]] == ["w1"]
    assert nodes[0]["capacity"] > 0 and "tasks_completed" in nodes[0]
    assert nodes[0]["verified"] is False  # no seed, no key enrolled: an unsigned record


async def test_keys_over_http(world: World) -> None:
    c = world.client
    issued = await c.post("/v1/keys", headers=world.alice, json={"name": "laptop"})
    assert issued.status_code == 201
    key = issued.json()["key"]
    assert issued.json()["principal_id"] == "alice" and issued.json()["roles"] == ["member"]
    assert (
        await c.post("/v1/keys", headers=world.alice, json={"role": "admin"})
    ).status_code == 403
    assert (
        await c.post("/v1/keys", headers=world.alice, json={"principal_id": "bob"})
    ).status_code == 403
    mine = (await c.get("/v1/keys", headers=world.alice)).json()
    assert all(k["principal_id"] == "alice" for k in mine) and all("key" not in k for k in mine)
    gw = c.app.state.gateway
    await wait_until(
        lambda: _has_key(gw, issued.json()["key_id"]), what="the key to reach the gateway"
    )
    new_auth = {"Authorization": f"Bearer {key}"}
    assert (await c.get("/v1/models", headers=new_auth)).status_code == 200
    assert (
        await c.delete(f"/v1/keys/{issued.json()['key_id']}", headers=world.eve)
    ).status_code == 404
    assert (
        await c.delete(f"/v1/keys/{issued.json()['key_id']}", headers=world.alice)
    ).status_code == 204

    async def refused() -> bool:
        return (await c.get("/v1/models", headers=new_auth)).status_code == 401

    await wait_until(refused, timeout_s=1, what="the revoked key to be refused")


async def _has_key(gw: object, key_id: str) -> bool:
    return key_id in gw.keys.items  # type: ignore[attr-defined]


async def test_a_free_slot_is_used_by_the_door_again_as_soon_as_its_job_ends(
    bus: Bus, settings: Settings
) -> None:
    # One slot in the whole mesh, and heartbeats too slow to tell the gateway it is free again:
    # only the job's own end, seen by the gateway, frees it for the next plan at the door.
    slow = settings.model_copy(update={"heartbeat_s": 20.0, "node_ttl_s": 60.0})
    with (
        spawn(slow, "orchestrator"),
        spawn(slow, "worker", DIM_NODE_ID="w1", DIM_CAPACITY="1"),
    ):
        auth = await _auth(bus, "alice", "acme", "member")
        async with AsyncTestClient(app=create_app(slow)) as client:
            gw = client.app.state.gateway

            async def ready() -> bool:
                return bool(gw.nodes.live()) and bool(gw.keys.items)

            await wait_until(ready, what="the worker and the key in the gateway's view")
            body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
            jobs = []
            for _ in range(3):
                r = await client.post("/v1/chat/completions", headers=auth, json=body)
                assert r.status_code == 200, r.text
                jobs.append(r.headers["x-dim-job-id"])
            for job_id in jobs:
                (first, *_) = await job_events(bus, job_id)
                assert first.data.plan is not None, job_id  # type: ignore[attr-defined]
            assert gw.preplanner.planned == 3


async def test_a_user_holds_a_bounded_number_of_keys(world: World, settings: Settings) -> None:
    """Each key has its own rate budget: unlimited keys would be an unlimited rate."""
    c = world.client
    gw = c.app.state.gateway

    def bobs() -> int:
        return sum(1 for r in gw.keys.items.values() if r.principal_id == "bob")

    for held in range(bobs(), settings.max_keys_per_user):
        r = await c.post("/v1/keys", headers=world.bob, json={"name": f"k{held}"})
        assert r.status_code == 201, r.text

        async def seen(n: int = held + 1) -> bool:
            return bobs() == n

        await wait_until(seen, what="the key in the gateway's ring")
    over = await c.post("/v1/keys", headers=world.bob, json={"name": "one too many"})
    assert over.status_code == 409 and over.json()["error"]["code"] == "too_many_keys"


async def test_sixteen_choices_of_a_large_prompt_keep_one_copy(world: World, bus: Bus) -> None:
    """The probe's ordinary n=16 completion of a 600 KB prompt made a plan and a view of 16
    copies (9.6 MB, over NATS's 8 MB: the projector dead-lettered it, the view stayed wrong).
    The prompt is kept once, in the job; each work message carries it."""
    c = world.client
    r = await c.post(
        "/v1/chat/completions",
        headers=world.alice,
        json={
            "model": "sim-small",
            "messages": [{"role": "user", "content": "y" * 600_000}],
            "n": 16,
            "max_tokens": 2,
        },
    )
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["choices"]) == 16
    job_id = r.headers["x-dim-job-id"]
    body = await _finished(c, world.alice, job_id)
    assert body["status"] == "completed"
    planned = await bus.js.get_last_msg(bus.names.jobs_stream, bus.names.job(job_id, "job.planned"))
    stored = await bus.body(planned.data or b"", planned.headers)
    assert len(stored) < 100_000  # the plan names the tasks, not 16 copies of the prompt
    view = await _stored_completed_view(bus, job_id)
    assert len(view) < 1_000_000  # one copy, in the job


async def test_a_thousand_inputs_at_the_body_limit_make_a_view_that_fits(
    world: World, bus: Bus
) -> None:
    """1,000 inputs filling the body limit: its view (the inputs, a prompt per task, every
    output twice) is over the largest a view may be, so it is stored without its texts; the job
    read through the API is whole, from its log."""
    c = world.client
    inputs = [f"{i:04d} " + "z" * 950 for i in range(1000)]  # ~956 KB of a 1 MB body
    r = await c.post(
        "/v1/jobs",
        headers=world.alice,
        json={"pattern": "collaborative", "model": "sim-small", "inputs": inputs, "max_tokens": 4},
    )
    assert r.status_code in (200, 201, 202), r.text[:500]
    job_id = r.json()["job_id"]
    body = await _finished(c, world.alice, job_id)
    assert body["status"] == "completed" and not body["trimmed"]
    assert len(body["parts"]) == 1000 and all(p["output"] for p in body["parts"])
    assert body["output"] == "\n".join(p["output"] for p in body["parts"])
    stored = await _stored_completed_view(bus, job_id)
    assert len(stored) <= VIEW_MAX_BYTES
    assert b'"trimmed":true' in stored and b"zzzz" not in stored
    listed = await c.get("/v1/jobs", headers=world.alice)
    (summary,) = [j for j in listed.json()["data"] if j["job_id"] == job_id]
    assert summary["trimmed"] and summary["output"] is None and summary["status"] == "completed"
