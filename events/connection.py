"""Dialling NATS: who this process is to the server, how it checks the server, and what it says
when the connection cannot be made.

`NatsAuth` holds what nats-py is handed: a credentials file (user JWT + NKey seed) or an NKey
seed file, or a user and password; a CA to verify the server's TLS certificate with, and a client
certificate to present. `dial` connects with it; its `ConnectError` names the cause and the fix,
never a password: `redact_url` takes the ``user:password@`` out of a URL before it is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import nats.errors
import nkeys  # type: ignore[import-untyped]
from nats.aio.client import Client

from events.errors import ConnectError, CredentialsRefused, NatsAuthError

log = logging.getLogger(__name__)

DEFAULT_INBOX_PREFIX = "_INBOX"  # nats-py's: reply subjects are <prefix>.<unique>

# The user-info part of each URL in a comma-separated list: everything up to the last "@" before
# the host (greedy, so a password holding an unescaped "@" goes too).
_USERINFO = re.compile(r"(^|,|//)[^/,]*@")


def redact_url(url: str) -> str:
    """`url` (one or several, comma-separated) without any ``user:password@`` or ``token@``."""
    return _USERINFO.sub(r"\1", url)


def _readable(path: Path, setting: str, what: str) -> str:
    if not path.is_file():
        raise NatsAuthError(f"{what} {path} does not exist or is not a file; fix {setting}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise NatsAuthError(f"cannot read {what} {path}: {exc.strerror}; fix {setting}") from None
    return str(path)


def _creds_file(path: Path) -> str:
    name = _readable(path, "DIM_NATS_CREDS", "NATS credentials file")
    text = path.read_bytes()
    # nats-py reads a file without its JWT marker line by line for ever, at every connect.
    if b"BEGIN NATS USER JWT" not in text or b"BEGIN USER NKEY SEED" not in text:
        raise NatsAuthError(
            f"{name} is not a NATS credentials file (a user JWT and its NKey seed, as "
            "`nsc generate creds` writes one); fix DIM_NATS_CREDS"
        )
    return name


def _seed_file(path: Path) -> str:
    name = _readable(path, "DIM_NATS_NKEY_SEED", "NKey seed")
    try:
        nkeys.from_seed(bytearray(path.read_bytes().strip())).wipe()
    except Exception:  # whatever it is, it is not shown: it may be most of a secret
        raise NatsAuthError(
            f"{name} does not hold an NKey user seed (one line, SU...); fix DIM_NATS_NKEY_SEED"
        ) from None
    return name


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """A process's NATS identity and TLS trust; every field optional (none: anonymous, plain)."""

    creds: Path | None = None  # a .creds file: user JWT and NKey seed (operator/JWT mode)
    nkey_seed: Path | None = None  # a file holding a user NKey seed ("SU...")
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None  # PEM CA(s) the server's certificate must chain to
    tls_cert: Path | None = None  # PEM client certificate, for servers that verify clients
    tls_key: Path | None = None  # its private key
    tls_hostname: str | None = None  # name the server's certificate must carry, if not the URL's

    def __post_init__(self) -> None:
        if self.creds is not None and self.nkey_seed is not None:
            raise NatsAuthError(
                "both a credentials file and an NKey seed are set; a credentials file already "
                "holds the seed: unset DIM_NATS_NKEY_SEED or DIM_NATS_CREDS"
            )
        if (self.user is None) != (self.password is None):
            raise NatsAuthError(
                "a NATS user needs a password and a password a user: set both "
                "DIM_NATS_USER and DIM_NATS_PASSWORD, or neither"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise NatsAuthError(
                "a client certificate needs its key and a key its certificate: set both "
                "DIM_NATS_TLS_CERT and DIM_NATS_TLS_KEY, or neither"
            )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a message or a log line."""
        return (self.password,) if self.password else ()

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for the connection: the server verified against `tls_ca` (else the system's CAs),
        `tls_cert` presented; None when no TLS file is set (nats-py then verifies a server that
        asks for TLS against the system's CAs)."""
        if self.tls_ca is None and self.tls_cert is None:
            return None
        ca = None if self.tls_ca is None else _readable(self.tls_ca, "DIM_NATS_TLS_CA", "TLS CA")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        except ssl.SSLError as exc:
            raise NatsAuthError(
                f"the TLS CA {self.tls_ca} holds no usable PEM certificate ({exc.reason}); "
                "fix DIM_NATS_TLS_CA"
            ) from None
        if self.tls_cert is not None and self.tls_key is not None:
            cert = _readable(self.tls_cert, "DIM_NATS_TLS_CERT", "client certificate")
            key = _readable(self.tls_key, "DIM_NATS_TLS_KEY", "client key")
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise NatsAuthError(
                    f"the client certificate {cert} and key {key} cannot be used together "
                    f"({exc.reason}); fix DIM_NATS_TLS_CERT and DIM_NATS_TLS_KEY"
                ) from None
        return context

    def connect_options(self) -> dict[str, Any]:
        """These settings as `nats.connect` keyword arguments; files are checked readable here,
        so a wrong path is reported as such rather than as an unreachable server."""
        options: dict[str, Any] = {}
        if self.creds is not None:
            options["user_credentials"] = _creds_file(self.creds)
        if self.nkey_seed is not None:
            options["nkeys_seed"] = _seed_file(self.nkey_seed)
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        if self.tls_hostname:
            options["tls_hostname"] = self.tls_hostname
        return options


async def dial(
    url: str,
    *,
    name: str,
    auth: NatsAuth,
    inbox_prefix: str = DEFAULT_INBOX_PREFIX,
    connect_timeout_s: float = 5.0,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """A client connected to one of `url`'s servers as `auth` says, reconnecting forever from
    then on; replies come to subjects under `inbox_prefix`."""
    secrets = (*auth.secrets, *_url_secrets(url))
    options = auth.connect_options()  # a bad file is a NatsAuthError, before any dialling
    phase = "connecting"
    failures: list[Exception] = []
    refusals = 0  # in a row, since the last connect: said once, not at every retry

    async def error_cb(exc: Exception) -> None:
        nonlocal refusals
        if phase == "connected" and _refused(exc):
            refusals += 1
            if refusals == 1:
                log.error(
                    "nats: the server no longer admits this client (%s): its key was revoked or "
                    "replaced; trying again until it is admitted",
                    _scrub(str(exc), secrets),
                )
        elif phase == "connected":
            log.warning("nats: %s", _scrub(str(exc), secrets))
        elif phase == "connecting":  # the bounded connect below reports one clear error
            failures.append(exc)
            if _refused(exc):  # trying again cannot help: leave nats-py's connect loop now
                raise _Refused from exc

    async def reconnected_cb() -> None:
        nonlocal refusals
        refusals = 0
        log.info("nats: reconnected to %s", _server_of(nc))
        if on_reconnect is not None:
            await on_reconnect()

    servers = [s.strip() for s in url.split(",") if s.strip()]
    nc = Client()
    options.update(
        name=name,
        connect_timeout=connect_timeout_s,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        # A server that stops answering (paused, partitioned) is left within ~10 s for another
        # in the URL list, not after nats-py's default 4 minutes.
        ping_interval=5,
        max_outstanding_pings=2,
        allow_reconnect=True,
        error_cb=error_cb,
        reconnected_cb=reconnected_cb,
        inbox_prefix=inbox_prefix,
    )
    try:
        # Reconnect forever once connected, but bound the first connect: nats-py would otherwise
        # retry an unreachable server for ever.
        await asyncio.wait_for(nc.connect(servers, **options), timeout=connect_timeout_s)
    except Exception as exc:
        phase = "failed"
        # The failed attempt's socket and tasks. Bounded: after a failed TLS handshake nats-py
        # waits for the plain stream's end, which never comes (the socket is closed already).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=min(0.25, connect_timeout_s))
        cause: BaseException = exc
        if isinstance(exc, _Refused) and exc.__cause__ is not None:
            cause = exc.__cause__
        elif isinstance(exc, TimeoutError) and failures:  # the last try's own error
            cause = failures[-1]
        reason = _why(cause, connect_timeout_s, secrets)
        leaks = any(secret in repr(cause) for secret in secrets)
        head = "cannot connect to" if _refused(cause) else "cannot reach"
        error = CredentialsRefused if _refused(cause) and _not_tls(cause) else ConnectError
        raise error(f"{head} NATS at {redact_url(url)}: {reason}") from (None if leaks else cause)
    phase = "connected"
    return nc


# Server answers that mean this client's credentials are not accepted: trying again cannot help.
_REFUSALS = ("authorization violation", "authentication expired", "authentication revoked")


class _Refused(Exception):
    """Raised from the error callback to leave nats-py's connect loop (the cause says why)."""


def _refused(exc: BaseException) -> bool:
    """Whether `exc` means the server will never take this client as configured."""
    if isinstance(exc, nats.errors.AuthorizationError | ssl.SSLCertVerificationError):
        return True
    return isinstance(exc, nats.errors.Error) and any(r in str(exc).lower() for r in _REFUSALS)


def _not_tls(exc: BaseException) -> bool:
    return not isinstance(exc, ssl.SSLError)


def _why(exc: BaseException, timeout_s: float, secrets: tuple[str, ...]) -> str:
    """What went wrong connecting, and what to do about it (no secret shown)."""
    said = _scrub(str(exc), secrets)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the server's TLS certificate is not trusted ({_scrub(exc.verify_message, secrets)}); "
            "set DIM_NATS_TLS_CA to the CA that signed it (and DIM_NATS_TLS_HOSTNAME if the "
            "certificate names the server otherwise than the URL)"
        )
    if _refused(exc):
        return (
            f"the server refused this client's credentials ({said}); check DIM_NATS_CREDS, "
            "DIM_NATS_NKEY_SEED, or DIM_NATS_USER and DIM_NATS_PASSWORD"
        )
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s}s; is nats-server running? `dim up` starts one"
    return (
        f"{type(exc).__name__}: {said}; is nats-server running? `dim up` starts one, or set "
        "DIM_NATS_URL"
    )


def _url_secrets(url: str) -> tuple[str, ...]:
    """The passwords (or, with none, the tokens) written into a NATS URL list."""
    found: list[str] = []
    for server in url.split(","):
        server = server.strip()
        try:
            parts = urlsplit(server if "//" in server else f"nats://{server}")
        except ValueError:
            continue  # not a URL nats-py can use either
        secret = parts.password or parts.username
        if secret:
            found += {secret, unquote(secret)}
    return tuple(found)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret in it masked."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _server_of(nc: Client) -> str:
    url = nc.connected_url
    return "?" if url is None else f"{url.hostname}:{url.port}"
