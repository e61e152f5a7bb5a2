"""Per-pattern logic, pure: how a job becomes tasks, what a templated task's prompt is, and what
the job's result is once every task has finished.

- single: one task per choice (`n`).
- collaborative: one `shard` task per input, then (aggregate=reduce) one `reduce` task over the
  shards' outputs; concat joins the outputs in input order.
- comparative: one `candidate` task per model on the same prompt, then (consensus=judge) one
  `judge` task; consensus by `services.jobs.consensus`.
- chained: one `step` task per step, each after the previous one, its prompt rendered from the
  input and earlier outputs.
"""

from __future__ import annotations

from events.inference import Prompt, Usage
from events.jobs import Choice, JobCompleted, JobFailed, JobPlanned, JobSubmitted, Part, TaskSpec
from events.patterns import Split
from projections.job_state import JobState, TaskState
from services.jobs import consensus
from services.jobs.templates import render


def task_id(job_id: str, index: int) -> str:
    """The id of a job's `index`-th task."""
    return f"{job_id}-{index}"


def split(text: str, how: Split) -> tuple[str, ...]:
    """Cut one large input into shards (see `Split`); never an empty shard."""
    if how.by == "chars":
        return tuple(text[i : i + how.size] for i in range(0, len(text), how.size)) or ("",)
    shards: list[str] = []
    current = ""
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if current and len(current) + 2 + len(para) > how.size:
            shards.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
        while len(current) > how.size:  # one paragraph longer than a shard
            shards.append(current[: how.size])
            current = current[how.size :]
    if current or not shards:
        shards.append(current)
    return tuple(shards)


def models_of(state: JobState | JobSubmitted) -> list[str]:
    """Every model the job's tasks will ask for, in order, without repeats."""
    models: list[str] = []
    if state.comparative is not None:
        models += [c.model for c in state.comparative.candidates]
        if state.comparative.judge_model:
            models.append(state.comparative.judge_model)
    elif state.chained is not None:
        models += [s.model or state.model for s in state.chained.steps]
    else:
        models.append(state.model)
    return list(dict.fromkeys(models))


# --- planning --------------------------------------------------------------------------------


def _spec(state: JobState, number: int, **fields: object) -> TaskSpec:
    """Task `number` of the job: the job's model, node, tenant and (one choice of) its sampling
    unless `fields` say otherwise."""
    base: dict[str, object] = {
        "task_id": task_id(state.job_id, number),
        "model": state.model,
        "node_id": state.node_id,
        "tenant": state.tenant,
    }
    if "params" not in fields:
        base["params"] = state.params.model_copy(update={"n": 1})
    return TaskSpec(**(base | fields))


def plan(state: JobState) -> JobPlanned:
    """The job's tasks, in index order of their ids."""
    planners = {
        "collaborative": _plan_collaborative,
        "comparative": _plan_comparative,
        "chained": _plan_chained,
    }
    tasks = planners.get(state.pattern, _plan_single)(state)
    return JobPlanned(job_id=state.job_id, tasks=tuple(tasks))


def _plan_single(state: JobState) -> list[TaskSpec]:
    """One task per requested choice, each with n = 1. Choice i samples with seed + i (seed i for
    i > 0 when none is given), so even a deterministic engine gives n different answers."""
    tasks = []
    for i in range(state.params.n):
        seed = state.params.seed
        if i:
            seed = (seed or 0) + i
        tasks.append(
            _spec(
                state,
                i,
                prompt=state.prompt,
                params=state.params.model_copy(update={"n": 1, "seed": seed}),
                index=i,
            )
        )
    return tasks


def _plan_collaborative(state: JobState) -> list[TaskSpec]:
    spec = state.collaborative
    assert spec is not None
    shards = [
        _spec(state, i, prompt=prompt, role="shard", index=i)
        for i, prompt in enumerate(spec.inputs)
    ]
    if spec.aggregate == "reduce":
        after = tuple(t.task_id for t in shards)
        shards.append(
            _spec(state, len(shards), role="reduce", after=after, template=spec.reduce_prompt)
        )
    return shards


def _plan_comparative(state: JobState) -> list[TaskSpec]:
    spec = state.comparative
    assert spec is not None
    tasks = [
        _spec(
            state,
            i,
            model=c.model,
            prompt=state.prompt,
            node_id=c.node_id,
            role="candidate",
            index=i,
        )
        for i, c in enumerate(spec.candidates)
    ]
    if spec.consensus == "judge":
        assert spec.judge_model is not None
        tasks.append(
            _spec(
                state,
                len(tasks),
                model=spec.judge_model,
                params=state.params.model_copy(update={"n": 1, "temperature": 0.0}),
                node_id=None,
                role="judge",
                after=tuple(t.task_id for t in tasks),
                template=spec.judge_prompt,
            )
        )
    return tasks


def _plan_chained(state: JobState) -> list[TaskSpec]:
    spec = state.chained
    assert spec is not None
    tasks: list[TaskSpec] = []
    for i, step in enumerate(spec.steps):
        update: dict[str, object] = {"n": 1}
        if step.max_tokens is not None:
            update["max_tokens"] = step.max_tokens
        tasks.append(
            _spec(
                state,
                i,
                model=step.model or state.model,
                params=state.params.model_copy(update=update),
                node_id=step.node_id,
                role="step",
                index=i,
                name=step.name,
                after=(tasks[-1].task_id,) if tasks else (),
                template=step.prompt,
                timeout_s=step.timeout_s,
                max_attempts=step.max_attempts,
            )
        )
    return tasks


# --- rendering -------------------------------------------------------------------------------


def prompt_for(state: JobState, task: TaskState) -> Prompt:
    """The prompt of a task whose dependencies have finished (its own, or its template's)."""
    if task.template is None:
        assert task.prompt is not None
        return task.prompt
    values: dict[str, str] = {}
    if state.prompt is not None:
        values["input"] = state.prompt.render()
    done = [state.task(t) for t in task.after]
    if task.role == "reduce":
        spec = state.collaborative
        assert spec is not None
        outputs = [t.output or "" for t in done if t is not None and t.status == "completed"]
        values["outputs"] = spec.separator.join(outputs)
        for t in done:
            if t is not None:
                values[f"outputs.{t.index}"] = t.output or ""
    elif task.role == "judge":
        values["candidates"] = consensus.listing(_votes(state))
    elif task.role == "step":
        for t in state.tasks:
            if t.role == "step" and t.index < task.index and t.name:
                values[f"steps.{t.name}"] = values[f"steps.{t.name}.output"] = t.output or ""
        if task.index:
            values["previous"] = state.tasks[task.index - 1].output or ""
    return Prompt(text=render(task.template, values))


# --- finishing -------------------------------------------------------------------------------


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


def _votes(state: JobState) -> list[consensus.Vote]:
    spec = state.comparative
    assert spec is not None
    return [
        consensus.Vote(
            index=t.index,
            model=t.model,
            output=t.output or "",
            weight=spec.candidates[t.index].weight,
        )
        for t in state.tasks
        if t.role == "candidate" and t.status == "completed"
    ]


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
        votes = _votes(state)
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
        Choice(index=i, output=t.output or "", finish_reason=t.finish_reason or "stop")
        for i, t in enumerate(state.tasks)
    )
    return JobCompleted(
        job_id=state.job_id,
        output=task.output or "",
        finish_reason=task.finish_reason or "stop",
        usage=usage,
        tenant=state.tenant,
        choices=choices if len(choices) > 1 else (),
    )
