"""A gateway that cannot start says why in one line: the ASGI server logs the whole traceback of
a failed start-up, which for one of dim's own errors (NATS unreachable, no signing key) only
hides the line that matters."""

from __future__ import annotations

import logging
import re

# the last line of a traceback that names one of dim's errors, e.g.
# "  | events.errors.ConnectError: cannot reach NATS at nats://...: ..."
_DIM_ERROR = re.compile(r"^[\s|]*(?:events|services|gateway|projections)\.[\w.]+: (.+)$", re.M)


class OneLineStartupFailure(logging.Filter):
    """Rewrites a logged traceback whose error is dim's own to that error's message."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "Traceback" in text and (found := _DIM_ERROR.findall(text)):
            record.msg, record.args = f"{self.role} cannot start: {found[-1]}", ()
        return True
