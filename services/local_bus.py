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

from dataclasses import dataclass
from pathlib import Path

from services.nats_auth import Identity, authorization, inbox_prefix
from services.nats_dir import NatsDir, worker_identity
from services.nats_tls import TlsFiles, server_tls
from services.settings import Settings

SERVICES = ("admin", "gateway", "orchestrator", "projector", "batcher")

__all__ = ["LocalBus", "as_identity", "local_admin", "local_bus", "nats_dir", "worker_identity"]


def nats_dir(settings: Settings) -> NatsDir:
    """The security directory of the `dim up` that keeps its data in `settings.data_dir`."""
    return NatsDir(settings.data_dir / "nats")


@dataclass(frozen=True, slots=True)
class LocalBus:
    """The identities and TLS files of one `dim up`."""

    identities: dict[str, Identity]
    tls: TlsFiles
    dir: NatsDir

    def server_config(self, *, inline: bool = False) -> str:
        """What nats-server's configuration needs for it: TLS, and exactly these users. By
        default `auth.conf` is included (the configuration must sit in the security directory),
        so approving and revoking nodes can reload it; `inline` writes the users in place."""
        if not inline:
            return self.dir.server_config(self.tls.server_cert, self.tls.server_key)
        tls = (
            "tls {\n"
            f'  cert_file: "{self.tls.server_cert.resolve()}"\n'
            f'  key_file: "{self.tls.server_key.resolve()}"\n'
            "}\n"
        )
        users = [(i.public_key, i.permissions) for i in self.identities.values()]
        return tls + authorization(users)

    def worker_keys(self, nodes: list[str] | dict[str, tuple[str, ...]]) -> dict[str, str]:
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
    """The identities of the services and of `workers` (node id → models, approved here), and
    TLS for `hosts` besides loopback: made on first use in the data directory, the same
    afterwards; `auth.conf` written from them and the nodes approved before."""
    names = settings.names
    d = nats_dir(settings)
    identities = {r: d.service(r, names) for r in SERVICES}
    for node, models in workers.items():
        identities[worker_identity(node)] = d.seeded_worker(node, models, names)
    d.write_auth(names)
    return LocalBus(identities, server_tls(d.tls, hosts), d)


def local_admin(settings: Settings) -> Settings:
    """`settings` with the admin identity of a `dim up` in its data directory, when no
    credentials are set and one is there (else `settings` as they are)."""
    configured = (
        settings.nats_creds or settings.nats_nkey_seed or settings.nats_user or settings.nats_tls_ca
    )
    d = nats_dir(settings)
    seed, ca = d.seed_of("admin"), d.tls / "ca.pem"
    if configured or not seed.exists() or not ca.exists():
        return settings
    return as_identity(settings, seed, "admin", ca)
