"""Fair admission of new work: per model, at most `depth` tasks wait in the shared work queue
(dispatched, not yet started); beyond that, jobs wait here and are let through as tasks start —
highest priority first, then round-robin across tenants, first come first served within a
tenant. So one tenant's flood queues behind itself, not in front of everyone else.

Pure bookkeeping (no I/O). Counts come from events, which every orchestrator instance sees:
a dispatch of a first attempt adds one waiting task, its `task.started` takes it away. Retries
and reroutes are not held back: their work was admitted once already.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class FairQueue:
    """Held jobs per model, and the estimate of tasks waiting in each model's shared queue."""

    depth: int  # 0: no bound, every task goes at once
    waiting: Counter[str] = field(default_factory=Counter)
    held: dict[str, dict[int, OrderedDict[str, deque[str]]]] = field(default_factory=dict)
    _granted: set[str] = field(default_factory=set)
    _where: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # job -> its place

    def admit(self, model: str, tenant: str, priority: int, job_id: str) -> bool:
        """May a first attempt of `job_id` be dispatched now? If not, the job is held."""
        if not self.depth:
            return True
        if job_id in self._granted:
            self._granted.discard(job_id)
            self.waiting[model] += 1
            return True
        if self.waiting[model] < self.depth and self.peek(model) in (None, job_id):
            self._forget(job_id, rotate=True)
            self.waiting[model] += 1
            return True
        if job_id not in self._where:
            lanes = self.held.setdefault(model, {}).setdefault(priority, OrderedDict())
            lanes.setdefault(tenant, deque()).append(job_id)
            self._where[job_id] = (model, priority, tenant)
        return False

    def seen_dispatch(self, model: str) -> None:
        """A first attempt dispatched by another instance (its event arrived here)."""
        if self.depth:
            self.waiting[model] += 1

    def started(self, model: str) -> None:
        """A first attempt left the queue: a worker took it."""
        if self.waiting[model] > 0:
            self.waiting[model] -= 1

    def peek(self, model: str) -> str | None:
        """The job to let through next: the highest priority, the tenant whose turn it is."""
        levels = self.held.get(model)
        if not levels:
            return None
        lanes = levels[max(levels)]
        tenant = next(iter(lanes))
        return lanes[tenant][0]

    def release(self, model: str) -> list[str]:
        """Jobs to decide again now that the model's queue has room, in fair order."""
        out: list[str] = []
        while self.waiting[model] + len(out) < self.depth:
            job_id = self.peek(model)
            if job_id is None:
                break
            self._forget(job_id, rotate=True)
            self._granted.add(job_id)
            out.append(job_id)
        return out

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
