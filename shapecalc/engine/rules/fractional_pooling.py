"""Fractional max pooling (``nn.FractionalMaxPool2d``; fx records
``F.fractional_max_pool2d`` as ``fractional_max_pool2d_with_indices``, or as
itself without indices).  The output size is given, or
``int(n * output_ratio)`` in double precision; the pooling regions start at
random offsets, so the spatial axes keep their marks but no coordinate map."""

from __future__ import annotations

import sympy
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import as_expr, eq, floor_of, format_expr, ge, is_concrete, le
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor, _per_axis
from shapecalc.engine.rules.merges import exact_in_double
from shapecalc.engine.rules.metadata import bound_arguments
from shapecalc.engine.rules.registry import rule


def _ratio_size(n, ratio):
    """``int(n * ratio)`` as Python computes it."""
    if not isinstance(ratio, (int, float)):
        raise UnsupportedOpError(f"output_ratio {ratio!r}: only numbers")
    if is_concrete(n):
        return sympy.Integer(int(int(n) * ratio))
    if not exact_in_double(float(ratio)):
        # int(n * 0.7) in double precision is not floor(7n/10) for every n
        raise UnsupportedOpError(f"output_ratio {ratio} is not exact in double precision for a symbolic size; "
                                 "use a dyadic ratio (0.5, 0.75) or output_size")
    return floor_of(as_expr(n) * sympy.Rational(float(ratio)))


def _fractional(ctx, x, kernel_size, output_size, output_ratio, random_samples):
    x = _expect_tensor(x, "fractional_max_pool2d")
    if output_size is None and output_ratio is None:
        ctx.require(sympy.false, "fractional_max_pool2d requires specifying either an output_size or an output_ratio")
    if x.ndim not in (3, 4):
        ctx.require(sympy.false, f"fractional_max_pool2d: Expected 3D or 4D tensor, but got: {x.ndim}")
    for size in x.shape[-3:]:
        ctx.require(ge(size, 1), f"fractional_max_pool2d: Expected input to have non-zero size for non-batch "
                                 f"dimensions (size {format_expr(size)})")
    kernel = _per_axis(kernel_size, 2, "kernel_size")
    height, width = x.shape[-2:]
    if output_size is None:
        if not isinstance(output_ratio, (tuple, list)):
            # F.fractional_max_pool2d takes len(output_ratio) (the module pairs it first)
            ctx.require(sympy.false, f"object of type '{type(output_ratio).__name__}' has no len()")
        if len(output_ratio) > 2:
            ctx.require(sympy.false, "fractional_max_pool2d requires output_ratio to either be a single Int or tuple of Ints.")
        ratios = _per_axis(output_ratio, 2, "output_ratio")
        targets = [_ratio_size(height, ratios[0]), _ratio_size(width, ratios[1])]
    else:
        targets = [as_expr(v) for v in _per_axis(output_size, 2, "output_size")]
    for target, k, n, axis in zip(targets, kernel, (height, width), ("height", "width")):
        ctx.require(le(target + k - 1, n), f"fractional_max_pool2d: kernel {axis} {k} is too large relative to input "
                                           f"{axis} {format_expr(n)} (output {format_expr(target)})")
    if random_samples is not None:
        samples = _expect_tensor(random_samples, "_random_samples")
        if samples.ndim != 3:
            ctx.require(sympy.false, f"Expect _random samples to have 3 dimensions got, {samples.ndim}")
        batch = x.shape[0] if x.ndim == 4 else 1
        ctx.require(ge(samples.shape[0], batch), "Expect _random_samples.size(0) no less then input batch size.")
        ctx.require(eq(samples.shape[1], x.shape[-3]), "Expect _random_samples.size(1) equals to input channel size.")
        ctx.require(eq(samples.shape[2], 2), "Expect _random_samples.size(2) equals to 2")
    shape = (*x.shape[:-2], *targets)
    return SymbolicTensor(shape, x.spatial, (None,) * len(x.spatial))


def _fractional_params(node, graph_module) -> str:
    if node.op == "call_module":
        m = graph_module.get_submodule(node.target)
        values = {"kernel_size": m.kernel_size, "output_size": m.output_size, "output_ratio": m.output_ratio}
    else:
        values = bound_arguments(node, graph_module)
    target = values.get("output_size")
    return f"k{values.get('kernel_size')} " + (f"out={target}" if target is not None else f"ratio={values.get('output_ratio')}")


_FRACTIONAL = dict(params=_fractional_params, spatial_rank=2, keeps_channels=True)


@rule(nn.FractionalMaxPool2d, **_FRACTIONAL)
def fractional_max_pooling(ctx, x):
    m = ctx.module
    samples = getattr(m, "_random_samples", None)  # a buffer: a real tensor here
    samples = None if samples is None else SymbolicTensor(tuple(samples.shape))
    ratio = None if m.output_ratio is None else tuple(m.output_ratio)
    pooled = _fractional(ctx, x, m.kernel_size, m.output_size, ratio, samples)
    return (pooled, pooled) if m.return_indices else pooled


@rule(F.fractional_max_pool2d_with_indices, **_FRACTIONAL)
def fractional_max_pooling_with_indices(ctx, input, kernel_size, output_size=None, output_ratio=None,
                                        return_indices=False, _random_samples=None):
    pooled = _fractional(ctx, input, kernel_size, output_size, output_ratio, _random_samples)
    return pooled, pooled


# without indices torch's torch-function hook names the public dispatcher
@rule(F.fractional_max_pool2d, **_FRACTIONAL)
def functional_fractional_max_pooling(ctx, input, kernel_size, output_size=None, output_ratio=None,
                                      return_indices=False, _random_samples=None):
    pooled = _fractional(ctx, input, kernel_size, output_size, output_ratio, _random_samples)
    return (pooled, pooled) if return_indices else pooled
