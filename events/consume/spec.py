"""What a handler sees and says: the consumer spec, a delivery, and the Retry/Reject verdicts
a handler may raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.envelope import Envelope
from events.errors import DimError

Deliver = Literal["all", "last", "new", "last_per_subject"]
"""Where a new durable starts: every message, the last one, only new ones, the last per subject."""


class Retry(DimError):
    """Raise from a handler to have the message redelivered after `delay_s`."""

    def __init__(self, reason: str, delay_s: float = 1.0) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class Reject(DimError, ValueError):
    """Raise from a handler for a message that can never be processed (terminated and recorded)."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer as dim wants it."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 1000
    deliver: Deliver = "all"
    inactive_threshold_s: float | None = None
    description: str | None = None
    ack_all: bool = False

    def config(self) -> ConsumerConfig:
        """The nats-py config for this spec."""
        single = len(self.filter_subjects) == 1
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description=self.description,
            deliver_policy=DeliverPolicy(self.deliver),
            ack_policy=AckPolicy.ALL if self.ack_all else AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subjects[0] if single else None,
            filter_subjects=None if single else list(self.filter_subjects),
            inactive_threshold=self.inactive_threshold_s,
            max_waiting=512,
        )


@dataclass(slots=True)
class Delivery:
    """One decoded message and what JetStream says about it."""

    msg: Msg
    envelope: Envelope
    stream_seq: int
    deliveries: int

    @property
    def subject(self) -> str:
        """The subject the message was stored on."""
        return self.msg.subject

    @property
    def headers(self) -> dict[str, str]:
        """The message headers (trace context among them)."""
        return self.msg.headers or {}

    async def in_progress(self) -> None:
        """Tell JetStream the message is still being worked on (resets the ack timer)."""
        await self.msg.in_progress()
