"""Ops that return several tensors (values and indices, pieces of an axis)."""

from __future__ import annotations

import sympy
import torch
import torch.fx
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import (as_expr, ceildiv, eq, format_expr, ge, is_concrete, le, lt)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _nonempty
from shapecalc.engine.rules.merges import elementwise
from shapecalc.engine.rules.registry import rule
from shapecalc.engine.rules.reshaping import _reduce


def _piece(x: SymbolicTensor, axis: int, start, length, geometry_known: bool = True) -> SymbolicTensor:
    """``x`` cut to ``[start, start + length)`` along ``axis``: a spatial
    axis keeps its map, moved by ``start`` (None where positions scramble)."""
    geometry = list(x.geometry)
    if axis in x.spatial:
        k = x.spatial.index(axis)
        g = geometry[k]
        geometry[k] = None if not geometry_known or g is None else g.shifted(start)
    return SymbolicTensor(x.with_dim(axis, length).shape, x.spatial, tuple(geometry))


def _scrambled(x: SymbolicTensor, axis: int, size=None) -> SymbolicTensor:
    """``x`` with the order along ``axis`` replaced (sort, topk): no coordinate map there."""
    return _piece(x, axis, 0, x.shape[axis] if size is None else size, geometry_known=False)


@rule(torch.max, torch.min, "max", "min")
def maximum_or_minimum(ctx, x, dim=None, keepdim=False, *, out=None):
    """``max(x)``: a 0-d tensor; ``max(x, dim)``: (values, indices), torch's
    named tuple; ``max(x, y)``: the elementwise maximum."""
    x = _expect_tensor(x, "max/min")
    if isinstance(dim, SymbolicTensor):
        return elementwise(ctx, x, dim)
    if dim is None:
        # "Expected reduction dim to be specified for input.numel() == 0"
        _nonempty(ctx, [sympy.Mul(*x.shape)])
        return SymbolicTensor(())
    axis = x.axis(dim)
    # "max(): Expected reduction dim 2 to have non-zero size."
    _nonempty(ctx, [x.shape[axis]])
    values = _reduce(ctx, x, axis, keepdim, nonempty=False)
    return values, values


@rule(torch.sort, "sort")
def sort(ctx, x, dim=-1, descending=False, *, stable=None, out=None):
    x = _expect_tensor(x, "sort")
    values = _scrambled(x, x.axis(dim))
    return values, values


@rule(torch.topk, "topk")
def top_k(ctx, x, k, dim=-1, largest=True, sorted=True, *, out=None):
    x = _expect_tensor(x, "topk")
    axis = x.axis(dim)
    k = as_expr(k)
    # "selected index k out of range" (negative k as well)
    ctx.require(sympy.And(ge(k, 0), le(k, x.shape[axis])),
                f"topk of {format_expr(k)} needs at least that many elements (size {format_expr(x.shape[axis])})")
    values = _scrambled(x, axis, k)
    return values, values


def _fixed_count(ctx, count, what: str) -> int:
    """A number of output tensors: it shapes the graph, so it must not depend on the size."""
    count = ctx.simplify(count)
    if not is_concrete(count):
        raise UnsupportedOpError(f"{what} gives {format_expr(count)} tensors, a number that depends on the size; "
                                 "use it on a fixed-size axis or give explicit sizes")
    return int(count)


def _split_pieces(x: SymbolicTensor, axis: int, lengths) -> tuple:
    pieces, start = [], sympy.Integer(0)
    for length in lengths:
        pieces.append(_piece(x, axis, start, length))
        start = start + length
    return tuple(pieces)


@rule(torch.split, "split")
def split(ctx, x, split_size_or_sections, dim=0):
    x = _expect_tensor(x, "split")
    axis = x.axis(dim)
    n = x.shape[axis]
    if isinstance(split_size_or_sections, (list, tuple)):
        lengths = [as_expr(s) for s in split_size_or_sections]
        for length in lengths:
            ctx.require(ge(length, 0), f"split sizes must not be negative (got {format_expr(length)})")
        total = sympy.Add(*lengths)
        ctx.require(eq(total, n), f"split sizes {tuple(format_expr(s) for s in lengths)} add up to "
                                  f"{format_expr(total)}, not the size {format_expr(n)}")
        return _split_pieces(x, axis, lengths)
    size = as_expr(split_size_or_sections)
    if size == 0:
        ctx.require(eq(n, 0), f"split into pieces of 0 needs an empty axis (size {format_expr(n)})")
        return (x,)
    ctx.require(ge(size, 1), f"split size {format_expr(size)} must not be negative")
    # at::split: max(ceil(n/size), 1) pieces, the last one the remainder
    if ctx.always(le(n, size)):
        count = 1
    else:
        count = _fixed_count(ctx, ceildiv(n, size), f"split of an axis of size {format_expr(n)} into pieces of {format_expr(size)}")
    return _split_pieces(x, axis, [size] * (count - 1) + [n - (count - 1) * size])


@rule(torch.chunk, "chunk")
def chunk(ctx, x, chunks, dim=0):
    x = _expect_tensor(x, "chunk")
    if not isinstance(chunks, int) or chunks < 1:
        # "chunk expects `chunks` to be greater than 0"
        ctx.require(sympy.false, f"chunk expects at least one chunk, got {chunks!r}")
    axis = x.axis(dim)
    n = x.shape[axis]
    size = ceildiv(n, chunks)
    last = n - (chunks - 1) * size
    if is_concrete(n) and int(n) > 0:
        # torch splits into pieces of ceil(n/chunks): fewer than `chunks` of them where they run out
        count = -(-int(n) // int(size))
        return _split_pieces(x, axis, [size] * (count - 1) + [n - (count - 1) * size])
    # n == 0 gives `chunks` empty pieces; otherwise all `chunks` exist only when the last is non-empty
    if not ctx.always(sympy.Or(eq(n, 0), ge(last, 1))):
        raise UnsupportedOpError(
            f"chunk({chunks}) of an axis of size {format_expr(n)} gives fewer than {chunks} tensors at some sizes "
            f"(pieces of {format_expr(size)}; all {chunks} only where {format_expr(last)} >= 1), so the graph "
            "depends on the size; use split with explicit sizes")
    return _split_pieces(x, axis, [size] * (chunks - 1) + [last])


@rule(torch.unbind, "unbind")
def unbind(ctx, x, dim=0):
    x = _expect_tensor(x, "unbind")
    axis = x.axis(dim)
    n = x.shape[axis]
    if not is_concrete(n):
        raise UnsupportedOpError(f"unbind of an axis of size {format_expr(n)} gives that many tensors, a number "
                                 "that depends on the size; unbind a fixed-size axis")
    keep = [a for a in range(x.ndim) if a != axis]
    geometry = dict(zip(x.spatial, x.geometry))
    spatial = [i for i, a in enumerate(keep) if a in geometry]
    one = SymbolicTensor(tuple(x.shape[a] for a in keep), tuple(spatial), tuple(geometry[keep[i]] for i in spatial))
    return (one,) * int(n)


@rule(torch.narrow, "narrow")
def narrow(ctx, x, dim, start, length):
    x = _expect_tensor(x, "narrow")
    if isinstance(start, SymbolicTensor):
        raise UnsupportedOpError("narrow with a tensor start (its value decides the size)")
    axis = x.axis(dim)
    n = x.shape[axis]
    start, length = as_expr(start), as_expr(length)
    ctx.require(ge(length, 0), f"narrow length {format_expr(length)} must not be negative")
    ctx.require(sympy.And(ge(start, -n), le(start, n)),
                f"narrow start {format_expr(start)} out of range for size {format_expr(n)}")
    if ctx.always(ge(start, 0)):
        begin = start
    elif ctx.always(lt(start, 0)):
        begin = start + n
    else:
        begin = ctx.simplify(sympy.Piecewise((start + n, lt(start, 0)), (start, True)))
    ctx.require(le(begin + length, n), f"narrow start {format_expr(start)} + length {format_expr(length)} exceeds "
                                       f"the size {format_expr(n)}")
    result = _piece(x, axis, begin, length)
    ctx.record_crop(x, result, {axis: begin} if axis in x.spatial else {})
    return result
