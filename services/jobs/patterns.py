"""Per-pattern logic, pure: how a job becomes tasks and what a templated task's prompt is (the
result once every task has finished is in `services.jobs.results`).

- single: one task per choice (`n`).
- collaborative: one `shard` task per input, then (aggregate=reduce) one `reduce` task over the
  shards' outputs; concat joins the outputs in input order.
- comparative: one `candidate` task per model on the same prompt, then (consensus=judge) one
  `judge` task; consensus by `services.jobs.consensus`.
- chained: one `step` task per step, each after the previous one, its prompt rendered from the
  input and earlier outputs.
"""

from __future__ import annotations

from events.inference import Prompt
from events.jobs import JobPlanned, JobSubmitted, TaskSpec
from events.patterns import MAX_SHARDS, Split
from projections.job_state import JobState, TaskState
from services.jobs import consensus
from services.jobs.templates import render


def task_id(job_id: str, index: int) -> str:
    """The id of a job's `index`-th task."""
    return f"{job_id}-{index}"


def split(text: str, how: Split, limit: int = MAX_SHARDS) -> tuple[str, ...]:
    """Cut one large input into shards (see `Split`); never an empty shard. More than `limit`
    shards is a `ValueError`, raised before more than `limit` are built."""
    if how.by == "chars":
        if -(-len(text) // how.size) > limit:
            raise _too_many(len(text), how, limit)
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
        if len(shards) > limit:
            raise _too_many(len(text), how, limit)
    if current or not shards:
        shards.append(current)
    return tuple(shards)


def _too_many(chars: int, how: Split, limit: int) -> ValueError:
    return ValueError(
        f"input: {chars:,} characters split by {how.by} of {how.size:,} make more than {limit} "
        "shards; raise split.size"
    )


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
                job_prompt=True,
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
            job_prompt=True,
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
        prompt = state.prompt if task.job_prompt and task.prompt is None else task.prompt
        assert prompt is not None
        return prompt
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
        values["candidates"] = consensus.listing(consensus.votes_of(state))
    elif task.role == "step":
        for t in state.tasks:
            if t.role == "step" and t.index < task.index and t.name:
                values[f"steps.{t.name}"] = values[f"steps.{t.name}.output"] = t.output or ""
        if task.index:
            values["previous"] = state.tasks[task.index - 1].output or ""
    return Prompt(text=render(task.template, values))
