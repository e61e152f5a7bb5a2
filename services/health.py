"""The small HTTP server of every process but the gateway: ``/metrics``, ``/healthz``, ``/readyz``.

It listens on ``DIM_METRICS_HOST:DIM_METRICS_PORT`` (docs/metrics.md) from before the process
connects to NATS, so a probe sees a process that is alive but not ready yet. ``/healthz`` is 200
while the process serves HTTP; ``/readyz`` is 200 once NATS is connected, the streams and buckets
exist, the role's durable consumers exist and the role's own conditions hold (a worker's engine
loaded, a projector's views caught up), else 503 with what is missing.

Readiness is checked on the process's event loop (the bus lives there), asked from the server's
thread; a loop that does not answer within a few seconds is itself reported as missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from events.errors import DimError
from services.metrics import CONTENT_TYPE, Combined, process_registry

if TYPE_CHECKING:
    from events.bus import Bus
    from services.settings import Settings

log = logging.getLogger("dim.health")

# How long /readyz waits for the event loop to check the bus.
CHECK_TIMEOUT_S = 3.0

# A condition of readiness: None when it holds, else what is missing (a short phrase).
Condition = Callable[[], str | None]


class PortInUse(DimError, OSError):
    """The metrics port is taken (another dim process on this host, or anything else)."""


class Health:
    """What one process answers on ``/metrics``, ``/healthz`` and ``/readyz``, and its server."""

    def __init__(self, settings: Settings, role: str) -> None:
        self.settings = settings
        self.role = role
        self.registry = process_registry(role)  # process_*, python_* and dim_process_info
        self._sources: list[Callable[[], CollectorRegistry | None]] = []
        self._consumers: list[tuple[str, str]] = []
        self._conditions: list[Condition] = []
        self._degraded: list[Callable[[], dict[str, Any] | None]] = []
        self._bus: Bus | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadingHTTPServer | None = None

    # what it serves

    def include(self, registry: CollectorRegistry | Callable[[], CollectorRegistry | None]) -> None:
        """Serve `registry`'s metrics too (a callable: looked up at each scrape, e.g. an
        engine's registry that exists only once the engine is loaded)."""
        self._sources.append(registry if callable(registry) else (lambda: registry))

    def attach(self, bus: Bus) -> None:
        """The process is connected: readiness checks this bus (on the running loop)."""
        self._bus = bus
        self._loop = asyncio.get_running_loop()

    def needs_consumer(self, stream: str, durable: str) -> None:
        """Ready only once this durable consumer exists."""
        self._consumers.append((stream, durable))

    def needs(self, condition: Condition) -> None:
        """Ready only while `condition()` returns None (else it names what is missing)."""
        self._conditions.append(condition)

    def degraded_when(self, check: Callable[[], dict[str, Any] | None]) -> None:
        """Answer 503 with `check()`'s document (merged into the answer) while it is not None."""
        self._degraded.append(check)

    def render(self) -> bytes:
        """The exposition text of every included registry (a metric family once)."""
        registries = [self.registry, *(r for r in (s() for s in self._sources) if r is not None)]
        combined = CollectorRegistry()
        combined.register(Combined(*registries))
        return generate_latest(combined)

    async def missing(self) -> list[str]:
        """What this process lacks to be ready (empty: ready); runs on the process's loop."""
        from services.process import settings_topology  # process imports this module

        missing = [why for why in (c() for c in self._conditions) if why]
        bus = self._bus
        if bus is None or not bus.connected:
            return ["nats connection", *missing]
        topo = settings_topology(self.settings)
        streams = [s.name for s in topo.streams] + [f"KV_{b.name}" for b in topo.buckets]

        async def stream(name: str) -> str | None:
            try:
                return None if await bus.stream_exists(name) else f"stream {name}"
            except Exception:  # connection trouble while checking
                return f"stream {name}"

        async def consumer(stream: str, durable: str) -> str | None:
            try:
                found = await bus.backlog(stream, durable) is not None
            except Exception:
                found = False
            return None if found else f"consumer {stream}/{durable}"

        checks = [stream(n) for n in streams] + [consumer(s, d) for s, d in self._consumers]
        missing += [why for why in await asyncio.gather(*checks) if why]
        return missing

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """`/readyz`'s status and document; called from the server's thread."""
        loop = self._loop
        if loop is None or self._bus is None:
            missing = ["nats connection", *(w for w in (c() for c in self._conditions) if w)]
        else:
            try:
                future = asyncio.run_coroutine_threadsafe(self.missing(), loop)
            except RuntimeError:  # the loop closed: the process is stopping
                missing = ["event loop (stopping)"]
            else:
                try:
                    missing = future.result(CHECK_TIMEOUT_S)
                except FutureTimeout:
                    future.cancel()
                    missing = [f"event loop answering within {CHECK_TIMEOUT_S:g} s"]
                except Exception as exc:  # the check itself failed
                    missing = [f"readiness check ({type(exc).__name__}: {exc})"]
        if missing:
            return 503, {"status": "unavailable", "role": self.role, "missing": missing}
        for check in self._degraded:
            doc = check()
            if doc is not None:
                return 503, {"status": "degraded", "role": self.role, **doc}
        return 200, {"status": "ready", "role": self.role}

    # the server

    def serve(self) -> ThreadingHTTPServer:
        """Listen on the settings' metrics address, on a background thread; the server.
        A taken port is a `PortInUse` naming the setting that moves it."""
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise PortInUse(
                f"the metrics port {host}:{port} of this {self.role} is taken ({exc.strerror}): "
                "set DIM_METRICS_PORT to another port, or 0 for any free one"
            ) from exc
        server.daemon_threads = True
        self._server = server
        name = f"dim-{self.role.split()[0]}-http"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        log.info("/metrics, /healthz and /readyz on %s", self.base_url)
        return server

    @property
    def serving(self) -> bool:
        """Whether the server is up."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, for port 0)."""
        assert self._server is not None, "not serving"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Where to reach it: the listen address, or this host's name when it listens on every
        interface."""
        host = self.settings.metrics_host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, body, kind = 200, health.render(), CONTENT_TYPE
            elif path == "/healthz":
                doc = {"status": "ok", "role": health.role}
                status, body, kind = 200, json.dumps(doc).encode(), "application/json"
            elif path == "/readyz":
                status, doc = health.readiness()
                body, kind = json.dumps(doc).encode(), "application/json"
            else:
                status, body, kind = 404, b"not found: /metrics, /healthz, /readyz\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per probe or scrape

    return Handler
