"""Resampling."""

from __future__ import annotations

from fractions import Fraction
import sympy
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.audits import receptive
from shapecalc.engine.symbolic import (as_expr, floor_of, format_expr, ge)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _nonempty, _on_last_axes, _per_axis
from shapecalc.engine.rules.merges import exact_in_double
from shapecalc.engine.rules.metadata import _interpolation_params, _interpolation_sampling
from shapecalc.engine.rules.pooling import _adaptive, _resampled_geometry
from shapecalc.engine.rules.registry import rule


_TAPS = {"nearest": 1, "nearest-exact": 1, "linear": 2, "bilinear": 2, "trilinear": 2, "bicubic": 4, "area": None}


def _exact_scale(factor) -> Fraction:
    """A scale factor as the exact rational PyTorch multiplies by.

    PyTorch computes ``floor(double(n) * scale)``.  That equals the exact
    rational floor only when the factor is a dyadic rational (like 2, 0.5,
    1.5): other factors (0.1, 1/3) round in double arithmetic, so a closed
    form would be wrong for some sizes.  Those are refused, not guessed."""
    exact = Fraction(float(factor))
    if exact <= 0:
        raise UnsupportedOpError(f"scale_factor must be positive, got {factor}")
    # Every double is dyadic (0.1 is 3602879701896397/2**55): what keeps
    # n * factor exact is a short one, like 0.5, 0.75 or 1.5.
    if not exact_in_double(float(factor)):
        raise UnsupportedOpError(
            f"scale_factor {factor} is not a dyadic rational, so its sizes depend on float rounding; use size= or a factor like 0.5, 2, 1.5")
    return exact


def _interpolate(ctx, x, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None, antialias=False):
    x = _expect_tensor(x, "interpolate")
    nd = len(x.spatial)
    if (size is None) == (scale_factor is None):
        raise UnsupportedOpError("interpolate needs exactly one of size and scale_factor")
    _nonempty(ctx, x.spatial_sizes)
    if size is not None:
        targets = [as_expr(s) for s in _per_axis(list(size) if isinstance(size, (list, tuple)) else size, nd, "size")]
        ratios = [None] * nd
    else:
        factors = [_exact_scale(f) for f in _per_axis(scale_factor, nd, "scale_factor")]
        targets = [floor_of(n * sympy.Rational(f.numerator, f.denominator)) for n, f in zip(x.spatial_sizes, factors)]
        # Without recompute_scale_factor PyTorch samples with 1/scale_factor,
        # not with in/out: the ratio is the factor itself.
        ratios = [None if recompute_scale_factor else sympy.Rational(f.numerator, f.denominator) for f in factors]
    taps = _TAPS.get(mode, 2)
    geometry = []
    for n, out, g, ratio in zip(x.spatial_sizes, targets, x.geometry, ratios):
        if mode == "area":
            # area is adaptive average pooling, which allows an empty output
            ctx.require(ge(out, 0), f"interpolate output {format_expr(out)} must not be negative")
        else:
            ctx.require(ge(out, 1), f"interpolate output {format_expr(out)} must be positive")
        if mode == "area":
            geometry.append(_adaptive(ctx, SymbolicTensor((n,), (0,), (g,)), 1, out).geometry[0])
        else:
            window = None if g is None else receptive.sampled_window(
                g.window, mode, bool(align_corners), n, out, None if ratio is None else 1 / ratio)
            geometry.append(_resampled_geometry(g, n, out, align_corners=bool(align_corners), ratio=ratio, taps=taps or 2,
                                                window=window))
    return x.with_spatial(targets, geometry)


@rule(F.interpolate, F.upsample, params=_interpolation_params, resample=_interpolation_sampling, keeps_channels=True)
def interpolate(ctx, x, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None, antialias=False):
    return _on_input_axes(ctx, x, mode, lambda t: _interpolate(ctx, t, size, scale_factor, mode, align_corners,
                                                               recompute_scale_factor, antialias))


#: the one input rank each linear mode takes (torch: "Got 4D input, but linear mode needs 3D input")
_MODE_RANKS = {"linear": 3, "bilinear": 4, "bicubic": 4, "trilinear": 5}


def _on_input_axes(ctx, x, mode, compute):
    """torch resamples every axis after batch and channels of a 3-, 4- or
    5-D input, whichever of them shapecalc marked spatial (an interpolate of
    a flattened image resamples the flattened axis)."""
    x = _expect_tensor(x, "interpolate")
    wanted = _MODE_RANKS.get(mode)
    ctx.require(sympy.sympify(x.ndim in (3, 4, 5) and wanted in (None, x.ndim)),
                f"{mode} interpolation of a {x.ndim}-D input (it takes "
                f"{f'{wanted}-D' if wanted else '3-D to 5-D'} inputs)")
    return _on_last_axes(ctx, x, x.ndim - 2, "interpolate", compute)


@rule(nn.Upsample, params=_interpolation_params, resample=_interpolation_sampling, keeps_channels=True)
def upsample(ctx, x):
    m = ctx.module
    return _on_input_axes(ctx, x, m.mode, lambda t: _interpolate(ctx, t, m.size, m.scale_factor, m.mode, m.align_corners,
                                                                 getattr(m, "recompute_scale_factor", None)))
