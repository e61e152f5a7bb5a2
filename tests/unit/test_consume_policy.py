"""Which handler failures are NATS being away (retried while it lasts) and which are not."""

from __future__ import annotations

import nats.errors

from events.consume import _transient
from events.errors import EventDecodeError, PublishError, Unavailable


def test_nats_being_away_is_transient_a_refusal_or_a_bad_event_is_not() -> None:
    assert _transient(Unavailable("no JetStream ack"))
    assert _transient(TimeoutError())
    assert _transient(nats.errors.TimeoutError())
    assert _transient(nats.errors.NoRespondersError())
    assert not _transient(PublishError("JetStream refused: message too large"))
    assert not _transient(EventDecodeError("not JSON"))
    assert not _transient(RuntimeError("a bug"))
