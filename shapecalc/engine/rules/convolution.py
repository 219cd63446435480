"""Convolutions."""

from __future__ import annotations

import math
from typing import Optional
import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.audits import receptive
from shapecalc.engine.symbolic import (floordiv, format_expr, ge, gt)
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.engine.rules.common import _axis_geometry, _channels, _expect_tensor, _nonempty, _per_axis, _spatial_count, _windowed_geometry
from shapecalc.engine.rules.metadata import _functional_conv_channels, _functional_conv_rank, _kernel_rank, _window_params
from shapecalc.engine.rules.registry import rule


def _conv(ctx, x: SymbolicTensor, nd: int, out_channels: int, kernel, stride, padding, dilation, padding_mode="zeros"):
    _spatial_count(x, nd)
    kernel, stride, dilation = (_per_axis(v, nd, n) for v, n in ((kernel, "kernel_size"), (stride, "stride"), (dilation, "dilation")))
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * nd
        elif padding == "same":
            # PyTorch puts the odd extra pixel of 'same' padding on the right.
            pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
        else:
            raise UnsupportedOpError(f"padding={padding!r}")
    else:
        pads = [(p, p) for p in _per_axis(padding, nd, "padding")]
    _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, k, s, (left, right), d in zip(x.spatial_sizes, x.geometry, kernel, stride, pads, dilation):
        if padding_mode == "reflect":
            ctx.require(gt(n, max(left, right)), f"reflect padding {max(left, right)} must be smaller than the input ({format_expr(n)})")
        elif padding_mode == "circular":
            ctx.require(ge(n, max(left, right)), f"circular padding {max(left, right)} must not exceed the input ({format_expr(n)})")
        reach = n + left + right - d * (k - 1) - 1
        ctx.require(ge(reach, 0), f"kernel {d * (k - 1) + 1} is larger than the padded input ({format_expr(n + left + right)})")
        # floor(r/s) + 1 written as floor((r + s)/s): one floor, the form people write.
        sizes.append(floordiv(reach + s, s))
        geometry.append(_windowed_geometry(g, k, s, left, d))
    shape = list(x.shape)
    if x.ndim == nd + 2:
        shape[1] = sympy.Integer(out_channels)
    else:
        shape[0] = sympy.Integer(out_channels)
    return SymbolicTensor(tuple(shape), x.spatial, ()).with_spatial(sizes, geometry)


@rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, params=_window_params, spatial_rank=_kernel_rank, channels="in_channels")
def convolution(ctx, x, *args, **kwargs):
    m = ctx.module
    x = _expect_tensor(x, type(m).__name__)
    nd = len(m.kernel_size)
    _channels(ctx, x, m.in_channels, type(m).__name__)
    return _conv(ctx, x, nd, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode)


@rule(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, params=_window_params,
      spatial_rank=_functional_conv_rank, channels=_functional_conv_channels)
def functional_convolution(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x, weight = _expect_tensor(x, "conv"), _expect_tensor(weight, "conv weight")
    nd = weight.ndim - 2
    kernel = tuple(int(k) for k in weight.shape[2:])
    _channels(ctx, x, int(weight.shape[1]) * int(groups), "conv")
    return _conv(ctx, x, nd, int(weight.shape[0]), kernel, stride, padding, dilation)


def _transposed_axis(g: Optional[AxisGeometry], k: int, s: int, p: int, d: int):
    if g is None:
        return None
    if g.position_free:
        return g
    # An output index gathers the taps j with (u + p - j*d) divisible by s;
    # at most ceil(k / (s/gcd(d, s))) of them, d/gcd(d, s) input steps apart.
    step = s // math.gcd(d, s)
    taps = -(-k // step)
    rf = None if g.rf is None else g.rf + (taps - 1) * sympy.Rational(d, math.gcd(d, s)) * g.stride
    return _axis_geometry(g.scale * s, g.shift * s + sympy.Rational(d * (k - 1), 2) - p, rf,
                          receptive.transposed_window(g.window, k, s, p, d))


@rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, params=_window_params, spatial_rank=_kernel_rank,
      channels="in_channels")
def transposed_convolution(ctx, x, output_size=None):
    m = ctx.module
    if output_size is not None:
        raise UnsupportedOpError("ConvTranspose called with output_size= (pass output_padding instead)")
    x = _expect_tensor(x, type(m).__name__)
    _channels(ctx, x, m.in_channels, type(m).__name__)
    return _transposed(ctx, x, len(m.kernel_size), m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                       m.output_padding)


def _transposed(ctx, x: SymbolicTensor, nd: int, out_channels: int, kernel, stride, padding, dilation, output_padding):
    """A transposed convolution's sizes and geometry (the module rule and aten.convolution)."""
    _spatial_count(x, nd)
    kernel, stride, padding, dilation, output_padding = (
        _per_axis(v, nd, n) for v, n in ((kernel, "kernel_size"), (stride, "stride"), (padding, "padding"),
                                         (dilation, "dilation"), (output_padding, "output_padding")))
    _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, k, s, p, d, op in zip(x.spatial_sizes, x.geometry, kernel, stride, padding, dilation, output_padding):
        size = (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        ctx.require(ge(size, 1), f"output size {format_expr(size)} must be positive")
        sizes.append(size)
        geometry.append(_transposed_axis(g, k, s, p, d))
    shape = list(x.shape)
    shape[1 if x.ndim == nd + 2 else 0] = sympy.Integer(out_channels)
    return SymbolicTensor(tuple(shape), x.spatial, ()).with_spatial(sizes, geometry)
