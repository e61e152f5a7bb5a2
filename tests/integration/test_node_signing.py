"""Signed node records on a real secured nats-server: a worker connected with its NKey signs its
record with that key, and the gateway (with its own identity and rights) shows it verified
against the key the admin enrolled; records signed by another key, naming another key, unsigned,
or of a node with no enrolled key, are shown as not verified."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from events.bus import Bus
from events.records import NodeRecord
from events.signing import NodeKey, signed_record
from events.subjects import Names
from gateway.app import create_app
from services.accounts.keys import create_key
from services.engines.factory import build_engine
from services.nats_auth import (
    Identity,
    authorization,
    inbox_prefix,
    new_identity,
    role_permissions,
    worker_permissions,
)
from services.nats_server import EmbeddedNats
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from services.settings import Settings
from services.worker.runner import Worker
from tests.conftest import fast_settings
from tests.mesh import wait_until
from tests.secured_nats import new_user_seed

NAMES = Names(f"sg{uuid.uuid4().hex[:8]}")
MODEL = "sim-small"


@dataclass
class Secured:
    url: str
    ids: dict[str, Identity]

    def settings(self, identity: str, **update: Any) -> Settings:
        """Settings connecting as `identity` (its seed and inbox; the server speaks plain TCP)."""
        base = fast_settings(self.url, NAMES.ns)
        return base.model_copy(
            update={
                "nats_nkey_seed": self.ids[identity].seed_file,
                "nats_inbox_prefix": inbox_prefix(identity),
                **update,
            }
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """nats-server admitting the admin, a gateway and worker node `n1` with their roles."""
    base = Path(tmp_path_factory.mktemp("signing"))
    keys = base / "ids"
    ids = {r: new_identity(keys, r, role_permissions(r, NAMES)) for r in ("admin", "gateway")}
    ids["w-n1"] = new_identity(keys, "w-n1", worker_permissions(NAMES, "n1", (MODEL,)))
    server = EmbeddedNats(
        base,
        port=0,
        name="dim-signing",
        extra=authorization([(i.public_key, i.permissions) for i in ids.values()]),
    )
    server.start()
    try:
        yield Secured(server.url, ids)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def as_admin(secured: Secured) -> AsyncIterator[Bus]:
    settings = secured.settings("admin")
    bus = await connect(settings, "admin")
    try:
        await ensure_topology(bus, settings)
        yield bus
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    """A real worker node, in this process, with its own connection."""
    bus = await connect(settings, settings.node_id)
    node = Worker(bus, build_engine(settings), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    try:
        yield node
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        await bus.close()


def _record(node_id: str) -> NodeRecord:
    now = datetime.now(UTC)
    return NodeRecord(
        node_id=node_id,
        models=(MODEL,),
        engine="simulated",
        capacity=4,
        version="forged",
        started_at=now,
        heartbeat_at=now,
        tokens_out=10**9,  # what a forger would claim
    )


async def test_a_workers_own_record_verifies_and_forgeries_do_not(secured: Secured) -> None:
    stranger = NodeKey(new_user_seed())
    node_keys = {n: NodeKey(new_user_seed()) for n in ("n2", "n3", "n4", "n5", "n6")}
    async with as_admin(secured) as admin:
        await enroll(admin, "n1", secured.ids["w-n1"].public_key, by="test")
        for node in ("n2", "n3", "n4", "n6"):  # n5: none enrolled
            await enroll(admin, node, node_keys[node].public_key, by="test")
        _, key = await create_key(
            admin, principal_id="root", tenant="acme", roles=("admin",), actor="test"
        )
        nodes = await admin.bucket("nodes")
        claiming = json.loads(signed_record(_record("n3"), stranger).model_dump_json())
        claiming["public_key"] = node_keys["n3"].public_key
        forged = {
            "n2": signed_record(_record("n2"), stranger).model_dump_json(),  # another key
            "n3": json.dumps(claiming),  # names the enrolled key, signed by another
            "n4": _record("n4").model_dump_json(),  # unsigned
            "n5": signed_record(_record("n5"), node_keys["n5"]).model_dump_json(),  # not enrolled
            "n6": signed_record(_record("n6"), node_keys["n6"]).model_dump_json(),  # genuine
        }
        for node, value in forged.items():
            await nodes.put(node, value.encode())

        n1 = secured.settings("w-n1", node_id="n1", models=(MODEL,), node_ttl_s=30)
        gateway = secured.settings("gateway", node_ttl_s=30)
        async with (
            worker(n1),
            AsyncTestClient(app=create_app(gateway)) as client,
        ):
            shown: dict[str, dict[str, Any]] = {}

            async def listed() -> bool:
                nonlocal shown
                r = await client.get("/v1/nodes", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                shown = {n["node_id"]: n for n in r.json()}
                return len(shown) == 6 and shown["n1"]["live"]

            await wait_until(listed, what="the worker and the forged records in the gateway")
            assert {n: s["verified"] for n, s in shown.items()} == {
                "n1": True,
                "n2": False,
                "n3": False,
                "n4": False,
                "n5": False,
                "n6": True,
            }
            assert shown["n1"]["public_key"] == secured.ids["w-n1"].public_key

            # The same worker with another key enrolled for it: its record no longer verifies.
            await enroll(admin, "n1", stranger.public_key, by="test")

            async def unverified() -> bool:
                await listed()
                return shown["n1"]["verified"] is False

            await wait_until(unverified, what="n1 shown unverified once another key is enrolled")
