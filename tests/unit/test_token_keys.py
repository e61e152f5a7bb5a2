"""Rotating the access-token key: a token names its key (`kid`); the previous keys, kept for as
long as their tokens live, still verify; a key dropped stops its tokens."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gateway.principal import Principal
from gateway.tokens import Signer, TokenError
from services.settings import Settings

OLD, NEW = "o" * 40, "n" * 40
ANN = Principal("ann", "acme", ("member",))


def _hs(secret: str, *previous: str) -> Signer:
    return Signer.from_settings(Settings(jwt_secret=secret, jwt_previous_secrets=previous))


def test_a_token_of_the_previous_secret_verifies_while_that_secret_is_kept() -> None:
    token = _hs(OLD).issue(ANN, "s1")
    assert _hs(NEW, OLD).verify(token)["sub"] == "ann"
    with pytest.raises(TokenError, match="no longer accepts"):
        _hs(NEW).verify(token)  # the old secret dropped: its tokens stop
    assert _hs(NEW, OLD).key_id != _hs(OLD).key_id and OLD not in _hs(OLD).key_id


def test_a_token_naming_a_kept_key_but_signed_by_another_is_refused() -> None:
    forged = _hs("f" * 40).issue(ANN, "s1")
    kid = _hs(OLD).key_id

    claims = jwt.decode(forged, options={"verify_signature": False})
    relabelled = jwt.encode(claims, "f" * 40, algorithm="HS256", headers={"kid": kid})
    with pytest.raises(TokenError, match="invalid access token"):
        _hs(NEW, OLD).verify(relabelled)


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def test_eddsa_keeps_previous_public_keys_and_publishes_them() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old_public = old.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    before = Signer.from_settings(Settings(jwt_algorithm="EdDSA", jwt_private_key=_pem(old)))
    after = Signer.from_settings(
        Settings(
            jwt_algorithm="EdDSA",
            jwt_private_key=_pem(new),
            jwt_previous_public_keys=old_public.decode(),
        )
    )
    token = before.issue(ANN, "s1")
    assert after.verify(token)["sid"] == "s1"
    assert [k["kid"] for k in after.jwks()["keys"]] == [after.key_id, before.key_id]
    assert after.verify(after.issue(ANN, "s2"))["sid"] == "s2"
