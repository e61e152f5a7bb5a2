"""Access tokens: JWTs signed with HS256 (a shared secret) or EdDSA (Ed25519, with a JWKS)."""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from events.errors import DimError
from gateway.principal import Principal
from services.settings import Settings

ISSUER = "dim"
AUDIENCE = "dim"


class TokenError(DimError, ValueError):
    """A token that is malformed, forged, expired, or names no live session."""


@dataclass(frozen=True)
class Signer:
    """Signs access tokens with the settings' key, naming it in the token's `kid`; verifies
    with the key its `kid` names: the current one, or one of the previous keys kept while
    tokens they signed may still be live (key rotation: docs/security.md)."""

    algorithm: str
    signing_key: Any
    key_id: str
    verifying_keys: dict[str, Any]  # kid -> key: the current one first, then previous ones
    ttl_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        """The signer the settings describe; raises with the fix when a key is missing."""
        if settings.jwt_algorithm == "HS256":
            if len(settings.jwt_secret) < 32:
                raise DimError(
                    "DIM_JWT_SECRET must be set to at least 32 characters for HS256 tokens"
                )
            secrets = [settings.jwt_secret, *settings.jwt_previous_secrets]
            keys = {_hs_kid(k): k for k in secrets}
            return cls(
                "HS256",
                settings.jwt_secret,
                _hs_kid(settings.jwt_secret),
                keys,
                settings.access_ttl_s,
            )
        if not settings.jwt_private_key:
            raise DimError(
                "DIM_JWT_PRIVATE_KEY (an Ed25519 private key, PEM) must be set for EdDSA tokens"
            )
        private = load_pem_private_key(settings.jwt_private_key.encode(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise DimError("DIM_JWT_PRIVATE_KEY must be an Ed25519 key for EdDSA")
        publics = [private.public_key(), *_public_keys(settings.jwt_previous_public_keys)]
        known: dict[str, Any] = {_ed_kid(k): k for k in publics}
        return cls("EdDSA", private, _ed_kid(publics[0]), known, settings.access_ttl_s)

    def issue(self, principal: Principal, session_id: str) -> str:
        """A signed access token for a session."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": principal.principal_id,
            "tid": principal.tenant,
            "roles": list(principal.roles),
            "sid": session_id,
            "iat": now,
            "exp": now + int(self.ttl_s),
        }
        return jwt.encode(
            claims, self.signing_key, algorithm=self.algorithm, headers={"kid": self.key_id}
        )

    def decode(
        self, token: str, *, audience: str, issuer: str, require: list[str]
    ) -> dict[str, Any]:
        """The claims of a token one of our keys signed, for `audience` from `issuer`; PyJWT's
        errors otherwise (`jwt.InvalidKeyError`: a key this gateway does not, or no longer,
        accept)."""
        kid = jwt.get_unverified_header(token).get("kid")
        key = self.verifying_keys.get(kid or self.key_id)
        if key is None:
            raise jwt.InvalidKeyError("signed by a key this gateway does not accept")
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[self.algorithm],
            audience=audience,
            issuer=issuer,
            options={"require": require},
        )
        return claims

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid, unexpired token of ours; `TokenError` otherwise."""
        try:
            return self.decode(
                token, audience=AUDIENCE, issuer=ISSUER, require=["exp", "sub", "sid", "tid"]
            )
        except jwt.InvalidKeyError:
            raise TokenError(
                "the access token is signed by a key this gateway no longer accepts; log in again"
            ) from None
        except jwt.ExpiredSignatureError:
            raise TokenError("the access token has expired; refresh it") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid access token: {exc}") from None

    def jwks(self) -> dict[str, Any]:
        """The public keys other services verify our tokens with, current and previous (none
        for HS256)."""
        if self.algorithm != "EdDSA":
            return {"keys": []}
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
                    "kid": kid,
                    "alg": "EdDSA",
                    "use": "sig",
                }
                for kid, key in self.verifying_keys.items()
            ]
        }


def _hs_kid(secret: str) -> str:
    """A shared secret's key id: a digest, so the id names the key without giving it away."""
    return "hs-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def _ed_kid(public: Ed25519PublicKey) -> str:
    return _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw)[:12])


def _public_keys(pems: str) -> list[Ed25519PublicKey]:
    """The Ed25519 public keys in `pems` (PEM blocks one after another)."""
    out: list[Ed25519PublicKey] = []
    marker = "-----END PUBLIC KEY-----"
    for block in pems.split(marker):
        if not block.strip():
            continue
        key = load_pem_public_key((block.strip() + "\n" + marker + "\n").encode())
        if not isinstance(key, Ed25519PublicKey):
            raise DimError("DIM_JWT_PREVIOUS_PUBLIC_KEYS must hold Ed25519 public keys (PEM)")
        out.append(key)
    return out


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
