"""NatsAuth's checks, URL redaction, and secrets kept out of `dim settings`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from events.connection import NatsAuth, redact_url
from events.errors import NatsAuthError
from services.cli import main
from services.nats_tls import server_tls
from services.settings import Settings
from tests.secured_nats import new_user_seed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://alice:s3cret@127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://tok3n@h:4222", "nats://h:4222"),
        ("alice:s3cret@h:4222", "h:4222"),
        ("nats://a:p@ss@h1:4222,tls://b:q@h2:4222", "nats://h1:4222,tls://h2:4222"),
        ("nats://a:b@[::1]:4222/x@y", "nats://[::1]:4222/x@y"),
    ],
)
def test_urls_are_shown_without_user_info(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"user": "alice"}, "DIM_NATS_PASSWORD"),
        ({"password": "pw"}, "DIM_NATS_USER"),
        ({"tls_cert": Path("c.pem")}, "DIM_NATS_TLS_KEY"),
        ({"creds": Path("a.creds"), "nkey_seed": Path("s.nk")}, "DIM_NATS_NKEY_SEED"),
    ],
)
def test_half_set_credentials_are_refused_naming_the_setting(
    given: dict[str, object], named: str
) -> None:
    with pytest.raises(NatsAuthError, match=named):
        NatsAuth(**given)  # type: ignore[arg-type]


def test_a_missing_file_is_named_before_any_dialling(tmp_path: Path) -> None:
    with pytest.raises(NatsAuthError, match="DIM_NATS_NKEY_SEED"):
        NatsAuth(nkey_seed=tmp_path / "absent.nk").connect_options()
    with pytest.raises(NatsAuthError, match="DIM_NATS_TLS_CA"):
        NatsAuth(tls_ca=tmp_path / "absent.pem").connect_options()
    junk = tmp_path / "junk"
    junk.write_text("SUnot-a-seed\n")
    with pytest.raises(NatsAuthError, match="DIM_NATS_TLS_CA"):
        NatsAuth(tls_ca=junk).connect_options()
    with pytest.raises(NatsAuthError, match="DIM_NATS_NKEY_SEED") as err:
        NatsAuth(nkey_seed=junk).connect_options()
    assert "not-a-seed" not in str(err.value)
    with pytest.raises(NatsAuthError, match="DIM_NATS_CREDS"):  # nats-py would loop for ever
        NatsAuth(creds=junk).connect_options()


def test_options_map_onto_nats_py(tmp_path: Path) -> None:
    files = server_tls(tmp_path)
    seed = tmp_path / "user.nk"
    seed.write_bytes(new_user_seed() + b"\n")
    options = NatsAuth(
        nkey_seed=seed, tls_ca=files.ca_cert, tls_hostname="nats.example"
    ).connect_options()
    assert options["nkeys_seed"] == str(seed)
    assert options["tls_hostname"] == "nats.example"
    assert options["tls"].check_hostname
    assert NatsAuth(user="u", password="p").connect_options() == {"user": "u", "password": "p"}
    assert NatsAuth().connect_options() == {}


def test_the_password_is_never_in_a_repr() -> None:
    assert "hunter2" not in repr(NatsAuth(user="alice", password="hunter2"))
    settings = Settings(nats_user="alice", nats_password=SecretStr("hunter2"))
    assert "hunter2" not in repr(settings)
    assert settings.nats_auth.password == "hunter2"


def test_settings_give_children_the_real_password(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(nats_user="alice", nats_password=SecretStr("hunter2"))
    env = original.to_env()
    assert env["DIM_NATS_PASSWORD"] == "hunter2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_half_set_credentials_in_settings_are_named_and_not_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIM_NATS_PASSWORD", "hunter2")
    with pytest.raises(NatsAuthError, match="DIM_NATS_USER") as err:
        Settings().nats_auth  # noqa: B018
    assert "hunter2" not in str(err.value)
    assert main(["jobs", "--nats-url", "nats://127.0.0.1:1"]) == 1
    said = capsys.readouterr().err
    assert "DIM_NATS_USER" in said
    assert "hunter2" not in said
    monkeypatch.setenv("DIM_NATS_PASSWORD", "")  # empty is unset
    assert Settings().nats_auth == NatsAuth()


@pytest.mark.parametrize("prefix", ["", "_INBOX.>", "a..b", "has space", "x.*"])
def test_bad_inbox_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="nats_inbox_prefix"):
        Settings(nats_inbox_prefix=prefix)


def test_dim_settings_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DIM_NATS_URL", "nats://alice:url-secret@127.0.0.1:4222")
    monkeypatch.setenv("DIM_NATS_USER", "alice")
    monkeypatch.setenv("DIM_NATS_PASSWORD", "hunter2")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "url-secret" not in out
    password_row = next(line for line in out.splitlines() if "DIM_NATS_PASSWORD" in line)
    assert "********" in password_row
    url_row = next(line for line in out.splitlines() if line.startswith("DIM_NATS_URL"))
    assert "nats://127.0.0.1:4222" in url_row
