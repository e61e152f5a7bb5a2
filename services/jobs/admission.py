"""Admission of new work: whether a model has room for it, at the door and in the orchestrator.

The door (`DoorLedger`, `door_room`): a gateway plans a job itself only while the model's nodes
have free slots for it — by their last heartbeats, less the tasks waiting in the model's queue
and those it sent itself that have not finished. `overloaded` and `tenant_full` are the bounds
the gateway answers 503/429 with.

The orchestrator (`FairQueue`): per model, at most `depth` tasks wait in the shared work queue
(dispatched, not yet started) beyond the free slots of the model's nodes (`room`, by their last
heartbeats: work for a free slot does not wait, so it does not count against other tenants);
beyond that, jobs wait here and are let through as tasks start —
highest priority first, then round-robin across tenants, first come first served within a
tenant. So one tenant's flood queues behind itself, not in front of everyone else.

A tenant's own first attempts waiting in a model's queue are bounded too (`tenant_depth`,
beyond the free slots): the shared queue is first come first served, so a tenant with a
1,000-task job in flight would otherwise keep `depth` of its tasks in front of every other
tenant's next one. With the bound, its job still keeps every slot busy (free slots take work
at once, and a few wait to take the next freed ones), while another tenant's task waits behind
at most `tenant_depth` of them. A tenant over its bound is out of the line until its tasks
start; the others are let through meanwhile.

Pure bookkeeping (no I/O). Counts come from events, which every orchestrator instance sees:
a dispatch of a first attempt adds one waiting task, its `task.started` takes it away. Retries
and reroutes are not held back: their work was admitted once already.

`decide` asks through a `Trial`, which answers as `FairQueue.admit` would, in turn, without
changing the queue; the runner applies the answers as soon as `decide` returns, and unwinds the
count of a task whose dispatch was then not stored (an append lost to another instance, whose
own dispatch is counted when its event arrives; a task that found no node) — which `admit`
alone left counted until a repair.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from projections.job_state import JobState, TaskState

# Priorities of the jobs dim makes from requests (a jobs-API caller chooses its own, 0-9): when a
# model's queue is full, held jobs go highest first, so a completion someone waits for goes
# before the lines of a batch (which OpenAI's API promises only within its completion window).
INTERACTIVE_PRIORITY = 1
BATCH_PRIORITY = 0


@dataclass(slots=True)
class FairQueue:
    """Held jobs per model, and the estimate of tasks waiting in each model's shared queue."""

    depth: int  # 0: no bound, every task goes at once
    # free slots of the model's live nodes (their capacity less their tasks in flight)
    room: Callable[[str], float] = lambda _model: 0.0
    tenant_depth: int = 0  # a tenant's own waiting first attempts beyond free slots (0: no bound)
    waiting: Counter[str] = field(default_factory=Counter)
    waiting_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, tenant)
    held: dict[str, dict[int, OrderedDict[str, deque[str]]]] = field(default_factory=dict)
    _granted: set[str] = field(default_factory=set)
    _where: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # job -> its place
    _open: Trial | None = None  # the trial of an unbounded queue (records nothing)

    def admit(self, model: str, tenant: str, priority: int, job_id: str) -> bool:
        """May a first attempt of `job_id` be dispatched now? If not, the job is held."""
        if not self.depth:
            return True
        if job_id in self._granted:
            self._granted.discard(job_id)
            self._count(model, tenant)
            return True
        if (
            self.waiting[model] < self.bound(model)
            and self.tenant_has_room(model, tenant)
            and self.peek(model) in (None, job_id)
        ):
            self._forget(job_id, rotate=True)
            self._count(model, tenant)
            return True
        if job_id not in self._where:
            lanes = self.held.setdefault(model, {}).setdefault(priority, OrderedDict())
            lanes.setdefault(tenant, deque()).append(job_id)
            self._where[job_id] = (model, priority, tenant)
        return False

    def bound(self, model: str) -> int:
        """How many first attempts of `model` may wait to start: `depth`, plus the free slots
        that will take them at once."""
        return self.depth + max(0, int(self.room(model)))

    def tenant_has_room(self, model: str, tenant: str, more: int = 0) -> bool:
        """Whether `tenant` may have one more first attempt of `model` waiting (beyond `more`
        let through and not counted yet): `tenant_depth` beyond the free slots."""
        if not self.tenant_depth:
            return True
        bound = self.tenant_depth + max(0, int(self.room(model)))
        return self.waiting_by[(model, tenant)] + more < bound

    def _count(self, model: str, tenant: str) -> None:
        self.waiting[model] += 1
        self.waiting_by[(model, tenant)] += 1

    def trial(self) -> Trial:
        """Admission for one decision, asked without changing this queue (with no bound, one
        that lets everything through and records nothing, shared)."""
        if not self.depth:
            if self._open is None:
                self._open = Trial(self)
            return self._open
        return Trial(self)

    def admitted(self, model: str, job_id: str, tenant: str) -> None:
        """A first attempt of `job_id` let through by a trial was dispatched (as `admit`)."""
        if not self.depth:
            return
        if job_id in self._granted:
            self._granted.discard(job_id)
        else:
            self._forget(job_id, rotate=True)
        self._count(model, tenant)

    def hold(self, model: str, tenant: str, priority: int, job_id: str) -> None:
        """Hold `job_id` for room in `model`'s queue (as `admit` does when it says no)."""
        if job_id not in self._where:
            lanes = self.held.setdefault(model, {}).setdefault(priority, OrderedDict())
            lanes.setdefault(tenant, deque()).append(job_id)
            self._where[job_id] = (model, priority, tenant)

    def peek_without(self, model: str, job_id: str) -> str | None:
        """`peek` as it will be once `job_id` is let through (out of its lane, whose tenant
        then goes to the back of the line)."""
        where = self._where.get(job_id)
        if where is None or where[0] != model:
            return self.peek(model)
        levels = self.held[model]
        _, priority, tenant = where
        top = max(levels)
        if priority != top:
            return self.peek(model)
        lanes = levels[top]
        for other, queue in lanes.items():
            if other != tenant and self.tenant_has_room(model, other):
                return queue[0]
        rest = [j for j in lanes[tenant] if j != job_id]
        if rest:
            return rest[0]
        lower = [p for p in levels if p != top]
        if not lower:
            return None
        lanes = levels[max(lower)]
        return lanes[next(iter(lanes))][0]

    def top_without(self, model: str, job_id: str) -> int:
        """The highest priority level held for `model` once `job_id` is out (-1: none)."""
        levels = self.held.get(model) or {}
        where = self._where.get(job_id)
        if where is not None and where[0] == model:
            _, priority, tenant = where
            lanes = levels[priority]
            if len(lanes) == 1 and len(lanes[tenant]) == 1:  # its level empties
                return max((p for p in levels if p != priority), default=-1)
        return max(levels, default=-1)

    def seen_dispatch(self, model: str, tenant: str) -> None:
        """A first attempt dispatched by another instance (its event arrived here)."""
        if self.depth:
            self._count(model, tenant)

    def started(self, model: str, tenant: str) -> None:
        """A first attempt left the queue: a worker took it."""
        if self.waiting[model] > 0:
            self.waiting[model] -= 1
        key = (model, tenant)
        if self.waiting_by[key] > 1:
            self.waiting_by[key] -= 1
        else:
            self.waiting_by.pop(key, None)

    def repair(self, model: str, reported: int) -> None:
        """What the workers last reported waiting for `model` bounds the estimate (it may have
        drifted up: an append lost to another instance); each tenant's share too."""
        self.waiting[model] = min(self.waiting[model], reported)
        for key in [k for k in self.waiting_by if k[0] == model]:
            self.waiting_by[key] = min(self.waiting_by[key], self.waiting[model])
            if not self.waiting_by[key]:
                del self.waiting_by[key]

    def peek(self, model: str, granted: Counter[str] | None = None) -> str | None:
        """The job to let through next: the highest priority, the tenant whose turn it is
        (of the tenants with room, counting `granted`: let through, not yet counted)."""
        levels = self.held.get(model)
        if not levels:
            return None
        for priority in sorted(levels, reverse=True):
            for tenant, queue in levels[priority].items():
                more = granted[tenant] if granted else 0
                if self.tenant_has_room(model, tenant, more):
                    return queue[0]
        return None

    def peek_as_held(self, model: str, job_id: str, tenant: str, priority: int) -> str | None:
        """`peek` as it will be once `job_id` (held nowhere yet) is held for `model`: at the end
        of its tenant's lane at `priority`, a lane of its own at the end if there is none."""
        levels = self.held.get(model) or {}
        for level in sorted({*levels, priority}, reverse=True):
            lanes: OrderedDict[str, deque[str]] = levels.get(level) or OrderedDict()
            for other, queue in lanes.items():
                if self.tenant_has_room(model, other):
                    return queue[0]
            if level == priority and tenant not in lanes and self.tenant_has_room(model, tenant):
                return job_id
        return None

    def release(self, model: str) -> list[str]:
        """Jobs to decide again now that the model's queue has room, in fair order."""
        out: list[str] = []
        granted: Counter[str] = Counter()  # per tenant
        bound = self.bound(model)
        while self.waiting[model] + len(out) < bound:
            job_id = self.peek(model, granted)
            if job_id is None:
                break
            granted[self._where[job_id][2]] += 1
            self._forget(job_id, rotate=True)
            self._granted.add(job_id)
            out.append(job_id)
        return out

    def held_by_model(self) -> Counter[str]:
        """Jobs held per model."""
        return Counter(model for model, _, _ in self._where.values())

    def held_by_tenant(self) -> Counter[str]:
        """Jobs held per tenant, every model together."""
        return Counter(tenant for _, _, tenant in self._where.values())

    def drop(self, job_id: str) -> None:
        """The job ended while held."""
        self._forget(job_id)
        self._granted.discard(job_id)

    def _forget(self, job_id: str, *, rotate: bool = False) -> None:
        where = self._where.pop(job_id, None)
        if where is None:
            return
        model, priority, tenant = where
        levels = self.held[model]
        lanes = levels[priority]
        queue = lanes[tenant]
        queue.remove(job_id)
        if not queue:
            del lanes[tenant]
        elif rotate:
            lanes.move_to_end(tenant)  # round-robin: this tenant goes to the back of the line
        if not lanes:
            del levels[priority]
        if not levels:
            del self.held[model]


@dataclass(slots=True)
class Trial:
    """One decision's admission asks (all for one job), answered as `FairQueue.admit` would
    answer them in turn, without changing the queue. `apply` then does to the queue what those
    answers did, in the same order; `unwind`, once the appends are done, takes back what was
    counted for a task whose dispatch was not stored."""

    fair: FairQueue
    admitted: set[str] = field(default_factory=set)  # task ids let through
    _ops: list[tuple[str, str, str, int]] = field(default_factory=list)  # let | hold, in order
    _held: tuple[str, int] | None = None  # (model, priority) the job is held for, by this trial
    _taken: dict[str, int] = field(default_factory=dict)  # per model, let through here
    _through: bool = False  # the job was let through once already in this decision
    _job: str = ""
    _tenant: str = ""
    _refused: set[str] = field(default_factory=set)  # models it said no to since its last let

    def admit(self, state: JobState, task: TaskState) -> bool:
        """May the task's first attempt be dispatched now?"""
        fair, model, job_id = self.fair, task.model, state.job_id
        if not fair.depth:
            return True
        if model in self._refused:  # nothing changed since it said no (a 1,000-task job asks
            return False  # for each task it still holds, at every decision)
        self._job = job_id
        if job_id in fair._granted and not self._through:
            return self._let(model, task, state.tenant)
        held = self._held if self._held is not None and self._held[0] == model else None
        if held is not None and job_id not in fair._where:
            # held by this trial, and in the queue nowhere else: where the hold will put it
            peek = fair.peek_as_held(model, job_id, state.tenant, held[1])
        elif self._through:
            peek, top = fair.peek_without(model, job_id), fair.top_without(model, job_id)
            if held is not None and held[1] > top:
                peek = job_id  # held again by this trial, alone on the highest level: it heads
        else:
            peek = fair.peek(model)
        taken = self._taken.get(model, 0)
        room = fair.waiting[model] + taken < fair.bound(model)
        if room and fair.tenant_has_room(model, state.tenant, taken) and peek in (None, job_id):
            return self._let(model, task, state.tenant)
        if self._held is None and (self._through or job_id not in fair._where):
            self._held = (model, state.priority)
            self._ops.append(("hold", model, state.tenant, state.priority))
        else:  # a no that changed nothing: the next ask gets it too
            self._refused.add(model)
        return False

    def _let(self, model: str, task: TaskState, tenant: str) -> bool:
        self._refused.clear()  # a let changes what the next ask sees
        self._through = True
        self._held = None  # out of the line again
        self._taken[model] = self._taken.get(model, 0) + 1
        self.admitted.add(task.task_id)
        self._tenant = tenant
        self._ops.append(("let", model, task.task_id, 0))
        return True

    def apply(self) -> None:
        """Do to the queue what the answers did, in order — at once, before anything else may
        ask (another job's decision runs while this one's events are appended)."""
        for kind, model, what, priority in self._ops:
            if kind == "hold":
                self.fair.hold(model, what, priority, self._job)
            else:
                self.fair.admitted(model, self._job, self._tenant)

    def unwind(self, stored: set[str]) -> None:
        """Take back the waiting task counted for each let-through whose dispatch was not stored
        (`stored`: task ids): the append lost to another instance, whose own dispatch is counted
        when it arrives, or the task found no eligible node."""
        for kind, model, what, _ in self._ops:
            if kind == "let" and what not in stored:
                self.fair.started(model, self._tenant)


def door_room(free: float, waiting: int, sent: int) -> float:
    """Room for a model at the door: its nodes' free slots by their last heartbeats (`free`),
    less the tasks waiting in its shared queue and those sent from this door not yet done."""
    return free - waiting - sent


def overloaded(waiting: int, limit: int) -> bool:
    """Whether more tasks wait for a model than its bound (`limit`; 0: no bound)."""
    return bool(limit) and waiting >= limit


def tenant_full(held: int, limit: int) -> bool:
    """Whether a tenant has as many jobs held for capacity as it may (`limit`; 0: no bound)."""
    return bool(limit) and held >= limit


@dataclass(slots=True)
class _Sent:
    at: float  # monotonic
    models: list[str]  # one entry per task sent


@dataclass(slots=True)
class DoorLedger:
    """The tasks a gateway sent at the door and has not seen finish, per model. A task sent
    shows in its node's heartbeat (in flight, or waiting) by the next one, so it is counted here
    until it finishes or for `window_s` at most."""

    window_s: float
    _sent: OrderedDict[str, _Sent] = field(default_factory=OrderedDict)  # job -> its tasks
    _counts: dict[str, int] = field(default_factory=dict)  # model -> tasks counted in `_sent`

    def sent(self, model: str) -> int:
        """Tasks for `model` sent from here and counted still."""
        return self._counts.get(model, 0)

    def record(self, job_id: str, models: Iterable[str], now: float) -> None:
        """The job's tasks (one model entry per task) were sent at `now` (monotonic)."""
        sent = _Sent(now, list(models))
        self._sent[job_id] = sent
        for model in sent.models:
            self._counts[model] = self._counts.get(model, 0) + 1

    def ended(self, job_id: str, event_type: str) -> None:
        """A job's `task.completed` or terminal event went by: a task's slot is free again, or
        all the job's. (A job of several tasks frees a slot per task; which model's, when its
        tasks ask for several, is a guess the next heartbeat corrects.)"""
        sent = self._sent.get(job_id)
        if sent is None:
            return
        if event_type == "task.completed" and len(sent.models) > 1:
            self._counts[sent.models.pop()] -= 1
            return
        self._release(job_id)

    def expire(self, now: float) -> None:
        """Stop counting what was sent longer than `window_s` before `now`."""
        while self._sent:
            job_id, sent = next(iter(self._sent.items()))
            if now - sent.at <= self.window_s:
                return
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        for model in self._sent.pop(job_id).models:
            self._counts[model] -= 1
