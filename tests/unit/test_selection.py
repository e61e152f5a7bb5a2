"""Node selection: the strategies and the pool, by example and by property (hypothesis)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from events.records import GpuFact, NodeRecord
from services.registry.select import SHARED, Need, Pool, Ring, capacity_weighted, eligible

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(
    node_id: str,
    *,
    models: tuple[str, ...] = ("m",),
    capacity: int = 4,
    in_flight: int = 0,
    age_s: float = 0.0,
    **kw: object,
) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        models=models,
        engine="simulated",
        capacity=capacity,
        in_flight=in_flight,
        version="t",
        started_at=NOW,
        heartbeat_at=NOW - timedelta(seconds=age_s),
        **kw,  # type: ignore[arg-type]
    )


def pool(*records: NodeRecord) -> Pool:
    p = Pool(ttl_s=6)
    for r in records:
        p.update(r)
    return p


def test_untargeted_tasks_go_to_the_shared_subject_when_every_server_pulls_from_it() -> None:
    p = pool(node("a"), node("b"))
    assert p.pick(Need(model="m")) == SHARED
    assert p.pick(Need(model="other")) is None  # nobody serves it
    reserved = pool(node("a"), node("r", tenants=("acme",)))
    assert reserved.pick(Need(model="m", tenant="acme")) in ("a", "r")  # r does not pull shared


def test_least_loaded_counts_tasks_sent_since_the_last_heartbeat() -> None:
    p = pool(node("a", in_flight=1), node("b", in_flight=2))
    need = Need(model="m", spread=True)
    assert p.pick(need) == "a"
    p.sent("a")
    p.sent("a")
    assert p.pick(need) == "b"  # a: 3 busy, b: 2
    p.finished("a")
    p.finished("a")
    assert p.pick(need) == "a"  # a: 1 busy again, b: 2
    p.update(node("a", in_flight=3))  # a heartbeat replaces the estimate
    assert p.pick(need) == "b"


def test_a_choice_taken_back_leaves_the_node_as_it_was() -> None:
    """A decision whose dispatch was not stored (a lost race) sent nothing: its picks are taken
    back, or a hot job's lost races would make every node look full."""
    p = pool(node("a", in_flight=1, capacity=8))
    assert p.room("m") == 7
    for _ in range(5):
        p.sent("a")
    p.unsent("a", 5)
    assert p.room("m") == 7 and p.busy("a") == 1


def test_round_robin_cycles_in_id_order() -> None:
    p = pool(node("c"), node("a"), node("b"))
    need = Need(model="m", strategy="round_robin")
    assert [p.pick(need) for _ in range(4)] == ["a", "b", "c", "a"]


def test_filters_model_tenant_context_gpu_health() -> None:
    gpu = (GpuFact(index=0, name="H100", memory_total_mib=80_000, memory_free_mib=70_000),)
    assert eligible(
        node("a", max_context=8192, gpus=gpu),
        Need(model="m", min_context=4096, min_gpu_memory_mib=40_000),
    )
    assert not eligible(node("a", max_context=2048), Need(model="m", min_context=4096))
    assert not eligible(node("a"), Need(model="m", min_gpu_memory_mib=1))
    assert not eligible(node("a", tenants=("x",)), Need(model="m", tenant="y"))
    assert not eligible(node("a", healthy=False), Need(model="m"))
    assert not eligible(node("a"), Need(model="other"))


def test_stale_and_draining_nodes_leave_selection() -> None:
    p = pool(node("a", age_s=10), node("b"), node("c", age_s=10))
    assert p.pick(Need(model="m", spread=True), now=NOW) == "b"  # a was first, and stale
    assert [i for i, _ in p.expire(NOW)] == ["c"]  # a already dropped by the pick
    p.update(node("b", draining=True))
    assert p.pick(Need(model="m", spread=True), now=NOW) is None


def test_a_retry_avoids_the_nodes_that_failed_it_unless_none_is_left() -> None:
    p = pool(node("a"), node("b"))
    assert p.pick(Need(model="m", exclude=frozenset({"a"}))) == "b"
    assert p.pick(Need(model="m", exclude=frozenset({"a", "b"}))) in ("a", "b")


def test_capacity_weighted_follows_free_slots() -> None:
    free = {"a": 1.0, "b": 3.0, "c": 0.0}
    draws = Counter(
        capacity_weighted(["a", "b", "c"], free.__getitem__, i / 400) for i in range(400)
    )
    assert draws == {"a": 100, "b": 300}


def test_affinity_sends_a_repeated_key_home_until_it_is_overloaded() -> None:
    p = pool(*(node(f"n{i}", capacity=4) for i in range(8)))
    need = Need(model="m", strategy="affinity", key="system prompt v1")
    home = p.pick(need)
    assert home and all(p.pick(need) == home for _ in range(5))
    for _ in range(4):
        p.sent(home)  # the home node is now far over its share of the load
    assert p.pick(need) != home


@settings(max_examples=60, deadline=None)
@given(
    loads=st.lists(st.integers(0, 8), min_size=1, max_size=30),
    keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40),
)
def test_affinity_never_exceeds_the_bound_while_a_node_is_under_it(
    loads: list[int], keys: list[str]
) -> None:
    p = pool(*(node(f"n{i}", capacity=8, in_flight=b) for i, b in enumerate(loads)))
    for key in keys:
        chosen = p.pick(Need(model="m", strategy="affinity", key=key))
        assert chosen is not None and chosen.startswith("n")
        total = sum(p.busy(i) for i in p.records)
        share = (total + 1) / len(p.records)
        bound = max(1, -(-1.25 * share // 1))
        if any(p.busy(i) + 1 <= bound for i in p.records):
            assert p.busy(chosen) + 1 <= bound
        p.sent(chosen)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 16), st.integers(0, 20), st.booleans(), st.booleans()),
        min_size=1,
        max_size=25,
    ),
    st.sampled_from([None, "least_loaded", "round_robin", "capacity_weighted", "affinity"]),
    st.floats(0, 0.999),
)
def test_every_pick_is_an_eligible_live_node(
    specs: list[tuple[int, int, bool, bool]], strategy: str | None, r: float
) -> None:
    records = [
        node(
            f"n{i}",
            capacity=c,
            in_flight=b,
            models=("m",) if serves else ("x",),
            age_s=10 if stale else 0,
        )
        for i, (c, b, serves, stale) in enumerate(specs)
    ]
    p = pool(*records)
    need = Need(model="m", strategy=strategy, key="k", spread=True)  # type: ignore[arg-type]
    chosen = p.pick(need, r, now=NOW)
    fit = {
        r.node_id
        for r in records
        if "m" in r.models and r.heartbeat_at >= NOW - timedelta(seconds=6)
    }
    if fit:
        assert chosen in fit
    else:
        assert chosen is None
    if strategy in (None, "least_loaded") and chosen:
        assert p.loads[chosen] == min(p.loads[i] for i in fit)


@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True),
    st.text(max_size=20),
)
def test_a_ring_walk_visits_every_node_once_and_removing_one_moves_only_its_keys(
    ids: list[str], key: str
) -> None:
    ring = Ring.of(ids)
    walk = list(ring.walk(key))
    assert sorted(walk) == sorted(ids)
    if len(ids) > 1:
        smaller = Ring.of([i for i in ids if i != walk[0]])
        assert next(iter(smaller.walk(key))) == walk[1]  # only the removed node's keys move
