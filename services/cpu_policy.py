"""The CPU scheduling policy of dim's processes: Linux's SCHED_BATCH unless told otherwise.

A request crosses nats-server many times (gateway → server → worker → server → gateway ...), and
under the default policy every message that wakes a process makes it preempt whichever process
was running on that core. With the whole mesh on one machine that means switches, not work, and
a preempted process comes back to cold caches. A SCHED_BATCH task does not preempt on wake-up:
it runs when the running task blocks or its slice ends, so each process drains what has arrived
in one go. The share of CPU each gets is unchanged (nice values are untouched), and a process
woken while a core is idle runs at once as before, so one request at a time is as fast.
What it gains is measured in docs/benchmarks.md.

The policy is per thread and inherited by threads and processes created afterwards, so it is set
first thing in each process; `DIM_SCHED_BATCH=false` keeps the default policy. Elsewhere than
Linux this does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def use_batch_policy(enabled: bool = True) -> bool:
    """Put the calling thread (and what it starts from now on) under SCHED_BATCH; whether it
    is. Never raises: a platform or a sandbox without the policy keeps the default."""
    if not enabled or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def children_in_batch_policy(enabled: bool = True) -> Iterator[None]:
    """Processes started inside this block run under SCHED_BATCH (they inherit it from the
    thread that starts them); the calling thread gets its own policy back afterwards."""
    if not enabled or not hasattr(os, "SCHED_BATCH"):
        yield
        return
    before = os.sched_getscheduler(0)
    changed = before != os.SCHED_BATCH and use_batch_policy()
    try:
        yield
    finally:
        if changed:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, before, os.sched_param(0))
