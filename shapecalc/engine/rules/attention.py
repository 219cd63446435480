"""Attention: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``.

Both are matrix products (scores ``q @ k.mT``, then ``softmax(scores) @ v``):
a surviving sequence axis keeps its spatial mark but no coordinate map, as
for ``matmul`` (every output row mixes every key row)."""

from __future__ import annotations

import sympy
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import eq, floordiv, format_expr
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor
from shapecalc.engine.rules.matrix import _matrix_product
from shapecalc.engine.rules.registry import rule
from shapecalc.engine.rules.reshaping import _moved


def _shape_text(x: SymbolicTensor) -> str:
    return f"({', '.join(format_expr(s) for s in x.shape)})"


def _transposed(x: SymbolicTensor) -> SymbolicTensor:
    return _moved(x, [*range(x.ndim - 2), x.ndim - 1, x.ndim - 2])


def _divides(ctx, part, whole, message: str) -> None:
    ctx.require(eq(floordiv(whole, part) * part, whole), message)


def _mask_fits(ctx, mask, scores: SymbolicTensor, what: str) -> None:
    """The mask is added to the scores in place: it must broadcast to their
    shape without growing it (torch: "output with shape ... doesn't match the
    broadcast shape")."""
    if mask is None:
        return
    if not isinstance(mask, SymbolicTensor):
        raise UnsupportedOpError(f"{what} of type {type(mask).__name__}")
    if mask.ndim > scores.ndim:
        ctx.require(sympy.false, f"{what} of shape {_shape_text(mask)} has more axes than the scores {_shape_text(scores)}")
    for m, s in zip(reversed(mask.shape), reversed(scores.shape)):
        ctx.require(sympy.Or(eq(m, s), eq(m, 1)), f"{what} of shape {_shape_text(mask)} does not broadcast to the "
                                                  f"scores' shape {_shape_text(scores)}")


@rule(F.scaled_dot_product_attention)
def scaled_dot_product_attention(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    q, k, v = (_expect_tensor(t, "scaled_dot_product_attention") for t in (query, key, value))
    if min(q.ndim, k.ndim, v.ndim) < 2:
        ctx.require(sympy.false, "Expected query, key, and value to all be at least 2 dimensional, but got "
                                 f"query.dim: {q.ndim} key.dim: {k.ndim} and value.dim: {v.ndim} instead.")
    if is_causal and attn_mask is not None:
        ctx.require(sympy.false, "_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    if enable_gqa and min(q.ndim, k.ndim, v.ndim) >= 3:
        # key and value heads are repeated up to the query's (repeat_interleave)
        heads = q.shape[-3]
        for t, name in ((k, "key"), (v, "value")):
            _divides(ctx, t.shape[-3], heads, f"Number of heads in {name} ({format_expr(t.shape[-3])}) must divide "
                                              f"the number of heads in query ({format_expr(heads)})")
        k, v = k.with_dim(k.ndim - 3, heads), v.with_dim(v.ndim - 3, heads)
    scores = _matrix_product(ctx, q, _transposed(k), "scaled_dot_product_attention (query @ key.mT)", broadcast=True)
    _mask_fits(ctx, attn_mask, scores, "attn_mask")
    return _matrix_product(ctx, scores, v, "scaled_dot_product_attention (weights @ value)", broadcast=True)


def _attention_params(node, graph_module) -> str:
    m = graph_module.get_submodule(node.target)
    return f"{m.embed_dim}, heads={m.num_heads}"


@rule(nn.MultiheadAttention, params=_attention_params)
def multihead_attention(ctx, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                        average_attn_weights=True, is_causal=False):
    """``(output, weights or None)`` as ``F.multi_head_attention_forward``
    checks and computes them (``_mha_shape_check``, then the in-projections,
    the per-head views and the two batched products)."""
    m = ctx.module
    q, k, v = (_expect_tensor(t, "MultiheadAttention") for t in (query, key, value))
    if q.ndim not in (2, 3):
        ctx.require(sympy.false, f"query should be unbatched 2D or batched 3D tensor but received {q.ndim}-D query tensor")
    if k.ndim != q.ndim or v.ndim != q.ndim:
        ctx.require(sympy.false, f"For a {q.ndim}-D `query`, expected `key` and `value` to be {q.ndim}-D but found "
                                 f"{k.ndim}-D and {v.ndim}-D tensors respectively")
    batched = q.ndim == 3
    sequence_is_spatial = (1 if batched and m.batch_first else 0) in q.spatial
    if batched and m.batch_first:
        # torch transposes (N, L, E) to (L, N, E) and back
        q, k, v = (_moved(t, [1, 0, 2]) for t in (q, k, v))
    if not batched:
        q, k, v = (SymbolicTensor((t.shape[0], sympy.Integer(1), t.shape[1])) for t in (q, k, v))
    target, batch, embed = q.shape
    source = k.shape[0]
    if is_causal and attn_mask is None:
        ctx.require(sympy.false, "Need attn_mask if specifying the is_causal hint.")
    ctx.require(eq(embed, m.embed_dim), f"was expecting embedding dimension of {m.embed_dim}, but got {format_expr(embed)}")
    if m._qkv_same_embed_dim:
        for a, b in zip(k.shape, v.shape):
            ctx.require(eq(a, b), f"key shape {_shape_text(k)} does not match value shape {_shape_text(v)}")
        ctx.require(eq(k.shape[2], m.embed_dim), f"key's last axis {format_expr(k.shape[2])} is not the "
                                                 f"embedding dimension {m.embed_dim} (the packed in-projection)")
    else:
        for a, b in zip(k.shape[:2], v.shape[:2]):
            ctx.require(eq(a, b), f"key's sequence and batch dims do not match value's ({_shape_text(k)}, {_shape_text(v)})")
        ctx.require(eq(k.shape[2], m.kdim), f"key's last axis {format_expr(k.shape[2])} is not kdim {m.kdim}")
        ctx.require(eq(v.shape[2], m.vdim), f"value's last axis {format_expr(v.shape[2])} is not vdim {m.vdim}")
    # the per-head view k.view(S, N * heads, head_dim) needs the query's batch
    ctx.require(eq(k.shape[1], batch), f"key's batch {format_expr(k.shape[1])} is not the query's {format_expr(batch)}")
    heads = m.num_heads
    if key_padding_mask is not None:
        mask = _expect_tensor(key_padding_mask, "key_padding_mask")
        wanted = (batch, source) if batched else (source,)
        if mask.ndim != len(wanted) or not all(ctx.always(eq(a, b)) for a, b in zip(mask.shape, wanted)):
            ctx.require(sympy.And(*[eq(a, b) for a, b in zip(mask.shape, wanted)]) if mask.ndim == len(wanted)
                        else sympy.false, f"key_padding_mask of shape {_shape_text(mask)}, expected "
                                          f"({', '.join(format_expr(s) for s in wanted)})")
    if attn_mask is not None:
        mask = _expect_tensor(attn_mask, "attn_mask")
        wanted = (target, source) if mask.ndim == 2 else (batch * heads, target, source) if mask.ndim == 3 else None
        if wanted is None:
            ctx.require(sympy.false, f"expected `attn_mask` to be `None`, 2-D or 3-D but found {mask.ndim}-D tensor instead")
        ctx.require(sympy.And(*[eq(a, b) for a, b in zip(mask.shape, wanted)]),
                    f"The shape of the {mask.ndim}D attn_mask is {_shape_text(mask)}, but should be "
                    f"({', '.join(format_expr(s) for s in wanted)}).")
    # bias_k and the zero row are appended after the masks are checked (and padded along)
    source = source + (1 if m.bias_k is not None else 0) + (1 if m.add_zero_attn else 0)
    # the sequence axis keeps its spatial mark, not its coordinate map
    spatial_target = (0,) if sequence_is_spatial else ()
    if batched:
        output = SymbolicTensor((batch, target, embed), (1,) if spatial_target else ()) if m.batch_first \
            else SymbolicTensor((target, batch, embed), spatial_target)
    else:
        output = SymbolicTensor((target, embed), spatial_target)
    if not need_weights:
        return output, None
    weights = (batch, target, source) if average_attn_weights else (batch, heads, target, source)
    if not batched:
        weights = weights[1:]
    target_axis = len(weights) - 2
    return output, SymbolicTensor(weights, (target_axis,) if spatial_target else ())
