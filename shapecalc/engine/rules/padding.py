"""Padding."""

from __future__ import annotations

from typing import Callable, Optional, Sequence
import sympy
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import (as_expr, eq, format_expr, ge, gt, is_concrete, le, smallest)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor
from shapecalc.engine.rules.metadata import _numbered, _window_params
from shapecalc.engine.rules.registry import registered_class, rule


# torch pads the last len(pad)/2 axes in every mode; the other modes have a
# kernel only for 1-3 padded axes, with one or two unpadded axes in front
# (PadNd.cpp: "Only 2D, 3D, 4D, 5D padding with non-constant padding are
# supported"; F.pad(x4d, (2, 2), mode="reflect") fails at every size).
_NONCONSTANT_RANKS = {1: (2, 3), 2: (3, 4), 3: (4, 5)}


def _pad_layout_reason(ndim: int, length: int, mode: str) -> Optional[str]:
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise UnsupportedOpError(f"padding mode {mode!r}")
    if length > 2 * ndim:
        return f"pad of length {length} for a {ndim}-d tensor (at most {2 * ndim})"
    if mode != "constant" and ndim not in _NONCONSTANT_RANKS.get(length // 2, ()):
        return f"{mode} padding of length {length} is not supported for a {ndim}-d tensor"
    return None


def _slice_bounds(size: int, start: int, end: int) -> tuple[int, int]:
    """at::slice on an axis of ``size``: a negative bound counts from the end
    once, then both clamp to [0, size] with end >= start.  (start, length)."""
    start, end = start + size if start < 0 else start, end + size if end < 0 else end
    start = min(max(start, 0), size)
    return start, min(max(end, start), size) - start


def _circular_axis_fails(n: int, left: int, right: int, overlap_checked: bool) -> bool:
    """Whether torch's circular pad (``_pad_circular_symint``) raises on one
    axis of size ``n``.  It copies the cropped input into the middle of the
    output, then each wrapped side from the output itself.  A copy needs the
    source to match the target or be 1 long (broadcast), and, where both are
    dense views of one buffer (everything in front of the axis has size 1 and
    the axes behind are non-empty), refuses ranges that overlap but differ
    ("...refer to a single memory location")."""
    out = n + left + right
    if left > n or right > n or out < 0:  # "wrapping around more than once", "empty dimension"
        return True
    copies = [(_slice_bounds(out, max(left, 0), out - max(right, 0)), _slice_bounds(n, max(-left, 0), n - max(-right, 0)), False)]
    if left > 0:
        copies.append((_slice_bounds(out, 0, left), _slice_bounds(out, out - left - max(right, 0), out - max(right, 0)), True))
    if right > 0:
        copies.append((_slice_bounds(out, out - right, out), _slice_bounds(out, max(left, 0), max(left, 0) + right), True))
    for (target_start, target), (source_start, source), same_buffer in copies:
        if source != target and source != 1:
            return True
        if same_buffer and overlap_checked and target and source and (target_start, target) != (source_start, source) \
                and target_start < source_start + source and source_start < target_start + target:
            return True
    return False


def _sizes_where(n, holds: Callable[[int], bool], stable_from: int):
    """``n`` (a size expression) lies where ``holds`` is true, for a predicate
    that is constant from ``stable_from`` on: a union of intervals."""
    if is_concrete(n):
        return sympy.true if holds(int(n)) else sympy.false
    runs, start = [], None
    for value in range(stable_from + 1):
        if holds(value) and start is None:
            start = value
        elif not holds(value) and start is not None:
            runs.append((start, value - 1))
            start = None
    pieces = [sympy.And(ge(n, a), le(n, b)) if a != b else eq(n, a) for a, b in runs]
    if start is not None:
        pieces.append(ge(n, start))
    return sympy.Or(*pieces)


def _pad(ctx, x: SymbolicTensor, pad: Sequence, mode: str = "constant"):
    x = _expect_tensor(x, "pad")
    if len(pad) % 2:
        raise UnsupportedOpError(f"pad {tuple(pad)} must have an even length")
    pads = [(as_expr(pad[2 * i]), as_expr(pad[2 * i + 1])) for i in range(len(pad) // 2)]
    layout = _pad_layout_reason(x.ndim, len(pad), mode)
    if layout is not None:
        ctx.require(sympy.false, layout)
    if mode == "circular" and not all(p.is_Integer for pair in pads for p in pair):
        raise UnsupportedOpError("circular padding by a size-dependent amount")
    shape = list(x.shape)
    geometry = dict(zip(x.spatial, x.geometry))
    axes = [x.ndim - 1 - i for i in range(len(pads))]  # pads[i] is for axes[i], the last axis first
    outputs = {axis: shape[axis] + left + right for axis, (left, right) in zip(axes, pads)}
    for axis, (left, right) in zip(axes, pads):
        n = shape[axis]
        if mode in ("reflect", "replicate"):
            # _padding_check_valid_input: every axis but the batch is non-empty
            ctx.require(ge(n, 1), f"{mode} padding needs a non-empty input (size {format_expr(n)})")
        if mode == "reflect":
            # negative amounts crop and are always "less than the input"
            ctx.require(sympy.And(gt(n, left), gt(n, right)),
                        f"reflect padding ({format_expr(left)}, {format_expr(right)}) must be smaller than the input ({format_expr(n)})")
        if mode == "constant":
            # constant_pad_nd crops (narrow) before it pads
            ctx.require(ge(n + smallest(left, 0) + smallest(right, 0), 0),
                        f"cropping ({format_expr(left)}, {format_expr(right)}) is more than the size {format_expr(n)}")
        if mode == "circular":
            ctx.require(_sizes_where(n, lambda v: not _circular_axis_fails(v, int(left), int(right), False), _stable(left, right)),
                        f"circular padding ({left}, {right}) does not fit the size {format_expr(n)}")
        ctx.require(ge(outputs[axis], 0), f"padding ({format_expr(left)}, {format_expr(right)}) crops more than the size {format_expr(n)}")
    if mode == "circular":
        _circular_overlaps(ctx, shape, axes, pads, outputs)
    if mode in ("reflect", "replicate") and pads:
        # the reflection/replication kernels: "input is too small" unless
        # some padded axis keeps an element
        ctx.require(sympy.Or(*[ge(outputs[a], 1) for a in axes]), f"{mode} padding leaves every padded axis empty")
    for axis, (left, right) in zip(axes, pads):
        shape[axis] = outputs[axis]
        if axis in geometry and geometry[axis] is not None:
            geometry[axis] = geometry[axis].shifted(-left)
    return SymbolicTensor(tuple(shape), x.spatial, tuple(geometry[a] for a in x.spatial))


def _stable(left, right) -> int:
    """From this size on, every slice of a circular pad is clamped the same way."""
    return 2 * (abs(int(left)) + abs(int(right))) + 2


def _circular_overlaps(ctx, shape, axes, pads, outputs) -> None:
    """The overlap refusal of circular padding, where it applies: on an axis
    whose wrap copies are dense views of the output, i.e. every axis in front
    of it (unpadded ones and outer padded outputs) has size 1 and every
    padded output behind it is non-empty.  With a batch of 1 and one channel
    that is the outermost padded axis; an inner axis only where an outer
    padded output is 1 long."""
    front = sympy.Mul(*shape[:min(axes)])
    for position, (axis, (left, right)) in enumerate(zip(axes, pads)):
        outer = [outputs[a] for a in axes[position + 1:]]
        inner = [outputs[a] for a in axes[:position]]
        checked = sympy.And(eq(front, 1), *[eq(o, 1) for o in outer], *[ge(o, 1) for o in inner])
        if checked is sympy.false or ctx.always(sympy.Not(checked)):
            continue
        n = shape[axis]
        fits = _sizes_where(n, lambda v: not _circular_axis_fails(v, int(left), int(right), True), _stable(left, right))
        ctx.require(sympy.Or(sympy.Not(checked), fits),
                    f"circular padding ({left}, {right}) wraps onto itself at size {format_expr(n)} "
                    "(torch refuses overlapping copies)")


@rule(F.pad, params=_window_params)
def functional_pad(ctx, x, pad, mode="constant", value=None):
    return _pad(ctx, x, pad, mode)


@rule(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
      nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
      nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d, params=_window_params,
      spatial_rank=_numbered, keeps_channels=True)
def padding_module(ctx, x):
    m = ctx.module
    name = registered_class(m).__name__  # a subclass pads as the class it derives from
    mode = "reflect" if name.startswith("Reflection") else "replicate" if name.startswith("Replication") else "circular" if name.startswith("Circular") else "constant"
    return _pad(ctx, x, m.padding, mode)
