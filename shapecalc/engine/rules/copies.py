"""Broadcasting copies and reorderings."""

from __future__ import annotations

from typing import Optional
import sympy
import torch
import torch.fx
from shapecalc.engine.symbolic import (as_expr, eq, format_expr, ge)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _one_sequence_or_many
from shapecalc.engine.rules.registry import rule


def _copied_geometry(g: Optional[AxisGeometry], copied: bool) -> Optional[AxisGeometry]:
    """An axis whose values are copies (expand from 1, repeat): a position-free
    axis stays so (every copy sees the whole input); others lose their map."""
    if not copied or g is None or g.position_free:
        return g
    return None


@rule("expand")
def expand(ctx, x, *sizes):
    x = _expect_tensor(x, "expand")
    sizes = _one_sequence_or_many(sizes)
    sizes = [as_expr(s) for s in sizes]
    if len(sizes) < x.ndim:
        ctx.require(sympy.false, f"expand to {len(sizes)} sizes of a {x.ndim}-d tensor (at least {x.ndim})")
    new = len(sizes) - x.ndim
    shape, copied = [], []
    for i, target in enumerate(sizes):
        if i < new:
            if target == -1:
                ctx.require(sympy.false, "expand: -1 is not allowed in a new leading dimension")
            ctx.require(ge(target, 0), f"expand to a negative size {format_expr(target)}")
            shape.append(target)
            continue
        source = x.shape[i - new]
        if target == -1 or target == source:
            shape.append(source)
            copied.append(False)
            continue
        # "The expanded size of the tensor (5) must match the existing size (3) at non-singleton dimension 2"
        ctx.require(sympy.Or(eq(source, target), eq(source, 1)),
                    f"expand: size {format_expr(source)} must be 1 or match {format_expr(target)}")
        ctx.require(ge(target, 0), f"expand to a negative size {format_expr(target)}")
        shape.append(target)
        copied.append(not ctx.always(eq(source, target)))
    spatial = tuple(a + new for a in x.spatial)
    geometry = tuple(_copied_geometry(g, copied[a]) for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(tuple(shape), spatial, geometry)


@rule("expand_as")
def expand_as(ctx, x, other):
    return expand(ctx, x, _expect_tensor(other, "expand_as").shape)


@rule("repeat")
def repeat(ctx, x, *repeats):
    x = _expect_tensor(x, "repeat")
    repeats = _one_sequence_or_many(repeats)
    repeats = [as_expr(r) for r in repeats]
    if len(repeats) < x.ndim:
        ctx.require(sympy.false, f"repeat with {len(repeats)} counts for a {x.ndim}-d tensor "
                                 "(torch: 'can not be smaller than number of dimensions of tensor')")
    for r in repeats:
        ctx.require(ge(r, 0), f"repeat count {format_expr(r)} must not be negative")
    new = len(repeats) - x.ndim
    shape = list(repeats[:new]) + [n * r for n, r in zip(x.shape, repeats[new:])]
    geometry = tuple(_copied_geometry(g, repeats[new + a] != 1) for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(tuple(shape), tuple(a + new for a in x.spatial), geometry)


def _dims(x: SymbolicTensor, dims) -> list[int]:
    return [x.axis(d) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]


@rule(torch.flip, "flip")
def flip(ctx, x, *dims):
    x = _expect_tensor(x, "flip")
    dims = _one_sequence_or_many(dims)
    flipped = set(_dims(x, list(dims)))
    # index i now holds input index n-1-i: a mirrored map, which Caffe's
    # positive-scale convention cannot state; unknown rather than wrong
    geometry = tuple(None if a in flipped else g for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(x.shape, x.spatial, geometry)


@rule(torch.roll, "roll")
def roll(ctx, x, shifts, dims=None):
    x = _expect_tensor(x, "roll")
    if dims is None or dims == () or dims == []:
        # rolls the flattened tensor: every axis's positions move
        rolled = set(range(x.ndim))
    else:
        shift_count = len(shifts) if isinstance(shifts, (tuple, list)) else 1
        dims = _dims(x, dims)
        if shift_count != len(dims):
            ctx.require(sympy.false, f"roll: {shift_count} shifts for {len(dims)} dims")
        rolled = set(dims)
    # a rolled axis wraps around: no single coordinate map
    geometry = tuple(None if a in rolled else g for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(x.shape, x.spatial, geometry)
