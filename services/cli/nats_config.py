"""`dim nats-config`: the security directory of a production nats-server (or cluster).

It writes, in ``--out`` (see services/nats_dir.py for the layout):

    ids/<role>.nk    an NKey seed per service identity: admin, gateway, orchestrator, projector
    tls/             a CA, and a certificate it signed for every ``--host`` (and loopback) that
                     serves clients and, in a cluster, both ends of the routes
    auth.conf        the `authorization` block the shipped configurations include

and prints what to copy where and which ``DIM_NATS_*`` settings each process gets. Running it
again keeps the keys and certificates already there (a new ``--host`` gets a new server
certificate from the same CA). Worker nodes are approved afterwards, with `dim nodes approve`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli.common import settings_of

if TYPE_CHECKING:
    from events.subjects import Names
    from services.cli.common import Subcommands
    from services.nats_auth import Identity
    from services.nats_dir import NatsDir
    from services.nats_tls import TlsFiles


@dataclass(frozen=True, slots=True)
class SecurityDir:
    """What `generate` wrote."""

    dir: NatsDir
    tls: TlsFiles
    identities: dict[str, Identity]


def generate(out: Path, hosts: list[str], names: Names) -> SecurityDir:
    """Write (or complete) the security directory `out` for servers reached as `hosts`."""
    from services.nats_auth import ROLES
    from services.nats_dir import NatsDir
    from services.nats_tls import server_tls

    if not any(h.strip() for h in hosts):
        raise ValueError("name the hosts clients and routes dial the server(s) by (--host)")
    d = NatsDir(out)
    d.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    identities = {role: d.service(role, names) for role in ROLES}
    tls = server_tls(d.tls, hosts)
    d.write_auth(names)
    return SecurityDir(d, tls, identities)


def instructions(made: SecurityDir, namespace: str) -> str:
    """What to do with the directory: where each file goes, what each process is given."""
    from services.nats_auth import inbox_prefix

    root, tls = made.dir.root.resolve(), made.tls
    lines = [
        f"wrote the security directory {root} (namespace {namespace!r}):",
        "  auth.conf              the users nats-server admits; the configuration includes it",
        "  ids/<role>.nk          an NKey seed per service identity (0600)",
        "  tls/ca.pem             the CA every client and every route trusts",
        "  tls/server.pem, tls/server-key.pem",
        "                         the servers' certificate (clients and routes) and its key",
        "  tls/ca-key.pem         the CA's key: keep it here, off the servers; run this again",
        "                         (with every --host) to get a server certificate for new names",
        "",
        "each nats-server host: a copy of this directory, with its configuration inside it",
        '(nats-server reads `include "auth.conf"` beside the configuration file):',
        "  one server:   infra/nats/single.conf      -> /etc/nats/dim/nats-server.conf",
        "  3-node:       infra/nats/cluster/nN.conf  -> /etc/nats/dim-nN/nats-server.conf",
        "  (the paths in them are those; edit them if the directory lives elsewhere)",
        "",
        "each dim process connects as its own identity; give it only its own seed:",
    ]
    for role in ("gateway", "orchestrator", "projector", "batcher", "admin"):
        identity = made.identities[role]
        who = "`dim` commands of an operator" if role == "admin" else f"the {role}"
        lines += [
            f"  {who}:",
            f"    DIM_NATS_NKEY_SEED={identity.seed_file.resolve()}",
            f"    DIM_NATS_TLS_CA={tls.ca_cert.resolve()}",
            f"    DIM_NATS_INBOX_PREFIX={inbox_prefix(identity.name)}",
            f"    DIM_NAMESPACE={namespace}",
        ]
    lines += [
        "  (and DIM_NATS_URL=nats://<host>:4222[,...]: TLS because a CA is set; a seed copied",
        "  to another machine keeps mode 0600)",
        "",
        "worker nodes: each makes its own key; an admin approves it for its models with",
        "`dim nodes approve` on every server's copy of this directory (auth.conf is rewritten",
        "and the server reloaded); the worker connects with its own seed, the CA and",
        "DIM_NATS_INBOX_PREFIX=_I.w-<node id>.",
    ]
    return "\n".join(lines)


def cmd_nats_config(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    try:
        made = generate(Path(args.out), args.host, settings.names)
    except (OSError, ValueError) as exc:
        print(f"dim nats-config: {exc}", file=sys.stderr)
        return 1
    print(instructions(made, settings.namespace))
    return 0


def add_commands(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """`nats-config`."""
    s = sub.add_parser(
        "nats-config",
        help="write a production nats-server's security directory: identities, TLS, auth.conf",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    s.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    s.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="a name or address clients and routes dial a server by (repeat for each)",
    )
    s.add_argument(
        "--namespace", help="namespace of subjects, streams and buckets (env DIM_NAMESPACE)"
    )
    s.set_defaults(fn=cmd_nats_config)
