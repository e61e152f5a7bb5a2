"""A key's daily token budget, through the official `openai` SDK against real processes: a key
issued over the keys API with `daily_tokens` is refused with 429 `key_budget_exceeded` once
spent (and at once for a request whose bound cannot fit), while another key of the same tenant
goes on working."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import serving, spawn, wait_ready, wait_until

CHAT = [{"role": "user", "content": "hello"}]


async def test_a_spent_key_budget_is_a_429_and_another_key_still_works(
    bus: Bus, settings: Settings
) -> None:
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    _, plain = await create_key(
        bus, principal_id="ann", tenant="acme", roles=("member",), actor="t"
    )
    with (
        spawn(s, "orchestrator"),
        spawn(s, "projector"),
        spawn(s, "worker", DIM_NODE_ID="w1"),
        spawn(s, "gateway"),
    ):
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        async with httpx.AsyncClient(base_url=base) as http:
            auth = {"Authorization": f"Bearer {plain}"}
            r = await http.post("/v1/keys", headers=auth, json={"name": "ci", "daily_tokens": 20})
            assert r.status_code == 201, r.text
            issued = r.json()
            assert issued["daily_tokens"] == 20
            listed = (await http.get("/v1/keys", headers=auth)).json()
            assert {k["key_id"]: k["daily_tokens"] for k in listed}[issued["key_id"]] == 20
            bad = await http.post("/v1/keys", headers=auth, json={"daily_tokens": 0})
            assert bad.status_code == 400, bad.text

        async def both_ready() -> bool:
            return await serving(base, issued["key"], "sim-small") and await serving(
                base, plain, "sim-small"
            )

        await wait_until(both_ready, what="the new key and the worker at the gateway")
        async with httpx.AsyncClient(base_url=base) as http:  # it cannot issue itself more
            r = await http.post(
                "/v1/keys", headers={"Authorization": f"Bearer {issued['key']}"}, json={}
            )
            assert r.status_code == 403 and r.json()["error"]["code"] == "key_has_budget"
        budgeted = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=issued["key"], max_retries=0)
        other = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=plain, max_retries=0)
        try:
            # a bound that cannot fit what is left is refused before any work is accepted
            with pytest.raises(openai.RateLimitError) as too_big:
                await budgeted.chat.completions.create(
                    model="sim-small", messages=CHAT, max_tokens=50
                )
            assert too_big.value.code == "key_budget_exceeded"
            assert "may use up to 50 tokens" in too_big.value.message
            # a batch whose lines together could pass the budget is refused when created
            line = {"method": "POST", "url": "/v1/chat/completions"}
            body = {"model": "sim-small", "messages": CHAT, "max_tokens": 8}
            raw = b"".join(
                json.dumps({**line, "custom_id": f"c{i}", "body": body}).encode() + b"\n"
                for i in range(3)  # 3 x 8 tokens at most: over the 20 left
            )
            upload = await budgeted.files.create(file=("in.jsonl", raw), purpose="batch")
            with pytest.raises(openai.RateLimitError) as batch_too_big:
                await budgeted.batches.create(
                    input_file_id=upload.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
            assert batch_too_big.value.code == "key_budget_exceeded"

            answered = 0
            refused = None
            for _ in range(10):  # ~3 + 8 tokens each: the budget of 20 is spent by the second
                try:
                    answer = await budgeted.chat.completions.create(
                        model="sim-small", messages=CHAT, max_tokens=8
                    )
                except openai.RateLimitError as exc:
                    if answered >= 2:
                        refused = exc
                        break
                    # refused for what a running job reserved: wait for it to be counted
                    await _counted(base, issued["key"], issued["key_id"])
                    continue
                assert answer.usage is not None
                answered += 1
            assert refused is not None, "the budget never ran out"
            assert refused.code == "key_budget_exceeded"
            assert f"API key {issued['key_id']}" in refused.message
            assert "daily budget of 20 tokens" in refused.message
            assert "resets at 00:00 UTC" in refused.message
            assert int(refused.response.headers["retry-after"]) > 0

            # another key of the same tenant, without a budget: not held back
            fine = await other.chat.completions.create(
                model="sim-small", messages=CHAT, max_tokens=8
            )
            assert fine.choices[0].message.content
        finally:
            await budgeted.close()
            await other.close()
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.get("/v1/usage", headers={"Authorization": f"Bearer {issued['key']}"})
            mine = {k["key_id"]: k for k in r.json()["keys"]}[issued["key_id"]]
            assert mine["daily_tokens"] == 20 and mine["used_tokens"] >= 20
            assert mine["remaining_tokens"] == 0


async def _counted(base: str, key: str, key_id: str) -> None:
    """Until the key's running jobs hold nothing (their usage counted instead)."""
    async with httpx.AsyncClient(base_url=base) as http:

        async def settled() -> bool:
            r = await http.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
            mine = {k["key_id"]: k for k in r.json()["keys"]}[key_id]
            return bool(mine["reserved_tokens"] == 0)

        await wait_until(settled, timeout_s=10, what="the key's reservations to be settled")
