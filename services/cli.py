"""The `dim` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from events.bus import Bus
from events.errors import DimError
from events.inference import Prompt, SamplingParams
from events.jobs import JobCancelled, JobCompleted, JobFailed
from events.work import TokensProduced
from services.process import run
from services.settings import Settings


def _settings(args: argparse.Namespace, **more: Any) -> Settings:
    update: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    for flag, field in (("nats_url", "nats_url"), ("namespace", "namespace")):
        value = getattr(args, flag, None)
        if value is not None:
            update[field] = value
    base = Settings()
    return Settings(**{**base.model_dump(), **update}) if update else base


def cmd_up(args: argparse.Namespace) -> int:
    from services.cpu_policy import use_batch_policy
    from services.up import up

    settings = _settings(
        args,
        models=tuple(args.models.split(",")) if args.models else None,
        nats_port=args.nats_port,
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
    from services.process import serve
    from services.worker.runner import Worker

    models = args.models or args.model
    settings = _settings(
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

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await Worker(bus, build_engine(settings), settings).run(stop)

    return serve(settings, f"worker {settings.node_id}", body)


def cmd_orchestrator(args: argparse.Namespace) -> int:
    from services.orchestrator.runner import Orchestrator
    from services.process import serve

    settings = _settings(args, instance_id=args.instance_id)

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await Orchestrator(bus, settings).run(stop)

    return serve(settings, "orchestrator", body)


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from services.cpu_policy import use_batch_policy
    from services.process import setup_logging, tune_gc
    from services.telemetry import setup_tracing

    settings = _settings(args, gateway_host=args.host, gateway_port=args.port)
    use_batch_policy(settings.sched_batch)
    setup_logging(settings, "gateway")
    setup_tracing(settings, "gateway")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    tune_gc()
    try:
        server.run()
    except DimError as exc:
        print(f"dim gateway: {exc}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


def cmd_keys_create(args: argparse.Namespace) -> int:
    from gateway.keys import create_key
    from services.process import ensure_topology

    settings = _settings(args)

    async def go(bus: Bus) -> int:
        await ensure_topology(bus, settings)
        record, key = await create_key(
            bus,
            principal_id=args.principal,
            tenant=args.tenant,
            roles=(args.role,),
            name=args.name or "",
            actor="cli",
        )
        print(key)
        print(
            f"key {record.key_id} for {record.principal_id} (tenant {record.tenant}, {args.role}); "
            "it is shown only now: keep it somewhere safe",
            file=sys.stderr,
        )
        return 0

    return _run(args, go)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from events.watched import WatchedBucket
    from gateway.keys import KeyRecord
    from services.render import table

    async def go(bus: Bus) -> int:
        ring = WatchedBucket(bus, bus.names.bucket("keys"), KeyRecord)
        await ring.start()
        await ring.stop()
        rows = [
            [
                k.key_id,
                k.principal_id,
                k.tenant,
                ",".join(k.roles),
                k.name,
                k.created_at.isoformat(timespec="seconds"),
            ]
            for k in sorted(ring.items.values(), key=lambda k: k.key_id)
        ]
        print(table(["KEY ID", "PRINCIPAL", "TENANT", "ROLES", "NAME", "CREATED"], rows))
        return 0

    return _run(args, go)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from nats.js.errors import KeyNotFoundError

    from gateway.keys import KeyRecord, revoke_key

    async def go(bus: Bus) -> int:
        kv = await bus.js.key_value(bus.names.bucket("keys"))
        try:
            entry = await kv.get(args.key_id)
        except KeyNotFoundError:
            print(f"dim: no live key {args.key_id!r}", file=sys.stderr)
            return 1
        await revoke_key(bus, KeyRecord.model_validate_json(entry.value or b""), by="cli")
        print(f"key {args.key_id} revoked")
        return 0

    return _run(args, go)


def cmd_admin_create(args: argparse.Namespace) -> int:
    import getpass

    from gateway import accounts
    from gateway.errors import ApiError
    from services.process import ensure_topology

    settings = _settings(args)
    password = args.password or getpass.getpass(f"password for {args.email}: ")

    async def go(bus: Bus) -> int:
        await ensure_topology(bus, settings)
        try:
            record = await accounts.register(
                bus,
                email=args.email,
                password=password,
                tenant=args.tenant,
                roles=("admin",),
                by="cli",
            )
        except ApiError as exc:
            print(f"dim: {exc.message}", file=sys.stderr)
            return 1
        print(f"admin {record.email} ({record.principal_id}) created in tenant {record.tenant}")
        return 0

    return _run(args, go)


def cmd_projector(args: argparse.Namespace) -> int:
    from services.process import serve
    from services.projector import JobStatusProjector, UsageProjector

    settings = _settings(args, instance_id=args.instance_id)

    async def body(bus: Bus, stop: asyncio.Event) -> None:
        await asyncio.gather(
            JobStatusProjector(bus, settings).run(stop), UsageProjector(bus, settings).run(stop)
        )

    return serve(settings, "projector", body)


async def _with_bus(settings: Settings, fn: Any) -> int:
    from services.process import connect

    bus = await connect(settings, "dim-cli")
    try:
        return int(await fn(bus))
    finally:
        await bus.close()


def _run(args: argparse.Namespace, fn: Any, **more: Any) -> int:
    try:
        return run(_with_bus(_settings(args, **more), fn))
    except DimError as exc:
        print(f"dim: {exc}", file=sys.stderr)
        return 1


def cmd_provision(args: argparse.Namespace) -> int:
    from services.process import ensure_topology, setup_logging

    settings = _settings(args)
    setup_logging(settings, "provision")

    async def go(bus: Bus) -> int:
        await ensure_topology(bus, settings)
        print(f"namespace {settings.namespace!r} is provisioned")
        return 0

    return _run(args, go)


def cmd_submit(args: argparse.Namespace) -> int:
    from events.job_log import JobFollower, submit
    from events.text import TextAssembler

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop=tuple(args.stop or ()),
        seed=args.seed,
    )

    max_attempts = _settings(args).max_attempts

    async def go(bus: Bus) -> int:
        job = await submit(
            bus,
            model=args.model,
            prompt=Prompt(text=args.prompt),
            params=params,
            owner=args.owner,
            node_id=args.node,
            max_attempts=max_attempts,
        )
        if not args.json:
            print(f"job {job.job_id} submitted", file=sys.stderr)
        text = TextAssembler()
        last = None
        async with JobFollower(bus, job.job_id, replay=True) as events:
            async for envelope in events:
                data = envelope.data
                if isinstance(data, TokensProduced):
                    new = text.add(data.offset, data.text)
                    if new and not args.json:
                        sys.stdout.write(new)
                        sys.stdout.flush()
                elif isinstance(data, (JobCompleted, JobFailed, JobCancelled)):
                    last = data
        if args.json:
            print(json.dumps(last.model_dump(mode="json") if last else None))
        elif isinstance(last, JobCompleted):
            if last.output.startswith(text.text):
                sys.stdout.write(last.output[len(text.text) :])
            else:
                print("\n[the answer was regenerated after a retry; final output:]\n" + last.output)
            u = last.usage
            print(
                f"\n\ncompleted ({last.finish_reason})  prompt {u.prompt_tokens} + completion "
                f"{u.completion_tokens} = {u.total_tokens} tokens   job {job.job_id}",
                file=sys.stderr,
            )
        elif isinstance(last, JobFailed):
            print(f"\nfailed ({last.code}): {last.reason}", file=sys.stderr)
        elif isinstance(last, JobCancelled):
            print(f"\ncancelled: {last.reason}", file=sys.stderr)
        return 0 if isinstance(last, JobCompleted) else 1

    return _run(args, go)


def cmd_jobs(args: argparse.Namespace) -> int:
    from projections.job_views import newest_views
    from services.render import jobs_table

    async def go(bus: Bus) -> int:
        views = await newest_views(
            bus, lambda v: args.status is None or v.status == args.status, limit=args.limit
        )
        if args.json:
            print(json.dumps([v.model_dump(mode="json") for v in views], indent=2))
        else:
            print(jobs_table(views))
        return 0

    return _run(args, go)


def cmd_job(args: argparse.Namespace) -> int:
    from events.job_log import history
    from projections.job_views import read_view
    from services.render import job_detail

    async def go(bus: Bus) -> int:
        view = await read_view(bus, args.job_id)
        events = await history(bus, args.job_id)
        if view is None and not events:
            print(f"dim: no job {args.job_id!r}", file=sys.stderr)
            return 1
        if args.json:
            doc = {
                "job": view.model_dump(mode="json") if view else None,
                "events": [
                    {
                        "seq": s,
                        "id": e.id,
                        "type": e.type,
                        "at": e.at.isoformat(),
                        "actor": e.actor,
                        "data": e.data.model_dump(mode="json"),
                    }
                    for s, e in events
                ],
            }
            print(json.dumps(doc, indent=2))
        else:
            print(job_detail(view, events))
        return 0

    return _run(args, go)


def cmd_nodes(args: argparse.Namespace) -> int:
    from services.registry.live import LiveNodes
    from services.render import nodes_table

    settings = _settings(args)

    async def go(bus: Bus) -> int:
        nodes = LiveNodes(bus, settings.node_ttl_s)
        await nodes.start()
        try:
            for shown in range(args.watch_count if args.watch else 1):
                if shown:
                    await asyncio.sleep(args.watch)
                    print("\x1b[2J\x1b[H" if sys.stdout.isatty() else "", end="")
                records = list(nodes.nodes.values())
                if args.json:
                    print(json.dumps([n.model_dump(mode="json") for n in records], indent=2))
                else:
                    print(nodes_table(records, settings.node_ttl_s), flush=True)
        finally:
            await nodes.stop()
        return 0

    return _run(args, go)


def cmd_audit(args: argparse.Namespace) -> int:
    from services.audit import audit, collect, render

    listed = Path(args.accepted).read_text().split() if args.accepted else None

    async def go(bus: Bus) -> int:
        histories, usage = await collect(bus)
        report = audit(histories, listed if listed is not None else list(histories), usage)
        print(render(report))
        return 0 if report.ok else 1

    return _run(args, go)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from services.projector import rebuild

    async def go(bus: Bus) -> int:
        report = await rebuild(bus, check_only=args.check)
        print(
            f"replayed {report.events} events into {report.jobs} job views: "
            f"{report.unchanged} identical, {report.written} written, {report.deleted} deleted, "
            f"{report.skipped_newer} already newer"
        )
        if args.check and report.differences:
            print(
                f"{len(report.differences)} views differ from the log: {', '.join(report.differences[:20])}"
            )
            return 1
        return 0

    return _run(args, go)


def cmd_settings(args: argparse.Namespace) -> int:
    from services.render import table

    current = Settings()
    rows = []
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        rows.append([f"DIM_{name.upper()}", shown, field.description or ""])
    print(table(["VARIABLE", "VALUE", "MEANING"], rows))
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of `dim`."""
    p = argparse.ArgumentParser(
        prog="dim", description="dim: a distributed LLM inference mesh on NATS JetStream"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", help="NATS server URL (env DIM_NATS_URL)")
    common.add_argument(
        "--namespace", help="namespace of subjects, streams and buckets (env DIM_NAMESPACE)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "up",
        parents=[common],
        help="run the whole mesh here: nats-server, orchestrator, projector, workers",
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
    s.add_argument("--data-dir", help="where nats-server keeps its store (default .dim)")
    s.add_argument("--gateway-port", type=int, help="port of the HTTP gateway (default 8000)")
    s.add_argument("--sim-ttft-ms", type=float, help="simulated time to first token")
    s.add_argument("--sim-tokens-per-s", type=float, help="simulated decode speed (0: no delay)")
    s.set_defaults(fn=cmd_up)

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
        "--metrics-port", type=int, help="Prometheus /metrics port (env DIM_METRICS_PORT; 0: any)"
    )
    s.add_argument("--capacity", type=int, help="requests in flight at once (env DIM_CAPACITY)")
    s.add_argument(
        "--tenants",
        help="serve only these tenants, comma-separated (env DIM_TENANTS; default: every tenant)",
    )
    s.set_defaults(fn=cmd_worker)

    for name, fn, what in (
        ("orchestrator", cmd_orchestrator, "run an orchestrator instance"),
        ("projector", cmd_projector, "run a job-status projector instance"),
    ):
        s = sub.add_parser(name, parents=[common], help=what)
        s.add_argument(
            "--instance-id", help="stable id of this instance (env DIM_INSTANCE_ID; default 0)"
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

    s = sub.add_parser("keys", parents=[common], help="manage API keys")
    ksub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = ksub.add_parser("create", parents=[common], help="issue a key (printed once)")
    k.add_argument("--principal", default="user", help="who the key acts as (default user)")
    k.add_argument("--tenant", default="default", help="the tenant (default default)")
    k.add_argument("--role", choices=["admin", "member"], default="member")
    k.add_argument("--name", help="a label for the key")
    k.set_defaults(fn=cmd_keys_create)
    k = ksub.add_parser("list", parents=[common], help="list live keys (never their secrets)")
    k.set_defaults(fn=cmd_keys_list)
    k = ksub.add_parser("revoke", parents=[common], help="revoke a key on every gateway at once")
    k.add_argument("key_id")
    k.set_defaults(fn=cmd_keys_revoke)

    s = sub.add_parser("admin", parents=[common], help="manage admin accounts")
    asub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser(
        "create", parents=[common], help="create an admin account (the first one, say)"
    )
    a.add_argument("--email", required=True)
    a.add_argument("--password", help="asked for when not given")
    a.add_argument("--tenant", default="default")
    a.set_defaults(fn=cmd_admin_create)

    s = sub.add_parser("settings", help="list every DIM_* setting with its current value")
    s.set_defaults(fn=cmd_settings)

    s = sub.add_parser(
        "provision", parents=[common], help="create missing streams and buckets; report differences"
    )
    s.set_defaults(fn=cmd_provision)

    s = sub.add_parser(
        "submit",
        parents=[common],
        help="submit a prompt, stream its tokens, print status and usage",
    )
    s.add_argument("prompt")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int)
    s.add_argument("--stop", action="append", help="stop string (repeatable)")
    s.add_argument("--node", help="pin the job to this node id")
    s.add_argument("--owner", default="cli")
    s.add_argument("--json", action="store_true", help="print only the final event as JSON")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("jobs", parents=[common], help="list recent jobs")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--status", choices=["queued", "running", "completed", "failed", "cancelled"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_jobs)

    s = sub.add_parser("job", parents=[common], help="show a job and its event history")
    s.add_argument("job_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_job)

    s = sub.add_parser("nodes", parents=[common], help="list worker nodes")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--watch", type=float, metavar="SECONDS", help="redraw every SECONDS (the load moving)"
    )
    s.add_argument(
        "--watch-count", type=int, default=3600, help="redraws before --watch stops (default 3600)"
    )
    s.set_defaults(fn=cmd_nodes)

    s = sub.add_parser(
        "audit",
        parents=[common],
        help="check every job ended once, with usage counted once (exit 1 if not)",
    )
    s.add_argument(
        "--accepted", help="file of job ids a client had accepted, one per line (default: all)"
    )
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser("projections", parents=[common], help="manage read models")
    psub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = psub.add_parser(
        "rebuild", parents=[common], help="replay JOBS from the start into the jobs bucket"
    )
    r.add_argument("--check", action="store_true", help="only compare; exit 1 if any view differs")
    r.set_defaults(fn=cmd_rebuild)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dim`."""
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
