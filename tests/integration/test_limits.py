"""Rate limits across gateway replicas, counted by NATS."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
from litestar.testing import AsyncTestClient

from events.bus import Bus
from gateway.app import create_app
from gateway.limits import WINDOW_S
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import spawn, wait_ready, wait_until


async def test_requests_per_minute_are_counted_across_replicas(
    bus: Bus, settings: Settings
) -> None:
    limited = settings.model_copy(update={"rate_limit_rpm": 4})
    _, key = await create_key(
        bus, principal_id="fred", tenant="acme", roles=("member",), actor="test"
    )
    _, other = await create_key(
        bus, principal_id="gina", tenant="acme", roles=("member",), actor="test"
    )
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        AsyncTestClient(app=create_app(limited)) as a,
        AsyncTestClient(app=create_app(limited)) as b,
    ):
        for c in (a, b):
            gw = c.app.state.gateway

            async def loaded(gw: object = gw) -> bool:
                return len(gw.keys.items) >= 2  # type: ignore[attr-defined]

            await wait_until(loaded, what="keys in each replica")
        left = WINDOW_S - time.time() % WINDOW_S
        if left < 5:  # do not straddle two windows
            await asyncio.sleep(left + 0.1)
        answers = [await c.get("/v1/models", headers=auth) for c in (a, b, a, b, a)]
        assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == [
            "3",
            "2",
            "1",
            "0",
            "0",
        ]
        assert all(r.headers["x-ratelimit-limit-requests"] == "4" for r in answers)
        over = answers[-1]
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert over.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        # Another caller has a count of its own.
        assert (
            await b.get("/v1/models", headers={"Authorization": f"Bearer {other}"})
        ).status_code == 200


async def test_a_tenant_as_a_whole_is_limited_across_its_keys(bus: Bus, settings: Settings) -> None:
    """Many keys of one tenant, each under its own limit, together over the tenant's."""
    limited = settings.model_copy(update={"rate_limit_rpm": 100, "tenant_rate_limit_rpm": 5})
    keys = [
        (await create_key(bus, principal_id=f"m{i}", tenant="acme", roles=("member",), actor="t"))[
            1
        ]
        for i in range(6)
    ]
    _, outsider = await create_key(
        bus, principal_id="x", tenant="globex", roles=("member",), actor="t"
    )
    async with AsyncTestClient(app=create_app(limited)) as c:
        gw = c.app.state.gateway

        async def loaded() -> bool:
            return len(gw.keys.items) >= 7

        await wait_until(loaded, what="the keys")
        left = WINDOW_S - time.time() % WINDOW_S
        if left < 5:  # do not straddle two windows
            await asyncio.sleep(left + 0.1)
        codes = [
            (await c.get("/v1/models", headers={"Authorization": f"Bearer {k}"})).status_code
            for k in keys
        ]
        assert codes == [200] * 5 + [429]  # one request per key: the tenant's sixth is over
        other = await c.get("/v1/models", headers={"Authorization": f"Bearer {outsider}"})
        assert other.status_code == 200  # another tenant has its own count


async def test_no_limit_when_set_to_zero(bus: Bus, settings: Settings) -> None:
    _, key = await create_key(
        bus, principal_id="hal", tenant="acme", roles=("member",), actor="test"
    )
    async with AsyncTestClient(
        app=create_app(settings.model_copy(update={"rate_limit_rpm": 0}))
    ) as c:
        gw = c.app.state.gateway

        async def loaded() -> bool:
            return bool(gw.keys.items)

        await wait_until(loaded, what="the key")
        answers = [
            await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}) for _ in range(10)
        ]
    assert all(
        r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers for r in answers
    )


async def test_a_tenant_over_its_daily_tokens_gets_429(bus: Bus, settings: Settings) -> None:
    quota = settings.model_copy(update={"tenant_daily_tokens": 20})
    _, key = await create_key(
        bus, principal_id="ivy", tenant="thrifty", roles=("member",), actor="test"
    )
    _, elsewhere = await create_key(
        bus, principal_id="jon", tenant="rich", roles=("member",), actor="test"
    )
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with (
        spawn(quota, "orchestrator"),
        spawn(quota, "projector"),
        spawn(quota, "worker", DIM_NODE_ID="w1"),
    ):
        async with AsyncTestClient(app=create_app(quota)) as c:
            gw = c.app.state.gateway

            async def ready() -> bool:
                return bool(gw.nodes.live()) and len(gw.keys.items) >= 2

            await wait_until(ready, what="worker and keys")
            used = 0
            while used < 20:  # 3 + 8 = 11 tokens a request: the second crosses the quota
                r = await c.post("/v1/chat/completions", headers=auth, json=body)
                assert r.status_code == 200, r.text
                used += r.json()["usage"]["total_tokens"]

            async def refused() -> bool:  # once the usage projection has counted them
                r = await c.post("/v1/chat/completions", headers=auth, json=body)
                return r.status_code == 429

            await wait_until(refused, timeout_s=10, what="the quota to bite")
            r = await c.post("/v1/jobs", headers=auth, json={"model": "sim-small", "prompt": "x"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
            assert (
                "resets at 00:00 UTC" in r.json()["error"]["message"]
                and int(r.headers["retry-after"]) > 0
            )
            other = await c.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {elsewhere}"}, json=body
            )
            assert other.status_code == 200  # another tenant is not affected


async def test_a_tenants_quota_holds_across_gateways(bus: Bus, settings: Settings) -> None:
    """A job admitted by one gateway holds its max_tokens of the tenant's quota at every other
    gateway until it ends (each gateway counted only its own: N gateways let N times through)."""
    quota = settings.model_copy(update={"tenant_daily_tokens": 100})
    _, key = await create_key(
        bus, principal_id="ivy", tenant="thrifty", roles=("member",), actor="test"
    )
    auth = {"Authorization": f"Bearer {key}"}

    def job(max_tokens: int) -> dict[str, object]:
        return {"model": "sim-small", "prompt": "hi", "max_tokens": max_tokens}

    with (
        spawn(quota, "orchestrator"),
        spawn(quota, "projector"),
        spawn(quota, "worker", DIM_NODE_ID="w1", DIM_SIM_TOKENS_PER_S="10"),  # 40 tokens: ~4 s
    ):
        async with (
            AsyncTestClient(app=create_app(quota)) as a,
            AsyncTestClient(app=create_app(quota)) as b,
        ):
            for c in (a, b):
                gw = c.app.state.gateway

                async def ready() -> bool:
                    return bool(gw.nodes.live()) and len(gw.keys.items) >= 1  # noqa: B023

                await wait_until(ready, what="worker and key in each gateway")
            r = await a.post("/v1/jobs", headers=auth, json=job(40))
            assert r.status_code == 202, r.text
            running = r.json()["job_id"]
            reservations = b.app.state.gateway.quotas.reservations

            async def seen_by_b() -> bool:
                return bool(reservations.by_tenant["thrifty"] == 40)

            await wait_until(seen_by_b, timeout_s=5, what="gateway b to see a's reservation")
            refused = await b.post("/v1/jobs", headers=auth, json=job(70))  # 40 + 70 > 100
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["param"] == "max_tokens"
            assert "60 of its 100 left" in refused.json()["error"]["message"]

            async def ended() -> bool:
                r = await a.get(f"/v1/jobs/{running}", headers=auth)
                return bool(r.json()["status"] == "completed")

            await wait_until(ended, timeout_s=30, what="the first job to end")

            async def room_again() -> bool:  # its reservation gone, its real usage counted
                r = await b.post("/v1/jobs", headers=auth, json=job(40))
                return r.status_code == 202

            await wait_until(room_again, timeout_s=10, what="the quota back at gateway b")


@contextlib.asynccontextmanager
async def _one_slow_worker(bounded: Settings, *, keys: int) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """A gateway (test client) with an orchestrator and one worker that runs a task at a time,
    slowly, so work piles up; yields once the gateway sees the worker and `keys` API keys."""
    with (
        spawn(bounded, "orchestrator"),
        spawn(bounded, "worker", DIM_NODE_ID="one", DIM_CAPACITY="1", DIM_SIM_TOKENS_PER_S="10"),
    ):
        async with AsyncTestClient(app=create_app(bounded)) as c:
            gw = c.app.state.gateway

            async def ready() -> bool:
                return bool(gw.nodes.serving("sim-small")) and len(gw.keys.items) >= keys

            await wait_until(ready, what="the worker and the keys in the gateway")
            yield c


async def test_a_model_with_too_many_tasks_waiting_turns_new_work_away_with_503(
    bus: Bus, settings: Settings
) -> None:
    bounded = settings.model_copy(update={"max_queued_per_model": 3})
    _, key = await create_key(bus, principal_id="hal", tenant="acme", roles=("member",), actor="t")
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "sim-small", "prompt": "slow work", "max_tokens": 6}
    async with _one_slow_worker(bounded, keys=1) as c:
        gw = c.app.state.gateway
        accepted = 0
        for _ in range(6):  # until the backlog is reported (it may be, on a slow machine)
            r = await c.post("/v1/jobs", headers=auth, json=body)
            if r.status_code != 202:
                assert r.status_code == 503, r.text
                break
            accepted += 1
        assert accepted >= 4  # 1 running, 3+ waiting: the bound is reached

        async def reported() -> bool:  # the next heartbeats report the backlog
            return any(n.queued.get("sim-small", 0) >= 3 for n in gw.nodes.serving("sim-small"))

        await wait_until(reported, timeout_s=10, what="the worker to report its backlog")
        over = await c.post("/v1/jobs", headers=auth, json=body)
        assert over.status_code == 503, over.text
        error = over.json()["error"]
        assert error["code"] == "overloaded" and "tasks are waiting" in error["message"]
        assert over.headers["retry-after"] == "1"

        async def drained() -> bool:
            return all(n.queued.get("sim-small", 0) < 3 for n in gw.nodes.serving("sim-small"))

        await wait_until(drained, timeout_s=30, what="the backlog to drain")
        assert (await c.post("/v1/jobs", headers=auth, json=body)).status_code == 202


async def test_a_tenant_with_too_many_jobs_held_gets_429_and_others_do_not(
    bus: Bus, settings: Settings
) -> None:
    bounded = settings.model_copy(update={"queue_depth": 1, "max_held_per_tenant": 2})
    _, flood = await create_key(
        bus, principal_id="ivy", tenant="acme", roles=("member",), actor="t"
    )
    _, other = await create_key(
        bus, principal_id="joe", tenant="globex", roles=("member",), actor="t"
    )
    body = {"model": "sim-small", "prompt": "slow work", "max_tokens": 6}
    async with _one_slow_worker(bounded, keys=2) as c:
        gw = c.app.state.gateway
        mine = {"Authorization": f"Bearer {flood}"}
        answers = []
        for _ in range(40):  # bounded: submit until the published held count turns us away
            over = await c.post("/v1/jobs", headers=mine, json=body)
            answers.append(over.status_code)
            if over.status_code != 202:
                break
            await asyncio.sleep(0.05)
        assert answers.count(202) >= 4  # 1 running, 1 waiting, 2+ held before the bound bites
        assert over.status_code == 429, over.text
        assert over.json()["error"]["code"] == "tenant_queue_full"
        assert over.headers["retry-after"] == "1"
        record = gw.queues.items.get("acme")
        assert record is not None and record.held >= 2
        theirs = await c.post("/v1/jobs", headers={"Authorization": f"Bearer {other}"}, json=body)
        assert theirs.status_code == 202  # another tenant is not held back by acme's flood


async def test_login_limits_count_the_client_behind_a_trusted_proxy(
    bus: Bus, settings: Settings
) -> None:
    """The gateway process (uvicorn) believes X-Forwarded-For from DIM_FORWARDED_ALLOW_IPS
    (loopback here, where this test's proxy-like client is): each client address has its own
    budget of attempts, not one shared by everyone behind the proxy."""
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port, "auth_rpm": 2})  # 6 per address
    with spawn(s, "gateway"):
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        async with httpx.AsyncClient(base_url=base) as http:

            async def login(i: int, client: str) -> int:
                r = await http.post(
                    "/v1/auth/login",
                    json={"email": f"u{i}@x.test", "password": "wrong password"},
                    headers={"x-forwarded-for": client},
                )
                return r.status_code

            left = WINDOW_S - time.time() % WINDOW_S
            if left < 5:  # counts are per minute: do not straddle two
                await asyncio.sleep(left + 0.1)
            one = [await login(i, "203.0.113.1") for i in range(7)]
            assert one == [401] * 6 + [429]  # the address's budget (each email its own)
            assert await login(99, "203.0.113.2") == 401  # another client behind the proxy
