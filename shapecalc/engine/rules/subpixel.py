"""Sub-pixel rearrangements."""

from __future__ import annotations

import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from shapecalc.engine.symbolic import (eq, floordiv, format_expr)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _windowed_geometry
from shapecalc.engine.rules.convolution import _transposed_axis
from shapecalc.engine.rules.registry import rule


def _pixel_rearranged(ctx, x, factor: int, upscale: bool):
    """pixel_shuffle(r): (*, C*r*r, H, W) -> (*, C, H*r, W*r); pixel_unshuffle
    the inverse.  A shuffle is a transposed conv with kernel = stride = r
    (ESPCN's sub-pixel conv), an unshuffle a conv with kernel = stride = r:
    their coordinate maps and fields are those."""
    name = "pixel_shuffle" if upscale else "pixel_unshuffle"
    x = _expect_tensor(x, name)
    if x.ndim < 3:
        ctx.require(sympy.false, f"{name} needs at least 3 dimensions, got {x.ndim}")
    factor = int(factor)
    if factor <= 0:
        ctx.require(sympy.false, f"{name} factor must be positive, got {factor}")
    c, h, w = x.shape[-3:]
    if upscale:
        # "pixel_shuffle expects its input's 'channel' dimension to be divisible by the square of upscale_factor"
        ctx.require(eq(c - factor * factor * floordiv(c, factor * factor), 0),
                    f"pixel_shuffle({factor}) needs channels divisible by {factor * factor}, got {format_expr(c)}")
        sizes = (floordiv(c, factor * factor), h * factor, w * factor)
    else:
        for what, n in (("height", h), ("width", w)):
            # "pixel_unshuffle expects height to be divisible by downscale_factor"
            ctx.require(eq(n - factor * floordiv(n, factor), 0),
                        f"pixel_unshuffle({factor}) needs the {what} divisible by {factor}, got {format_expr(n)}")
        sizes = (c * factor * factor, floordiv(h, factor), floordiv(w, factor))
    shape = x.shape[:-3] + sizes
    last_two = (x.ndim - 2, x.ndim - 1)
    geometry = []
    for a, g in zip(x.spatial, x.geometry):
        if a not in last_two:
            geometry.append(None if a == x.ndim - 3 else g)  # a spatial "channel" axis mixes phases
        elif upscale:
            geometry.append(_transposed_axis(g, factor, factor, 0, 1))
        else:
            geometry.append(_windowed_geometry(g, factor, factor, 0, 1))
    return SymbolicTensor(shape, x.spatial, tuple(geometry))


@rule(nn.PixelShuffle)
def pixel_shuffle_module(ctx, x):
    return _pixel_rearranged(ctx, x, ctx.module.upscale_factor, True)


@rule(nn.PixelUnshuffle)
def pixel_unshuffle_module(ctx, x):
    return _pixel_rearranged(ctx, x, ctx.module.downscale_factor, False)


@rule(F.pixel_shuffle, torch.pixel_shuffle)
def pixel_shuffle(ctx, x, upscale_factor):
    return _pixel_rearranged(ctx, x, upscale_factor, True)


@rule(F.pixel_unshuffle, torch.pixel_unshuffle)
def pixel_unshuffle(ctx, x, downscale_factor):
    return _pixel_rearranged(ctx, x, downscale_factor, False)
