"""What a worker has done so far, counted where it happens (taking, running, aborting tasks) and
reported in its node record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Tally:
    """The worker's counts."""

    in_flight: int = 0  # task attempts running now
    completed: int = 0
    failed: int = 0
    tokens_out: int = 0
    aborted: int = 0  # engine requests aborted because their job ended
    skipped: int = 0  # tasks not run: superseded attempts, tasks of jobs that already ended
    latency_sum_s: float = 0.0  # of the completed attempts

    @property
    def avg_latency_ms(self) -> float:
        """The completed attempts' mean duration."""
        if not self.completed:
            return 0.0
        return round(self.latency_sum_s * 1000 / self.completed, 3)
