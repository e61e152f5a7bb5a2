"""The publish helper, provisioning and the consume loop against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider

from events.bus import Bus
from events.consume import ConsumerSpec, Delivery, Reject, Retry, run_ordered, run_pool
from events.envelope import Envelope, decode
from events.errors import WrongLastSequence
from events.history import read_events
from events.inference import Prompt
from events.jobs import JobCancelled, JobSubmitted, TaskStarted
from events.topology import provision
from events.work import MessageRejected
from services.process import settings_topology
from services.settings import Settings


def _submitted(job_id: str = "J1") -> Envelope:
    return Envelope(JobSubmitted(job_id=job_id, model="m", prompt=Prompt(text="hi")), actor="test")


async def test_provisioning_is_idempotent_and_reports_differences(
    bus: Bus, settings: Settings
) -> None:
    topo = settings_topology(settings)
    again = await provision(bus.js, topo)
    assert again.created == []
    assert again.differences == []
    assert len(again.present) == len(topo.streams) + len(topo.buckets) + len(topo.object_stores)
    info = await bus.js.stream_info(settings.names.tokens_stream)
    changed = dataclasses.replace(info.config, max_age=60.0, duplicate_window=30.0)
    await bus.js.update_stream(changed)
    report = await provision(bus.js, topo)
    assert report.created == []
    assert any("TOKENS" in d and "max_age" in d for d in report.differences)


async def test_retention_settings_reach_the_server(bus: Bus, settings: Settings) -> None:
    kept = settings.model_copy(
        update={
            "namespace": f"{settings.namespace}r",
            "jobs_retention_s": 7 * 86_400.0,
            "views_ttl_s": 86_400.0,
            "payloads_ttl_s": 14 * 86_400.0,
        }
    )
    await provision(bus.js, settings_topology(kept))
    names = kept.names
    assert (await bus.js.stream_info(names.jobs_stream)).config.max_age == 7 * 86_400.0
    assert (await bus.js.stream_info(f"KV_{names.bucket('jobs')}")).config.max_age == 86_400.0
    assert (await bus.js.stream_info(f"KV_{names.bucket('job_index')}")).config.max_age == 86_400.0
    payloads = await bus.js.stream_info(f"OBJ_{names.bucket('payloads')}")
    assert payloads.config.max_age == 14 * 86_400.0
    # the defaults keep everything
    assert (await bus.js.stream_info(settings.names.jobs_stream)).config.max_age in (0, None)


async def test_a_retried_event_is_stored_once(bus: Bus, settings: Settings) -> None:
    env = _submitted()
    first = await bus.publish(settings.names.job("J1", env.type), env)
    second = await bus.publish(settings.names.job("J1", env.type), env)
    assert second.seq == first.seq
    assert second.duplicate
    stored = [
        e async for e in read_events(bus, settings.names.jobs_stream, settings.names.job_all("J1"))
    ]
    assert [e.id for _, e in stored] == [env.id]


async def test_optimistic_append_over_a_whole_job(bus: Bus, settings: Settings) -> None:
    names = settings.names
    sub = await bus.publish(
        names.job("J2", "job.submitted"),
        _submitted("J2"),
        expected_last_seq=0,
        expected_last_subject=names.job_all("J2"),
    )
    with pytest.raises(WrongLastSequence):  # the job already has an event
        await bus.publish(
            names.job("J2", "job.submitted"),
            _submitted("J2"),
            expected_last_seq=0,
            expected_last_subject=names.job_all("J2"),
        )
    cancel = Envelope(JobCancelled(job_id="J2"), actor="t")
    ok = await bus.publish(
        names.job("J2", cancel.type),
        cancel,
        expected_last_seq=sub.seq,
        expected_last_subject=names.job_all("J2"),
    )
    assert ok.seq > sub.seq


async def test_trace_context_rides_in_headers(bus: Bus, settings: Settings) -> None:
    tracer = TracerProvider().get_tracer("test")
    env = _submitted("J3")
    with tracer.start_as_current_span("submit") as span:
        await bus.publish(settings.names.job("J3", env.type), env)
        trace_id = format(span.get_span_context().trace_id, "032x")
    msg = await bus.js.get_last_msg(settings.names.jobs_stream, settings.names.job("J3", env.type))
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == env.id
    assert msg.headers["Dim-Type"] == "job.submitted"
    assert msg.headers["traceparent"].split("-")[1] == trace_id
    assert b"traceparent" not in (msg.data or b"")


async def _dead_records(bus: Bus, settings: Settings) -> list[MessageRejected]:
    out = []
    async for _, env in read_events(bus, settings.names.dead_stream, settings.names.dead_all):
        assert isinstance(env.data, MessageRejected)
        out.append(env.data)
    return out


async def test_malformed_messages_are_terminated_and_recorded_without_a_crash_loop(
    bus: Bus, settings: Settings
) -> None:
    names = settings.names
    await bus.nc.publish(names.job("BAD", "junk"), b"\x00not an event")
    await bus.nc.publish(names.job("BAD2", "job.submitted"), b'{"type": "job.exploded"}')
    # well-formed events filed under another job, or as another type: they would be folded
    # into the wrong job (a phantom job), so they are refused too
    await bus.publish(names.job("BAD3", "job.submitted"), _submitted("OTHER"))
    await bus.publish(names.job("BAD4", "job.cancelled"), _submitted("BAD4"))
    good = _submitted("OK")
    await bus.publish(names.job("OK", good.type), good)
    seen: list[str] = []

    async def handle(group: list[Delivery]) -> None:
        seen.extend(d.envelope.id for d in group)

    spec = ConsumerSpec(names.jobs_stream, "c-malformed", (names.jobs_all,), ack_wait_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_ordered(bus, spec, handle, key=lambda s: s, stop=stop))
    try:

        async def two_records() -> list[MessageRejected]:
            while len(recs := await _dead_records(bus, settings)) < 4:
                await asyncio.sleep(0.05)
            return recs

        records = await asyncio.wait_for(two_records(), 10)
        await asyncio.sleep(1.5)  # longer than ack_wait: a nak'd or unacked message would return
    finally:
        stop.set()
        await task
    assert seen == [good.id]
    assert sorted(r.subject for r in records) == sorted(
        [
            names.job("BAD", "junk"),
            names.job("BAD2", "job.submitted"),
            names.job("BAD3", "job.submitted"),
            names.job("BAD4", "job.cancelled"),
        ]
    )
    assert all(r.consumer == "c-malformed" and r.deliveries == 1 for r in records)
    assert "not a JSON" in next(r.error for r in records if r.subject.endswith("junk"))
    disagreeing = [r.error for r in records if r.subject.split(".")[2] in ("BAD3", "BAD4")]
    assert len(disagreeing) == 2 and all("disagrees" in e for e in disagreeing)
    assert len(await _dead_records(bus, settings)) == 4  # recorded once, not once per redelivery
    info = await bus.js.consumer_info(names.jobs_stream, "c-malformed")
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


async def test_handler_failures_are_retried_then_terminated_on_the_last_delivery(
    bus: Bus, settings: Settings
) -> None:
    names = settings.names
    for i in range(3):
        env = _submitted(f"P{i}")
        await bus.publish(names.tasks_for_model(f"m{i}"), env)
    attempts: dict[str, list[int]] = {}

    async def handle(d: Delivery) -> None:
        job = d.envelope.data.job_id  # type: ignore[attr-defined]
        attempts.setdefault(job, []).append(d.deliveries)
        if job == "P0":
            raise RuntimeError("transient")  # always fails: redelivered, then terminated
        if job == "P1":
            raise Reject("never processable")
        if job == "P2" and d.deliveries == 1:
            raise Retry("not yet", delay_s=0.2)

    spec = ConsumerSpec(
        names.tasks_stream, "c-fail", (names.tasks_all,), ack_wait_s=5.0, max_deliver=3
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_pool(bus, [spec], handle, capacity=4, stop=stop))
    try:

        async def settled() -> None:
            while len(await _dead_records(bus, settings)) < 2 or len(attempts.get("P2", [])) < 2:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(settled(), 20)
    finally:
        stop.set()
        await task
    assert attempts["P0"] == [1, 2, 3]  # backoff naks, then the last allowed delivery
    assert attempts["P1"] == [1]
    assert attempts["P2"] == [1, 2]  # asked to come back, came back, done
    errors = {
        r.payload and decode(r.payload).data.job_id: r.error
        for r in await _dead_records(bus, settings)
    }  # type: ignore[attr-defined]
    assert "last allowed delivery (3)" in errors["P0"]
    assert "transient" in errors["P0"]
    assert errors["P1"] == "never processable"


def _ack_all_spec(settings: Settings, durable: str) -> ConsumerSpec:
    """An ordered, ack-all consumer on every job event (as the orchestrator's)."""
    names = settings.names
    return ConsumerSpec(
        names.jobs_stream, durable, (names.jobs_all,), ack_wait_s=30.0, ack_all=True
    )


async def _run_ordered_until(
    bus: Bus,
    spec: ConsumerSpec,
    handle: Callable[[list[Delivery]], Awaitable[None]],
    done: Callable[[], bool],
    *,
    before: Callable[[], Awaitable[None]] | None = None,
    **options: Any,
) -> None:
    """Run the ordered loop (lanes by job id) until `done()`, within 10 s — far less than the
    30 s ack wait, so nothing here comes from a redelivery — then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_ordered(bus, spec, handle, key=lambda s: s.split(".")[2], stop=stop, **options)
    )
    try:
        if before is not None:
            await before()

        async def until() -> None:
            while not done():
                await asyncio.sleep(0.05)

        await asyncio.wait_for(until(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def _publish(bus: Bus, *job_ids: str) -> None:
    for job_id in job_ids:
        await bus.publish(bus.names.job(job_id, "job.submitted"), _submitted(job_id))


async def test_what_a_killed_consumer_took_comes_again_first_and_in_order(
    bus: Bus, settings: Settings
) -> None:
    # A run that took messages and died without acking them: its successor gets them at once,
    # ahead of newer ones — not after the ack wait, behind them (where a fold that skips what
    # it has "seen" by sequence would lose them).
    names = settings.names
    spec = _ack_all_spec(settings, "c-ordered")
    await _publish(bus, *(f"J{i}" for i in range(5)))
    info = await bus.js.add_consumer(names.jobs_stream, config=spec.config())
    assert info.num_pending == 5
    dead = await bus.js.pull_subscribe_bind(consumer="c-ordered", stream=names.jobs_stream)
    taken = await dead.fetch(3, timeout=5)  # ... and never acked: the process "dies"
    await dead.unsubscribe()
    assert len(taken) == 3
    await _publish(bus, "J5", "J6")
    seqs: list[int] = []

    async def handle(group: list[Delivery]) -> None:
        seqs.extend(d.stream_seq for d in group)

    await _run_ordered_until(bus, spec, handle, lambda: len(seqs) >= 7)
    assert seqs == sorted(seqs) and len(set(seqs)) == 7


@pytest.mark.parametrize("linger_s", [0.0, 0.05], ids=["at-once", "lingering"])
async def test_a_delivery_that_never_arrives_is_taken_again_in_order_not_acked_unseen(
    bus: Bus, settings: Settings, linger_s: float
) -> None:
    # JetStream counts a message sent to a pull request as delivered even when it never reaches
    # the client (sent while the connection was away). Stand-in for that: another requester
    # takes one delivery and says nothing. The ordered loop must notice the gap in the delivery
    # numbering and take the message again in order — with ack-all, acking the next one would
    # otherwise settle it unseen, for good.
    spec = _ack_all_spec(settings, "c-gap")
    seqs: list[int] = []

    async def handle(group: list[Delivery]) -> None:
        seqs.extend(d.stream_seq for d in group)

    async def run_while(*job_ids: str) -> None:
        async def publish() -> None:
            await asyncio.sleep(0.3)
            await _publish(bus, *job_ids)

        n = len(seqs) + len(job_ids)
        await _run_ordered_until(
            bus, spec, handle, lambda: len(seqs) >= n, before=publish, linger_s=linger_s
        )

    await run_while("J0", "J1")  # handled and acked: the floor is 2
    thief = await bus.nc.subscribe(bus.nc.new_inbox(), max_msgs=1)
    await bus.nc.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.c-gap",
        b'{"batch": 1, "expires": 20000000000}',
        reply=thief.subject,
    )
    await bus.nc.flush()
    await run_while("J2", "J3", "J4")
    stolen = await thief.next_msg(timeout=5)  # the message really went elsewhere first
    assert stolen.metadata.sequence.stream == 3
    assert seqs == [1, 2, 3, 4, 5]


async def test_a_lingering_loop_leaves_what_comes_meanwhile_on_the_server_then_takes_it_at_once(
    bus: Bus, settings: Settings
) -> None:
    # A lingering consumer (the projectors) asks for one message while idle; what comes during
    # its linger stays on the server and arrives in one burst afterwards — one wake-up of the
    # process per batch, not one per message — and is handled as one batch, in order.
    spec = _ack_all_spec(settings, "c-linger")
    batches: list[list[int]] = []
    held: list[int] = []

    async def handle(group: list[Delivery]) -> None:
        batches.append([d.stream_seq for d in group])

    async def publish_during_linger() -> None:
        await _publish(bus, "J0")
        for _ in range(250):  # the first one is taken at once: the linger has begun
            with contextlib.suppress(NotFoundError):  # the loop has not made its consumer yet
                info = await bus.js.consumer_info(spec.stream, spec.durable)
                if info.delivered.consumer_seq == 1:
                    break
            await asyncio.sleep(0.02)
        started = TaskStarted(job_id="J0", task_id="J0-0", attempt=1, node_id="n")
        await bus.publish(bus.names.report("J0", started.type, "n"), Envelope(started, actor="t"))
        await _publish(bus, "J1", "J2")
        await asyncio.sleep(0.2)
        info = await bus.js.consumer_info(spec.stream, spec.durable)
        held.extend([info.delivered.consumer_seq, info.num_pending])

    await _run_ordered_until(
        bus,
        spec,
        handle,
        lambda: sum(map(len, batches)) >= 4,
        before=publish_during_linger,
        linger_s=1.5,
    )
    assert held == [1, 3]  # mid-linger: one delivered, three waiting on the server
    assert sorted(batches) == [[1, 2], [3], [4]]  # J0's two events in one group, in order
    info = await bus.js.consumer_info(spec.stream, spec.durable)
    assert info.ack_floor.stream_seq == 4


async def test_a_batch_handed_back_on_the_way_out_is_not_settled_by_an_ack_all(
    bus: Bus, settings: Settings
) -> None:
    # Stopping while one lane still fails on NATS (retried, handed back) and another lane of the
    # same batch succeeded: acking the good lane's message on an ack-all consumer would settle
    # the handed-back one below it too, and the next run would never see it.
    spec = _ack_all_spec(settings, "c-handback")
    await _publish(bus, "J0", "J1")
    tried: list[str] = []

    async def flaky(group: list[Delivery]) -> None:
        job_id = group[0].subject.split(".")[2]
        tried.append(job_id)
        if job_id == "J0":
            raise ConnectionError("NATS away")  # transient: retried until the stop

    def both_tried() -> bool:
        return "J1" in tried and tried.count("J0") >= 2

    await _run_ordered_until(bus, spec, flaky, both_tried, linger_s=0.3)  # one batch for both
    info = await bus.js.consumer_info(spec.stream, spec.durable)
    assert info.ack_floor.stream_seq == 0  # nothing of the batch settled
    again: list[str] = []

    async def record(group: list[Delivery]) -> None:
        again.extend(d.subject.split(".")[2] for d in group)

    await _run_ordered_until(bus, spec, record, lambda: "J0" in again)
