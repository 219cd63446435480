"""Sizes and indexing."""

from __future__ import annotations

import builtins
import operator
from typing import Optional
import sympy
import torch
import torch.fx
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import (as_expr, floor_of, floordiv, format_expr, ge, largest, le, lt,
                       smallest)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _windowed_geometry
from shapecalc.engine.rules.advanced_indexing import advanced_index
from shapecalc.engine.rules.metadata import _index_keeps_channels, _slice_params
from shapecalc.engine.rules.properties import Untracked
from shapecalc.engine.rules.registry import rule
from shapecalc.engine.rules.reshaping import _moved


@rule("size")
def size(ctx, x, dim=None):
    x = _expect_tensor(x, "size")
    return x.shape if dim is None else x.shape[x.axis(dim)]


@rule("dim")
def dimensions(ctx, x):
    return _expect_tensor(x, "dim").ndim


@rule(builtins.getattr)
def attribute(ctx, obj, name, *default):
    if isinstance(obj, Untracked):
        raise UnsupportedOpError(f"{obj.what} is not tracked (its .{name})")
    if isinstance(obj, SymbolicTensor):
        if name == "shape":
            return obj.shape
        if name == "ndim":
            return obj.ndim
        if name in ("dtype", "device"):
            return Untracked(f"a tensor's .{name}")
        if name in ("mT", "mH"):
            if obj.ndim < 2:
                ctx.require(sympy.false, f"tensor.{name} is only supported on matrices or batches of matrices. "
                                         f"Got {obj.ndim}-D tensor.")
            return _moved(obj, [*range(obj.ndim - 2), obj.ndim - 1, obj.ndim - 2])
        raise UnsupportedOpError(f"tensor attribute .{name}")
    if isinstance(obj, tuple) and len(obj) == 2 and name in ("values", "indices"):
        # torch's (values, indices) named tuples (max, min, sort, ...)
        return obj[0 if name == "values" else 1]
    return getattr(obj, name, *default)


@rule(builtins.len)
def length(ctx, obj):
    if isinstance(obj, SymbolicTensor):
        return obj.shape[0]
    return len(obj)


@rule(builtins.int)
def to_int(ctx, value):
    if isinstance(value, float):
        return int(value)
    value = as_expr(value)
    if value.is_integer:
        return value
    # int() truncates toward zero: floor at or above 0, ceiling below
    # (a centre crop int((a - b) / 2) is negative when b is the larger).
    if ctx.always(ge(value, 0)):
        return floor_of(value)
    if ctx.always(le(value, 0)):
        return -floor_of(-value)
    return ctx.simplify(sympy.Piecewise((floor_of(value), ge(value, 0)), (-floor_of(-value), True)))


def _clamped_bound(ctx, bound, n, default):
    """Python's slice bound normalisation: negative counts from the end, then
    clamp to [0, n].  Decided against the domain where possible."""
    if bound is None:
        return as_expr(default)
    bound = as_expr(bound)
    if ctx.always(ge(bound, 0)):
        return ctx.simplify(smallest(bound, n))
    if ctx.always(lt(bound, 0)):
        return ctx.simplify(largest(0, bound + n))
    return ctx.simplify(sympy.Piecewise((largest(0, bound + n), lt(bound, 0)), (smallest(bound, n), True)))


def _slice_axis(ctx, n, geometry: Optional[AxisGeometry], index: slice):
    if index.step not in (None, 1):
        step = index.step
        if not (isinstance(step, int) and step > 0):
            raise UnsupportedOpError(f"slice step {step!r}: only positive integer steps")
    start = _clamped_bound(ctx, index.start, n, 0)
    stop = _clamped_bound(ctx, index.stop, n, n)
    length = ctx.simplify(largest(0, stop - start))
    step = index.step or 1
    if step != 1:
        length = floordiv(length + step - 1, step)
    new_geometry = None
    if geometry is not None:
        if geometry.position_free:
            new_geometry = geometry
        else:
            moved = geometry.shifted(start)
            new_geometry = moved if step == 1 else _windowed_geometry(moved, 1, step, 0, 1)
    return length, new_geometry, start


@rule(operator.getitem, params=_slice_params, keeps_channels=_index_keeps_channels)
def getitem(ctx, obj, index):
    if not isinstance(obj, SymbolicTensor):
        if isinstance(obj, (tuple, list, torch.Size)) and isinstance(index, slice):
            return tuple(obj[index])
        return obj[index]
    return _index_tensor(ctx, obj, index)


def _index_tensor(ctx, x: SymbolicTensor, index):
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (SymbolicTensor, list, torch.Tensor)) for i in items):
        return advanced_index(ctx, x, items, _index_tensor)
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        position = items.index(Ellipsis)
        items[position:position + 1] = [slice(None)] * (x.ndim - consumed)
    items += [slice(None)] * (x.ndim - sum(1 for i in items if i is not None))
    shape, spatial, geometry = [], [], []
    offsets = {}
    axis = 0
    old_geometry = dict(zip(x.spatial, x.geometry))
    for item in items:
        if item is None:
            shape.append(sympy.Integer(1))
            continue
        n = x.shape[axis]
        if isinstance(item, slice):
            if item == slice(None):
                length, g, start = n, old_geometry.get(axis), sympy.Integer(0)
            else:
                length, g, start = _slice_axis(ctx, n, old_geometry.get(axis), item)
            if axis in old_geometry:
                spatial.append(len(shape))
                geometry.append(g)
                offsets[axis] = start
            shape.append(length)
        else:
            position = as_expr(item)
            ctx.require(sympy.And(ge(position, -n), lt(position, n)), f"index {format_expr(position)} out of range for size {format_expr(n)}")
        axis += 1
    result = SymbolicTensor(tuple(shape), tuple(spatial), tuple(geometry))
    ctx.record_crop(x, result, offsets)
    return result
