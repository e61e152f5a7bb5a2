"""`dim nodes`: the live worker nodes, once or redrawn (``--watch``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from events.bus import Bus
from services.cli.common import settings_of, with_bus

if TYPE_CHECKING:
    from services.cli.common import Subcommands


def cmd_nodes(args: argparse.Namespace) -> int:
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
                    print(json.dumps(out, indent=2))
                else:
                    print(nodes_table(records, settings.node_ttl_s, verified), flush=True)
        finally:
            await enrolled.stop()
            await nodes.stop()
        return 0

    return with_bus(args, go)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`nodes`."""
    s = sub.add_parser(
        "nodes",
        parents=[common],
        help="list worker nodes (VERIFIED: the record is signed by the node's enrolled key)",
    )
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--watch", type=float, metavar="SECONDS", help="redraw every SECONDS (the load moving)"
    )
    s.add_argument(
        "--watch-count", type=int, default=3600, help="redraws before --watch stops (default 3600)"
    )
    s.set_defaults(fn=cmd_nodes)
