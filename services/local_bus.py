"""The embedded nats-server of `dim up`, secured: TLS with a CA made for it, and one NATS
identity per role (services/nats_auth.py), kept in the data directory:

    <data dir>/nats/tls/      ca.pem, server.pem and their keys (0600)
    <data dir>/nats/ids/      <identity>.nk, one NKey seed per identity (0600)

Each process `dim up` starts gets only its own identity. A worker's is also the key it signs its
node record with; `dim up` enrolls it in the enrolled bucket. The `dim` command on the same
machine finds the admin identity there by itself (`local_admin`), so `dim keys create`,
`dim nodes` and the rest work as they do without security.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from events.subjects import Names
from services.nats_auth import (
    Identity,
    authorization,
    inbox_prefix,
    new_identity,
    role_permissions,
    worker_permissions,
)
from services.nats_tls import TlsFiles, server_tls
from services.settings import Settings

SERVICES = ("admin", "gateway", "orchestrator", "projector")


def _ids_dir(data_dir: Path) -> Path:
    return data_dir / "nats" / "ids"


def worker_identity(node_id: str) -> str:
    """The identity name of worker node `node_id`."""
    return f"w-{node_id}"


@dataclass(frozen=True, slots=True)
class LocalBus:
    """The identities and TLS files of one `dim up`."""

    identities: dict[str, Identity]
    tls: TlsFiles

    def server_config(self) -> str:
        """What nats-server's configuration needs for it: TLS, and exactly these users."""
        tls = (
            "tls {\n"
            f'  cert_file: "{self.tls.server_cert.resolve()}"\n'
            f'  key_file: "{self.tls.server_key.resolve()}"\n'
            "}\n"
        )
        return tls + authorization(list(self.identities.values()))

    def worker_keys(self, nodes: Iterable[str]) -> dict[str, str]:
        """Node id → the public key of its identity: what `dim up` enrolls for it."""
        return {node: self.identities[worker_identity(node)].public_key for node in nodes}

    def settings_for(self, settings: Settings, identity: str) -> Settings:
        """`settings` as identity `identity` connects: its seed, its inbox, the CA."""
        return as_identity(
            settings, self.identities[identity].seed_file, identity, self.tls.ca_cert
        )


def as_identity(settings: Settings, seed: Path, identity: str, ca: Path) -> Settings:
    """`settings` connecting with the NKey seed file `seed` as `identity`, trusting `ca`."""
    return settings.model_copy(
        update={
            "nats_nkey_seed": seed.resolve(),
            "nats_inbox_prefix": inbox_prefix(identity),
            "nats_tls_ca": ca.resolve(),
        }
    )


def local_bus(
    settings: Settings, workers: dict[str, tuple[str, ...]], hosts: tuple[str, ...] = ()
) -> LocalBus:
    """The identities of the services and of `workers` (node id → models), and TLS for
    `hosts` besides loopback: made on first use in the data directory, the same afterwards."""
    names: Names = settings.names
    ids_dir = _ids_dir(settings.data_dir)
    identities = {r: new_identity(ids_dir, r, role_permissions(r, names)) for r in SERVICES}
    for node, models in workers.items():
        name = worker_identity(node)
        identities[name] = new_identity(ids_dir, name, worker_permissions(names, node, models))
    return LocalBus(identities, server_tls(settings.data_dir / "nats" / "tls", hosts))


def local_admin(settings: Settings) -> Settings:
    """`settings` with the admin identity of a `dim up` in its data directory, when no
    credentials are set and one is there (else `settings` as they are)."""
    configured = (
        settings.nats_creds or settings.nats_nkey_seed or settings.nats_user or settings.nats_tls_ca
    )
    seed = _ids_dir(settings.data_dir) / "admin.nk"
    ca = settings.data_dir / "nats" / "tls" / "ca.pem"
    if configured or not seed.exists() or not ca.exists():
        return settings
    return as_identity(settings, seed, "admin", ca)
