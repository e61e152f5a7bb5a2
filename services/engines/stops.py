"""Stop strings over streamed text: emit only text that cannot be the start of a stop string."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back what is safe to emit, and whether a stop string was hit."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add `text`; returns the text now safe to emit (never any part of a stop string)."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
            return out
        keep = self._hold
        out = self._pending[: len(self._pending) - keep] if keep else self._pending
        self._pending = self._pending[len(out) :]
        return out

    def flush(self) -> str:
        """At the natural end of the stream: whatever is held back is plain text."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
