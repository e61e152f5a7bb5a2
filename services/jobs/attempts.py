"""A task's attempts: how many it may make, whether it is final, and how long it backs off after
a failed one (the job's retry policy, with a jitter drawn from the job, task and attempt so every
decision on the same state waits the same)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from projections.job_state import JobState, TaskState


def max_attempts(state: JobState, task: TaskState) -> int:
    """Attempts the task may make."""
    return task.max_attempts or state.max_attempts


def final(state: JobState, task: TaskState) -> bool:
    """Whether the task will change no more: completed, or failed with no attempt left."""
    if task.status == "completed":
        return True
    return task.status == "failed" and not (
        task.retriable and task.attempt < max_attempts(state, task)
    )


def backoff(state: JobState, task: TaskState) -> timedelta:
    """How long the task waits after its failed attempt: doubling per attempt, capped, less a
    jitter share drawn from (job, task, attempt) — so it is the same on every decision."""
    policy = state.retry
    base = min(policy.max_backoff_s, policy.backoff_s * 2 ** max(0, task.attempt - 1))
    digest = hashlib.blake2b(
        f"{state.job_id}/{task.task_id}/{task.attempt}".encode(), digest_size=4
    )
    share = int.from_bytes(digest.digest(), "big") / 2**32
    return timedelta(seconds=base * (1 - policy.jitter * share))
