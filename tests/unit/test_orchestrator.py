"""decide/evolve for the `single` pattern: pure, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events.consume.settle import disagreement
from events.envelope import Envelope, Event
from events.inference import Prompt, SamplingParams, Usage
from events.jobs import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobPlanned,
    JobSubmitted,
    TaskCompleted,
    TaskDispatched,
    TaskFailed,
    TaskLost,
    TaskStarted,
)
from events.patterns import RetryPolicy
from events.subjects import Names
from projections.job_state import JobState, evolve
from services.jobs.decide import decide
from services.jobs.placement import NodeView

NAMES = Names("t")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERVING = NodeView(
    serves=lambda m: m == "m", node_live=lambda n: n == "gpu-1", live_models=lambda: {"m"}
)
NOBODY = NodeView(serves=lambda m: False, node_live=lambda n: False, live_models=set)


class Log:
    """A job's log in memory: append events, fold them, ask decide."""

    def __init__(self, **submit: object) -> None:
        self.seq = 0
        self.state: JobState | None = None
        self.at = T0
        submit.setdefault("retry", RetryPolicy(backoff_s=0))  # retries at once unless a test says
        self.append(JobSubmitted(job_id="J", model="m", prompt=Prompt(text="hi"), **submit))  # type: ignore[arg-type]

    def append(self, *events: Event) -> None:
        for event in events:
            self.seq += 1
            self.at += timedelta(milliseconds=10)
            self.state = evolve(self.state, Envelope(event, actor="t", at=self.at), self.seq)

    def decide(self, mesh: NodeView = SERVING, now: datetime | None = None) -> list[Event]:
        assert self.state is not None
        return decide(self.state, now or self.at, mesh, NAMES, dispatch_timeout_s=5)

    def run_decisions(self, mesh: NodeView = SERVING) -> list[Event]:
        out = self.decide(mesh)
        self.append(*out)
        return out


def _completed(attempt: int = 1, output: str = "hello") -> TaskCompleted:
    return TaskCompleted(
        job_id="J",
        task_id="J-0",
        attempt=attempt,
        node_id="gpu-1",
        output=output,
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=2),
        ttft_ms=3.0,
        duration_ms=9.0,
    )


def _failed(attempt: int, retriable: bool = True) -> TaskFailed:
    return TaskFailed(
        job_id="J",
        task_id="J-0",
        attempt=attempt,
        node_id="gpu-1",
        kind="engine_error",
        error="boom",
        retriable=retriable,
    )


def test_single_job_happy_path() -> None:
    log = Log()
    (planned,) = log.run_decisions()  # the first dispatch rides in the plan
    assert isinstance(planned, JobPlanned)
    (dispatched,) = planned.dispatched
    assert len(planned.tasks) == 1
    assert dispatched == TaskDispatched(
        job_id="J", task_id="J-0", attempt=1, subject="t.tasks.model.m"
    )
    assert log.decide() == []  # waiting for the worker
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1"))
    assert log.state is not None
    assert log.state.status == "running"
    log.append(_completed())
    [done] = log.run_decisions()
    assert done == JobCompleted(
        job_id="J",
        output="hello",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=2),
        tenant="default",
        model="m",  # who and what it was for, for the usage projection
        owner="anonymous",
    )
    assert log.state.status == "completed"
    assert log.state.ttft_ms == 3.0
    assert log.decide() == []


def test_a_job_for_a_model_nobody_serves_fails_at_once_with_the_reason() -> None:
    log = Log()
    [failed] = log.decide(NOBODY)
    assert isinstance(failed, JobFailed)
    assert failed.code == "model_not_served"
    assert "'m'" in failed.reason
    assert "live models: none" in failed.reason


def test_dispatched_task_with_no_live_node_fails_after_the_timeout() -> None:
    log = Log()
    log.run_decisions()
    assert log.decide(NOBODY, now=log.at + timedelta(seconds=4)) == []
    [failed] = log.decide(NOBODY, now=log.at + timedelta(seconds=6))
    assert isinstance(failed, JobFailed)
    assert failed.code == "model_not_served"
    assert log.decide(SERVING, now=log.at + timedelta(seconds=60)) == []  # a node is back: wait


def test_failed_attempts_are_retried_then_fail_the_job() -> None:
    log = Log(max_attempts=2)
    log.run_decisions()
    log.append(_failed(1))
    [retry] = log.run_decisions()
    assert retry == TaskDispatched(job_id="J", task_id="J-0", attempt=2, subject="t.tasks.model.m")
    log.append(_failed(2))
    [failed] = log.run_decisions()
    assert isinstance(failed, JobFailed)
    assert failed.code == "task_failed"
    assert "failed 2 times" in failed.reason
    assert "boom" in failed.reason


def test_a_non_retriable_failure_fails_the_job_at_once() -> None:
    log = Log()
    log.run_decisions()
    log.append(_failed(1, retriable=False))
    [failed] = log.run_decisions()
    assert isinstance(failed, JobFailed)
    assert "could not be retried" in failed.reason


def test_a_superseded_attempts_result_completes_the_task_and_redeliveries_change_nothing() -> None:
    log = Log()
    log.run_decisions()
    log.append(_failed(1))
    log.run_decisions()  # attempt 2 dispatched
    log.append(_completed(attempt=1, output="late"))  # its work redelivered and finished
    assert log.state is not None
    task = log.state.tasks[0]
    assert (task.status, task.output, task.error) == ("completed", "late", None)
    # The same stored event delivered again (same seq) is a no-op.
    again = evolve(log.state, Envelope(_completed(attempt=2), actor="t"), log.seq)
    assert again is log.state


def test_a_second_result_for_the_same_attempt_is_ignored() -> None:
    log = Log()
    log.run_decisions()
    log.append(_completed(output="first"), _completed(output="second"))
    [done] = log.run_decisions()
    assert isinstance(done, JobCompleted)
    assert done.output == "first"


def test_nothing_happens_after_the_end() -> None:
    log = Log()
    log.run_decisions()
    log.append(JobCancelled(job_id="J"))
    assert log.state is not None
    assert log.state.status == "cancelled"
    log.append(_completed())
    assert log.state.status == "cancelled"
    assert log.decide() == []


def test_pinned_jobs_go_to_the_node_subject_while_it_is_live() -> None:
    log = Log(node_id="gpu-1")
    (planned,) = log.decide()
    (dispatched,) = planned.dispatched  # type: ignore[attr-defined]
    assert isinstance(dispatched, TaskDispatched)
    assert dispatched.subject == "t.tasks.node.gpu-1"
    gone = NodeView(serves=lambda m: True, node_live=lambda n: False, live_models=lambda: {"m"})
    _, fallback = Log(node_id="gpu-1").decide(gone)
    assert isinstance(fallback, TaskDispatched)
    assert fallback.subject == "t.tasks.model.m"


def test_events_for_no_known_job_fold_to_nothing() -> None:
    assert evolve(None, Envelope(_completed(), actor="t"), 1) is None


def test_view_tracks_sequence_and_count() -> None:
    log = Log()
    log.run_decisions()
    assert log.state is not None
    assert (log.state.last_seq, log.state.events) == (2, 2)  # submitted; planned + dispatched
    assert log.state.created_at == T0 + timedelta(milliseconds=10)


def test_decisions_and_reports_are_tracked_apart() -> None:
    log = Log()
    log.run_decisions()
    assert log.state is not None
    assert log.state.decided_seq == 2  # the plan
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1"))
    assert (log.state.last_seq, log.state.decided_seq) == (3, 2)  # a report is no decision
    log.append(_completed())
    log.run_decisions()
    assert (log.state.last_seq, log.state.decided_seq) == (5, 5)


def _lost(attempt: int = 1) -> TaskLost:
    return TaskLost(
        job_id="J", task_id="J-0", attempt=attempt, node_id="gpu-1", kind="worker_lost", error="x"
    )


def test_a_node_lost_verdict_and_its_result_fold_alike_in_either_order() -> None:
    # A decision no longer waits for every report (it expects the last decision only), so the
    # orchestrator may store "lost" after the node's result it had not seen yet, and folds that
    # result after its own verdict: both orders must give the same task.
    started = TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1")
    result_first, verdict_first = Log(), Log()
    for log in (result_first, verdict_first):
        log.run_decisions()
        log.append(started)
    result_first.append(_completed(), _lost())
    verdict_first.append(_lost(), _completed())
    assert result_first.state is not None and verdict_first.state is not None
    when = {"finished_at"}  # each order's own clock
    assert result_first.state.tasks[0].model_dump(exclude=when) == verdict_first.state.tasks[
        0
    ].model_dump(exclude=when)
    assert result_first.state.tasks[0].status == "completed"
    # a result after a newer attempt was sent is a result too (the next test)
    later = Log()
    later.run_decisions()
    later.append(started, _lost())
    later.run_decisions()  # attempt 2
    later.append(_completed(attempt=1, output="late"))
    assert later.state is not None and later.state.tasks[0].status == "completed"
    assert later.state.tasks[0].output == "late"


def _usage(n: int) -> Usage:
    return Usage(prompt_tokens=1, completion_tokens=n)


def test_the_first_result_of_any_attempt_completes_the_task_and_is_counted_once() -> None:
    # The compose smoke test's job, in its stored order: attempt 1's node was thought lost, and
    # its result came after attempts 2 and 3 were sent. A gateway answers with a single task's
    # first `task.completed`; the job records that one, its usage once, whatever came after.
    log = Log(max_attempts=3)
    log.run_decisions()
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-3"))
    log.append(_lost(1))
    log.append(*log.decide())  # attempt 2
    log.append(_lost(2))
    log.append(*log.decide())  # attempt 3
    assert log.state is not None and log.state.tasks[0].attempt == 3
    first = _completed(attempt=1, output="first").model_copy(update={"usage": _usage(5)})
    log.append(first)
    for attempt in (2, 3):  # the newer attempts still ran: their results change nothing
        log.append(TaskStarted(job_id="J", task_id="J-0", attempt=attempt, node_id="gpu-1"))
        log.append(
            _completed(attempt=attempt, output="again").model_copy(update={"usage": _usage(7)})
        )
    log.append(_lost(3))
    task = log.state.tasks[0]
    assert (task.status, task.output, task.usage) == ("completed", "first", _usage(5))
    assert task.error is None
    (done,) = log.decide(
        NodeView(
            serves=lambda m: True,
            node_live=lambda n: False,
            live_models=lambda: {"m"},
            node_gone=lambda n: True,
        )
    )
    assert isinstance(done, JobCompleted)
    assert (done.output, done.usage) == ("first", _usage(5))


def test_a_retry_stored_after_the_tasks_result_does_not_send_it_again() -> None:
    log = Log(max_attempts=3)
    log.run_decisions()
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1"))
    log.append(_lost(1))
    (retry,) = log.decide()  # decided before the result was seen, stored after it
    log.append(_completed(attempt=1), retry)
    assert log.state is not None and log.state.tasks[0].status == "completed"
    (done,) = log.decide()
    assert isinstance(done, JobCompleted)


def test_a_completed_task_is_never_lost_whatever_the_view_says_of_its_node() -> None:
    # The compose smoke test's last attempt: its result stored, then a verdict decided on a
    # stale view of the nodes. The task stays completed and the job completes, never fails.
    every_node_gone = NodeView(
        serves=lambda m: m == "m",
        node_live=lambda n: False,
        live_models=lambda: {"m"},
        node_gone=lambda n: True,
    )
    log = Log(max_attempts=1)
    log.run_decisions()
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1"))
    (lost,) = log.decide(every_node_gone)  # running on a node it thinks gone
    assert isinstance(lost, TaskLost)
    log.append(_completed())  # the result came first after all
    (done,) = log.decide(every_node_gone)
    assert isinstance(done, JobCompleted)
    log.append(lost)  # stored anyway (by an older build): it changes nothing
    assert log.state is not None and log.state.tasks[0].status == "completed"
    (done,) = log.decide(every_node_gone)
    assert isinstance(done, JobCompleted)


def test_n_choices_plan_one_task_each_and_complete_with_every_answer() -> None:
    log = Log(params=SamplingParams(n=3, seed=7))
    (planned,) = log.run_decisions()
    dispatched = planned.dispatched  # type: ignore[attr-defined]
    assert isinstance(planned, JobPlanned)
    assert [t.params.seed for t in planned.tasks] == [7, 8, 9]
    assert all(t.params.n == 1 for t in planned.tasks) and len(dispatched) == 3
    for i, t in enumerate(planned.tasks):
        log.append(
            TaskCompleted(
                job_id="J",
                task_id=t.task_id,
                attempt=1,
                node_id="gpu-1",
                output=f"answer {i}",
                finish_reason="stop",
                usage=Usage(prompt_tokens=1, completion_tokens=2),
                ttft_ms=1,
                duration_ms=2,
            )
        )
        assert log.decide() == [] or i == 2  # done only when every choice is
    [done] = log.run_decisions()
    assert isinstance(done, JobCompleted)
    assert [c.output for c in done.choices] == ["answer 0", "answer 1", "answer 2"]
    assert done.output == "answer 0" and done.usage == Usage(prompt_tokens=1, completion_tokens=6)


def test_tasks_left_undispatched_by_a_lost_race_are_dispatched_next() -> None:
    # A plan without its dispatches (as written before plans carried them) followed by task 0's
    # dispatch; the worker's task.started then landed first, so the append of task 1's dispatch
    # was refused. Deciding again sends 1 and 2.
    log = Log(params=SamplingParams(n=3))
    (planned,) = log.decide()
    assert isinstance(planned, JobPlanned)
    log.append(planned.model_copy(update={"dispatched": ()}), planned.dispatched[0])
    log.append(TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1", delivery=1))
    again = log.decide()
    assert [(e.task_id, e.attempt) for e in again if isinstance(e, TaskDispatched)] == [
        ("J-1", 1),
        ("J-2", 1),
    ]
    log.append(*again)
    assert log.decide() == []


def test_retries_back_off_with_jitter_the_same_on_every_decision() -> None:
    log = Log(retry=RetryPolicy(backoff_s=1.0, max_backoff_s=3.0, jitter=0.5), max_attempts=4)
    log.run_decisions()
    failed_at = log.at + timedelta(milliseconds=10)
    log.append(_failed(1))
    assert log.decide(now=failed_at + timedelta(seconds=0.49)) == []  # at least half of 1 s
    (retry,) = log.decide(now=failed_at + timedelta(seconds=1.0))  # at most all of it
    assert isinstance(retry, TaskDispatched) and retry.attempt == 2
    waits = []
    for attempt in (2, 3):
        log.append(TaskDispatched(job_id="J", task_id="J-0", attempt=attempt, subject="s"))
        log.append(_failed(attempt))
        assert log.state is not None
        first = next(
            s / 100 for s in range(401) if log.decide(now=log.at + timedelta(seconds=s / 100))
        )
        assert first == next(  # deterministic: the same answer when asked again
            s / 100 for s in range(401) if log.decide(now=log.at + timedelta(seconds=s / 100))
        )
        waits.append(first)
    assert 1.0 <= waits[0] <= 2.01 and 1.5 <= waits[1] <= 3.01  # 2 s, then 4 s capped at 3


def test_a_job_past_its_deadline_fails_as_timed_out() -> None:
    log = Log(deadline_s=2.0)
    log.run_decisions()
    assert log.decide(now=T0 + timedelta(seconds=1.9)) == []
    (failed,) = log.decide(now=T0 + timedelta(seconds=2.1))
    assert isinstance(failed, JobFailed) and failed.code == "timeout"
    assert "deadline of 2s" in failed.reason


def test_a_known_model_whose_nodes_are_away_waits_for_them_an_unknown_one_fails_at_once() -> None:
    away = NodeView(
        serves=lambda m: False,
        node_live=lambda n: False,
        live_models=set,
        known=lambda m: m == "m",
    )
    log = Log()
    assert log.decide(away) == []  # its nodes may be back in a moment
    (failed,) = log.decide(away, now=T0 + timedelta(seconds=6))
    assert isinstance(failed, JobFailed) and failed.code == "model_not_served"
    assert "for 5s" in failed.reason
    nobody = NodeView(serves=lambda m: False, node_live=lambda n: False, live_models=set)
    (typo,) = Log().decide(nobody)  # no node has ever served it
    assert isinstance(typo, JobFailed) and typo.code == "model_not_served"


def test_a_job_event_filed_where_its_body_disagrees_is_refused() -> None:
    started = Envelope(
        TaskStarted(job_id="J", task_id="J-0", attempt=1, node_id="gpu-1"), actor="t"
    )
    lost = Envelope(_lost(), actor="t")
    assert disagreement(NAMES.report("J", "task.started", "gpu-1"), started) is None
    assert disagreement(NAMES.job("J", "task.lost"), lost) is None
    refused = {
        "under another node": (NAMES.report("J", "task.started", "gpu-2"), started),
        "as a decision": ("t.jobs.J.task.started", started),
        "a decision as a report": ("t.jobs.J.task.lost.gpu-1", lost),
        "under another job": (NAMES.report("K", "task.started", "gpu-1"), started),
    }
    for why, (subject, envelope) in refused.items():
        assert disagreement(subject, envelope) is not None, why
