"""User accounts: registered once, checked at every login.

Accounts live in the accounts bucket keyed by a hash of the email, passwords hashed with
argon2id (memory-hard)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict

from events.accounts import Role, UserRegistered
from events.bus import Bus
from events.errors import WrongLastSequence
from events.ids import new_id
from services.accounts.digest import sha256_hex
from services.accounts.errors import (
    EmailTaken,
    InvalidCredentials,
    PasswordChecksBusy,
    WeakPassword,
)
from services.accounts.journal import record as record_event

_hasher = PasswordHasher()
# Verifying against this when the email is unknown keeps login time the same either way.
_DUMMY = _hasher.hash("not a password of anyone")

# argon2id takes tens of milliseconds of CPU and 64 MiB by design: off the event loop, in a
# pool of its own (argon2-cffi releases the GIL), with a bound on what may wait for it.
HASHING_THREADS = 2
HASHING_QUEUE = 32
_pool = ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="argon2")
_pending = 0
T = TypeVar("T")


async def _hashing(fn: Callable[[], T]) -> T:
    """`fn()` (an argon2 hash or check) in the hashing pool; `PasswordChecksBusy` when more than
    `HASHING_QUEUE` are waiting already."""
    global _pending
    if _pending >= HASHING_THREADS + HASHING_QUEUE:
        raise PasswordChecksBusy("too many password checks at once; try again in a moment")
    _pending += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, fn)
    finally:
        _pending -= 1


class AccountRecord(BaseModel):
    """One user in the accounts bucket."""

    model_config = ConfigDict(frozen=True)

    principal_id: str
    email: str
    password_hash: str
    tenant: str
    roles: tuple[Role, ...]
    created_at: datetime


def email_key(email: str) -> str:
    """The accounts-bucket key of an email address (case-insensitive)."""
    return sha256_hex(email.strip().lower())


async def register(
    bus: Bus, *, email: str, password: str, tenant: str, roles: tuple[Role, ...], by: str
) -> AccountRecord:
    """Create an account; `WeakPassword` if the password is short, `EmailTaken` if the email is."""
    if len(password) < 8:
        raise WeakPassword("the password must have at least 8 characters")
    record = AccountRecord(
        principal_id=f"u-{new_id()}",
        email=email.strip(),
        password_hash=await _hashing(lambda: _hasher.hash(password)),
        tenant=tenant,
        roles=roles,
        created_at=datetime.now(UTC),
    )
    bucket = await bus.bucket("accounts")
    try:
        await bucket.create(email_key(email), record.model_dump_json().encode())
    except WrongLastSequence:
        raise EmailTaken("an account with this email exists") from None
    event = UserRegistered(
        principal_id=record.principal_id, email=record.email, tenant=tenant, roles=roles, by=by
    )
    await record_event(bus, record.principal_id, event, by)
    return record


async def check_password(bus: Bus, *, email: str, password: str) -> AccountRecord:
    """The account of `email` if `password` is its password; `InvalidCredentials` otherwise
    (taking as long for an unknown email as for a wrong password)."""
    entry = await (await bus.bucket("accounts")).get(email_key(email))
    account = AccountRecord.model_validate_json(entry.value) if entry is not None else None
    stored = account.password_hash if account else _DUMMY

    def verify() -> bool:
        try:
            return bool(_hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            return False

    ok = await _hashing(verify) and account is not None
    if not ok or account is None:
        raise InvalidCredentials("wrong email or password")
    return account
