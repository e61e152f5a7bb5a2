"""A view of the nodes bucket whose watch stops delivering (its consumer lost, NATS not
answering) does not call heartbeating nodes gone, and catches up; a node that really stopped
heartbeating is still called gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from events.bus import Bus
from events.records import NodeRecord
from events.subjects import Names
from events.topology import provision, topology
from services.nats_server import EmbeddedNats
from services.registry.live import LiveNodes
from tests.integration.test_faults import pause
from tests.mesh import wait_until

TTL_S = 1.5  # heartbeats every 0.2 s


def _record(node_id: str) -> NodeRecord:
    now = datetime.now(UTC)
    return NodeRecord(
        node_id=node_id,
        models=("m",),
        engine="simulated",
        capacity=1,
        version="t",
        started_at=now,
        heartbeat_at=now,
    )


@contextlib.asynccontextmanager
async def heartbeating(bus: Bus, node_id: str) -> AsyncIterator[None]:
    """Write `node_id`'s record every 0.2 s, as a worker does, riding out NATS not answering."""
    kv = await bus.bucket("nodes")
    started = _record(node_id)

    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            record = started.model_copy(update={"heartbeat_at": datetime.now(UTC)})
            with contextlib.suppress(Exception):
                await kv.put(node_id, record.model_dump_json().encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        stop.set()  # not a cancel: a put's wait_for may swallow it (Python 3.11)
        await asyncio.wait_for(task, 10)


async def _never_gone(nodes: LiveNodes, node_id: str, for_s: float) -> None:
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert not nodes.gone(node_id), f"{node_id} called gone while it heartbeats"
        await asyncio.sleep(0.05)


async def test_a_view_whose_watch_consumer_is_deleted_keeps_live_nodes_and_catches_up(
    bus: Bus,
) -> None:
    nodes = LiveNodes(bus, ttl_s=TTL_S)
    async with heartbeating(bus, "n1"):
        await nodes.start()
        try:
            await wait_until(_polled(lambda: "n1" in nodes.items), 5, "n1 in the view")
            stream = f"KV_{bus.names.bucket('nodes')}"
            consumers = await bus.js.consumers_info(stream)
            assert consumers, "the view watches through a consumer"
            for consumer in consumers:  # the watch's ordered consumer: nats-py notices in 10 s
                await bus.js.delete_consumer(stream, consumer.name)
            lost_at = datetime.now(UTC)
            await _never_gone(nodes, "n1", 2 * TTL_S)
            # caught up: the record in the view is one written after the consumer was deleted
            assert nodes.items["n1"].heartbeat_at > lost_at
            assert not nodes.stale()
            assert [n.node_id for n in nodes.live()] == ["n1"]
        finally:
            await nodes.stop()
    # A node that stopped heartbeating is gone once its record is a TTL old, quiet bucket or not.
    nodes = LiveNodes(bus, ttl_s=TTL_S)
    await nodes.start()
    try:
        await wait_until(_polled(lambda: nodes.gone("n1")), 3 * TTL_S, "n1 gone")
        assert not nodes.stale()
    finally:
        await nodes.stop()


async def test_a_view_cut_off_from_nats_is_stale_calls_no_node_gone_and_recovers(
    server: EmbeddedNats,
) -> None:
    names = Names("stale")
    bus = await Bus.connect(server.url, names)
    nodes = LiveNodes(bus, ttl_s=TTL_S)
    try:
        await provision(bus.js, topology(names))
        async with heartbeating(bus, "n1"):
            await nodes.start()
            await wait_until(_polled(lambda: "n1" in nodes.items), 5, "n1 in the view")
            assert server.proc is not None
            pause(server.proc.pid)  # the view hears nothing: no heartbeat, no answer
            try:
                await _never_gone(nodes, "n1", 2 * TTL_S)
                assert nodes.stale()  # it knows it cannot tell
                assert [n.node_id for n in nodes.live()] == ["n1"]  # as last seen
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            resumed = datetime.now(UTC)

            async def caught_up() -> bool:
                assert not nodes.gone("n1")
                return not nodes.stale() and nodes.items["n1"].heartbeat_at > resumed

            await wait_until(caught_up, 20, "the view current again")
    finally:
        await nodes.stop()
        await bus.close()


def _polled(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def polled() -> bool:
        return check()

    return polled
