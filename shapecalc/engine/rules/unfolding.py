"""Sliding blocks: ``Tensor.unfold``, ``F.unfold``/``F.fold`` (im2col and
col2im, ``nn.Unfold``/``nn.Fold``) and the power-average pools
(``nn.LPPool1d/2d/3d``, ``F.lp_pool1d/2d/3d``)."""

from __future__ import annotations

import sympy
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import as_expr, eq, floordiv, format_expr, ge
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _per_axis, _windowed_geometry
from shapecalc.engine.rules.metadata import _adaptive_params, _module_rank, _numbered, _window_params
from shapecalc.engine.rules.pooling import _average_pool
from shapecalc.engine.rules.registry import rule


def _positive(value, what: str) -> None:
    if not all(isinstance(v, int) and v > 0 for v in value):
        raise UnsupportedOpError(f"{what} {tuple(value)}: torch needs positive integers")


@rule("unfold")
def tensor_unfold(ctx, x, dimension, size, step):
    """``x.unfold(d, size, step)``: axis ``d`` becomes the window starts, a
    new last axis the window contents.  The starts keep a coordinate map
    (a window of ``size`` pixels, ``step`` apart), as a pool's outputs do."""
    x = _expect_tensor(x, "unfold")
    if not (isinstance(size, int) and isinstance(step, int)):
        raise UnsupportedOpError(f"unfold(size={size!r}, step={step!r}): only integer window sizes and steps")
    if step <= 0:
        ctx.require(sympy.false, f"step is {step} but must be > 0")
    if size < 0:
        ctx.require(sympy.false, f"size is {size} but must be >= 0")
    if x.ndim == 0:
        # a 0-d tensor unfolds as one of length 1
        ctx.require(ge(1, size), f"maximum size for tensor at dimension 0 is 1 but size is {size}")
        return SymbolicTensor((sympy.Integer(1),))
    axis = x.axis(dimension)
    n = x.shape[axis]
    ctx.require(ge(n, size), f"maximum size for tensor at dimension {axis} is {format_expr(n)} but size is {size}")
    starts = floordiv(n - size, step) + 1
    shape = [*x.shape[:axis], starts, *x.shape[axis + 1:], sympy.Integer(size)]
    geometry = [_windowed_geometry(g, size, step, 0, 1) if a == axis else g for a, g in zip(x.spatial, x.geometry)]
    return SymbolicTensor(tuple(shape), x.spatial, tuple(geometry))


def _blocks(ctx, sizes, kernel, stride, padding, dilation, described: str) -> list:
    """The number of sliding blocks per axis (im2col's output_height/width);
    torch refuses any under one."""
    blocks = [floordiv(n + 2 * p - d * (k - 1) - 1, s) + 1 for n, k, s, p, d in zip(sizes, kernel, stride, padding, dilation)]
    for b in blocks:
        ctx.require(ge(b, 1), f"{described}: the array of sliding blocks ({', '.join(format_expr(v) for v in blocks)}) "
                              "must be at least one along each axis")
    return blocks


def _window_arguments(kernel, dilation, padding, stride) -> tuple:
    kernel, dilation, padding, stride = (_per_axis(v, 2, name) for v, name in (
        (kernel, "kernel_size"), (dilation, "dilation"), (padding, "padding"), (stride, "stride")))
    _positive(kernel, "kernel_size"), _positive(dilation, "dilation"), _positive(stride, "stride")
    if not all(isinstance(p, int) and p >= 0 for p in padding):
        raise UnsupportedOpError(f"padding {padding}: torch needs non-negative integers")
    return kernel, dilation, padding, stride


def _nonempty_except_batch(ctx, x: SymbolicTensor, batched: bool, what: str) -> None:
    for size in x.shape[1 if batched else 0:]:
        ctx.require(ge(size, 1), f"{what} needs non-zero sizes except the batch (size {format_expr(size)})")


def _im2col(ctx, x, kernel, dilation, padding, stride):
    x = _expect_tensor(x, "unfold")
    kernel, dilation, padding, stride = _window_arguments(kernel, dilation, padding, stride)
    if x.ndim not in (3, 4):
        ctx.require(sympy.false, f"Expected 3D or 4D (batch mode) tensor for input, but got a {x.ndim}-D tensor")
    batched = x.ndim == 4
    _nonempty_except_batch(ctx, x, batched, "unfold (im2col)")
    blocks = _blocks(ctx, x.shape[-2:], kernel, stride, padding, dilation, "unfold")
    # the block axis runs over both spatial axes at once: no coordinate map, no spatial mark
    columns = (x.shape[-3] * kernel[0] * kernel[1], blocks[0] * blocks[1])
    return SymbolicTensor((x.shape[0], *columns) if batched else columns)


def _col2im(ctx, x, output_size, kernel, dilation, padding, stride):
    x = _expect_tensor(x, "fold")
    kernel, dilation, padding, stride = _window_arguments(kernel, dilation, padding, stride)
    output_size = tuple(as_expr(v) for v in _per_axis(output_size, 2, "output_size"))
    if x.ndim not in (2, 3):
        ctx.require(sympy.false, f"Expected 2D or 3D (batch mode) tensor for input, but got a {x.ndim}-D tensor")
    batched = x.ndim == 3
    _nonempty_except_batch(ctx, x, batched, "fold (col2im)")
    columns, length = x.shape[-2], x.shape[-1]
    window = kernel[0] * kernel[1]
    ctx.require(eq(floordiv(columns, window) * window, columns),
                f"Expected size of input's dimension {x.ndim - 2} to be divisible by the product of kernel_size, but "
                f"got input.size({x.ndim - 2})={format_expr(columns)} and kernel_size={kernel}.")
    blocks = _blocks(ctx, output_size, kernel, stride, padding, dilation, "fold")
    ctx.require(eq(length, blocks[0] * blocks[1]), f"fold: expected size of input's dimension {x.ndim - 1} to match "
                                                   f"the calculated number of sliding blocks "
                                                   f"{format_expr(blocks[0])} * {format_expr(blocks[1])}, but got "
                                                   f"{format_expr(length)}")
    # the image is summed back from columns: its axes are spatial, their map unknown
    shape = (floordiv(columns, window), *output_size)
    if batched:
        return SymbolicTensor((x.shape[0], *shape), (2, 3))
    return SymbolicTensor(shape, (1, 2))


def _fold_params(node, graph_module) -> str:
    # a fold's output size is shown as an adaptive pool's is, then its window
    return f"{_adaptive_params(node, graph_module)} {_window_params(node, graph_module)}"


@rule(F.unfold, params=_window_params, spatial_rank=2)
def functional_unfold(ctx, input, kernel_size, dilation=1, padding=0, stride=1):
    return _im2col(ctx, input, kernel_size, dilation, padding, stride)


@rule(nn.Unfold, params=_window_params, spatial_rank=2)
def unfold_module(ctx, x):
    m = ctx.module
    return _im2col(ctx, x, m.kernel_size, m.dilation, m.padding, m.stride)


@rule(F.fold, params=_fold_params, spatial_rank=2)
def functional_fold(ctx, input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    return _col2im(ctx, input, output_size, kernel_size, dilation, padding, stride)


@rule(nn.Fold, params=_fold_params, spatial_rank=2)
def fold_module(ctx, x):
    m = ctx.module
    return _col2im(ctx, x, m.output_size, m.kernel_size, m.dilation, m.padding, m.stride)


def _power_average_pool(ctx, x, nd: int, kernel, stride, ceil_mode):
    """F.lp_poolNd: avg_poolNd(x ** p, kernel, stride, padding 0, ceil_mode),
    then pointwise.  torch pools the last ``nd`` axes whichever of them carry
    a spatial mark (a flattened image pooled by lp_pool1d)."""
    x = _expect_tensor(x, "lp_pool")
    if x.ndim not in (nd + 1, nd + 2):
        ctx.require(sympy.false, f"lp_pool{nd}d expects a {nd + 1}-D or {nd + 2}-D input, got {x.ndim}-D")
    trailing = tuple(range(x.ndim - nd, x.ndim))
    marked = dict(zip(x.spatial, x.geometry))
    if set(x.spatial) - set(trailing):
        raise UnsupportedOpError(f"lp_pool{nd}d of a tensor with spatial axes {x.spatial} before its last {nd}")
    window = SymbolicTensor(x.shape, trailing, tuple(marked.get(a) for a in trailing))
    pooled = _average_pool(ctx, window, nd, kernel, stride if stride is not None else kernel, 0, ceil_mode)
    return SymbolicTensor(pooled.shape, x.spatial, tuple(g for a, g in zip(trailing, pooled.geometry) if a in marked))


@rule(nn.LPPool1d, nn.LPPool2d, nn.LPPool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def power_average_pooling(ctx, x):
    m = ctx.module
    return _power_average_pool(ctx, x, _module_rank(m), m.kernel_size, m.stride, m.ceil_mode)


def _functional_power_pool(nd: int):
    def functional_power_average_pooling(ctx, input, norm_type, kernel_size, stride=None, ceil_mode=False):
        return _power_average_pool(ctx, input, nd, kernel_size, stride, ceil_mode)
    return functional_power_average_pooling


for _rank, _function in ((1, F.lp_pool1d), (2, F.lp_pool2d), (3, F.lp_pool3d)):
    rule(_function, params=_window_params, spatial_rank=_numbered, keeps_channels=True)(_functional_power_pool(_rank))
