"""The nats-server configurations we ship are ones nats-server accepts."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from events.subjects import Names
from services.cli.nats_config import generate
from services.nats_server import EmbeddedNats, free_port, nats_server_binary
from tests.shipped_nats import free_ports, install

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "infra" / "nats").rglob("*.conf"))


@pytest.mark.parametrize("conf", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_shipped_config_is_valid(conf: Path, tmp_path: Path) -> None:
    # As an operator installs it: beside a security directory `dim nats-config` wrote (the
    # configuration includes its auth.conf and names its TLS files); see tests/shipped_nats.py.
    security = tmp_path / "made"
    generate(security, ["nats.example"], Names("dim"))
    installed = install(conf, security, tmp_path / "root", free_ports())
    out = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(installed)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = conf.read_text()
    assert "sync_interval: always" in text  # the durable setting, documented in each file
    assert 'include "auth.conf"' in text and "dim nats-config" in text  # and how to make it
    assert "tls {" in text
    if "cluster {" in text:  # routes: mutual TLS
        assert text.count("tls {") == 2 and "verify: true" in text


def test_embedded_config_is_valid(tmp_path: Path) -> None:
    conf = tmp_path / "embedded.conf"
    conf.write_text(EmbeddedNats(tmp_path, port=4999, sync_always=True).config())
    out = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 4


RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not RANGE.exists(), reason="the kernel's ephemeral range is read on Linux")
def test_a_port_picked_for_a_listener_is_never_one_the_kernel_hands_out_meanwhile() -> None:
    # A worker's /metrics server binds port 0; had it been given the gateway's port before the
    # gateway listened, the gateway would not start (seen: the gateway bench got 405s from it).
    low, high = map(int, RANGE.read_text().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports), (low, high, sorted(ports)[-3:])
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # and free to listen on


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(("gomaxprocs", "expected"), [(1, "1"), (0, None)])
def test_embedded_server_runs_on_the_cores_it_is_given(
    tmp_path: Path, gomaxprocs: int, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    server = EmbeddedNats(tmp_path, port=0, gomaxprocs=gomaxprocs)
    server.start()
    try:
        assert server.proc is not None
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
        found = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"GOMAXPROCS=")]
        assert found == ([expected] if expected else [])
    finally:
        server.stop()
