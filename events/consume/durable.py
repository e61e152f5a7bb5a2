"""Creating a durable consumer, and taking it up again from a given stream sequence."""

from __future__ import annotations

import contextlib
import logging

from nats.js.api import ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from events.bus import Bus
from events.consume.spec import ConsumerSpec

log = logging.getLogger(__name__)


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> ConsumerInfo:
    """Create the durable, or update it to `spec` if it exists (pull_subscribe never updates)."""
    return await bus.js.add_consumer(spec.stream, config=spec.config())


async def restart_at(bus: Bus, spec: ConsumerSpec, seq: int) -> ConsumerInfo:
    """Recreate the durable to deliver from stream sequence `seq` on (a deliver policy cannot be
    changed in place)."""
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_consumer(spec.stream, spec.durable)
    config = spec.config()
    config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
    config.opt_start_seq = seq
    return await bus.js.add_consumer(spec.stream, config=config)


async def ensure_in_order(bus: Bus, spec: ConsumerSpec) -> ConsumerInfo:
    """Create or update the durable for a handler that needs stream order (`run_ordered`).

    Messages a previous incarnation took but never acked (it was killed) would come back only
    after the ack wait — behind newer ones, and a fold that skips what it has "seen" by
    sequence would then skip them for good. So when the durable has unacked messages, it is
    recreated to start just above its ack floor: they come again at once, in order, and the
    handlers' idempotence absorbs whatever had in fact been applied.
    """
    try:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        return await ensure_consumer(bus, spec)
    if info.num_ack_pending:
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        log.info(
            "%s: %d messages unacked by a previous run; restarting from seq %d in order",
            spec.durable,
            info.num_ack_pending,
            floor + 1,
        )
        return await restart_at(bus, spec, floor + 1)
    config = spec.config()  # keep where it starts: a deliver policy cannot be changed in place
    config.deliver_policy = info.config.deliver_policy
    config.opt_start_seq = info.config.opt_start_seq
    return await bus.js.add_consumer(spec.stream, config=config)
