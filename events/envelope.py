"""The event envelope, the registry of event types, and the codec with its upcasting chain.

Wire format (JSON): ``{"id", "type", "version", "at", "actor", "data"}``. ``id`` is sortable and
unique and doubles as the ``Nats-Msg-Id``. Events never change once stored, so readers upcast
old versions on read through small functions registered next to the model, and ignore unknown
fields (adding an optional field needs no version bump).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from events.errors import EventDecodeError, UnknownEventType, UnsupportedEventVersion
from events.ids import new_id


class Event(BaseModel):
    """Base of every event payload: frozen, named in the past tense, versioned by its class."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: ClassVar[str]
    version: ClassVar[int] = 1


E = TypeVar("E", bound=Event)
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_TYPES: dict[str, type[Event]] = {}
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def event_type(cls: type[E]) -> type[E]:
    """Class decorator: make an event type known to the decoder."""
    name = cls.__dict__.get("type")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a class attribute 'type'")
    if name in _TYPES and _TYPES[name] is not cls:
        raise TypeError(f"event type {name!r} is registered twice")
    _TYPES[name] = cls
    return cls


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register a function turning version `from_version` data into the next version."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(type_name, from_version)] = fn
        return fn

    return register


def known_types() -> dict[str, type[Event]]:
    """Every registered event type by name."""
    return dict(_TYPES)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One stored event: metadata plus the typed payload."""

    data: Event
    actor: str
    id: str = field(default_factory=new_id)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def type(self) -> str:
        """The event type name, e.g. ``job.submitted``."""
        return self.data.type

    @property
    def version(self) -> int:
        """The schema version the payload is written in."""
        return self.data.version

    def encode(self) -> bytes:
        """The envelope as JSON bytes: what ``json.dumps`` writes for the head (compact, ASCII),
        then the data as pydantic-core serializes it. Every event of a request is encoded on
        its way out, so the head is written directly: a ``json.dumps`` with separators would
        build a new encoder on every call (measured in docs/benchmarks.md)."""
        at = self.at.isoformat().replace("+00:00", "Z")
        head = (
            f'{{"id":{_quote(self.id)},"type":{_quote(self.type)},"version":{self.version:d},'
            f'"at":{_quote(at)},"actor":{_quote(self.actor)},"data":'
        )
        return head.encode() + self.data.__pydantic_serializer__.to_json(self.data) + b"}"


_DATA = b',"data":'
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # a JSON string, as json.dumps


def _decode_fast(raw: bytes) -> Envelope | None:
    """Envelopes as `Envelope.encode` writes them (data last, current version): the head by
    json, the data straight from bytes by pydantic-core. None when `raw` is not in that form."""
    cut = raw.find(_DATA)
    if cut < 0 or not raw.endswith(b"}"):
        return None
    try:
        head = json.loads(raw[:cut] + b"}")
        cls = _TYPES.get(head["type"])
        if cls is None or head["version"] != cls.version:
            return None
        payload = cls.model_validate_json(raw[cut + len(_DATA) : -1])
        at = datetime.fromisoformat(head["at"])
        if not isinstance(head["id"], str) or not isinstance(head["actor"], str):
            return None
    except (ValueError, KeyError, TypeError):
        return None  # the careful path below says what is wrong
    return Envelope(data=payload, actor=head["actor"], id=head["id"], at=at)


def decode(raw: bytes | str) -> Envelope:
    """Parse, upcast and validate one envelope; raises `EventDecodeError` or `UnknownEventType`."""
    if isinstance(raw, bytes):
        fast = _decode_fast(raw)
        if fast is not None:
            return fast
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventDecodeError(f"not a JSON event envelope: {exc}") from None
    if not isinstance(doc, dict):
        raise EventDecodeError(f"an event envelope is a JSON object, got {type(doc).__name__}")
    missing = [k for k in ("id", "type", "version", "at", "actor", "data") if k not in doc]
    if missing:
        raise EventDecodeError(f"event envelope is missing {', '.join(missing)}")
    name, version, data = doc["type"], doc["version"], doc["data"]
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise UnknownEventType(
            f"unknown event type {name!r}; known types: {', '.join(sorted(_TYPES))}"
        )
    if not isinstance(version, int) or version < 1:
        raise EventDecodeError(f"event {name!r} has an invalid version {version!r}")
    if version > cls.version:
        raise UnsupportedEventVersion(
            f"event {name!r} is version {version} but this dim reads up to version "
            f"{cls.version}; upgrade dim to read it"
        )
    if not isinstance(data, dict):
        raise EventDecodeError(f"event {name!r} data must be an object")
    while version < cls.version:
        step = _UPCASTERS.get((name, version))
        if step is None:
            raise EventDecodeError(f"no upcaster for {name!r} from version {version}")
        data = step(data)
        version += 1
    try:
        payload = cls.model_validate(data)
        at = datetime.fromisoformat(doc["at"])
    except ValidationError as exc:
        raise EventDecodeError(f"invalid {name!r} event: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise EventDecodeError(f"invalid 'at' in {name!r} event: {exc}") from None
    if not isinstance(doc["id"], str) or not isinstance(doc["actor"], str):
        raise EventDecodeError(f"event {name!r} needs string 'id' and 'actor'")
    return Envelope(data=payload, actor=doc["actor"], id=doc["id"], at=at)
