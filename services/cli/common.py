"""What every command shares: the ``--nats-url``/``--namespace`` and ``--json`` flags, settings
from flags over the environment, and running a command's body with a NATS connection.

This module is imported to build the parser (`dim --help`), so it imports nothing heavy at its
top: pydantic, nats and the rest are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from events.bus import Bus
    from services.settings import Settings

    # What each command group adds its commands to.
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

    # A command's body: given the connection, its exit status.
    Body = Callable[[Bus], Awaitable[int]]


class BadSetting(ValueError):
    """A ``DIM_*`` variable or a flag whose value the settings refuse; the message is one line
    that names it, says what is wrong and what is expected (exit status 2)."""


def common_flags() -> argparse.ArgumentParser:
    """The parent parser of every command that talks to NATS."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", help="NATS server URL (env DIM_NATS_URL)")
    common.add_argument(
        "--namespace", help="namespace of subjects, streams and buckets (env DIM_NAMESPACE)"
    )
    return common


def add_json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: print `what` as one JSON document instead of a table."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON document")


def print_json(doc: object) -> None:
    """One JSON document on stdout (indented: it is read by people too)."""
    print(json.dumps(doc, indent=2))


# flag attribute -> settings field, for the flags every command may have
_COMMON = (("nats_url", "nats_url"), ("namespace", "namespace"))


def settings_of(args: argparse.Namespace | None = None, **more: Any) -> Settings:
    """The settings from the environment, with the flags given (and `more`, unless None) over it;
    a value they refuse is a `BadSetting` naming the variable or flag it came from."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from services.cli.bad_setting import explain, explain_source
    from services.settings import Settings

    update: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    for flag, field in _COMMON:
        value = getattr(args, flag, None)
        if value is not None:
            update[field] = value
    try:
        base = Settings()
    except ValidationError as exc:
        raise BadSetting(explain(exc)) from None
    except SettingsError as exc:  # a value pydantic-settings could not even decode (JSON)
        raise BadSetting(explain_source(exc)) from None
    if not update:
        return base
    try:
        return Settings(**{**base.model_dump(), **update})
    except ValidationError as exc:
        raise BadSetting(explain(exc, from_flags=set(update))) from None


async def _with_bus(settings: Settings, fn: Body) -> int:
    from services.local_bus import local_admin
    from services.process import connect

    # On the machine of a `dim up`, with no credentials given: its admin identity.
    bus = await connect(local_admin(settings), "dim-cli")
    try:
        return int(await fn(bus))
    finally:
        await bus.close()


def with_bus(args: argparse.Namespace, fn: Body) -> int:
    """Run `fn` with a connection made from the flags; a `DimError` is printed, exit status 1."""
    from events.errors import DimError
    from services.process import run

    settings = settings_of(args)
    try:
        return run(_with_bus(settings, fn))
    except DimError as exc:
        print(f"dim: {exc}", file=sys.stderr)
        return 1
