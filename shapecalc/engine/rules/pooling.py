"""Pooling."""

from __future__ import annotations

import re
from typing import Optional
import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.audits import receptive
from shapecalc.engine.symbolic import (as_expr, eq, floordiv, format_expr, ge, gt, is_concrete, lt)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.common import _axis_geometry, _on_last_axes, _expect_tensor, _nonempty, _per_axis, _spatial_axes, _spatial_count, _windowed_geometry
from shapecalc.engine.rules.convolution import _transposed_axis
from shapecalc.engine.rules.metadata import _ADAPTIVE_AVERAGE_MODULES, _adaptive_params, _adaptive_sampling, _module_rank, _numbered, _window_params
from shapecalc.engine.rules.registry import rule


def pooled_size(n, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool):
    """PyTorch's pooling_output_shape as one floor division.

    With ceil_mode, PyTorch rounds up and then drops a last window that would
    start inside the right padding: ``(out-1)*s >= n + p``.  Both steps
    together are ``floor((n + 2p - d(k-1) - 1 + min(d(k-1) - p, s - 1))/s) + 1``:
    the drop happens exactly when rounding up went past ``d(k-1) - p``.
    """
    reach = n + 2 * padding - dilation * (kernel - 1) - 1
    extra = min(dilation * (kernel - 1) - padding, stride - 1) if ceil_mode else 0
    return floordiv(reach + extra + stride, stride), reach + extra


def _pool(ctx, x: SymbolicTensor, nd: int, kernel, stride, padding, dilation, ceil_mode: bool):
    x = _expect_tensor(x, "pool")
    _spatial_count(x, nd)
    kernel = _per_axis(kernel, nd, "kernel_size")
    stride = _per_axis(stride if stride not in (None, [], ()) else kernel, nd, "stride")
    padding = _per_axis(padding, nd, "padding")
    dilation = _per_axis(dilation, nd, "dilation")
    for k, p in zip(kernel, padding):
        # PyTorch: "pad should be at most half of kernel size" (the kernel, not the dilated window)
        ctx.require(ge(k // 2, p), f"padding {p} is more than half the kernel size {k}")
    _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, k, s, p, d in zip(x.spatial_sizes, x.geometry, kernel, stride, padding, dilation):
        size, numerator = pooled_size(n, k, s, p, d, ceil_mode)
        ctx.require(ge(numerator, 0), f"pooling output {format_expr(size)} must be positive")
        sizes.append(size)
        geometry.append(_windowed_geometry(g, k, s, p, d))
    return x.with_spatial(sizes, geometry)


def _key_rank(ctx) -> int:
    """The spatial rank in the name of the function that was called
    (``max_pool1d``, ``max_pool2d_with_indices``, ``avg_pool3d``)."""
    found = re.search(r"([123])d(?:_|$)", getattr(ctx.node.target, "__name__", ""))
    if found is None:
        raise UnsupportedOpError(f"{ctx.node.target!r}: no spatial rank in its name")
    return int(found.group(1))


def _with_indices(values: SymbolicTensor, return_indices: bool):
    """``(values, indices)`` where torch returns both: the indices have the
    values' shape (and their positions, for an unpool to invert)."""
    return (values, values) if return_indices else values


@rule(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def max_pooling(ctx, x):
    m = ctx.module
    return _on_last_axes(ctx, x, _module_rank(m), type(m).__name__, lambda t: _with_indices(
        _pool(ctx, t, _module_rank(m), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), m.return_indices))


@rule(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def average_pooling(ctx, x):
    m = ctx.module
    nd = _module_rank(m)
    return _on_last_axes(ctx, x, nd, type(m).__name__,
                         lambda t: _average_pool(ctx, t, nd, m.kernel_size, m.stride, m.padding, m.ceil_mode))


def _average_pool(ctx, x, nd: int, kernel, stride, padding, ceil_mode: bool):
    x = _expect_tensor(x, "avg_pool")
    if nd == 3:
        # avg_pool3d alone checks the *unpadded* input against the kernel:
        # "input image (T: 2 H: 2 W: 2) smaller than kernel size"
        for n, k in zip(x.spatial_sizes, _per_axis(kernel, nd, "kernel_size")):
            ctx.require(ge(n, k), f"avg_pool3d needs an input of at least the kernel size {k} (size {format_expr(n)})")
    return _pool(ctx, x, nd, kernel, stride, padding, 1, ceil_mode)


@rule(F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, params=_window_params,
      spatial_rank=_numbered, keeps_channels=True)
def functional_max_pooling(ctx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    nd = _key_rank(ctx)
    return _on_last_axes(ctx, x, nd, f"max_pool{nd}d", lambda t: _with_indices(
        _pool(ctx, t, nd, kernel_size, stride, padding, dilation, ceil_mode), return_indices))


# F.max_pool2d(..., return_indices=True) is traced as these; they return
# (values, indices) whatever return_indices says.
@rule(F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices, params=_window_params,
      spatial_rank=_numbered, keeps_channels=True)
def max_pooling_with_indices(ctx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    nd = _key_rank(ctx)
    return _on_last_axes(ctx, x, nd, f"max_pool{nd}d", lambda t: _with_indices(
        _pool(ctx, t, nd, kernel_size, stride, padding, dilation, ceil_mode), True))


@rule(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def functional_average_pooling(ctx, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    nd = _key_rank(ctx)
    return _on_last_axes(ctx, x, nd, f"avg_pool{nd}d",
                         lambda t: _average_pool(ctx, t, nd, kernel_size, stride, padding, ceil_mode))


def _adaptive_rf(g: Optional[AxisGeometry], n, out):
    """Widest adaptive-pool cell, ``[floor(i*n/o), ceil((i+1)*n/o))``, as rf."""
    if g is None or g.rf is None or g.stride is None:
        return None
    out = as_expr(out)
    if out == 1:
        return g.rf + (n - 1) * g.stride
    if is_concrete(n):
        n_, o_ = int(n), int(out)
        # an empty output (area interpolation to size 0) has no cells
        widest = max((-(-(i + 1) * n_ // o_) - (i * n_) // o_ for i in range(o_)), default=None)
        return None if widest is None else g.rf + (widest - 1) * g.stride
    return None


def _resampled_geometry(g: Optional[AxisGeometry], n, out, *, align_corners: bool, ratio=None, taps: int = 2,
                        window=None):
    """Where the pixels of a resampled axis sample their source: the affine
    map of PyTorch's source index (exact for the linear modes; for nearest
    and adaptive cells the grid the staircase follows).  ``window`` is the
    receptive field the caller worked out for the mode."""
    if g is None:
        return None
    rf = None if g.rf is None or g.stride is None else g.rf + (taps - 1) * g.stride
    if g.position_free:
        return g
    n, out = as_expr(n), as_expr(out)
    if align_corners:
        if n == 1 or out == 1:
            # every output reads source 0 (PyTorch's scale is 0 for out == 1)
            return AxisGeometry(None, None, rf, receptive.at_index(g.window, 0))
        factor = (out - 1) / (n - 1)
        return _axis_geometry(g.scale * factor, g.shift * factor, rf, window)
    factor = as_expr(ratio) if ratio is not None else out / n
    return _axis_geometry(g.scale * factor, (g.shift + sympy.Rational(1, 2)) * factor - sympy.Rational(1, 2), rf, window)


def _adaptive(ctx, x: SymbolicTensor, nd: int, output_size, average: bool = False):
    x = _expect_tensor(x, "adaptive pool")
    _spatial_count(x, nd)
    targets = _per_axis(output_size, nd, "output_size")
    if not (average and all(t is not None and as_expr(t) == 1 for t in targets)):
        # averaging down to one value per axis is a mean, which PyTorch also
        # takes over an empty input; every other adaptive pool refuses one
        _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, target in zip(x.spatial_sizes, x.geometry, targets):
        out = n if target is None else as_expr(target)
        sizes.append(out)
        if out == 1:
            geometry.append(None if g is None else AxisGeometry(None, None, _adaptive_rf(g, n, 1),
                                                                receptive.global_window(g.window, n)))
        else:
            resampled = _resampled_geometry(g, n, out, align_corners=False, taps=1)
            geometry.append(resampled if resampled is None or resampled.position_free else _axis_geometry(
                resampled.scale, resampled.shift, _adaptive_rf(g, n, out), receptive.adaptive_window(g.window, n, out)))
    return x.with_spatial(sizes, geometry)


_ADAPTIVE = dict(params=_adaptive_params, resample=_adaptive_sampling, spatial_rank=_numbered, keeps_channels=True)


@rule(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
      nn.AdaptiveMaxPool3d, **_ADAPTIVE)
def adaptive_pooling(ctx, x):
    m = ctx.module
    nd, average = _module_rank(m), isinstance(m, _ADAPTIVE_AVERAGE_MODULES)
    return _on_last_axes(ctx, x, nd, type(m).__name__, lambda t: _with_indices(
        _adaptive(ctx, t, nd, m.output_size, average=average), getattr(m, "return_indices", False)))


@rule(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, **_ADAPTIVE)
def functional_adaptive_pooling(ctx, x, output_size, return_indices=False):
    nd = _key_rank(ctx)
    return _on_last_axes(ctx, x, nd, f"adaptive_max_pool{nd}d",
                         lambda t: _with_indices(_adaptive(ctx, t, nd, output_size), return_indices))


@rule(F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices,
      **_ADAPTIVE)
def adaptive_pooling_with_indices(ctx, x, output_size, return_indices=False):
    nd = _key_rank(ctx)
    return _on_last_axes(ctx, x, nd, f"adaptive_max_pool{nd}d",
                         lambda t: _with_indices(_adaptive(ctx, t, nd, output_size), True))


def _unpool(ctx, x, indices, nd: int, kernel, stride, padding, output_size):
    x, indices = _expect_tensor(x, "max_unpool"), _expect_tensor(indices, "max_unpool indices")
    _spatial_count(x, nd)
    kernel = _per_axis(kernel, nd, "kernel_size")
    stride = _per_axis(stride if stride not in (None, [], ()) else kernel, nd, "stride")
    padding = _per_axis(padding, nd, "padding")
    if indices.ndim != x.ndim:
        ctx.require(sympy.false, f"indices have {indices.ndim} dimensions, the input {x.ndim}")
    for a, b in zip(x.shape, indices.shape):
        ctx.require(eq(a, b), f"indices of shape {tuple(format_expr(v) for v in indices.shape)} for an input of shape "
                              f"{tuple(format_expr(v) for v in x.shape)}")
    # "Expected input to have non-zero size for non-batch dimensions"
    _nonempty(ctx, x.shape[1:])
    defaults = [(n - 1) * s + k - 2 * p for n, k, s, p in zip(x.spatial_sizes, kernel, stride, padding)]
    if output_size is None:
        sizes = defaults
        ctx.note("max_unpool without output_size: where the pooled input was larger than the default output, "
                 "some indices may point outside it (torch then raises 'Found an invalid max index', depending "
                 "on the values); pass output_size=<the pooled input's size>")
    else:
        sizes = [as_expr(v) for v in output_size]
        if len(sizes) == nd + 2:
            sizes = sizes[2:]
        if len(sizes) != nd:
            ctx.require(sympy.false, f"output_size {tuple(output_size)} has {len(sizes)} entries for {_spatial_axes(nd)}")
        for size, default, s in zip(sizes, defaults, stride):
            # F._unpool_output_size: within one stride of the default, exclusive
            ctx.require(sympy.And(gt(size, default - s), lt(size, default + s)),
                        f"output_size {format_expr(size)} must lie strictly between {format_expr(default - s)} and "
                        f"{format_expr(default + s)}")
    for size in sizes:
        # an empty output has no place for the (non-empty) input's indices
        ctx.require(ge(size, 1), f"max_unpool output {format_expr(size)} must be positive")
    geometry = [_transposed_axis(g, k, s, p, 1) for g, k, s, p in zip(x.geometry, kernel, stride, padding)]
    return x.with_spatial(sizes, geometry)


@rule(nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def max_unpooling(ctx, x, indices, output_size=None):
    m = ctx.module
    return _unpool(ctx, x, indices, _module_rank(m), m.kernel_size, m.stride, m.padding, output_size)


@rule(F.max_unpool1d, F.max_unpool2d, F.max_unpool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def functional_max_unpooling(ctx, x, indices, kernel_size, stride=None, padding=0, output_size=None):
    # the rank is the function's (max_unpool1d), not the count of marked axes
    return _unpool(ctx, x, indices, _key_rank(ctx), kernel_size, stride, padding, output_size)


@rule(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, **_ADAPTIVE)
def functional_adaptive_average_pooling(ctx, x, output_size):
    nd = _key_rank(ctx)
    return _on_last_axes(ctx, x, nd, f"adaptive_avg_pool{nd}d",
                         lambda t: _adaptive(ctx, t, nd, output_size, average=True))
