"""`Bus.connect` with an NKey, a password, TLS and an inbox prefix, against real nats-servers
configured to demand them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.bus import Bus
from events.connection import NatsAuth
from events.errors import ConnectError
from events.subjects import Names
from services.nats_tls import server_tls
from tests.secured_nats import ConfiguredNats, new_user_seed, public_key

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nkey") / "user.nk"
    path.write_bytes(new_user_seed() + b"\n")
    path.chmod(0o600)
    return path


def _started(server: ConfiguredNats) -> Iterator[str]:
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def users_url(tmp_path_factory: pytest.TempPathFactory, seed_file: Path) -> Iterator[str]:
    """A server that takes an NKey user, a password user, and a user confined to its own
    inbox prefix; nobody else."""
    public = public_key(seed_file.read_bytes())
    confined = '{ publish: ">", subscribe: "_INBOX_w.>" }'
    extra = (
        "authorization {\n"
        "  users = [\n"
        f"    {{ nkey: {public} }}\n"
        f'    {{ user: alice, password: "{PASSWORD}" }}\n'
        f'    {{ user: worker, password: "{PASSWORD}", permissions: {confined} }}\n'
        "  ]\n"
        "}\n"
    )
    yield from _started(ConfiguredNats(tmp_path_factory.mktemp("nats-users"), extra))


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[str]:
    """A server that speaks TLS only, with a certificate from `server_tls`."""
    files = server_tls(tls_dir)
    extra = f'tls {{\n  cert_file: "{files.server_cert}"\n  key_file: "{files.server_key}"\n}}\n'
    yield from _started(ConfiguredNats(tmp_path_factory.mktemp("nats-tls"), extra))


NAMES = Names("creds")


async def _works(bus: Bus) -> None:
    """A JetStream request (publish, and a reply on the inbox) goes through."""
    try:
        await bus.js.account_info()
    finally:
        await bus.close()


async def test_an_nkey_user_connects_and_an_anonymous_client_is_refused(
    users_url: str, seed_file: Path
) -> None:
    await _works(await Bus.connect(users_url, NAMES, auth=NatsAuth(nkey_seed=seed_file)))
    started = time.monotonic()
    with pytest.raises(ConnectError, match="refused this client's credentials") as err:
        await Bus.connect(users_url, NAMES, connect_timeout_s=5)
    assert time.monotonic() - started < 3  # refused at once, not retried until the timeout
    assert "Authorization Violation" in str(err.value)


async def test_a_password_user_connects_and_a_wrong_password_is_never_shown(
    users_url: str,
) -> None:
    await _works(
        await Bus.connect(users_url, NAMES, auth=NatsAuth(user="alice", password=PASSWORD))
    )
    wrong = NatsAuth(user="alice", password="not-the-password")
    with pytest.raises(ConnectError, match="refused this client's credentials") as err:
        await Bus.connect(users_url, NAMES, auth=wrong)
    assert "not-the-password" not in str(err.value)
    assert "DIM_NATS_PASSWORD" in str(err.value)
    in_url = users_url.replace("nats://", "nats://alice:wrong-in-url@")
    with pytest.raises(ConnectError) as err:
        await Bus.connect(in_url, NAMES)
    assert "wrong-in-url" not in str(err.value)
    assert "alice:" not in str(err.value)
    assert users_url in str(err.value)


async def test_replies_come_under_the_inbox_prefix(users_url: str) -> None:
    worker = NatsAuth(user="worker", password=PASSWORD)
    await _works(await Bus.connect(users_url, NAMES, auth=worker, inbox_prefix="_INBOX_w"))
    bus = await Bus.connect(users_url, NAMES, auth=worker, publish_timeout_s=0.5)
    try:
        with pytest.raises(Exception, match="[Tt]imeout"):  # not allowed to hear replies on _INBOX
            await bus.js.account_info()
    finally:
        await bus.close()


async def test_tls_with_the_generated_ca(tls_url: str, tls_dir: Path) -> None:
    files = server_tls(tls_dir)  # the same files: kept
    await _works(await Bus.connect(tls_url, NAMES, auth=NatsAuth(tls_ca=files.ca_cert)))
    with pytest.raises(ConnectError, match="DIM_NATS_TLS_CA") as err:
        await Bus.connect(tls_url, NAMES)
    assert "not trusted" in str(err.value)
    named_otherwise = NatsAuth(tls_ca=files.ca_cert, tls_hostname="elsewhere.example")
    with pytest.raises(ConnectError, match="not trusted"):
        await Bus.connect(tls_url, NAMES, auth=named_otherwise)
