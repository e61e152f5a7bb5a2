"""`dim up`: the whole mesh on one machine — embedded nats-server, orchestrator, projector, batch
runner, gateway, workers.

Each service runs as its own process (as in production), started from this one; their log
lines come through here prefixed with their name. Ctrl-C stops them in order: workers drain
first, then the other services, then nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from events.bus import Bus
from events.errors import NatsServerError
from services.local_bus import local_bus, worker_identity
from services.nats_server import EmbeddedNats, port_open
from services.process import connect, ensure_topology
from services.registry.enrolled import enroll
from services.registry.live import LiveNodes
from services.settings import Settings

_RESTARTS_PER_MINUTE = 5


def say(line: str) -> None:
    """A start-up or shutdown line of `dim up` itself."""
    print(f"dim up | {line}", flush=True)


@dataclass
class Child:
    """One supervised service process."""

    name: str
    args: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    starts: list[float] = field(default_factory=list)

    async def start(self) -> None:
        self.starts = [t for t in self.starts if time.monotonic() - t < 60] + [time.monotonic()]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            *self.args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only `dim up`, which stops children in order
        )

    async def pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            print(f"{self.name:>13} | {raw.decode(errors='replace').rstrip()}", flush=True)

    async def stop(self, timeout_s: float) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child: this process's, with every setting as ``DIM_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIM_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def wait_for_workers(bus: Bus, settings: Settings, count: int, timeout_s: float) -> int:
    """Wait until `count` workers are live, saying each one that becomes live; returns how many
    are."""
    nodes = LiveNodes(bus, settings.node_ttl_s)
    await nodes.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            live = {n.node_id: n for n in nodes.live()}
            for node_id in sorted(live.keys() - seen):
                seen.add(node_id)
                served = ", ".join(live[node_id].models)
                say(f"worker {node_id} live, serving {served} ({len(seen)}/{count})")
            if len(live) >= count or time.monotonic() >= deadline:
                return len(live)
            await asyncio.sleep(0.1)
    finally:
        await nodes.stop()


SECOND_MODEL = "sim-large"


def worker_models(settings: Settings, i: int, *, every_model: bool) -> tuple[str, ...]:
    """The models simulated worker `i` (from 1) serves: the settings' models; by default every
    third worker also serves a second model, so comparative and chained jobs have two to use."""
    if every_model and i % 3 == 0 and SECOND_MODEL not in settings.models:
        return (*settings.models, SECOND_MODEL)
    return settings.models


async def up(settings: Settings, workers: int, *, every_model: bool = False) -> int:
    """Bring the mesh up and keep it up until Ctrl-C or SIGTERM."""
    began = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    if port_open(settings.gateway_host, settings.gateway_port):
        raise NatsServerError(
            f"port {settings.gateway_port} on {settings.gateway_host} is already in use: is another "
            "`dim up` running? Pick another with --gateway-port"
        )
    if settings.jwt_algorithm == "HS256" and not settings.jwt_secret:
        settings = settings.model_copy(update={"jwt_secret": _local_secret(settings.data_dir)})
    nodes = {
        f"sim-{i}": worker_models(settings, i, every_model=every_model)
        for i in range(1, workers + 1)
    }
    local = None
    if settings.nats_secure:
        local = local_bus(settings, nodes, _hosts(settings.nats_listen))
    server = EmbeddedNats(
        settings.data_dir / "nats",
        port=settings.nats_port,
        host=settings.nats_listen,
        gomaxprocs=settings.nats_gomaxprocs,
        sched_batch=settings.sched_batch,
        extra=local.server_config() if local else "",
    )
    say(f"starting nats-server {server.version()} (store: {server.data_dir / 'jetstream'})")
    url = await asyncio.to_thread(server.start)
    settings = settings.model_copy(update={"nats_url": url})
    if local:
        say(
            f"nats-server listening on {url}: TLS, one identity per role ({local.tls.ca_cert.parent.parent})"
        )
    else:
        say(f"nats-server listening on {url}, open to every client (DIM_NATS_SECURE=false)")

    def as_(identity: str, base: Settings = settings) -> Settings:
        return local.settings_for(base, identity) if local else base

    children: list[Child] = []
    pumps: list[asyncio.Task[None]] = []
    try:
        bus = await connect(as_("admin"), "dim-up")
        await ensure_topology(bus, settings)
        say(f"streams and buckets ready in namespace {settings.namespace!r}")
        if local:
            for node, key in local.worker_keys(nodes).items():
                await enroll(bus, node, key, by="dim up")
            say(f"enrolled the keys of {len(nodes)} workers: their node records are signed")
        ports = metrics_ports(settings, ["orchestrator", "projector", "batcher", *nodes])
        for role in ("orchestrator", "projector", "batcher", "gateway"):
            port = {"DIM_METRICS_PORT": str(ports[role])} if role in ports else {}
            children.append(Child(role, [role], child_env(as_(role), **port)))
        no_secrets = settings.model_copy(
            update={"jwt_secret": "", "jwt_private_key": "", "jwt_previous_secrets": ()}
        )  # a worker signs no tokens
        for node, served in nodes.items():
            env = child_env(
                as_(worker_identity(node), no_secrets),
                DIM_NODE_ID=node,
                DIM_MODELS=",".join(served),
                DIM_METRICS_PORT=str(ports[node]),
            )
            children.append(Child(node, ["worker"], env))
        say(metrics_line(settings, ports))
        for child in children:
            await child.start()
            pumps.append(asyncio.create_task(child.pump()))
        say(f"started {len(children)} processes: {', '.join(c.name for c in children)}")
        live = await wait_for_workers(bus, settings, workers, timeout_s=30)
        deadline = time.monotonic() + 30
        while (
            not port_open(settings.gateway_host, settings.gateway_port)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.1)
        if port_open(settings.gateway_host, settings.gateway_port):
            say("gateway answering")
        else:
            say("the gateway does not answer yet (its lines above say why)")
        await bus.close()
        models = ", ".join(
            dict.fromkeys(
                m
                for i in range(1, workers + 1)
                for m in worker_models(settings, i, every_model=every_model)
            )
        )
        say(
            f"ready: {live}/{workers} simulated workers serving {models}; orchestrator, projector "
            f"and batch runner running ({time.monotonic() - began:.1f} s)"
        )
        gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
        say(f"gateway on {gateway}  (OpenAI-compatible: {gateway}/v1, API docs: {gateway}/openapi)")
        say(f"dashboard: {gateway}/ui  (sign in with an API key: dim keys create --name you)")
        say(f'try:  dim submit "hello" --model {settings.models[0]}   (Ctrl-C stops everything)')
        await supervise(children, pumps, stop)
        say("stopping: draining workers")
        workers_ = [c for c in children if c.name.startswith("sim-")]
        await asyncio.gather(*(c.stop(settings.drain_timeout_s) for c in workers_))
        say("stopping gateway, orchestrator, projector and batch runner")
        await asyncio.gather(*(c.stop(10) for c in children if c not in workers_))
        return 0
    finally:
        for child in children:
            await child.stop(2)
        for pump in pumps:
            pump.cancel()
        await asyncio.to_thread(server.stop)
        say("nats-server stopped; bye")


def metrics_ports(settings: Settings, names: list[str]) -> dict[str, int]:
    """Each process's /metrics, /healthz and /readyz port: DIM_METRICS_PORT and the ones after
    it, in order (all 0, any free port, when it is 0). A port taken is an error naming it."""
    base = settings.metrics_port
    ports = {name: base + i if base else 0 for i, name in enumerate(names)}
    if base and max(ports.values()) > 65535:
        raise NatsServerError(f"DIM_METRICS_PORT={base} leaves no room for {len(names)} ports")
    taken = [p for p in ports.values() if p and port_open(settings.metrics_host, p)]
    if taken:
        raise NatsServerError(
            f"metrics port(s) {', '.join(map(str, taken))} on {settings.metrics_host} already in "
            "use: is another `dim up` running? Set DIM_METRICS_PORT to another base port, or 0 "
            "for any free ports"
        )
    return ports


def metrics_line(settings: Settings, ports: dict[str, int]) -> str:
    """Where the processes serve /metrics, /healthz and /readyz, for `dim up` to print."""
    host = settings.metrics_host
    if not settings.metrics_port:
        return f"/metrics, /healthz, /readyz of each process on {host}, any free port (DIM_METRICS_PORT=0)"
    where = ", ".join(f"{name} :{port}" for name, port in ports.items())
    return f"/metrics, /healthz, /readyz on {host}: {where} (gateway: on its own port)"


def _hosts(listen: str) -> tuple[str, ...]:
    """Names the server certificate must carry besides loopback: the listen address, and this
    host's name when it listens on every interface."""
    if listen in ("0.0.0.0", "::", ""):
        return (socket.gethostname(),)
    return (listen,)


def _local_secret(data_dir: Path) -> str:
    """This machine's token-signing secret, made once and kept beside the store (mode 600)."""
    path = data_dir / "jwt_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


async def supervise(
    children: list[Child], pumps: list[asyncio.Task[None]], stop: asyncio.Event
) -> None:
    """Restart a child that exits on its own (at most a few times a minute) until `stop`."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        if stop.is_set():
            return
        for child in children:
            if child.proc is None or child.proc.returncode is None:
                continue
            code = child.proc.returncode
            if len(child.starts) >= _RESTARTS_PER_MINUTE:
                say(
                    f"{child.name} exited with code {code} {len(child.starts)} times in a minute; not restarting it"
                )
                child.proc = None
                continue
            say(f"{child.name} exited with code {code}; restarting it")
            await child.start()
            pumps.append(asyncio.create_task(child.pump()))
