"""A picture of the valid input sizes: SVG text, written with the stdlib.

For each input symbol, a strip of marks, one per size: *aligned* (the
forward pass runs and every crop, merge and resample is exact), *runs* (it
runs, something is off by a pixel) or *fails* (it does not run).  When the
sets repeat with a small period the strip has one row per residue class, so a
pattern shows as a column of colour; otherwise rows are runs of consecutive
sizes.  Below it, each output's spatial size against the input size, at every
size that runs.

Every mark carries what it shows as attributes (``data-symbol``,
``data-size``, ``data-state``; points: ``data-input``, ``data-value``), so a
test parses the picture with ``xml.etree`` and compares it with forward
passes.  The text is deterministic (docs pages are compared byte for byte)
and has no blank line (it can sit inline in Markdown as one HTML block).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:  # pragma: no cover
    from shapecalc.analysis import Analysis
    from shapecalc.engine.domain import PeriodicSet

#: the period up to which the strip has one row per residue class
MAX_PERIOD_ROWS = 32
#: sizes per row when rows are runs of consecutive sizes
ROW_WIDTH = 32
#: never more marks per strip than this (the caption says where it stops)
MAX_SIZES = 1024
#: at least this many sizes are shown, whatever the domain
MIN_SIZES = 64

STATES = {  # state: (fill, legend)
    "aligned": ("#2e7d32", "runs, every crop, merge and resample exact"),
    "runs": ("#f0a202", "runs, not exactly aligned"),
    "fails": ("#d6d6d6", "does not run"),
}
_SERIES_COLOURS = ("#1f5fa8", "#b8336a", "#6a4c93", "#2a9d8f")

_CELL, _GAP, _LABEL_WIDTH, _MARGIN = 10, 2, 92, 12
_PLOT_WIDTH, _PLOT_HEIGHT = 360, 150
_FONT = 'font-family="sans-serif" font-size="11"'


def _horizon(*sets: "PeriodicSet") -> int:
    """The largest size at which one of ``sets`` starts or stops (1 if none)."""
    ends = [1]
    for s in sets:
        for residue, intervals in enumerate(s.classes):
            for lo, hi in intervals:
                ends.append(s.period * lo + residue)
                if hi is not None:
                    ends.append(s.period * hi + residue + 1)
    return max(ends)


def strip_layout(valid: "PeriodicSet", aligned: "PeriodicSet") -> tuple[str, int, int]:
    """``(layout, rows, columns)``: ``"period"`` (row i holds the sizes
    i + 1 + period*k) or ``"range"`` (row i holds 32i + 1 .. 32i + 32)."""
    period = math.lcm(valid.period, aligned.period)
    wanted = max(_horizon(valid, aligned) + period, MIN_SIZES)
    if 1 < period <= MAX_PERIOD_ROWS:
        columns = min(max(math.ceil(wanted / period), 2), MAX_SIZES // period)
        return "period", period, columns
    rows = min(math.ceil(wanted / ROW_WIDTH), MAX_SIZES // ROW_WIDTH)
    return "range", rows, ROW_WIDTH


def _size_at(layout: str, rows: int, row: int, column: int) -> int:
    return column * rows + row + 1 if layout == "period" else row * ROW_WIDTH + column + 1


def _state(n: int, valid: "PeriodicSet", aligned: "PeriodicSet") -> str:
    if n not in valid:
        return "fails"
    return "aligned" if n in aligned else "runs"


def _text(x: float, y: float, text: str, extra: str = "") -> str:
    return f'<text x="{x:g}" y="{y:g}" {_FONT}{extra}>{escape(text)}</text>'


def _strip(analysis: "Analysis", symbol, top: float) -> tuple[list[str], float, int]:
    """SVG lines of one symbol's strip, the height used and the largest size shown."""
    from shapecalc.engine.domain import PeriodicSet

    valid = analysis.valid_sizes(symbol)
    aligned = analysis.aligned_domain.get(symbol, PeriodicSet(1, ((),)))
    layout, rows, columns = strip_layout(valid, aligned)
    largest = rows * columns
    name = str(symbol)
    if layout == "period":
        how = f"one row per residue of {name} mod {rows}"
    else:
        how = f"{ROW_WIDTH} sizes per row"
    caption = f"{name} = 1..{largest} ({how}): {valid.describe(name)}"
    lines = [f'<g class="strip" data-symbol={quoteattr(name)} data-layout="{layout}" data-rows="{rows}" '
             f'data-columns="{columns}" data-largest="{largest}">',
             _text(_MARGIN, top + 12, caption, ' font-weight="bold"')]
    notes = [f"aligned: {analysis.aligned_sentence()}"]
    if analysis.alignment_undecided:
        notes.append("(some alignment conditions were not decided: aligned marks are an upper bound)")
    y = top + 28
    for note in notes:
        lines.append(_text(_MARGIN, y, note))
        y += 14
    grid_top = y
    for row in range(rows):
        label = f"{name} mod {rows} = {(row + 1) % rows}" if layout == "period" else \
            f"{row * ROW_WIDTH + 1}..{(row + 1) * ROW_WIDTH}"
        row_y = grid_top + row * (_CELL + _GAP)
        lines.append(_text(_MARGIN, row_y + _CELL - 1, label))
        for column in range(columns):
            n = _size_at(layout, rows, row, column)
            state = _state(n, valid, aligned)
            x = _MARGIN + _LABEL_WIDTH + column * (_CELL + _GAP)
            lines.append(f'<rect class="mark" data-symbol={quoteattr(name)} data-size="{n}" data-state="{state}" '
                         f'x="{x}" y="{row_y:g}" width="{_CELL}" height="{_CELL}" fill="{STATES[state][0]}">'
                         f'<title>{escape(name)} = {n}: {STATES[state][1]}</title></rect>')
    lines.append("</g>")
    return lines, grid_top + rows * (_CELL + _GAP) - top, largest


def _series(analysis: "Analysis", symbol) -> list[tuple[str, int, object]]:
    """(output name, tensor axis, size expression) per distinct spatial output
    size that depends on ``symbol`` alone (or on nothing)."""
    seen, series = set(), []
    for name, tensor in analysis.outputs.items():
        for axis, size in zip(tensor.spatial, tensor.spatial_sizes):
            free = getattr(size, "free_symbols", set())
            if symbol not in free or not free <= {symbol}:
                continue
            if (name, size) in seen:
                continue
            seen.add((name, size))
            series.append((name, axis, size))
    return series


def _plot(analysis: "Analysis", symbol, largest: int, top: float) -> tuple[list[str], float]:
    from shapecalc.engine.symbolic import evaluate, format_expr

    series = _series(analysis, symbol)
    if not series:
        return [], 0.0
    valid = analysis.valid_sizes(symbol)
    name = str(symbol)
    values = {}
    for out, axis, size in series:
        values[(out, axis)] = [(n, evaluate(size, {symbol: n})) for n in range(1, largest + 1) if n in valid]
    highest = max([int(v) for points in values.values() for _, v in points] + [1])
    left, plot_top = _MARGIN + 40, top + 22
    lines = [f'<g class="plot" data-symbol={quoteattr(name)}>',
             _text(_MARGIN, top + 12, f"output size against {name} (every {name} that runs, 1..{largest})",
                   ' font-weight="bold"')]

    def at(n, v):
        return (left + (n - 1) * _PLOT_WIDTH / max(largest - 1, 1),
                plot_top + _PLOT_HEIGHT - float(v) * _PLOT_HEIGHT / highest)

    bottom = plot_top + _PLOT_HEIGHT
    lines += [f'<line x1="{left}" y1="{bottom:g}" x2="{left + _PLOT_WIDTH}" y2="{bottom:g}" stroke="#555"/>',
              f'<line x1="{left}" y1="{plot_top:g}" x2="{left}" y2="{bottom:g}" stroke="#555"/>',
              _text(left - 4, bottom, "0", ' text-anchor="end"'), _text(left - 4, plot_top + 8, str(highest),
                                                                         ' text-anchor="end"'),
              _text(left, bottom + 13, "1"), _text(left + _PLOT_WIDTH, bottom + 13, str(largest),
                                                   ' text-anchor="end"')]
    legend_y = bottom + 28
    for index, (out, axis, size) in enumerate(series):
        colour = _SERIES_COLOURS[index % len(_SERIES_COLOURS)]
        points = values[(out, axis)]
        # a size that does not run breaks the line
        runs, current, previous = [], [], None
        for n, v in points:
            if previous is not None and n != previous + 1:
                runs.append(current)
                current = []
            current.append((n, v))
            previous = n
        runs.append(current)
        lines.append(f'<g class="series" data-output={quoteattr(out)} data-axis="{axis}" '
                     f'data-expression={quoteattr(format_expr(size))}>')
        for run in runs:
            if len(run) > 1:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(n, v) for n, v in run))
                lines.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for n, v in points:
            x, y = at(n, v)
            lines.append(f'<circle class="point" data-input="{n}" data-value="{v}" cx="{x:.1f}" cy="{y:.1f}" '
                         f'r="1.6" fill="{colour}"/>')
        lines.append("</g>")
        lines.append(f'<rect x="{_MARGIN}" y="{legend_y - 9:g}" width="10" height="10" fill="{colour}"/>')
        lines.append(_text(_MARGIN + 14, legend_y, f"{out}, axis {axis}: {format_expr(size)}"))
        legend_y += 15
    lines.append("</g>")
    return lines, legend_y - top


def _legend(top: float) -> tuple[list[str], float]:
    lines, x = ['<g class="legend">'], _MARGIN
    for state, (fill, text) in STATES.items():
        lines.append(f'<rect x="{x}" y="{top:g}" width="{_CELL}" height="{_CELL}" fill="{fill}" '
                     f'data-legend="{state}"/>')
        lines.append(_text(x + _CELL + 4, top + _CELL - 1, text))
        x += _CELL + 8 + 6 * len(text)
    lines.append("</g>")
    return lines, _CELL + 10


def domain_picture(analysis: "Analysis", *, first_line: Optional[str] = None) -> Optional[str]:
    """The SVG text of ``analysis``'s valid sizes and output sizes (None for
    an input with no size symbols: there is nothing to draw).  ``first_line``
    (an XML comment, e.g. a generated-file marker) precedes the ``<svg>``."""
    if not analysis.symbols:
        return None
    body, y = [], float(_MARGIN)
    joint = analysis.domain.joint_sentence()
    if len(analysis.symbols) > 1:
        body.append(_text(_MARGIN, y + 11, f"jointly: {joint}" if joint else
                          "no joint condition: each size is valid on its own"))
        y += 20
    legend, height = _legend(y)
    body += legend
    y += height
    for symbol in analysis.symbols:
        lines, height, largest = _strip(analysis, symbol, y)
        body += lines
        y += height + 14
        lines, height = _plot(analysis, symbol, largest, y)
        body += lines
        y += height + (14 if lines else 0)
    columns = max([strip_layout(analysis.valid_sizes(s), analysis.aligned_domain.get(s, analysis.valid_sizes(s)))[2]
                   for s in analysis.symbols])
    width = max(_MARGIN * 2 + _LABEL_WIDTH + columns * (_CELL + _GAP), _MARGIN + 60 + _PLOT_WIDTH, 560)
    title = f"valid input sizes of {analysis.model}: {analysis.validity_sentence()}"
    head = [first_line] if first_line else []
    head += [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{math.ceil(y)}" '
             f'viewBox="0 0 {width} {math.ceil(y)}" role="img" aria-label={quoteattr(title)}>',
             f"<title>{escape(title)}</title>",
             f'<rect width="{width}" height="{math.ceil(y)}" fill="#ffffff"/>']
    return "\n".join(head + body + ["</svg>"]) + "\n"
