"""`dim nodes`: the live worker nodes, once or redrawn (``--watch``); and the admin's steps for
nodes on other hosts: `bundle` (what `dim worker --join` needs), `approve`, `revoke`,
`approvals` (services/registry/admission.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, settings_of, with_bus

if TYPE_CHECKING:
    from events.bus import Bus
    from services.cli.common import Body, Subcommands
    from services.nats_dir import NatsDir
    from services.registry.admission import Applied


def cmd_nodes(args: argparse.Namespace) -> int:
    import asyncio

    from services.registry.enrolled import enrolled_keys
    from services.registry.live import LiveNodes
    from services.render import nodes_table

    settings = settings_of(args)

    async def go(bus: Bus) -> int:
        nodes, enrolled = LiveNodes(bus, settings.node_ttl_s), enrolled_keys(bus)
        await nodes.start()
        await enrolled.start()
        try:
            for shown in range(args.watch_count if args.watch else 1):
                if shown:
                    await asyncio.sleep(args.watch)
                    print("\x1b[2J\x1b[H" if sys.stdout.isatty() else "", end="")
                records = list(nodes.nodes.values())
                keys = enrolled.items
                verified = {n.node_id for n in records if nodes.verified(n.node_id, keys)}
                if args.json:
                    out = [
                        n.model_dump(mode="json") | {"verified": n.node_id in verified}
                        for n in records
                    ]
                    print_json(out)
                else:
                    print(nodes_table(records, settings.node_ttl_s, verified), flush=True)
        finally:
            await enrolled.stop()
            await nodes.stop()
        return 0

    return with_bus(args, go)


def _dirs(args: argparse.Namespace) -> list[NatsDir]:
    """The security directories to change: ``--nats-dir`` (each server's), else the one of the
    `dim up` in the data directory."""
    from services.local_bus import nats_dir
    from services.nats_dir import NatsDir

    if args.nats_dir:
        return [NatsDir(Path(d)) for d in args.nats_dir]
    return [nats_dir(settings_of(args, data_dir=Path(args.data_dir) if args.data_dir else None))]


def _said(what: str, applied: Applied) -> None:
    for d in applied.reloaded:
        print(f"{what}: nats-server of {d.root} reloaded", file=sys.stderr)
    for d in applied.not_running:
        print(
            f"{what}: no nats-server of {d.root} is running (no pid file or process); it applies "
            "when one starts with that directory, or reload it yourself (nats-server --signal "
            "reload)",
            file=sys.stderr,
        )


def cmd_approve(args: argparse.Namespace) -> int:
    from services.registry.admission import approve_node

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    dirs = _dirs(args)

    async def go(bus: Bus) -> int:
        applied = await approve_node(bus, dirs, args.node_id, args.key, models, by=args.by)
        print(
            f"approved node {args.node_id} (key {args.key}) for {', '.join(models)}: enrolled, "
            "its records and reports are believed",
            file=sys.stderr,
        )
        _said("approved", applied)
        return 0

    return _admin(args, go)


def cmd_revoke(args: argparse.Namespace) -> int:
    from services.registry.admission import revoke_node

    dirs = _dirs(args)

    async def go(bus: Bus) -> int:
        applied = await revoke_node(bus, dirs, args.node_id)
        if applied.approval is None:
            print(
                f"node {args.node_id} had no approval here; its enrolled key (if any) is deleted",
                file=sys.stderr,
            )
        else:
            print(
                f"revoked node {args.node_id} (key {applied.approval.public_key}): no longer "
                "enrolled nor admitted; the server closes its connections on reload",
                file=sys.stderr,
            )
        _said("revoked", applied)
        return 0

    return _admin(args, go)


def cmd_approvals(args: argparse.Namespace) -> int:
    from services.table import table

    approvals = {a.node_id: a for d in _dirs(args) for a in d.approvals().values()}
    if args.json:
        print_json([a.model_dump(mode="json") for a in approvals.values()])
        return 0
    rows = [
        [
            a.node_id,
            a.public_key,
            a.by,
            a.approved_at.strftime("%Y-%m-%d %H:%M:%S"),
            ",".join(a.models),
        ]
        for a in approvals.values()
    ]
    print(table(["NODE", "KEY", "BY", "APPROVED", "MODELS"], rows))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from services.node_join import make_bundle

    settings = settings_of(args)
    url = args.url or settings.nats_url
    try:
        bundle = make_bundle(_dirs(args)[0], url, settings.namespace, args.tls_hostname)
    except ValueError as exc:
        print(f"dim nodes bundle: {exc}", file=sys.stderr)
        return 2
    if any(h in url for h in ("://127.", "://localhost", "://[::1]")):
        print(
            f"dim nodes bundle: {url} is this machine's loopback: a node on another host cannot "
            "dial it; pass --url with an address it can (and `dim up --nats-listen 0.0.0.0`)",
            file=sys.stderr,
        )
    text = bundle.token() + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}; on the node: dim worker --join {args.out} ...", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _admin(args: argparse.Namespace, go: Body) -> int:
    try:
        return with_bus(args, go)
    except ValueError as exc:
        print(f"dim nodes {args.nodes_command}: {exc}", file=sys.stderr)
        return 2


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`nodes`, and its `bundle`, `approve`, `revoke`, `approvals`."""
    s = sub.add_parser(
        "nodes",
        parents=[common],
        help="list worker nodes (VERIFIED: the record is signed by the node's enrolled key); "
        "approve, revoke and join nodes",
    )
    add_json_flag(s, "the nodes (with --watch: one document per redraw)")
    s.add_argument(
        "--watch", type=float, metavar="SECONDS", help="redraw every SECONDS (the load moving)"
    )
    s.add_argument(
        "--watch-count", type=int, default=3600, help="redraws before --watch stops (default 3600)"
    )
    s.set_defaults(fn=cmd_nodes)

    dirs = argparse.ArgumentParser(add_help=False)
    dirs.add_argument(
        "--nats-dir",
        action="append",
        metavar="DIR",
        help="a nats-server's security directory (`dim nats-config --out`); repeat for each "
        "server of a cluster (default: the `dim up` one, <data dir>/nats)",
    )
    dirs.add_argument("--data-dir", help="the `dim up` data directory (env DIM_DATA_DIR; .dim)")
    more = s.add_subparsers(dest="nodes_command", metavar="SUBCOMMAND")

    a = more.add_parser(
        "approve",
        parents=[common, dirs],
        help="admit a node's key (the command `dim worker --join` prints): the server lets it "
        "in, its reports are believed",
    )
    a.add_argument("node_id", help="the node's id")
    a.add_argument("key", help="its public NKey (U...)")
    a.add_argument("--models", required=True, help="models it may serve, comma-separated")
    a.add_argument("--by", default="admin", help="who approves (recorded; default admin)")
    a.set_defaults(fn=cmd_approve)

    r = more.add_parser(
        "revoke",
        parents=[common, dirs],
        help="withdraw a node: no longer believed, and cut off by the server at once",
    )
    r.add_argument("node_id", help="the node's id")
    r.set_defaults(fn=cmd_revoke)

    ap = more.add_parser("approvals", parents=[common, dirs], help="the approved nodes")
    add_json_flag(ap, "the approvals")
    ap.set_defaults(fn=cmd_approvals)

    b = more.add_parser(
        "bundle",
        parents=[common, dirs],
        help="what a node on another host needs to join (`dim worker --join`): the URL, the "
        "namespace, the CA; no secret",
    )
    b.add_argument(
        "--url",
        help="the NATS URL the node dials, e.g. nats://gpu-head:4222 (default: DIM_NATS_URL)",
    )
    b.add_argument(
        "--tls-hostname", help="the name in the server's certificate, when the URL's differs"
    )
    b.add_argument("--out", help="write it to this file (default: print it)")
    b.set_defaults(fn=cmd_bundle)
