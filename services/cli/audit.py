"""`dim audit` and `dim projections rebuild`: the log checked against what was made of it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, settings_of, with_bus

if TYPE_CHECKING:
    from events.bus import Bus
    from services.cli.common import Subcommands


def cmd_audit(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from services.audit import audit, collect, counts, findings
    from services.table import clip, table, terminal_width

    listed = Path(args.accepted).read_text().split() if args.accepted else None

    async def go(bus: Bus) -> int:
        histories, usage = await collect(bus)
        report = audit(histories, listed if listed is not None else list(histories), usage)
        if args.json:
            print_json(asdict(report) | {"ok": report.ok})
        else:
            rows = [[what, f"{n:,}"] for what, n in counts(report)]
            print(table(["CHECK", "JOBS"], rows, right=1))
            for line in findings(report):
                print(clip(line, terminal_width()))
        return 0 if report.ok else 1

    return with_bus(args, go)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from services.local_bus import local_admin
    from services.projector import rebuild
    from services.registry.trust import Trust

    signed_only = local_admin(settings_of(args)).signed_only

    async def go(bus: Bus) -> int:
        trust = Trust(bus, signed_only)
        await trust.start()
        try:
            report = await rebuild(bus, check_only=args.check, trust=trust)
        finally:
            await trust.stop()
        print(
            f"replayed {report.events} events into {report.jobs} job views: "
            f"{report.unchanged} identical, {report.written} written, {report.deleted} deleted, "
            f"{report.skipped_newer} already newer"
        )
        if args.check and report.differences:
            print(
                f"{len(report.differences)} views differ from the log: {', '.join(report.differences[:20])}"
            )
            return 1
        return 0

    return with_bus(args, go)


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`audit`, `projections rebuild`."""
    s = sub.add_parser(
        "audit",
        parents=[common],
        help="check every job ended once, with usage counted once (exit 1 if not)",
    )
    s.add_argument(
        "--accepted", help="file of job ids a client had accepted, one per line (default: all)"
    )
    add_json_flag(s, "the report")
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser("projections", parents=[common], help="manage read models")
    psub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = psub.add_parser(
        "rebuild", parents=[common], help="replay JOBS from the start into the jobs bucket"
    )
    r.add_argument("--check", action="store_true", help="only compare; exit 1 if any view differs")
    r.set_defaults(fn=cmd_rebuild)
