"""Shape-preserving ops."""

from __future__ import annotations

import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import (as_expr, eq, floordiv, format_expr, gt)
from shapecalc.engine.rules.common import _channels, _expect_tensor
from shapecalc.engine.rules.metadata import _numbered
from shapecalc.engine.rules.registry import rule


_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.LocalResponseNorm,
)
_POINTWISE_FUNCTIONS = (
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.softplus, F.softmax, F.log_softmax, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.sigmoid, F.tanh,
    torch.relu, torch.sigmoid, torch.tanh, torch.softmax,
    torch.log_softmax, torch.exp, torch.abs, torch.neg, torch.sqrt, torch.clamp, torch.nn.functional.normalize,
)
_POINTWISE_METHODS = (
    "relu", "relu_", "sigmoid", "tanh", "exp", "abs", "neg", "sqrt", "clamp", "clamp_", "softmax", "log_softmax",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as", "cuda", "cpu",
    "requires_grad_", "mul_", "add_", "div_",
)


@rule(*_POINTWISE_MODULES, *_POINTWISE_FUNCTIONS, *_POINTWISE_METHODS, spatial_rank=_numbered, keeps_channels=True)
def shape_preserving(ctx, x, *args, **kwargs):
    return x


@rule(nn.LayerNorm, F.layer_norm, keeps_channels=True)
def layer_norm(ctx, x, normalized_shape=None, *args, **kwargs):
    x = _expect_tensor(x, "layer_norm")
    shape = ctx.module.normalized_shape if ctx.module is not None else normalized_shape
    normalized = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (shape,)
    if len(normalized) > x.ndim:
        raise UnsupportedOpError(f"layer_norm over {normalized} of a {x.ndim}-d tensor")
    for size, expected in zip(x.shape[x.ndim - len(normalized):], normalized):
        ctx.require(eq(size, as_expr(expected)), f"layer_norm over {normalized} got size {format_expr(size)}")
    return x


@rule(nn.GroupNorm, F.group_norm, channels="num_channels", keeps_channels=True)
def group_norm(ctx, x, num_groups=None, *args, **kwargs):
    x = _expect_tensor(x, "group_norm")
    if ctx.module is not None:
        num_groups = ctx.module.num_groups
        _channels(ctx, x, ctx.module.num_channels, "GroupNorm")
    # PyTorch needs more than one value per group, in eval mode too
    # (F.group_norm's _verify_batch_size): (N*C/G) * prod(spatial) > 1.
    values = sympy.Mul(floordiv(x.shape[0] * x.shape[1], num_groups), *x.shape[2:])
    ctx.require(gt(values, 1), f"group_norm needs more than one value per group (here {format_expr(values)})")
    return x


@rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, F.instance_norm, spatial_rank=_numbered, keeps_channels=True)
def instance_norm(ctx, x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  *args, **kwargs):
    x = _expect_tensor(x, "instance_norm")
    if ctx.module is not None:
        use_input_stats = ctx.module.training or not ctx.module.track_running_stats
    if use_input_stats:
        # Statistics of the input itself (the default: track_running_stats=False,
        # so in eval mode too) need more than one spatial element.
        values = sympy.Mul(*x.shape[2:])
        ctx.require(gt(values, 1), f"instance_norm needs more than one spatial element (here {format_expr(values)})")
    return x


@rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, spatial_rank=_numbered, channels="num_features",
      keeps_channels=True)
def batch_norm(ctx, x):
    m = ctx.module
    x = _expect_tensor(x, type(m).__name__)
    _channels(ctx, x, m.num_features, type(m).__name__)
    if m.training:
        values = " x ".join(format_expr(s) for s in (x.shape[0], *x.spatial_sizes))
        ctx.note(f"{type(m).__name__} in training mode needs more than one value per channel "
                 f"(batch x spatial = {values} > 1); a training-mode limit, not a size error")
    return x


@rule(F.batch_norm, keeps_channels=True)
def functional_batch_norm(ctx, x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                          momentum=0.1, eps=1e-5):
    x = _expect_tensor(x, "batch_norm")
    if training is True and x.ndim >= 2:
        # F.batch_norm(..., training=True) computes batch statistics: torch refuses a single value
        # per channel ("Expected more than 1 value per channel when training") at any mode of the model
        values = x.shape[0]
        for size in x.shape[2:]:
            values = values * size
        ctx.require(gt(values, 1), f"batch_norm with training=True needs more than one value per channel "
                                   f"(got {format_expr(values)})")
    return x
