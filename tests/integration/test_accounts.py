"""Accounts and sessions through the gateway, against real NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from litestar.testing import AsyncTestClient

from events.bus import Bus
from events.history import read_events
from gateway.app import create_app
from gateway.limits import WINDOW_S
from services import accounts
from services.settings import Settings
from tests.mesh import wait_until

PASSWORD = "correct horse battery"


@pytest.fixture
async def admin(bus: Bus) -> str:
    """An admin account of tenant acme, made the way `dim admin create` makes it."""
    await accounts.register(
        bus, email="root@acme.test", password=PASSWORD, tenant="acme", roles=("admin",), by="cli"
    )
    return "root@acme.test"


@pytest.fixture
async def client(settings: Settings, admin: str) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def _login(c: AsyncTestClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    r = await c.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_login_me_logout(bus: Bus, client: AsyncTestClient, admin: str) -> None:
    root = await _login(client, admin)
    assert root["token_type"] == "bearer" and root["expires_in"] == 900
    made = await client.post(
        "/v1/auth/register",
        headers=_bearer(root["access_token"]),
        json={"email": "ann@acme.test", "password": PASSWORD},
    )
    assert (
        made.status_code == 201
        and made.json()["tenant"] == "acme"
        and made.json()["roles"] == ["member"]
    )
    ann = await _login(client, "ann@acme.test")
    me = (await client.get("/v1/me", headers=_bearer(ann["access_token"]))).json()
    assert me["principal_id"] == made.json()["principal_id"] and me["tenant"] == "acme"
    assert me["authenticated_by"] == "session" and me["roles"] == ["member"]
    claims = jwt.decode(ann["access_token"], options={"verify_signature": False})
    assert (
        claims["tid"] == "acme"
        and claims["roles"] == ["member"]
        and claims["sid"] == me["session_id"]
    )

    assert (
        await client.post("/v1/auth/logout", headers=_bearer(ann["access_token"]))
    ).status_code == 204
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def refused() -> bool:
        r = await client.get("/v1/me", headers=_bearer(ann["access_token"]))
        return r.status_code == 401 and r.json()["error"]["code"] == "session_ended"

    await wait_until(refused, timeout_s=1, what="the logged-out token to be refused")
    assert loop.time() - start < 1
    refresh = await client.post("/v1/auth/refresh", json={"refresh_token": ann["refresh_token"]})
    assert refresh.status_code == 401
    types = [
        e.type
        async for _, e in read_events(bus, bus.names.accounts_stream, f"{bus.names.ns}.accounts.>")
    ]
    assert {"user.registered", "session.opened", "session.closed"} <= set(types)


async def test_bad_credentials_and_registration_rules(client: AsyncTestClient, admin: str) -> None:
    wrong = await client.post("/v1/auth/login", json={"email": admin, "password": "nope-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    nobody = await client.post(
        "/v1/auth/login", json={"email": "ghost@x.test", "password": PASSWORD}
    )
    assert (
        nobody.status_code == 401
        and nobody.json()["error"]["message"] == wrong.json()["error"]["message"]
    )
    closed = await client.post(
        "/v1/auth/register", json={"email": "x@y.test", "password": PASSWORD}
    )
    assert closed.status_code == 403 and closed.json()["error"]["code"] == "registration_closed"
    root = await _login(client, admin)
    auth = _bearer(root["access_token"])
    taken = await client.post(
        "/v1/auth/register", headers=auth, json={"email": admin, "password": PASSWORD}
    )
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "email_taken"
    weak = await client.post(
        "/v1/auth/register", headers=auth, json={"email": "w@acme.test", "password": "short"}
    )
    assert weak.status_code == 400 and weak.json()["error"]["param"] == "password"
    await client.post(
        "/v1/auth/register", headers=auth, json={"email": "m@acme.test", "password": PASSWORD}
    )
    member = await _login(client, "m@acme.test")
    by_member = await client.post(
        "/v1/auth/register",
        headers=_bearer(member["access_token"]),
        json={"email": "z@acme.test", "password": PASSWORD},
    )
    assert by_member.status_code == 403


async def test_refresh_rotates_and_a_reused_token_closes_the_session(
    client: AsyncTestClient, admin: str
) -> None:
    first = await _login(client, admin)
    second = (
        await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    ).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/v1/me", headers=_bearer(second["access_token"]))).status_code == 200
    replay = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and "already used" in replay.json()["error"]["message"]

    async def closed() -> bool:  # the theft response closed the session for everyone
        return (
            await client.get("/v1/me", headers=_bearer(second["access_token"]))
        ).status_code == 401

    await wait_until(closed, timeout_s=1, what="the session to close")


async def test_forged_and_expired_tokens_are_refused(settings: Settings, admin: str) -> None:
    quick = settings.model_copy(update={"access_ttl_s": 1.0})
    async with AsyncTestClient(app=create_app(quick)) as c:
        pair = await _login(c, admin)
        claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
        forged = jwt.encode(
            claims | {"roles": ["admin"], "tid": "globex"}, "not-the-secret-" * 3, algorithm="HS256"
        )
        r = await c.get("/v1/me", headers=_bearer(forged))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        none_alg = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
        assert (await c.get("/v1/me", headers=_bearer(none_alg))).status_code == 401
        assert (await c.get("/v1/me", headers=_bearer(pair["access_token"]))).status_code == 200
        await asyncio.sleep(2.1)
        expired = await c.get("/v1/me", headers=_bearer(pair["access_token"]))
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


async def test_an_admin_revokes_a_users_session(client: AsyncTestClient, admin: str) -> None:
    root = await _login(client, admin)
    await client.post(
        "/v1/auth/register",
        headers=_bearer(root["access_token"]),
        json={"email": "u@acme.test", "password": PASSWORD},
    )
    user = await _login(client, "u@acme.test")
    sid = (await client.get("/v1/me", headers=_bearer(user["access_token"]))).json()["session_id"]
    denied = await client.delete(f"/v1/sessions/{sid}", headers=_bearer(user["access_token"]))
    assert denied.status_code == 403
    assert (
        await client.delete(f"/v1/sessions/{sid}", headers=_bearer(root["access_token"]))
    ).status_code == 204

    async def refused() -> bool:
        return (
            await client.get("/v1/me", headers=_bearer(user["access_token"]))
        ).status_code == 401

    await wait_until(refused, timeout_s=1, what="the revoked session's token to be refused")


async def test_eddsa_tokens_verify_with_the_published_jwks(settings: Settings, admin: str) -> None:
    pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        .decode()
    )
    eddsa = settings.model_copy(update={"jwt_algorithm": "EdDSA", "jwt_private_key": pem})
    async with AsyncTestClient(app=create_app(eddsa)) as c:
        pair = await _login(c, admin)
        jwks = (await c.get("/.well-known/jwks.json")).json()
        assert [k["kty"] for k in jwks["keys"]] == ["OKP"]
        # Another service verifies the token with nothing but the JWKS.
        key = jwt.PyJWK(jwks["keys"][0])
        claims = jwt.decode(pair["access_token"], key.key, algorithms=["EdDSA"], audience="dim")
        assert (
            claims["tid"] == "acme"
            and jwt.get_unverified_header(pair["access_token"])["kid"] == jwks["keys"][0]["kid"]
        )
        assert (await c.get("/v1/me", headers=_bearer(pair["access_token"]))).status_code == 200


async def test_a_wrong_refresh_token_does_not_end_the_session(
    client: AsyncTestClient, admin: str
) -> None:
    """Whoever knows a session id (it is in every access token) but not its refresh token is
    refused, and the session goes on; a malformed token is a 401, never a 500."""
    mine = await _login(client, admin)
    session_id = mine["refresh_token"].partition(".")[0]
    for wrong in (f"{session_id}.guessed", "é.x", "a*.x", ".", "x" * 500):
        r = await client.post("/v1/auth/refresh", json={"refresh_token": wrong})
        assert r.status_code == 401, (wrong, r.text)
        assert r.json()["error"]["code"] == "invalid_refresh_token"
    assert (await client.get("/v1/me", headers=_bearer(mine["access_token"]))).status_code == 200
    again = await client.post("/v1/auth/refresh", json={"refresh_token": mine["refresh_token"]})
    assert again.status_code == 200, again.text


async def test_a_session_lives_no_longer_than_its_cap_however_often_refreshed(
    bus: Bus, admin: str
) -> None:
    _, token = await accounts.login(bus, email=admin, password=PASSWORD, ttl_s=3600)
    session, token = await accounts.refresh(bus, token, ttl_s=3600, max_s=60)
    assert (session.expires_at - session.created_at).total_seconds() <= 60
    session, _ = await accounts.refresh(bus, token, ttl_s=3600, max_s=60)
    assert (session.expires_at - session.created_at).total_seconds() <= 60


async def test_guessing_passwords_is_rate_limited_per_account(
    client: AsyncTestClient, admin: str, settings: Settings
) -> None:
    """The probe got 40 fast 401s for 40 wrong passwords; now the account's budget ends it
    (`DIM_AUTH_RPM` a minute), before any password is checked."""
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 5:  # counts are per minute: do not straddle two
        await asyncio.sleep(left + 0.1)
    codes = []
    for _ in range(settings.auth_rpm + 2):
        r = await client.post("/v1/auth/login", json={"email": admin, "password": "wrong guess"})
        codes.append(r.status_code)
    assert codes[: settings.auth_rpm] == [401] * settings.auth_rpm
    assert codes[settings.auth_rpm :] == [429, 429]
    assert r.headers["retry-after"]
    # another account from the same address still gets its own tries
    other = await client.post(
        "/v1/auth/login", json={"email": "nobody@acme.test", "password": "wrong guess"}
    )
    assert other.status_code == 401
