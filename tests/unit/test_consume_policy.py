"""Which handler failures are NATS being away (retried while it lasts) and which are not."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from events.errors import EventDecodeError, PublishError, Unavailable, transient, while_unavailable


def test_nats_being_away_is_transient_a_refusal_or_a_bad_event_is_not() -> None:
    assert transient(Unavailable("no JetStream ack"))
    assert transient(TimeoutError())
    assert transient(nats.errors.TimeoutError())
    assert transient(nats.errors.NoRespondersError())
    assert not transient(PublishError("JetStream refused: message too large"))
    assert not transient(EventDecodeError("not JSON"))
    assert not transient(RuntimeError("a bug"))


async def test_what_a_process_does_as_it_starts_waits_out_nats_being_away() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.errors.TimeoutError
        return "done"

    assert await while_unavailable(flaky, asyncio.Event(), "test", every_s=0.01) == "done"
    assert len(calls) == 3


async def test_a_refusal_or_a_stop_ends_the_waiting() -> None:
    async def refused() -> None:
        raise PublishError("JetStream refused")

    with pytest.raises(PublishError):
        await while_unavailable(refused, asyncio.Event(), "test", every_s=0.01)
    stop = asyncio.Event()
    stop.set()

    async def away() -> None:
        raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await while_unavailable(away, stop, "test", every_s=0.01)
