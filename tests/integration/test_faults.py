"""The adapter under server faults: a paused server, a restarted server. Each test owns its server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from pydantic import BaseModel

from events.bus import Bus
from events.consume import ConsumerSpec, Delivery, run_ordered, run_pool
from events.envelope import Envelope
from events.history import read_events
from events.inference import Prompt
from events.job_log import JobEnds
from events.jobs import JobCancelled, JobSubmitted
from events.subjects import Names
from events.topology import provision, topology
from events.watched import WatchedBucket
from gateway.app import create_app
from services.accounts.keys import create_key
from services.nats_server import EmbeddedNats
from services.orchestrator.runner import Orchestrator
from services.process import ensure_topology
from services.settings import Settings
from tests.mesh import spawn, wait_until

NAMES = Names("faults")


def pause(pid: int) -> None:
    """SIGSTOP `pid` and return once the kernel shows it stopped (state T): a request sent
    after this gets no answer until SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.001)


def _submitted(job_id: str) -> Envelope:
    return Envelope(JobSubmitted(job_id=job_id, model="m", prompt=Prompt(text="x")), actor="t")


async def test_a_publish_that_times_out_is_retried_with_the_same_id_and_stored_once(
    server: EmbeddedNats,
) -> None:
    bus = await Bus.connect(server.url, NAMES, publish_timeout_s=0.3, publish_retries=8)
    try:
        await provision(bus.js, topology(NAMES))
        assert server.proc is not None
        pause(server.proc.pid)  # the server hears nothing and answers nothing
        env = _submitted("R1")
        publishing = asyncio.create_task(bus.publish(NAMES.job("R1", env.type), env))
        await asyncio.sleep(1.0)  # several ack timeouts and retries pile up
        assert not publishing.done()
        os.kill(server.proc.pid, signal.SIGCONT)
        ack = await asyncio.wait_for(publishing, 10)
        stored = [e async for _, e in read_events(bus, NAMES.jobs_stream, NAMES.job_all("R1"))]
        assert [e.id for e in stored] == [env.id]  # every retry reached the server; one was kept
        assert ack.seq == 1
    finally:
        await bus.close()


async def test_a_wait_for_a_jobs_end_rides_out_nats_not_answering_its_log_lookups(
    server: EmbeddedNats,
) -> None:
    # A request's wait looks in the log when its feed goes quiet. A lookup NATS does not answer
    # (a loaded machine, a failover) was a 504 "no answer in time" long before the deadline.
    bus = await Bus.connect(server.url, NAMES)
    ends = await JobEnds(bus, quiet_s=0.2).start()
    try:
        await provision(bus.js, topology(NAMES))
        await ends.expect("W1")
        waiting = asyncio.create_task(ends.wait("W1"))
        assert server.proc is not None
        pause(server.proc.pid)
        await asyncio.sleep(6)  # lookups time out (5 s)
        assert not waiting.done()
        os.kill(server.proc.pid, signal.SIGCONT)
        end = Envelope(JobCancelled(job_id="W1"), actor="t")
        await bus.publish(NAMES.job("W1", end.type), end)
        assert (await asyncio.wait_for(waiting, 10)).type == "job.cancelled"
    finally:
        await ends.stop()
        await bus.close()


async def test_the_consume_loop_recovers_after_the_server_restarts(server: EmbeddedNats) -> None:
    bus = await Bus.connect(server.url, NAMES)
    handled: list[str] = []

    async def handle(group: list[Delivery]) -> None:
        handled.extend(d.envelope.data.job_id for d in group)  # type: ignore[attr-defined]

    stop = asyncio.Event()
    try:
        await provision(bus.js, topology(NAMES))
        spec = ConsumerSpec(NAMES.jobs_stream, "c-restart", (NAMES.jobs_all,))
        task = asyncio.create_task(run_ordered(bus, spec, handle, key=lambda s: s, stop=stop))
        await bus.publish(NAMES.job("before", "job.submitted"), _submitted("before"))
        await _until(lambda: "before" in handled, 10)

        assert server.proc is not None
        server.proc.kill()  # kill -9: the pull requests the server held are gone
        server.proc.wait()
        server.start()  # same port, same store
        await _until(lambda: bus.nc.is_connected, 20)
        await bus.publish(NAMES.job("after", "job.submitted"), _submitted("after"))
        await _until(lambda: "after" in handled, 30)  # re-asked after the heartbeats went quiet
        assert handled.count("before") == 1 and handled.count("after") == 1
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        await bus.close()


async def _until(check: object, timeout_s: float) -> None:
    async def poll() -> None:
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


async def test_a_history_read_goes_on_from_where_it_was_after_the_server_restarts(
    server: EmbeddedNats,
) -> None:
    bus = await Bus.connect(server.url, NAMES)
    try:
        await provision(bus.js, topology(NAMES))
        ids = [f"H{i}" for i in range(300)]
        for job_id in ids:
            await bus.publish(NAMES.job(job_id, "job.submitted"), _submitted(job_id))
        seen: list[str] = []
        async for _, envelope in read_events(bus, NAMES.jobs_stream, NAMES.jobs_all, batch=100):
            seen.append(envelope.data.job_id)  # type: ignore[attr-defined]
            if len(seen) == 150:  # mid-read: its ephemeral consumer dies with the server
                assert server.proc is not None
                server.proc.kill()
                server.proc.wait()
                server.start()
        assert seen == ids  # nothing missed, nothing twice, in order
    finally:
        await bus.close()


class _Entry(BaseModel):
    name: str


async def test_a_mirror_whose_watch_cannot_be_set_up_tries_again(server: EmbeddedNats) -> None:
    # A bucket mirror (API keys, sessions, nodes) whose watch cannot be created — NATS not
    # answering in time, as in a loaded CI run — must try again, not stop following for good.
    bus = await Bus.connect(server.url, NAMES)
    mirror = WatchedBucket(bus, NAMES.bucket("keys"), _Entry)
    try:
        await provision(bus.js, topology(NAMES))
        kv = await bus.js.key_value(NAMES.bucket("keys"))
        await kv.put("k1", b'{"name": "one"}')
        assert server.proc is not None
        pause(server.proc.pid)  # the watch's set-up times out (5 s) ...
        try:
            mirror._task = asyncio.create_task(mirror._follow(kv))  # `start` without its wait
            await asyncio.sleep(5.5)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)  # ... and the next try finds NATS back
        await _until(mirror._ready.is_set, 10)  # the initial load, on the second try
        assert mirror.items == {"k1": _Entry(name="one")}
        await kv.put("k2", b'{"name": "two"}')
        await _until(lambda: "k2" in mirror.items, 10)  # and changes are followed
    finally:
        await mirror.stop()
        await bus.close()


@contextlib.asynccontextmanager
async def _started_while_paused(
    server: EmbeddedNats, start: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
) -> AsyncIterator[None]:
    """`start(stop)` begun as a task while the server answers nothing (its calls time out);
    1.5 s later it must still be trying; then the server answers again. On leaving: `stop` set
    and the task awaited."""
    assert server.proc is not None
    stop = asyncio.Event()
    pause(server.proc.pid)
    task = asyncio.create_task(start(stop))
    try:
        await asyncio.sleep(1.5)
        if task.done():
            task.result()  # what ended it
            raise AssertionError("it returned while NATS did not answer")
    except BaseException:
        task.cancel()
        raise
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("in_order", [False, True], ids=["pool", "ordered"])
async def test_a_consume_loop_started_while_nats_does_not_answer_waits_for_it(
    server: EmbeddedNats, in_order: bool
) -> None:
    # A worker (pool) or an orchestrator or projector (ordered) that starts while NATS does not
    # answer — paused, failing over, a loaded machine — must wait for it, not end for good.
    bus = await Bus.connect(server.url, NAMES, publish_timeout_s=0.3)
    handled: list[str] = []

    async def handle_one(delivery: Delivery) -> None:
        handled.append(delivery.envelope.data.job_id)  # type: ignore[attr-defined]

    async def handle_group(group: list[Delivery]) -> None:
        for d in group:
            await handle_one(d)

    def consume(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        if in_order:
            return run_ordered(bus, spec, handle_group, key=lambda s: s, stop=stop)
        return run_pool(bus, [spec], handle_one, capacity=4, stop=stop)

    try:
        await provision(bus.js, topology(NAMES))
        spec = ConsumerSpec(NAMES.jobs_stream, f"c-paused-{in_order}", (NAMES.jobs_all,))
        async with _started_while_paused(server, consume):
            await bus.publish(NAMES.job("late", "job.submitted"), _submitted("late"))
            await _until(lambda: handled == ["late"], 10)
    finally:
        await bus.close()


async def test_an_orchestrator_started_while_nats_does_not_answer_waits_for_it(
    server: EmbeddedNats,
) -> None:
    # Its start — the node registry, the unfinished jobs, its consumer — waits NATS out.
    settings = Settings(nats_url=server.url, namespace="faults", publish_timeout_s=0.3)
    bus = await Bus.connect(server.url, settings.names, publish_timeout_s=0.3)

    async def decided() -> bool:
        events = read_events(bus, settings.names.jobs_stream, settings.names.job_all("O1"))
        return any([e.type == "job.failed" async for _, e in events])  # no node serves it

    try:
        await ensure_topology(bus, settings)
        async with _started_while_paused(server, Orchestrator(bus, settings).run):
            job = JobSubmitted(job_id="O1", model="nobody-serves-it", prompt=Prompt(text="x"))
            await bus.publish(settings.names.job("O1", job.type), Envelope(job, actor="t"))
            await wait_until(decided, what="the orchestrator deciding the job", timeout_s=20)
    finally:
        await bus.close()


async def test_a_request_while_nats_does_not_answer_gets_503_and_its_retry_submits_once(
    server: EmbeddedNats,
) -> None:
    settings = Settings(
        nats_url=server.url,
        namespace="faults",
        heartbeat_s=0.3,
        node_ttl_s=60.0,  # the worker stays "live" through the pause below
        publish_timeout_s=0.3,
        publish_retries=1,
        sim_ttft_ms=0,
        sim_tokens_per_s=0,
        jwt_secret="test-secret-that-is-long-enough-for-hs256-0123",
        metrics_port=0,
    )
    bus = await Bus.connect(server.url, settings.names)
    try:
        await ensure_topology(bus, settings)
        _, key = await create_key(bus, principal_id="a", tenant="t", roles=("member",), actor="t")
        auth = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k-503"}
        body = {"model": "sim-small", "prompt": "hello", "max_tokens": 3}
        with spawn(settings, "worker", DIM_NODE_ID="w1"), spawn(settings, "orchestrator"):
            async with AsyncTestClient(app=create_app(settings)) as client:
                gw = client.app.state.gateway

                async def live() -> bool:
                    return bool(gw.nodes.live())

                await wait_until(live, what="the worker in the gateway's view")
                assert server.proc is not None
                pause(server.proc.pid)
                try:
                    r = await client.post("/v1/jobs", headers=auth, json=body)
                finally:
                    os.kill(server.proc.pid, signal.SIGCONT)
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "1"
                error = r.json()["error"]
                assert error["code"] == "unavailable" and "Idempotency-Key" in error["message"]
                # NATS is back: the client's retry (same key) gets one job, whatever the
                # paused server did in the end with what it had been sent. (A 404
                # model_not_found here was a worker that had been setting up its consumer as
                # the server paused: it ended on the timeout and removed its node. Consume
                # loops now wait NATS out; test_a_consume_loop_started_while_nats_...)
                for _ in range(50):
                    again = await client.post("/v1/jobs", headers=auth, json=body)
                    if again.status_code != 503:
                        break
                    await asyncio.sleep(0.2)
                assert again.status_code == 202, again.text
        job_id = again.json()["job_id"]
        events = [
            e
            async for _, e in read_events(bus, settings.names.jobs_stream, settings.names.jobs_all)
        ]
        submitted = [e for e in events if e.type == "job.submitted"]
        assert [e.data.job_id for e in submitted] == [job_id]  # type: ignore[union-attr]
    finally:
        await bus.close()
