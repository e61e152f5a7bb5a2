"""The `dim` command: one module per group of commands, each adding its own to the parser.

Building the parser imports no heavy module (pydantic, nats, litestar, OpenTelemetry, vLLM):
each command imports what it needs when it runs, so `dim --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from services.cli import (
    accounts,
    audit,
    jobs,
    models,
    nats_config,
    nodes,
    provision,
    serve,
    usage,
)
from services.cli.common import BadSetting, common_flags


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print dim's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("dim")
        except PackageNotFoundError:
            found = "unknown (not installed)"
        print(f"dim {found}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    """The argument parser of `dim`."""
    p = argparse.ArgumentParser(
        prog="dim", description="dim: a distributed LLM inference mesh on NATS JetStream"
    )
    p.add_argument("--version", action=_Version)
    common = common_flags()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order in `dim --help`.
    for group in (serve, accounts, provision, jobs, usage, nodes, models, audit, nats_config):
        group.add_commands(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dim`: a refused setting is one line (exit 2), Ctrl-C exit 130, and a
    reader that stops reading (``dim jobs | head``) ends the command quietly (exit 141)."""
    args = parser().parse_args(argv)
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return code
    except BadSetting as exc:
        print(f"dim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Python's advice: point stdout at /dev/null so the flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as a shell reports a process ended by SIGPIPE
