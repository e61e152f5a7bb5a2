"""`dim models`: the models the live workers serve, with how many nodes and slots each has."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, settings_of, with_bus

if TYPE_CHECKING:
    from events.bus import Bus
    from events.records import NodeRecord
    from services.cli.common import Subcommands


@dataclass(frozen=True, slots=True)
class Served:
    """A model the live nodes serve: its nodes, slots in use and in all, tasks queued on its
    shared subject, the shortest context length among them and their engines."""

    model: str
    nodes: list[str]
    in_flight: int
    capacity: int
    queued: int
    max_context: int | None
    engines: list[str]


def served(nodes: list[NodeRecord]) -> list[Served]:
    """One entry per model the `nodes` serve, by name."""
    by_model: dict[str, list[NodeRecord]] = {}
    for node in nodes:
        for model in node.models:
            by_model.setdefault(model, []).append(node)
    out = []
    for model, on in sorted(by_model.items()):
        contexts = [n.max_context for n in on if n.max_context is not None]
        out.append(
            Served(
                model=model,
                nodes=sorted(n.node_id for n in on),
                in_flight=sum(n.in_flight for n in on),
                capacity=sum(n.capacity for n in on),
                queued=max((n.queued.get(model, 0) for n in on), default=0),
                max_context=min(contexts) if contexts else None,
                engines=sorted({n.engine for n in on}),
            )
        )
    return out


def cmd_models(args: argparse.Namespace) -> int:
    from services.registry.live import LiveNodes
    from services.table import table

    settings = settings_of(args)

    async def go(bus: Bus) -> int:
        nodes = LiveNodes(bus, settings.node_ttl_s)
        await nodes.start()
        try:
            models = served(nodes.live())
        finally:
            await nodes.stop()
        if args.json:
            print_json([asdict(m) for m in models])
            return 0
        if not models:
            print("(no live worker serves a model)")
            return 0
        rows = [
            [
                m.model,
                f"{m.in_flight}/{m.capacity}",
                str(m.queued),
                "-" if m.max_context is None else f"{m.max_context:,}",
                ",".join(m.engines),
                ", ".join(m.nodes),
            ]
            for m in models
        ]
        headers = ["MODEL", "IN-FLIGHT", "QUEUED", "CONTEXT", "ENGINES", "NODES"]
        print(table(headers, rows, optional=(4, 3), wrap=True))
        return 0

    return with_bus(args, go)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`models`."""
    s = sub.add_parser(
        "models",
        parents=[common],
        help="the models live workers serve: slots in use and in all, queued tasks, nodes",
    )
    add_json_flag(s, "the models")
    s.set_defaults(fn=cmd_models)
