"""What the batch runner does next for a batch, from its view alone (pure).

The lines of a batch go to the mesh in order, at most `size` at a time: the lines to have
submitted are always the first `size` lines that have not ended (the window). As lines end the
window slides on. Nothing else need be remembered: every line submitted and not ended is in the
window (it was among the first `size` not ended when it was submitted, and lines before it only
end), so a runner that restarts finds the lines in flight by looking at the window, and
submitting a line of it again is harmless (its job id is fixed: the log stores it once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from projections.batch_status import BatchView


@dataclass(frozen=True, slots=True)
class Step:
    """What to do for a batch now."""

    start: bool = False  # record that the batch runs (batch.started)
    submit: tuple[int, ...] = ()  # lines to have submitted
    cancel: tuple[int, ...] = ()  # lines to cancel, if they were submitted
    finish: Literal["completed", "cancelled"] | None = None  # every line is settled: write out


def window(view: BatchView, size: int) -> tuple[int, ...]:
    """The first `size` lines of the batch that have not ended."""
    out: list[int] = []
    for index in view.ended_lines().missing(view.total):
        out.append(index)
        if len(out) == size:
            break
    return tuple(out)


def next_step(view: BatchView, size: int) -> Step:
    """The batch runner's next step for `view` with `size` lines in flight at most."""
    if view.tenant is None or view.terminal:
        return Step()
    lines = window(view, size)
    if view.status == "cancelling":
        # done once no line of the window runs (the runner checks which were submitted)
        return Step(cancel=lines, finish="cancelled")
    if not lines:
        return Step(finish="completed")
    return Step(start=view.status == "validating", submit=lines)
