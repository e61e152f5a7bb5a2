"""Every retry loop's policy, named, in one place: how long each wait is and when to give up.

A loop asks its policy for the wait before try `n` (counting from 1 for the first retry) and
whether it may try again. The numbers are the ones each loop had before it had a name; the job
level policy (`events.patterns.RetryPolicy`) is part of a job's request and is applied by
`services.jobs.decide`.

| policy | used by | waits | gives up |
|---|---|---|---|
| `PUBLISH` | `Bus.publish` (no ack, "not now") | 0.1 s doubling to 2 s | after `publish_retries` |
| `READ` | `events.history.read_events` (interrupted) | 0.1 s doubling to 2 s | `patience_s` of no progress |
| `START` | `events.errors.while_unavailable` (start-up) | 0.5 s | never (until stopped) |
| `REDELIVERY` | `events.consume` (a handler's `Retry`) | 0.5 s doubling to 30 s | the consumer's `max_deliver` |
| `LANE` | `events.consume.run_ordered` (one job's lane) | 0.4 s doubling to 5 s | after 5 tries (NATS being away: never) |
| `RACED_START` | the worker starting a redelivered task while its job moves on | none (it checks the log again) | after 5 tries: goes ahead |
| `VIEW_WRITE` | the projector's compare-and-set of a view or a usage record (`Bucket.change`) | none | after 10 tries |
| `DECISION` | the orchestrator re-deciding after a lost append | none | after 8 rounds |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of `first_s`, multiplied by `factor` per try, at most `max_s`; `tries` in all
    (None: no limit)."""

    name: str
    first_s: float
    max_s: float
    factor: float = 2.0
    tries: int | None = None

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first retry)."""
        return float(min(self.first_s * self.factor ** max(0, retry - 1), self.max_s))

    def more(self, tried: int) -> bool:
        """Whether another try may follow `tried` tries."""
        return self.tries is None or tried < self.tries

    def with_tries(self, tries: int | None) -> Backoff:
        """This policy, giving up after `tries` tries."""
        return Backoff(self.name, self.first_s, self.max_s, self.factor, tries)


PUBLISH = Backoff("publish", first_s=0.1, max_s=2.0)
READ = Backoff("read", first_s=0.1, max_s=2.0)
START = Backoff("start", first_s=0.5, max_s=0.5, factor=1.0)
REDELIVERY = Backoff("redelivery", first_s=0.5, max_s=30.0)
LANE = Backoff("lane", first_s=0.4, max_s=5.0, tries=5)
RACED_START = Backoff("raced-start", first_s=0.0, max_s=0.0, tries=5)
VIEW_WRITE = Backoff("view-write", first_s=0.0, max_s=0.0, tries=10)
DECISION = Backoff("decision", first_s=0.0, max_s=0.0, tries=8)
