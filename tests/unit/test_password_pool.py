"""argon2 runs off the event loop, in a bounded pool: a login flood waits or is told to retry,
and never stalls the gateway's loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.accounts import users
from services.accounts.errors import PasswordChecksBusy


async def test_hashing_runs_in_its_own_threads() -> None:
    ran_on = await users._hashing(lambda: threading.current_thread().name)
    assert ran_on.startswith("argon2") and ran_on != threading.current_thread().name


async def test_a_flood_of_checks_beyond_the_bound_is_told_to_retry() -> None:
    release = threading.Event()
    bound = users.HASHING_THREADS + users.HASHING_QUEUE
    held = [asyncio.create_task(users._hashing(lambda: release.wait(10))) for _ in range(bound)]
    await asyncio.sleep(0)  # each has taken its place
    try:
        with pytest.raises(PasswordChecksBusy):
            await users._hashing(lambda: True)
    finally:
        release.set()
        assert all(await asyncio.gather(*held))
    assert await users._hashing(lambda: True)  # room again
