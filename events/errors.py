"""One error root for dim; subclasses also inherit the matching stdlib exception."""

from __future__ import annotations


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
