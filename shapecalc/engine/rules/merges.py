"""Merges."""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Optional
import sympy
import torch
import torch.fx
from shapecalc._errors import UnsupportedOpError
from shapecalc.audits import receptive
from shapecalc.engine.symbolic import (as_expr, eq, floordiv, format_expr, ge, is_concrete, largest, smallest)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.common import _axis_geometry, _expect_tensor
from shapecalc.engine.rules.registry import rule


def broadcast_size(ctx, a, b):
    """PyTorch broadcasting of one axis: equal, or one side is 1."""
    a, b = as_expr(a), as_expr(b)
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    equal = eq(a, b)
    ctx.require(sympy.Or(equal, eq(a, 1), eq(b, 1)),
                f"sizes {format_expr(a)} and {format_expr(b)} must match (or one be 1)")
    if ctx.always(equal):
        return a
    if ctx.always(ge(a, 1)) and ctx.always(ge(b, 1)):
        # Equal or one of them 1, and neither 0: the larger one, a form the
        # JSON contract allows (Piecewise is not in it).
        return ctx.simplify(largest(a, b))
    return sympy.Piecewise((b, eq(a, 1)), (a, True))


def _merge_geometry(ga: Optional[AxisGeometry], gb: Optional[AxisGeometry]):
    """The union of two paths' receptive fields, on the first path's map."""
    if ga is None or gb is None:
        return ga if gb is None else gb
    window = receptive.union(ga.window, gb.window)
    if ga.position_free or gb.position_free:
        free, other = (ga, gb) if ga.position_free else (gb, ga)
        # A global branch sees the whole input: every index's field covers it.
        rf = None if free.rf is None or other.rf is None else largest(free.rf, other.rf)
        return AxisGeometry(other.scale, other.shift, rf, window)
    if receptive.widest(window) is not None:
        return _axis_geometry(ga.scale, ga.shift, None, window)
    if ga.rf is None or gb.rf is None:
        return AxisGeometry(ga.scale, ga.shift, None, window)
    apart = sympy.expand(gb.center - ga.center)
    if not apart.is_Number:
        # Centres a size-dependent distance apart (a resampled path): the
        # hull has no closed form worth showing; the merge audit reports it.
        return AxisGeometry(ga.scale, ga.shift, None, window)
    low = smallest(ga.center - ga.rf / 2, gb.center - gb.rf / 2)
    high = largest(ga.center + ga.rf / 2, gb.center + gb.rf / 2)
    return AxisGeometry(ga.scale, ga.shift, high - low, window)


def elementwise(ctx, a, b):
    if not isinstance(a, SymbolicTensor) and not isinstance(b, SymbolicTensor):
        return None
    if not isinstance(b, SymbolicTensor):
        return a
    if not isinstance(a, SymbolicTensor):
        return b
    ndim = max(a.ndim, b.ndim)
    shape_a = (sympy.Integer(1),) * (ndim - a.ndim) + a.shape
    shape_b = (sympy.Integer(1),) * (ndim - b.ndim) + b.shape
    shape = tuple(broadcast_size(ctx, x, y) for x, y in zip(shape_a, shape_b))
    spatial_a = {i + ndim - a.ndim: g for i, g in zip(a.spatial, a.geometry)}
    spatial_b = {i + ndim - b.ndim: g for i, g in zip(b.spatial, b.geometry)}
    spatial = tuple(sorted(set(spatial_a) | set(spatial_b)))
    geometry = []
    for axis in spatial:
        ga, gb = spatial_a.get(axis), spatial_b.get(axis)
        # A size-1 side broadcasts: every index sees the same value.
        if axis in spatial_a and shape_a[axis] == 1 and shape_b[axis] != 1:
            ga = None
        if axis in spatial_b and shape_b[axis] == 1 and shape_a[axis] != 1:
            gb = None
        geometry.append(_merge_geometry(ga, gb))
    return SymbolicTensor(shape, spatial, tuple(geometry))


def exact_in_double(value: float, dividing: bool = False) -> bool:
    """Whether Python's double arithmetic with ``value`` is exact for every
    size (< 2**30): a product or sum needs a short dyadic (0.5, 1.5, 0.75),
    a quotient a power of two."""
    if value != value or value in (float("inf"), float("-inf")):
        return False
    exact = Fraction(value)
    numerator = abs(exact.numerator)
    odd = numerator >> ((numerator & -numerator).bit_length() - 1) if numerator else 0
    if dividing:
        return odd == 1
    return odd < 1 << 22 and exact.denominator <= 1 << 22


def _python_number(value):
    if isinstance(value, sympy.Basic):
        return int(value) if value.is_Integer else float(value)
    return value


def _scalar_or_tensor(ctx, op, a, b, python_op=None):
    result = elementwise(ctx, a, b)
    if result is not None:
        return result
    if isinstance(a, float) or isinstance(b, float):
        # Python computes with a float in double precision.  On concrete
        # sizes do exactly that (int(90 * 0.7) is 62); on a symbolic size
        # accept only floats that keep every result exact, else refuse.
        if python_op is not None and all(isinstance(v, float) or is_concrete(v) for v in (a, b)):
            return python_op(_python_number(a), _python_number(b))
        dividing = python_op in (operator.truediv, operator.floordiv, operator.mod)
        for v in (a, b):
            if isinstance(v, float) and not exact_in_double(v, dividing):
                raise UnsupportedOpError(
                    f"size arithmetic with the float {v!r} rounds in double precision, so the result depends on "
                    "the size in no closed form; use integers or a factor such as 0.5")
        a, b = (as_expr(v) if isinstance(v, float) else v for v in (a, b))
    return op(a, b)


@rule(operator.add, torch.add, "add", "__add__", "__radd__", merge="broadcast", keeps_channels=True)
def add(ctx, a, b, *, alpha=1, out=None):
    return _scalar_or_tensor(ctx, _add_sizes, a, b, operator.add)


def _add_sizes(a, b):
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) + tuple(b)
    return as_expr(a) + as_expr(b) if not isinstance(a, float) and not isinstance(b, float) else a + b


@rule(operator.sub, torch.sub, "sub", "__sub__", "__rsub__", merge="broadcast", keeps_channels=True)
def subtract(ctx, a, b, *, alpha=1, out=None):
    return _scalar_or_tensor(ctx, lambda x, y: as_expr(x) - as_expr(y), a, b, operator.sub)


@rule(operator.mul, torch.mul, "mul", "__mul__", "__rmul__", merge="broadcast", keeps_channels=True)
def multiply(ctx, a, b, *, out=None):
    def times(x, y):
        if isinstance(x, (tuple, list)) and isinstance(y, int):
            return tuple(x) * y
        return as_expr(x) * as_expr(y)
    return _scalar_or_tensor(ctx, times, a, b, operator.mul)


@rule(operator.truediv, torch.div, torch.true_divide, "div", "__truediv__", merge="broadcast", keeps_channels=True)
def divide(ctx, a, b, *, rounding_mode=None, out=None):
    def ratio(x, y):
        if rounding_mode == "floor":
            return floordiv(x, y)
        return as_expr(x) / as_expr(y)
    return _scalar_or_tensor(ctx, ratio, a, b, operator.floordiv if rounding_mode == "floor" else operator.truediv)


@rule(operator.floordiv, "__floordiv__", merge="broadcast", keeps_channels=True)
def floor_divide(ctx, a, b):
    return _scalar_or_tensor(ctx, floordiv, a, b, operator.floordiv)


@rule(operator.mod, merge="broadcast", keeps_channels=True)
def modulo(ctx, a, b):
    return _scalar_or_tensor(ctx, lambda x, y: as_expr(x) - as_expr(y) * floordiv(x, y), a, b, operator.mod)


@rule(operator.neg, keeps_channels=True)
def negate(ctx, a):
    return a if isinstance(a, SymbolicTensor) else -as_expr(a)


@rule(torch.maximum, torch.minimum, merge="broadcast")
def elementwise_pair(ctx, a, b, *, out=None):
    return elementwise(ctx, a, b)


@rule(torch.cat, torch.concat, torch.concatenate, merge="concat")
def concatenate(ctx, tensors, dim=0, *, axis=None, out=None):
    dim = axis if axis is not None else dim
    tensors = [_expect_tensor(t, "cat") for t in tensors]
    first = tensors[0]
    axis = first.axis(dim)
    shape = list(first.shape)
    geometry = dict(zip(first.spatial, first.geometry))
    for other in tensors[1:]:
        if other.ndim != first.ndim:
            raise UnsupportedOpError(f"cat of a {first.ndim}-d and a {other.ndim}-d tensor")
        for i, (x, y) in enumerate(zip(shape, other.shape)):
            if i == axis:
                shape[i] = x + y
            elif x != y:
                ctx.require(eq(x, y), f"cat needs equal sizes on dim {i}: {format_expr(x)} vs {format_expr(y)}")
        for a, g in zip(other.spatial, other.geometry):
            if a != axis:
                geometry[a] = _merge_geometry(geometry.get(a), g)
    if axis in geometry:
        geometry[axis] = None  # positions along a concatenated spatial axis no longer follow one map
    return SymbolicTensor(tuple(shape), first.spatial, tuple(geometry[a] for a in first.spatial))


@rule(torch.stack, merge="stack")
def stack(ctx, tensors, dim=0, *, out=None):
    tensors = [_expect_tensor(t, "stack") for t in tensors]
    merged = tensors[0]
    for other in tensors[1:]:
        merged = elementwise(ctx, merged, other)
        for x, y in zip(tensors[0].shape, other.shape):
            if x != y:
                ctx.require(eq(x, y), f"stack needs equal sizes: {format_expr(x)} vs {format_expr(y)}")
    axis = dim % (merged.ndim + 1)
    shape = merged.shape[:axis] + (sympy.Integer(len(tensors)),) + merged.shape[axis:]
    spatial = tuple(a + 1 if a >= axis else a for a in merged.spatial)
    return SymbolicTensor(shape, spatial, merged.geometry)
