"""`dim settings` and `dim provision`: what the mesh is configured with, and its streams and
buckets made to match."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pydantic import SecretStr

from events.bus import Bus
from events.connection import redact_url
from services.cli.common import settings_of, with_bus
from services.settings import Settings

if TYPE_CHECKING:
    from services.cli.common import Subcommands


def shown(value: object, name: str = "") -> str:
    """A setting's value as `dim settings` prints it: secrets masked (a SecretStr, or a setting
    named as one: the token-signing keys, an upstream's API key), URLs without passwords."""
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else ""
    if any(word in name for word in ("secret", "private_key", "api_key")):
        return "********" if value else ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    return str(value)


def cmd_settings(args: argparse.Namespace) -> int:
    from services.render import table

    current = Settings()
    rows = []
    for name, field in Settings.model_fields.items():
        value = shown(getattr(current, name), name)
        rows.append([Settings.variable(name), value, field.description or ""])
    print(table(["VARIABLE", "VALUE", "MEANING"], rows))
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
    s = sub.add_parser("settings", help="list every DIM_* setting with its current value")
    s.set_defaults(fn=cmd_settings)

    s = sub.add_parser(
        "provision", parents=[common], help="create missing streams and buckets; report differences"
    )
    s.set_defaults(fn=cmd_provision)
