"""Fitting text tables into a terminal width without breaking a token.

Pure text, no rich: a cell is broken only at a space, and only where the
column allows (a name never, a size between axes, a geometry expression also
at its operators, outermost first); the line after a break starts with the
operator, so it reads as a continuation.  Columns that cannot all fit next
to each other are folded into further tables that repeat the key column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

#: a space before one of these may break a line; never the space after it
_OPERATORS = frozenset({"+", "-", "x", "*", "/", "=", ">=", "<=", ">", "<"})

#: how a column's cells may break
NAME, AXES, EXPRESSION, WORDS = "name", "axes", "expression", "words"

#: columns are drawn as ``│ cell │ cell │``: three characters per column and one more
_BORDER_PER_COLUMN, _BORDER = 3, 1


@dataclass(frozen=True)
class Cell:
    """A cell's text as pieces: per-axis values (joined by `` x ``) or one text."""

    pieces: tuple[str, ...]

    @property
    def text(self) -> str:
        return " x ".join(self.pieces)


def cell(values: Sequence[str]) -> Cell:
    """Per-axis values, shown once when every axis has the same one."""
    values = tuple(values)
    return Cell(values[:1] if len(set(values)) == 1 else values)


def _words(cell: Cell) -> tuple[list[str], list[Optional[int]]]:
    """The words of a cell and, for each gap between two words, the depth at
    which a line may break there (None: never).  Axis gaps are depth -1."""
    words: list[str] = []
    gaps: list[Optional[int]] = []
    for i, piece in enumerate(cell.pieces):
        if i:
            gaps.append(-1)
            words.append("x")
        depth = 0
        for j, word in enumerate(piece.split(" ")):
            if words:
                glued = (i and j == 0) or words[-1] in _OPERATORS
                gaps.append(None if glued else depth)
            words.append(word)
            depth += sum(word.count(c) for c in "([") - sum(word.count(c) for c in ")]")
    return words, gaps


def _join(words: list[str]) -> str:
    return " ".join(words)


def _wrap_words(words: list[str], gaps: list[Optional[int]], width: int, deepest: Optional[int]) -> list[str]:
    text = _join(words)
    breakable = [d for d in gaps if d is not None and (deepest is None or d <= deepest)]
    if len(text) <= width or not breakable:
        return [text]
    depth = min(breakable)
    segments: list[tuple[list[str], list[Optional[int]]]] = [([words[0]], [])]
    for word, gap in zip(words[1:], gaps):
        if gap == depth:
            segments.append(([word], []))
        else:
            segments[-1][0].append(word)
            segments[-1][1].append(gap)
    lines: list[str] = []
    current = ""
    for seg_words, seg_gaps in segments:
        seg_text = _join(seg_words)
        if current and len(current) + 1 + len(seg_text) <= width:
            current += " " + seg_text
            continue
        if current:
            lines.append(current)
        if len(seg_text) > width:
            # a part broken at deeper operators keeps its lines to itself, so
            # the next outer operator starts a line of its own
            lines.extend(_wrap_words(seg_words, seg_gaps, width, deepest))
            current = ""
        else:
            current = seg_text
    if current:
        lines.append(current)
    return lines


#: the deepest break each kind of column allows (None: any depth)
_DEEPEST = {NAME: -2, AXES: -1, EXPRESSION: None, WORDS: None}


def wrap(cell: Cell, width: int, kind: str) -> list[str]:
    """The lines of ``cell`` in a column ``width`` wide: breaks only where
    ``kind`` allows, outermost first; a line longer than ``width`` remains
    only when the cell has no allowed break in it."""
    words, gaps = _words(cell)
    return _wrap_words(words, gaps, width, _DEEPEST[kind])


def min_width(cell: Cell, kind: str) -> int:
    """The narrowest this cell can be laid out: its longest unbreakable part."""
    return max(len(line) for line in wrap(cell, 1, kind))


def header_lines(header: str, width: int) -> list[str]:
    """A header's lines: broken at spaces, and inside a word only at a soft
    hyphen (shown as ``-``) when the word is wider than the column."""
    tokens: list[str] = []
    for word in header.split():
        plain = word.replace("\xad", "")
        if len(plain) <= width or "\xad" not in word:
            tokens.append(plain)
        else:
            parts = word.split("\xad")
            tokens.extend([p + "-" for p in parts[:-1]] + [parts[-1]])
    lines: list[str] = []
    for token in tokens:
        if lines and len(lines[-1]) + 1 + len(token) <= width and not lines[-1].endswith("-"):
            lines[-1] += " " + token
        else:
            lines.append(token)
    return lines or [""]


class Column:
    """A column's header, how its cells may break, and its cells; line counts
    per width are cached (layout tries many widths)."""

    def __init__(self, header: str, kind: str, cells: Sequence[Cell]):
        self.header, self.kind, self.cells = header, kind, tuple(cells)
        self._lines: dict[int, list[int]] = {}
        self.natural = max([len(header.replace("\xad", ""))] + [len(c.text) for c in self.cells])
        header_minimum = max(len(p) + (i < len(w.split("\xad")) - 1)
                             for w in header.split() for i, p in enumerate(w.split("\xad")))
        self.minimum = max([header_minimum] + [min_width(c, kind) for c in self.cells])

    def lines(self, width: int) -> list[int]:
        """Lines per cell at ``width``, the header's last."""
        if width not in self._lines:
            self._lines[width] = [1 if len(c.text) <= width else len(wrap(c, width, self.kind))
                                  for c in self.cells] + [len(header_lines(self.header, width))]
        return self._lines[width]


def table_width(widths: Sequence[int]) -> int:
    return sum(widths) + _BORDER_PER_COLUMN * len(widths) + _BORDER


def fit_widths(columns: Sequence[Column], width: int) -> list[int]:
    """Column widths for a table at most ``width`` wide (when the minimums
    allow): every column at its natural width when that fits, else each at
    its minimum plus the room left, given where it saves the most lines."""
    natural = [c.natural for c in columns]
    if table_width(natural) <= width:
        return natural
    widths = [c.minimum for c in columns]
    room = width - table_width(widths)
    while room > 0:
        best = None
        for i, column in enumerate(columns):
            now = sum(column.lines(widths[i]))
            for w in range(widths[i] + 1, min(natural[i], widths[i] + room) + 1):
                saved = now - sum(column.lines(w))
                if saved > 0:
                    score = saved / (w - widths[i])
                    if best is None or score > best[0]:
                        best = (score, i, w)
                    break
        if best is None:
            break
        _, i, w = best
        room -= w - widths[i]
        widths[i] = w
    return widths


def _table_lines(columns: Sequence[Column], widths: Sequence[int]) -> int:
    """Printed lines of one table: title, borders, header and rows."""
    counts = [c.lines(w) for c, w in zip(columns, widths)]
    return 4 + sum(max(row) for row in zip(*counts))


def _partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _partitions(rest):
        yield [[first]] + partition
        for i in range(len(partition)):
            yield partition[:i] + [[first] + partition[i]] + partition[i + 1:]


def fold(columns: Sequence[Column], width: int, priority: Sequence[int],
         together: Sequence[int] = ()) -> list[tuple[list[int], list[int]]]:
    """Which columns go in which table, and their widths: the tables that
    each repeat column 0 (the key) and fit ``width`` at their minimum widths,
    grouped to print the fewest lines; one table when everything fits at its
    natural width.  Tables come in the order of their first column in
    ``priority``, and each lists its columns in their original order.  A
    column too wide for ``width`` even next to the key alone gets a table of
    its own, wider than ``width``.  The columns in ``together`` share a
    table whenever their minimums fit side by side (a size next to its op)."""
    others = [i for i in priority if i != 0]
    cost: dict[tuple[int, ...], tuple[int, list[int]]] = {}

    def table(group: list[int]):
        key = tuple(sorted(group))
        if key not in cost:
            members = [columns[i] for i in (0, *key)]
            fits = len(key) == 1 or table_width([c.minimum for c in members]) <= width
            widths = fit_widths(members, width) if fits else None
            cost[key] = (_table_lines(members, widths), widths) if fits else (None, None)
        return cost[key]

    everything = [columns[i] for i in range(len(columns))]
    if table_width([c.natural for c in everything]) <= width:
        return [(list(range(len(columns))), [c.natural for c in everything])]
    keep = [i for i in together if i != 0]
    if keep and table(keep)[0] is None:
        keep = []
    best = None
    for partition in _partitions(others):
        if keep and not any(set(keep) <= set(group) for group in partition):
            continue
        results = [table(group) for group in partition]
        if any(lines is None for lines, _ in results):
            continue
        total = sum(lines for lines, _ in results)
        if best is None or total < best[0]:
            best = (total, partition, results)
    _, partition, results = best
    order = sorted(range(len(partition)), key=lambda t: min(priority.index(i) for i in partition[t]))
    return [([0, *sorted(partition[t])], results[t][1]) for t in order]
