"""Reports of an :class:`~shapecalc.analysis.Analysis`: JSON data, a rich
table and Markdown.  Nothing here prints; callers decide where output goes.
rich is imported only when a table is asked for."""

from __future__ import annotations

from typing import Any, Optional

import sympy

from .analysis import Analysis, Layer
from .geometry import CropAlignment
from .symbolic import format_expr
from .tensors import AxisGeometry, SymbolicTensor

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


def layer_data(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
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
    return {
        "version": JSON_VERSION,
        "model": analysis.model,
        "input": {
            "spatial": [format_expr(s) for s in analysis.input.sizes],
            "channels": int(analysis.input_tensor.shape[1]),
            "batch": int(analysis.input_tensor.shape[0]),
        },
        "layers": [layer_data(layer) for layer in analysis.layers],
        "outputs": {name: {"spatial": [format_expr(s) for s in t.spatial_sizes], "shape": [format_expr(s) for s in t.shape]}
                    for name, t in analysis.outputs.items()},
        "crops": [crop_data(c) for c in analysis.crops],
        "domain": domain,
        "notes": list(analysis.notes),
    }


# ---------------------------------------------------------------------------
# text forms shared by the table and Markdown


def _axes_text(values) -> str:
    """Per-axis values, shown once when every axis has the same one."""
    texts = ["?" if v is None else (v if isinstance(v, str) else format_expr(v)) for v in values]
    if not texts:
        return ""
    return texts[0] if len(set(texts)) == 1 else " x ".join(texts)


def _mark(aligned: Optional[bool]) -> str:
    return {True: "✓", False: "✗", None: "?"}[aligned]


def layer_row(layer: Layer) -> list[str]:
    data = layer_data(layer)
    return [layer.name, layer.op, layer.params, _axes_text(data["spatial"]),
            _axes_text(data["stride"]), _axes_text(data["center"]), _axes_text(data["rf"])]


LAYER_COLUMNS = ["layer", "op", "params", "size", "stride", "center", "rf"]
CROP_COLUMNS = ["crop", "feeds", "against", "offset (code)", "offset (derived)", "aligned", "counterexample"]


def crop_row(crop: CropAlignment) -> list[str]:
    counterexample = ", ".join(f"{k}={v}" for k, v in (crop.counterexample or {}).items())
    return [crop.name, crop.merge or "-", crop.partner or "-", _axes_text(crop.offset),
            _axes_text(crop.required), _mark(crop.aligned), counterexample or "-"]


def summary_lines(analysis: Analysis) -> list[str]:
    lines = []
    for name, tensor in analysis.outputs.items():
        label = "output" if name == "output" else f"output {name!r}"
        lines.append(f"{label}: {' x '.join(format_expr(s) for s in tensor.spatial_sizes)}")
    lines.append(f"valid input: {analysis.validity_sentence()}")
    lines.extend(f"note: {n}" for n in analysis.notes)
    return lines


def render_table(analysis: Analysis):
    """A rich renderable: the layer table, the crop table and a summary."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    layers = Table(title=f"{analysis.model} — input {' x '.join(format_expr(s) for s in analysis.input.sizes)}")
    for column in LAYER_COLUMNS:
        layers.add_column(column, overflow="fold")
    for layer in analysis.layers:
        layers.add_row(*layer_row(layer))
    parts: list[Any] = [layers]
    if analysis.crops:
        crops = Table(title="crops")
        for column in CROP_COLUMNS:
            crops.add_column(column)
        for crop in analysis.crops:
            row = crop_row(crop)
            style = {True: "green", False: "red", None: "yellow"}[crop.aligned]
            crops.add_row(*row[:5], Text(row[5], style=style), row[6])
        parts.append(crops)
    parts.extend(Text(line) for line in summary_lines(analysis))
    return Group(*parts)


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|") if text else " "
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(analysis: Analysis) -> str:
    parts = [f"## {analysis.model} — input {' x '.join(format_expr(s) for s in analysis.input.sizes)}", "",
             _markdown_table(LAYER_COLUMNS, [layer_row(layer) for layer in analysis.layers])]
    if analysis.crops:
        parts += ["", "### Crops", "", _markdown_table(CROP_COLUMNS, [crop_row(c) for c in analysis.crops])]
    parts += ["", *[f"- {line}" for line in summary_lines(analysis)]]
    return "\n".join(parts) + "\n"
