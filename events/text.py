"""Joining a task's token chunks back into its text: chunks carry their offset in the output, so
repeats (a redelivered task streams again from 0) are dropped and early chunks wait for the gap."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TextAssembler:
    """Joins token chunks into the output, by offset: repeats are dropped, gaps wait.

    A task redelivered to another worker streams again from offset 0; only text past what the
    reader already has is new.
    """

    text: str = ""
    _early: dict[int, str] = field(default_factory=dict)

    def add(self, offset: int, chunk: str) -> str:
        """Take a chunk; returns the text it adds (possibly with earlier-held chunks)."""
        if offset > len(self.text):
            self._early[offset] = chunk
            return ""
        new = chunk[len(self.text) - offset :]
        self.text += new
        while self._early:
            ready = [o for o in self._early if o <= len(self.text)]
            if not ready:
                break
            for o in sorted(ready):
                piece = self._early.pop(o)[len(self.text) - o :]
                self.text += piece
                new += piece
        return new
