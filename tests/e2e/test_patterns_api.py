"""Every pattern end to end through the jobs API: gateway, orchestrator, projector and three
simulated workers serving two models, each a real process; plain HTTP and a WebSocket client.
One worker is killed mid-job; pins go to nodes and fall back when the node is gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

from events.bus import Bus
from events.history import read_events
from services.accounts.keys import create_key
from services.engines.simulated import simulated_tokens
from services.nats_server import free_port
from services.settings import Settings
from tests.conftest import fast_settings
from tests.mesh import job_events, spawn, wait_until

SLOW = {"DIM_SIM_TTFT_MS": "0", "DIM_SIM_TOKENS_PER_S": "25"}


def expected(model: str, prompt: str, max_tokens: int) -> str:
    return "".join(simulated_tokens(model, prompt, 0)[:max_tokens])


@dataclass
class Cluster:
    http: httpx.AsyncClient
    ws: str
    auth: dict[str, str]
    admin: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]]
    bus: Bus

    async def submit(self, body: dict[str, Any]) -> str:
        r = await self.http.post("/v1/jobs", headers=self.auth, json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    async def finished(self, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
        body: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal body
            r = await self.http.get(f"/v1/jobs/{job_id}", headers=self.auth)
            body = r.json()
            return r.status_code == 200 and body["status"] in ("completed", "failed", "cancelled")

        await wait_until(done, timeout_s, what=f"job {job_id} to end")
        return body


@pytest.fixture
async def cluster(bus: Bus, settings: Settings) -> AsyncIterator[Cluster]:
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    _, key = await create_key(bus, principal_id="ann", tenant="acme", roles=("member",), actor="t")
    _, root = await create_key(bus, principal_id="root", tenant="acme", roles=("admin",), actor="t")
    with ExitStack() as stack:
        stack.enter_context(spawn(s, "orchestrator"))
        stack.enter_context(spawn(s, "projector"))
        workers = {
            "w1": stack.enter_context(
                spawn(s, "worker", DIM_NODE_ID="w1", DIM_MODELS="sim-small", **SLOW)
            ),
            "w2": stack.enter_context(
                spawn(s, "worker", DIM_NODE_ID="w2", DIM_MODELS="sim-small", **SLOW)
            ),
            "w3": stack.enter_context(
                spawn(s, "worker", DIM_NODE_ID="w3", DIM_MODELS="sim-large,sim-small", **SLOW)
            ),
        }
        stack.enter_context(spawn(s, "gateway"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            auth = {"Authorization": f"Bearer {key}"}

            async def up() -> bool:
                try:
                    r = await http.get("/v1/nodes", headers={"Authorization": f"Bearer {root}"})
                except httpx.TransportError:
                    return False
                return r.status_code == 200 and sum(n["live"] for n in r.json()) == 3

            await wait_until(up, what="the gateway and three workers")
            yield Cluster(
                http,
                f"ws://127.0.0.1:{port}",
                auth,
                {"Authorization": f"Bearer {root}"},
                workers,
                bus,
            )


async def test_collaborative_concat_spreads_shards_over_nodes_in_input_order(
    cluster: Cluster,
) -> None:
    inputs = [f"part {i}" for i in range(6)]
    job = await cluster.submit(
        {
            "pattern": "collaborative",
            "model": "sim-small",
            "inputs": inputs,
            "separator": " | ",
            "max_tokens": 8,
        }
    )
    body = await cluster.finished(job)
    assert body["status"] == "completed", body
    assert body["output"] == " | ".join(expected("sim-small", p, 8) for p in inputs)
    assert [p["index"] for p in body["parts"]] == list(range(6))
    assert len({p["node_id"] for p in body["parts"]}) >= 2  # spread, not all on one node
    assert all(t["role"] == "shard" and t["target"] for t in body["tasks"])  # placed explicitly
    assert body["usage"]["completion_tokens"] == 6 * 8


async def test_collaborative_split_and_reduce(cluster: Cluster) -> None:
    text = "alpha beta\n\ngamma delta\n\nepsilon"
    job = await cluster.submit(
        {
            "pattern": "collaborative",
            "model": "sim-small",
            "input": text,
            "split": {"by": "paragraphs", "size": 12},
            "aggregate": "reduce",
            "reduce_prompt": "merge: {{ outputs }}",
            "separator": ";",
            "max_tokens": 5,
        }
    )
    body = await cluster.finished(job)
    assert body["status"] == "completed", body
    shards = ["alpha beta", "gamma delta", "epsilon"]
    outs = [expected("sim-small", p, 5) for p in shards]
    assert body["output"] == expected("sim-small", "merge: " + ";".join(outs), 5)
    assert [p["role"] for p in body["parts"]] == ["shard", "shard", "shard", "reduce"]


async def test_comparative_records_consensus_as_a_result(cluster: Cluster) -> None:
    job = await cluster.submit(
        {
            "pattern": "comparative",
            "models": ["sim-small", {"model": "sim-large", "weight": 3}, "sim-small"],
            "prompt": "capital of France?",
            "consensus": "weighted",
            "min_agreement": 0.7,
            "max_tokens": 6,
        }
    )
    body = await cluster.finished(job)
    assert body["status"] == "completed", body
    small, large = (expected(m, "capital of France?", 6) for m in ("sim-small", "sim-large"))
    assert small != large
    c = body["consensus"]
    # weights: sim-small x2 (1 + 1) against sim-large (3): large wins with 3/5 < 0.7
    assert (c["method"], c["winner"], c["winner_model"]) == ("weighted", 1, "sim-large")
    assert c["agreement"] == pytest.approx(0.6) and c["reached"] is False
    assert body["output"] == large and [p["model"] for p in body["parts"]] == [
        "sim-small",
        "sim-large",
        "sim-small",
    ]


async def test_comparative_with_a_judge(cluster: Cluster) -> None:
    job = await cluster.submit(
        {
            "pattern": "comparative",
            "models": ["sim-small", "sim-large"],
            "prompt": "q",
            "consensus": "judge",
            "judge_model": "sim-large",
            "judge_prompt": "pick one of {{ candidates }} for {{ input }}",
            "max_tokens": 4,
        }
    )
    body = await cluster.finished(job)
    assert body["status"] == "completed", body
    assert body["parts"][-1]["role"] == "judge" and body["consensus"]["method"] == "judge"
    # the simulated judge writes words, not a number: a recorded "no consensus", not an error
    assert (
        body["consensus"]["reached"] is False
        and "names no candidate" in body["consensus"]["reason"]
    )


async def test_chained_steps_use_earlier_outputs_across_models(cluster: Cluster) -> None:
    job = await cluster.submit(
        {
            "pattern": "chained",
            "model": "sim-small",
            "prompt": "a topic",
            "max_tokens": 6,
            "steps": [
                {"name": "draft", "prompt": "draft on {{ input }}"},
                {
                    "name": "review",
                    "prompt": "review {{ previous }}",
                    "model": "sim-large",
                    "max_tokens": 4,
                },
                {"name": "final", "prompt": "{{ steps.draft }} + {{ steps.review }}"},
            ],
        }
    )
    body = await cluster.finished(job)
    assert body["status"] == "completed", body
    draft = expected("sim-small", "draft on a topic", 6)
    review = expected("sim-large", f"review {draft}", 4)
    assert body["output"] == expected("sim-small", f"{draft} + {review}", 6)
    assert [(p["name"], p["model"]) for p in body["parts"]] == [
        ("draft", "sim-small"),
        ("review", "sim-large"),
        ("final", "sim-small"),
    ]
    events = [e.type for e in await job_events(cluster.bus, job)]
    # the first step's dispatch rides in the plan; each later step is dispatched on its own
    assert events.count("task.dispatched") == 2 and events.count("task.completed") == 3


async def test_bad_pattern_requests_get_clear_errors(cluster: Cluster) -> None:
    h, http = cluster.auth, cluster.http
    unknown_ref = await http.post(
        "/v1/jobs",
        headers=h,
        json={
            "pattern": "chained",
            "model": "sim-small",
            "prompt": "x",
            "steps": [{"name": "a", "prompt": "{{ steps.b }}"}],
        },
    )
    assert (
        unknown_ref.status_code == 400
        and "unknown reference" in unknown_ref.json()["error"]["message"]
    )
    one_model = await http.post(
        "/v1/jobs",
        headers=h,
        json={"pattern": "comparative", "models": ["sim-small"], "prompt": "x"},
    )
    assert one_model.status_code == 400
    no_judge = await http.post(
        "/v1/jobs",
        headers=h,
        json={
            "pattern": "comparative",
            "models": ["sim-small", "sim-large"],
            "prompt": "x",
            "consensus": "judge",
        },
    )
    assert no_judge.status_code == 400 and "judge_model" in no_judge.json()["error"]["message"]
    ghost = await http.post(
        "/v1/jobs",
        headers=h,
        json={"pattern": "comparative", "models": ["sim-small", "ghost"], "prompt": "x"},
    )
    assert ghost.status_code == 404 and ghost.json()["error"]["code"] == "model_not_found"


async def test_a_worker_killed_mid_job_and_the_job_still_completes(cluster: Cluster) -> None:
    inputs = [f"long shard {i}" for i in range(6)]
    job = await cluster.submit(
        {"pattern": "collaborative", "model": "sim-small", "inputs": inputs, "max_tokens": 40}
    )

    async def w1_running() -> bool:
        r = await cluster.http.get(f"/v1/jobs/{job}", headers=cluster.auth)
        return any(t["node_id"] == "w1" and t["status"] == "running" for t in r.json()["tasks"])

    await wait_until(w1_running, what="a shard running on w1")

    async def load_shown() -> bool:  # the registry shows the load moving (next heartbeat)
        nodes = (await cluster.http.get("/v1/nodes", headers=cluster.admin)).json()
        return any(n["node_id"] == "w1" and n["in_flight"] > 0 and n["load"] > 0 for n in nodes)

    await wait_until(load_shown, timeout_s=5, what="w1's record to show its load")
    os.kill(cluster.workers["w1"].pid, signal.SIGKILL)
    body = await cluster.finished(job, timeout_s=40)
    assert body["status"] == "completed", body
    assert body["output"] == "\n".join(expected("sim-small", p, 40) for p in inputs)
    assert all(p["node_id"] != "w1" for p in body["parts"])
    history = await job_events(cluster.bus, job)
    lost = [e.data for e in history if e.type == "task.lost"]
    assert lost and all(f.kind == "worker_lost" and f.node_id == "w1" for f in lost)  # type: ignore[attr-defined]
    assert sum(e.type == "job.completed" for e in history) == 1
    names = cluster.bus.names
    node_events = [
        e.type
        async for _, e in read_events(cluster.bus, names.nodes_stream, names.node_event("w1", ">"))
    ]
    assert node_events == ["node.joined", "node.lost"]

    # the survivors' records count the shards and show them done
    async def survivors_counted() -> bool:
        nodes = {
            n["node_id"]: n
            for n in (await cluster.http.get("/v1/nodes", headers=cluster.admin)).json()
        }
        done = sum(nodes[w]["tasks_completed"] for w in ("w2", "w3"))
        return nodes["w1"]["live"] is False and done >= 6 and nodes["w2"]["in_flight"] == 0

    await wait_until(survivors_counted, what="the survivors' records to count the shards")


async def test_pins_target_the_node_and_fall_back_when_it_is_gone(cluster: Cluster) -> None:
    pinned = await cluster.submit(
        {"model": "sim-small", "prompt": "hi", "node": "w2", "max_tokens": 3}
    )
    body = await cluster.finished(pinned)
    assert body["tasks"][0]["target"] == "w2" and body["tasks"][0]["node_id"] == "w2"
    gone = await cluster.submit(
        {"model": "sim-small", "prompt": "hi", "node": "nowhere", "max_tokens": 3}
    )
    body = await cluster.finished(gone)
    assert body["status"] == "completed"
    rerouted = [e.data for e in await job_events(cluster.bus, gone) if e.type == "task.rerouted"]
    assert [r.from_node for r in rerouted] == ["nowhere"]  # type: ignore[attr-defined]


async def test_the_websocket_streams_every_task_and_step(cluster: Cluster) -> None:
    token = cluster.auth["Authorization"]
    async with websockets.connect(
        f"{cluster.ws}/v1/jobs/stream", additional_headers={"Authorization": token}
    ) as ws:
        await ws.send(
            json.dumps(
                {
                    "pattern": "collaborative",
                    "model": "sim-small",
                    "inputs": ["a", "b"],
                    "max_tokens": 5,
                }
            )
        )
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            async for raw in ws:
                frames.append(json.loads(raw))
    texts: dict[str, str] = {}
    for f in frames:
        if f["type"] == "text":
            texts[f["task_id"]] = texts.get(f["task_id"], "") + f["text"]
    job = frames[0]["job_id"]
    assert texts == {
        f"{job}-0": expected("sim-small", "a", 5),
        f"{job}-1": expected("sim-small", "b", 5),
    }
    events = [f["event"] for f in frames if f["type"] == "event"]
    assert events.count("task.started") == 2 and events.count("task.completed") == 2
    assert frames[-1]["type"] == "end" and len(frames[-1]["parts"]) == 2


async def test_affinity_sends_a_session_to_one_node_and_round_robin_spreads(
    cluster: Cluster,
) -> None:
    async def nodes_of(routing: dict[str, Any], n: int) -> list[str]:
        out = []
        for i in range(n):  # one at a time: an idle mesh, so the bound never pushes a key away
            job = await cluster.submit(
                {"model": "sim-small", "prompt": f"turn {i}", "max_tokens": 2, "routing": routing}
            )
            body = await cluster.finished(job)
            out.append(body["tasks"][0]["target"])
            # Idle means idle in the node records the bound reads: a heartbeat sent while the job
            # ran (in flight 1) can arrive after its end, and would push the key to the next node
            await asyncio.sleep(3 * fast_settings("nats://unused", "x").heartbeat_s)
        return out

    sticky = await nodes_of({"strategy": "affinity", "affinity_key": "chat-42"}, 4)
    assert len(set(sticky)) == 1 and sticky[0] in ("w1", "w2", "w3")
    spread = await nodes_of({"strategy": "round_robin"}, 3)
    assert sorted(spread) == ["w1", "w2", "w3"]
    big = await cluster.submit(
        {"model": "sim-small", "prompt": "x", "routing": {"min_context": 10_000_000}}
    )
    failed = await cluster.finished(big)
    assert failed["status"] == "failed" and failed["error_code"] == "no_capacity"


async def test_a_step_timeout_fails_the_step_which_names_itself(cluster: Cluster) -> None:
    job = await cluster.submit(
        {
            "pattern": "chained",
            "model": "sim-small",
            "prompt": "x",
            "steps": [
                {
                    "name": "quick",
                    "prompt": "{{ input }}",
                    "timeout_s": 0.2,
                    "max_tokens": 50,
                    "max_attempts": 2,
                }
            ],
        }
    )
    body = await cluster.finished(job)
    assert body["status"] == "failed"
    assert (
        "step 'quick' (1 of 1" in body["error"]
        and "failed 2 times" in body["error"]
        and "(timeout)" in body["error"]
    )
    failures = [e.data for e in await job_events(cluster.bus, job) if e.type == "task.failed"]
    assert [(f.attempt, f.kind) for f in failures] == [(1, "timeout"), (2, "timeout")]  # type: ignore[attr-defined]
