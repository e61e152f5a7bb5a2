"""`dim usage`: tokens and requests per tenant per UTC day, read from the usage projection;
with `--by`, broken down by API key, model and/or end user."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, with_bus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from events.bus import Bus
    from projections.usage_breakdown import UsageRow
    from services.cli.common import Subcommands


def cmd_usage(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from events.subjects import encode_token
    from projections.usage import USAGE_TOTALS, TenantUsage, day_of
    from projections.usage_breakdown import breakdown, matching
    from projections.usage_detail import UsageDetail
    from services.table import table

    async def go(bus: Bus) -> int:
        usage = await bus.bucket("usage")
        since = day_of(datetime.now(UTC) - timedelta(days=args.days - 1))
        tenant = encode_token(args.tenant) if args.tenant else "*"
        if args.by is not None:
            details = []
            for key in await usage.keys(f"{tenant}.*.detail"):
                entry = await usage.get(key)
                if entry is not None:
                    detail = UsageDetail.model_validate_json(entry.value)
                    if detail.day >= since:
                        details.append(detail)
            keep = matching(key_id=args.key, model=args.model, user=args.user)
            rows = breakdown(details, args.by, keep)
            if args.json:
                print_json([r.model_dump() for r in rows])
            else:
                print(_table(rows, args.by))
            return 0
        records = []
        pattern = f"{tenant}.*" if args.tenant else USAGE_TOTALS
        for key in await usage.keys(pattern):
            entry = await usage.get(key)
            if entry is not None:
                record = TenantUsage.model_validate_json(entry.value)
                if record.day >= since:
                    records.append(record)
        records.sort(key=lambda r: (r.day, r.tenant), reverse=True)
        if args.json:
            print_json([r.model_dump() | {"total_tokens": r.total_tokens} for r in records])
            return 0
        if not records:
            print("(no usage in these days)")
            return 0
        cells = [
            [r.day, r.tenant]
            + [f"{n:,}" for n in (r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens)]
            for r in records
        ]
        headers = ["DAY", "TENANT", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
        print(table(headers, cells, right=4))
        return 0

    return with_bus(args, go)


def _table(rows: list[UsageRow], by: Sequence[str]) -> str:
    from services.table import table

    if not rows:
        return "(no usage in these days)"
    headers = ["DAY", "TENANT"]
    headers += ["KEY", "OWNER"] if "key" in by else []
    headers += ["MODEL"] if "model" in by else []
    headers += ["USER"] if "user" in by else []
    headers += ["REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    lines = []
    for r in rows:
        cells = [r.day, r.tenant]
        cells += [r.key_id or "(none)", r.owner or "-"] if "key" in by else []
        cells += [r.model or "-"] if "model" in by else []
        if "user" in by:
            cells.append("(other users)" if r.other_users else r.user or "(none)")
        cells += [f"{n:,}" for n in (r.requests, r.prompt_tokens, r.completion_tokens)]
        cells.append(f"{r.total_tokens:,}")
        lines.append(cells)
    return table(headers, lines, right=4)


def _dimensions(text: str) -> tuple[str, ...]:
    from projections.usage_breakdown import parse_dimensions

    try:
        return parse_dimensions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`usage`."""
    s = sub.add_parser(
        "usage",
        parents=[common],
        help="tokens and requests per tenant per UTC day; --by key, model or user",
    )
    s.add_argument("--tenant", help="one tenant (default: every tenant)")
    s.add_argument("--days", type=int, default=30, help="how many days back (default 30)")
    s.add_argument(
        "--by",
        type=_dimensions,
        metavar="key|model|user",
        help="break each day down by API key, model or end user (comma-separated for more "
        "than one, e.g. key,model)",
    )
    s.add_argument("--key", help="with --by: only this API key id")
    s.add_argument("--model", help="with --by: only this model")
    s.add_argument("--user", help="with --by: only this end user")
    add_json_flag(s, "the rows")
    s.set_defaults(fn=cmd_usage)
