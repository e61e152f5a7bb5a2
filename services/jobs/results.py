"""How a job ends: its result from its tasks' (one answer, `n` choices, a collaborative merge, a
comparative consensus, a chain's last step), which task losses its pattern tolerates, and how a
task is named in a failure."""

from __future__ import annotations

from events.inference import Usage
from events.jobs import Choice, JobCompleted, JobFailed, Part, TaskCompleted
from projections.job_state import JobState, TaskState
from services.jobs import consensus


def tolerated(state: JobState, task: TaskState) -> bool:
    """Whether the job may finish without this task (on_error=partial, a shard or candidate)."""
    spec = state.collaborative or state.comparative
    return spec is not None and spec.on_error == "partial" and task.role in ("shard", "candidate")


def describe(state: JobState, task: TaskState) -> str:
    """The task in words, for errors: a step by name, a shard by input, a candidate by model."""
    if task.role == "step":
        total = sum(1 for t in state.tasks if t.role == "step")
        return f"step '{task.name}' ({task.index + 1} of {total}, task {task.task_id})"
    if task.role == "shard":
        return f"shard {task.index} (input {task.index}, task {task.task_id})"
    if task.role == "candidate":
        return f"candidate {task.index} (model {task.model}, task {task.task_id})"
    if task.role in ("reduce", "judge"):
        return f"the {task.role} step (task {task.task_id})"
    return f"task {task.task_id}"


def _part(task: TaskState) -> Part:
    return Part(
        task_id=task.task_id,
        role=task.role,
        index=task.index,
        name=task.name,
        model=task.model,
        node_id=task.ran_on,
        status="completed" if task.status == "completed" else "failed",
        output=task.output,
        finish_reason=task.finish_reason,
        error=None if task.status == "completed" else f"({task.error_kind}) {task.error}",
        usage=task.usage,
    )


def finish(state: JobState) -> JobCompleted | JobFailed:
    """The job's end once every task is final (completed, or failed and tolerated)."""
    done = [t for t in state.tasks if t.status == "completed"]
    failed = [t for t in state.tasks if t.status != "completed"]
    errors = tuple(f"{describe(state, t)}: ({t.error_kind}) {t.error}" for t in failed)
    if state.pattern == "single":
        return _finish_single(state)
    usage = Usage()
    for t in done:
        usage = usage + t.usage
    parts = tuple(_part(t) for t in state.tasks)
    agreed = None
    if state.pattern == "collaborative":
        spec = state.collaborative
        assert spec is not None
        shards = [t for t in done if t.role == "shard"]
        if not shards:
            return JobFailed(
                job_id=state.job_id,
                reason="every shard failed: " + "; ".join(errors),
                code="task_failed",
            )
        reduce_task = next((t for t in done if t.role == "reduce"), None)
        output = (
            reduce_task.output or ""
            if reduce_task is not None
            else spec.separator.join(t.output or "" for t in sorted(shards, key=lambda t: t.index))
        )
        finish_reason = reduce_task.finish_reason if reduce_task else "stop"
    elif state.pattern == "comparative":
        spec_c = state.comparative
        assert spec_c is not None
        votes = consensus.votes_of(state)
        if not votes:
            return JobFailed(
                job_id=state.job_id,
                reason="no candidate answered: " + "; ".join(errors),
                code="task_failed",
            )
        judge = next((t for t in done if t.role == "judge"), None)
        outcome = (
            consensus.judged(votes, judge.output or "", min_agreement=spec_c.min_agreement)
            if judge is not None
            else consensus.vote(
                votes,
                weighted=spec_c.consensus == "weighted",
                min_agreement=spec_c.min_agreement,
            )
        )
        winner = next(
            (t for t in done if t.role == "candidate" and t.index == outcome.winner), None
        )
        output = winner.output or "" if winner is not None else ""
        finish_reason = winner.finish_reason if winner is not None else "stop"
        agreed = outcome
    else:
        last = max((t for t in state.tasks if t.role == "step"), key=lambda t: t.index)
        output = last.output or ""
        finish_reason = last.finish_reason
    return JobCompleted(
        job_id=state.job_id,
        output=output,
        finish_reason=finish_reason or "stop",
        usage=usage,
        tenant=state.tenant,
        parts=parts,
        errors=errors,
        consensus=agreed,
        model=state.model,
        owner=state.owner,
        key_id=state.key_id,
        end_user=state.end_user,
    )


def _finish_single(state: JobState) -> JobCompleted:
    task = state.tasks[0]
    # The n choices share one prompt: counted once, as OpenAI does; completions add up.
    usage = Usage(
        prompt_tokens=max(t.usage.prompt_tokens for t in state.tasks),
        completion_tokens=sum(t.usage.completion_tokens for t in state.tasks),
        estimated=any(t.usage.estimated for t in state.tasks),
    )
    choices = tuple(
        Choice(
            index=i,
            output=t.output or "",
            finish_reason=t.finish_reason or "stop",
            tool_calls=t.tool_calls,
            logprobs=t.logprobs,
        )
        for i, t in enumerate(state.tasks)
    )
    return JobCompleted(
        job_id=state.job_id,
        output=task.output or "",
        finish_reason=task.finish_reason or "stop",
        usage=usage,
        tenant=state.tenant,
        choices=choices if len(choices) > 1 else (),
        tool_calls=task.tool_calls,
        logprobs=task.logprobs,
        embeddings=task.embeddings,
        model=state.model,
        owner=state.owner,
        key_id=state.key_id,
        end_user=state.end_user,
    )


def of_only_task(job_id: str, done: TaskCompleted) -> JobCompleted:
    """The result of a job of one task, from that task's `task.completed` alone (what a gateway
    answers with before `job.completed` is appended; `finish` makes the same)."""
    return JobCompleted(
        job_id=job_id,
        output=done.output,
        finish_reason=done.finish_reason,
        usage=done.usage,
        tool_calls=done.tool_calls,
        logprobs=done.logprobs,
        embeddings=done.embeddings,
    )
