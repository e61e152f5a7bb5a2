"""The Batch API through the official `openai` SDK (`client.files`, `client.batches`) against real
processes, each with its own NATS identity and only its role's rights: a 100-line batch
completes with one chat.completion per line while a worker is killed (SIGKILL) and the batch
runner is killed and restarted, nothing lost or run twice; a refused input file makes a failed
batch naming each line; a cancelled batch keeps what ended; another tenant sees none of it (404);
the Files API's bounds hold."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai.types import Batch
from openai.types.chat import ChatCompletion

from events.batches import line_of
from events.bus import Bus
from events.history import read_events
from events.jobs import TERMINAL_TYPES, JobSubmitted
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from tests.mesh import Secured, secured_server, spawn, wait_ready, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "sim-small"
WORKERS = {"n1": (MODEL,), "n2": (MODEL,)}
FILE_MAX_BYTES = 200_000
MAX_LINES = 150


@dataclass
class BatchMesh:
    """The processes of a secured mesh, a client for each of two tenants, the admin's bus."""

    secured: Secured
    base: dict[str, Any]  # what every process's settings have beside its identity
    ann: openai.AsyncOpenAI  # of tenant acme
    eve: openai.AsyncOpenAI  # of tenant evil
    admin: Bus
    stack: contextlib.ExitStack
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, identity: str, *args: str, **update: Any) -> None:
        """Run `dim <args>` as `identity`."""
        settings = self.secured.settings(identity, **(self.base | update))
        self.procs[name] = self.stack.enter_context(spawn(settings, *args))

    def kill(self, name: str) -> None:
        """SIGKILL the process `name`."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _base(port: int) -> dict[str, Any]:
    return {
        "gateway_port": port,
        "sim_tokens_per_s": 50.0,
        "batch_in_flight": 8,
        "file_max_bytes": FILE_MAX_BYTES,
        "batch_max_lines": MAX_LINES,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BatchMesh]:
    base_dir = Path(tmp_path_factory.mktemp("batch-mesh"))
    with secured_server(base_dir, "bat", WORKERS) as secured, contextlib.ExitStack() as stack:
        port = free_port()
        base = _base(port)
        admin_settings = secured.settings("admin", **base)
        admin = await connect(admin_settings, "admin")
        await ensure_topology(admin, admin_settings)
        for node in WORKERS:
            await enroll(admin, node, secured.dir.approvals()[node].public_key, by="test")
        _, ann_key = await create_key(
            admin, principal_id="ann", tenant="acme", roles=("member",), actor="t"
        )
        _, eve_key = await create_key(
            admin, principal_id="eve", tenant="evil", roles=("admin",), actor="t"
        )
        m = BatchMesh(
            secured,
            base,
            openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=ann_key, max_retries=0
            ),
            openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=eve_key, max_retries=0
            ),
            admin,
            stack,
        )
        for role in ("orchestrator", "projector", "batcher", "gateway"):
            m.start(role, role, role)
        for node, models in WORKERS.items():
            m.start(node, f"w-{node}", "worker", node_id=node, models=models)
        await wait_ready(f"http://127.0.0.1:{port}")
        nodes = await admin.bucket("nodes")

        async def workers_up() -> bool:
            return all([await nodes.get(n) is not None for n in WORKERS])

        await wait_until(workers_up, 30, "both workers")

        async def served() -> bool:
            try:
                model = await m.ann.models.retrieve(MODEL)
            except openai.NotFoundError:
                return False
            return (model.model_extra or {}).get("nodes") == len(WORKERS)

        try:
            await wait_until(served, 30, "the gateway to see both workers")
            yield m
        finally:
            await m.ann.close()
            await m.eve.close()
            await admin.close()


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _chat_lines(n: int, max_tokens: int, prefix: str = "req") -> bytes:
    return _jsonl(
        [
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    "max_tokens": max_tokens,
                },
            }
            for i in range(n)
        ]
    )


async def _batch(client: openai.AsyncOpenAI, raw: bytes) -> Batch:
    uploaded = await client.files.create(file=("input.jsonl", raw), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(raw)
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "e2e"},
    )


async def _until(
    client: openai.AsyncOpenAI,
    batch_id: str,
    done: Callable[[Batch], bool],
    timeout_s: float = 90,
    each: Callable[[Batch], None] | None = None,
) -> Batch:
    """Poll the batch (at most every 0.2 s, at most `timeout_s`) until `done` says so."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.2) + 1):
        batch = await client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if each is not None:
            each(batch)
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {batch}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"batch {batch_id} stuck")


async def _line_log(admin: Bus, batch_id: str) -> tuple[Counter[int], Counter[int]]:
    """How many times each line's job was submitted, and ended, in the log."""
    names = admin.names
    submitted: Counter[int] = Counter()
    ended: Counter[int] = Counter()
    async for _, envelope in read_events(admin, names.jobs_stream, names.jobs_all):
        line = line_of(getattr(envelope.data, "job_id", ""))
        if line is None or line[0] != batch_id:
            continue
        if envelope.type == JobSubmitted.type:
            submitted[line[1]] += 1
        elif envelope.type in TERMINAL_TYPES:
            ended[line[1]] += 1
    return submitted, ended


async def _lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.read().splitlines()]


async def test_a_batch_completes_through_a_killed_worker_and_a_restarted_runner(
    mesh: BatchMesh,
) -> None:
    batch = await _batch(mesh.ann, _chat_lines(100, max_tokens=20))
    assert batch.status in ("validating", "in_progress"), batch.errors
    assert batch.request_counts is not None
    assert batch.request_counts.total == 100 and batch.metadata == {"suite": "e2e"}
    assert batch.expires_at == batch.created_at + 24 * 3600
    killed: list[int] = []

    def chaos(seen: Batch) -> None:
        assert seen.request_counts is not None
        done = seen.request_counts.completed
        if not killed and done >= 15:
            mesh.kill("n2")  # its lines in flight are lost with it, and run again elsewhere
            killed.append(done)
        elif len(killed) == 1 and done >= 40:
            mesh.kill("batcher")
            killed.append(done)
            mesh.start("batcher", "batcher", "batcher")  # a new runner takes up from the log

    batch = await _until(mesh.ann, batch.id, lambda b: b.status == "completed", 120, chaos)
    assert len(killed) == 2 and killed[-1] < 100, "the kills came after the batch ended"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (100, 100)
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.completed_at
    assert batch.usage is not None and batch.usage.output_tokens > 0
    records = await _lines(mesh.ann, batch.output_file_id)
    assert sorted(r["custom_id"] for r in records) == sorted(f"req-{i}" for i in range(100))
    for record in records:
        assert record["error"] is None and record["response"]["status_code"] == 200
        answer = ChatCompletion.model_validate(record["response"]["body"])
        assert answer.object == "chat.completion" and answer.choices[0].message.content
        assert answer.model == MODEL and record["id"].startswith("batch_req_")
    output = await mesh.ann.files.retrieve(batch.output_file_id or "")
    assert output.purpose == "batch_output"
    submitted, ended = await _line_log(mesh.admin, batch.id)
    assert submitted == Counter(range(100))  # every line's job submitted once: none lost or twice
    assert set(ended) == set(range(100))
    listed = [b.id async for b in mesh.ann.batches.list(limit=2)]
    assert batch.id in listed  # paged by `after`, as the SDK asks


async def test_batch_lines_carry_tools_schemas_and_logprobs(mesh: BatchMesh) -> None:
    """A line is served as its endpoint serves it: every field reaches the engine."""
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
            },
        },
    }
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    base = json.loads(_chat_lines(1, 64))
    bodies = {
        "tool": {"tools": [tool], "tool_choice": "required"},
        "schema": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": schema},
            }
        },
        "scored": {"logprobs": True, "top_logprobs": 2},
    }
    lines = [{**base, "custom_id": k, "body": {**base["body"], **v}} for k, v in bodies.items()]
    batch = await _batch(mesh.ann, _jsonl(lines))
    batch = await _until(mesh.ann, batch.id, lambda b: b.status in ("completed", "failed"))
    assert batch.status == "completed", batch
    got = {
        r["custom_id"]: ChatCompletion.model_validate(r["response"]["body"]).choices[0]
        for r in await _lines(mesh.ann, batch.output_file_id)
    }
    (call,) = got["tool"].message.tool_calls or []
    assert got["tool"].finish_reason == "tool_calls" and "q" in json.loads(call.function.arguments)
    assert isinstance(json.loads(got["schema"].message.content or "")["n"], int)
    scored = got["scored"].logprobs
    assert scored is not None and scored.content and scored.content[0].top_logprobs
    keys = set()  # each line's job names the key the batch came with: usage and budgets
    names = mesh.admin.names
    async for _, envelope in read_events(mesh.admin, names.jobs_stream, names.jobs_all):
        event = envelope.data
        if isinstance(event, JobSubmitted) and (line_of(event.job_id) or ("",))[0] == batch.id:
            keys.add(event.key_id)
    assert len(keys) == 1 and None not in keys


async def test_a_refused_input_file_makes_a_failed_batch_naming_each_line(
    mesh: BatchMesh,
) -> None:
    good = json.loads(_chat_lines(1, 4))
    lines = [
        good,
        {**good, "custom_id": "req-0"},  # 2: the same custom_id
        {**good, "custom_id": "u", "url": "/v1/completions"},  # 3: another endpoint
        {**good, "custom_id": "s", "body": {**good["body"], "stream": True}},  # 4
        {**good, "custom_id": "t", "body": {**good["body"], "store": True}},  # 5: not served
    ]
    raw = _jsonl(lines) + b"not json\n"  # 6
    batch = await _batch(mesh.ann, raw)
    assert batch.status == "failed" and batch.failed_at and batch.errors is not None
    got = {e.line: (e.code, e.param) for e in batch.errors.data or []}
    assert got == {
        2: ("duplicate_custom_id", "custom_id"),
        3: ("invalid_url", "url"),
        4: ("invalid_request", "body.stream"),
        5: ("unsupported_parameter", "body.store"),
        6: ("invalid_json", None),
    }
    again = await mesh.ann.batches.retrieve(batch.id)
    assert again.status == "failed" and again.errors is not None
    submitted, _ = await _line_log(mesh.admin, batch.id)
    assert not submitted  # nothing of a refused file runs


async def test_a_cancelled_batch_keeps_the_lines_that_ended(mesh: BatchMesh) -> None:
    batch = await _batch(mesh.ann, _chat_lines(60, max_tokens=40, prefix="c"))

    def some_done(b: Batch) -> bool:
        return b.request_counts is not None and b.request_counts.completed >= 3

    await _until(mesh.ann, batch.id, some_done)
    cancelling = await mesh.ann.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = await _until(mesh.ann, batch.id, lambda b: b.status == "cancelled")
    assert batch.request_counts is not None and batch.cancelled_at
    completed = batch.request_counts.completed
    assert 3 <= completed < 60
    records = await _lines(mesh.ann, batch.output_file_id)
    assert len(records) == completed
    assert all(r["response"]["status_code"] == 200 for r in records)
    if batch.request_counts.failed:  # lines cancelled while they ran
        errors = await _lines(mesh.ann, batch.error_file_id)
        assert len(errors) == batch.request_counts.failed
        assert {e["error"]["code"] for e in errors} <= {"batch_cancelled"}
    submitted, ended = await _line_log(mesh.admin, batch.id)
    assert set(submitted) == set(ended)  # nothing left running
    assert sum(submitted.values()) <= completed + batch.request_counts.failed
    with pytest.raises(openai.ConflictError):
        await mesh.ann.batches.cancel(batch.id)


async def test_another_tenant_sees_none_of_it(mesh: BatchMesh) -> None:
    raw = _chat_lines(2, 4, prefix="t")
    batch = await _batch(mesh.ann, raw)
    (file_id,) = [f.id async for f in mesh.ann.files.list() if f.id == batch.input_file_id]
    eve = mesh.eve  # an admin, of another tenant
    for attempt in (
        lambda: eve.files.retrieve(file_id),
        lambda: eve.files.content(file_id),
        lambda: eve.files.delete(file_id),
        lambda: eve.batches.retrieve(batch.id),
        lambda: eve.batches.cancel(batch.id),
        lambda: eve.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            await attempt()
    assert [f async for f in eve.files.list()] == []
    assert [b async for b in eve.batches.list()] == []
    assert (await mesh.ann.files.retrieve(file_id)).id == file_id  # still there, still ann's
    done = await _until(mesh.ann, batch.id, lambda b: b.status == "completed")
    deleted = await mesh.ann.files.delete(done.output_file_id or "")
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await mesh.ann.files.retrieve(done.output_file_id or "")


async def test_the_files_and_batches_bounds_hold(mesh: BatchMesh) -> None:
    client = mesh.ann
    with pytest.raises(openai.BadRequestError) as purpose:
        await client.files.create(file=("x.jsonl", _chat_lines(1, 4)), purpose="fine-tune")
    assert purpose.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as empty:
        await client.files.create(file=("x.jsonl", b""), purpose="batch")
    assert empty.value.param == "file"
    with pytest.raises(openai.APIStatusError) as big:
        await client.files.create(file=("x.jsonl", b"x" * (FILE_MAX_BYTES + 1)), purpose="batch")
    assert big.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as many:
        await client.files.create(file=("x.jsonl", _chat_lines(MAX_LINES + 1, 4)), purpose="batch")
    assert many.value.param == "file" and str(MAX_LINES) in many.value.message
    uploaded = await client.files.create(file=("x.jsonl", _chat_lines(1, 4)), purpose="batch")
    for field_name, request in (
        ("endpoint", {"endpoint": "/v1/embeddings", "completion_window": "24h"}),
        ("completion_window", {"endpoint": "/v1/chat/completions", "completion_window": "48h"}),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.batches.create(input_file_id=uploaded.id, **request)  # type: ignore[arg-type]
        assert refused.value.param == field_name
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
