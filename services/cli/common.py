"""What every command shares: the ``--nats-url``/``--namespace`` flags, settings from flags over
the environment, and running a command's body with a NATS connection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from events.bus import Bus
from events.errors import DimError
from services.process import run
from services.settings import Settings

if TYPE_CHECKING:
    # What each command group adds its commands to.
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

# A command's body: given the connection, its exit status.
Body = Callable[[Bus], Awaitable[int]]


def common_flags() -> argparse.ArgumentParser:
    """The parent parser of every command that talks to NATS."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", help="NATS server URL (env DIM_NATS_URL)")
    common.add_argument(
        "--namespace", help="namespace of subjects, streams and buckets (env DIM_NAMESPACE)"
    )
    return common


def settings_of(args: argparse.Namespace, **more: Any) -> Settings:
    """The settings from the environment, with the flags given (and `more`, unless None) over it."""
    update: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    for flag, field in (("nats_url", "nats_url"), ("namespace", "namespace")):
        value = getattr(args, flag, None)
        if value is not None:
            update[field] = value
    base = Settings()
    return Settings(**{**base.model_dump(), **update}) if update else base


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
    try:
        return run(_with_bus(settings_of(args), fn))
    except DimError as exc:
        print(f"dim: {exc}", file=sys.stderr)
        return 1
