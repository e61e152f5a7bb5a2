"""The one NATS connection of a process, and the one way to publish an event.

`Bus.publish` stamps every message with the envelope id as ``Nats-Msg-Id`` (JetStream drops
duplicates inside the stream's window, so a retry after an ack timeout reuses the id and can
never store the event twice), the event type as ``Dim-Type``, and the W3C trace context
(``traceparent`` / ``tracestate``) of the current span. `Bus.publish_async` sends without waiting
for the ack, for hot paths such as token chunks; `PendingAcks` awaits a batch of them.

Large payloads: an encoded event over `inline_max` bytes is stored in the payloads object store
under its envelope id, and the message carries only the ``Dim-Payload-Ref`` header naming it;
`Bus.body` gives any reader the full event back. So a collaborative job over megabytes of input
is one ordinary event in JOBS, and no message ever exceeds the server's limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from nats.js.object_store import ObjectStore
from opentelemetry import propagate

from events.connection import DEFAULT_INBOX_PREFIX, NatsAuth, dial
from events.envelope import Envelope
from events.errors import PublishError, Unavailable, WrongLastSequence
from events.kv import Bucket
from events.retry import PUBLISH
from events.subjects import Names
from events.topology import ProvisionReport, Topology, provision

log = logging.getLogger(__name__)

Message = Msg  # what a core NATS subscription hands its callback

TYPE_HEADER = "Dim-Type"
PAYLOAD_REF_HEADER = "Dim-Payload-Ref"
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
_WRONG_LAST_SEQUENCE = 10071
# Answers that mean "not now" rather than "no": the same id is retried. 10158: a clustered
# leader is still storing a message with this id (e.g. a retry of ours after a slow commit; it
# may yet land); 10167: the stream's ingest queue is full (dropped before being stored).
_TRY_AGAIN = frozenset({10158, 10167})


def event_headers(envelope: Envelope) -> dict[str, str]:
    """Headers every event message carries: id, type and the current trace context."""
    headers = {MSG_ID_HEADER: envelope.id, TYPE_HEADER: envelope.type}
    propagate.inject(headers)
    return headers


@dataclass(slots=True)
class Bus:
    """A connected client plus the namespace's names; create with `Bus.connect`."""

    nc: Client
    js: JetStreamContext
    names: Names
    publish_timeout_s: float = 5.0
    publish_retries: int = 3
    inline_max: int = 256 * 1024  # larger encoded events go to the payloads object store
    _payloads: ObjectStore | None = None  # opened on first use, then kept
    _buckets: dict[str, Bucket] = field(default_factory=dict)  # opened on first use, then kept

    @classmethod
    async def connect(
        cls,
        url: str,
        names: Names,
        *,
        name: str = "dim",
        auth: NatsAuth | None = None,
        inbox_prefix: str = DEFAULT_INBOX_PREFIX,
        connect_timeout_s: float = 5.0,
        publish_timeout_s: float = 5.0,
        publish_retries: int = 3,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        inline_max: int = 256 * 1024,
    ) -> Bus:
        """Connect to NATS as `auth` says (reconnecting forever once connected) and open
        JetStream; replies come to subjects under `inbox_prefix`."""
        nc = await dial(
            url,
            name=name,
            auth=auth or NatsAuth(),
            inbox_prefix=inbox_prefix,
            connect_timeout_s=connect_timeout_s,
            on_reconnect=on_reconnect,
        )
        js = nc.jetstream(timeout=publish_timeout_s, publish_async_max_pending=8192)
        return cls(nc, js, names, publish_timeout_s, publish_retries, inline_max)

    async def _outbound(self, envelope: Envelope, headers: dict[str, str]) -> bytes:
        """The message body for `envelope`: itself, or empty with a reference to the store."""
        payload = envelope.encode()
        if len(payload) <= self.inline_max:
            return payload
        store = await self._payload_store()
        await store.put(envelope.id, payload)
        headers[PAYLOAD_REF_HEADER] = envelope.id
        return b""

    async def body(self, data: bytes, headers: dict[str, str] | None) -> bytes:
        """A received message's event bytes, fetched from the payloads store if referenced."""
        ref = (headers or {}).get(PAYLOAD_REF_HEADER)
        if not ref:
            return data
        store = await self._payload_store()
        return (await store.get(ref)).data or b""

    async def _payload_store(self) -> ObjectStore:
        if self._payloads is None:
            self._payloads = await self.js.object_store(self.names.bucket("payloads"))
        return self._payloads

    async def bucket(self, name: str) -> Bucket:
        """The namespace's key-value bucket `name` (e.g. "jobs"), opened once."""
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = Bucket(await self.js.key_value(self.names.bucket(name)))
            self._buckets[name] = bucket
        return bucket

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (it reconnects by itself)."""
        return bool(self.nc.is_connected)

    async def stream_exists(self, name: str) -> bool:
        """Whether the stream `name` exists."""
        try:
            await self.js.stream_info(name)
        except NotFoundError:
            return False
        return True

    async def backlog(self, stream: str, durable: str) -> tuple[int, int] | None:
        """A consumer's (messages not yet delivered, delivered and not yet acked); None if the
        consumer does not exist."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            return None
        return info.num_pending or 0, info.num_ack_pending or 0

    async def subscribe(
        self, subject: str, cb: Callable[[Message], Awaitable[None]]
    ) -> Subscription:
        """A plain (core NATS) subscription calling `cb` per message; unsubscribe when done."""
        return await self.nc.subscribe(subject, cb=cb)

    async def increment(self, subject: str) -> int:
        """Add one to the counter `subject` (a stream with counters allowed); its new value."""
        ack = await self.js.publish(subject, b"", headers={"Nats-Incr": "1"})
        return int(ack.val or 0)

    async def provision(self, topo: Topology) -> ProvisionReport:
        """Create what `topo` has and the server has not; report what differs."""
        return await provision(self.js, topo)

    async def stored(self, stream: str, seq: int) -> RawStreamMsg:
        """The message stored in `stream` at `seq`."""
        return await self.js.get_msg(stream, seq)

    async def delete_stored(self, stream: str, seq: int) -> None:
        """Remove the message at `seq` from `stream`."""
        await self.js.delete_msg(stream, seq)

    async def close(self) -> None:
        """Flush what is buffered and close the connection."""
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()

    async def publish(
        self,
        subject: str,
        envelope: Envelope,
        *,
        expected_last_seq: int | None = None,
        expected_last_subject: str | None = None,
    ) -> PubAck:
        """Store one event and wait for its ack, retrying with the same id on timeout.

        With `expected_last_seq`, the append succeeds only if the last message on
        `expected_last_subject` (default: `subject`; wildcards allowed) has that sequence
        (0: none yet); otherwise `WrongLastSequence` is raised.
        """
        headers = event_headers(envelope)
        if expected_last_seq is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expected_last_seq)
            if expected_last_subject is not None:
                headers[EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = expected_last_subject
        payload = await self._outbound(envelope, headers)
        for attempt in range(self.publish_retries + 1):
            try:
                return await self.js.publish(
                    subject, payload, timeout=self.publish_timeout_s, headers=dict(headers)
                )
            except APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    raise WrongLastSequence(
                        f"{subject}: {exc.description} (expected last {expected_last_seq})"
                    ) from None
                if exc.code != 503 and exc.err_code not in _TRY_AGAIN:
                    raise PublishError(f"JetStream refused {subject}: {exc.description}") from exc
                last: Exception = exc
            except (
                nats.errors.TimeoutError,
                NoStreamResponseError,
                nats.errors.NoRespondersError,
            ) as exc:
                last = exc
            except nats.errors.ConnectionClosedError as exc:
                raise Unavailable(f"connection closed while publishing {subject}") from exc
            if attempt < self.publish_retries:
                log.warning("publish %s (%s) retry %d: %r", subject, envelope.id, attempt + 1, last)
                await asyncio.sleep(PUBLISH.delay(attempt + 1))
        raise Unavailable(
            f"no JetStream ack for {subject} after {self.publish_retries + 1} tries: {last!r}"
        )

    async def send(self, subject: str, envelope: Envelope) -> None:
        """Put one event on a stream's subject without asking for an ack: JetStream stores it
        (once per id, within the stream's window) unless it is lost on the way, which nothing
        reports. For copies whose loss something else covers — the cheapest way in."""
        headers = event_headers(envelope)
        payload = await self._outbound(envelope, headers)
        await self.nc.publish(subject, payload, headers=headers)

    async def publish_async(self, subject: str, envelope: Envelope) -> asyncio.Future[PubAck]:
        """Send one event without waiting; the future resolves to its ack."""
        headers = event_headers(envelope)
        payload = await self._outbound(envelope, headers)
        return await self.js.publish_async(subject, payload, headers=headers)


@dataclass(slots=True)
class PendingAcks:
    """Events published with `Bus.publish_async`, awaited together; failures are re-sent."""

    bus: Bus
    _sent: list[tuple[str, Envelope, asyncio.Future[PubAck]]] = field(default_factory=list)

    async def add(self, subject: str, envelope: Envelope) -> None:
        """Publish without waiting."""
        self._sent.append((subject, envelope, await self.bus.publish_async(subject, envelope)))

    async def flush(self) -> None:
        """Wait for every ack; re-publish (same id, so never twice) whatever failed or timed out."""
        sent, self._sent = self._sent, []
        if not sent:
            return
        futures = [f for _, _, f in sent]
        _, pending = await asyncio.wait(futures, timeout=self.bus.publish_timeout_s)
        for subject, envelope, future in sent:
            if future in pending:
                future.cancel()
            elif future.exception() is None:
                continue
            await self.bus.publish(subject, envelope)
