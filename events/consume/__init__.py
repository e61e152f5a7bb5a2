"""The consume loops: durable pull consumers whose messages are acked, redelivered (nak) or
terminated and recorded on DEAD by one verdict (`settle.verdict`).

`run_pool` keeps up to `capacity` messages in flight (workers); `run_ordered` handles a batch
at a time in lanes keyed by e.g. job id (orchestrator, projector).
"""

from events.consume.durable import ensure_consumer, ensure_in_order, restart_at
from events.consume.ordered import run_ordered
from events.consume.pool import run_pool
from events.consume.spec import ConsumerSpec, Deliver, Delivery, Reject, Retry

__all__ = [
    "ConsumerSpec",
    "Deliver",
    "Delivery",
    "Reject",
    "Retry",
    "ensure_consumer",
    "ensure_in_order",
    "restart_at",
    "run_ordered",
    "run_pool",
]
