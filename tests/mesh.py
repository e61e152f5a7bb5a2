"""Test helpers: run dim's services in this process or as real child processes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from events.bus import Bus
from events.envelope import Envelope
from events.history import read_events
from events.subjects import Names
from gateway.batch_bodies import render
from services.batches.projection import BatchStatusProjector
from services.batches.runner import BatchRunner
from services.engines.factory import build_engine
from services.nats_auth import authorization, inbox_prefix
from services.nats_dir import NatsDir
from services.nats_server import EmbeddedNats
from services.orchestrator.runner import Orchestrator
from services.process import connect
from services.projector import JobStatusProjector
from services.settings import Settings
from services.up import child_env
from services.worker.runner import Worker
from tests.conftest import fast_settings


@dataclass
class Service:
    """A service running as a task in this process, with its own connection."""

    name: str
    stop: asyncio.Event
    task: asyncio.Task[None]
    obj: Any = None

    async def halt(self, timeout_s: float = 20) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout_s)


@dataclass
class Mesh:
    """In-process services of one test; stopped on exit."""

    settings: Settings
    services: list[Service] = field(default_factory=list)

    async def _start(
        self,
        name: str,
        make: Callable[[Bus], Any],
        ready: Callable[[Any], Awaitable[None]] | None = None,
    ) -> Service:
        bus = await connect(self.settings, name)
        obj = make(bus)
        stop = asyncio.Event()

        async def body() -> None:
            try:
                await obj.run(stop)
            finally:
                await bus.close()

        svc = Service(name, stop, asyncio.create_task(body()), obj)
        self.services.append(svc)
        return svc

    async def orchestrator(self, **overrides: Any) -> Service:
        s = self.settings.model_copy(update=overrides)
        return await self._start("orchestrator", lambda bus: Orchestrator(bus, s))

    async def projector(self) -> Service:
        return await self._start("projector", lambda bus: JobStatusProjector(bus, self.settings))

    async def batch_projector(self) -> Service:
        return await self._start(
            "batch-projector", lambda bus: BatchStatusProjector(bus, self.settings)
        )

    async def batcher(self, **overrides: Any) -> Service:
        s = self.settings.model_copy(update=overrides)
        return await self._start("batcher", lambda bus: BatchRunner(bus, s, render))

    async def worker(self, node_id: str, **overrides: Any) -> Service:
        s = self.settings.model_copy(update={"node_id": node_id, **overrides})
        return await self._start(node_id, lambda bus: Worker(bus, build_engine(s), s))

    async def close(self) -> None:
        for svc in reversed(self.services):
            svc.stop.set()
        for svc in reversed(self.services):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(svc.task, 20)


@contextlib.asynccontextmanager
async def mesh(settings: Settings) -> AsyncIterator[Mesh]:
    """A `Mesh` that stops its services when the block ends."""
    m = Mesh(settings)
    try:
        yield m
    finally:
        await m.close()


@contextlib.contextmanager
def spawn(settings: Settings, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run `dim <args>` as a real child process with the settings in its environment.

    Its output goes to a temporary file, printed when the block ends (pytest shows it on failure).
    """
    full = child_env(settings, **env)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            out.seek(0)
            print(f"--- dim {' '.join(args)} (exit {proc.returncode}) ---")
            print(out.read().decode(errors="replace"))


async def job_events(bus: Bus, job_id: str) -> list[Envelope]:
    """A job's stored events, oldest first."""
    names = bus.names
    return [e async for _, e in read_events(bus, names.jobs_stream, names.job_all(job_id))]


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 20, what: str = "condition"
) -> None:
    """Poll `check` until true; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def wait_terminal(bus: Bus, job_id: str, timeout_s: float = 20) -> list[Envelope]:
    """Wait until the job has a terminal event; returns its history."""
    events: list[Envelope] = []

    async def done() -> bool:
        nonlocal events
        events = await job_events(bus, job_id)
        return any(e.type in ("job.completed", "job.failed", "job.cancelled") for e in events)

    await wait_until(done, timeout_s, f"job {job_id} to end")
    return events


async def wait_ready(base: str, timeout_s: float = 30) -> None:
    """Wait until the gateway at `base` answers `/readyz` with 200."""
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"{base} never became ready"
            await asyncio.sleep(0.2)


async def serving(base: str, key: str, model: str) -> bool:
    """Whether the gateway at `base` lists `model` to the holder of `key`."""
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
        return r.status_code == 200 and model in [m["id"] for m in r.json()["data"]]


@contextlib.contextmanager
def all_of(*contexts: contextlib.AbstractContextManager[object]) -> Iterator[None]:
    """Enter every context; leave them in reverse order."""
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


def metric(text: str, name: str) -> float:
    """The value of the sample `name` (with its labels) in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics:\n{text[:3000]}")


@dataclass
class Secured:
    """A nats-server admitting dim's roles, each with only its rights (services/nats_auth.py)."""

    url: str
    dir: NatsDir
    ns: str

    def settings(self, identity: str, **update: Any) -> Settings:
        """Settings connecting as `identity` (its seed and inbox)."""
        return fast_settings(self.url, self.ns).model_copy(
            update={
                "nats_nkey_seed": self.dir.seed_of(identity),
                "nats_inbox_prefix": inbox_prefix(identity),
                **update,
            }
        )


@contextlib.contextmanager
def secured_server(base: Path, ns: str, workers: dict[str, tuple[str, ...]]) -> Iterator[Secured]:
    """A server admitting the services and the worker nodes `workers` (node id -> its models;
    enrolling their keys is the caller's). Plain TCP: TLS is tested elsewhere."""
    d, names = NatsDir(base), Names(ns)
    for node, models in workers.items():
        d.seeded_worker(node, models, names)
    server = EmbeddedNats(base, port=0, name=f"dim-{ns}", extra=authorization(d.users(names)))
    server.start()
    try:
        yield Secured(server.url, d, ns)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def sdk_mesh(
    bus: Bus, settings: Settings, model: str = "sim-small", **worker_env: str
) -> AsyncIterator[Any]:
    """An orchestrator, a projector, one simulated worker (`worker_env` its DIM_* settings) and
    a gateway as real processes; yields the official `openai` SDK's client for a member of
    tenant acme, once the worker serves `model` in the gateway's view."""
    import openai

    from services.accounts.keys import create_key
    from services.nats_server import free_port

    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    _, key = await create_key(bus, principal_id="ann", tenant="acme", roles=("member",), actor="t")
    env = {"DIM_NODE_ID": "w1", "DIM_MODELS": model, **worker_env}
    with (
        spawn(s, "orchestrator"),
        spawn(s, "projector"),
        spawn(s, "worker", **env),
        spawn(s, "gateway"),
    ):
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base)
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

        async def served() -> bool:
            try:
                await client.models.retrieve(model)
            except openai.NotFoundError:
                return False
            return True

        await wait_until(served, what="the worker in the gateway's view")
        try:
            yield client
        finally:
            await client.close()
