"""shapecalc: exact spatial sizes of convolutional networks.

Public API only: names are re-exported from their implementation modules,
lazily, so ``import shapecalc`` (and the pytest plugin that pytest loads in
every run) imports neither torch, sympy, rich nor hypothesis until a name is
used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "ShapecalcError": "._errors", "InputSpecError": "._errors", "ModelLoadError": "._errors",
    "TraceError": "._errors", "UnsupportedOpError": "._errors", "SizeError": "._errors", "DomainError": "._errors", "DisagreementError": "._errors",
    "Analysis": ".analysis", "Layer": ".analysis", "analyze": ".analysis",
    "Cost": ".answers.cost", "LayerCost": ".answers.cost", "cost": ".answers.cost",
    "PeriodicSet": ".engine.domain",
    "sizes_report": ".answers.sizes", "explain_failure": ".answers.sizes", "SizesReport": ".answers.sizes", "SizeFailure": ".answers.sizes",
    "ExportSpec": ".answers.export_spec", "export_spec": ".answers.export_spec",
    "CropAlignment": ".audits.geometry", "MergeAlignment": ".audits.geometry", "ResampleAlignment": ".audits.resampling",
    "FloorDiv": ".engine.symbolic", "format_expr": ".engine.symbolic", "size_symbol": ".engine.symbolic",
    "AxisGeometry": ".engine.tensors", "SymbolicTensor": ".engine.tensors",
    "InputSpec": ".capture.trace", "load_model": ".capture.trace", "parse_input_spec": ".capture.trace",
    # for rule authors: shapecalc/extend.py
    "rule": ".extend", "unregister": ".extend", "rule_scope": ".extend", "tracing": ".extend",
    "RuleContext": ".extend", "with_spatial_sizes": ".extend", "window_geometry": ".extend",
    "ceildiv": ".extend", "floordiv": ".extend", "floor_of": ".extend", "aten": ".extend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shapecalc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    # the public API once: not the names a lookup caches in globals(), nor
    # the helpers (importlib, TYPE_CHECKING) this module itself needs
    return sorted({*__all__, "__version__"})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from shapecalc._errors import (DisagreementError, DomainError, InputSpecError, ModelLoadError, ShapecalcError, SizeError, TraceError,
                          UnsupportedOpError)
    from shapecalc.analysis import Analysis, Layer, analyze
    from shapecalc.answers.cost import Cost, LayerCost, cost
    from shapecalc.engine.domain import PeriodicSet
    from shapecalc.answers.sizes import SizeFailure, SizesReport, explain_failure, sizes_report
    from shapecalc.answers.export_spec import ExportSpec, export_spec
    from shapecalc.extend import (RuleContext, aten, ceildiv, floor_of, floordiv, rule, rule_scope, tracing, unregister,
                         window_geometry, with_spatial_sizes)
    from shapecalc.audits.geometry import CropAlignment, MergeAlignment
    from shapecalc.audits.resampling import ResampleAlignment
    from shapecalc.engine.symbolic import FloorDiv, format_expr, size_symbol
    from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
    from shapecalc.capture.trace import InputSpec, load_model, parse_input_spec
