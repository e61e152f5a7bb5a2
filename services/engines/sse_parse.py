"""Incremental Server-Sent Events parsing, as the WHATWG spec reads a stream.

Bytes arrive in arbitrary pieces: a frame may be split anywhere (even inside a multi-byte
character or between ``\\r`` and ``\\n``), lines end in LF, CRLF or CR, a byte order mark at the
stream's start is dropped, comment lines (``:`` — keep-alives) are ignored, and an event's
``data`` lines join with newlines. Pure: no I/O.
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
        self._started = False  # the first character is in (a BOM there was dropped)

    def feed(self, raw: bytes) -> list[str]:
        """Take the next bytes of the stream; returns the events they complete."""
        text = self._decoder.decode(raw)
        if not text:
            return []  # nothing decodable yet (part of a character): a pending CR stays pending
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        if self._pending_cr and text[0] == "\n":
            text = text[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = text.endswith("\r")
        buffer = self._buffer + text if self._buffer else text
        if "\r" in buffer:  # most servers end lines in LF alone: skip two copies then
            buffer = buffer.replace("\r\n", "\n").replace("\r", "\n")
        events: list[str] = []
        end = buffer.rfind("\n\n")
        if end >= 0:
            # Whole events: most are one `data: ` line and take one split between them.
            for block in buffer[:end].split("\n\n"):
                if not self._data and block.startswith("data: ") and "\n" not in block:
                    events.append(block[6:])
                else:
                    self._lines([*block.split("\n"), ""], events)
            buffer = buffer[end + 2 :]
        lines = buffer.split("\n")
        self._buffer = lines.pop()  # the unfinished last line
        self._lines(lines, events)
        return events

    def _lines(self, lines: list[str], events: list[str]) -> None:
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else "\n".join(data))
                    data = self._data = []
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line == "data":
                data.append("")  # a field name alone: an empty value
            # anything else — comments (":", keep-alives), event, id, retry — is not needed

    def close(self) -> list[str]:
        """End of stream: an event not closed by a blank line is dropped, as the spec says."""
        self._buffer = ""
        self._data = []
        return []
