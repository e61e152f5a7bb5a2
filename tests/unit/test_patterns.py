"""Templates, consensus, and decide/evolve for the collaborative, comparative and chained
patterns, plus targeted dispatch, rerouting and lost nodes: pure, no server."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.envelope import Envelope, Event
from events.inference import Prompt, Usage
from events.jobs import (
    JobCompleted,
    JobFailed,
    JobPlanned,
    JobSubmitted,
    TaskCompleted,
    TaskDispatched,
    TaskFailed,
    TaskLost,
    TaskRerouted,
    TaskStarted,
)
from events.patterns import (
    Candidate,
    Chained,
    Collaborative,
    Comparative,
    RetryPolicy,
    Routing,
    Split,
    Step,
)
from events.subjects import Names
from projections.job_state import JobState, evolve
from services.jobs import consensus
from services.jobs.decide import decide
from services.jobs.patterns import split
from services.jobs.placement import NodeView
from services.jobs.templates import TemplateError, references, render
from services.jobs.validation import validate
from services.registry.select import SHARED, Need

NAMES = Names("t")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _mesh(
    pick: str | None = SHARED,
    live: tuple[str, ...] = ("a", "b"),
    gone: tuple[str, ...] = (),
    picks: list[Need] | None = None,
) -> NodeView:
    def choose(need: Need) -> str | None:
        if picks is not None:
            picks.append(need)
        return pick

    return NodeView(
        serves=lambda model: True,
        node_live=lambda n: n in live,
        live_models=lambda: {"m"},
        node_gone=lambda n: n in gone,
        pick=choose,
    )


class Log:
    """A job's log in memory."""

    def __init__(self, **submit: object) -> None:
        self.seq = 0
        self.at = T0
        self.state: JobState | None = None
        fields: dict[str, object] = {
            "job_id": "J",
            "model": "m",
            "prompt": Prompt(text="q"),
            "retry": RetryPolicy(backoff_s=0),
        }
        fields.update(submit)
        self.append(JobSubmitted(**fields))  # type: ignore[arg-type]

    def append(self, *events: Event) -> None:
        for e in events:
            self.seq += 1
            self.at += timedelta(milliseconds=10)
            self.state = evolve(self.state, Envelope(e, actor="t", at=self.at), self.seq)

    def step(self, mesh: NodeView | None = None, now: datetime | None = None) -> list[Event]:
        assert self.state is not None
        out = decide(self.state, now or self.at, mesh or _mesh(), NAMES, dispatch_timeout_s=5)
        self.append(*out)
        return out

    def run(self, task_id: str, output: str, node: str = "a", attempt: int = 1) -> None:
        self.append(
            TaskStarted(job_id="J", task_id=task_id, attempt=attempt, node_id=node),
            TaskCompleted(
                job_id="J",
                task_id=task_id,
                attempt=attempt,
                node_id=node,
                output=output,
                finish_reason="stop",
                usage=Usage(prompt_tokens=2, completion_tokens=3),
                ttft_ms=1,
                duration_ms=2,
            ),
        )

    def fail(self, task_id: str, node: str = "a", attempt: int = 1) -> None:
        self.append(
            TaskFailed(
                job_id="J",
                task_id=task_id,
                attempt=attempt,
                node_id=node,
                kind="engine_error",
                error="boom",
            )
        )


# --- templates ---------------------------------------------------------------------------------


def test_templates_render_references_and_nothing_else() -> None:
    t = "Summarise {{ steps.draft }} for {{input}}; literal {{{{ stays"
    assert references(t) == ["steps.draft", "input"]
    assert render(t, {"steps.draft": "D", "input": "I"}) == "Summarise D for I; literal {{ stays"
    with pytest.raises(TemplateError, match="not a template reference"):
        references("{{ __import__('os') }}")
    with pytest.raises(TemplateError, match="no value"):
        render("{{ previous }}", {})


@given(st.text(max_size=50))
def test_a_value_is_inserted_as_data_never_read_as_a_template(value: str) -> None:
    assert render("<{{ x }}>", {"x": value}) == f"<{value}>"


def test_chained_templates_may_only_use_earlier_steps() -> None:
    steps = (
        Step(name="a", prompt="{{ input }}"),
        Step(name="b", prompt="{{ steps.c }}"),
        Step(name="c", prompt="x"),
    )
    job = JobSubmitted(
        job_id="J",
        pattern="chained",
        model="m",
        prompt=Prompt(text="q"),
        chained=Chained(steps=steps),
    )
    with pytest.raises(
        TemplateError, match=r"step 'b' prompt: unknown reference \{\{ steps.c \}\}"
    ):
        validate(job)
    first = JobSubmitted(
        job_id="J", pattern="chained", model="m", prompt=Prompt(text="q"),
        chained=Chained(steps=(Step(name="a", prompt="{{ previous }}"),)),
    )  # fmt: skip
    with pytest.raises(TemplateError, match="previous"):
        validate(first)


def test_split_packs_paragraphs_and_cuts_long_ones() -> None:
    text = "one\n\ntwo\n\n" + "x" * 25
    assert split(text, Split(by="paragraphs", size=10)) == (
        "one\n\ntwo",
        "x" * 10,
        "x" * 10,
        "x" * 5,
    )
    assert split("abcdef", Split(by="chars", size=4)) == ("abcd", "ef")


@given(st.text(max_size=300), st.integers(1, 50))
def test_split_by_chars_loses_nothing(text: str, size: int) -> None:
    assert "".join(split(text, Split(by="chars", size=size))) == text


# --- consensus ---------------------------------------------------------------------------------


def _votes(*outputs: str, weights: tuple[float, ...] = ()) -> list[consensus.Vote]:
    return [
        consensus.Vote(index=i, model=f"m{i}", output=o, weight=weights[i] if weights else 1.0)
        for i, o in enumerate(outputs)
    ]


def test_majority_normalises_answers_and_reports_agreement() -> None:
    out = consensus.vote(_votes("Paris.", " paris", "Lyon"), weighted=False, min_agreement=0.6)
    assert (out.winner, out.reached, out.agreement) == (0, True, pytest.approx(2 / 3, abs=1e-6))
    assert out.groups == ((0, 1), (2,))


def test_weighted_vote_can_overrule_the_head_count() -> None:
    out = consensus.vote(_votes("a", "a", "b", weights=(1, 1, 5)), weighted=True, min_agreement=0.5)
    assert (out.winner, out.winner_model, out.agreement) == (
        2,
        "m2",
        pytest.approx(5 / 7, abs=1e-6),
    )


def test_below_min_agreement_is_an_outcome_not_an_error() -> None:
    out = consensus.vote(_votes("a", "b", "c"), weighted=False, min_agreement=0.5)
    assert out.reached is False and out.winner == 0 and "below" in out.reason


def test_judge_picks_by_number_and_unparseable_judgements_are_no_consensus() -> None:
    votes = _votes("x", "y", "y")
    picked = consensus.judged(votes, "The best is 2.", min_agreement=0.5)
    assert (picked.winner, picked.reached, picked.agreement) == (
        1,
        True,
        pytest.approx(2 / 3, abs=1e-6),
    )
    none = consensus.judged(votes, "none of them", min_agreement=0.5)
    assert none.reached is False and none.winner is None


@given(st.lists(st.sampled_from(["a", "A", "b", "c."]), min_size=1, max_size=9))
def test_majority_winner_has_the_largest_group(outputs: list[str]) -> None:
    out = consensus.vote(_votes(*outputs), weighted=False, min_agreement=0)
    sizes = {consensus.normalise(o): 0 for o in outputs}
    for o in outputs:
        sizes[consensus.normalise(o)] += 1
    assert out.winner is not None
    assert sizes[consensus.normalise(outputs[out.winner])] == max(sizes.values())
    assert 0 < out.agreement <= 1


# --- collaborative -------------------------------------------------------------------------------


def _collab(**kw: object) -> Log:
    spec = Collaborative(inputs=tuple(Prompt(text=t) for t in ("i0", "i1", "i2")), **kw)  # type: ignore[arg-type]
    return Log(pattern="collaborative", prompt=None, collaborative=spec)


def test_collaborative_fans_out_one_placed_shard_per_input_and_concats_in_input_order() -> None:
    log = _collab(separator="|")
    picks: list[Need] = []
    (planned,) = log.step(_mesh(pick="a", picks=picks))
    dispatched = planned.dispatched  # type: ignore[attr-defined]
    assert isinstance(planned, JobPlanned) and [t.role for t in planned.tasks] == ["shard"] * 3
    assert [d.subject for d in dispatched] == ["t.tasks.node.a"] * 3  # type: ignore[attr-defined]
    assert len(picks) == 3 and all(n.spread for n in picks)
    for tid, out in (("J-2", "o2"), ("J-0", "o0"), ("J-1", "o1")):
        log.run(tid, out)
    (done,) = log.step()
    assert isinstance(done, JobCompleted)
    assert done.output == "o0|o1|o2" and [p.index for p in done.parts] == [0, 1, 2]
    assert done.usage.completion_tokens == 9


def test_a_failed_shard_is_retried_away_from_the_node_that_failed_it() -> None:
    log = _collab()
    log.step(_mesh(pick="a"))
    log.fail("J-1", node="a")
    picks: list[Need] = []
    (retry,) = log.step(_mesh(pick="b", picks=picks))
    assert isinstance(retry, TaskDispatched) and retry.attempt == 2 and retry.node_id == "b"
    assert picks[0].exclude == frozenset({"a"})


def test_partial_collaborative_finishes_with_an_error_list_fail_mode_fails() -> None:
    for on_error in ("partial", "fail"):
        log = _collab(on_error=on_error, separator="+")
        log.step()
        log.run("J-0", "o0")
        log.run("J-2", "o2")
        for attempt in (1, 2, 3):
            log.fail("J-1", attempt=attempt)
            log.step()
        end = log.state
        assert end is not None
        if on_error == "partial":
            assert end.status == "completed" and end.output == "o0+o2"
            assert len(end.errors) == 1 and "shard 1" in end.errors[0]
            assert [p.status for p in end.parts] == ["completed", "failed", "completed"]
        else:
            assert end.status == "failed" and "shard 1" in (end.error or "")


def test_reduce_waits_for_every_shard_then_renders_their_outputs() -> None:
    log = _collab(
        aggregate="reduce",
        reduce_prompt="join: {{ outputs }} / first {{ outputs.0 }}",
        separator=",",
    )
    (planned,) = log.step()
    dispatched = planned.dispatched  # type: ignore[attr-defined]
    assert len(dispatched) == 3  # the reduce task waits
    log.run("J-0", "a")
    log.run("J-1", "b")
    assert log.step() == []
    log.run("J-2", "c")
    (reduce,) = log.step()
    assert isinstance(reduce, TaskDispatched) and reduce.task_id == "J-3"
    assert reduce.prompt == Prompt(text="join: a,b,c / first a")
    log.run("J-3", "abc")
    (done,) = log.step()
    assert isinstance(done, JobCompleted) and done.output == "abc" and len(done.parts) == 4


# --- comparative -------------------------------------------------------------------------------


def _compare(consensus_: str = "majority", **kw: object) -> Log:
    spec = Comparative(
        candidates=(Candidate(model="m1"), Candidate(model="m2", weight=3), Candidate(model="m3")),
        consensus=consensus_,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return Log(pattern="comparative", model="m1", comparative=spec)


def test_comparative_runs_every_model_and_records_the_consensus() -> None:
    log = _compare(min_agreement=0.9)
    planned, *_ = log.step()
    assert [t.model for t in planned.tasks] == ["m1", "m2", "m3"]  # type: ignore[attr-defined]
    log.run("J-0", "Yes")
    log.run("J-1", "no")
    log.run("J-2", "yes!")
    (done,) = log.step()
    assert isinstance(done, JobCompleted) and done.consensus is not None
    assert done.output == "Yes" and done.consensus.winner_model == "m1"
    assert done.consensus.reached is False  # 2/3 < 0.9: recorded, not an error


def test_weighted_comparative_and_the_judge() -> None:
    weighted = _compare("weighted")
    weighted.step()
    for tid, out in (("J-0", "a"), ("J-1", "b"), ("J-2", "a")):
        weighted.run(tid, out)
    (done,) = weighted.step()
    assert done.output == "b" and done.consensus.reached  # type: ignore[attr-defined]

    judged = _compare("judge", judge_model="j")
    judged.step()
    for tid, out in (("J-0", "a"), ("J-1", "b"), ("J-2", "c")):
        judged.run(tid, out)
    (judge,) = judged.step()
    assert isinstance(judge, TaskDispatched) and judge.task_id == "J-3"
    assert judge.prompt is not None and "1. a\n\n2. b\n\n3. c" in (judge.prompt.text or "")
    judged.run("J-3", "3")
    (done,) = judged.step()
    assert done.output == "c" and done.consensus.method == "judge"  # type: ignore[attr-defined]


# --- chained -----------------------------------------------------------------------------------


def _chain() -> Log:
    steps = (
        Step(name="draft", prompt="write about {{ input }}"),
        Step(
            name="polish", prompt="polish {{ previous }}", model="m2", max_tokens=7, max_attempts=2
        ),
        Step(name="title", prompt="title for {{ steps.draft }} / {{ steps.polish.output }}"),
    )
    return Log(pattern="chained", chained=Chained(steps=steps))


def test_chained_steps_run_in_order_with_rendered_prompts() -> None:
    log = _chain()
    (planned,) = log.step()
    (first,) = planned.dispatched  # type: ignore[attr-defined]
    assert isinstance(first, TaskDispatched) and first.prompt == Prompt(text="write about q")
    log.run("J-0", "D")
    (second,) = log.step()
    assert second.prompt == Prompt(text="polish D")  # type: ignore[attr-defined]
    assert log.state is not None and log.state.tasks[1].params.max_tokens == 7
    log.run("J-1", "P")
    (third,) = log.step()
    assert third.prompt == Prompt(text="title for D / P")  # type: ignore[attr-defined]
    log.run("J-2", "T")
    (done,) = log.step()
    assert isinstance(done, JobCompleted) and done.output == "T"
    assert [p.name for p in done.parts] == ["draft", "polish", "title"]


def test_a_failing_step_retries_per_its_policy_then_names_itself() -> None:
    log = _chain()
    log.step()
    log.run("J-0", "D")
    log.step()
    log.fail("J-1")
    (retry,) = log.step()
    assert isinstance(retry, TaskDispatched) and retry.attempt == 2
    log.fail("J-1", attempt=2)
    (failed,) = log.step()
    assert isinstance(failed, JobFailed)
    assert "step 'polish' (2 of 3" in failed.reason and "failed 2 times" in failed.reason


# --- targeted dispatch, reroutes, lost nodes ------------------------------------------------------


def test_a_pin_to_a_dead_node_is_rerouted_to_the_model_subject_as_an_event() -> None:
    log = Log(node_id="gone")
    _, rerouted = log.step(_mesh(live=("a",)))
    assert isinstance(rerouted, TaskRerouted)
    assert (rerouted.from_node, rerouted.subject) == ("gone", "t.tasks.model.m")


def test_a_task_sent_to_a_node_that_is_lost_before_taking_it_is_rerouted() -> None:
    log = Log(routing=Routing(strategy="least_loaded"))
    (planned,) = log.step(_mesh(pick="a"))
    (sent,) = planned.dispatched  # type: ignore[attr-defined]
    assert isinstance(sent, TaskDispatched) and sent.subject == "t.tasks.node.a"
    assert log.step(_mesh(pick="b")) == []  # a is alive: wait
    (moved,) = log.step(_mesh(gone=("a",)))
    assert isinstance(moved, TaskRerouted) and moved.attempt == 2 and moved.from_node == "a"


def test_a_task_running_on_a_lost_node_fails_as_worker_lost_and_goes_elsewhere() -> None:
    log = Log()
    log.step()
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="a"))
    (lost,) = log.step(_mesh(gone=("a",)))
    assert isinstance(lost, TaskLost) and lost.kind == "worker_lost"
    (retry,) = log.step(_mesh(gone=("a",)))
    assert isinstance(retry, TaskDispatched) and retry.attempt == 2


def test_a_task_whose_node_restarted_under_the_same_id_is_lost_at_once() -> None:
    """A supervisor restarts a killed worker under the same id within a heartbeat: its record
    never ages, but it is a new instance, started after the task; the task is lost now, not
    when JetStream would redeliver it."""
    log = Log()
    log.step()
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="a"))
    task_started = log.at
    same = _mesh()
    assert log.step(same) == []  # the same instance: still running
    restarted = dataclasses.replace(
        same, node_restarted=lambda n, since: n == "a" and since <= task_started
    )
    (lost,) = log.step(restarted)
    assert isinstance(lost, TaskLost) and lost.kind == "worker_lost" and lost.retriable
    assert "restarted" in lost.error
    (retry,) = log.step(restarted)
    assert isinstance(retry, TaskDispatched) and retry.attempt == 2


def test_no_eligible_node_waits_then_fails_with_the_requirements() -> None:
    log = Log(routing=Routing(min_context=1_000_000))
    (planned,) = log.step(_mesh(pick=None))
    assert isinstance(planned, JobPlanned)
    (failed,) = log.step(_mesh(pick=None), now=T0 + timedelta(seconds=6))
    assert isinstance(failed, JobFailed) and failed.code == "no_capacity"


def test_a_templated_step_pinned_to_a_dead_node_is_rerouted_with_its_rendered_prompt() -> None:
    steps = (Step(name="only", prompt="about {{ input }}", node_id="gone"),)
    log = Log(pattern="chained", chained=Chained(steps=steps))
    _, rerouted = log.step(_mesh(live=("a",)))
    assert isinstance(rerouted, TaskRerouted) and rerouted.from_node == "gone"
    assert rerouted.prompt == Prompt(text="about q")  # the worker needs it: not in the plan
