"""How LiveNodes judges heartbeat ages against how current its view is: pure, no server (the
watch itself: tests/integration/test_stale_view.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from events.records import NodeRecord
from events.subjects import Names
from services.registry.live import LiveNodes

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(seconds=6)


def _view(*beats: tuple[str, datetime]) -> LiveNodes:
    nodes = LiveNodes(SimpleNamespace(names=Names("t")), ttl_s=6.0)  # type: ignore[arg-type]
    for node_id, at in beats:
        nodes.items[node_id] = NodeRecord(
            node_id=node_id,
            models=("m",),
            engine="simulated",
            capacity=1,
            version="t",
            started_at=T0,
            heartbeat_at=at,
        )
    return nodes


def test_ages_are_judged_as_of_when_the_view_was_last_current() -> None:
    nodes = _view(("a", T0), ("b", T0 - 2 * TTL))
    nodes.current_at = T0 + timedelta(seconds=3)  # a watch behind: a's next beats not heard
    now = T0 + timedelta(seconds=8)  # behind 5 s: not stale yet
    assert not nodes.stale(now)
    assert not nodes.gone("a", now)  # 8 s old by the wall clock, 3 s as of the view
    assert nodes.gone("b", now)  # stopped long before
    nodes.current_at = now  # current, and a wrote nothing since T0
    assert nodes.gone("a", now)


def test_a_stale_view_calls_no_node_gone() -> None:
    nodes = _view(("a", T0))
    nodes.current_at = T0
    later = T0 + 3 * TTL
    assert nodes.stale(later)
    assert not nodes.gone("a", later)
    assert not nodes.gone("never-seen", later)  # it cannot tell about a node it has not seen
    assert [n.node_id for n in nodes.live(later)] == ["a"]  # as last seen


def test_after_a_gap_a_node_fresh_when_it_began_gets_a_whole_ttl() -> None:
    # NATS away from T0 + 1 s to T0 + 20 s: nobody could store a heartbeat meanwhile.
    nodes = _view(("a", T0), ("dead", T0 - 2 * TTL))
    nodes.gap = (T0 + timedelta(seconds=1), T0 + timedelta(seconds=20))
    nodes.current_at = T0 + timedelta(seconds=21)
    assert not nodes.gone("a", T0 + timedelta(seconds=21))
    assert nodes.gone("dead", T0 + timedelta(seconds=21))  # gone before the gap began
    nodes.current_at = T0 + timedelta(seconds=27)  # a TTL after the gap, still nothing from a
    assert nodes.gone("a", T0 + timedelta(seconds=27))
