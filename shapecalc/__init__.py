"""shapecalc: exact spatial sizes of convolutional networks.

Public API only; the implementation modules are private in spirit.
``import shapecalc`` imports neither rich nor hypothesis.
"""

from ._errors import (DomainError, InputSpecError, ModelLoadError, ShapecalcError, SizeError, TraceError,
                      UnsupportedOpError)
from .analysis import Analysis, Layer, analyze
from .domain import PeriodicSet
from .geometry import CropAlignment
from .symbolic import FloorDiv, format_expr, size_symbol
from .tensors import AxisGeometry, SymbolicTensor
from .trace import InputSpec, load_model, parse_input_spec

__version__ = "0.1.0"

__all__ = [
    "Analysis", "AxisGeometry", "CropAlignment", "DomainError", "FloorDiv", "InputSpec", "InputSpecError", "Layer",
    "ModelLoadError", "PeriodicSet", "ShapecalcError", "SizeError", "SymbolicTensor", "TraceError",
    "UnsupportedOpError", "analyze", "format_expr", "load_model", "parse_input_spec", "size_symbol",
]
