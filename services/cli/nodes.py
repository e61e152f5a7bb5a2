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
    from services.registry.live import LiveNodes
    from services.render import nodes_table

    settings = settings_of(args)

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

    return with_bus(args, go)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`nodes`."""
    s = sub.add_parser("nodes", parents=[common], help="list worker nodes")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--watch", type=float, metavar="SECONDS", help="redraw every SECONDS (the load moving)"
    )
    s.add_argument(
        "--watch-count", type=int, default=3600, help="redraws before --watch stops (default 3600)"
    )
    s.set_defaults(fn=cmd_nodes)
