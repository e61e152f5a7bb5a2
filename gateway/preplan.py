"""Planning a job where it comes in, when that is plainly safe: the fast path to a first token.

An orchestrator plans every job by appending `job.planned` and then sending its work, one
JetStream round trip (and one process hop) before any worker can start. For the common job —
every task bound for its model's shared subject, with free slots waiting for it — that plan is
known before the job is submitted: it is what `decide` would do first. The gateway then records
it in the job's `job.submitted` (`plan`) and, once that is stored, sends its work
(`gateway.jobs.send_planned_work`); orchestrators fold the plan as if `job.planned` had followed
and send the work of tasks that have not started a moment later (same ids: JetStream keeps one
copy). The decision is stored before any effect, as always, so nothing changes for crash safety;
it skips an append and the hop through an orchestrator.

The gateway plans at the door only while the work would start at once: the models' nodes (by
their last heartbeats) have more free slots than tasks wait for them or were sent from here and
have not finished, and no orchestrator holds a job for capacity. Otherwise — a full queue, a
chosen node (strategy, pin, filters, fan-out shards), a step that waits for another, a long
prompt — an orchestrator plans as before, and its fair queue orders what waits.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from events.envelope import Envelope
from events.jobs import JobSubmitted
from events.records import TenantQueue
from events.subjects import Names
from events.watched import WatchedBucket
from projections.job_state import JobState, TaskState, evolve
from services.jobs.admission import DoorLedger, door_room
from services.jobs.decide import plan_at_door
from services.jobs.placement import view_of
from services.registry.live import LiveNodes

# Prompts longer than this are planned by an orchestrator: a plan at the door repeats the
# prompt in the task it plans, and for a long prompt the generation dwarfs the saved hop.
MAX_PROMPT_CHARS = 16_384


class Preplanner:
    """Plans plain jobs at the door while their models have free slots."""

    def __init__(
        self,
        nodes: LiveNodes,
        queues: WatchedBucket[TenantQueue],
        names: Names,
        *,
        heartbeat_s: float,
        dispatch_timeout_s: float,
    ) -> None:
        self.nodes = nodes
        self.queues = queues
        self.names = names
        self.dispatch_timeout_s = dispatch_timeout_s
        self.ledger = DoorLedger(window_s=1.5 * heartbeat_s)  # a heartbeat and a half
        self.planned = 0  # jobs planned at the door, since start

    def plan(self, job: JobSubmitted) -> JobSubmitted:
        """`job` with its plan when it can be planned here; else `job` as it is."""
        if job.prompt is not None and len(job.prompt.render()) > MAX_PROMPT_CHARS:
            return job
        if any(q.held for q in self.queues.items.values()):
            return job  # some job waits for capacity: the fair queue decides who goes next
        state = evolve(None, Envelope(job, actor="gateway", id=""), 0)  # to decide on, not stored
        assert state is not None
        self.ledger.expire(time.monotonic())
        taken: list[str] = []

        def admit(_: JobState, task: TaskState) -> bool:
            if self.room(task.model) - taken.count(task.model) < 1:
                return False
            taken.append(task.model)
            return True

        pool = self.nodes.pool
        mesh = view_of(
            self.nodes,
            admit=admit,
            pick=lambda need: pool.pick(need, random.random(), self.nodes.as_of()),
        )
        planned = plan_at_door(
            state, datetime.now(UTC), mesh, self.names, dispatch_timeout_s=self.dispatch_timeout_s
        )
        if planned is None:
            return job
        self.ledger.record(job.job_id, taken, time.monotonic())
        self.planned += 1
        return job.model_copy(update={"plan": planned})

    def room(self, model: str) -> float:
        """Room for `model` at this door (`admission.door_room`)."""
        nodes = self.nodes
        return door_room(nodes.pool.room(model), nodes.waiting(model), self.ledger.sent(model))

    def ended(self, job_id: str, event_type: str) -> None:
        """A job's `task.completed` or terminal event went by (`DoorLedger.ended`)."""
        self.ledger.ended(job_id, event_type)
