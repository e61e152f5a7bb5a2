"""Running one long-lived service in a process: logging, signals, connect, provision, serve."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from events.bus import Bus
from events.connection import redact_url
from events.errors import CredentialsRefused, while_unavailable
from events.topology import Topology, topology
from services import logs
from services.cpu_policy import use_batch_policy
from services.health import Health
from services.settings import Settings
from services.telemetry import setup_tracing

T = TypeVar("T")

log = logging.getLogger("dim")


def setup_logging(settings: Settings, role: str) -> None:
    """Log lines on stderr as ``time level role: message``, or one JSON object per line
    (``DIM_LOG_FORMAT=json``; services/logs.py)."""
    logs.configure(settings.log_level, settings.log_format, role)
    for noisy in ("nats", "httpx", "httpcore"):  # httpx logs every upstream request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # nats-py's protocol answers a TLS connection's end as for plain TCP; asyncio says so on
    # every close of a TLS connection to NATS, which means nothing here
    logging.getLogger("asyncio").addFilter(_not_eof_received)


def _not_eof_received(record: logging.LogRecord) -> bool:
    return "eof_received() has no effect when using ssl" not in record.getMessage()


async def connect(settings: Settings, name: str) -> Bus:
    """Connect to the settings' NATS as `name`, with the settings' credentials and TLS."""
    return await Bus.connect(
        settings.nats_url,
        settings.names,
        name=name,
        auth=settings.nats_auth,
        inbox_prefix=settings.nats_inbox_prefix,
        connect_timeout_s=settings.connect_timeout_s,
        publish_timeout_s=settings.publish_timeout_s,
        publish_retries=settings.publish_retries,
        inline_max=settings.payload_inline_max_bytes,
    )


async def connect_when_admitted(
    settings: Settings, name: str, approve: str, stop: asyncio.Event, every_s: float = 2.0
) -> Bus | None:
    """Connect as `connect` does; while the server refuses these credentials (not approved
    yet), say once what admits them (`approve`), and try again every `every_s` seconds until it
    does, or None at `stop`."""
    started = time.monotonic()
    said_at = 0.0
    while True:
        try:
            bus = await connect(settings, name)
        except CredentialsRefused:
            waited = time.monotonic() - started
            if not said_at:
                log.warning(
                    "the server does not admit this node yet; on the server's machine an admin "
                    "runs:\n\n    %s\n\nwaiting for it (Ctrl-C stops)",
                    approve,
                )
                said_at = waited or 1e-9
            elif waited - said_at >= 60:
                log.info("still waiting for approval (%.0f s)", waited)
                said_at = waited
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return None
            continue
        if said_at:
            log.info("admitted: connected to %s", redact_url(settings.nats_url))
        return bus


def settings_topology(settings: Settings) -> Topology:
    """The streams and buckets these settings ask for."""
    return topology(
        settings.names,
        replicas=settings.replicas,
        dedupe_window_s=settings.dedupe_window_s,
        tokens_max_age_s=settings.tokens_max_age_s,
        node_ttl_s=settings.node_ttl_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        session_ttl_s=settings.refresh_ttl_s,
        jobs_max_age_s=settings.jobs_retention_s,
        views_ttl_s=settings.views_ttl_s,
        payloads_ttl_s=settings.payloads_ttl_s,
    )


async def ensure_topology(bus: Bus, settings: Settings) -> None:
    """Provision streams and buckets (idempotent); warn about what differs from the spec."""
    report = await bus.provision(settings_topology(settings))
    for created in report.created:
        log.info("created %s", created)
    for diff in report.differences:
        log.warning("%s (left as it is; change it deliberately if the spec is right)", diff)


def tune_gc() -> None:
    """Collect cycles less often: a dim process allocates many short-lived objects per message
    (events, models, futures) that reference counting frees, and Python's default — a young
    collection every 700 allocations, rescanning what start-up built — spends CPU on scans that
    find little to collect (measured in docs/benchmarks.md). Start-up objects are frozen out of
    the scans; young collections come every 50,000 allocations."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on uvloop where it is installed (it is a dependency
    everywhere but Windows), else on asyncio's own loop: uvloop costs nats-py and the HTTP
    server less CPU per message (measured in docs/benchmarks.md)."""
    tune_gc()
    logging.getLogger("asyncio").addFilter(_not_eof_received)  # the CLI's commands too
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def serve(
    settings: Settings,
    role: str,
    body: Callable[[Bus, asyncio.Event], Awaitable[None]],
    *,
    awaiting_approval: str | None = None,
    health: Health | None = None,
) -> int:
    """Run `body` until SIGINT/SIGTERM, then let it finish; returns the exit code. With
    `awaiting_approval` (the command that admits this process), a server that refuses its
    credentials is asked again until it admits them. `/metrics`, `/healthz` and `/readyz`
    (`health`, which `body` fills with its metrics and what it needs to be ready) are served
    from before the connection to NATS until the end."""
    use_batch_policy(settings.sched_batch)
    setup_logging(settings, role)
    setup_tracing(settings, role.split()[0])
    probes = health or Health(settings, role)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        probes.serve()
        try:
            if awaiting_approval is None:
                bus = await connect(settings, f"dim-{role}")
            else:
                admitted = await connect_when_admitted(
                    settings, f"dim-{role}", awaiting_approval, stop
                )
                if admitted is None:
                    return 0
                bus = admitted
            probes.attach(bus)
            try:
                await while_unavailable(
                    lambda: ensure_topology(bus, settings), stop, "provision streams and buckets"
                )
                await body(bus, stop)
            finally:
                await bus.close()
        finally:
            probes.close()
        return 0

    try:
        return run(main())
    except Exception as exc:
        log.error("%s failed: %s", role, exc, exc_info=settings.log_level.upper() == "DEBUG")
        return 1
