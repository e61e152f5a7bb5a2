"""Signed task reports on a real secured nats-server, attacked by a node the server admits but no
admin enrolled (its own NATS identity, worker rights): its forged `task.completed` and
`task.failed` for another tenant's running job are refused — under the real node's id by the
server (a node files reports only under its own), under its own id naming the real node by every
reader as misfiled (recorded as `message.rejected`), naming itself by the orchestrator, the
projector and the gateway as not signed by an enrolled key (recorded as `report.refused`); the
victim gets the real answer. Token chunks it writes into the victim's live stream — under
its own subject, the only one the server lets it write, for an attempt it never started — are
left out of the stream. It cannot write the orchestrator's verdicts (`task.lost`), and, its key
unknown, it receives no work.

Each attack also runs on a twin mesh that believes every report (`DIM_SIGNED_NODES=false`, as on
an open bus), where the forgery wins: the checks are what stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient as Client

from events.bus import Bus
from events.envelope import Envelope, Event
from events.errors import PublishError
from events.history import read_events
from events.inference import Usage
from events.jobs import TaskCompleted, TaskFailed, TaskLost, TaskStarted
from events.signing import NodeKey, signed_report
from events.work import MessageRejected, ReportRefused, TokensProduced
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from services.settings import Settings
from tests.mesh import Secured, secured_server, spawn, wait_until

MODEL = "sim-small"
ROGUE_MODEL = "sim-rogue"
# `n1`, and `rogue`: admitted by the server with worker rights for its own model, never enrolled
WORKERS = {"n1": (MODEL,), "rogue": (ROGUE_MODEL,)}


@contextlib.asynccontextmanager
async def mesh_of(secured: Secured, signed: bool) -> AsyncIterator[tuple[Client, str, Bus]]:
    """Orchestrator, projector, worker n1 (slow enough to attack while it answers) and a
    gateway, each a real process with its own identity; yields (a client of the gateway, an
    API key, the admin's bus)."""
    admin_settings = secured.settings("admin")
    admin = await connect(admin_settings, "admin")
    await ensure_topology(admin, admin_settings)
    await enroll(admin, "n1", secured.dir.approvals()["n1"].public_key, by="test")
    _, key = await create_key(
        admin, principal_id="victim", tenant="acme", roles=("member",), actor="test"
    )
    trust = {"signed_nodes": signed, "node_ttl_s": 30}
    port = free_port()
    n1 = secured.settings(
        "w-n1", node_id="n1", models=(MODEL,), sim_tokens_per_s=40, sim_ttft_ms=300, **trust
    )
    gateway = secured.settings("gateway", gateway_port=port, **trust)
    try:
        with contextlib.ExitStack() as procs:
            procs.enter_context(spawn(secured.settings("orchestrator", **trust), "orchestrator"))
            procs.enter_context(spawn(secured.settings("projector", **trust), "projector"))
            procs.enter_context(spawn(n1, "worker"))
            procs.enter_context(spawn(gateway, "gateway"))
            async with Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                nodes = await admin.bucket("nodes")

                async def ready() -> bool:
                    with contextlib.suppress(Exception):
                        r = await client.get("/readyz")
                        return r.status_code == 200 and await nodes.get("n1") is not None
                    return False

                await wait_until(ready, 30, what="the gateway and worker n1")
                yield client, key, admin
    finally:
        await admin.close()


async def first(admin: Bus, subject: str, timeout_s: float = 20) -> Envelope:
    """The first event stored on `subject` in JOBS."""
    found: list[Envelope] = []

    async def stored() -> bool:
        found[:] = [e async for _, e in read_events(admin, admin.names.jobs_stream, subject)]
        return bool(found)

    await wait_until(stored, timeout_s, what=f"an event on {subject}")
    return found[0]


async def forge(secured: Secured, started: TaskStarted) -> list[Event]:
    """What the rogue node publishes for the victim's running attempt; returns it."""
    rogue = await connect(secured.settings("w-rogue", node_id="rogue"), "rogue")
    own = NodeKey.from_file(secured.dir.seed_of("w-rogue"))
    ids = {"job_id": started.job_id, "task_id": started.task_id, "attempt": started.attempt}
    answer = {
        "output": "FORGED ANSWER",
        "finish_reason": "stop",
        "usage": Usage(prompt_tokens=1, completion_tokens=0),
        "ttft_ms": 1.0,
        "duration_ms": 1.0,
    }
    forged: list[Event] = [
        signed_report(
            TaskCompleted(**ids, node_id="n1", **answer), own
        ),  # the real node, signed by another key
        signed_report(TaskCompleted(**ids, node_id="rogue", **answer), own),  # itself: not enrolled
        TaskCompleted(**ids, node_id="n1", **answer),  # the real node, unsigned
        TaskFailed(**ids, node_id="n1", kind="invalid_request", error="forged", retriable=False),
    ]
    # Text for the victim's live stream: long enough that whatever part of it comes after what
    # was already streamed still reads FORGED.
    chunk = TokensProduced(
        **ids, node_id="rogue", index=0, offset=0, text="FORGED " * 2000, tokens=1
    )
    try:
        for event in forged:  # under its own id, naming the real node or itself
            await rogue.publish(
                rogue.names.report(started.job_id, event.type, "rogue"),
                Envelope(event, actor="worker/n1"),
            )
        # under its own subject (the only one it may write): for an attempt it never started,
        # and naming the real node
        for fake in (chunk, chunk.model_copy(update={"node_id": "n1"})):
            await rogue.publish(
                rogue.names.tokens(started.job_id, "rogue"), Envelope(fake, actor="worker/rogue")
            )
        # under the real node's subject: the server drops it (a permissions violation)
        as_n1 = Envelope(chunk.model_copy(update={"node_id": "n1"}), actor="worker/n1")
        await rogue.nc.publish(rogue.names.tokens(started.job_id, "n1"), as_n1.encode())
        # under the real node's id: the server refuses it (a node writes reports only under
        # its own id), so JetStream never acks it
        with pytest.raises(PublishError, match="no JetStream ack"):
            await rogue.publish(
                rogue.names.report(started.job_id, forged[0].type, "n1"),
                Envelope(forged[0], actor="worker/n1"),
            )
        # The orchestrator's verdict is not a node's to write: the server refuses it (a
        # permissions violation, so JetStream never acks it; nothing is stored: checked below).
        lost = TaskLost(**ids, node_id="n1", kind="worker_lost", error="forged")
        with pytest.raises(PublishError, match="no JetStream ack"):
            await rogue.publish(
                rogue.names.job(started.job_id, lost.type), Envelope(lost, actor="o")
            )
    finally:
        await rogue.close()
    return forged


async def streamed(client: Client, key: str) -> str:
    """A streamed chat completion's text as the client reads it ("HTTP ..." if it failed)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "the real question"}],
        "max_tokens": 60,
        "stream": True,
    }
    text: list[str] = []
    auth = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", "/v1/chat/completions", headers=auth, json=body) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {(await r.aread()).decode()}"
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line.removeprefix("data: "))
            if "error" in data:
                return f"HTTP error in the stream: {data['error']}"
            text += [c["delta"].get("content") or "" for c in data["choices"]]
    return "".join(text)


async def attacked_answer(
    secured: Secured, signed: bool
) -> tuple[str, list[ReportRefused | MessageRejected]]:
    """A streamed chat completion attacked while it runs: (its answer, the refusals recorded:
    reports not believed, and reports filed under a node they do not name)."""
    async with mesh_of(secured, signed) as (client, key, admin):
        asking = asyncio.create_task(streamed(client, key))
        started = (await first(admin, admin.names.reports("*", "task.started"))).data
        assert isinstance(started, TaskStarted) and started.node_id == "n1"
        await forge(secured, started)
        answer = await asking
        lost = admin.names.job(started.job_id, "task.lost")
        assert [e async for e in read_events(admin, admin.names.jobs_stream, lost)] == []
        n1 = admin.names.tokens(started.job_id, "n1")
        written = [e.data async for _, e in read_events(admin, admin.names.tokens_stream, n1)]
        assert written and not any("FORGED" in getattr(c, "text", "") for c in written)
        refused: list[ReportRefused | MessageRejected] = []
        if signed:

            async def recorded() -> bool:
                refused[:] = [
                    e.data
                    async for _, e in read_events(
                        admin, admin.names.dead_stream, admin.names.dead_all
                    )
                    if isinstance(e.data, ReportRefused | MessageRejected)
                    and _reader(e.data) in ("orchestrator", "projector")
                ]
                return len(refused) >= 8

            await wait_until(recorded, what="the refusals of orchestrator and projector")
        return answer, refused


def _reader(record: ReportRefused | MessageRejected) -> str:
    """Which process refused a report: orchestrator, projector, ..."""
    by = record.by if isinstance(record, ReportRefused) else record.consumer
    return by.split("-")[0]


async def test_forged_reports_of_an_unenrolled_node_are_refused_and_recorded(
    tmp_path: Path,
) -> None:
    with secured_server(tmp_path, "sr", WORKERS) as secured:
        answer, refused = await attacked_answer(secured, signed=True)
    assert "FORGED" not in answer and answer and not answer.startswith("HTTP"), answer[:300]
    by = {_reader(r) for r in refused}
    assert by == {"orchestrator", "projector"}
    for who in by:
        mine = [r for r in refused if _reader(r) == who]
        # naming itself: read, and not believed (its key is enrolled by no admin)
        believed = [r for r in mine if isinstance(r, ReportRefused)]
        assert [(r.event_type, r.node_id) for r in believed] == [("task.completed", "rogue")]
        assert "no enrolled key" in believed[0].reason
        # naming the real node under its own id: refused unread, as filed under another node
        misfiled = sorted(r.subject for r in mine if isinstance(r, MessageRejected))
        assert [s.split(".", 3)[3] for s in misfiled] == [
            "task.completed.rogue",
            "task.completed.rogue",
            "task.failed.rogue",
        ]
        assert all("disagrees" in r.error for r in mine if isinstance(r, MessageRejected))


async def test_twin_believing_every_report_is_fooled(tmp_path: Path) -> None:
    """The same attack where reports are believed unsigned: the forgery ends the victim's job
    (either answer: the forged one, or the forged unretriable failure)."""
    with secured_server(tmp_path, "srx", WORKERS) as secured:
        answer, _ = await attacked_answer(secured, signed=False)
    assert "FORGED" in answer or answer.startswith("HTTP"), answer[:300]


async def test_an_unenrolled_node_receives_no_work(tmp_path: Path) -> None:
    """The rogue node, admitted by the server for its own model but enrolled by no admin,
    runs a real worker; a job for its model is refused as not served, and it never starts one."""
    with secured_server(tmp_path, "su", WORKERS) as secured:
        await _no_work_for_the_rogue(secured)


async def _no_work_for_the_rogue(secured: Secured) -> None:
    rogue = secured.settings("w-rogue", node_id="rogue", models=(ROGUE_MODEL,), node_ttl_s=30)
    async with (
        mesh_of(secured, signed=True) as (client, key, admin),
        _spawned(rogue, "worker"),
    ):
        _, root = await create_key(
            admin, principal_id="root", tenant="acme", roles=("admin",), actor="test"
        )
        nodes = await admin.bucket("nodes")

        async def rogue_up() -> bool:
            return await nodes.get("rogue") is not None

        await wait_until(rogue_up, what="the rogue's record")
        r = await client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": ROGUE_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert r.status_code in (404, 503), r.text
        listed = await client.get("/v1/nodes", headers={"Authorization": f"Bearer {root}"})
        assert listed.status_code == 200, listed.text
        shown = {n["node_id"]: n["verified"] for n in listed.json()}
        assert shown.get("rogue") is False and shown.get("n1") is True, shown
        subject = admin.names.reports("*", "task.started")
        starts = [e.data async for _, e in read_events(admin, admin.names.jobs_stream, subject)]
        assert all(getattr(s, "node_id", None) != "rogue" for s in starts)


@contextlib.asynccontextmanager
async def _spawned(settings: Settings, *args: str) -> AsyncIterator[None]:
    with spawn(settings, *args):
        yield
