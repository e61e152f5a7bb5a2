"""Incremental Server-Sent Events parsing, as the WHATWG spec reads a stream.

Bytes arrive in arbitrary pieces: a frame may be split anywhere (even inside a multi-byte
character or between ``\\r`` and ``\\n``), lines end in LF, CRLF or CR, comment lines (``:`` —
keep-alives) are ignored, and an event's ``data`` lines join with newlines. Pure: no I/O.
"""

from __future__ import annotations

import codecs


class SSEParser:
    """Feed bytes; get the `data` of each complete event."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, raw: bytes) -> list[str]:
        """Take the next bytes of the stream; returns the events they complete."""
        text = self._decoder.decode(raw)
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = text.endswith("\r")
        self._buffer += text
        events: list[str] = []
        lines = self._buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._buffer = lines.pop()  # the unfinished last line
        for line in lines:
            if line == "":
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith(":"):
                continue  # a comment: keep-alive
            else:
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value.removeprefix(" "))
        return events

    def close(self) -> list[str]:
        """End of stream: an event not closed by a blank line is dropped, as the spec says."""
        self._buffer = ""
        self._data = []
        return []
