"""Joining a node from another host: the bundle, the node's key, its approval in a directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.nats_dir import NatsDir
from services.nats_tls import server_tls
from services.node_join import JoinBundle, approve_command, join_settings, make_bundle
from services.settings import Settings


def _bundle(tmp_path: Path) -> JoinBundle:
    d = NatsDir(tmp_path / "server")
    server_tls(d.tls, ["gpu-head"])
    return make_bundle(d, "nats://gpu-head:4222", "prod", tls_hostname="gpu-head")


def test_a_bundle_travels_as_a_token_or_a_file_and_holds_no_secret(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    token = bundle.token()
    assert token.startswith("dimjoin1:") and "\n" not in token
    assert JoinBundle.read(token) == bundle
    (tmp_path / "b.txt").write_text(token + "\n")
    (tmp_path / "b.json").write_text(bundle.model_dump_json())
    assert JoinBundle.read(str(tmp_path / "b.txt")) == bundle
    assert JoinBundle.read(str(tmp_path / "b.json")) == bundle
    assert "PRIVATE KEY" not in json.dumps(bundle.model_dump())  # the CA's certificate only


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("nowhere.txt", "neither a join token"),
        ("dimjoin1:!!!", "not a dim join bundle"),
        ('{"nats_url": "nats://x:4222"}', "not a dim join bundle"),
    ],
)
def test_a_bad_bundle_is_refused_clearly(tmp_path: Path, given: str, said: str) -> None:
    if given.startswith("{"):
        (tmp_path / "b.json").write_text(given)
        given = str(tmp_path / "b.json")
    with pytest.raises(ValueError, match=said):
        JoinBundle.read(given)


def test_a_bundle_whose_ca_is_not_a_certificate_is_refused(tmp_path: Path) -> None:
    forged = _bundle(tmp_path).model_copy(update={"ca_pem": "not a certificate"})
    with pytest.raises(ValueError, match="not a PEM certificate"):
        JoinBundle.read(forged.token())


def test_no_bundle_without_a_security_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CA certificate"):
        make_bundle(NatsDir(tmp_path / "empty"), "nats://x:4222", "dim")


def test_a_joining_node_keeps_its_key_across_restarts(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    base = Settings(node_id="gpu-7", models=("llama",))
    first, me = join_settings(base, bundle, tmp_path / "node-data")
    _, same = join_settings(base, bundle, tmp_path / "node-data")
    assert me.public_key == same.public_key and me.public_key.startswith("U")
    assert me.seed_file.stat().st_mode & 0o077 == 0
    assert first.nats_url == "nats://gpu-head:4222" and first.namespace == "prod"
    assert first.nats_tls_hostname == "gpu-head"
    assert first.nats_nkey_seed == me.seed_file.resolve()
    assert first.nats_inbox_prefix == "_I.w-gpu-7"
    assert first.nats_tls_ca is not None and first.nats_tls_ca.read_text() == bundle.ca_pem
    kept, _ = join_settings(base, bundle, tmp_path / "node-data", keep_url=True)
    assert kept.nats_url == base.nats_url and kept.namespace == base.namespace
    assert approve_command("gpu-7", me.public_key, ("a", "b")) == (
        f"dim nodes approve gpu-7 {me.public_key} --models a,b"
    )


def test_an_approval_admits_the_key_as_that_node_only(tmp_path: Path) -> None:
    _, me = join_settings(Settings(node_id="gpu-7", models=("m",)), _bundle(tmp_path), tmp_path)
    d = NatsDir(tmp_path / "server")
    names = Settings().names
    d.approve("gpu-7", me.public_key, ("m",), by="admin")
    auth = d.write_auth(names).read_text()
    assert me.public_key in auth and "dim.tasks.node.gpu-7" in auth
    with pytest.raises(ValueError, match="already approved as node gpu-7"):
        d.approve("gpu-8", me.public_key, ("m",), by="admin")
    with pytest.raises(ValueError, match="not an NKey user public key"):
        d.approve("gpu-9", "UNOTAKEY", ("m",), by="admin")
    with pytest.raises(ValueError, match="name the models"):
        d.approve("gpu-7", me.public_key, (), by="admin")
    assert d.revoke("gpu-7") is not None and me.public_key not in d.write_auth(names).read_text()
