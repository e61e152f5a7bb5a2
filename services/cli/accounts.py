"""`dim keys create|list|revoke` and `dim admin create`: API keys and admin accounts."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from services.cli.common import add_json_flag, print_json, settings_of, with_bus

if TYPE_CHECKING:
    from events.bus import Bus
    from services.cli.common import Subcommands


def cmd_keys_create(args: argparse.Namespace) -> int:
    from services.accounts.keys import create_key
    from services.process import ensure_topology

    settings = settings_of(args)

    async def go(bus: Bus) -> int:
        await ensure_topology(bus, settings)
        record, key = await create_key(
            bus,
            principal_id=args.principal,
            tenant=args.tenant,
            roles=(args.role,),
            name=args.name or "",
            actor="cli",
            daily_tokens=args.daily_tokens,
        )
        budget = f", {args.daily_tokens:,} tokens a day" if args.daily_tokens else ""
        print(key)
        print(
            f"key {record.key_id} for {record.principal_id} (tenant {record.tenant}, {args.role}"
            f"{budget}); it is shown only now: keep it somewhere safe",
            file=sys.stderr,
        )
        return 0

    return with_bus(args, go)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from services.accounts.keys import live_keys
    from services.table import table

    async def go(bus: Bus) -> int:
        keys = await live_keys(bus)
        if args.json:  # the records hold only the secret's hash; it is left out all the same
            print_json([k.model_dump(mode="json", exclude={"secret_sha256"}) for k in keys])
            return 0
        rows = [
            [
                k.key_id,
                k.principal_id,
                k.tenant,
                ",".join(k.roles),
                k.name,
                f"{k.daily_tokens:,}" if k.daily_tokens else "-",
                k.created_at.isoformat(timespec="seconds"),
            ]
            for k in keys
        ]
        headers = ["KEY ID", "PRINCIPAL", "TENANT", "ROLES", "NAME", "DAILY TOKENS", "CREATED"]
        print(table(headers, rows, optional=(6, 3, 1)))
        return 0

    return with_bus(args, go)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from services.accounts.keys import read_key, revoke_key

    async def go(bus: Bus) -> int:
        record = await read_key(bus, args.key_id)
        if record is None:
            print(f"dim: no live key {args.key_id!r}", file=sys.stderr)
            return 1
        await revoke_key(bus, record, by="cli")
        print(f"key {args.key_id} revoked")
        return 0

    return with_bus(args, go)


def cmd_admin_create(args: argparse.Namespace) -> int:
    import getpass

    from services.accounts.errors import AccountError
    from services.accounts.users import register
    from services.process import ensure_topology

    settings = settings_of(args)
    password = args.password or getpass.getpass(f"password for {args.email}: ")

    async def go(bus: Bus) -> int:
        await ensure_topology(bus, settings)
        try:
            record = await register(
                bus,
                email=args.email,
                password=password,
                tenant=args.tenant,
                roles=("admin",),
                by="cli",
            )
        except AccountError as exc:
            print(f"dim: {exc}", file=sys.stderr)
            return 1
        print(f"admin {record.email} ({record.principal_id}) created in tenant {record.tenant}")
        return 0

    return with_bus(args, go)


def _tokens(text: str) -> int:
    try:
        n = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"a number of tokens, 0 or more (0: no budget): {text!r}")
    return n


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`keys create|list|revoke`, `admin create`."""
    s = sub.add_parser("keys", parents=[common], help="manage API keys")
    ksub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = ksub.add_parser("create", parents=[common], help="issue a key (printed once)")
    k.add_argument("--principal", default="user", help="who the key acts as (default user)")
    k.add_argument("--tenant", default="default", help="the tenant (default default)")
    k.add_argument("--role", choices=["admin", "member"], default="member")
    k.add_argument("--name", help="a label for the key")
    k.add_argument(
        "--daily-tokens",
        type=_tokens,
        default=0,
        metavar="N",
        help="the key's budget of tokens per UTC day, on top of its tenant's quota (default: none)",
    )
    k.set_defaults(fn=cmd_keys_create)
    k = ksub.add_parser("list", parents=[common], help="list live keys (never their secrets)")
    add_json_flag(k, "the keys")
    k.set_defaults(fn=cmd_keys_list)
    k = ksub.add_parser("revoke", parents=[common], help="revoke a key on every gateway at once")
    k.add_argument("key_id")
    k.set_defaults(fn=cmd_keys_revoke)

    s = sub.add_parser("admin", parents=[common], help="manage admin accounts")
    asub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser(
        "create", parents=[common], help="create an admin account (the first one, say)"
    )
    a.add_argument("--email", required=True)
    a.add_argument("--password", help="asked for when not given")
    a.add_argument("--tenant", default="default")
    a.set_defaults(fn=cmd_admin_create)
