"""Settling a delivery: the one verdict for a handled or failed message, and carrying it out
(ack, nak, or term after recording the message on the DEAD stream)."""

from __future__ import annotations

import base64
import enum
import logging
from dataclasses import dataclass

from nats.aio.msg import Msg

from events.bus import Bus
from events.consume.spec import ConsumerSpec, Delivery, Reject, Retry
from events.envelope import Envelope, decode
from events.errors import EventDecodeError, transient
from events.retry import REDELIVERY, Backoff
from events.subjects import REPORT_TYPES
from events.work import MessageRejected

log = logging.getLogger(__name__)

UNRECORDED_NAK_S = 5.0
"""The redelivery delay of a message to reject whose record could not be written."""


class Action(enum.Enum):
    """What is done with a message once its handler has ended."""

    ACK = "ack"  # handled
    AGAIN = "again"  # try again after `delay_s`: redelivered (nak), or in-process in a lane
    HAND_BACK = "hand back"  # shutting down mid-retry: nak at once, for a later run
    TERM = "term"  # never to be handled: recorded on DEAD, then terminated


@dataclass(frozen=True, slots=True)
class Verdict:
    """An `Action`, with the wait before trying again or the reason recorded on DEAD."""

    action: Action
    delay_s: float = 0.0
    reason: str = ""


ACK = Verdict(Action.ACK)
HAND_BACK = Verdict(Action.HAND_BACK)


def verdict(
    error: BaseException | None,
    tried: int,
    policy: Backoff,
    *,
    in_process: bool = False,
    stopping: bool = False,
) -> Verdict:
    """What becomes of a message (or a lane's group) whose handler ended with `error` (None:
    it returned) on its `tried`th try.

    - returned: ack;
    - `Retry` (redelivered messages only): again after its delay;
    - `Reject`: term and record;
    - `stopping` (in process): hand back;
    - `policy` allows another try, or (in process) NATS is only away for now: again, after
      `policy`'s wait;
    - else: term and record, so nothing loops forever and nothing disappears.

    `in_process` is a lane of `run_ordered`, which retries a group itself to keep its order;
    otherwise the server redelivers and `tried` is the delivery count.
    """
    if error is None:
        return ACK
    if isinstance(error, Retry) and not in_process:
        return Verdict(Action.AGAIN, error.delay_s)
    if isinstance(error, Reject):
        return Verdict(Action.TERM, reason=_why(error, tried, in_process))
    if stopping:
        return HAND_BACK
    if policy.more(tried) or (in_process and transient(error)):
        return Verdict(Action.AGAIN, policy.delay(tried))
    return Verdict(Action.TERM, reason=_why(error, tried, in_process))


def _why(error: BaseException, tried: int, in_process: bool) -> str:
    if in_process:
        return f"handler failed {tried} times: {error!r}"
    if isinstance(error, Reject):
        return str(error)
    return f"failed on its last allowed delivery ({tried}): {error!r}"


def redelivery(spec: ConsumerSpec) -> Backoff:
    """The redelivery policy of `spec`'s messages: REDELIVERY's waits, up to its `max_deliver`."""
    return REDELIVERY.with_tries(spec.max_deliver if spec.max_deliver > 0 else None)


def disagreement(subject: str, envelope: Envelope) -> str | None:
    """Why a job event's subject (``NS.jobs.<job>.<type>``, a report's ``...<type>.<node>``) and
    its body disagree, or None: an event filed under one job but naming another (or another
    type, or a report filed as a decision or under another node) would be folded into the wrong
    job or miscounted, so it is refused like an undecodable one."""
    parts = subject.split(".")
    if len(parts) < 5 or parts[1] != "jobs":
        return None
    job_id, event_type = parts[2], f"{parts[3]}.{parts[4]}"
    named = getattr(envelope.data, "job_id", job_id)
    writer = parts[5] if len(parts) == 6 else None
    report = envelope.type in REPORT_TYPES
    if (
        envelope.type != event_type
        or named != job_id
        or report != (writer is not None)
        or (writer is not None and writer != getattr(envelope.data, "node_id", None))
    ):
        node = getattr(envelope.data, "node_id", None)
        by = f" by node {node}" if report else ""
        return (
            f"subject {subject} disagrees with its event ({envelope.type} of job {named}{by}): "
            "refused"
        )
    return None


class Settler:
    """Decodes messages and settles them; records rejects on the DEAD stream."""

    def __init__(self, bus: Bus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.policy = redelivery(spec)

    async def open(self, msg: Msg) -> Delivery | str:
        """Decode `msg` (fetching a stored payload); the error text if it cannot be."""
        try:
            envelope = decode(await self.bus.body(msg.data, msg.headers))
        except EventDecodeError as exc:
            return str(exc)
        except Exception as exc:  # a payload reference that cannot be read
            return f"payload not readable: {exc!r}"
        mismatch = disagreement(msg.subject, envelope)
        if mismatch:
            return mismatch
        meta = msg.metadata
        return Delivery(msg, envelope, meta.sequence.stream, meta.num_delivered)

    async def reject(self, msg: Msg, reason: str) -> None:
        """Record `msg` on the DEAD stream with `reason`, then terminate it; if the record
        cannot be written, it is redelivered instead."""
        meta = msg.metadata
        log.error(
            "%s: rejecting %s seq %d: %s",
            self.spec.durable,
            msg.subject,
            meta.sequence.stream,
            reason,
        )
        try:
            payload = msg.data.decode()
        except UnicodeDecodeError:
            payload = "base64:" + base64.b64encode(msg.data).decode()
        record = MessageRejected(
            consumer=self.spec.durable,
            stream=self.spec.stream,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
            error=reason[:4000],
            payload=payload[:64_000],
            headers=dict((msg.headers or {}).items()),
        )
        try:
            await self.bus.publish(
                self.bus.names.dead(self.spec.durable), Envelope(record, actor=self.spec.durable)
            )
        except Exception:
            log.exception("could not record a rejected message; it will be redelivered")
            await msg.nak(delay=UNRECORDED_NAK_S)
            return
        await msg.term()

    async def settle(self, delivery: Delivery, error: BaseException | None) -> None:
        """Carry out the `verdict` on a delivery whose handler ended with `error`."""
        msg = delivery.msg
        try:
            v = verdict(error, delivery.deliveries, self.policy)
            if v.action is Action.ACK:
                await msg.ack()
            elif v.action is Action.AGAIN:
                await msg.nak(delay=v.delay_s)
            else:  # TERM (HAND_BACK is only for lanes, which settle their groups themselves)
                await self.reject(msg, v.reason)
        except Exception:
            log.warning(
                "could not settle %s seq %d", msg.subject, delivery.stream_seq, exc_info=True
            )


async def ack(msgs: list[Msg], *, all_below: bool) -> None:
    """Ack handled messages: one ack for the highest (ack-all consumers), else each."""
    if not msgs:
        return
    try:
        if all_below:
            await max(msgs, key=lambda m: m.metadata.sequence.stream).ack()
        else:
            for msg in msgs:
                await msg.ack()
    except Exception:
        log.warning("could not ack %d messages", len(msgs), exc_info=True)
