"""Which handler failures are NATS being away (retried while it lasts) and which are not."""

from __future__ import annotations

import nats.errors

from events.errors import EventDecodeError, PublishError, Unavailable, transient


def test_nats_being_away_is_transient_a_refusal_or_a_bad_event_is_not() -> None:
    assert transient(Unavailable("no JetStream ack"))
    assert transient(TimeoutError())
    assert transient(nats.errors.TimeoutError())
    assert transient(nats.errors.NoRespondersError())
    assert not transient(PublishError("JetStream refused: message too large"))
    assert not transient(EventDecodeError("not JSON"))
    assert not transient(RuntimeError("a bug"))
