"""Access tokens: JWTs signed with HS256 (a shared secret) or EdDSA (Ed25519, with a JWKS)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
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
    """Signs and verifies access tokens with the settings' key."""

    algorithm: str
    signing_key: Any
    verifying_key: Any
    key_id: str
    ttl_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        """The signer the settings describe; raises with the fix when a key is missing."""
        if settings.jwt_algorithm == "HS256":
            if len(settings.jwt_secret) < 32:
                raise DimError(
                    "DIM_JWT_SECRET must be set to at least 32 characters for HS256 tokens"
                )
            return cls(
                "HS256", settings.jwt_secret, settings.jwt_secret, "hs256", settings.access_ttl_s
            )
        if not settings.jwt_private_key:
            raise DimError(
                "DIM_JWT_PRIVATE_KEY (an Ed25519 private key, PEM) must be set for EdDSA tokens"
            )
        private = load_pem_private_key(settings.jwt_private_key.encode(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise DimError("DIM_JWT_PRIVATE_KEY must be an Ed25519 key for EdDSA")
        public = private.public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        kid = base64.urlsafe_b64encode(raw[:12]).decode().rstrip("=")
        return cls("EdDSA", private, public, kid, settings.access_ttl_s)

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

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid, unexpired token of ours; `TokenError` otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.verifying_key,
                algorithms=[self.algorithm],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "sid", "tid"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the access token has expired; refresh it") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid access token: {exc}") from None
        return claims

    def jwks(self) -> dict[str, Any]:
        """The public keys other services verify our tokens with (none for HS256)."""
        if self.algorithm != "EdDSA":
            return {"keys": []}
        raw = self.verifying_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": x,
                    "kid": self.key_id,
                    "alg": "EdDSA",
                    "use": "sig",
                }
            ]
        }
