"""Small helpers."""

from __future__ import annotations

from typing import Optional
import sympy
from shapecalc._errors import UnsupportedOpError
from shapecalc.audits import receptive
from shapecalc.engine.symbolic import (eq, format_expr, ge)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.registry import RuleContext


def _spatial_axes(count: int) -> str:
    return f"{count} spatial {'axis' if count == 1 else 'axes'}"


def _per_axis(value, count: int, what: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return tuple(value) * count
        if len(value) != count:
            raise UnsupportedOpError(f"{what} {tuple(value)} has {len(value)} entries for {_spatial_axes(count)}")
        return tuple(value)
    return (value,) * count


def _expect_tensor(value, what: str) -> SymbolicTensor:
    if not isinstance(value, SymbolicTensor):
        raise UnsupportedOpError(f"{what} expected a tensor, got {type(value).__name__}")
    return value


def _spatial_count(x: SymbolicTensor, nd: int) -> None:
    if len(x.spatial) != nd:
        raise UnsupportedOpError(f"a {nd}-d spatial op got a tensor with {_spatial_axes(len(x.spatial))}")


def _nonempty(ctx: RuleContext, sizes) -> None:
    for size in sizes:
        ctx.require(ge(size, 1), f"needs a non-empty input (size {format_expr(size)})")


def _axis_geometry(scale, shift, rf, window) -> AxisGeometry:
    """An axis's geometry; where the exact window is known its widest extent
    is the receptive field (the per-op formulas assume every index's field
    has the same width, which a staircase of transposed convs breaks)."""
    widest = receptive.widest(window)
    return AxisGeometry(scale, shift, rf if widest is None else sympy.Integer(widest), window)


def _windowed_geometry(g: Optional[AxisGeometry], kernel: int, stride: int, pad_left: int, dilation: int):
    """Coordinate map and receptive field after a conv or pool window."""
    if g is None:
        return None
    span = dilation * (kernel - 1)
    rf = None if g.rf is None or g.stride is None else g.rf + span * g.stride
    if g.position_free:
        return g
    shift = (g.shift + pad_left - sympy.Rational(span, 2)) / stride
    return _axis_geometry(g.scale / stride, shift, rf, receptive.conv_window(g.window, kernel, stride, pad_left, dilation))


def _channels(ctx: RuleContext, x: SymbolicTensor, expected: int, what: str) -> None:
    if x.ndim >= 2:
        ctx.require(eq(x.shape[1], expected), f"{what} expects {expected} input channels, got {format_expr(x.shape[1])}")


def _on_last_axes(ctx, x, nd: int, what: str, compute):
    """torch's pools and resamplers work on the last ``nd`` axes of an (nd+1)- or (nd+2)-D
    input, whichever of them carry a spatial mark: ``F.max_pool1d(x.flatten(2), 4)``
    pools the flattened image, and ``F.max_pool1d`` of a 4-D tensor fails at
    every size.  ``compute`` sizes a tensor whose spatial axes are exactly
    those ``nd``; marked axes in front of them keep their size and map."""
    x = _expect_tensor(x, what)
    if x.ndim not in (nd + 1, nd + 2):
        ctx.require(sympy.false, f"{what} expects a {nd + 1}-D or {nd + 2}-D input, got {x.ndim}-D")
    trailing = tuple(range(x.ndim - nd, x.ndim))
    marked = dict(zip(x.spatial, x.geometry))
    if x.spatial == trailing:
        return compute(x)

    def back(t: SymbolicTensor) -> SymbolicTensor:
        pooled = dict(zip(trailing, t.geometry))
        return SymbolicTensor(t.shape, x.spatial, tuple(pooled[a] if a in pooled else marked[a] for a in x.spatial),
                              x.dtype_kind)

    result = compute(SymbolicTensor(x.shape, trailing, tuple(marked.get(a) for a in trailing), x.dtype_kind))
    return tuple(back(t) for t in result) if isinstance(result, tuple) else back(result)


def _one_sequence_or_many(values: tuple) -> tuple:
    """torch takes sizes or dims either spread out or as one sequence
    (``x.view(1, -1)`` and ``x.view((1, -1))``, ``x.permute([0, 2, 1])``);
    a ``torch.Size`` is a tuple."""
    if len(values) == 1 and isinstance(values[0], (tuple, list)):
        return tuple(values[0])
    return values
