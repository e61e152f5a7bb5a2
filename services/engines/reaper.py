"""Processes an engine starts end with the worker, however the worker ends.

vLLM runs its engine core (and, on a CPU, its model runner) in processes of its own. A worker
that stops cleanly shuts them down; one killed outright (SIGKILL, the OOM killer) would leave
them behind, holding the GPU's memory, so the next worker on the node could not load. A reaper
is a small process that waits for the worker's end — the end of a pipe only the worker holds,
which the system closes however the worker dies — and then kills the processes it was given.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable

_REAP = """
import os, signal, sys
sys.stdin.buffer.read()  # returns once the worker is gone (or lets go of us)
for pid in map(int, sys.argv[1:]):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


class Reaper:
    """Kills `pids` when this process ends; `release()` first when they ended cleanly."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = tuple(sorted(set(pids)))
        self._proc: subprocess.Popen[bytes] | None = None
        if self.pids:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _REAP, *map(str, self.pids)],
                stdin=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C to the worker's group is not its business
            )

    def release(self) -> None:
        """The processes were shut down cleanly: stop the reaper without it killing anything
        (their ids may soon belong to others)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc = None


def children() -> set[int]:
    """Ids of this process's descendants."""
    import psutil  # a dependency of vLLM, the engine that needs a reaper

    return {p.pid for p in psutil.Process().children(recursive=True)}
