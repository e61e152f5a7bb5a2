"""The shipped 3-node cluster configuration (infra/nats/cluster) works as shipped: a security
directory from `dim nats-config`, each node's configuration installed beside its copy with only
its paths and ports changed (tests/shipped_nats.py), three real nats-servers. Then: clients must
speak TLS and be a known identity, the admin identity provisions R3 streams, and the routes
between the nodes speak mutual TLS, so a server without the CA's certificate gets no route."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from events.bus import Bus
from events.connection import NatsAuth
from events.errors import ConnectError, transient
from services.cli import main as dim
from services.local_bus import as_identity
from services.nats_server import free_port, nats_server_binary, port_open
from services.nats_tls import server_tls
from services.process import connect, ensure_topology
from services.settings import Settings
from tests.shipped_nats import SHIPPED, free_ports, install

NAMESPACE = "secure"
WAIT_S = 20.0  # the longest any wait here lasts


@dataclass
class Shipped:
    """The running cluster: where things are, and its ports."""

    root: Path
    security: Path  # what `dim nats-config` wrote
    ports: dict[int, int]  # shipped port -> the free one used instead
    logs: list[Path]

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{self.ports[p]}" for p in (4222, 4223, 4224))

    def as_(self, identity: str) -> Settings:
        base = Settings(nats_url=self.url, namespace=NAMESPACE, replicas=3, connect_timeout_s=5)
        seed = self.security / "ids" / f"{identity}.nk"
        return as_identity(base, seed, identity, self.security / "tls" / "ca.pem")

    def monitor(self, node: int, what: str) -> dict[str, object]:
        port = self.ports[8221 + node]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{what}", timeout=5) as r:
            return dict(json.load(r))


def _until(what: str, check: object, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what}")
        time.sleep(0.1)


def _peers(shipped: Shipped, node: int) -> set[str]:
    routes = shipped.monitor(node, "routez").get("routes") or []
    return {str(r["remote_name"]) for r in routes}  # type: ignore[attr-defined]


def _meta_leader(shipped: Shipped) -> bool:
    meta = shipped.monitor(1, "jsz").get("meta_cluster") or {}
    return bool(meta.get("leader"))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    tmp = tmp_path_factory.mktemp("shipped")
    security = tmp / "made"
    made = ["nats-config", "--out", str(security), "--host", "localhost"]
    assert dim([*made, "--namespace", NAMESPACE]) == 0
    ports = free_ports()
    shipped = Shipped(tmp / "root", security, ports, [])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node in (1, 2, 3):
            conf = install(SHIPPED / "cluster" / f"n{node}.conf", security, shipped.root, ports)
            log = tmp / f"n{node}.log"
            shipped.logs.append(log)
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [nats_server_binary(), "-c", str(conf)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        for node in (1, 2, 3):
            port = ports[4221 + node]
            _until(f"n{node} listens on {port}", lambda p=port: port_open("127.0.0.1", p))
        for node in (1, 2, 3):
            others = {f"dim-n{j}" for j in (1, 2, 3) if j != node}
            _until(f"n{node} routes to {others}", lambda n=node, o=others: _peers(shipped, n) == o)
        _until("a JetStream meta leader", lambda: _meta_leader(shipped))
        yield shipped
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_an_anonymous_or_plain_text_client_is_refused(shipped: Shipped) -> None:
    ca = shipped.security / "tls" / "ca.pem"
    with pytest.raises(ConnectError, match="Authorization Violation"):
        await Bus.connect(shipped.url, shipped.as_("admin").names, auth=NatsAuth(tls_ca=ca))
    with pytest.raises(ConnectError):  # no TLS: the server asks for it, the client cannot
        await Bus.connect(shipped.url, shipped.as_("admin").names, connect_timeout_s=3)


async def test_the_gateway_connects_over_tls_with_its_identity(shipped: Shipped) -> None:
    bus = await connect(shipped.as_("gateway"), "infra-test")
    try:
        await bus.js.account_info()  # a JetStream request: publish, and a reply on its inbox
    finally:
        await bus.close()


async def test_the_admin_provisions_r3_streams(shipped: Shipped) -> None:
    settings = shipped.as_("admin")
    bus = await connect(settings, "infra-test")
    try:
        deadline = time.monotonic() + WAIT_S
        while True:  # a new cluster elects its JetStream meta leader first
            try:
                await ensure_topology(bus, settings)
                break
            except Exception as exc:
                if time.monotonic() > deadline or not transient(exc):
                    raise
                await asyncio.sleep(0.5)
        info = await bus.js.stream_info(settings.names.jobs_stream)
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2  # the leader and two more
    finally:
        await bus.close()


def _route_info(shipped: Shipped, port: int, *, certificate: bool) -> dict[str, object]:
    """What a route port answers a TLS client (with the nodes' certificate, or none): the
    INFO it sends once the handshake is done. Routes speak TLS from their first byte."""
    tls = shipped.security / "tls"
    context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    if certificate:
        context.load_cert_chain(tls / "server.pem", tls / "server-key.pem")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        line = s.makefile("rb").readline()
    assert line.startswith(b"INFO "), line[:80]
    return dict(json.loads(line[5:]))


def test_the_routes_speak_mutual_tls(shipped: Shipped) -> None:
    for node in (1, 2, 3):
        port = shipped.ports[6221 + node]
        info = _route_info(shipped, port, certificate=True)
        assert info["tls_required"] is True and info["tls_verify"] is True, info
        cluster = shipped.monitor(node, "varz")["cluster"]
        assert cluster["tls_required"] is True and cluster["tls_verify"] is True  # type: ignore[index]
        # No client certificate: the node ends the handshake (TLS 1.3 says so on the first read).
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            _route_info(shipped, port, certificate=False)


def _rogue(tmp: Path, shipped: Shipped, name: str, tls: str) -> subprocess.Popen[bytes]:
    """A server that asks node 1 for a route, as a member of cluster `dim`."""
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f'server_name: "{name}"\nlisten: "127.0.0.1:{free_port()}"\n'
        f'cluster {{\n  name: dim\n  listen: "127.0.0.1:{free_port()}"\n{tls}'
        f'  routes: ["nats-route://127.0.0.1:{shipped.ports[6222]}"]\n}}\n'
    )
    with (tmp / f"{name}.log").open("wb") as log:
        return subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log)


def test_a_server_without_the_cas_certificate_gets_no_route(
    shipped: Shipped, tmp_path: Path
) -> None:
    foreign = server_tls(tmp_path / "foreign")  # a certificate from another CA
    rogues = {
        "rogue-plain": "",
        "rogue-foreign": (
            f'  tls {{\n    cert_file: "{foreign.server_cert}"\n'
            f'    key_file: "{foreign.server_key}"\n    ca_file: "{foreign.ca_cert}"\n  }}\n'
        ),
    }
    procs = [_rogue(tmp_path, shipped, name, tls) for name, tls in rogues.items()]
    try:
        log = shipped.logs[0]

        def refused() -> bool:  # node 1 saw each try and closed it
            text = log.read_text(errors="replace")
            return text.count("TLS route handshake error") >= len(rogues)

        _until("node 1 refuses both rogue routes", refused)
        assert _peers(shipped, 1) == {"dim-n2", "dim-n3"}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
