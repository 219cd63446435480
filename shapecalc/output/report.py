"""Reports of an :class:`~shapecalc.analysis.Analysis`: JSON data, a rich
table and Markdown.  Nothing here prints; callers decide where output goes.
rich is imported only when a table is asked for."""

from __future__ import annotations

from typing import Any, Optional


from shapecalc.output import layout
from shapecalc.analysis import Analysis, Layer
from shapecalc.audits.geometry import CropAlignment, MergeAlignment, describe_sizes
from shapecalc.audits.resampling import ResampleAlignment
from shapecalc.answers.sizes import EXCLUSION_COLUMNS, exclusion_rows, exclusions_data
from shapecalc.engine.symbolic import axes_text, format_expr
from shapecalc.engine.tensors import SymbolicTensor

JSON_VERSION = 1


def _expr(value) -> Optional[str]:
    return None if value is None else format_expr(value)


def _geometry_field(tensor: SymbolicTensor, field: str) -> list[Optional[str]]:
    values = []
    for g in tensor.geometry:
        values.append(None if g is None else _expr(getattr(g, field)))
    return values


def _counterexample_value(counterexample: Optional[dict]) -> Optional[int]:
    if not counterexample:
        return None
    return next(iter(counterexample.values()))


def crop_data(crop: CropAlignment) -> dict[str, Any]:
    return {
        "name": crop.name,
        "merge": crop.merge,
        "partner": crop.partner,
        "offset": [_expr(o) for o in crop.offset],
        "required": [_expr(r) for r in crop.required],
        "aligned": crop.aligned,
        "counterexample": _counterexample_value(crop.counterexample),
        "counterexample_input": crop.counterexample,
    }


def merge_data(merge: MergeAlignment) -> dict[str, Any]:
    return {
        "name": merge.name,
        "inputs": list(merge.inputs),
        "aligned": merge.aligned,
        "shift": [_expr(s) for s in merge.shift],
        "counterexample": _counterexample_value(merge.counterexample),
        "counterexample_input": merge.counterexample,
        "position_free": list(merge.position_free),
        "reason": merge.reason,
    }


def _sizes_data(sizes, symbol) -> dict[str, Any]:
    return {**sizes.as_data(), "sentence": describe_sizes(sizes, str(symbol))}


def resample_data(resample: ResampleAlignment) -> dict[str, Any]:
    return {
        "name": resample.name,
        "mode": resample.mode,
        "align_corners": resample.align_corners,
        "reference": resample.reference,
        "max_shift": [_expr(s) for s in resample.max_shift],
        "aligned": resample.aligned,
        "counterexample": _counterexample_value(resample.counterexample),
        "counterexample_input": resample.counterexample,
        "exact": {str(s): _sizes_data(sizes, s) for s, sizes in resample.exact.items()},
        "reason": resample.reason,
    }


def aligned_domain_data(analysis: Analysis) -> dict[str, Any]:
    """``domain.aligned``: per symbol the valid sizes where every crop, merge
    and resample is exact, the smallest valid size where something is not,
    and a sentence."""
    data: dict[str, Any] = {}
    counterexample = None
    for s in analysis.symbols:
        aligned = analysis.aligned_domain.get(s, analysis.domain.sets[s])
        data[str(s)] = aligned.as_data()
        smallest = analysis.domain.sets[s].difference(aligned).minimum()
        if smallest is not None and counterexample is None:
            counterexample = {str(s): smallest}
    data["sentence"] = analysis.aligned_sentence()
    data["all"] = analysis.aligned()
    data["counterexample"] = _counterexample_value(counterexample)
    data["counterexample_input"] = counterexample
    data["undecided"] = [str(c) for c in analysis.alignment_undecided]
    return data


def layer_data(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "module": layer.module,
        "op": layer.op,
        "params": layer.params,
        "spatial": [format_expr(s) for s in layer.spatial],
        "stride": _geometry_field(layer.tensor, "stride"),
        "center": _geometry_field(layer.tensor, "center"),
        "rf": _geometry_field(layer.tensor, "rf"),
    }


def to_json(analysis: Analysis) -> dict[str, Any]:
    """The JSON contract (docs/json.md): stable keys, every expression a
    string ``sympy.sympify`` parses with ``floor``/``ceiling`` and the input
    symbols."""
    domain: dict[str, Any] = {str(s): analysis.domain.sets[s].as_data() for s in analysis.symbols}
    domain["valid"] = analysis.validity_sentence()
    domain["undecided"] = [{"node": r.node, "reason": r.reason, "condition": str(r.condition)}
                           for r in analysis.domain.undecided]
    domain["joint"] = analysis.domain.joint_data()  # null unless a requirement ties several symbols
    domain["excluded"] = exclusions_data(analysis)  # which requirement rules out which sizes
    domain["aligned"] = aligned_domain_data(analysis)
    return {
        "version": JSON_VERSION,
        "model": analysis.model,
        "capture": analysis.capture,
        "input": {
            "spatial": [format_expr(s) for s in analysis.input.sizes],
            "channels": int(analysis.input_tensor.shape[1]),
            "batch": int(analysis.input_tensor.shape[0]),
        },
        "layers": [layer_data(layer) for layer in analysis.layers],
        "outputs": {name: {"spatial": [format_expr(s) for s in t.spatial_sizes], "shape": [format_expr(s) for s in t.shape]}
                    for name, t in analysis.outputs.items()},
        "crops": [crop_data(c) for c in analysis.crops],
        "merges": [merge_data(m) for m in analysis.merges],
        "resamples": [resample_data(r) for r in analysis.resamples],
        "domain": domain,
        # the ATen front end's regions of the size space (empty for fx) and whether they cover every size
        "pieces": [piece.as_data() for piece in analysis.pieces],
        "pieces_complete": analysis.pieces_complete,
        "notes": list(analysis.notes),
    }


# ---------------------------------------------------------------------------
# text forms shared by the table and Markdown


def _mark(aligned: Optional[bool]) -> str:
    return {True: "✓", False: "✗", None: "?"}[aligned]


def layer_row(layer: Layer) -> list[str]:
    data = layer_data(layer)
    return [layer.name, layer.module, layer.op, layer.params, axes_text(data["spatial"]),
            axes_text(data["stride"]), axes_text(data["center"]), axes_text(data["rf"])]


LAYER_COLUMNS = ["layer", "module", "op", "params", "size", "stride", "center", "rf"]
#: the first geometry column of a layer row (stride, center, rf follow)
GEOMETRY = LAYER_COLUMNS.index("stride")

#: how the title and pages name each front end
CAPTURE_NAMES = {"fx": "torch.fx", "aten": "ATen ops traced by make_fx"}


def capture_text(analysis: Analysis) -> str:
    """``capture: fx (torch.fx)``: the front end that captured the graph."""
    return f"capture: {analysis.capture} ({CAPTURE_NAMES.get(analysis.capture, analysis.capture)})"


def title(analysis: Analysis) -> str:
    sizes = " x ".join(format_expr(s) for s in analysis.input.sizes)
    return f"{analysis.model} — input {sizes} — {analysis.capture} capture"


def pieces_sentence(analysis: Analysis) -> str:
    """Whether the ATen front end's pieces cover every size."""
    count = len(analysis.pieces)
    head = f"{count} piece{'s' if count != 1 else ''}"
    head += {True: ", covering every size", False: ", not covering every size (the exploration stopped at "
             "its bounds; sizes outside every piece are not analysed)",
             None: ", whether they cover every size was not decided"}[analysis.pieces_complete]
    if _several_graphs(analysis):
        head += "; the layers are the graph of the first piece that runs"
    return head


def _several_graphs(analysis: Analysis) -> bool:
    # the layers, crops and outputs are one graph's: where several pieces run, say whose
    return sum(1 for p in analysis.pieces if p.runs) > 1


def _spatial_text(tensor: SymbolicTensor) -> str:
    if not tensor.spatial_sizes:
        return "(" + ", ".join(format_expr(s) for s in tensor.shape) + ")"
    return " x ".join(format_expr(s) for s in tensor.spatial_sizes)


def pieces_lines(analysis: Analysis) -> list[str]:
    """Each region of the size space and what the model does there (the ATen
    front end; nothing for fx, whose one graph holds wherever it runs), with
    the output size where it runs (each running piece has its own graph)."""
    if analysis.capture != "aten" or not analysis.pieces:
        return []
    lines = []
    for piece in analysis.pieces:
        outputs = getattr(piece, "outputs", None) or {}
        sizes = "; ".join(_spatial_text(t) if name == "output" else f"{name!r} {_spatial_text(t)}"
                          for name, t in outputs.items() if isinstance(t, SymbolicTensor))
        lines.append(piece.describe() + (f" (output {sizes})" if piece.runs and sizes else ""))
    return lines
CROP_COLUMNS = ["crop", "feeds", "against", "offset (code)", "offset (derived)", "aligned", "counterexample"]


def crop_row(crop: CropAlignment) -> list[str]:
    counterexample = ", ".join(f"{k}={v}" for k, v in (crop.counterexample or {}).items())
    return [crop.name, crop.merge or "-", crop.partner or "-", axes_text(crop.offset),
            axes_text(crop.required), _mark(crop.aligned), counterexample or "-"]


MERGE_COLUMNS = ["merge", "inputs", "shift (px)", "aligned", "counterexample"]
RESAMPLE_COLUMNS = ["resample", "mode", "align_corners", "should sit on", "max shift (px)", "aligned", "exact for",
                    "counterexample"]


def _counterexample_text(counterexample: Optional[dict]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (counterexample or {}).items()) or "-"


def merge_row(merge: MergeAlignment) -> list[str]:
    inputs = ", ".join(f"{n} (position-free)" if n in merge.position_free else n for n in merge.inputs)
    return [merge.name, inputs, axes_text(merge.shift), _mark(merge.aligned), _counterexample_text(merge.counterexample)]


def resample_row(resample: ResampleAlignment) -> list[str]:
    corners = "-" if resample.align_corners is None else str(resample.align_corners)
    exact = "; ".join(describe_sizes(sizes, str(s)) for s, sizes in resample.exact.items()) or "-"
    return [resample.name, resample.mode, corners, resample.reference or "own grid", axes_text(resample.max_shift),
            _mark(resample.aligned), exact, _counterexample_text(resample.counterexample)]


def summary_lines(analysis: Analysis) -> list[str]:
    lines = []
    first = next((p for p in analysis.pieces if p.runs), None) if _several_graphs(analysis) else None
    where = f" (where {first.region_text()})" if first is not None and hasattr(first, "region_text") else ""
    for name, tensor in analysis.outputs.items():
        label = ("output" if name == "output" else f"output {name!r}") + where
        if tensor.spatial_sizes:
            lines.append(f"{label}: {' x '.join(format_expr(s) for s in tensor.spatial_sizes)}")
        else:  # a classifier's logits: say so rather than print an empty size
            shape = "(" + ", ".join(format_expr(s) for s in tensor.shape) + ")"
            lines.append(f"{label}: {shape}, no spatial axes")
    lines.append(f"valid input: {analysis.validity_sentence()}")
    if analysis.crops or analysis.merges or analysis.resamples:
        lines.append(f"aligned input: {analysis.aligned_sentence()}")
    lines.extend(f"note: {n}" for n in analysis.notes)
    return lines


#: how each column's cells may break (see shapecalc.output.layout)
LAYER_KINDS = [layout.NAME, layout.NAME, layout.NAME, layout.WORDS, layout.AXES, layout.EXPRESSION,
               layout.EXPRESSION, layout.EXPRESSION]
#: which layer columns stay in the first table when they cannot all fit: size first, then op
#: (the two share a table), the module, params and the geometry
LAYER_PRIORITY = [0, 4, 2, 1, 3, 5, 6, 7]
#: an ATen node's name (convolution_3) says little without its module: the module comes next to the size
ATEN_LAYER_PRIORITY = [0, 4, 1, 2, 3, 5, 6, 7]
CROP_KINDS = [layout.NAME, layout.NAME, layout.NAME, layout.EXPRESSION, layout.EXPRESSION, layout.NAME,
              layout.WORDS]
MERGE_KINDS = [layout.NAME, layout.WORDS, layout.EXPRESSION, layout.NAME, layout.WORDS]
RESAMPLE_KINDS = [layout.NAME, layout.NAME, layout.NAME, layout.NAME, layout.EXPRESSION, layout.NAME, layout.WORDS,
                  layout.WORDS]

EXCLUSION_KINDS = [layout.WORDS, layout.NAME, layout.NAME, layout.WORDS]

#: below this many columns a width is not honoured: tables are laid out for this
MIN_WIDTH = 40

UNKNOWN_LEGEND = ("?: not defined. A position-free axis (after global pooling every index sees the whole input) "
                  "has no stride or center; rf is ? where the receptive field is not known.")


def _layer_cells(layer: Layer) -> list[layout.Cell]:
    data = layer_data(layer)
    return [layout.Cell((layer.name,)), layout.Cell((layer.module,)), layout.Cell((layer.op,)),
            layout.Cell((layer.params,)),
            *(layout.cell(["?" if v is None else v for v in data[key]]) for key in ("spatial", "stride", "center", "rf"))]


def _cells(row: list[str]) -> list[layout.Cell]:
    return [layout.Cell((text,)) for text in row]


def _crop_cells(crop: CropAlignment) -> list[layout.Cell]:
    row = _cells(crop_row(crop))
    row[3], row[4] = (layout.cell(["?" if v is None else format_expr(v) for v in values])
                      for values in (crop.offset, crop.required))
    return row


def _merge_cells(merge: MergeAlignment) -> list[layout.Cell]:
    row = _cells(merge_row(merge))
    row[2] = layout.cell(["?" if v is None else format_expr(v) for v in merge.shift])
    return row


def _resample_cells(resample: ResampleAlignment) -> list[layout.Cell]:
    row = _cells(resample_row(resample))
    row[4] = layout.cell(["?" if v is None else format_expr(v) for v in resample.max_shift])
    return row


_STYLES = {True: "green", False: "red", None: "yellow"}


class _Section:
    """One titled table before layout: its columns, their kinds, the order in
    which they stay in the first table, and a style per row for one column."""

    def __init__(self, title: str, headers: list[str], kinds: list[str], rows: list[list[layout.Cell]],
                 priority: Optional[list[int]] = None, styled: Optional[int] = None,
                 styles: Optional[list[str]] = None):
        self.title = title
        self.columns = [layout.Column(_HYPHENATED.get(h, h), k, tuple(r[i] for r in rows))
                        for i, (h, k) in enumerate(zip(headers, kinds))]
        self.priority = priority or list(range(len(headers)))
        self.styled, self.styles = styled, styles or []

    def tables(self, width: int):
        """(rich Table, its width) per table this section folds into at ``width``."""
        from rich.table import Table
        from rich.text import Text

        result = []
        for n, (group, widths) in enumerate(layout.fold(self.columns, width, self.priority, self.priority[1:3])):
            columns = [self.columns[i] for i in group]
            title = self.title if n == 0 else (f"{self.title}, continued: "
                                               f"{', '.join(_plain(c.header) for c in columns[1:])}")
            table = Table(title=title)
            for column, w in zip(columns, widths):
                table.add_column("\n".join(layout.header_lines(column.header, w)), width=w, no_wrap=True,
                                 overflow="ignore")
            for r in range(len(columns[0].cells)):
                row = []
                for i, column, w in zip(group, columns, widths):
                    style = self.styles[r] if i == self.styled else ""
                    row.append(Text("\n".join(layout.wrap(column.cells[r], w, column.kind)), style=style))
                table.add_row(*row)
            result.append((table, layout.table_width(widths)))
        return result


def _plain(header: str) -> str:
    return header.replace("\xad", "")


#: table headers may break here when a column is narrower than the word
_HYPHENATED = {"counterexample": "counter\xadexample"}


class TableReport:
    """The layer table, the crop, merge and resample tables and the summary,
    laid out when printed, for the console's width: no name or size is ever
    broken; columns that do not fit side by side fold into further tables
    that repeat the name column (``layers, continued: stride, center, rf``).
    Below :data:`MIN_WIDTH` columns, or when a model's names are too long for
    the width, the tables keep their narrowest layout and lines run longer."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        layer_rows = [_layer_cells(layer) for layer in analysis.layers]
        priority = ATEN_LAYER_PRIORITY if analysis.capture == "aten" else LAYER_PRIORITY
        self.sections = [_Section(title(analysis), LAYER_COLUMNS, LAYER_KINDS, layer_rows, priority)]
        self.legend = [UNKNOWN_LEGEND] if any("?" in c.pieces for row in layer_rows
                                              for c in row[GEOMETRY:]) else []
        for name, headers, kinds, items, cells_of, column in (
                ("crops", CROP_COLUMNS, CROP_KINDS, analysis.crops, _crop_cells, 5),
                ("merges", MERGE_COLUMNS, MERGE_KINDS, analysis.merges, _merge_cells, 3),
                ("resamples", RESAMPLE_COLUMNS, RESAMPLE_KINDS, analysis.resamples, _resample_cells, 5)):
            if items:
                self.sections.append(_Section(name, headers, kinds, [cells_of(i) for i in items], styled=column,
                                              styles=[_STYLES[i.aligned] for i in items]))
        rows = exclusion_rows(analysis)
        if rows:
            self.sections.append(_Section("excluded sizes", EXCLUSION_COLUMNS, EXCLUSION_KINDS, [_cells(r) for r in rows]))
        pieces = pieces_lines(analysis)
        self.summary = summary_lines(analysis)
        if pieces:
            self.summary += [f"pieces: {pieces_sentence(analysis)}", *(f"  {line}" for line in pieces)]

    def __rich_console__(self, console, options):
        from rich.text import Text

        width = max(options.max_width, MIN_WIDTH)
        for n, section in enumerate(self.sections):
            for table, needed in section.tables(width):
                yield from console.render(table, options.update_width(max(needed, options.max_width)))
            if n == 0:
                for line in self.legend:
                    yield from console.render(Text(line), options.update_width(width))
        import textwrap

        for line in self.summary:
            # an indented line (a piece) keeps its indent where it wraps
            indent = len(line) - len(line.lstrip(" "))
            if indent and len(line) > width:
                line = "\n".join(textwrap.wrap(line, width, initial_indent="", subsequent_indent=" " * indent,
                                               break_long_words=False, break_on_hyphens=False,
                                               drop_whitespace=True) or [line])
                line = " " * indent + line.lstrip(" ")
            yield from console.render(Text(line), options.update_width(width))


def render_table(analysis: Analysis) -> TableReport:
    """A rich renderable: the layer table, the crop, merge and resample tables
    and a summary, fitted to the width of the console that prints it."""
    return TableReport(analysis)


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|") if text else " "
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(analysis: Analysis, *, picture: bool = True) -> str:
    """The tables and summary as Markdown; with ``picture``, an inline SVG of
    the valid sizes and output sizes (shapecalc.output.picture) at the end."""
    parts = [f"## {title(analysis)}", "", capture_text(analysis), "",
             _markdown_table(LAYER_COLUMNS, [layer_row(layer) for layer in analysis.layers])]
    if analysis.crops:
        parts += ["", "### Crops", "", _markdown_table(CROP_COLUMNS, [crop_row(c) for c in analysis.crops])]
    if analysis.merges:
        parts += ["", "### Merges", "", _markdown_table(MERGE_COLUMNS, [merge_row(m) for m in analysis.merges])]
    if analysis.resamples:
        parts += ["", "### Resamples", "",
                  _markdown_table(RESAMPLE_COLUMNS, [resample_row(r) for r in analysis.resamples])]
    rows = exclusion_rows(analysis)
    if rows:
        parts += ["", "### Excluded sizes", "", _markdown_table(EXCLUSION_COLUMNS, rows)]
    if any("?" in text.split(" x ") for layer in analysis.layers for text in layer_row(layer)[GEOMETRY:]):
        parts += ["", UNKNOWN_LEGEND]
    parts += ["", *[f"- {line}" for line in summary_lines(analysis)]]
    pieces = pieces_lines(analysis)
    if pieces:
        parts += ["", "### Pieces", "", f"{pieces_sentence(analysis)[0].upper()}{pieces_sentence(analysis)[1:]}:", "",
                  *[f"- {line}" for line in pieces]]
    if picture:
        from shapecalc.output.picture import domain_picture

        svg = domain_picture(analysis)
        if svg is not None:
            # inline: one HTML block (the SVG has no blank line), readable in any
            # viewer that renders HTML in Markdown (docs pages link a file instead)
            parts += ["", "### Valid sizes", "", svg.rstrip("\n")]
    return "\n".join(parts) + "\n"
