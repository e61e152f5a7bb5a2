"""`dim settings` and `dim provision`: what the mesh is configured with, and its streams and
buckets made to match."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, settings_of, with_bus

if TYPE_CHECKING:
    from events.bus import Bus
    from services.cli.common import Subcommands


def cmd_settings(args: argparse.Namespace) -> int:
    from services.cli.masking import shown, shown_json
    from services.settings import Settings
    from services.table import table

    current = settings_of()
    if args.json:
        print_json(
            {
                Settings.variable(name): shown_json(getattr(current, name), name)
                for name in Settings.model_fields
            }
        )
        return 0
    rows = [
        [Settings.variable(name), shown(getattr(current, name), name), field.description or ""]
        for name, field in Settings.model_fields.items()
    ]
    print(table(["VARIABLE", "VALUE", "MEANING"], rows, wrap=True))
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from services.process import ensure_topology, setup_logging

    settings = settings_of(args)
    setup_logging(settings, "provision")

    async def go(bus: Bus) -> int:
        await ensure_topology(bus, settings)
        print(f"namespace {settings.namespace!r} is provisioned")
        return 0

    return with_bus(args, go)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`settings`, `provision`."""
    s = sub.add_parser(
        "settings",
        help="list every DIM_* setting with its current value (secrets masked) and meaning",
    )
    add_json_flag(s, "the settings (variable: value)")
    s.set_defaults(fn=cmd_settings)

    s = sub.add_parser(
        "provision", parents=[common], help="create missing streams and buckets; report differences"
    )
    s.set_defaults(fn=cmd_provision)
