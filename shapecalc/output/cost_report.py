"""``shapecalc cost`` output: JSON (docs/json.md), Markdown and a rich table.

Every function returns its result and prints nothing.
"""

from __future__ import annotations

from typing import Any

from shapecalc.answers.cost import DTYPES, Cost, LayerCost
from shapecalc.engine.symbolic import format_expr


def _sizes_data(elements, item_bytes) -> dict[str, str]:
    return {"elements": format_expr(elements), "bytes": format_expr(item_bytes)}


def layer_cost_data(layer: LayerCost) -> dict[str, Any]:
    return {"name": layer.name, "module": layer.module, "op": layer.op, "flops": format_expr(layer.flops), "macs": format_expr(layer.macs),
            "params": layer.params, "activation": _sizes_data(layer.activation, layer.activation_bytes),
            "shares_storage": layer.shares_storage}


def cost_to_json(result: Cost) -> dict[str, Any]:
    """The JSON contract of ``shapecalc cost --format json`` (docs/json.md)."""
    return {
        "model": result.model,
        "capture": result.capture,
        "input": result.input,
        "symbols": [str(s) for s in result.symbols],
        "dtype": result.dtype,
        "bytes_per_element": DTYPES[result.dtype],
        "convention": "flops as torch.utils.flop_counter.FlopCounterMode counts them (a multiply-accumulate "
                      "is 2; only convolutions and matrix products); macs = flops/2",
        "layers": [layer_cost_data(layer) for layer in result.layers],
        "total": {
            "flops": format_expr(result.flops),
            "macs": format_expr(result.macs),
            "params": result.params,
            "params_used": result.params_used,
            "activation": _sizes_data(result.activation, result.activation_bytes),
            "peak_activation": _sizes_data(result.peak_activation, result.peak_activation_bytes),
            "peak_nodes": list(result.peak_nodes),
        },
    }


#: the module last: the columns before it keep their places for readers of earlier output
COLUMNS = ["layer", "op", "flops", "macs", "params", "activation", "bytes", "module"]


def _row(layer: LayerCost) -> list[str]:
    shared = " (shared)" if layer.shares_storage else ""
    return [layer.name, layer.op, format_expr(layer.flops), format_expr(layer.macs), str(layer.params),
            format_expr(layer.activation) + shared, format_expr(layer.activation_bytes) + shared, layer.module]


def summary_lines(result: Cost) -> list[str]:
    return [
        f"flops: {format_expr(result.flops)}",
        f"macs: {format_expr(result.macs)}",
        f"params: {result.params}" + (f" ({result.params_used} used by the forward pass)"
                                      if result.params_used != result.params else ""),
        f"activation ({result.dtype}): {format_expr(result.activation)} elements, "
        f"{format_expr(result.activation_bytes)} bytes",
        f"peak activation ({result.dtype}): {format_expr(result.peak_activation)} elements, "
        f"{format_expr(result.peak_activation_bytes)} bytes (at {', '.join(result.peak_nodes) or '-'})",
    ]


def _title(result: Cost) -> str:
    return f"{result.model} — cost at input {result.input} — {result.capture} capture"


def cost_markdown(result: Cost) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|") if text else " "
    lines = [f"## {_title(result)}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in _row(layer)) + " |" for layer in result.layers]
    lines += ["", *[f"- {line}" for line in summary_lines(result)]]
    return "\n".join(lines) + "\n"


def cost_table(result: Cost):
    """A rich renderable: the per-layer table, then the totals."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=_title(result))
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in ("layer", "op", "module"),
                         justify="right" if column not in ("layer", "op", "module") else "left")
    for layer in result.layers:
        table.add_row(*_row(layer))
    return Group(table, *(Text(line) for line in summary_lines(result)))
