from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.errors import InvalidName
from events.ids import new_id
from events.jobs import TaskCompleted, TaskFailed, TaskStarted
from events.subjects import (
    REPORT_TYPES,
    Names,
    check_id,
    decode_token,
    encode_token,
    job_event_of,
    report_writer,
)


def test_ids_are_unique_sortable_and_monotonic() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids[:100])


@pytest.mark.parametrize(
    ("model", "token"),
    [
        ("sim-small", "sim-small"),
        ("meta-llama/Llama-3.1-8B", "meta-llama_2FLlama-3_2E1-8B"),
        ("my model", "my_20model"),
        ("a_b", "a_5Fb"),
        ("qwen2.5:7b*>", "qwen2_2E5_3A7b_2A_3E"),
    ],
)
def test_model_names_encode_to_readable_tokens(model: str, token: str) -> None:
    assert encode_token(model) == token
    assert decode_token(token) == model


@given(st.text(min_size=1, max_size=200))
def test_any_name_round_trips_into_a_safe_single_token(name: str) -> None:
    token = encode_token(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)  # no '.', '*', '>', whitespace
    assert decode_token(token) == name


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


def test_subjects_are_namespaced() -> None:
    names = Names("prod")
    assert names.job("J1", "task.dispatched") == "prod.jobs.J1.task.dispatched"
    assert names.tasks_for_model("org/m.1") == "prod.tasks.model.org_2Fm_2E1"
    assert names.tasks_for_node("gpu-1") == "prod.tasks.node.gpu-1"
    assert names.tokens("J1", "gpu-1") == "prod.tokens.J1.gpu-1"
    assert names.job_tokens("J1") == "prod.tokens.J1.*"
    assert names.tokens_writer(names.tokens("J1", "gpu-1")) == "gpu-1"
    assert names.jobs_stream == "prod_JOBS"
    assert names.bucket("nodes") == "prod_nodes"


def test_a_nodes_reports_are_filed_under_it_and_decisions_match_apart() -> None:
    names = Names("prod")
    started = names.report("J1", "task.started", "gpu-1")
    assert started == "prod.jobs.J1.task.started.gpu-1"
    assert report_writer(started) == "gpu-1"
    assert job_event_of(started) == ("J1", "task.started")
    assert report_writer(names.job("J1", "task.lost")) is None
    assert job_event_of(names.job("J1", "task.lost")) == ("J1", "task.lost")
    assert names.reports("*", "task.completed") == "prod.jobs.*.task.completed.*"
    assert names.job_decisions("J1") == "prod.jobs.J1.*.*"  # five tokens: never a report
    # every event type a node signs is a report; every other one is a decision
    assert {TaskStarted.type, TaskCompleted.type, TaskFailed.type} == REPORT_TYPES
    with pytest.raises(InvalidName, match="report"):
        names.job("J1", "task.completed")
    with pytest.raises(InvalidName, match="not a node's report"):
        names.report("J1", "task.lost", "gpu-1")
    with pytest.raises(InvalidName, match="node id"):
        names.report("J1", "task.started", "a.b")


@pytest.mark.parametrize("bad", ["", "1abc", "a.b", "a b", "x" * 40, "a>"])
def test_bad_namespaces_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InvalidName, match="namespace"):
        Names(bad)


def test_bad_ids_are_refused() -> None:
    with pytest.raises(InvalidName, match="node id 'a.b'"):
        Names().tasks_for_node("a.b")
    assert check_id("id", "gpu_1-a") == "gpu_1-a"
    with pytest.raises(InvalidName):
        decode_token("bad_zz")
    with pytest.raises(InvalidName):
        encode_token("")
