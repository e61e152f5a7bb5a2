"""One error root for dim; subclasses also inherit the matching stdlib exception."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from events.retry import START

log = logging.getLogger(__name__)
T = TypeVar("T")


class DimError(Exception):
    """Root of every error dim raises on purpose."""


class InvalidName(DimError, ValueError):
    """A namespace, node id or subject token that NATS cannot carry."""


class UnknownEventType(DimError, ValueError):
    """An envelope names an event type this build does not know."""


class EventDecodeError(DimError, ValueError):
    """Bytes that are not a valid event envelope, or a payload that fails validation."""


class UnsupportedEventVersion(EventDecodeError):
    """An event written by a newer dim than this one (no downcasting)."""


class ProvisioningError(DimError, RuntimeError):
    """Streams or buckets could not be created as specified."""


class ConnectError(DimError, ConnectionError):
    """NATS could not be reached."""


class CredentialsRefused(ConnectError):
    """The server answered, and does not admit these credentials (not, or no longer, approved)."""


class NatsAuthError(DimError, ValueError):
    """NATS credentials or TLS files that cannot be used as given."""


class PublishError(DimError, ConnectionError):
    """An event could not be stored in JetStream after the allowed retries."""


class Unavailable(PublishError):
    """NATS did not answer in time (a server down, a leader election): the same call may succeed
    in a moment."""


class WrongLastSequence(DimError, RuntimeError):
    """An optimistic append lost the race: another writer appended first."""


class EngineError(DimError, RuntimeError):
    """An inference engine failed a request; `retriable` says whether another try may work."""

    def __init__(self, message: str, *, retriable: bool = True, kind: str = "engine_error") -> None:
        super().__init__(message)
        self.retriable = retriable
        self.kind = kind


class NatsServerError(DimError, RuntimeError):
    """The embedded nats-server could not be found or started."""


def transient(exc: BaseException) -> bool:
    """Whether `exc` is NATS being unavailable for now rather than a problem with the work."""
    if isinstance(exc, PublishError) and not isinstance(exc, Unavailable):
        return False  # JetStream answered, and refused: retrying will not change its mind
    return isinstance(
        exc,
        Unavailable
        | TimeoutError
        | ConnectionError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionClosedError
        | nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServiceUnavailableError,
    )


async def while_unavailable(
    op: Callable[[], Awaitable[T]], stop: asyncio.Event, what: str, *, every_s: float | None = None
) -> T:
    """`op()`, tried again every `every_s` while NATS is unavailable (`transient`) and `stop` is
    not set: for what a process does once as it starts, which a NATS paused, failing over or
    slow to answer on a loaded machine would otherwise end for good. Other errors, and the last
    one once `stop` is set, are raised."""
    tries = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not transient(exc) or stop.is_set():
                raise
            if tries % 20 == 0:  # the first time, then every 20 tries
                log.warning("cannot %s yet (NATS unavailable: %r); trying again", what, exc)
            tries += 1
            await asyncio.sleep(START.delay(tries) if every_s is None else every_s)
