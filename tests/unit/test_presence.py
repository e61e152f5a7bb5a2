"""A node's health as its heartbeats report it: an engine that does not answer its health check
leaves selection, unless it finished generations since the last check (busy, plainly alive)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from events.subjects import Names
from services.engines.simulated import SimulatedEngine
from services.metrics import WorkerMetrics
from services.settings import Settings
from services.worker.presence import Presence
from services.worker.tally import Tally


class Slow(SimulatedEngine):
    """Fails its health check as one answering after a heartbeat would, while `slow`."""

    slow = False

    async def check_health(self) -> None:
        if self.slow:
            raise TimeoutError("no answer in time")


def _presence() -> tuple[Presence, Slow, Tally]:
    engine, tally = Slow(("m",)), Tally()
    bus: Any = SimpleNamespace(names=Names())
    settings = Settings(heartbeat_s=1.0, node_id="n1")
    return Presence(bus, engine, settings, 4, WorkerMetrics("simulated"), tally), engine, tally


async def test_an_idle_engine_that_does_not_answer_leaves_selection_and_comes_back() -> None:
    presence, engine, _ = _presence()
    await presence._check_health()
    assert presence.record().healthy
    engine.slow = True
    await presence._check_health()
    assert not presence.record().healthy
    engine.slow = False
    await presence._check_health()
    assert presence.record().healthy


async def test_a_busy_engine_answering_late_stays_while_it_finishes_generations() -> None:
    presence, engine, tally = _presence()
    await presence._check_health()
    engine.slow = True
    tally.completed += 3  # generations finished since the last check
    await presence._check_health()
    assert presence.record().healthy
    await presence._check_health()  # none finished since: it leaves
    assert not presence.record().healthy


async def test_a_busy_engine_gets_one_late_answer_and_a_hung_one_leaves_at_the_second() -> None:
    presence, engine, tally = _presence()
    await presence._check_health()
    tally.in_flight = 3  # load arrived; nothing finished yet
    engine.slow = True
    await presence._check_health()
    assert presence.record().healthy  # busy: its first failure in a row
    await presence._check_health()  # still nothing finished: hung
    assert not presence.record().healthy
