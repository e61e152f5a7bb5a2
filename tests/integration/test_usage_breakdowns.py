"""Usage you can read: the usage projection folded by a real projector process from real jobs,
per API key, model and end user; read over HTTP within the caller's scope (their own, an
admin's tenant; never another tenant's) and with `dim usage --by`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from litestar.testing import AsyncTestClient

from events.bus import Bus
from events.envelope import Envelope
from events.inference import Usage
from events.jobs import JobCompleted
from gateway.app import create_app
from projections.usage import day_of
from projections.usage_detail import UsageDetail, detail_key
from services.accounts.keys import create_key
from services.settings import Settings
from services.up import child_env
from tests.mesh import spawn, wait_until

CHAT = [{"role": "user", "content": "hello there"}]
DIM_USAGE = (sys.executable, "-m", "services.cli", "usage")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_usage_per_key_model_and_user_within_the_callers_scope(
    bus: Bus, settings: Settings
) -> None:
    made = {
        name: await create_key(bus, principal_id=who, tenant=tenant, roles=(role,), actor="t")
        for name, who, tenant, role in [
            ("ann1", "ann", "acme", "member"),
            ("ann2", "ann", "acme", "member"),
            ("bob", "bob", "acme", "member"),
            ("boss", "boss", "acme", "admin"),
            ("eve", "eve", "globex", "member"),
        ]
    }
    ids = {name: record.key_id for name, (record, _) in made.items()}
    keys = {name: key for name, (_, key) in made.items()}
    with (
        spawn(settings, "orchestrator"),
        spawn(settings, "projector"),
        spawn(settings, "worker", DIM_NODE_ID="w1", DIM_MODELS="sim-small,sim-large"),
    ):
        async with AsyncTestClient(app=create_app(settings)) as c:
            gw = c.app.state.gateway

            async def ready() -> bool:
                return len(gw.nodes.serving("sim-large")) == 1 and len(gw.keys.items) == 5

            await wait_until(ready, what="the worker and the keys in the gateway")
            spent: dict[tuple[str, str, str | None], int] = {}
            for name, model, user in [
                ("ann1", "sim-small", "u1"),
                ("ann1", "sim-large", "u2"),
                ("ann2", "sim-small", None),
                ("bob", "sim-small", "u1"),
            ]:
                body: dict[str, Any] = {"model": model, "messages": CHAT, "max_tokens": 5}
                if user is not None:
                    body["user"] = user
                r = await c.post("/v1/chat/completions", headers=_auth(keys[name]), json=body)
                assert r.status_code == 200, r.text
                spent[(name, model, user)] = r.json()["usage"]["total_tokens"]

            async def usage(key: str, query: str = "") -> dict[str, Any]:
                r = await c.get(f"/v1/usage{query}", headers=_auth(key))
                assert r.status_code == 200, r.text
                body: dict[str, Any] = r.json()
                return body

            async def counted() -> bool:
                groups = (await usage(keys["boss"]))["groups"]
                return sum(g["requests"] for g in groups) == 4

            await wait_until(counted, what="the usage projection to count the four jobs")

            # an admin: the whole tenant, per key and model by default
            report = await usage(keys["boss"])
            assert report["scope"] == "tenant" and report["group_by"] == ["key", "model"]
            (today,) = report["data"]  # the tenant's totals, as before
            assert today["requests"] == 4 and today["total_tokens"] == sum(spent.values())
            rows = {(g["key_id"], g["model"]): g for g in report["groups"]}
            assert set(rows) == {
                (ids["ann1"], "sim-small"),
                (ids["ann1"], "sim-large"),
                (ids["ann2"], "sim-small"),
                (ids["bob"], "sim-small"),
            }
            ann1_large = rows[(ids["ann1"], "sim-large")]
            assert ann1_large["owner"] == "ann" and ann1_large["requests"] == 1
            assert ann1_large["total_tokens"] == spent[("ann1", "sim-large", "u2")]
            assert all(g["day"] == day_of(datetime.now(UTC)) for g in report["groups"])
            assert {k["key_id"] for k in report["keys"]} == {
                ids[n] for n in ("ann1", "ann2", "bob", "boss")
            }
            by_key = {k["key_id"]: k for k in report["keys"]}
            assert by_key[ids["ann1"]]["used_tokens"] == (
                spent[("ann1", "sim-small", "u1")] + spent[("ann1", "sim-large", "u2")]
            )
            assert by_key[ids["ann1"]]["daily_tokens"] is None

            by_user = await usage(keys["boss"], "?group_by=user")
            users = {(g["user"], g["requests"]) for g in by_user["groups"]}
            assert users == {("u1", 2), ("u2", 1), (None, 1)}
            assert all(g["key_id"] is None and g["model"] is None for g in by_user["groups"])
            one = await usage(keys["boss"], "?group_by=model&model=sim-large&days=1")
            (large,) = one["groups"]
            assert large["model"] == "sim-large" and large["requests"] == 1

            # a member: their own keys only (two of them here), the tenant's totals still
            mine = await usage(keys["ann1"], "?group_by=key")
            assert mine["scope"] == "own" and mine["data"] == report["data"]
            assert {g["key_id"] for g in mine["groups"]} == {ids["ann1"], ids["ann2"]}
            assert {k["key_id"] for k in mine["keys"]} == {ids["ann1"], ids["ann2"]}
            assert (await usage(keys["ann1"], f"?key={ids['bob']}"))["groups"] == []

            # another tenant reads none of it, and cannot ask for it
            theirs = await usage(keys["eve"])
            assert theirs["tenant"] == "globex" and theirs["data"] == []
            assert theirs["groups"] == [] and [k["key_id"] for k in theirs["keys"]] == [ids["eve"]]
            for query, param in [("?tenant=acme", "tenant"), ("?group_by=tenant", "group_by")]:
                r = await c.get(f"/v1/usage{query}", headers=_auth(keys["eve"]))
                assert r.status_code == 400, r.text
                error = r.json()["error"]
                assert error["param"] == param and "'tenant'" in error["message"]

            # an event from before these fields still folds: in the tenant's day, keyless
            old = JobCompleted(
                job_id="01OLDJOB0000000000000000OL",
                output="x",
                finish_reason="stop",
                usage=Usage(prompt_tokens=2, completion_tokens=3),
                tenant="acme",
            )
            await bus.publish(settings.names.job(old.job_id, old.type), Envelope(old, actor="o"))

            async def folded() -> bool:
                per_day = (await usage(keys["boss"], "?group_by="))["groups"]
                return [g["requests"] for g in per_day] == [5]

            await wait_until(folded, what="the older event to be counted")
            by_key_rows = (await usage(keys["boss"], "?group_by=key"))["groups"]
            assert {(g["key_id"], g["owner"]) for g in by_key_rows} >= {(None, None)}

        # a second projector instance replays every event: nothing is counted twice
        kv = await bus.bucket("usage")
        key = detail_key("acme", day_of(datetime.now(UTC)))
        before = await kv.get(key)
        assert before is not None
        with spawn(settings, "projector", DIM_INSTANCE_ID="again"):

            async def replayed() -> bool:  # it folded the same events and skipped them
                return await bus.backlog(settings.names.jobs_stream, "usage-again") == (0, 0)

            await wait_until(replayed, what="the second projector to fold every job.completed")
        after = await kv.get(key)
        assert after is not None and after.value == before.value
        detail = UsageDetail.model_validate_json(after.value)
        assert sum(cell.requests for cell in detail.cells) == 5

    # the command line, from the bucket: every key of the tenant
    cli = await asyncio.to_thread(
        subprocess.run,
        [*DIM_USAGE, "--tenant", "acme", "--by", "key"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert ids["bob"] in cli.stdout and "(none)" in cli.stdout  # the older, keyless event
    cli = await asyncio.to_thread(
        subprocess.run,
        [*DIM_USAGE, "--tenant", "acme", "--by", "user,model", "--json"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    rows_cli = json.loads(cli.stdout)
    assert {(r["user"], r["model"], r["requests"]) for r in rows_cli} == {
        ("u1", "sim-small", 2),
        ("u2", "sim-large", 1),
        (None, "sim-small", 1),
        (None, None, 1),
    }


async def test_a_key_budgets_reservation_is_released_when_its_job_ends(
    bus: Bus, settings: Settings
) -> None:
    """No tenant quota: a key's budget alone makes its jobs reserve, and the projector gives the
    reservation back at the job's end (the job says it holds one)."""
    _, key = await create_key(
        bus, principal_id="ivy", tenant="acme", roles=("member",), actor="t", daily_tokens=1_000
    )
    with (
        spawn(settings, "orchestrator"),
        spawn(settings, "projector"),
        spawn(settings, "worker", DIM_NODE_ID="w1"),
    ):
        async with AsyncTestClient(app=create_app(settings)) as c:
            gw = c.app.state.gateway

            async def ready() -> bool:
                return bool(gw.nodes.live()) and len(gw.keys.items) == 1

            await wait_until(ready, what="the worker and the key in the gateway")
            body = {"model": "sim-small", "prompt": "hi", "max_tokens": 7, "n": 2}
            r = await c.post("/v1/completions", headers=_auth(key), json=body)
            assert r.status_code == 200, r.text
            used = r.json()["usage"]["total_tokens"]

            async def settled() -> bool:
                report = (await c.get("/v1/usage", headers=_auth(key))).json()
                (mine,) = report["keys"]
                return bool(mine["reserved_tokens"] == 0 and mine["used_tokens"] == used)

            await wait_until(settled, what="the reservation to go and the usage to be counted")
            report = (await c.get("/v1/usage", headers=_auth(key))).json()
            (mine,) = report["keys"]
            assert mine["daily_tokens"] == 1_000 and mine["remaining_tokens"] == 1_000 - used
            assert not gw.quotas.reservations.by_key
