"""Rules for the ops of ATen graphs (the ATen front end, capture/aten.py).

Each rule translates an ATen signature to the size arithmetic the fx rules
already use (``_conv``, ``_pool``, ``_interpolate``, ``elementwise``, ...):
one formula per op family, whichever front end recorded the call.  The
parameter names follow the fx rules' so the params column and the
resampling audit read ATen nodes the same way (``kernel_size``, ``weight``,
``mode``, ``align_corners``).

The set is closed by what real models produce: tests/test_aten_capture.py
captures every test model and fails on an op without a rule here.
"""

from __future__ import annotations

import math
from typing import Optional

import sympy
import torch
import torch.fx

from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.rules import indexing, merges, reshaping
from shapecalc.engine.rules.common import _channels, _expect_tensor, _on_last_axes
from shapecalc.engine.rules.convolution import _conv, _transposed
from shapecalc.engine.rules.matrix import _matrix_product
from shapecalc.engine.rules.metadata import _adaptive_params, _interpolation_params, _interpolation_sampling, _window_params
from shapecalc.engine.rules.pooling import _adaptive, _average_pool, _pool
from shapecalc.engine.rules.registry import Sampling, aten, rule
from shapecalc.engine.rules.resampling import _interpolate, _on_input_axes
from shapecalc.engine.symbolic import as_expr, eq, format_expr
from shapecalc.engine.tensors import SymbolicTensor

#: the node.meta key the size interpreter writes (engine/propagate.py's META_KEY; not imported: propagate imports rules)
META_KEY = "shapecalc"


def _rank_of_weight(node) -> int | None:
    weight = node.args[1] if len(node.args) > 1 else None
    value = getattr(weight, "meta", {}).get("val")
    return None if value is None else value.dim() - 2


def _conv_channels(node, graph_module):
    weight = node.args[1] if len(node.args) > 1 else None
    value = getattr(weight, "meta", {}).get("val")
    if value is None or value.dim() < 3:
        return None
    groups = node.args[8] if len(node.args) > 8 else 1
    transposed = node.args[6] if len(node.args) > 6 else False
    return int(value.shape[0]) if transposed else int(value.shape[1]) * int(groups)


# ---------------------------------------------------------------------------
# windows

@rule(*aten("convolution"), params=_window_params, spatial_rank=_rank_of_weight, channels=_conv_channels)
def aten_convolution(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    x, weight = _expect_tensor(x, "convolution"), _expect_tensor(weight, "convolution weight")
    nd = weight.ndim - 2
    kernel = tuple(int(k) for k in weight.shape[2:])
    # torch convolves the last nd axes whatever shapecalc marked spatial (SwinUNETR's
    # convolutions read images rebuilt by view/permute, which carry no marks)
    if transposed:
        _channels(ctx, x, int(weight.shape[0]), "conv_transpose")
        return _on_last_axes(ctx, x, nd, "conv_transpose",
                             lambda t: _transposed(ctx, t, nd, int(weight.shape[1]) * int(groups), kernel, stride,
                                                   padding, dilation, output_padding))
    _channels(ctx, x, int(weight.shape[1]) * int(groups), "conv")
    return _on_last_axes(ctx, x, nd, "convolution",
                         lambda t: _conv(ctx, t, nd, int(weight.shape[0]), kernel, stride, padding, dilation))


def _adaptive_average_sampling(node, graph_module, count: int) -> Sampling:
    return Sampling("adaptive_avg")


def _adaptive_max_sampling(node, graph_module, count: int) -> Sampling:
    return Sampling("adaptive_max")


def _global_mean_sampling(node, graph_module, count: int) -> Optional[Sampling]:
    """``mean(dim=spatial axes, keepdim=True)`` is a global average pool: ATen
    records nn.AdaptiveAvgPool2d(1) so, and the resampling audit should see
    it as the fx front end sees the module."""
    source = node.args[0].meta.get(META_KEY) if node.args and isinstance(node.args[0], torch.fx.Node) else None
    dims = node.args[1] if len(node.args) > 1 else None
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not isinstance(source, SymbolicTensor) or not keepdim or not isinstance(dims, (list, tuple)):
        return None
    if not source.spatial or {d % source.ndim for d in dims} != set(source.spatial):
        return None
    return Sampling("adaptive_avg")


def _windowed_pool(ctx, x, nd, kernel_size, stride, padding, dilation, ceil_mode):
    stride = stride if stride not in (None, [], ()) else kernel_size
    return _on_last_axes(ctx, x, nd, f"max_pool{nd}d",
                         lambda t: _pool(ctx, t, nd, kernel_size, stride, padding, dilation, bool(ceil_mode)))


def _max_pool_rule(nd):
    @rule(*aten(f"max_pool{nd}d_with_indices"), params=_window_params, spatial_rank=nd, keeps_channels=True)
    def aten_max_pool_with_indices(ctx, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        values = _windowed_pool(ctx, x, nd, kernel_size, stride, padding, dilation, ceil_mode)
        return values, SymbolicTensor(values.shape, values.spatial, values.geometry, "integer")

    @rule(*aten(f"max_pool{nd}d"), params=_window_params, spatial_rank=nd, keeps_channels=True)
    def aten_max_pool(ctx, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        return _windowed_pool(ctx, x, nd, kernel_size, stride, padding, dilation, ceil_mode)

    @rule(*aten(f"avg_pool{nd}d"), params=_window_params, spatial_rank=nd, keeps_channels=True)
    def aten_average_pool(ctx, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                          divisor_override=None):
        stride = stride if stride not in (None, [], ()) else kernel_size
        return _on_last_axes(ctx, x, nd, f"avg_pool{nd}d",
                             lambda t: _average_pool(ctx, t, nd, kernel_size, stride, padding, bool(ceil_mode)))

    # torch has no _adaptive_avg_pool1d: adaptive_avg_pool1d runs the 2-d kernel
    @rule(*aten(f"adaptive_avg_pool{nd}d", *([f"_adaptive_avg_pool{nd}d"] if nd > 1 else [])),
          resample=_adaptive_average_sampling, params=_adaptive_params, spatial_rank=nd, keeps_channels=True)
    def aten_adaptive_average_pool(ctx, x, output_size):
        return _on_last_axes(ctx, x, nd, f"adaptive_avg_pool{nd}d",
                             lambda t: _adaptive(ctx, t, nd, output_size, average=True))

    @rule(*aten(f"adaptive_max_pool{nd}d"), resample=_adaptive_max_sampling, params=_adaptive_params, spatial_rank=nd,
          keeps_channels=True)
    def aten_adaptive_max_pool(ctx, x, output_size):
        values = _on_last_axes(ctx, x, nd, f"adaptive_max_pool{nd}d", lambda t: _adaptive(ctx, t, nd, output_size))
        return values, SymbolicTensor(values.shape, values.spatial, values.geometry, "integer")


for _nd in (1, 2, 3):
    _max_pool_rule(_nd)


# ---------------------------------------------------------------------------
# resampling: F.interpolate recorded whole (capture/aten.py)

@rule(*aten("shapecalc::interpolate"), params=_interpolation_params, resample=_interpolation_sampling,
      keeps_channels=True)
def aten_interpolate(ctx, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                     recompute_scale_factor=None, antialias=False):
    return _on_input_axes(ctx, x, mode, lambda t: _interpolate(ctx, t, size, scale_factor, mode, align_corners,
                                                               recompute_scale_factor, antialias))


# ---------------------------------------------------------------------------
# shape-preserving ops and normalisations

_UNARY = (
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "gelu", "gelu_",
    "silu", "silu_", "mish", "mish_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "softplus", "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max",
    "clamp_max_", "exp", "abs", "neg", "sqrt", "rsqrt", "reciprocal", "log", "erf", "pow.Tensor_Scalar",
    "_softmax", "_log_softmax", "softmax.int", "log_softmax.int", "detach", "detach_", "clone", "alias",
    "lift_fresh_copy", "_to_copy", "contiguous", "dropout", "fill_.Scalar", "zero_",
    "bernoulli_.float", "div_.Scalar", "mul_.Scalar", "add_.Scalar", "mul.Scalar", "add.Scalar", "sub.Scalar",
    "div.Scalar", "rsub.Scalar", "prelu", "_prelu_kernel", "glu_jvp", "copy", "copy_", "masked_fill.Scalar",
    "masked_fill_.Scalar", "_log_softmax_backward_data", "sign", "logical_not", "bitwise_not", "round", "floor",
    "ceil", "trunc", "sin", "cos", "expm1", "log1p", "hardshrink", "softshrink", "threshold", "celu", "selu",
    "alpha_dropout", "feature_dropout", "feature_alpha_dropout", "_safe_softmax", "fill_.Tensor", "fill.Tensor",
    "fill.Scalar",
)


@rule(*aten(*_UNARY), keeps_channels=True)
def aten_shape_preserving(ctx, x, *args, **kwargs):
    return _expect_tensor(x, "unary op")


@rule(*aten("native_dropout"), keeps_channels=True)
def aten_native_dropout(ctx, x, p, train):
    x = _expect_tensor(x, "dropout")
    return x, SymbolicTensor(x.shape, x.spatial, x.geometry, "bool")


def _per_channel_stats(x: SymbolicTensor, computed: bool, device: str = "meta"):
    """batch norm's saved mean and inverse std: one per channel when the
    statistics are computed; when the running ones are used, torch's
    decomposition (native_batch_norm_helper in torch/_decomp) saves the
    running statistics themselves, except on the CPU, where it saves empty
    tensors (regnet_y_400mf, built on the CPU, records (0,))."""
    count = x.shape[1] if (computed or device != "cpu") and x.ndim > 1 else sympy.Integer(0)
    return SymbolicTensor((count,))


def _input_device(ctx) -> str:
    """The device of the node's first argument as torch recorded it."""
    value = getattr(ctx.node.args[0], "meta", {}).get("val") if ctx.node.args else None
    return value.device.type if isinstance(value, torch.Tensor) else "meta"


def _batch_norm_channels(ctx, x, weight, running_mean):
    for tensor in (weight, running_mean):
        if isinstance(tensor, SymbolicTensor) and tensor.ndim == 1:
            _channels(ctx, x, int(tensor.shape[0]), "batch_norm")
            return


@rule(*aten("_native_batch_norm_legit_no_training"), keeps_channels=True)
def aten_batch_norm_inference(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
    x = _expect_tensor(x, "batch_norm")
    _batch_norm_channels(ctx, x, weight, running_mean)
    stats = _per_channel_stats(x, False, _input_device(ctx))
    return x, stats, stats


@rule(*aten("shapecalc::batch_norm"), keeps_channels=True)
def aten_recorded_batch_norm(ctx, x, weight, bias, running_mean, running_var, eps):
    """Inference batch norm recorded whole (capture/aten.py): shaped like its input."""
    x = _expect_tensor(x, "batch_norm")
    _batch_norm_channels(ctx, x, weight, running_mean)
    return x


@rule(*aten("_native_batch_norm_legit", "native_batch_norm", "_native_batch_norm_legit_functional"),
      keeps_channels=True)
def aten_batch_norm(ctx, x, weight, bias, running_mean, running_var, training=False, momentum=0.1, eps=1e-5):
    x = _expect_tensor(x, "batch_norm")
    if isinstance(running_mean, bool):  # _native_batch_norm_legit.no_stats: (x, w, b, training, momentum, eps)
        running_mean, training = None, running_mean
    _batch_norm_channels(ctx, x, weight, running_mean)
    if training:
        values = sympy.Mul(*(s for i, s in enumerate(x.shape) if i != 1))
        ctx.require(sympy.Gt(values, 1), f"batch norm in training needs more than one value per channel "
                                         f"(got {format_expr(values)})")
    # without running statistics (no_stats) they are computed whether training or not
    stats = _per_channel_stats(x, bool(training) or running_mean is None, _input_device(ctx))
    if ctx.node.target._schema.name == "aten::_native_batch_norm_legit_functional":
        # the functional form also returns the updated running statistics
        return x, stats, stats, running_mean, running_var
    return x, stats, stats


@rule(*aten("native_layer_norm"), keeps_channels=True)
def aten_layer_norm(ctx, x, normalized_shape, weight, bias, eps):
    x = _expect_tensor(x, "layer_norm")
    count = len(normalized_shape)
    for axis, size in zip(range(x.ndim - count, x.ndim), normalized_shape):
        ctx.require(eq(x.shape[axis], as_expr(size)), f"layer_norm over {list(normalized_shape)} of a tensor "
                                                      f"whose axis {axis} has {format_expr(x.shape[axis])}")
    stats = SymbolicTensor(x.shape[:x.ndim - count] + (sympy.Integer(1),) * count)
    return x, stats, stats


@rule(*aten("native_group_norm"), keeps_channels=True)
def aten_group_norm(ctx, x, weight, bias, batch, channels, spatial, groups, eps):
    x = _expect_tensor(x, "group_norm")
    ctx.require(eq(as_expr(channels) % int(groups), 0), f"group_norm: {channels} channels in {groups} groups")
    stats = SymbolicTensor((as_expr(batch), sympy.Integer(int(groups))))
    return x, stats, stats


# ---------------------------------------------------------------------------
# merges

_BROADCAST = ("add.Tensor", "add_.Tensor", "sub.Tensor", "sub_.Tensor", "mul.Tensor", "mul_.Tensor", "div.Tensor",
              "div_.Tensor", "div.Tensor_mode", "maximum", "minimum", "pow.Tensor_Tensor", "where.self", "eq.Tensor",
              "ne.Tensor", "lt.Tensor", "le.Tensor", "gt.Tensor", "ge.Tensor", "logical_and", "logical_or",
              "atan2", "fmod.Tensor", "remainder.Tensor", "rsub.Tensor", "bitwise_and.Tensor", "bitwise_or.Tensor",
              "hardtanh_backward", "threshold_backward", "sigmoid_backward", "floor_divide")


@rule(*aten(*_BROADCAST), merge="broadcast", keeps_channels=True)
def aten_elementwise(ctx, a, b, *rest, **kwargs):
    if isinstance(a, SymbolicTensor) and isinstance(b, SymbolicTensor):
        out = merges.elementwise(ctx, a, b)
        for more in rest:  # where(cond, a, b) broadcasts all three
            if isinstance(more, SymbolicTensor):
                out = merges.elementwise(ctx, out, more)
        return out
    tensor = a if isinstance(a, SymbolicTensor) else b
    if not isinstance(tensor, SymbolicTensor):
        raise UnsupportedOpError("an elementwise op without a tensor argument")
    for more in rest:
        if isinstance(more, SymbolicTensor):
            tensor = merges.elementwise(ctx, tensor, more)
    return tensor


@rule(*aten("addcmul", "addcdiv", "lerp.Tensor", "lerp.Scalar"), merge="broadcast", keeps_channels=True)
def aten_three_way(ctx, a, b, c=None, *args, **kwargs):
    out = _expect_tensor(a, "addcmul")
    for other in (b, c):
        if isinstance(other, SymbolicTensor):
            out = merges.elementwise(ctx, out, other)
    return out


@rule(*aten("cat"), merge="concat")
def aten_cat(ctx, tensors, dim=0):
    # aten.cat skips legacy empty 1-d tensors exactly as torch.cat does: the fx rule's arithmetic
    return merges.concatenate(ctx, list(tensors), dim)


@rule(*aten("stack"), merge="stack")
def aten_stack(ctx, tensors, dim=0):
    return merges.stack(ctx, list(tensors), dim)


# ---------------------------------------------------------------------------
# indexing

def _rounded_ratio(value, up: bool):
    """math.ceil / math.floor of a size ratio (timm's pad_same: ``math.ceil(ih / s)``)
    in shapecalc's exact floor form: ceil(n/q) = -floor(-n/q)."""
    from shapecalc.engine.symbolic import floordiv
    if isinstance(value, (int, float)):
        return (math.ceil if up else math.floor)(value)
    numerator, denominator = sympy.fraction(sympy.together(as_expr(value)))
    if up:
        return -floordiv(-numerator, denominator)
    return floordiv(numerator, denominator)


@rule(math.ceil)
def python_ceil(ctx, value):
    return _rounded_ratio(value, up=True)


@rule(math.floor)
def python_floor(ctx, value):
    return _rounded_ratio(value, up=False)


@rule(*aten("sym_size.int"))
def aten_size(ctx, x, dim):
    x = _expect_tensor(x, "size")
    return x.shape[x.axis(int(dim))]


@rule(*aten("sym_numel"))
def aten_numel(ctx, x):
    return sympy.Mul(*_expect_tensor(x, "numel").shape)


def _slice_params(node, graph_module) -> str:
    dim, start, end, step = (list(node.args[1:]) + [0, None, None, 1][len(node.args) - 1:])[:4]

    def bound(b):
        if b is None or (isinstance(b, int) and abs(b) >= 2 ** 62):
            return ""
        return getattr(b, "name", str(b))
    return f"dim {dim} [{bound(start)}:{bound(end)}" + (f":{step}" if step not in (None, 1) else "") + "]"


@rule(*aten("slice.Tensor"), params=_slice_params, keeps_channels=lambda node: (node.args[1:2] or [0])[0] != 1)
def aten_slice(ctx, x, dim=0, start=None, end=None, step=1):
    x = _expect_tensor(x, "slice")
    axis = x.axis(int(dim))
    # aten records an open end (x[:, :, 1:]) as 2**63 - 1: no tensor is that large, so it is the end
    if isinstance(end, int) and end >= 2 ** 62:
        end = None
    index = tuple([slice(None)] * axis + [slice(start, end, step)])
    return indexing._index_tensor(ctx, x, index)


@rule(*aten("select.int"))
def aten_select(ctx, x, dim, index):
    x = _expect_tensor(x, "select")
    axis = x.axis(int(dim))
    return indexing._index_tensor(ctx, x, tuple([slice(None)] * axis + [index]))


@rule(*aten("split.Tensor", "split_with_sizes", "unbind.int", "chunk"))
def aten_split(ctx, x, split_size_or_sections=None, dim=0):
    from shapecalc.engine.rules import multiple_outputs
    x = _expect_tensor(x, "split")
    name = ctx.node.target._schema.name
    if name == "aten::unbind":
        return multiple_outputs.unbind(ctx, x, split_size_or_sections or 0)
    if name == "aten::chunk":
        return multiple_outputs.chunk(ctx, x, split_size_or_sections, dim)
    return multiple_outputs.split(ctx, x, split_size_or_sections, dim)


# ---------------------------------------------------------------------------
# reshaping

@rule(*aten("view", "_unsafe_view", "reshape", "view_copy"))
def aten_view(ctx, x, size):
    return reshaping._reshape(ctx, _expect_tensor(x, "view"), list(size))


@rule(*aten("permute", "permute_copy"))
def aten_permute(ctx, x, dims):
    return reshaping.permute(ctx, x, list(dims))


@rule(*aten("transpose.int", "transpose_"))
def aten_transpose(ctx, x, dim0, dim1):
    return reshaping.transpose(ctx, x, dim0, dim1)


@rule(*aten("t"))
def aten_t(ctx, x):
    x = _expect_tensor(x, "t")
    return x if x.ndim < 2 else reshaping.transpose(ctx, x, 0, 1)


@rule(*aten("unsqueeze", "unsqueeze_"))
def aten_unsqueeze(ctx, x, dim):
    return reshaping.unsqueeze(ctx, x, dim)


@rule(*aten("squeeze.dim", "squeeze.dims", "squeeze", "squeeze_.dim"))
def aten_squeeze(ctx, x, dim=None):
    if isinstance(dim, (list, tuple)):
        for d in sorted((int(d) % _expect_tensor(x, "squeeze").ndim for d in dim), reverse=True):
            x = reshaping.squeeze(ctx, x, d)
        return x
    return reshaping.squeeze(ctx, x, dim)


@rule(*aten("mean.dim"), resample=_global_mean_sampling, keeps_channels=True)
def aten_mean(ctx, x, dim=None, keepdim=False, *, dtype=None):
    return reshaping._reduce(ctx, x, None if dim in (None, [], ()) else dim, bool(keepdim), nonempty=False)


@rule(*aten("sum.dim_IntList", "amax", "amin", "mean", "sum", "var.correction", "std.correction",
            "var_mean.correction"), keeps_channels=True)
def aten_reduction(ctx, x, dim=None, keepdim=False, *args, **kwargs):
    name = ctx.node.target._schema.name
    if name in ("aten::var", "aten::std", "aten::var_mean"):
        # keepdim is keyword-only there: bound by name above when given (a False default would drop it)
        keepdim = kwargs.get("keepdim", keepdim)
    dim = None if dim in (None, [], ()) else dim
    result = reshaping._reduce(ctx, x, dim, bool(keepdim), nonempty=name in ("aten::amax", "aten::amin"))
    return (result, result) if name == "aten::var_mean" else result


@rule(*aten("expand"))
def aten_expand(ctx, x, size, implicit=False):
    from shapecalc.engine.rules import copies
    return copies.expand(ctx, x, list(size))


_COMPARE_WITH_NUMBER = ("eq.Scalar", "ne.Scalar", "lt.Scalar", "le.Scalar", "gt.Scalar", "ge.Scalar")


@rule(*aten(*_COMPARE_WITH_NUMBER), keeps_channels=True)
def aten_compare_with_number(ctx, x, other):
    # a tensor against a number: the tensor's shape, as a mask
    x = _expect_tensor(x, "comparison")
    return SymbolicTensor(x.shape, x.spatial, x.geometry, "bool")


@rule(*aten("repeat"))
def aten_repeat(ctx, x, repeats):
    from shapecalc.engine.rules import copies
    return copies.repeat(ctx, x, list(repeats))


@rule(*aten("roll"))
def aten_roll(ctx, x, shifts, dims=()):
    from shapecalc.engine.rules import copies
    return copies.roll(ctx, x, list(shifts), list(dims))


def _index_dtype(tensor, node) -> object:
    """An index tensor with the dtype torch recorded for it (views of a buffer
    lose the dtype shapecalc read from the buffer; the graph keeps it)."""
    import dataclasses
    value = getattr(node, "meta", {}).get("val")
    if not isinstance(tensor, SymbolicTensor) or tensor.dtype_kind is not None or not isinstance(value, torch.Tensor):
        return tensor
    kind = "bool" if value.dtype == torch.bool else "floating" if value.is_floating_point() else "integer"
    return dataclasses.replace(tensor, dtype_kind=kind)


@rule(*aten("index.Tensor"))
def aten_index(ctx, x, indices):
    from shapecalc.engine.rules.advanced_indexing import advanced_index
    x = _expect_tensor(x, "index")
    # aten's None entries are the full slices between (or before) the index tensors
    nodes = ctx.node.args[1] if len(ctx.node.args) > 1 else [None] * len(indices)
    items = [slice(None) if i is None else _index_dtype(i, n) for i, n in zip(indices, nodes)]
    return advanced_index(ctx, x, items, indexing._index_tensor)


@rule(*aten("as_strided", "as_strided_"))
def aten_as_strided(ctx, x, size, memory_strides, storage_offset=None):  # not a window's stride (tests/test_registry)
    x = _expect_tensor(x, "as_strided")
    shape = tuple(as_expr(s) for s in size)
    # a restride to the tensor's own shape (adaptive_avg_pool2d's decomposition
    # fixing the memory format) keeps its axes; any other is a new view
    if len(shape) == x.ndim and all(ctx.always(eq(a, b)) for a, b in zip(shape, x.shape)):
        return x
    return SymbolicTensor(shape)


@rule(*aten("addmm"))
def aten_addmm(ctx, bias, a, b, *args, **kwargs):
    out = _matrix_product(ctx, _expect_tensor(a, "addmm"), _expect_tensor(b, "addmm"), "addmm", broadcast=False)
    if isinstance(bias, SymbolicTensor):
        merges.elementwise(ctx, bias, out)
    return out


@rule(*aten("mm", "bmm", "matmul"))
def aten_matrix_product(ctx, a, b):
    name = ctx.node.target._schema.name
    return _matrix_product(ctx, _expect_tensor(a, name), _expect_tensor(b, name), name.removeprefix("aten::"),
                           broadcast=name == "aten::matmul")


@rule(*aten("constant_pad_nd"), params=lambda node, gm: f"pad {list(node.args[1])}")
def aten_constant_pad(ctx, x, pad, value=0):
    from shapecalc.engine.rules import padding
    return padding._pad(ctx, _expect_tensor(x, "pad"), list(pad), "constant")


def _pad_mode_rule(mode, names):
    @rule(*aten(*names), params=lambda node, gm: f"{mode} pad {list(node.args[1])}")
    def aten_mode_pad(ctx, x, pad):
        from shapecalc.engine.rules import padding
        return padding._pad(ctx, _expect_tensor(x, "pad"), list(pad), mode)


_pad_mode_rule("reflect", ("reflection_pad1d", "reflection_pad2d", "reflection_pad3d"))
_pad_mode_rule("replicate", ("replication_pad1d", "replication_pad2d", "replication_pad3d"))
_pad_mode_rule("circular", ("_pad_circular",))


# ---------------------------------------------------------------------------
# new tensors

@rule(*aten("empty.memory_format", "zeros", "ones", "full", "new_zeros", "new_ones", "new_empty",
            "new_full", "scalar_tensor", "arange.default", "arange.start", "arange.start_step"))
def aten_new_tensor(ctx, *args, **kwargs):
    name = ctx.node.target._schema.name
    value = ctx.node.meta.get("val")
    if name == "aten::arange":
        numbers = [as_expr(a) for a in args if not isinstance(a, SymbolicTensor)]
        start, end, step = (0, numbers[0], 1) if len(numbers) == 1 else (numbers + [1])[:3]
        return SymbolicTensor((sympy.ceiling((as_expr(end) - as_expr(start)) / as_expr(step)),))
    if name == "aten::scalar_tensor":
        return SymbolicTensor(())
    size = args[1] if name.startswith("aten::new_") else args[0]
    kind = None if value is None else ("bool" if str(value.dtype) == "torch.bool" else
                                       "floating" if value.is_floating_point() else "integer")
    return SymbolicTensor(tuple(as_expr(s) for s in size), dtype_kind=kind)
