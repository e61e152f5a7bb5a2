"""A NATS server's dim security directory: the identities it admits and the TLS it serves.

    <root>/ids/<identity>.nk    NKey seeds of the service identities (and of workers whose
                                seeds live here, as `dim up`'s own), mode 0600
    <root>/nodes/<node>.json    the worker nodes an admin approved: public key and models
    <root>/tls/                 the CA, and the server certificate it signed (keys 0600)
    <root>/auth.conf            nats-server's `authorization` block, written from the above
    <root>/nats-server.pid      the server's pid, to reload it

The server's configuration includes ``auth.conf`` (so it lives beside it). Approving a node
(`dim nodes approve`) writes its file, rewrites ``auth.conf`` and reloads the server (SIGHUP):
the node can connect at once. Revoking it (`dim nodes revoke`) does the reverse, and on reload
nats-server closes the connections of users it no longer admits: the node is cut off at once.
`dim up` keeps its directory at ``<data dir>/nats``; a production server's is wherever
`dim nats-config` wrote it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from events.subjects import Names, check_id
from services.nats_auth import (
    ROLES,
    Identity,
    Permissions,
    authorization,
    inbox_prefix,
    new_identity,
    role_permissions,
    worker_permissions,
)


def worker_identity(node_id: str) -> str:
    """The identity name of worker node `node_id`."""
    return f"w-{node_id}"


class Approval(BaseModel):
    """An admin's approval of one worker node: the key it connects and signs with."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    node_id: str
    public_key: str  # an NKey user key ("U...")
    models: tuple[str, ...]
    approved_at: datetime
    by: str = ""


class NatsDir:
    """The security directory `root` of one nats-server (see the module's text)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.ids = self.root / "ids"
        self.nodes = self.root / "nodes"
        self.tls = self.root / "tls"
        self.auth_file = self.root / "auth.conf"
        self.pid_file = self.root / "nats-server.pid"

    def service(self, role: str, names: Names) -> Identity:
        """The identity of service `role`, its seed made on first use."""
        return new_identity(self.ids, role, role_permissions(role, names))

    def seeded_worker(self, node_id: str, models: tuple[str, ...], names: Names) -> Identity:
        """A worker whose seed this directory keeps (one `dim up` starts), approved for
        `models`."""
        check_id("node id", node_id)
        name = worker_identity(node_id)
        identity = new_identity(self.ids, name, worker_permissions(names, node_id, models))
        self.approve(node_id, identity.public_key, models, by="dim up")
        return identity

    def approve(
        self, node_id: str, public_key: str, models: tuple[str, ...], *, by: str
    ) -> Approval:
        """Admit `public_key` as worker node `node_id` serving `models` (replacing any
        approval of that node before). Rewrite `auth.conf` and `reload` to apply it."""
        from events.signing import check_public_key

        check_id("node id", node_id)
        check_public_key(public_key)
        if not models:
            raise ValueError(f"node {node_id}: name the models it serves (--models)")
        taken = [
            a.node_id
            for a in self.approvals().values()
            if a.public_key == public_key and a.node_id != node_id
        ]
        if taken:
            raise ValueError(f"key {public_key} is already approved as node {taken[0]}")
        approval = Approval(
            node_id=node_id,
            public_key=public_key,
            models=tuple(models),
            approved_at=datetime.now(UTC),
            by=by,
        )
        self.nodes.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.nodes / f"{node_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(approval.model_dump_json(indent=2) + "\n")
        tmp.replace(path)
        return approval

    def revoke(self, node_id: str) -> Approval | None:
        """Withdraw node `node_id`'s approval (and forget its seed, if kept here); what it was,
        or None if it had none. Rewrite `auth.conf` and `reload` to apply it."""
        approval = self.approvals().get(node_id)
        path = self.nodes / f"{node_id}.json"
        path.unlink(missing_ok=True)
        (self.ids / f"{worker_identity(node_id)}.nk").unlink(missing_ok=True)
        return approval

    def approvals(self) -> dict[str, Approval]:
        """Every approved node, by id."""
        if not self.nodes.is_dir():
            return {}
        found = (Approval.model_validate_json(p.read_text()) for p in self.nodes.glob("*.json"))
        return {a.node_id: a for a in sorted(found, key=lambda a: a.node_id)}

    def users(self, names: Names) -> list[tuple[str, Permissions]]:
        """(public key, permissions) of every identity the server admits: the service roles,
        then each approved node."""
        users = [(self.service(r, names).public_key, role_permissions(r, names)) for r in ROLES]
        for a in self.approvals().values():
            users.append((a.public_key, worker_permissions(names, a.node_id, a.models)))
        return users

    def write_auth(self, names: Names) -> Path:
        """Write `auth.conf` from the service identities and the approved nodes."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.auth_file.with_suffix(".tmp")
        tmp.write_text(authorization(self.users(names)))
        tmp.replace(self.auth_file)
        return self.auth_file

    def server_config(self, tls_cert: Path, tls_key: Path) -> str:
        """What a server whose configuration file sits in `root` needs: TLS, the pid file,
        and `auth.conf` included (write it first)."""
        return (
            f'pid_file: "{self.pid_file.resolve()}"\n'
            "tls {\n"
            f'  cert_file: "{tls_cert.resolve()}"\n'
            f'  key_file: "{tls_key.resolve()}"\n'
            "}\n"
            'include "auth.conf"\n'
        )

    def reload(self) -> bool:
        """Tell the server to read its configuration again (SIGHUP); False when no server of
        this directory is running."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGHUP)
            return True
        return False

    def seed_of(self, identity: str) -> Path:
        """Where identity `identity`'s seed is kept here."""
        return self.ids / f"{identity}.nk"


__all__ = ["Approval", "NatsDir", "inbox_prefix", "worker_identity"]
