"""Mid-stream failover: a worker dies while streaming an answer; the next attempt continues the
answer from what was already streamed, and the client's stream carries on — nothing repeated,
nothing lost. Real processes, the official `openai` SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from openai import AsyncOpenAI

from events.bus import Bus
from events.envelope import Envelope
from events.jobs import TaskCompleted, TaskLost, TaskStarted
from events.work import TokensProduced
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from services.worker.resume import partial_output
from tests.mesh import Mesh, job_events, mesh, spawn, wait_terminal, wait_until


@pytest.mark.parametrize("api", ["chat", "text"])
async def test_a_stream_whose_worker_dies_carries_on_without_repeats(
    bus: Bus, settings: Settings, api: str
) -> None:
    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    slow = {"DIM_SIM_TTFT_MS": "0", "DIM_SIM_TOKENS_PER_S": "15"}
    _, key = await create_key(bus, principal_id="ann", tenant="acme", roles=("member",), actor="t")
    # The rescuer's engine has another seed: had it started the answer over, its text would
    # differ from what the client already has, and the client's text from the recorded answer.
    with spawn(s, "worker", DIM_NODE_ID="victim", **slow) as victim, spawn(s, "gateway"):
        async with mesh(s) as m:
            await m.orchestrator()
            client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            try:
                job_id, deltas, killed = await _stream_and_kill(client, api, victim, m)
            finally:
                await client.close()
            events = await wait_terminal(bus, job_id, timeout_s=30)
    received = "".join(deltas)
    (done,) = [e.data for e in events if isinstance(e.data, TaskCompleted)]
    starts = [e.data for e in events if isinstance(e.data, TaskStarted)]
    assert killed and [t.node_id for t in starts] == ["victim", "rescuer"]
    assert starts[1].resumed_chars > 40  # it continued, it did not start over
    assert received == done.output  # one complete answer, nothing repeated or lost
    # the budget spans both attempts, and each token is counted once
    assert starts[1].resumed_tokens < done.usage.completion_tokens <= 60
    history = [e.type for e in await job_events(bus, job_id)]
    assert history.count("job.completed") == 1


async def _rescuer(m: Mesh) -> None:
    await m.worker("rescuer", sim_seed=7, sim_ttft_ms=0, sim_tokens_per_s=15)


async def _stream_and_kill(
    client: AsyncOpenAI,
    api: str,
    victim: subprocess.Popen[bytes],
    m: Mesh,
    then: Callable[[Mesh], Awaitable[None]] = _rescuer,
) -> tuple[str, list[str], bool]:
    """Stream one answer; kill the victim mid-way and start a rescuer (`then`)."""

    async def up() -> bool:
        try:
            return bool((await client.models.list()).data)
        except Exception:
            return False

    await wait_until(up, what="the gateway and the victim")
    deltas: list[str] = []
    job_id = ""
    killed = False
    if api == "chat":
        raw = await client.chat.completions.with_raw_response.create(
            model="sim-small",
            messages=[{"role": "user", "content": "tell me a long story"}],
            max_tokens=60,
            stream=True,
        )
    else:
        raw = await client.completions.with_raw_response.create(
            model="sim-small", prompt="tell me a long story", max_tokens=60, stream=True
        )
    job_id = raw.headers["x-dim-job-id"]
    stream = raw.parse()
    async with asyncio.timeout(60):
        async for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text = choice.delta.content if api == "chat" else choice.text  # type: ignore[union-attr]
            if text:
                deltas.append(text)
            if not killed and len("".join(deltas)) > 40:
                os.kill(victim.pid, signal.SIGKILL)  # mid-answer
                victim.wait(5)
                killed = True
                await then(m)
    return job_id, deltas, killed


async def _chunks(
    bus: Bus, job_id: str, *chunks: tuple[int, int, str, tuple[int, ...] | None]
) -> None:
    started: set[int] = set()
    for attempt, offset, text, ids in chunks:
        if attempt not in started:  # what a node's chunks count for: an attempt it started
            started.add(attempt)
            begun = TaskStarted(
                job_id=job_id, task_id=f"{job_id}.0", attempt=attempt, node_id=f"n{attempt}"
            )
            subject = bus.names.report(job_id, begun.type, begun.node_id)
            await bus.publish(subject, Envelope(begun, actor="t"))
        chunk = TokensProduced(
            job_id=job_id,
            task_id=f"{job_id}.0",
            attempt=attempt,
            node_id=f"n{attempt}",
            index=0,
            offset=offset,
            text=text,
            tokens=len(ids) if ids else max(1, len(text) // 2),
            token_ids=ids,
        )
        await bus.publish(bus.names.tokens(job_id, chunk.node_id), Envelope(chunk, actor="t"))


async def test_a_resume_takes_the_streamed_token_ids_when_every_chunk_has_them(bus: Bus) -> None:
    # attempt 1 streamed two chunks and died; attempt 2 streamed one more and died
    await _chunks(bus, "j1", (1, 0, "Hel", (5, 6)), (1, 3, "lo", (7,)), (2, 5, " you", (8, 9)))
    done = await partial_output(bus, "j1", "j1.0")
    assert (done.text, done.token_ids, done.tokens) == ("Hello you", (5, 6, 7, 8, 9), 5)


async def test_a_resume_falls_back_to_text_when_chunks_do_not_line_up(bus: Bus) -> None:
    # a redelivered attempt that started over overlaps what is there: its ids cannot be split
    await _chunks(bus, "j2", (1, 0, "Hel", (5, 6)), (2, 0, "Hello", (5, 6, 7)))
    overlap = await partial_output(bus, "j2", "j2.0")
    assert (overlap.text, overlap.token_ids) == ("Hello", None)
    await _chunks(bus, "j3", (1, 0, "Hel", (5, 6)), (1, 3, "lo", None))  # an engine without ids
    assert (await partial_output(bus, "j3", "j3.0")).token_ids is None
    await _chunks(bus, "j4", (1, 5, " you", (8, 9)), (1, 0, "Hello", (5, 6, 7)))  # out of order
    assert (await partial_output(bus, "j4", "j4.0")).token_ids is None


async def test_a_resume_takes_only_the_chunks_of_nodes_that_started_the_task(bus: Bus) -> None:
    await _chunks(bus, "j5", (1, 0, "Hello", None))
    forged = TokensProduced(
        job_id="j5",
        task_id="j5.0",
        attempt=1,
        node_id="evil",
        index=1,
        offset=5,
        text=" X",
        tokens=1,
    )
    await bus.publish(bus.names.tokens("j5", "evil"), Envelope(forged, actor="t"))  # never started
    claimed = forged.model_copy(update={"node_id": "n2"})  # under n1's subject, naming another
    await bus.publish(bus.names.tokens("j5", "n1"), Envelope(claimed, actor="t"))
    assert (await partial_output(bus, "j5", "j5.0")).text == "Hello"
    # believing only enrolled keys: n1's start is unsigned and no key is enrolled for it
    assert (await partial_output(bus, "j5", "j5.0", verify=True)).text == ""


async def test_a_worker_restarted_under_its_own_id_fails_over_at_once(
    bus: Bus, settings: Settings
) -> None:
    """A supervisor restarts a killed worker under the same node id before its record ages
    (here the TTL is 30 s and JetStream would redeliver after 120 s): the new instance's record
    says the running attempt is lost, and the answer carries on within seconds."""
    port = free_port()
    s = settings.model_copy(
        update={"gateway_port": port, "node_ttl_s": 30.0, "task_ack_wait_s": 120.0}
    )
    slow = {"DIM_SIM_TTFT_MS": "0", "DIM_SIM_TOKENS_PER_S": "15"}
    _, key = await create_key(bus, principal_id="ann", tenant="acme", roles=("member",), actor="t")
    with spawn(s, "worker", DIM_NODE_ID="victim", **slow) as victim, spawn(s, "gateway"):
        async with mesh(s) as m:
            await m.orchestrator()
            client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)

            async def restart(_: Mesh) -> None:  # the same id, as systemd or Kubernetes would
                await m.worker("victim", sim_seed=7, sim_ttft_ms=0, sim_tokens_per_s=15)

            try:
                job_id, deltas, killed = await _stream_and_kill(client, "chat", victim, m, restart)
            finally:
                await client.close()
            events = await wait_terminal(bus, job_id, timeout_s=20)
    lost = [e.data for e in events if isinstance(e.data, TaskLost)]
    starts = [e.data for e in events if isinstance(e.data, TaskStarted)]
    assert killed and [(t.node_id, t.attempt) for t in starts] == [("victim", 1), ("victim", 2)]
    assert len(lost) == 1 and "restarted" in lost[0].error
    (done,) = [e.data for e in events if isinstance(e.data, TaskCompleted)]
    assert "".join(deltas) == done.output  # nothing repeated or lost across the restart
