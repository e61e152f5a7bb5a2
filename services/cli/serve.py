"""The long-running processes: `dim up` (the whole mesh here), and each service on its own:
`worker`, `orchestrator`, `projector`, `gateway`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli.common import settings_of

if TYPE_CHECKING:
    import asyncio

    from events.bus import Bus
    from services.cli.common import Subcommands


def cmd_up(args: argparse.Namespace) -> int:
    from events.errors import DimError
    from services.cpu_policy import use_batch_policy
    from services.process import run
    from services.up import up

    settings = settings_of(
        args,
        models=tuple(args.models.split(",")) if args.models else None,
        nats_port=args.nats_port,
        nats_listen=args.nats_listen,
        gateway_port=args.gateway_port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        sim_ttft_ms=args.sim_ttft_ms,
        sim_tokens_per_s=args.sim_tokens_per_s,
    )
    use_batch_policy(settings.sched_batch)  # and so the server and services it starts
    try:
        return run(up(settings, args.workers, every_model=not args.models))
    except DimError as exc:
        print(f"dim up: {exc}", file=sys.stderr)
        return 1


def cmd_worker(args: argparse.Namespace) -> int:
    from services.engines.factory import build_engine
    from services.health import Health
    from services.process import serve
    from services.worker.runner import Worker

    models = args.models or args.model
    settings = settings_of(
        args,
        node_id=args.node_id,
        models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        capacity=args.capacity,
        engine=args.engine,
        upstream_url=args.upstream,
        model_aliases=args.aliases,
        metrics_port=args.metrics_port,
        tenants=tuple(t.strip() for t in args.tenants.split(",") if t.strip())
        if args.tenants
        else None,
    )

    admission = None
    if args.join:
        from services.node_join import JoinBundle, approve_command, join_settings

        try:
            bundle = JoinBundle.read(args.join)
        except ValueError as exc:
            print(f"dim worker: {exc}", file=sys.stderr)
            return 2
        data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir
        settings, me = join_settings(
            settings, bundle, data_dir, keep_url=bool(args.nats_url or args.namespace)
        )
        admission = approve_command(settings.node_id, me.public_key, settings.models)
        print(
            f"dim worker: node {settings.node_id}, key {me.public_key} (its seed: {me.seed_file})",
            file=sys.stderr,
            flush=True,
        )

    role = f"worker {settings.node_id}"
    health = Health(settings, role)

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await Worker(bus, build_engine(settings), settings, health).run(stop)

    return serve(settings, role, body, awaiting_approval=admission, health=health)


def cmd_orchestrator(args: argparse.Namespace) -> int:
    from services.health import Health
    from services.metrics import OrchestratorMetrics
    from services.orchestrator.runner import Orchestrator
    from services.process import serve

    settings = settings_of(args, instance_id=args.instance_id, metrics_port=args.metrics_port)
    health = Health(settings, "orchestrator")

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        orchestrator = Orchestrator(bus, settings)
        health.include(OrchestratorMetrics(orchestrator).registry)
        for spec in (orchestrator.consumer(), orchestrator.dead_letters.consumer()):
            health.needs_consumer(spec.stream, spec.durable)
        await orchestrator.run(stop)

    return serve(settings, "orchestrator", body, health=health)


def cmd_projector(args: argparse.Namespace) -> int:
    import asyncio

    from services.batches.projection import BatchStatusProjector
    from services.health import Health
    from services.metrics import ProjectorMetrics
    from services.process import serve
    from services.projector import JobStatusProjector, UsageProjector

    settings = settings_of(args, instance_id=args.instance_id, metrics_port=args.metrics_port)
    health = Health(settings, "projector")

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        metrics = ProjectorMetrics()
        jobs = JobStatusProjector(bus, settings, metrics)
        usage = UsageProjector(bus, settings)
        batches = BatchStatusProjector(bus, settings)
        health.include(metrics.registry)
        health.degraded_when(metrics.degraded)
        for spec in (
            jobs.consumer(),
            usage.consumer(),
            batches.batches_consumer(),
            batches.lines_consumer(),
        ):
            health.needs_consumer(spec.stream, spec.durable)
        await asyncio.gather(jobs.run(stop), usage.run(stop), batches.run(stop))

    return serve(settings, "projector", body, health=health)


def cmd_batcher(args: argparse.Namespace) -> int:
    from gateway.batch_bodies import render
    from services.batches.runner import BatchRunner
    from services.process import serve

    settings = settings_of(args, instance_id=args.instance_id, metrics_port=args.metrics_port)

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        # the runner writes each line's answer as the endpoint would: the gateway's rendering
        await BatchRunner(bus, settings, render).run(stop)

    return serve(settings, "batcher", body)


def cmd_gateway(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from events.errors import DimError
    from gateway.app import bounded_http, create_app
    from services.cli.startup_failure import OneLineStartupFailure
    from services.cpu_policy import use_batch_policy
    from services.process import setup_logging, tune_gc
    from services.telemetry import setup_tracing

    settings = settings_of(args, gateway_host=args.host, gateway_port=args.port)
    use_batch_policy(settings.sched_batch)
    setup_logging(settings, "gateway")
    setup_tracing(settings, "gateway")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through dim's logging (text or JSON)
        access_log=False,  # dim's own (gateway/access_log.py): request id, key, no query
        lifespan="on",
        timeout_graceful_shutdown=10,
        # bounds of the HTTP server itself (docs/reliability.md): connections at once (503
        # beyond), a request's headers and body received in time, a WebSocket message no
        # larger than a request body, idle keep-alive 5 s, a WebSocket whose client stops
        # answering pings closed within 40 s
        http=bounded_http(settings.header_timeout_s, settings.body_timeout_s),
        limit_concurrency=settings.max_connections,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        ws_max_size=settings.max_body_bytes,
        timeout_keep_alive=5,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    if settings.log_level.upper() != "DEBUG":  # the traceback of a failed start, only in DEBUG
        logging.getLogger("uvicorn.error").addFilter(OneLineStartupFailure("the gateway"))
    server = uvicorn.Server(config)
    tune_gc()
    try:
        server.run()
    except DimError as exc:
        print(f"dim gateway: {exc}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


def _add_up(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "up",
        parents=[common],
        help="run the whole mesh here: nats-server, orchestrator, projector, batch runner, "
        "gateway, simulated workers (3)",
    )
    s.add_argument("--workers", type=int, default=3, help="simulated workers to start (default 3)")
    s.add_argument(
        "--models",
        help="models every simulated worker serves, comma-separated (default: sim-small on "
        "every worker, and sim-large too on every third)",
    )
    s.add_argument(
        "--nats-port", type=int, help="client port of the embedded nats-server (default 4222)"
    )
    s.add_argument(
        "--nats-listen",
        help="address nats-server listens on (default 127.0.0.1; 0.0.0.0 for remote workers)",
    )
    s.add_argument(
        "--data-dir",
        help="where nats-server keeps its store, its TLS files and the identities (default .dim)",
    )
    s.add_argument("--gateway-port", type=int, help="port of the HTTP gateway (default 8000)")
    s.add_argument("--sim-ttft-ms", type=float, help="simulated time to first token")
    s.add_argument("--sim-tokens-per-s", type=float, help="simulated decode speed (0: no delay)")
    s.set_defaults(fn=cmd_up)


def _add_worker(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("worker", parents=[common], help="run a worker node")
    s.add_argument("--node-id", help="this node's id (env DIM_NODE_ID; default: host name)")
    s.add_argument("--models", help="models to serve, comma-separated (env DIM_MODELS)")
    s.add_argument("--model", help="the model to serve (vllm: a Hugging Face id or a path)")
    s.add_argument(
        "--engine",
        choices=("simulated", "openai", "vllm"),
        help="inference engine (env DIM_ENGINE; default simulated); see docs/engines.md",
    )
    s.add_argument(
        "--upstream",
        help="openai engine: base URL of an OpenAI-compatible server, e.g. "
        "http://127.0.0.1:8001/v1 (env DIM_UPSTREAM_URL; its key in DIM_UPSTREAM_API_KEY)",
    )
    s.add_argument(
        "--aliases", help="more names for served models: alias=model,... (env DIM_MODEL_ALIASES)"
    )
    s.add_argument(
        "--metrics-port",
        type=int,
        help="port of its /metrics, /healthz and /readyz (env DIM_METRICS_PORT; default 9400; "
        "0: any free port)",
    )
    s.add_argument("--capacity", type=int, help="requests in flight at once (env DIM_CAPACITY)")
    s.add_argument(
        "--tenants",
        help="serve only these tenants, comma-separated (env DIM_TENANTS; default: every tenant)",
    )
    s.add_argument(
        "--join",
        metavar="BUNDLE",
        help="join the mesh of a join bundle (a file or its dimjoin1: token, from `dim nodes "
        "bundle`): this node's key is made in --data-dir, the command that approves it is "
        "printed, and the worker waits until an admin runs it",
    )
    s.add_argument(
        "--data-dir", help="where a joining node keeps its key and the CA (env DIM_DATA_DIR; .dim)"
    )
    s.set_defaults(fn=cmd_worker)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`up`, `worker`, `orchestrator`, `projector`, `batcher`, `gateway`."""
    _add_up(sub, common)
    _add_worker(sub, common)
    for name, fn, what in (
        ("orchestrator", cmd_orchestrator, "run an orchestrator instance"),
        ("projector", cmd_projector, "run a job-status projector instance"),
        ("batcher", cmd_batcher, "run a batch runner (the Batch API's lines, as jobs)"),
    ):
        s = sub.add_parser(name, parents=[common], help=what)
        s.add_argument(
            "--instance-id", help="stable id of this instance (env DIM_INSTANCE_ID; default 0)"
        )
        s.add_argument(
            "--metrics-port",
            type=int,
            help="port of its /metrics, /healthz and /readyz (env DIM_METRICS_PORT; default "
            "9400; 0: any free port)",
        )
        s.set_defaults(fn=fn)

    s = sub.add_parser(
        "gateway", parents=[common], help="run the HTTP gateway (OpenAI-compatible API)"
    )
    s.add_argument("--host", help="address to listen on (env DIM_GATEWAY_HOST; default 127.0.0.1)")
    s.add_argument(
        "--port", type=int, help="port to listen on (env DIM_GATEWAY_PORT; default 8000)"
    )
    s.set_defaults(fn=cmd_gateway)
