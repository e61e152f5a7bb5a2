"""The `dim` command: one module per group of commands, each adding its own to the parser."""

from __future__ import annotations

import argparse

from services.cli import accounts, audit, jobs, nats_config, nodes, provision, serve, usage
from services.cli.common import common_flags


def parser() -> argparse.ArgumentParser:
    """The argument parser of `dim`."""
    p = argparse.ArgumentParser(
        prog="dim", description="dim: a distributed LLM inference mesh on NATS JetStream"
    )
    common = common_flags()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order in `dim --help`.
    for group in (serve, accounts, provision, jobs, usage, nodes, audit, nats_config):
        group.add_commands(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dim`."""
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130
