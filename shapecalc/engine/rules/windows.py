"""torchvision's Swin helpers, keyed by name (torchvision fx-wraps them, so a
traced Swin calls them as functions): the relative position bias gather, the
shifted window attention and the patch-merging pad.  Channels-last tensors:
``(B, H, W, C)``."""

from __future__ import annotations

import sympy
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import ceildiv, eq, floordiv, format_expr
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _windowed_geometry
from shapecalc.engine.rules.registry import QualifiedName, rule

_SWIN = "torchvision.models.swin_transformer"


def _shape_text(shape) -> str:
    return f"({', '.join(format_expr(s) for s in shape)})"


@rule(QualifiedName(f"{_SWIN}._get_relative_position_bias"))
def relative_position_bias(ctx, relative_position_bias_table, relative_position_index, window_size):
    """``table[index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)`` with
    ``N = window_size[0] * window_size[1]``: ``(1, heads, N, N)``."""
    table = _expect_tensor(relative_position_bias_table, "_get_relative_position_bias table")
    index = _expect_tensor(relative_position_index, "_get_relative_position_bias index")
    if index.dtype_kind != "integer":
        raise UnsupportedOpError("_get_relative_position_bias with an index not known to hold integers")
    if table.ndim == 0:
        ctx.require(sympy.false, "invalid index of a 0-dim tensor")
    n = sympy.Integer(window_size[0] * window_size[1])
    count = sympy.Mul(*index.shape) * sympy.Mul(*table.shape[1:])
    ctx.require(eq(floordiv(count, n * n) * n * n, count),
                f"view({n}, {n}, -1) of {format_expr(count)} gathered values")
    ctx.note("_get_relative_position_bias: the index values are not checked against the table's rows")
    return SymbolicTensor((sympy.Integer(1), floordiv(count, n * n), n, n))


def _require_shape(ctx, tensor, wanted, what: str) -> None:
    tensor = _expect_tensor(tensor, what)
    if tensor.ndim != len(wanted):
        ctx.require(sympy.false, f"{what} of shape {_shape_text(tensor.shape)}, expected {_shape_text(wanted)}")
    ctx.require(sympy.And(*[eq(a, b) for a, b in zip(tensor.shape, wanted)]),
                f"{what} of shape {_shape_text(tensor.shape)}, expected {_shape_text(wanted)}")


@rule(QualifiedName(f"{_SWIN}.shifted_window_attention"))
def shifted_window_attention(ctx, input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                             shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None,
                             logit_scale=None, training=True):
    """Attention inside windows of the input padded to a multiple of the
    window, cropped back: the input's shape.  Every pixel mixes its window
    (shifted, rolled): the spatial axes keep their marks, not their maps."""
    x = _expect_tensor(input, "shifted_window_attention")
    if x.ndim != 4:
        ctx.require(sympy.false, f"shifted_window_attention expects (B, H, W, C), got a {x.ndim}-D tensor")
    batch, height, width, channels = x.shape
    heads = num_heads
    # qkv.reshape(..., 3, heads, C // heads) and the (..., C) reshape after attention
    ctx.require(eq(floordiv(channels, heads) * heads, channels),
                f"{format_expr(channels)} channels are not divisible by {heads} heads")
    _require_shape(ctx, qkv_weight, (3 * channels, channels), "qkv_weight")
    _require_shape(ctx, proj_weight, (channels, channels), "proj_weight")
    if qkv_bias is not None:
        _require_shape(ctx, qkv_bias, (3 * channels,), "qkv_bias")
    if proj_bias is not None:
        _require_shape(ctx, proj_bias, (channels,), "proj_bias")
    bias = _expect_tensor(relative_position_bias, "relative_position_bias")
    n = sympy.Integer(window_size[0] * window_size[1])
    windows = floordiv(height + window_size[0] - 1, window_size[0]) * floordiv(width + window_size[1] - 1, window_size[1])
    scores = (batch * windows, sympy.Integer(heads), n, n)
    if bias.ndim > 4:
        ctx.require(sympy.false, f"relative_position_bias of shape {_shape_text(bias.shape)} for scores "
                                 f"{_shape_text(scores)}")
    for b, s in zip(reversed(bias.shape), reversed(scores)):
        # a bias that grew the scores would break the reshapes that follow
        ctx.require(sympy.Or(eq(b, s), eq(b, 1)), f"relative_position_bias of shape {_shape_text(bias.shape)} does "
                                                  f"not broadcast to the scores {_shape_text(scores)}")
    return SymbolicTensor(x.shape, x.spatial, (None,) * len(x.spatial))


@rule(QualifiedName(f"{_SWIN}._patch_merging_pad"))
def patch_merging_pad(ctx, x):
    """Pad H and W to even, then the four 2x2 phases side by side in the
    channels: ``(..., ceil(H/2), ceil(W/2), 4C)``.  Index ``i`` holds pixels
    ``2i`` and ``2i + 1``: a 2-wide window, stride 2."""
    x = _expect_tensor(x, "_patch_merging_pad")
    if x.ndim < 3:
        ctx.require(sympy.false, f"_patch_merging_pad expects (..., H, W, C), got a {x.ndim}-D tensor")
    height_axis, width_axis = x.ndim - 3, x.ndim - 2
    shape = list(x.shape)
    shape[height_axis], shape[width_axis] = ceildiv(x.shape[height_axis], 2), ceildiv(x.shape[width_axis], 2)
    shape[-1] = 4 * x.shape[-1]
    geometry = [_windowed_geometry(g, 2, 2, 0, 1) if a in (height_axis, width_axis) else None
                for a, g in zip(x.spatial, x.geometry)]
    return SymbolicTensor(tuple(shape), x.spatial, tuple(geometry))
