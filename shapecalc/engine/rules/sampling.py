"""Sampling at given locations: ``F.grid_sample``.  The output's spatial
axes are the grid's; where they sample the input depends on the grid's
values, so they keep the grid's spatial marks but no coordinate map."""

from __future__ import annotations

import sympy
import torch.nn.functional as F
from shapecalc.engine.symbolic import eq, format_expr, ge
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor
from shapecalc.engine.rules.registry import rule


def _sizes(x: SymbolicTensor) -> str:
    return f"[{', '.join(format_expr(s) for s in x.shape)}]"


@rule(F.grid_sample)
def grid_sample(ctx, input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
    """aten's check_grid_sampler_common / _2d / _3d, then ``(N, C, *grid.shape[1:-1])``."""
    x, grid = _expect_tensor(input, "grid_sample"), _expect_tensor(grid, "grid_sample grid")
    if mode not in ("bilinear", "nearest", "bicubic"):
        ctx.require(sympy.false, f"nn.functional.grid_sample(): expected mode to be 'bilinear', 'nearest' or "
                                 f"'bicubic', but got: '{mode}'")
    if padding_mode not in ("zeros", "border", "reflection"):
        ctx.require(sympy.false, f"nn.functional.grid_sample(): expected padding_mode to be 'zeros', 'border', or "
                                 f"'reflection', but got: '{padding_mode}'")
    if x.ndim not in (4, 5) or grid.ndim != x.ndim:
        ctx.require(sympy.false, f"grid_sampler(): expected 4D or 5D input and grid with same number of dimensions, "
                                 f"but got input with sizes {_sizes(x)} and grid with sizes {_sizes(grid)}")
    ctx.require(eq(x.shape[0], grid.shape[0]), f"grid_sampler(): expected grid and input to have same batch size, "
                                               f"but got input with sizes {_sizes(x)} and grid with sizes {_sizes(grid)}")
    ctx.require(eq(grid.shape[-1], x.ndim - 2), f"grid_sampler(): expected grid to have size {x.ndim - 2} in last "
                                                f"dimension, but got grid with sizes {_sizes(grid)}")
    for axis in range(2, x.ndim):
        ctx.require(ge(x.shape[axis], 1), f"grid_sampler(): expected input to have non-empty spatial dimensions, but "
                                          f"input has sizes {_sizes(x)} with dimension {axis} being empty")
    if mode == "bicubic" and x.ndim != 4:
        ctx.require(sympy.false, "grid_sampler(): bicubic interpolation only supports 4D input")
    spatial = tuple(a + 1 for a in grid.spatial if 1 <= a < grid.ndim - 1)
    return SymbolicTensor((x.shape[0], x.shape[1], *grid.shape[1:-1]), spatial)
