"""Matrix products and axis moves."""

from __future__ import annotations

import operator
import sympy
import torch
import torch.fx
from shapecalc.engine.symbolic import (eq, format_expr)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor
from shapecalc.engine.rules.merges import broadcast_size
from shapecalc.engine.rules.registry import rule
from shapecalc.engine.rules.reshaping import _moved


def _matrix_product(ctx, a: SymbolicTensor, b: SymbolicTensor, what: str, broadcast: bool):
    """``a @ b`` as aten's matmul: a 1-d side gains a unit axis that is dropped
    again, batch axes broadcast.  A spatial axis that survives (batch, rows of
    ``a``, columns of ``b``) keeps no coordinate map: each output mixes a whole
    row of one side with the other side, whose pixels shapecalc cannot tell
    from learned weights."""
    if a.ndim == 0 or b.ndim == 0:
        ctx.require(sympy.false, f"both arguments to {what} need to be at least 1-d, got {a.ndim}-d and {b.ndim}-d")
    inner_a, inner_b = a.shape[-1], b.shape[-2] if b.ndim >= 2 else b.shape[0]
    ctx.require(eq(inner_a, inner_b), f"{what}: sizes {format_expr(inner_a)} and {format_expr(inner_b)} "
                                      "(a's last axis, b's second-last) must match")
    batch_a, batch_b = a.shape[:-2], b.shape[:-2]
    rank = max(len(batch_a), len(batch_b))
    padded_a = (sympy.Integer(1),) * (rank - len(batch_a)) + batch_a
    padded_b = (sympy.Integer(1),) * (rank - len(batch_b)) + batch_b
    batch = []
    for i, (x, y) in enumerate(zip(padded_a, padded_b)):
        if broadcast:
            batch.append(broadcast_size(ctx, x, y))
        else:
            ctx.require(eq(x, y), f"{what}: batch sizes {format_expr(x)} and {format_expr(y)} must be equal")
            batch.append(x)
    # where each output axis comes from (operand axes), to carry spatial marks
    origins = [[("a", i - rank + len(batch_a)), ("b", i - rank + len(batch_b))] for i in range(rank)]
    shape = list(batch)
    if a.ndim >= 2:
        shape.append(a.shape[-2])
        origins.append([("a", a.ndim - 2)])
    if b.ndim >= 2:
        shape.append(b.shape[-1])
        origins.append([("b", b.ndim - 1)])
    spatial_of = {"a": set(a.spatial), "b": set(b.spatial)}
    spatial = tuple(i for i, sources in enumerate(origins)
                    if any(axis >= 0 and axis in spatial_of[side] for side, axis in sources))
    return SymbolicTensor(tuple(shape), spatial)


@rule(torch.matmul, "matmul", operator.matmul, "__matmul__")
def matmul(ctx, a, b, *, out=None):
    return _matrix_product(ctx, _expect_tensor(a, "matmul"), _expect_tensor(b, "matmul"), "matmul", broadcast=True)


@rule(torch.bmm, "bmm")
def batch_matmul(ctx, a, b, *, out=None):
    a, b = _expect_tensor(a, "bmm"), _expect_tensor(b, "bmm")
    if a.ndim != 3 or b.ndim != 3:
        ctx.require(sympy.false, f"bmm needs two 3-d tensors, got {a.ndim}-d and {b.ndim}-d")
    return _matrix_product(ctx, a, b, "bmm", broadcast=False)


@rule(torch.movedim, torch.moveaxis, "movedim", "moveaxis")
def movedim(ctx, x, source, destination):
    x = _expect_tensor(x, "movedim")
    source = [x.axis(d) for d in (source if isinstance(source, (tuple, list)) else [source])]
    destination = [x.axis(d) for d in (destination if isinstance(destination, (tuple, list)) else [destination])]
    if len(source) != len(destination) or len(set(source)) != len(source) or len(set(destination)) != len(destination):
        ctx.require(sympy.false, f"movedim: source {source} and destination {destination} must be as long and "
                                 "without repeats")
    order: list = [None] * x.ndim
    for s, d in zip(source, destination):
        order[d] = s
    rest = iter(a for a in range(x.ndim) if a not in source)
    return _moved(x, [a if a is not None else next(rest) for a in order])
