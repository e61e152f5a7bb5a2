"""Adding a worker node on another host: the join bundle, and the node's own key.

On the machine of the NATS server, the admin writes a bundle (`dim nodes bundle`): the URL the
node dials, the namespace, and the CA certificate the server's TLS is signed by. Nothing in it is
secret: it tells a node where the mesh is and how to recognise its server, and admits no one.

On the node, `dim worker --join BUNDLE` keeps in its data directory:

    <data dir>/node/ca.pem         the CA from the bundle
    <data dir>/node/w-<node>.nk    the node's NKey seed (0600), made on its first start

prints the one command that approves it (`dim nodes approve <node> <key> --models ...`) and
waits until the server admits its key. Only that approval — an admin's step on the server's
machine — lets it in; its key is then also what it signs its node record and its reports with.
"""

from __future__ import annotations

import base64
import binascii
import json
import shlex
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from services.nats_auth import Identity, inbox_prefix, new_identity, worker_permissions
from services.nats_dir import NatsDir, worker_identity
from services.settings import Settings

TOKEN_PREFIX = "dimjoin1:"


class JoinBundle(BaseModel):
    """Where a mesh's NATS is and how to trust it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nats_url: str
    namespace: str
    ca_pem: str
    tls_hostname: str | None = None  # the name the server's certificate carries, if not the URL's

    def token(self) -> str:
        """The bundle as one line to paste: ``dimjoin1:`` and its JSON in URL-safe base64."""
        raw = self.model_dump_json(exclude_none=True).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def read(cls, given: str) -> JoinBundle:
        """The bundle `given` as a token, or in a file (its token or its JSON)."""
        text = given.strip()
        if not text.startswith(TOKEN_PREFIX):
            path = Path(given).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"--join {given!r}: neither a join token ({TOKEN_PREFIX}...) nor a bundle file; "
                    "`dim nodes bundle` on the server's machine makes one"
                )
            text = path.read_text().strip()
        try:
            if text.startswith(TOKEN_PREFIX):
                body = text.removeprefix(TOKEN_PREFIX)
                text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            bundle = cls.model_validate(json.loads(text))
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"--join: not a dim join bundle ({_first_line(exc)})") from None
        _check_ca(bundle.ca_pem)
        return bundle


def make_bundle(
    nats: NatsDir, nats_url: str, namespace: str, tls_hostname: str | None = None
) -> JoinBundle:
    """The bundle of the server whose security directory is `nats`, dialled at `nats_url`."""
    ca = nats.tls / "ca.pem"
    if not ca.is_file():
        raise ValueError(
            f"no CA certificate in {nats.root}: is it a dim security directory? (`dim up` keeps "
            "one in <data dir>/nats; `dim nats-config` writes one for a production server)"
        )
    return JoinBundle(
        nats_url=nats_url, namespace=namespace, ca_pem=ca.read_text(), tls_hostname=tls_hostname
    )


def join_settings(
    settings: Settings, bundle: JoinBundle, data_dir: Path, *, keep_url: bool = False
) -> tuple[Settings, Identity]:
    """`settings` of the worker `settings.node_id` joining with `bundle`, keeping its key and the
    CA in `data_dir/node` (the key made on first use); and the identity it connects as. The
    bundle's URL and namespace are used unless `keep_url` (a flag named them)."""
    node_dir = data_dir / "node"
    node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = node_dir / "ca.pem"
    ca.write_text(bundle.ca_pem)
    name = worker_identity(settings.node_id)
    update: dict[str, object] = {
        "nats_tls_ca": ca.resolve(),
        "nats_inbox_prefix": inbox_prefix(name),
    }
    if bundle.tls_hostname:
        update["nats_tls_hostname"] = bundle.tls_hostname
    if not keep_url:
        update |= {"nats_url": bundle.nats_url, "namespace": bundle.namespace}
    joined = settings.model_copy(update=update)
    identity = new_identity(
        node_dir, name, worker_permissions(joined.names, settings.node_id, settings.models)
    )
    return joined.model_copy(update={"nats_nkey_seed": identity.seed_file.resolve()}), identity


def approve_command(node_id: str, public_key: str, models: tuple[str, ...]) -> str:
    """The command that approves this node, to run on the server's machine."""
    return shlex.join(
        ["dim", "nodes", "approve", node_id, public_key, "--models", ",".join(models)]
    )


def _check_ca(pem: str) -> None:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ValueError("--join: the bundle's CA is not a PEM certificate") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
