"""Reshaping."""

from __future__ import annotations

from typing import Optional, Sequence
import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.audits import receptive
from shapecalc.engine.symbolic import (as_expr, eq, floordiv, format_expr)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _nonempty, _one_sequence_or_many
from shapecalc.engine.rules.pooling import _adaptive_rf
from shapecalc.engine.rules.registry import rule


def _reshape(ctx, x: SymbolicTensor, sizes):
    sizes = _one_sequence_or_many(sizes)
    sizes = [as_expr(s) for s in sizes]
    total = sympy.Mul(*x.shape)
    if any(s == -1 for s in sizes):
        known = sympy.Mul(*[s for s in sizes if s != -1])
        # With a constant rest the -1 axis is floor(total/known); the check
        # below then asks that known divides total, as PyTorch does
        # (view(1, C, -1, 2) needs an even H*W).
        inferred = floordiv(total, known) if known.is_Integer and known > 0 else total / known
        sizes = [inferred if s == -1 else s for s in sizes]
    ctx.require(eq(sympy.expand(sympy.Mul(*sizes)), sympy.expand(total)), f"view {tuple(format_expr(s) for s in sizes)} does not match {format_expr(total)} elements")
    # A spatial axis survives when its exact size expression reappears, in order.
    spatial, geometry, cursor = [], [], 0
    for axis, size in enumerate(sizes):
        for k in range(cursor, len(x.spatial)):
            if x.spatial_sizes[k] == size and not size.is_Number:
                spatial.append(axis)
                geometry.append(x.geometry[k])
                cursor = k + 1
                break
    return SymbolicTensor(tuple(sizes), tuple(spatial), tuple(geometry))


@rule("view", "reshape", torch.reshape)
def reshape(ctx, x, *sizes, shape=None):
    return _reshape(ctx, _expect_tensor(x, "view"), sizes if shape is None else (shape,))


def _flatten(x: SymbolicTensor, start: int, end: int):
    start, end = x.axis(start), x.axis(end)
    merged = sympy.Mul(*x.shape[start:end + 1])
    shape = x.shape[:start] + (merged,) + x.shape[end + 1:]
    spatial, geometry = [], []
    for a, g in zip(x.spatial, x.geometry):
        if a < start:
            spatial.append(a), geometry.append(g)
        elif a > end:
            spatial.append(a - (end - start)), geometry.append(g)
        elif start == end:
            spatial.append(a), geometry.append(g)
    return SymbolicTensor(shape, tuple(spatial), tuple(geometry))


@rule(torch.flatten, "flatten")
def flatten(ctx, x, start_dim=0, end_dim=-1):
    return _flatten(_expect_tensor(x, "flatten"), start_dim, end_dim)


@rule(nn.Flatten)
def flatten_module(ctx, x):
    return _flatten(_expect_tensor(x, "Flatten"), ctx.module.start_dim, ctx.module.end_dim)


def _linear(ctx, x: SymbolicTensor, in_features: int, out_features: Optional[int], what: str):
    """Features on the last axis (channel-last tensors keep their spatial
    axes in front); a 1-d weight contracts the last axis away."""
    last = x.ndim - 1
    ctx.require(eq(x.shape[last], in_features), f"{what} expects {in_features} features, got {format_expr(x.shape[last])}")
    keep = [(a, g) for a, g in zip(x.spatial, x.geometry) if a != last]
    tail = () if out_features is None else (sympy.Integer(out_features),)
    return SymbolicTensor(x.shape[:last] + tail, tuple(a for a, _ in keep), tuple(g for _, g in keep))


@rule(nn.Linear)
def linear(ctx, x):
    m = ctx.module
    return _linear(ctx, _expect_tensor(x, "Linear"), m.in_features, m.out_features, "Linear")


@rule(F.linear)
def functional_linear(ctx, x, weight, bias=None):
    x, weight = _expect_tensor(x, "linear"), _expect_tensor(weight, "linear weight")
    if weight.ndim not in (1, 2):
        ctx.require(sympy.false, f"linear weight must be 1-d or 2-d, got {weight.ndim}-d")
    if x.ndim == 0:
        ctx.require(sympy.false, "linear of a 0-d tensor")
    out_features = None if weight.ndim == 1 else int(weight.shape[0])
    return _linear(ctx, x, int(weight.shape[-1]), out_features, "linear")


def _moved(x: SymbolicTensor, order: Sequence[int]) -> SymbolicTensor:
    order = [x.axis(a) for a in order]
    geometry = dict(zip(x.spatial, x.geometry))
    spatial = [new for new, old in enumerate(order) if old in geometry]
    return SymbolicTensor(tuple(x.shape[a] for a in order), tuple(spatial), tuple(geometry[order[a]] for a in spatial))


@rule("permute", torch.permute)
def permute(ctx, x, *dims):
    dims = _one_sequence_or_many(dims)
    return _moved(_expect_tensor(x, "permute"), dims)


@rule("transpose", torch.transpose)
def transpose(ctx, x, dim0, dim1):
    x = _expect_tensor(x, "transpose")
    order = list(range(x.ndim))
    a, b = x.axis(dim0), x.axis(dim1)
    order[a], order[b] = order[b], order[a]
    return _moved(x, order)


@rule("unsqueeze", torch.unsqueeze)
def unsqueeze(ctx, x, dim):
    x = _expect_tensor(x, "unsqueeze")
    axis = dim % (x.ndim + 1)
    shape = x.shape[:axis] + (sympy.Integer(1),) + x.shape[axis:]
    return SymbolicTensor(shape, tuple(a + 1 if a >= axis else a for a in x.spatial), x.geometry)


@rule("squeeze", torch.squeeze)
def squeeze(ctx, x, dim=None):
    x = _expect_tensor(x, "squeeze")
    dims = range(x.ndim) if dim is None else [x.axis(d) for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
    drop = [a for a in dims if x.shape[a] == 1]
    undecided = [a for a in dims if not x.shape[a].is_Number]
    if undecided:
        raise UnsupportedOpError(f"squeeze of a symbolic axis ({format_expr(x.shape[undecided[0]])}) has a size-dependent rank")
    keep = [a for a in range(x.ndim) if a not in drop]
    geometry = dict(zip(x.spatial, x.geometry))
    spatial = [i for i, a in enumerate(keep) if a in geometry]
    return SymbolicTensor(tuple(x.shape[a] for a in keep), tuple(spatial), tuple(geometry[keep[i]] for i in spatial))


@rule("mean", "sum", torch.mean, torch.sum)
def reduction(ctx, x, dim=None, keepdim=False, *, dtype=None):
    # a sum or mean over an empty axis is 0 or nan, not an error
    return _reduce(ctx, x, dim, keepdim, nonempty=False)


@rule("amax", "amin", torch.amax, torch.amin)
def extremum(ctx, x, dim=(), keepdim=False):
    # "Expected reduction dim to have non-zero size"
    return _reduce(ctx, x, None if dim in ((), []) else dim, keepdim, nonempty=True)


def _reduce(ctx, x, dim, keepdim: bool, nonempty: bool):
    x = _expect_tensor(x, "reduction")
    if dim is None:
        if nonempty:
            _nonempty(ctx, x.spatial_sizes)
        return SymbolicTensor(())
    dims = {x.axis(d) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    if nonempty:
        _nonempty(ctx, [x.shape[a] for a in dims if a in x.spatial])
    geometry = dict(zip(x.spatial, x.geometry))
    shape, spatial, new_geometry = [], [], []
    for a, n in enumerate(x.shape):
        if a in dims and not keepdim:
            continue
        if a in geometry:
            spatial.append(len(shape))
            g = geometry[a]
            new_geometry.append(g if a not in dims or g is None else AxisGeometry(
                None, None, _adaptive_rf(g, n, 1), receptive.global_window(g.window, n)))
        shape.append(sympy.Integer(1) if a in dims else n)
    return SymbolicTensor(tuple(shape), tuple(spatial), tuple(new_geometry))
