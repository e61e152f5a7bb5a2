"""`dim nats-config`: a production nats-server's security directory, and what to do with it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.cli import main as dim
from services.nats_auth import ROLES, inbox_prefix


def test_it_writes_identities_tls_and_auth_and_says_who_gets_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nats"
    assert (
        dim(["nats-config", "--out", str(out), "--host", "nats.example", "--namespace", "p"]) == 0
    )
    printed = capsys.readouterr().out
    auth = (out / "auth.conf").read_text()
    for role in ROLES:
        seed = out / "ids" / f"{role}.nk"
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
        assert f"DIM_NATS_NKEY_SEED={seed.resolve()}" in printed
        assert f"DIM_NATS_INBOX_PREFIX={inbox_prefix(role)}" in printed
    assert auth.count('"nkey"') == len(ROLES)
    assert '"p.tasks.model.>"' in auth  # the namespace asked for
    assert f"DIM_NATS_TLS_CA={(out / 'tls' / 'ca.pem').resolve()}" in printed
    assert "dim nodes approve" in printed
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        assert (out / "tls" / name).exists()


def test_running_it_again_keeps_the_keys_and_the_ca(tmp_path: Path) -> None:
    args = ["nats-config", "--out", str(tmp_path), "--host", "nats.example"]
    assert dim(args) == 0
    before = {p: p.read_bytes() for p in [*tmp_path.glob("ids/*.nk"), tmp_path / "tls" / "ca.pem"]}
    auth = (tmp_path / "auth.conf").read_text()
    assert dim(args) == 0
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "auth.conf").read_text() == auth


def test_a_host_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        dim(["nats-config", "--out", str(tmp_path)])
    assert dim(["nats-config", "--out", str(tmp_path), "--host", " "]) == 1
    assert "--host" in capsys.readouterr().err
