"""Coalescing of token text into chunks: the first piece on the event loop's next turn, then by
time or size."""

from __future__ import annotations

from dataclasses import dataclass

from events.inference import TokenLogprob


@dataclass(slots=True)
class Piece:
    """A chunk ready to publish: text, token count, and its offset in the output; the tokens'
    ids when the engine gave them for every part of the piece."""

    index: int
    offset: int
    text: str
    tokens: int
    token_ids: tuple[int, ...] | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


class Coalescer:
    """Buffers streamed text; `add` returns a piece when it is time to publish one.

    The first text is not held back by time: while `first_waiting`, the worker cuts it (`cut`)
    as soon as the engine lets the event loop turn — time to first token is what users feel —
    so an engine that produced more in the same breath, or the whole answer (a tiny or cached
    one; the simulated engine at full speed), sends it together instead of one token first.
    After that a piece is cut when `flush_ms` has passed since the last one or `flush_chars` are
    buffered, so fast engines do not publish one message per token.
    """

    def __init__(self, flush_ms: float, flush_chars: int, offset: int = 0) -> None:
        self.flush_s = flush_ms / 1000
        self.flush_chars = flush_chars
        self._text: list[str] = []
        self._chars = 0
        self._tokens = 0
        self._ids: list[int] | None = []  # None once a part came without ids
        self._lps: list[TokenLogprob] | None = None  # the parts' logprobs, when they have them
        self._offset = offset  # where this attempt's text starts in the output (a resume)
        self._index = 0
        self._last_cut: float | None = None

    def add(
        self,
        text: str,
        tokens: int,
        now: float,
        token_ids: tuple[int, ...] | None = None,
        logprobs: tuple[TokenLogprob, ...] | None = None,
    ) -> Piece | None:
        """Buffer `text`; a piece if one is due at time `now` (seconds, monotonic)."""
        self._take(text, tokens, token_ids, logprobs)
        if not self._chars:
            return None
        due = self._chars >= self.flush_chars or (
            self._last_cut is not None and now - self._last_cut >= self.flush_s
        )
        return self.cut(now) if due else None

    @property
    def offset(self) -> int:
        """Where the next piece starts in the text."""
        return self._offset

    @property
    def first_waiting(self) -> bool:
        """Text is buffered and no piece has been cut yet: cut it on the loop's next turn."""
        return self._last_cut is None and self._chars > 0

    def finish(
        self,
        text: str,
        tokens: int,
        now: float,
        token_ids: tuple[int, ...] | None = None,
        logprobs: tuple[TokenLogprob, ...] | None = None,
    ) -> Piece:
        """The last piece: whatever is buffered plus `text`, even if empty (it marks the end)."""
        self._take(text, tokens, token_ids, logprobs)
        return self._cut(now)

    def _take(
        self,
        text: str,
        tokens: int,
        token_ids: tuple[int, ...] | None,
        logprobs: tuple[TokenLogprob, ...] | None,
    ) -> None:
        if logprobs is not None:
            if self._lps is None:
                self._lps = []
            self._lps.extend(logprobs)
        self._text.append(text)
        self._chars += len(text)
        self._tokens += tokens
        if self._ids is not None:
            if token_ids is not None:
                self._ids.extend(token_ids)
            elif text or tokens:
                self._ids = None

    def cut(self, now: float) -> Piece | None:
        """Whatever is buffered, as a piece (None if nothing is)."""
        if not self._chars and not self._tokens:
            return None
        return self._cut(now)

    def _cut(self, now: float) -> Piece:
        ids = tuple(self._ids) if self._ids is not None and self._tokens else None
        lps = tuple(self._lps) if self._lps is not None else None
        piece = Piece(self._index, self._offset, "".join(self._text), self._tokens, ids, lps)
        self._index += 1
        self._offset += self._chars
        self._text, self._chars, self._tokens, self._ids, self._lps = [], 0, 0, [], None
        self._last_cut = now
        return piece
