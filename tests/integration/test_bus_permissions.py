"""The bus trusts no one: a real nats-server with dim's roles (services/nats_auth.py) refuses an
anonymous client and every identity anything its role does not need; what each role does need
still works. Each attack is also tried on the same server with the role's rights widened to
everything: there it succeeds, so these tests fail if the permissions are switched off."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from events.subjects import Names
from services.nats_auth import (
    Identity,
    Permissions,
    authorization,
    inbox_prefix,
    new_identity,
    role_permissions,
    worker_permissions,
)
from services.nats_server import EmbeddedNats

NAMES = Names("sec")
ALL = Permissions(publish=(">",), subscribe=(">",))


@dataclass
class Server:
    url: str
    ids: dict[str, Identity]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """nats-server admitting dim's roles, a worker node `n1` serving `m1`, and `open-*` twins of
    the worker, the gateway and the batcher with every right (the permissions switched off)."""
    base = Path(tmp_path_factory.mktemp("authz"))
    keys = base / "ids"
    ids = {
        r: new_identity(keys, r, role_permissions(r, NAMES))
        for r in ("admin", "gateway", "batcher", "projector")
    }
    ids["w-n1"] = new_identity(keys, "w-n1", worker_permissions(NAMES, "n1", ("m1",)))
    for twin in ("w-n1", "gateway", "batcher"):
        ids[f"open-{twin}"] = new_identity(keys, f"open-{twin}", ALL)
    nats_server = EmbeddedNats(
        base,
        port=0,
        name="dim-authz",
        extra=authorization([(i.public_key, i.permissions) for i in ids.values()]),
    )
    nats_server.start()
    try:
        yield Server(nats_server.url, ids)
    finally:
        nats_server.stop()


@dataclass
class Conn:
    nc: Client
    errors: list[str]

    async def violations(self) -> list[str]:
        """The permission violations the server reported so far (it writes subjects in lower
        case)."""
        await asyncio.sleep(0.2)
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


@contextlib.asynccontextmanager
async def connect(server: Server, name: str) -> AsyncIterator[Conn]:
    """A client with identity `name` (an `open-` twin uses the real one's inbox)."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    ident = server.ids[name]
    nc = await nats.connect(
        server.url,
        nkeys_seed=str(ident.seed_file),
        inbox_prefix=inbox_prefix(name.removeprefix("open-")),
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        yield Conn(nc, errors)
    finally:
        await nc.close()


@pytest.fixture
async def provisioned(server: Server) -> Server:
    """The streams and buckets the attacks aim at, made by the admin."""
    async with connect(server, "admin") as admin:
        js = admin.nc.jetstream()
        for stream, subjects in (
            (NAMES.jobs_stream, [NAMES.jobs_all]),
            (NAMES.tasks_stream, [NAMES.tasks_all]),
        ):
            with contextlib.suppress(Exception):
                await js.add_stream(name=stream, subjects=subjects)
        for bucket in ("keys", "enrolled", "file_meta"):
            with contextlib.suppress(Exception):
                await js.create_key_value(bucket=NAMES.bucket(bucket))
        with contextlib.suppress(Exception):
            await js.add_stream(name=NAMES.batches_stream, subjects=[NAMES.batches_all])
        with contextlib.suppress(Exception):
            await js.create_object_store(NAMES.bucket("files"))
        await (await js.object_store(NAMES.bucket("files"))).put("file-acme", b"acme's requests")
    return server


async def test_an_anonymous_client_is_refused(server: Server) -> None:
    with pytest.raises(Exception, match="Authorization Violation"):
        await _refused(server.url)


async def test_an_unknown_key_is_refused(server: Server, tmp_path: Path) -> None:
    stranger = new_identity(tmp_path, "stranger", ALL)
    # In a process of its own: nats-py leaves the socket of a refused NKey connection unclosed.
    tries = (
        "import asyncio, sys, nats\n"
        "async def main():\n"
        "    await nats.connect(sys.argv[1], nkeys_seed=sys.argv[2], allow_reconnect=False)\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", tries, server.url, str(stranger.seed_file), stderr=PIPE
    )
    _, err = await child.communicate()
    assert child.returncode != 0 and b"Authorization Violation" in err


@pytest.mark.parametrize("who", ["w-n1", "open-w-n1"])
async def test_a_worker_cannot_append_job_events(provisioned: Server, who: str) -> None:
    async with connect(provisioned, "admin") as admin, connect(provisioned, who) as worker:
        seen = await admin.nc.subscribe(NAMES.job("j1", "job.completed"))
        await admin.nc.flush()  # the subscription is on the server before the publish
        await worker.nc.publish(NAMES.job("j1", "job.completed"), b"FORGED")
        await worker.nc.publish(NAMES.report("j1", "task.completed", "n1"), b"its own kind")
        await worker.nc.flush()
        blocked = await worker.violations()
        got = [m.data async for m in _drain(seen)]
    if who.startswith("open-"):
        assert got == [b"FORGED"]  # permissions off: the forgery goes through
        return
    assert got == [] and any("job.completed" in v for v in blocked)
    assert not any("task.completed" in v for v in blocked)  # what a worker does, it may


@pytest.mark.parametrize("who", ["w-n1", "open-w-n1"])
async def test_a_worker_cannot_read_another_nodes_queue(provisioned: Server, who: str) -> None:
    other = NAMES.tasks_for_node("n2")
    async with connect(provisioned, who) as worker:
        js = worker.nc.jetstream(timeout=1.0)
        config = ConsumerConfig(name="node-n2", durable_name="node-n2", filter_subject=other)
        try:
            await js.add_consumer(NAMES.tasks_stream, config)
            took = True
        except Exception:
            took = False
        blocked = await worker.violations()
        mine = ConsumerConfig(
            name="node-n1", durable_name="node-n1", filter_subject=NAMES.tasks_for_node("n1")
        )
        await js.add_consumer(NAMES.tasks_stream, mine)  # its own queue, it may
    assert took is who.startswith("open-")
    if not took:
        assert any("consumer.create" in v for v in blocked)


@pytest.mark.parametrize("who", ["w-n1", "open-w-n1"])
async def test_a_worker_cannot_write_the_keys_bucket(provisioned: Server, who: str) -> None:
    async with connect(provisioned, who) as worker:
        kv = await worker.nc.jetstream(timeout=1.0).key_value(NAMES.bucket("keys"))
        try:
            await kv.put("admin-key", b"FORGED")
            wrote = True
        except Exception:
            wrote = False
        blocked = await worker.violations()
    assert wrote is who.startswith("open-")
    if not wrote:
        assert any(f"$kv.{NAMES.bucket('keys')}" in v for v in blocked)


@pytest.mark.parametrize("who", ["w-n1", "gateway", "open-w-n1"])
async def test_only_the_admin_enrolls_a_nodes_key(provisioned: Server, who: str) -> None:
    """A worker enrolling a key of its choosing would make its forgeries verify."""
    async with connect(provisioned, who) as client:
        kv = await client.nc.jetstream(timeout=1.0).key_value(NAMES.bucket("enrolled"))
        try:
            await kv.put("n1", b'{"public_key": "UFORGED", "enrolled_at": "2020-01-01T00:00:00Z"}')
            wrote = True
        except Exception:
            wrote = False
        blocked = await client.violations()
    assert wrote is who.startswith("open-")
    if not wrote:
        assert any(f"$kv.{NAMES.bucket('enrolled')}" in v for v in blocked)


@pytest.mark.parametrize("who", ["gateway", "open-gateway"])
async def test_a_service_cannot_delete_a_stream(provisioned: Server, who: str) -> None:
    victim = f"{NAMES.ns}_VICTIM"
    async with connect(provisioned, "admin") as admin:
        await admin.nc.jetstream().add_stream(name=victim, subjects=[f"{NAMES.ns}.victim.>"])
        async with connect(provisioned, who) as service:
            try:
                await service.nc.jetstream(timeout=1.0).delete_stream(victim)
                deleted = True
            except Exception:
                deleted = False
            blocked = await service.violations()
        names = await admin.nc.jetstream().streams_info()
    assert deleted is who.startswith("open-")
    assert (victim in [s.config.name for s in names]) is not deleted
    if not deleted:
        assert any("stream.delete" in v for v in blocked)


@pytest.mark.parametrize("who", ["w-n1", "projector", "open-w-n1"])
async def test_only_the_gateway_and_the_batcher_read_the_files(
    provisioned: Server, who: str
) -> None:
    """A worker (or the projector) reading the Batch API's files would read every tenant's."""
    async with connect(provisioned, who) as client:
        js = client.nc.jetstream(timeout=1.0)
        try:
            store = await js.object_store(NAMES.bucket("files"))
            got = (await store.get("file-acme")).data
        except Exception:
            got = None
        blocked = await client.violations()
    assert (got == b"acme's requests") is who.startswith("open-")
    if got is None:
        assert any(f"obj_{NAMES.bucket('files')}" in v for v in blocked)


@pytest.mark.parametrize("who", ["gateway", "batcher", "open-gateway"])
async def test_who_writes_which_batch_event(provisioned: Server, who: str) -> None:
    """A caller's requests (create, cancel) are the gateway's to record, a batch's end the
    runner's: the gateway cannot end a batch, nor the runner create one."""
    forged = "batch.completed" if "gateway" in who else "batch.created"
    allowed = "batch.cancelling" if "gateway" in who else "batch.started"
    async with connect(provisioned, who) as client:
        js = client.nc.jetstream(timeout=1.0)
        try:
            await js.publish(f"{NAMES.ns}.batches.b1.{forged}", b"FORGED")
            stored = True
        except Exception:
            stored = False
        await js.publish(f"{NAMES.ns}.batches.b1.{allowed}", b"its own kind")
        blocked = await client.violations()
    assert stored is who.startswith("open-")
    if not stored:
        assert any(forged in v for v in blocked)


@pytest.mark.parametrize("who", ["batcher", "open-batcher"])
async def test_the_batcher_submits_lines_and_cannot_end_a_job(
    provisioned: Server, who: str
) -> None:
    async with connect(provisioned, "admin") as admin, connect(provisioned, who) as batcher:
        seen = await admin.nc.subscribe(NAMES.job("j1", "job.completed"))
        await admin.nc.flush()
        await batcher.nc.publish(NAMES.job("j1", "job.completed"), b"FORGED")
        await batcher.nc.publish(NAMES.job("j1", "job.submitted"), b"a line's job")
        await batcher.nc.flush()
        blocked = await batcher.violations()
        got = [m.data async for m in _drain(seen)]
    if who.startswith("open-"):
        assert got == [b"FORGED"]
        return
    assert got == [] and any("job.completed" in v for v in blocked)
    assert not any("job.submitted" in v for v in blocked)


async def _drain(sub: object) -> AsyncIterator[object]:
    """The messages a subscription holds now, without waiting for more."""
    while True:
        try:
            yield await sub.next_msg(timeout=0.2)  # type: ignore[attr-defined]
        except Exception:
            return


async def _refused(url: str, **options: object) -> None:
    """Connect, expecting a refusal; the client is closed either way (its socket with it)."""
    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0, **options)  # type: ignore[arg-type]
    finally:
        await nc.close()
