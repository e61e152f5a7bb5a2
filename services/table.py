"""Text tables that fit the terminal.

On a terminal (or with ``COLUMNS`` set) a table is fitted to its width: the widest columns are
cut first, never the first one (an id, to be copied); the columns a table marks optional are
dropped before any column is cut to fewer than 8 characters; where that is not enough each row is
printed as lines of ``HEADER  value``. Written to a pipe or a file, a table is never cut: plain and stable for scripts.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence

GAP = "  "


def terminal_width() -> int:
    """Columns to fit: ``COLUMNS``, else the terminal's; 0 (no limit) when stdout is no terminal."""
    return shutil.get_terminal_size((0, 0)).columns


def _ellipsis() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return "…" if encoding == "utf8" else "~"


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters (0: no limit), its end marked."""
    if width <= 0 or len(text) <= width:
        return text
    return text[: width - 1] + _ellipsis() if width > 1 else text[:width]


def _clean(cell: str) -> str:
    # one line per row, whatever a cell holds (an error message with newlines, a tab)
    return cell.replace("\r", " ").replace("\n", " ").replace("\t", " ")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: int = 0,
    optional: Sequence[int] = (),
    wrap: bool = False,
    width: int | None = None,
) -> str:
    """A left-aligned text table (the last `right` columns right-aligned) fitted to `width`
    (default: the terminal's; 0: no limit); `optional`: the columns to drop, first to last, when
    truncating is not enough; `wrap`: the last column's text wrapped onto more lines, not cut."""
    width = terminal_width() if width is None else width
    cells = [[_clean(c) for c in r] for r in rows]
    aligned_right = set(range(len(headers) - right, len(headers)))
    # every column whole but the last, dropping optional columns one by one as needed; else
    # the same with the columns but the first (an id, to be copied) cut to 8 characters at
    # least; else one record a row
    keeps = [list(range(len(headers)))]
    for dropped in optional:
        keeps.append([i for i in keeps[-1] if i != dropped])
    for whole in (True, False):
        for keep in keeps:
            shown = [headers[i] for i in keep]
            kept = [[r[i] for i in keep] for r in cells]
            widths = _fit(shown, kept, width, whole=whole, wrap=wrap)
            if widths is not None:
                aligned = [i in aligned_right for i in keep]
                return _render(shown, kept, widths, aligned, wrap=wrap)
    return _records(headers, cells, width)


def _fit(
    headers: list[str], rows: list[list[str]], width: int, *, whole: bool, wrap: bool
) -> list[int] | None:
    """Column widths that fit `width` with the first column whole (all but the last if
    `whole`) and every other at least 8 wide (or as wide as its header, or its widest cell, if
    less) — a wrapped last column at least a third of the room, so that it is not wrapped into a
    narrow strip; None when none do."""
    natural = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if width <= 0:
        return natural
    room = width - len(GAP) * (len(headers) - 1)
    floors = [natural[0]] + [
        min(n, max(len(h), 8)) for n, h in zip(natural[1:], headers[1:], strict=True)
    ]
    if whole:
        floors[:-1] = natural[:-1]
    if wrap and len(headers) > 1:
        floors[-1] = min(natural[-1], max(len(headers[-1]), room // 3))
    if sum(floors) > room:
        return None
    widths = list(natural)
    while sum(widths) > room:  # the widest column shrinks first, a character at a time
        widest = max(
            (i for i in range(len(widths)) if widths[i] > floors[i]), key=widths.__getitem__
        )
        widths[widest] -= 1
    return widths


def _render(
    headers: list[str], rows: list[list[str]], widths: list[int], right: list[bool], *, wrap: bool
) -> str:
    def lines(cells: list[str]) -> list[str]:
        out = []
        for c, w, r in zip(cells[:-1], widths, right, strict=False):
            c = clip(c, w)
            out.append(c.rjust(w) if r else c.ljust(w))
        last, w = cells[-1], widths[-1]
        parts = (
            textwrap.wrap(last, w, break_on_hyphens=False)
            if wrap and len(last) > w
            else [clip(last, w)]
        )
        pad = GAP.join(" " * w for w in widths[:-1])
        first = GAP.join([*out, parts[0].rjust(w) if right[-1] else parts[0].ljust(w)])
        return [first.rstrip()] + [f"{pad}{GAP}{part}".rstrip() for part in parts[1:]]

    return "\n".join([*lines(headers), *(line for r in rows for line in lines(r))])


def _records(headers: Sequence[str], rows: list[list[str]], width: int) -> str:
    """Each row as lines of ``HEADER  value``, rows apart by a blank line: for a terminal too
    narrow for the columns side by side."""
    label = max(len(h) for h in headers)
    blocks = [
        "\n".join(
            clip(f"{h.ljust(label)}{GAP}{c}".rstrip(), width)
            for h, c in zip(headers, r, strict=True)
        )
        for r in rows
    ]
    return "\n\n".join(blocks) if blocks else clip(GAP.join(headers), width)
