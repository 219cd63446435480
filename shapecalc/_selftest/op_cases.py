"""Cross-check cases: for every key of the rule registry, a strategy of small
modules whose fx graph calls exactly that key (:data:`OP_CASES`); for an
AtenOp key, modules whose ATen capture calls it (``OpCase.capture == "aten"``,
see the ATen section at the end).

tests/test_rules.py analyses each drawn case and compares every node's size
and the valid domain with real CPU forward passes; tests/test_registry.py
walks the registry with them.  Adding an op means one rule plus one entry
here.  Not public API: this is shapecalc's own test harness.
"""

from __future__ import annotations
import builtins
import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st
from shapecalc.engine import rules
from shapecalc.strategies import DYADIC_SCALE_FACTORS, _MAXPOOL, _RESAMPLING_MODES, _pool_parameters, _resampling_parameters, conv_layers, pool_layers, resampling_layers, transposed_conv_layers

# len() and int() of a traced value are recorded as graph calls only for the
# modules that ask: these two are the cases' own forward code.
torch.fx.wrap("len")
torch.fx.wrap("int")

__all__ = ["OP_CASES", "OpCase", "aten_calls", "aten_matches"]

# ---------------------------------------------------------------------------
# cross-check cases: one module per rule key


@dataclass(frozen=True, repr=False)
class OpCase:
    """A module whose traced graph calls ``key``, fed ``(1, channels, *sizes)``
    with ``dims`` spatial axes.  ``text`` is its forward pass in one line."""

    key: Any
    module: nn.Module
    channels: int
    dims: int
    text: str
    needs_cuda: bool = False
    #: the front end whose graph calls ``key``: "fx" (symbolic_trace) or
    #: "aten" (``analyze(..., capture="aten")``, an AtenOp key)
    capture: str = "fx"

    def __repr__(self) -> str:
        return f"OpCase({rules.key_name(self.key)}: {self.text}; channels={self.channels}, dims={self.dims})"


class _Call(nn.Module):
    """``forward(x) = function(self, x)``: fx traces through ``function``."""

    def __init__(self, function: Callable, text: str, modules=None, tensors=None):
        super().__init__()
        self.function = function
        self.text = text
        for name, module in (modules or {}).items():
            setattr(self, name, module)
        for name, tensor in (tensors or {}).items():
            self.register_buffer(name, tensor)

    def forward(self, x):
        return self.function(self, x)

    def extra_repr(self) -> str:
        return self.text


def _retargeted(module: nn.Module, find, op: str, target, swap: bool = False, drop=()) -> torch.fx.GraphModule:
    """Trace ``module`` and turn its first call of ``find`` into ``op``/``target``
    (for keys fx never records on its own: ``x.__radd__(2)``, ``F.sigmoid``)."""
    graph_module = torch.fx.symbolic_trace(module)
    for node in graph_module.graph.nodes:
        if node.target is find or node.target == find and isinstance(find, str):
            node.op, node.target = op, target
            if swap:
                node.args = (node.args[1], node.args[0], *node.args[2:])
            node.kwargs = {k: v for k, v in node.kwargs.items() if k not in drop}
            break
    else:
        raise AssertionError(f"{module.text}: no call of {find!r} to retarget")
    graph_module.recompile()
    return graph_module


OP_CASES: dict[Any, Callable[[], st.SearchStrategy]] = {}


def _cases(*keys):
    """Register ``factory(key)`` as the case strategy of every key."""

    def register(factory):
        for key in dict.fromkeys(keys):
            if key in OP_CASES:
                raise ValueError(f"two case factories for {key!r}")
            OP_CASES[key] = functools.partial(factory, key)
        return factory

    return register


def _name(key) -> str:
    return rules.key_name(key)


def _dims_of(key, default=(1, 2, 3)) -> tuple:
    text = key.__name__ if isinstance(key, type) else getattr(key, "__name__", str(key))
    for nd in (1, 2, 3):
        if text.endswith(f"{nd}d"):
            return (nd,)
    return default


_channel_counts = st.integers(1, 3)


def _pre_layers(dims: int):
    """Nothing, or a small pool in front of the op: its input is then a
    floor expression, not the bare symbol.  A 1-d case always has one: a
    one-part input (``H``) means a square image unless a layer says 1-d."""
    pools = pool_layers(dims, max_kernel_size=3, max_stride=2)
    return pools if dims == 1 else st.one_of(st.none(), pools)


def _pre_text(pre) -> str:
    return "x" if pre is None else "pre(x)"


def _call_case(key, dims, channels, function, text, pre=None, modules=None, tensors=None, **extra):
    modules = dict(modules or {})
    if pre is not None:
        modules["pre"] = pre

    def forward(self, x, function=function):
        return function(self, self.pre(x) if pre is not None else x)

    if pre is not None:
        text = f"{text} with pre={pre!r}"
    module = _Call(forward, text, modules, tensors).eval()
    return OpCase(key, module, channels, dims, text, **extra)


# --- convolutions -----------------------------------------------------------


@_cases(nn.Conv1d, nn.Conv2d, nn.Conv3d)
@st.composite
def _conv_module_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    layer = draw(conv_layers(nd, in_channels=c))
    pre = draw(_pre_layers(nd))
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


@_cases(F.conv1d, F.conv2d, F.conv3d)
@st.composite
def _functional_conv_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    layer = draw(conv_layers(nd, in_channels=c, padding_modes=("zeros",)))
    weight = torch.randn(layer.weight.shape)
    bias = torch.randn(layer.out_channels) if draw(st.booleans()) else None
    stride, padding, dilation, groups = layer.stride, layer.padding, layer.dilation, layer.groups
    pre = draw(_pre_layers(nd))

    def forward(self, x):
        return key(x, self.weight, self.bias if bias is not None else None, stride, padding, dilation, groups)

    text = f"{_name(key)}({_pre_text(pre)}, weight{tuple(weight.shape)}, stride={stride}, padding={padding!r}, dilation={dilation}, groups={groups})"
    return _call_case(key, nd, c, forward, text, pre, tensors={"weight": weight, "bias": bias})


@_cases(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
@st.composite
def _transposed_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    layer = draw(transposed_conv_layers(nd, in_channels=c))
    pre = draw(_pre_layers(nd))
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


# --- pooling ------------------------------------------------------------------


@_cases(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
@st.composite
def _pool_module_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    layer = draw(pool_layers(nd, kinds=("max",) if key.__name__.startswith("Max") else ("avg",)))
    if key.__name__.startswith("Max"):
        layer.return_indices = draw(st.booleans())  # then the forward returns (values, indices)
    pre = draw(_pre_layers(nd))
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


@_cases(F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
        F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
@st.composite
def _functional_pool_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    is_max = "max" in key.__name__
    kernel, stride, padding, dilation, ceil_mode = draw(_pool_parameters(nd, 4, 3, 2 if is_max else 1))
    pre = draw(_pre_layers(nd))
    if key in (F.max_pool1d, F.max_pool2d, F.max_pool3d):
        call = functools.partial(key, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                                 ceil_mode=ceil_mode)
    elif is_max:  # torch.max_poolNd: stride=[] means "the kernel"
        call = lambda x: key(x, kernel, stride if stride is not None else [], padding, dilation, ceil_mode)  # noqa: E731
    else:
        include_pad = draw(st.booleans())
        call = lambda x: key(x, kernel, stride if stride is not None else kernel, padding, ceil_mode, include_pad)  # noqa: E731
    text = f"{_name(key)}({_pre_text(pre)}, kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation}, ceil_mode={ceil_mode})"
    return _call_case(key, nd, c, lambda self, x: call(x), text, pre)


_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ADAPTIVE_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                       F.adaptive_max_pool2d, F.adaptive_max_pool3d)


@_cases(*_ADAPTIVE_MODULES, *_ADAPTIVE_FUNCTIONS)
@st.composite
def _adaptive_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    targets = st.integers(1, 6) if nd == 1 else st.one_of(st.integers(1, 6), st.none())
    output_size = draw(st.integers(1, 6)) if nd == 1 else draw(st.one_of(
        st.integers(1, 6), st.tuples(*[targets] * nd)))
    pre = draw(_pre_layers(nd))
    if isinstance(key, type):
        # a max pool may return (values, indices)
        layer = key(output_size, return_indices=True) if "Max" in key.__name__ and draw(st.booleans()) else key(output_size)
        return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})
    text = f"{_name(key)}({_pre_text(pre)}, {output_size!r})"
    return _call_case(key, nd, c, lambda self, x: key(x, output_size), text, pre)


_WITH_INDICES = {F.max_pool1d_with_indices: F.max_pool1d, F.max_pool2d_with_indices: F.max_pool2d,
                 F.max_pool3d_with_indices: F.max_pool3d, F.adaptive_max_pool1d_with_indices: F.adaptive_max_pool1d,
                 F.adaptive_max_pool2d_with_indices: F.adaptive_max_pool2d,
                 F.adaptive_max_pool3d_with_indices: F.adaptive_max_pool3d}


@_cases(*_WITH_INDICES)
@st.composite
def _pool_with_indices_cases(draw, key):
    """F.max_pool2d(x, ..., return_indices=True), which fx records as
    max_pool2d_with_indices; the forward returns (values, indices), one of
    them."""
    public = _WITH_INDICES[key]
    (nd,) = _dims_of(public)
    c = draw(_channel_counts)
    if "adaptive" in key.__name__:
        output_size = draw(st.integers(1, 6))
        call = lambda x: public(x, output_size, return_indices=True)  # noqa: E731
        shown = f"{output_size!r}"
    else:
        kernel, stride, padding, dilation, ceil_mode = draw(_pool_parameters(nd, 4, 3, 2))
        call = lambda x: public(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)  # noqa: E731
        shown = f"kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation}, ceil_mode={ceil_mode}"
    pick = draw(st.sampled_from(("both", "values", "indices")))
    pre = draw(_pre_layers(nd))

    def forward(self, x):
        values, indices = call(x)
        return (values, indices) if pick == "both" else values if pick == "values" else indices

    text = f"{_name(public)}({_pre_text(pre)}, {shown}, return_indices=True) -> {pick}"
    return _call_case(key, nd, c, forward, text, pre)


_UNPOOL_MODULES = (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)
_UNPOOL_FUNCTIONS = (F.max_unpool1d, F.max_unpool2d, F.max_unpool3d)


@_cases(*_UNPOOL_MODULES, *_UNPOOL_FUNCTIONS)
@st.composite
def _unpool_cases(draw, key):
    """SegNet's pattern: pool with indices, then unpool back to the pooled
    input's size (x.shape[2:] or x.size()), so every index lands inside the
    output.  Without output_size an index can fall outside when the pooled
    input was larger than the default output: that depends on the values,
    so the cases always pass one."""
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    kernel, stride, padding, dilation, ceil_mode = draw(_pool_parameters(nd, 4, 3, 1))
    pool = _MAXPOOL[nd](kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    whole = draw(st.booleans())  # output_size with batch and channel, as x.size() gives it
    pre = draw(_pre_layers(nd))
    if isinstance(key, type):
        unpool = key(kernel, stride, padding)

        def forward(self, x):
            values, indices = self.pool(x)
            return self.unpool(values, indices, output_size=x.size() if whole else x.shape[2:])

        modules = {"pool": pool, "unpool": unpool}
        text = f"{unpool!r}({pool!r}({_pre_text(pre)}), output_size={'x.size()' if whole else 'x.shape[2:]'})"
    else:
        def forward(self, x):
            values, indices = self.pool(x)
            return key(values, indices, kernel, stride, padding, output_size=x.size() if whole else x.shape[2:])

        modules = {"pool": pool}
        text = f"{_name(key)}({pool!r}({_pre_text(pre)}), kernel={kernel}, stride={stride}, padding={padding})"
    return _call_case(key, nd, c, forward, text, pre, modules)


# --- resampling ------------------------------------------------------------


@_cases(F.interpolate, F.upsample, nn.Upsample)
@st.composite
def _resampling_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    if key is nn.Upsample:
        layer = draw(resampling_layers(nd))
        return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})
    kwargs = draw(_resampling_parameters(nd, _RESAMPLING_MODES[nd], 32, DYADIC_SCALE_FACTORS))
    if key is F.upsample:
        kwargs.pop("recompute_scale_factor", None)  # F.upsample predates it
    # size= taken from the input before `pre`: resize back to the input size
    back_to_input = pre is not None and "size" in kwargs and draw(st.booleans())
    if back_to_input:
        del kwargs["size"]

    def forward(self, x):
        size = {"size": x.shape[2:]} if back_to_input else {}
        y = self.pre(x) if pre is not None else x
        return F.interpolate(y, **size, **kwargs)

    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    text = f"{_name(key)}({_pre_text(pre)}{', size=x.shape[2:]' if back_to_input else ''}, {shown})"
    if pre is not None:
        text = f"{text} with pre={pre!r}"
    module = _Call(forward, text, {"pre": pre} if pre is not None else {}).eval()
    if key is F.upsample:
        module = _retargeted(module, F.interpolate, "call_function", F.upsample,
                             drop=("recompute_scale_factor", "antialias"))
    return OpCase(key, module, c, nd, text)


# --- padding ------------------------------------------------------------------

_PAD_MODULES = {
    "constant": (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d),
    "reflect": (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d),
    "replicate": (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
    "circular": (nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d),
}


def _pad_amounts(mode: str):
    # Negative amounts crop, in every mode (mixed signs included).
    return st.integers(-3, 4)


@_cases(*[m for group in _PAD_MODULES.values() for m in group])
@st.composite
def _pad_module_cases(draw, key):
    (nd,) = _dims_of(key)
    mode = next(mode for mode, group in _PAD_MODULES.items() if key in group)
    c = draw(_channel_counts)
    padding = draw(st.one_of(_pad_amounts(mode), st.tuples(*[_pad_amounts(mode)] * (2 * nd))))
    layer = key(padding, 0.5) if key.__name__.startswith("Constant") else key(padding)
    pre = draw(_pre_layers(nd))
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


@_cases(F.pad)
@st.composite
def _functional_pad_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    mode = draw(st.sampled_from(("constant", "reflect", "replicate", "circular")))
    # any length: a non-constant mode refuses most of them at every size
    axes = draw(st.integers(1, nd + 1))
    pad = draw(st.tuples(*[_pad_amounts(mode)] * (2 * axes)))
    pre = draw(_pre_layers(nd))
    text = f"F.pad({_pre_text(pre)}, {pad}, mode={mode!r})"
    return _call_case(key, nd, c, lambda self, x: F.pad(x, pad, mode=mode), text, pre)


# --- shape-preserving ops ------------------------------------------------------


def _pointwise_module(key, c: int, nd: int, draw):
    if key is nn.PReLU:
        return nn.PReLU(draw(st.sampled_from((1, c))))
    if key is nn.GroupNorm:
        return nn.GroupNorm(draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0])), c)
    if key in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        return key(c, affine=draw(st.booleans()), track_running_stats=draw(st.booleans()))
    if key is nn.LayerNorm:
        return nn.LayerNorm(draw(st.lists(st.integers(1, 5), min_size=1, max_size=nd).map(tuple)))
    if key is nn.LocalResponseNorm:
        return nn.LocalResponseNorm(draw(st.integers(1, 3)))
    if key in (nn.Softmax, nn.LogSoftmax):
        return key(dim=draw(st.integers(-nd - 2, nd + 1)))
    if key in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        return key(draw(st.sampled_from((0.0, 0.5))))
    if key is nn.LeakyReLU:
        return nn.LeakyReLU(0.1)
    return key()


#: the registry's shape-keeping ops (activations, dropout, norms, dtype and
#: device moves): a rule added to one of them gets its case here unedited
_POINTWISE_KEYS = tuple(key for key, found in rules.RULES.items()
                        if found.name in ("shape_preserving", "layer_norm", "group_norm", "instance_norm"))
_POINTWISE_MODULES = tuple(key for key in _POINTWISE_KEYS if isinstance(key, type))
_POINTWISE_METHODS = tuple(key for key in _POINTWISE_KEYS if isinstance(key, str))
_POINTWISE_FUNCTIONS = tuple(key for key in _POINTWISE_KEYS if not isinstance(key, (type, str)))


@_cases(*_POINTWISE_MODULES)
@st.composite
def _pointwise_module_cases(draw, key):
    if key is nn.Softmax2d:
        dims = (2,)
    elif key is nn.Dropout1d:
        dims = (1,)
    elif key is nn.Dropout2d:
        dims = (2,)
    elif key is nn.Dropout3d:
        dims = (3,)
    else:
        dims = _dims_of(key)
    nd = draw(st.sampled_from(dims))
    c = draw(_channel_counts)
    layer = _pointwise_module(key, c, nd, draw)
    pre = draw(_pre_layers(nd))
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


def _pointwise_call(key, c: int, nd: int, draw) -> tuple[Callable, str, dict]:
    """The call of a pointwise function ``key`` as (call(self, x), text, buffers)."""
    name = _name(key)
    if key in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize):
        dim = draw(st.integers(-nd - 2, nd + 1))
        return (lambda self, x: key(x, dim)), f"{name}(x, {dim})", {}
    if key is F.group_norm:
        groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        return (lambda self, x: F.group_norm(x, groups)), f"F.group_norm(x, {groups})", {}
    if key is F.layer_norm:
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=nd)))
        return (lambda self, x: F.layer_norm(x, shape)), f"F.layer_norm(x, {shape})", {}
    if key is F.instance_norm:
        if draw(st.booleans()):
            return (lambda self, x: F.instance_norm(x)), "F.instance_norm(x)", {}
        call = lambda self, x: F.instance_norm(x, self.mean, self.var, use_input_stats=False)  # noqa: E731
        return call, "F.instance_norm(x, mean, var, use_input_stats=False)", {"mean": torch.zeros(c), "var": torch.ones(c)}
    if key in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
        return (lambda self, x: key(x, 0.5, False)), f"{name}(x, 0.5, training=False)", {}
    if key is F.leaky_relu:
        return (lambda self, x: F.leaky_relu(x, 0.2)), "F.leaky_relu(x, 0.2)", {}
    if key is torch.clamp:
        return (lambda self, x: torch.clamp(x, min=0.0, max=1.0)), "torch.clamp(x, 0, 1)", {}
    if key is torch.sqrt:
        return (lambda self, x: torch.sqrt(x.abs())), "torch.sqrt(x.abs())", {}
    return (lambda self, x: key(x)), f"{name}(x)", {}


#: functions fx records as something else (F.sigmoid calls x.sigmoid())
_TRACED_AS = {F.sigmoid: ("call_method", "sigmoid"), F.tanh: ("call_method", "tanh")}


@_cases(*_POINTWISE_FUNCTIONS)
@st.composite
def _pointwise_function_cases(draw, key):
    dims = {F.dropout1d: (1,), F.dropout2d: (2,), F.dropout3d: (3,)}.get(key, (1, 2, 3))
    nd = draw(st.sampled_from(dims))
    c = draw(_channel_counts)
    call, text, tensors = _pointwise_call(key, c, nd, draw)
    pre = draw(_pre_layers(nd))
    case = _call_case(key, nd, c, call, text.replace("(x", f"({_pre_text(pre)}", 1), pre, tensors=tensors)
    if key in _TRACED_AS:
        op, target = _TRACED_AS[key]
        return OpCase(key, _retargeted(case.module, target, "call_function", key), c, nd, case.text)
    return case


_METHOD_ARGUMENTS = {
    "clamp": ((), {"min": 0.0}), "clamp_": ((), {"max": 1.0}), "softmax": ((1,), {}), "log_softmax": ((-1,), {}),
    "to": ((torch.float64,), {}), "type": ((torch.float64,), {}), "mul_": ((2.0,), {}), "add_": ((1.0,), {}),
    "div_": ((2.0,), {}),
}


@_cases(*_POINTWISE_METHODS)
@st.composite
def _pointwise_method_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    args, kwargs = _METHOD_ARGUMENTS.get(key, ((), {}))
    pre = draw(_pre_layers(nd))
    if key == "type_as":
        call = lambda self, x: x.type_as(x.double())  # noqa: E731
        text = f"{_pre_text(pre)}.type_as({_pre_text(pre)}.double())"
    elif key == "sqrt":
        call = lambda self, x: x.abs().sqrt()  # noqa: E731
        text = f"{_pre_text(pre)}.abs().sqrt()"
    else:
        call = lambda self, x: getattr(x, key)(*args, **kwargs)  # noqa: E731
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        text = f"{_pre_text(pre)}.{key}({shown})"
    return _call_case(key, nd, c, call, text, pre, needs_cuda=key == "cuda")


@_cases(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, F.batch_norm)
@st.composite
def _batch_norm_cases(draw, key):
    nd = draw(st.sampled_from(_dims_of(key)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    if key is F.batch_norm:
        text = f"F.batch_norm({_pre_text(pre)}, running_mean, running_var, training=False)"
        call = lambda self, x: F.batch_norm(x, self.running_mean, self.running_var, training=False)  # noqa: E731
        return _call_case(key, nd, c, call, text, pre,
                          tensors={"running_mean": torch.zeros(c), "running_var": torch.ones(c)})
    layer = key(c).eval()
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


# --- arithmetic and merges -------------------------------------------------------

_BINARY = {
    operator.add: operator.add, torch.add: operator.add, "add": operator.add, "__add__": operator.add,
    "__radd__": operator.add, operator.sub: operator.sub, torch.sub: operator.sub, "sub": operator.sub,
    "__sub__": operator.sub, "__rsub__": operator.sub, operator.mul: operator.mul, torch.mul: operator.mul,
    "mul": operator.mul, "__mul__": operator.mul, "__rmul__": operator.mul, operator.truediv: operator.truediv,
    torch.div: operator.truediv, torch.true_divide: operator.truediv, "div": operator.truediv,
    "__truediv__": operator.truediv, operator.floordiv: operator.floordiv, "__floordiv__": operator.floordiv,
    torch.maximum: torch.maximum, torch.minimum: torch.minimum,
}
#: dunder methods fx records as operator calls; the case retargets the node
_DUNDER = {"__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__floordiv__"}


def _binary_call(key) -> Callable:
    """``call(a, b)`` calling exactly ``key`` (dunders are retargeted later)."""
    if key in _DUNDER or callable(key) and key.__module__ == "_operator":
        return _BINARY[key]
    if isinstance(key, str):
        return lambda a, b: getattr(a, key)(b)
    return key


def _branch_layers(nd: int):
    """A second path from the same tensor: its sizes may differ (then the
    merge's domain is where they agree or one is 1)."""
    global_pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[nd]
    return st.one_of(pool_layers(nd, max_kernel_size=3, max_stride=2),
                     st.builds(nn.Identity), st.builds(global_pool, st.just(1)))


@_cases(*_BINARY)
@st.composite
def _binary_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    call = _binary_call(key)
    swap = key in ("__radd__", "__rsub__", "__rmul__")
    tensor_only = key in (torch.maximum, torch.minimum)
    forms = ["scalar", "reduced", "branch"] if not tensor_only else ["reduced", "branch"]
    if callable(key) and getattr(key, "__module__", None) == "_operator" or key == "__floordiv__":
        forms.append("size")
    if key in _DUNDER:
        forms = ["scalar"]
    form = draw(st.sampled_from(forms))
    s = _pre_text(pre)
    modules = {}
    if form == "scalar":
        scalar = draw(st.sampled_from((2, 3, 0.5)))
        body = (lambda self, x: call(scalar, x)) if swap else (lambda self, x: call(x, scalar))
        text = f"{s}.{key}({scalar})" if key in _DUNDER else f"{_name(key)}({s}, {scalar})"
    elif form == "reduced":
        axis = draw(st.integers(2, nd + 1))
        body = lambda self, x: call(x, x.amax(axis, keepdim=True))  # noqa: E731
        text = f"{_name(key)}({s}, {s}.amax({axis}, keepdim=True))"
    elif form == "branch":
        modules["branch"] = draw(_branch_layers(nd))
        first = draw(st.booleans())
        body = (lambda self, x: call(x, self.branch(x))) if first else (lambda self, x: call(self.branch(x), x))
        text = f"{_name(key)}({s}, branch({s}))" if first else f"{_name(key)}(branch({s}), {s})"
        text += f" with branch={modules['branch']!r}"
    else:
        # sizes: x[..., :size op c] on the last axis, exercising the rule on ints
        c2 = draw(st.integers(1, 4))
        body = lambda self, x: x[..., : call(x.size(-1), c2)]  # noqa: E731
        if key in (operator.truediv,):
            body = lambda self, x: x[..., : int(call(x.size(-1), c2))]  # noqa: E731
        text = f"{s}[..., :{_name(key)}({s}.size(-1), {c2})]"
    case = _call_case(key, nd, c, body, text, pre, modules)
    if key in _DUNDER:
        module = _retargeted(case.module, call, "call_method", key, swap=swap)
        return OpCase(key, module, c, nd, case.text)
    return case


@_cases(operator.mod, operator.neg)
@st.composite
def _size_arithmetic_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    q = draw(st.integers(1, 5))
    if key is operator.mod:
        if draw(st.booleans()):
            body, text = (lambda self, x: x % q), f"x % {q}"
        else:
            body, text = (lambda self, x: x[..., x.size(-1) % q:]), f"x[..., x.size(-1) % {q}:]"
    elif draw(st.booleans()):
        body, text = (lambda self, x: -x), "-x"
    else:
        body, text = (lambda self, x: x[..., -(x.size(-1) // q):]), f"x[..., -(x.size(-1) // {q}):]"
    return _call_case(key, nd, c, body, text.replace("x", _pre_text(pre)), pre)


@_cases(torch.cat, torch.concat, torch.concatenate, torch.stack)
@st.composite
def _concatenation_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    branch = draw(st.one_of(_branch_layers(nd), conv_layers(nd, in_channels=c, max_kernel_size=3, max_stride=2,
                                                            padding_modes=("zeros",))))
    dim = draw(st.integers(-(nd + 2), nd + 1)) if key is not torch.stack else draw(st.integers(-(nd + 3), nd + 2))
    call = (lambda a, b: key((a, b), dim=dim)) if key is not torch.concatenate else (lambda a, b: key((a, b), axis=dim))
    first = draw(st.booleans())
    body = (lambda self, x: call(x, self.branch(x))) if first else (lambda self, x: call(self.branch(x), x))
    s = _pre_text(pre)
    pair = f"{s}, branch({s})" if first else f"branch({s}), {s}"
    text = f"{_name(key)}(({pair}), {dim}) with branch={branch!r}"
    return _call_case(key, nd, c, body, text, pre, {"branch": branch})


# --- sizes and indexing ----------------------------------------------------------


@st.composite
def _slice_bounds(draw, axis: int):
    """A slice of ``axis``: None, a constant (negative or past the end), or
    computed from ``x.size(axis)``; traced slices carry the size nodes."""
    def bound():
        return st.one_of(
            st.none(),
            st.integers(-12, 12).map(lambda v: ("const", v)),
            st.tuples(st.sampled_from(("minus", "half", "neg_half")), st.integers(0, 5)))
    return draw(bound()), draw(bound()), draw(st.sampled_from((None, 1, 2, 3)))


def _bound_value(x, axis: int, spec):
    if spec is None:
        return None
    kind, v = spec
    if kind == "const":
        return v
    n = x.size(axis)
    if kind == "minus":
        return n - v
    if kind == "half":
        return n // 2 + v
    return -(n // 2) - v


def _bound_text(axis: int, spec) -> str:
    if spec is None:
        return ""
    kind, v = spec
    return {"const": f"{v}", "minus": f"x.size({axis}) - {v}", "half": f"x.size({axis}) // 2 + {v}",
            "neg_half": f"-(x.size({axis}) // 2) - {v}"}[kind]


@_cases(operator.getitem)
@st.composite
def _getitem_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    slices = [draw(_slice_bounds(axis)) for axis in range(2, 2 + nd)]
    channel = draw(st.sampled_from(("all", "index", "newaxis", "ellipsis")))

    def body(self, x):
        spatial = tuple(slice(_bound_value(x, a, lo), _bound_value(x, a, hi), step)
                        for a, (lo, hi, step) in zip(range(2, 2 + nd), slices))
        if channel == "index":
            return x[:, 0, *spatial]
        if channel == "newaxis":
            return x[:, None, :, *spatial]
        if channel == "ellipsis":
            return x[..., *spatial]
        return x[:, :, *spatial]

    shown = ", ".join(f"{_bound_text(a, lo)}:{_bound_text(a, hi)}" + (f":{step}" if step else "")
                      for a, (lo, hi, step) in zip(range(2, 2 + nd), slices))
    head = {"all": ":, :, ", "index": ":, 0, ", "newaxis": ":, None, :, ", "ellipsis": "..., "}[channel]
    text = f"x[{head}{shown}]" if pre is None else f"x = pre(x); x[{head}{shown}]"
    return _call_case(key, nd, c, body, text, pre)


@_cases("size", "dim", builtins.getattr, builtins.len, builtins.int)
@st.composite
def _size_query_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    v = draw(st.integers(0, 3))
    if key == "size":
        if draw(st.booleans()):
            body, text = (lambda self, x: x[..., : x.size()[-1] - v]), f"x[..., :x.size()[-1] - {v}]"
        else:
            body, text = (lambda self, x: x[:, :, x.size(2) // 2:]), "x[:, :, x.size(2) // 2:]"
    elif key == "dim":
        body, text = (lambda self, x: x.sum(x.dim() - 1, keepdim=True)), "x.sum(x.dim() - 1, keepdim=True)"
    elif key is builtins.getattr:
        if draw(st.booleans()):
            body, text = (lambda self, x: x[..., : x.shape[-1] - v]), f"x[..., :x.shape[-1] - {v}]"
        else:
            body, text = (lambda self, x: x.sum(x.ndim - 1)), "x.sum(x.ndim - 1)"
    elif key is builtins.len:
        body, text = (lambda self, x: x[:, :, : len(x.shape) + v]), f"x[:, :, :len(x.shape) + {v}]"
    else:
        # exact in double precision; 0.7 and friends are refused (test_rules)
        factor = draw(st.sampled_from((0.5, 0.25, 1.5, 0.75)))
        if draw(st.booleans()):
            body, text = (lambda self, x: x[..., : int(x.size(-1) * factor)]), f"x[..., :int(x.size(-1) * {factor})]"
        else:
            body, text = (lambda self, x: x[..., : int(x.size(-1) / (v + 2))]), f"x[..., :int(x.size(-1) / {v + 2})]"
    return _call_case(key, nd, c, body, text if pre is None else f"x = pre(x); {text}", pre)


# --- reshaping ----------------------------------------------------------------


@_cases("view", "reshape", torch.reshape)
@st.composite
def _reshape_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    call = (lambda x, *s: torch.reshape(x, s)) if key is torch.reshape else (lambda x, *s: getattr(x, key)(*s))
    form = draw(st.sampled_from(("same", "merge", "split_channels", "fixed_last")))
    if form == "same":
        body = lambda self, x: call(x, *[x.size(a) for a in range(nd + 2)])  # noqa: E731
        text = f"(x, {', '.join(f'x.size({a})' for a in range(nd + 2))})"
    elif form == "merge":
        body = lambda self, x: call(x, x.size(0), x.size(1), -1)  # noqa: E731
        text = "(x, x.size(0), x.size(1), -1)"
    elif form == "split_channels":
        body = lambda self, x: call(x, x.size(0), 1, x.size(1), *[x.shape[a] for a in range(2, nd + 2)])  # noqa: E731
        text = f"(x, x.size(0), 1, x.size(1), {', '.join(f'x.shape[{a}]' for a in range(2, nd + 2))})"
    else:
        last = draw(st.integers(1, 4))
        body = lambda self, x: call(x, 1, c, -1, last)  # noqa: E731
        text = f"(x, 1, {c}, -1, {last})"
    return _call_case(key, nd, c, body, f"{_name(key)}{text.replace('x', _pre_text(pre))}", pre)


@_cases(torch.flatten, "flatten", nn.Flatten)
@st.composite
def _flatten_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    start = draw(st.integers(0, nd + 1))
    end = draw(st.integers(start, nd + 1)) - (nd + 2) * draw(st.booleans())
    if key is nn.Flatten:
        layer = nn.Flatten(start, end)
        return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})
    if key is torch.flatten:
        body = lambda self, x: torch.flatten(x, start, end)  # noqa: E731
    else:
        body = lambda self, x: x.flatten(start, end)  # noqa: E731
    return _call_case(key, nd, c, body, f"{_name(key)}({_pre_text(pre)}, {start}, {end})", pre)


@_cases(nn.Linear)
@st.composite
def _linear_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    flatten = nd == 1 and draw(st.booleans())
    # on the last (spatial) axis: the domain is the one size that matches
    layer = nn.Linear(draw(st.integers(1, 6)) * (c if flatten else 1), draw(st.integers(1, 3)))
    if flatten:
        return _call_case(key, nd, c, lambda self, x: self.op(x.flatten(1)),
                          f"{layer!r}({_pre_text(pre)}.flatten(1))", pre, {"op": layer})
    return _call_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}({_pre_text(pre)})", pre, {"op": layer})


@_cases("permute", torch.permute, "transpose", torch.transpose)
@st.composite
def _reorder_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    if key in ("permute", torch.permute):
        order = tuple(draw(st.permutations(range(nd + 2))))
        order = tuple(a - (nd + 2) if draw(st.booleans()) else a for a in order)
        body = (lambda self, x: x.permute(*order)) if key == "permute" else (lambda self, x: torch.permute(x, order))
        text = f"{_name(key)}({_pre_text(pre)}, {order})"
    else:
        a, b = draw(st.integers(-(nd + 2), nd + 1)), draw(st.integers(-(nd + 2), nd + 1))
        body = (lambda self, x: x.transpose(a, b)) if key == "transpose" else (lambda self, x: torch.transpose(x, a, b))
        text = f"{_name(key)}({_pre_text(pre)}, {a}, {b})"
    return _call_case(key, nd, c, body, text, pre)


@_cases("unsqueeze", torch.unsqueeze, "squeeze", torch.squeeze)
@st.composite
def _rank_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    if key in ("unsqueeze", torch.unsqueeze):
        dim = draw(st.integers(-(nd + 3), nd + 2))
        body = (lambda self, x: x.unsqueeze(dim)) if key == "unsqueeze" else (lambda self, x: torch.unsqueeze(x, dim))
        return _call_case(key, nd, c, body, f"{_name(key)}({_pre_text(pre)}, {dim})", pre)
    # squeeze the batch axis, or a spatial axis pooled to size 1
    pooled = draw(st.booleans())
    dim = draw(st.integers(2, nd + 1)) if pooled else draw(st.sampled_from((0, (0,), -(nd + 2))))
    squeeze = (lambda t: t.squeeze(dim)) if key == "squeeze" else (lambda t: torch.squeeze(t, dim))
    if pooled:
        body = lambda self, x: squeeze(x.amax(dim, keepdim=True))  # noqa: E731
        text = f"{_name(key)}({_pre_text(pre)}.amax({dim}, keepdim=True), {dim})"
    else:
        body = lambda self, x: squeeze(x)  # noqa: E731
        text = f"{_name(key)}({_pre_text(pre)}, {dim})"
    return _call_case(key, nd, c, body, text, pre)


@_cases("mean", "sum", "amax", "amin", torch.mean, torch.sum, torch.amax, torch.amin)
@st.composite
def _reduction_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    axes = draw(st.lists(st.integers(1, nd + 1), min_size=1, max_size=nd + 1, unique=True))
    dim = axes[0] if len(axes) == 1 and draw(st.booleans()) else tuple(axes)
    keepdim = draw(st.booleans())
    # a crop may empty the last axis first: sum/mean of nothing is fine, amax is not
    crop = draw(st.sampled_from((0, 0, 3, 6)))
    if isinstance(key, str):
        body = lambda self, x: getattr(x[..., crop:], key)(dim, keepdim=keepdim)  # noqa: E731
        text = f"{_pre_text(pre)}[..., {crop}:].{key}({dim}, keepdim={keepdim})"
    else:
        body = lambda self, x: key(x[..., crop:], dim, keepdim=keepdim)  # noqa: E731
        text = f"{_name(key)}({_pre_text(pre)}[..., {crop}:], {dim}, keepdim={keepdim})"
    return _call_case(key, nd, c, body, text, pre)


# --- ops that return several tensors ---------------------------------------------


def _invoke(key, x, *args, **kwargs):
    """``x.key(...)`` for a method name, ``key(x, ...)`` for a function."""
    return getattr(x, key)(*args, **kwargs) if isinstance(key, str) else key(x, *args, **kwargs)


def _picked(result, pick):
    """One part of a (values, indices) result, as models take it."""
    if pick == "both":
        return result
    if pick in ("values", "indices"):
        return getattr(result, pick)
    return result[pick]


_PICKS = st.sampled_from(("both", 0, 1, "values", "indices"))


@_cases(torch.max, torch.min, "max", "min")
@st.composite
def _max_min_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    form = draw(st.sampled_from(("all", "dim", "dim_keyword", "other")))
    # a crop may empty the last axis: max over nothing is an error
    crop = draw(st.sampled_from((0, 0, 3, 6)))
    dim = draw(st.integers(-(nd + 2), nd + 1))
    keepdim = draw(st.booleans())
    pick = draw(_PICKS)

    def body(self, x):
        x = x[..., crop:]
        if form == "all":
            return _invoke(key, x)
        if form == "other":
            return _invoke(key, x, x * 2)
        if form == "dim":
            return _picked(_invoke(key, x, dim, keepdim), pick)
        return _picked(_invoke(key, x, dim=dim, keepdim=keepdim), pick)

    text = f"{_name(key)}({_pre_text(pre)}[..., {crop}:], form={form}, dim={dim}, keepdim={keepdim}) -> {pick}"
    return _call_case(key, nd, c, body, text, pre)


@_cases(torch.sort, "sort", torch.topk, "topk")
@st.composite
def _order_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    dim = draw(st.integers(-(nd + 2), nd + 1))
    pick = draw(_PICKS)
    if key in (torch.sort, "sort"):
        descending = draw(st.booleans())
        body = lambda self, x: _picked(_invoke(key, x, dim, descending), pick)  # noqa: E731
        text = f"{_name(key)}({_pre_text(pre)}, {dim}, descending={descending}) -> {pick}"
    else:
        k = draw(st.integers(0, 6))
        largest = draw(st.booleans())
        body = lambda self, x: _picked(_invoke(key, x, k, dim, largest), pick)  # noqa: E731
        text = f"{_name(key)}({_pre_text(pre)}, {k}, {dim}, largest={largest}) -> {pick}"
    return _call_case(key, nd, c, body, text, pre)


@_cases(torch.split, "split")
@st.composite
def _split_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    a = draw(st.integers(2, nd + 1))  # a spatial axis
    v = draw(st.integers(0, 4))
    form = draw(st.sampled_from(("channels_int", "channels_list", "spatial_rest", "spatial_fixed", "spatial_short")))
    if form == "channels_int":
        size = draw(st.integers(1, 4))
        body, text = (lambda self, x: _invoke(key, x, size, 1)), f"({{x}}, {size}, 1)"
    elif form == "channels_list":
        sizes = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))  # must add up to the channels
        body, text = (lambda self, x: _invoke(key, x, sizes, 1)), f"({{x}}, {sizes}, 1)"
    elif form == "spatial_rest":
        body, text = (lambda self, x: _invoke(key, x, [x.shape[a] - v, v], a)), f"({{x}}, [x.shape[{a}] - {v}, {v}], {a})"
    elif form == "spatial_fixed":
        sizes = [v, draw(st.integers(0, 4))]  # the one size they add up to
        body, text = (lambda self, x: _invoke(key, x, sizes, a)), f"({{x}}, {sizes}, {a})"
    else:
        # an axis cut to at most v + 1 fits one piece of v + 1: one tensor at every size
        body = lambda self, x: _invoke(key, x[(slice(None),) * a + (slice(0, v + 1),)], v + 1, a)  # noqa: E731
        text = f"({{x}}[{':, ' * a}:{v + 1}], {v + 1}, {a})"
    return _call_case(key, nd, c, body, f"{_name(key)}{text.format(x=_pre_text(pre))}", pre)


@_cases(torch.chunk, "chunk")
@st.composite
def _chunk_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    a = draw(st.integers(2, nd + 1))
    chunks = draw(st.integers(1, 4))
    form = draw(st.sampled_from(("channels", "spatial_one", "spatial_multiple", "spatial_fixed")))
    if form == "channels":
        # 3 channels in 2 chunks: pieces of 2 and 1; in 4 chunks: only 3 pieces
        body, text = (lambda self, x: _invoke(key, x, chunks, 1)), f"({{x}}, {chunks}, 1)"
    elif form == "spatial_one":
        body, text = (lambda self, x: _invoke(key, x, 1, a)), f"({{x}}, 1, {a})"
    elif form == "spatial_multiple":
        # an axis cut to a multiple of `chunks`: `chunks` pieces at every size (empty ones at 0)
        def body(self, x):
            n = x.shape[a]
            return _invoke(key, x[(slice(None),) * a + (slice(0, n // chunks * chunks),)], chunks, a)
        text = f"({{x}}[{':, ' * a}:x.shape[{a}] // {chunks} * {chunks}], {chunks}, {a})"
    else:
        # a fixed length (at most 5): fewer pieces than asked where they run out (5 in 4: 2, 2, 1)
        length = draw(st.integers(1, 5))
        body = lambda self, x: _invoke(key, x[(slice(None),) * a + (slice(0, length),)].amax(a, keepdim=True).expand(  # noqa: E731
            *[-1] * a, length, *[-1] * (nd + 1 - a)), chunks, a)
        text = f"({{x}}[{':, ' * a}:{length}].amax({a}, keepdim=True).expand(..., {length}, ...), {chunks}, {a})"
    return _call_case(key, nd, c, body, f"{_name(key)}{text.format(x=_pre_text(pre))}", pre)


@_cases(torch.unbind, "unbind")
@st.composite
def _unbind_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    form = draw(st.sampled_from(("batch", "channels", "pooled")))
    if form == "pooled":
        a = draw(st.integers(2, nd + 1))  # a spatial axis reduced to one element
        body, text = (lambda self, x: _invoke(key, x.amax(a, keepdim=True), a)), f"({{x}}.amax({a}, keepdim=True), {a})"
    else:
        dim = 0 if form == "batch" else draw(st.sampled_from((1, -(nd + 1))))
        body, text = (lambda self, x: _invoke(key, x, dim)), f"({{x}}, {dim})"
    return _call_case(key, nd, c, body, f"{_name(key)}{text.format(x=_pre_text(pre))}", pre)


@_cases(torch.narrow, "narrow")
@st.composite
def _narrow_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    dim = draw(st.integers(1, nd + 1)) - (nd + 2) * draw(st.booleans())
    start = draw(st.integers(-4, 4))
    length = draw(st.integers(-1, 4))
    relative = draw(st.booleans())  # length = what remains after start, less length

    def body(self, x):
        if relative:
            return _invoke(key, x, dim, start, x.shape[dim] - abs(start) - length)
        return _invoke(key, x, dim, start, length)

    shown = f"x.shape[{dim}] - {abs(start)} - {length}" if relative else f"{length}"
    return _call_case(key, nd, c, body, f"{_name(key)}({_pre_text(pre)}, {dim}, {start}, {shown})", pre)


# --- broadcasting copies and reorderings ----------------------------------------------


@_cases("expand", "expand_as", "repeat")
@st.composite
def _copy_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    a = draw(st.integers(2, nd + 1))
    m = draw(st.integers(0, 4))
    if key == "repeat":
        counts = [draw(st.integers(0, 2)) for _ in range(nd + 2)]
        lead = draw(st.lists(st.integers(1, 2), max_size=1))
        body, text = (lambda self, x: x.repeat(*lead, *counts)), f"({{x}}, {tuple(lead + counts)})"
    elif key == "expand_as":
        # onto a tensor with the axis reduced to 1: a size-1 axis expands to the other's size
        body = lambda self, x: x.amax(a, keepdim=True).expand_as(x)  # noqa: E731
        text = f"({{x}}.amax({a}, keepdim=True), {{x}})"
    else:
        form = draw(st.sampled_from(("keep", "from_one", "fixed", "lead")))
        if form == "keep":
            body, text = (lambda self, x: x.expand(*[-1] * (nd + 2))), f"({{x}}, {(-1,) * (nd + 2)})"
        elif form == "from_one":
            body = lambda self, x: x.amax(a, keepdim=True).expand(*[-1] * a, m, *[-1] * (nd + 1 - a))  # noqa: E731
            text = f"({{x}}.amax({a}, keepdim=True), axis {a} to {m})"
        elif form == "fixed":
            # a size that matches only where the axis is m (or 1)
            body = lambda self, x: x.expand(*[-1] * a, m, *[-1] * (nd + 1 - a))  # noqa: E731
            text = f"({{x}}, axis {a} to {m})"
        else:
            body = lambda self, x: x.expand(2, *[x.shape[i] for i in range(nd + 2)])  # noqa: E731
            text = "({x}, 2, *x.shape)"
    return _call_case(key, nd, c, body, f"{_name(key)}{text.format(x=_pre_text(pre))}", pre)


@_cases(torch.flip, "flip", torch.roll, "roll")
@st.composite
def _reorder_in_place_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    dims = tuple(draw(st.lists(st.integers(-(nd + 2), nd + 1), min_size=1, max_size=2,
                               unique_by=lambda d: d % (nd + 2))))
    if key in (torch.flip, "flip"):
        body = (lambda self, x: torch.flip(x, dims)) if key is torch.flip else (lambda self, x: x.flip(*dims))
        text = f"({{x}}, {dims})"
    else:
        shifts = tuple(draw(st.integers(-5, 5)) for _ in dims)
        flat = draw(st.booleans())
        if flat:
            body = (lambda self, x: torch.roll(x, shifts[0])) if key is torch.roll else (lambda self, x: x.roll(shifts[0]))
            text = f"({{x}}, {shifts[0]})"
        else:
            body = (lambda self, x: torch.roll(x, shifts, dims)) if key is torch.roll else (lambda self, x: x.roll(shifts, dims))
            text = f"({{x}}, {shifts}, {dims})"
    return _call_case(key, nd, c, body, f"{_name(key)}{text.format(x=_pre_text(pre))}", pre)


# --- size comparisons, assertions, linear layers, sub-pixel rearrangements ------------

_COMPARISONS = {operator.eq: "==", operator.ne: "!=", operator.lt: "<", operator.le: "<=", operator.gt: ">",
                operator.ge: ">="}


@_cases(*_COMPARISONS, torch._assert)
@st.composite
def _comparison_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    compare = key if key in _COMPARISONS else draw(st.sampled_from(list(_COMPARISONS)))
    a = draw(st.integers(2, nd + 1))
    m, v = draw(st.integers(1, 4)), draw(st.integers(0, 8))
    form = draw(st.sampled_from(("size", "residue", "rank", "shape", "tensor") if compare in (operator.eq, operator.ne)
                                else ("size", "residue", "rank", "tensor")))
    shown = _COMPARISONS[compare]
    if form == "tensor":
        # an elementwise comparison of tensors: a bool tensor, no assertion
        return _call_case(key, nd, c, lambda self, x: compare(x, x * 2), f"x {shown} x * 2", pre) \
            if key in _COMPARISONS else _call_case(key, nd, c, lambda self, x: (torch._assert(compare(x.size(1), c), "c"), x)[1],
                                                   f"_assert(x.size(1) {shown} {c})", pre)
    if form == "size":
        condition, text = (lambda x: compare(x.shape[a], v)), f"x.shape[{a}] {shown} {v}"
    elif form == "residue":
        condition, text = (lambda x: compare(x.shape[a] % m, v % m)), f"x.shape[{a}] % {m} {shown} {v % m}"
    elif form == "rank":
        condition, text = (lambda x: compare(x.ndim, nd + v % 3)), f"x.ndim {shown} {nd + v % 3}"
    else:
        condition, text = (lambda x: compare(x.shape[2:], (v,) * nd)), f"x.shape[2:] {shown} {(v,) * nd}"

    def body(self, x):
        torch._assert(condition(x), f"the model asks {text}")
        return x

    return _call_case(key, nd, c, body, f"x = {_pre_text(pre)}; torch._assert({text})", pre)


@_cases(F.linear)
@st.composite
def _functional_linear_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    channel_last = draw(st.booleans())  # features on the channel axis moved last, spatial axes in front
    features = c if channel_last else draw(st.integers(1, 6))  # else the last spatial axis is the features
    out = draw(st.one_of(st.none(), st.integers(1, 3)))  # None: a 1-d weight
    weight = torch.randn(features) if out is None else torch.randn(out, features)
    bias = None if out is None or not draw(st.booleans()) else torch.randn(out)
    order = (0, *range(2, nd + 2), 1)

    def forward(self, x):
        x = x.permute(*order) if channel_last else x
        return F.linear(x, self.weight, self.bias if bias is not None else None)

    text = f"F.linear({_pre_text(pre)}{f'.permute{order}' if channel_last else ''}, weight{tuple(weight.shape)})"
    return _call_case(key, nd, c, forward, text, pre, tensors={"weight": weight, "bias": bias})


@_cases(nn.PixelShuffle, nn.PixelUnshuffle, F.pixel_shuffle, F.pixel_unshuffle)
@st.composite
def _pixel_rearrangement_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    factor = draw(st.integers(1, 3))
    shuffle = key in (nn.PixelShuffle, F.pixel_shuffle)
    # a 1x1 conv to a channel count that may or may not be a multiple of factor**2
    channels = draw(st.integers(1, 9)) if shuffle else c
    conv = nn.Conv1d(c, channels, 1) if nd == 1 else nn.Conv2d(c, channels, 1) if nd == 2 else nn.Conv3d(c, channels, 1)
    if isinstance(key, type):
        layer = key(factor)
        body = lambda self, x: self.op(self.conv(x))  # noqa: E731
        text = f"{layer!r}({conv!r}({_pre_text(pre)}))"
        return _call_case(key, nd, c, body, text, pre, {"op": layer, "conv": conv})
    body = lambda self, x: key(self.conv(x), factor)  # noqa: E731
    return _call_case(key, nd, c, body, f"{_name(key)}({conv!r}({_pre_text(pre)}), {factor})", pre, {"conv": conv})


# --- new tensors, library ops keyed by name, matrix products, axis moves ---------------


@_cases(torch.empty, torch.zeros, torch.ones)
@st.composite
def _new_tensor_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    a = draw(st.integers(2, nd + 1))
    k, q = draw(st.integers(-2, 6)), draw(st.integers(1, 3))
    typed = draw(st.booleans())  # fx records a size list only (torch.empty(*proxies) does not trace)

    def body(self, x):
        sizes = [x.shape[0], 0, x.shape[a] // q - k]  # smp's dummy feature: (B, 0, H // 2, W // 2)
        return key(sizes, dtype=x.dtype, device=x.device) if typed else key(sizes)

    text = f"{_name(key)}(x.shape[0], 0, x.shape[{a}] // {q} - {k}, dtype=x.dtype) of {_pre_text(pre)}"
    return _call_case(key, nd, c, body, text, pre)


def _torchvision_ops():
    """torchvision.ops, or skip the case: shapecalc does not depend on torchvision."""
    import unittest

    try:
        import torchvision.ops
    except Exception as error:  # not installed, or its compiled ops do not load
        raise unittest.SkipTest(f"torchvision.ops does not import ({type(error).__name__})") from None
    return torchvision.ops


@_cases(rules.QualifiedName("torchvision.ops.stochastic_depth.stochastic_depth"))
@st.composite
def _stochastic_depth_cases(draw, key):
    ops = _torchvision_ops()
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    p = draw(st.sampled_from((0.0, 0.2, 1.0, 1.5)))
    mode = draw(st.sampled_from(("row", "batch", "col")))
    training = draw(st.booleans())
    # through the module: fx records the function only where torchvision calls it
    layer = ops.StochasticDepth(p, mode)
    case = _call_case(key, nd, c, lambda self, x: self.op(x) * 2,
                      f"{layer!r}(training={training})({_pre_text(pre)})", pre, {"op": layer})
    layer.train(training)  # the case module is put in eval mode; the layer alone may train
    return case


_MATMUL_FORMS = ("weight", "vector", "gram", "dot", "batch_broadcast")


@_cases(torch.matmul, "matmul", operator.matmul, "__matmul__", torch.bmm, "bmm")
@st.composite
def _matrix_product_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    batched = key in (torch.bmm, "bmm")
    form = draw(st.sampled_from(("weight", "gram") if batched else _MATMUL_FORMS))
    s, k = draw(st.integers(1, 6)), draw(st.integers(1, 3))  # the last axis must be s for a weight
    call = operator.matmul if key in (operator.matmul, "__matmul__") else torch.matmul if key is torch.matmul \
        else torch.bmm if key is torch.bmm else (lambda a, b: getattr(a, key)(b))
    if batched:
        flat = (lambda x: x.flatten(2)) if nd > 1 else (lambda x: x)  # (1, c, L): 3-d
        if form == "weight":
            tensors = {"w": torch.randn(1, s, k)}
            body, text = (lambda self, x: call(flat(x), self.w)), f"bmm(flat({{x}}), w(1, {s}, {k}))"
        else:
            body, text = (lambda self, x: call(flat(x), flat(x).transpose(1, 2))), "bmm(flat({x}), flat({x}).mT)"
    elif form == "weight":
        tensors = {"w": torch.randn(s, k)}
        body, text = (lambda self, x: call(x, self.w)), f"{{x}} @ w({s}, {k})"
    elif form == "vector":
        tensors = {"w": torch.randn(s)}
        body, text = (lambda self, x: call(x, self.w)), f"{{x}} @ w({s},)"
    elif form == "gram":
        body, text = (lambda self, x: call(x, x.transpose(-1, -2))), "{x} @ {x}.mT"
    elif form == "dot":
        body, text = (lambda self, x: call(x.flatten(), x.flatten())), "{x}.flatten() @ {x}.flatten()"
    else:
        tensors = {"w": torch.randn(2, 1, s, k)}
        body, text = (lambda self, x: call(x, self.w)), f"{{x}} @ w(2, 1, {s}, {k})"
    tensors = tensors if form in ("weight", "vector", "batch_broadcast") else None
    text = f"{_name(key)}: {text.format(x=_pre_text(pre))}"
    if key == "__matmul__":  # fx records a @ b as operator.matmul, never the method
        case = _call_case(key, nd, c, body, text, pre, tensors=tensors)
        return OpCase(key, _retargeted(case.module, operator.matmul, "call_method", key), c, nd, case.text)
    return _call_case(key, nd, c, body, text, pre, tensors=tensors)


@_cases(torch.movedim, torch.moveaxis, "movedim", "moveaxis")
@st.composite
def _axis_move_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    rank = nd + 2
    count = draw(st.integers(1, rank))
    source = draw(st.lists(st.integers(-rank, rank - 1), min_size=count, max_size=count, unique_by=lambda d: d % rank))
    destination = draw(st.lists(st.integers(-rank, rank - 1), min_size=count, max_size=count,
                                unique_by=lambda d: d % rank))
    single = count == 1 and draw(st.booleans())
    src, dst = (source[0], destination[0]) if single else (tuple(source), tuple(destination))
    round_trip = draw(st.booleans())  # channels last and back, as ConvNeXt blocks do

    def body(self, x):
        y = _invoke(key, x, src, dst)
        return _invoke(key, y * 2, dst, src) if round_trip else y

    text = f"{_name(key)}({_pre_text(pre)}, {src}, {dst}){' and back' if round_trip else ''}"
    return _call_case(key, nd, c, body, text, pre)


# --- attention ----------------------------------------------------------------


def _tokens(x):
    """(1, C, *sizes) as (1, L, C): the sequence a ViT attends over."""
    return x.flatten(2).transpose(1, 2)


_ATTENTION_FORMS = ("self", "swapped", "memory", "memory_mask", "heads", "gqa")


@_cases(F.scaled_dot_product_attention)
@st.composite
def _attention_cases(draw, key):
    form = draw(st.sampled_from(_ATTENTION_FORMS))
    nd = 2 if form in ("heads", "gqa") else draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    s, e = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    causal = draw(st.booleans()) and form != "memory_mask"
    tensors = None
    if form == "self":
        body, text = (lambda self, x: key(x, x, x, is_causal=causal)), "sdpa({x}, {x}, {x})"
    elif form == "swapped":  # the key's last axis is the query's second-last
        body, text = (lambda self, x: key(x, x.mT, x.mT, is_causal=causal)), "sdpa({x}, {x}.mT, {x}.mT)"
    elif form in ("memory", "memory_mask"):
        mask_shape = draw(st.sampled_from(((s,), (1, s), (1, 1), (2, 1, s), (s + 1,)))) if form == "memory_mask" else None
        tensors = {"k": torch.randn(s, c), "v": torch.randn(s, e)}
        if mask_shape is not None:
            tensors["mask"] = torch.randn(mask_shape)
        body = (lambda self, x: key(_tokens(x), self.k, self.v, attn_mask=self.mask if mask_shape else None,
                                    is_causal=causal))
        text = f"sdpa(tokens({{x}}), k({s}, {c}), v({s}, {e}), mask={mask_shape})"
    elif form == "heads":  # broadcast heads: query (1, 1, L, C), memory (2, S, C)
        tensors = {"k": torch.randn(2, s, c), "v": torch.randn(2, s, e)}
        body = (lambda self, x: key(_tokens(x).unsqueeze(1), self.k, self.v, is_causal=causal))
        text = f"sdpa(tokens({{x}})[:, None], k(2, {s}, {c}), v(2, {s}, {e}))"
    else:  # grouped-query: C query heads, g key/value heads (g must divide C)
        g = draw(st.integers(1, 2))
        body = (lambda self, x: key(x, x[:, :g], x[:, :g], is_causal=causal, enable_gqa=True))
        text = f"sdpa({{x}}, {{x}}[:, :{g}], {{x}}[:, :{g}], enable_gqa=True)"
    text = f"{text.format(x=_pre_text(pre))} is_causal={causal}"
    return _call_case(key, nd, c, body, text, pre, tensors=tensors)


@_cases(nn.MultiheadAttention)
@st.composite
def _multihead_attention_cases(draw, key):
    nd = draw(st.sampled_from((1, 2)))
    c = draw(st.sampled_from((2, 4)))
    pre = draw(_pre_layers(nd))
    heads = draw(st.sampled_from((1, 2)))
    layout = draw(st.sampled_from(("batch_first", "sequence_first", "unbatched")))
    memory = draw(st.booleans())
    kdim, vdim = (draw(st.sampled_from((None, 3))), draw(st.sampled_from((None, 1, 3)))) if memory else (None, None)
    layer = nn.MultiheadAttention(c, heads, batch_first=layout == "batch_first", kdim=kdim, vdim=vdim,
                                  add_bias_kv=draw(st.booleans()), add_zero_attn=draw(st.booleans()))
    need_weights, average = draw(st.booleans()), draw(st.booleans())
    s = draw(st.integers(1, 4))
    padding_mask = memory and draw(st.booleans())

    def arrange(t):  # (1, L, E) in the layer's layout
        return t if layout == "batch_first" else t.transpose(0, 1) if layout == "sequence_first" else t[0]

    tensors = {"k": arrange(torch.randn(1, s, kdim or c)), "v": arrange(torch.randn(1, s, vdim or c))} if memory else None
    if padding_mask:
        tensors["padding"] = torch.zeros(s, dtype=torch.bool) if layout == "unbatched" else torch.zeros(1, s, dtype=torch.bool)

    def body(self, x):
        q = arrange(_tokens(x))
        k, v = (self.k, self.v) if memory else (q, q)
        return self.op(q, k, v, key_padding_mask=self.padding if padding_mask else None, need_weights=need_weights,
                       average_attn_weights=average)

    text = (f"{layer!r}({layout}, memory={memory}, kdim={kdim}, vdim={vdim}, bias_kv={layer.bias_k is not None}, "
            f"zero_attn={layer.add_zero_attn}, padding_mask={padding_mask}, need_weights={need_weights}, "
            f"average={average})({_pre_text(pre)})")
    return _call_case(key, nd, c, body, text, pre, {"op": layer}, tensors)


# --- sliding blocks -------------------------------------------------------------


@_cases("unfold")
@st.composite
def _tensor_unfold_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    dimension = draw(st.integers(-(nd + 2), nd + 1))
    size, step = draw(st.integers(0, 4)), draw(st.sampled_from((1, 1, 2, 3, 0)))
    text = f"{_pre_text(pre)}.unfold({dimension}, {size}, {step})"
    return _call_case(key, nd, c, lambda self, x: x.unfold(dimension, size, step), text, pre)


@st.composite
def _block_windows(draw):
    """(kernel, dilation, padding, stride) of an im2col window, per axis or shared."""
    def values(low, high):
        return draw(st.one_of(st.integers(low, high), st.tuples(st.integers(low, high), st.integers(low, high))))
    return values(1, 3), values(1, 2), values(0, 2), values(1, 2)


@_cases(F.unfold, nn.Unfold)
@st.composite
def _im2col_cases(draw, key):
    c = draw(_channel_counts)
    pre = draw(_pre_layers(2))
    kernel, dilation, padding, stride = draw(_block_windows())
    unbatched = draw(st.booleans())
    layer = nn.Unfold(kernel, dilation, padding, stride)
    call = layer if key is nn.Unfold else functools.partial(F.unfold, kernel_size=kernel, dilation=dilation,
                                                            padding=padding, stride=stride)
    text = f"{_name(key)}({_pre_text(pre)}{'[0]' if unbatched else ''}, {layer.extra_repr()})"
    return _call_case(key, 2, c, lambda self, x: call(x[0] if unbatched else x), text, pre,
                      {"op": layer} if key is nn.Unfold else None)


@_cases(F.fold, nn.Fold)
@st.composite
def _col2im_cases(draw, key):
    """col2im of im2col with the input's own shape as output size (functional
    only: a module holds a fixed size), or of the input itself as columns
    ((1, C, H*W)) into a fixed size (its spatial rank is 2 either way)."""
    form = draw(st.sampled_from(("round_trip", "columns"))) if key is F.fold else "columns"
    nd = 2
    c = draw(st.sampled_from((1, 2, 4)))
    pre = draw(_pre_layers(nd))
    kernel, dilation, padding, stride = draw(_block_windows())
    output_size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    unbatched = draw(st.booleans())
    layer = nn.Fold(output_size, kernel, dilation, padding, stride)

    def columns_of(x):
        columns = F.unfold(x, kernel, dilation, padding, stride) if form == "round_trip" else x.flatten(2)
        return columns[0] if unbatched else columns

    def body(self, x):
        if key is nn.Fold:
            return self.op(columns_of(x))
        size = x.shape[2:] if form == "round_trip" else output_size
        return F.fold(columns_of(x), size, kernel, dilation, padding, stride)

    text = (f"{_name(key)}({form}: {_pre_text(pre)}{'[0]' if unbatched else ''}, out="
            f"{'x.shape[2:]' if form == 'round_trip' else output_size}, {layer.extra_repr()})")
    return _call_case(key, nd, c, body, text, pre, {"op": layer} if key is nn.Fold else None)


@_cases(nn.LPPool1d, nn.LPPool2d, nn.LPPool3d, F.lp_pool1d, F.lp_pool2d, F.lp_pool3d)
@st.composite
def _power_average_pool_cases(draw, key):
    (nd,) = _dims_of(key)
    c = draw(_channel_counts)
    kernel, stride, _, _, ceil_mode = draw(_pool_parameters(nd, 4, 3, 1))
    norm_type = draw(st.sampled_from((1, 2, 3.5)))
    pre = draw(_pre_layers(nd))
    if isinstance(key, type):
        layer = key(norm_type, kernel, stride, ceil_mode)
        return _call_case(key, nd, c, lambda self, x: self.op(x.abs()), f"{layer!r}({_pre_text(pre)}.abs())", pre,
                          {"op": layer})
    text = f"{_name(key)}({_pre_text(pre)}.abs(), {norm_type}, kernel={kernel}, stride={stride}, ceil_mode={ceil_mode})"
    return _call_case(key, nd, c, lambda self, x: key(x.abs(), norm_type, kernel, stride, ceil_mode), text, pre)


# --- torchvision Swin helpers ---------------------------------------------------


def _torchvision_swin():
    """torchvision.models.swin_transformer, or skip the case (as _torchvision_ops)."""
    import unittest

    try:
        import torchvision.models.swin_transformer as swin
    except Exception as error:  # not installed, or its compiled ops do not load
        raise unittest.SkipTest(f"torchvision does not import ({type(error).__name__})") from None
    return swin


@_cases(rules.QualifiedName("torchvision.models.swin_transformer.shifted_window_attention"),
        rules.QualifiedName("torchvision.models.swin_transformer._get_relative_position_bias"))
@st.composite
def _shifted_window_cases(draw, key):
    """torchvision's ShiftedWindowAttention on the input as (1, H, W, C): its
    forward calls both fx-wrapped helpers (they are recorded only when called
    from torchvision's own module)."""
    swin = _torchvision_swin()
    c = draw(st.sampled_from((2, 4)))
    pre = draw(_pre_layers(2))
    window = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    shift = [draw(st.integers(0, w - 1)) for w in window]
    heads = draw(st.sampled_from((1, 2)))
    layer = swin.ShiftedWindowAttention(c, window, shift, heads)
    text = f"ShiftedWindowAttention({c}, window={window}, shift={shift}, heads={heads})({_pre_text(pre)}.permute(0, 2, 3, 1))"
    return _call_case(key, 2, c, lambda self, x: self.op(x.permute(0, 2, 3, 1)), text, pre, {"op": layer})


@_cases(rules.QualifiedName("torchvision.models.swin_transformer._patch_merging_pad"))
@st.composite
def _patch_merging_cases(draw, key):
    swin = _torchvision_swin()
    c = draw(_channel_counts)
    pre = draw(_pre_layers(2))
    layer = swin.PatchMerging(c)
    text = f"PatchMerging({c})({_pre_text(pre)}.permute(0, 2, 3, 1))"
    return _call_case(key, 2, c, lambda self, x: self.op(x.permute(0, 2, 3, 1)), text, pre, {"op": layer})


# --- fractional max pooling -----------------------------------------------------


@_cases(nn.FractionalMaxPool2d, F.fractional_max_pool2d_with_indices, F.fractional_max_pool2d)
@st.composite
def _fractional_pool_cases(draw, key):
    """A given output size, or a ratio: dyadic ones (exact for every size) on
    symbolic inputs; fx records F.fractional_max_pool2d by return_indices."""
    c = draw(_channel_counts)
    pre = draw(_pre_layers(2))
    kernel = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    if draw(st.booleans()):
        target = dict(output_size=draw(st.one_of(st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5)))))
    else:
        ratio = st.sampled_from((0.25, 0.5, 0.75, 0.875))
        target = dict(output_ratio=draw(st.one_of(ratio, st.tuples(ratio, ratio))))
    unbatched = draw(st.booleans())
    if key is nn.FractionalMaxPool2d:
        layer = key(kernel, return_indices=draw(st.booleans()), **target)
        text = f"{layer!r}({_pre_text(pre)}{'[0]' if unbatched else ''})"
        return _call_case(key, 2, c, lambda self, x: self.op(x[0] if unbatched else x), text, pre, {"op": layer})
    indices = key is F.fractional_max_pool2d_with_indices
    text = f"F.fractional_max_pool2d({_pre_text(pre)}{'[0]' if unbatched else ''}, {kernel}, {target}, return_indices={indices})"
    return _call_case(key, 2, c, lambda self, x: F.fractional_max_pool2d(x[0] if unbatched else x, kernel,
                                                                          return_indices=indices, **target), text, pre)


# --- grid sampling --------------------------------------------------------------


@_cases(F.grid_sample)
@st.composite
def _grid_sample_cases(draw, key):
    """A fixed grid (whose batch and last axis may not fit), or one made of
    the input itself (its spatial sizes become the output's)."""
    nd = draw(st.sampled_from((2, 3)))
    c = draw(st.sampled_from((1, 2, 3)))
    pre = draw(_pre_layers(nd))
    mode = draw(st.sampled_from(("bilinear", "nearest", "bicubic")))
    padding_mode = draw(st.sampled_from(("zeros", "border", "reflection")))
    tensors = None
    if draw(st.booleans()):
        shape = (draw(st.sampled_from((1, 1, 2))), *[draw(st.integers(0, 4)) for _ in range(nd)],
                 draw(st.sampled_from((nd, nd, 2 if nd == 3 else 3))))
        tensors = {"grid": torch.rand(shape) * 2 - 1}
        make_grid, grid_text = (lambda self, x: self.grid), f"grid{shape}"
    else:  # the first nd channels as coordinates (c < nd: torch refuses)
        make_grid = lambda self, x: x.movedim(1, -1).tanh()  # noqa: E731
        grid_text = "{x}.movedim(1, -1).tanh()"

    def body(self, x):
        return key(x, make_grid(self, x), mode=mode, padding_mode=padding_mode, align_corners=False)

    text = f"grid_sample({{x}}, {grid_text}, {mode}, {padding_mode})".format(x=_pre_text(pre))
    return _call_case(key, nd, c, body, text, pre, tensors=tensors)


# --- einops -----------------------------------------------------------------------


def _einops():
    """einops, or skip the case: shapecalc does not depend on it."""
    import unittest

    try:
        import einops
        import einops.layers.torch
    except ImportError as error:
        raise unittest.SkipTest(f"einops is not installed ({error})") from None
    # fx keeps a function a node only where the forward's module names it as
    # a global, and not under a name starting with "_" (torch.fx's autowrap)
    globals()["rearrange"] = einops.rearrange
    return einops


_EINOPS_PATTERNS = {
    1: ["b c h -> b h c", "b c (h p) -> b (c p) h", "... h -> h ...", "b c h -> (b c h) 1", "b c h -> b c h"],
    2: ["b c h w -> b h w c", "b c (h p) (w q) -> b (h w) (p q c)", "b c h w -> b (c h) w", "b ... w -> (b w) ...",
        "b c h w -> b c (h w) 1", "b c h (w q) -> b (c q) h w", "b c h w -> b c h w", "b c h w -> () b w c h"],
}


@_cases(rules.QualifiedName("einops.einops.rearrange"), rules.QualifiedName("einops.layers.torch.Rearrange"))
@st.composite
def _rearrange_cases(draw, key):
    einops = _einops()
    nd = draw(st.sampled_from((1, 2)))
    c = draw(_channel_counts)
    pre = draw(_pre_layers(nd))
    pattern = draw(st.sampled_from(_EINOPS_PATTERNS[nd]))
    lengths = {a: draw(st.integers(1, 3)) for a in ("p", "q") if f" {a})" in pattern or f"{a} " in pattern.split("->")[0]}
    if pattern in ("b c h w -> b c h w", "b c h -> b c h") and draw(st.booleans()):
        lengths["h"] = draw(st.integers(1, 4))  # a given length the input must have
    if key.name.endswith("Rearrange"):
        layer = einops.layers.torch.Rearrange(pattern, **lengths)
        return _call_case(key, nd, c, lambda self, x: self.op(x), f"Rearrange({pattern!r}, {lengths})({_pre_text(pre)})",
                          pre, {"op": layer})
    text = f"rearrange({_pre_text(pre)}, {pattern!r}, {lengths})"
    return _call_case(key, nd, c, lambda self, x: rearrange(x, pattern, **lengths), text, pre)  # noqa: F821


# --- ATen ops (the ATen front end) -----------------------------------------------
#
# A case for an AtenOp key is a module whose *ATen capture* calls that op
# (``analyze(module, ..., capture="aten")``): a layer where the layer is what
# records it (nn.Conv2d for aten::convolution, nn.BatchNorm2d for batch norm),
# else a direct ``torch.ops.aten`` call in the forward (make_fx records an op
# with its own kernel as called).  Ops the capture can never record
# (CompositeImplicitAutograd ones, decomposed before make_fx sees them, and
# the aliases capture/aten.py drops) get an fx case calling the op: their
# rule still runs on graphs that keep them (an fx graph, an exported one).
# Case modules live on the CPU: the captured graph keeps their parameters,
# and tests/test_rules.py runs that graph on real tensors.

_A = torch.ops.aten


def aten_op(key: rules.AtenOp):
    """The OpOverload an AtenOp key names (its default overload when the key
    names every overload)."""
    namespace, _, rest = key.name.partition("::")
    name, _, overload = rest.partition(".")
    packet = getattr(getattr(torch.ops, namespace), name)
    if overload or "default" in packet.overloads():
        return getattr(packet, overload or "default")
    # no default overload (aten::empty): the first one the registry looks up as this key
    for overload in packet.overloads():
        if rules.lookup("call_function", getattr(packet, overload)) is rules.RULES[key]:
            return getattr(packet, overload)
    raise AttributeError(f"{key.name}: no overload of the op is looked up as this key")


def aten_matches(target, key) -> bool:
    """Whether a graph node's target is looked up as ``key`` (the registry
    tries ``aten::name.overload`` before ``aten::name``).  A Python function
    key (``math.ceil``: make_fx records it on symbolic sizes) matches itself."""
    if not isinstance(key, rules.AtenOp):
        return target is key
    return isinstance(target, torch._ops.OpOverload) and rules.lookup("call_function", target) is rules.RULES[key]


def aten_calls(graph_module: torch.fx.GraphModule, key) -> list:
    """The nodes of ``graph_module`` that call ``key``."""
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and aten_matches(n.target, key)]


def never_captured(key: rules.AtenOp) -> str:
    """Why the ATen capture never records ``key`` ("" when it can)."""
    from shapecalc.capture import aten as capture_aten
    try:
        op = aten_op(key)
    except (AttributeError, RuntimeError):
        return "torch has no such op"
    schema = op._schema.name
    if schema in capture_aten._ALIASES:
        return "capture/aten.py drops it"
    if key.name in _RECORDED_OTHERWISE:
        return _RECORDED_OTHERWISE[key.name]
    if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd") \
            and schema not in ("aten::sym_size", "aten::sym_numel"):  # make_fx records reads of symbolic sizes
        return "CompositeImplicitAutograd: decomposed before make_fx records it"
    return ""


#: ops with a kernel of their own that the capture still never records (measured)
_RECORDED_OTHERWISE = {
    "aten::hardshrink": "make_fx records its decomposition", "aten::softshrink": "make_fx records its decomposition",
    "aten::native_batch_norm": "make_fx records _native_batch_norm_legit(_no_training)",
    "aten::detach_": "make_fx records nothing for it", "aten::glu_jvp": "FakeTensor has no kernel for it",
}


def _aten_pre(dims: int):
    """Nothing or a small pool in front of the op (its input is then a floor
    expression, not the bare symbol).  No 1-d max pool: torch.max_pool1d's
    capture guards the exact input length (one region per size)."""
    return st.one_of(st.none(), pool_layers(dims, kinds=("avg",) if dims == 1 else ("max", "avg"), max_kernel_size=3,
                                            max_stride=2))


def _aten_case(key, dims, channels, function, text, pre=None, modules=None, tensors=None, train=False):
    """An ATen case: ``forward(x) = function(self, pre(x))``.  A 1-d case
    starts with a 1x1 Conv1d: the ATen front end reads a one-part input spec
    (``"H"``) as 1-d only from the model's first convolution."""
    modules = dict(modules or {})
    if pre is not None:
        modules["pre"] = pre
    if dims == 1:
        modules["rank"] = nn.Conv1d(channels, channels, 1)

    def forward(self, x, function=function):
        if dims == 1:
            x = self.rank(x)
        return function(self, self.pre(x) if pre is not None else x)

    if pre is not None:
        text = f"{text} with pre={pre!r}"
    module = _Call(forward, text, modules, tensors).train(train)
    return OpCase(key, module, channels, dims, text, capture="aten")


def _fx_aten_case(key, dims, channels, function, text, pre=None, modules=None, tensors=None):
    """A case for an op the ATen capture never records: an fx graph calling
    the op (symbolic_trace records a ``torch.ops.aten`` call as a node)."""
    return _call_case(key, dims, channels, function, f"{text} [fx: {never_captured(key)}]", pre or None, modules, tensors)


def _aten_text(key, *args) -> str:
    return f"{key.name}({', '.join(map(str, args))})"


# windows


@_cases(*rules.aten("convolution"))
@st.composite
def _aten_conv_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    layer = draw(st.one_of(conv_layers(nd, in_channels=c), transposed_conv_layers(nd, in_channels=c)))
    pre = draw(_aten_pre(nd))
    return _aten_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}(x)", pre, {"op": layer})


@_cases(*rules.aten("max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool2d", "avg_pool3d"))
@st.composite
def _aten_pool_cases(draw, key):
    (nd,) = _dims_of(key.name.removesuffix("_with_indices"))
    c = draw(_channel_counts)
    is_max = "max" in key.name
    layer = draw(pool_layers(nd, kinds=("max",) if is_max else ("avg",)))
    if is_max:
        layer.return_indices = draw(st.booleans())
    if not is_max and draw(st.booleans()):
        layer.divisor_override = draw(st.integers(1, 3))
    pre = draw(_aten_pre(nd))
    return _aten_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}(x)", pre, {"op": layer})


@_cases(*rules.aten("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool2d", "adaptive_max_pool3d"))
@st.composite
def _aten_adaptive_cases(draw, key):
    (nd,) = _dims_of(key.name)
    c = draw(_channel_counts)
    # an all-ones average is recorded as mean.dim: the first axis gets at least 2
    first = draw(st.integers(2, 6))
    output_size = draw(st.one_of(st.just(first), st.tuples(st.just(first), *[st.one_of(st.integers(1, 6), st.none())] * (nd - 1))))
    if "max" in key.name:
        layer = {2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[nd](output_size, return_indices=draw(st.booleans()))
    else:
        layer = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[nd](output_size)
    pre = draw(_aten_pre(nd))
    return _aten_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}(x)", pre, {"op": layer})


@_cases(*rules.aten("max_pool1d_with_indices", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d"))
@st.composite
def _aten_implicit_pool_cases(draw, key):
    (nd,) = _dims_of(key.name.removesuffix("_with_indices"))
    c = draw(_channel_counts)
    is_max = "max" in key.name
    kernel, stride, padding, dilation, ceil_mode = draw(_pool_parameters(nd, 4, 3, 2 if is_max else 1))
    op, stride = aten_op(key), stride if stride is not None else []
    if is_max:
        call = lambda self, x: op(x, kernel, stride, padding, dilation, ceil_mode)  # noqa: E731
    else:
        call = lambda self, x: op(x, kernel, stride, padding, ceil_mode)  # noqa: E731
    text = _aten_text(key, "x", kernel, stride, padding, dilation, ceil_mode)
    return _fx_aten_case(key, nd, c, call, text, draw(_pre_layers(nd)))


@_cases(*rules.aten("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d"))
@st.composite
def _aten_implicit_adaptive_cases(draw, key):
    (nd,) = _dims_of(key.name)
    c = draw(_channel_counts)
    output_size = [draw(st.integers(1, 6)) for _ in range(nd)]
    op = aten_op(key)
    return _fx_aten_case(key, nd, c, lambda self, x: op(x, output_size), _aten_text(key, "x", output_size),
                         draw(_pre_layers(nd)))


# resampling


@_cases(*rules.aten("shapecalc::interpolate"))
@st.composite
def _aten_interpolate_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    layer = draw(resampling_layers(nd, max_size=12))
    pre = draw(_aten_pre(nd))
    return _aten_case(key, nd, c, lambda self, x: self.op(x), f"{layer!r}(x)", pre, {"op": layer})


# shape-preserving ops


def _bool(x):
    return _A._to_copy.default(x, dtype=torch.bool)


def _reduced(x):
    """A tensor broadcasting to ``x``: its max over the first spatial axis."""
    return _A.amax.default(x, [2], True)


#: arguments after the tensor (in-place ops work on a copy of it)
_UNARY_ARGUMENTS: dict[str, Callable] = {
    "clamp": lambda x: (x, -0.5, 0.5), "clamp_": lambda x: (x, -0.5, 0.5), "clamp_min": lambda x: (x, 0.0),
    "clamp_min_": lambda x: (x, 0.0), "clamp_max": lambda x: (x, 0.0), "clamp_max_": lambda x: (x, 0.0),
    "pow.Tensor_Scalar": lambda x: (x, 2), "_softmax": lambda x: (x, 1, False), "_log_softmax": lambda x: (x, 1, False),
    "softmax.int": lambda x: (x, 1), "log_softmax.int": lambda x: (x, 1), "_to_copy": lambda x: (x,),
    "fill_.Scalar": lambda x: (x, 1.0), "bernoulli_.float": lambda x: (x, 0.5), "div_.Scalar": lambda x: (x, 2.0),
    "mul_.Scalar": lambda x: (x, 2.0), "add_.Scalar": lambda x: (x, 2.0), "mul.Scalar": lambda x: (x, 2.0),
    "add.Scalar": lambda x: (x, 2.0), "sub.Scalar": lambda x: (x, 2.0), "div.Scalar": lambda x: (x, 2.0),
    "rsub.Scalar": lambda x: (x, 2.0), "copy": lambda x: (x, _reduced(x)), "copy_": lambda x: (x, _reduced(x)),
    "masked_fill.Scalar": lambda x: (x, _bool(_reduced(x)), 0.0),
    "masked_fill_.Scalar": lambda x: (x, _bool(_reduced(x)), 0.0),
    "_log_softmax_backward_data": lambda x: (x, x, 1, torch.float32), "logical_not": lambda x: (x,),
    "bitwise_not": lambda x: (_bool(x),), "threshold": lambda x: (x, 0.1, 0.0),
    "dropout": lambda x: (x, 0.5, False), "alpha_dropout": lambda x: (x, 0.5, False),
    "feature_dropout": lambda x: (x, 0.5, False), "feature_alpha_dropout": lambda x: (x, 0.5, False),
    "glu_jvp": lambda x: (x[:, :1], x, x, 1), "native_dropout": lambda x: (x, 0.5, True),
    "_safe_softmax": lambda x: (x, 1), "fill.Scalar": lambda x: (x, 1.0), "fill.Tensor": lambda x: (x, _A.mean.default(x)),
    "fill_.Tensor": lambda x: (x, _A.mean.default(x)),
}
_IN_PLACE_SCALAR = {"fill_.Scalar", "fill_.Tensor", "zero_", "bernoulli_.float", "div_.Scalar", "mul_.Scalar", "add_.Scalar",
                    "copy_", "masked_fill_.Scalar"}


def _unary_keys():
    return [key for key, found in rules.RULES.items() if isinstance(key, rules.AtenOp)
            and found.name in ("aten_shape_preserving", "aten_native_dropout")]


@_cases(*_unary_keys())
@st.composite
def _aten_unary_cases(draw, key):
    short = key.name.removeprefix("aten::")
    nd = draw(st.sampled_from((1, 2, 3)))
    c = 2 if short == "glu_jvp" else draw(_channel_counts)
    op = aten_op(key)
    in_place = short in _IN_PLACE_SCALAR or short.split(".")[0].endswith("_")
    arguments = _UNARY_ARGUMENTS.get(short, lambda x: (x,))
    tensors = {}
    if short in ("prelu", "_prelu_kernel"):
        # prelu takes one weight per channel; its kernel, the weight already shaped to broadcast
        tensors["weight"] = torch.rand(c) if short == "prelu" else torch.rand(c, *[1] * nd)
        arguments = None

    def body(self, x):
        if in_place:
            x = _A.clone.default(x)
        if arguments is None:
            return op(x, self.weight)
        return op(*arguments(x))

    text = _aten_text(key, "x.clone()" if in_place else "x")
    if never_captured(key):
        return _fx_aten_case(key, nd, c, body, text, draw(_pre_layers(nd)), tensors=tensors)
    return _aten_case(key, nd, c, body, text, draw(_aten_pre(nd)), tensors=tensors)


# normalisations


def _norm_pre(dims: int):
    """As :func:`_aten_pre`, none for 3-d: F.batch_norm / F.group_norm guard
    "more than one value" on the product of the sizes, and after a 3-d pool
    that guard makes the region exploration scan for seconds."""
    return st.none() if dims == 3 else _aten_pre(dims)


@_cases(*rules.aten("_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
                    "_native_batch_norm_legit_functional", "shapecalc::batch_norm"))
@st.composite
def _aten_batch_norm_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_norm_pre(nd))
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd](c)
    short = key.name.removeprefix("aten::")
    tensors = {"weight": torch.rand(c), "bias": torch.rand(c), "mean": torch.rand(c), "var": torch.rand(c) + 0.5}
    if short in ("_native_batch_norm_legit_no_training", "shapecalc::batch_norm"):
        # called directly: which of the two an nn.BatchNorm in eval() is recorded as is capture/aten.py's choice
        op = aten_op(key)
        arguments = (0.1, 1e-5) if short.startswith("_") else (1e-5,)
        return _aten_case(key, nd, c, lambda self, x: op(x, self.weight, self.bias, self.mean, self.var, *arguments),
                          _aten_text(key, "x", "weight", "bias", "mean", "var", *arguments), pre, tensors=tensors)
    if short == "_native_batch_norm_legit":
        if draw(st.booleans()):  # training with running statistics
            return _aten_case(key, nd, c, lambda self, x: self.op(x), f"{norm!r}.train()(x)", pre, {"op": norm},
                              train=True)
        return _aten_case(key, nd, c, lambda self, x: F.batch_norm(x, None, None, training=True),
                          "F.batch_norm(x, None, None, training=True)", pre)
    # the fx case trains: in inference the CPU kernel saves empty statistics, the meta one (what an
    # fx graph without recorded devices is sized for) one per channel
    training = True if never_captured(key) else draw(st.booleans())
    op = aten_op(key)

    def body(self, x):
        if training:
            # the rule states F.batch_norm's own check (more than one value per channel in training),
            # which a direct call of the op skips: a batch of two stays clear of that difference
            x = torch.cat([x, x])
        return op(x, self.weight, self.bias, self.mean, self.var, training, 0.1, 1e-5)

    text = _aten_text(key, "x", "weight", "bias", "mean", "var", training)
    if never_captured(key):
        return _fx_aten_case(key, nd, c, body, text, draw(_pre_layers(nd)), tensors=tensors)
    return _aten_case(key, nd, c, body, text, pre, tensors=tensors)


@_cases(*rules.aten("native_layer_norm", "native_group_norm"))
@st.composite
def _aten_other_norm_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    pre = draw(_norm_pre(nd))
    if key.name == "aten::native_layer_norm":
        c = draw(_channel_counts)
        norm = nn.LayerNorm(c)
        return _aten_case(key, nd, c, lambda self, x: self.op(x.movedim(1, -1)), f"{norm!r}(x.movedim(1, -1))", pre,
                          {"op": norm})
    c = draw(st.sampled_from((2, 3, 4)))
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    norm = nn.GroupNorm(groups, c)
    return _aten_case(key, nd, c, lambda self, x: self.op(x), f"{norm!r}(x)", pre, {"op": norm})


# merges


def _aten_merge_keys(kind: str):
    return [key for key, found in rules.RULES.items() if isinstance(key, rules.AtenOp) and found.merge == kind]


#: merge ops whose operands must be booleans (the cases cast both)
_BOOLEAN_OPERANDS = {"aten::bitwise_and.Tensor", "aten::bitwise_or.Tensor"}


def aten_binary_call(key) -> Callable:
    """``call(a, b)``: ``key`` on two tensors of one shape or broadcasting ones."""
    op, name = aten_op(key), key.name
    if name in _BOOLEAN_OPERANDS:
        return lambda a, b: op(_bool(a), _bool(b))
    if name == "aten::where.self":
        return lambda a, b: op(_bool(b), a, b)
    if name == "aten::div.Tensor_mode":
        return lambda a, b: op(a, b, rounding_mode="floor")
    if name == "aten::hardtanh_backward":
        return lambda a, b: op(a, b, -0.5, 0.5)
    if name == "aten::threshold_backward":
        return lambda a, b: op(a, b, 0.1)
    if name in ("aten::addcmul", "aten::addcdiv"):
        return lambda a, b: op(a, b, b)
    if name == "aten::lerp.Scalar":
        return lambda a, b: op(a, b, 0.25)
    if name == "aten::lerp.Tensor":
        return lambda a, b: op(a, b, b)
    return op


@_cases(*_aten_merge_keys("broadcast"))
@st.composite
def _aten_broadcast_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    call = aten_binary_call(key)
    in_place = key.name.split(".")[0].endswith("_")
    # operands: the tensor and its max over an axis (kept as 1), in either order, or a copy of it
    form = draw(st.sampled_from(("reduced", "same") if in_place else ("reduced", "reduced first", "same")))
    axis = draw(st.integers(1, nd + 1))

    def body(self, x):
        other = _A.amax.default(x, [axis], True) if form != "same" else _A.mul.Scalar(x, 0.5)
        if in_place:
            x = _A.clone.default(x)
        return call(other, x) if form == "reduced first" else call(x, other)

    text = {"reduced": f"{key.name}(x, x.amax({axis}, keepdim=True))",
            "reduced first": f"{key.name}(x.amax({axis}, keepdim=True), x)", "same": f"{key.name}(x, x * 0.5)"}[form]
    return _aten_case(key, nd, c, body, text, pre)


@_cases(*_aten_merge_keys("concat"), *_aten_merge_keys("stack"))
@st.composite
def _aten_concatenation_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    op = aten_op(key)
    if key.name == "aten::stack":
        dim = draw(st.integers(-nd - 3, nd + 2))
        return _aten_case(key, nd, c, lambda self, x: op([x, _A.mul.Scalar(x, 2.0)], dim),
                          f"aten::stack([x, x * 2], {dim})", pre)
    # along an axis the second tensor is a crop of the first (its other axes agree)
    dim = draw(st.integers(0, nd + 1))
    start = draw(st.integers(0, 3))
    negative = draw(st.booleans())

    def body(self, x):
        return op([x, _A.slice.Tensor(x, dim, start)], dim - nd - 2 if negative else dim)

    return _aten_case(key, nd, c, body, f"aten::cat([x, aten::slice(x, {dim}, {start})], {dim - nd - 2 if negative else dim})",
                      pre)


# indexing


@_cases(*rules.aten("sym_size.int", "sym_numel"))
@st.composite
def _aten_size_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    if key.name == "aten::sym_numel":
        return _aten_case(key, nd, c, lambda self, x: x.new_zeros(x.numel()), "x.new_zeros(x.numel())", pre)
    axis = draw(st.integers(2, nd + 1))
    divisor = draw(st.integers(1, 3))
    return _aten_case(key, nd, c, lambda self, x: x.narrow(axis, 0, x.size(axis) // divisor),
                      f"x.narrow({axis}, 0, x.size({axis}) // {divisor})", pre)


def _aten_bound(draw):
    return draw(st.one_of(st.none(), st.integers(-6, 6)))


@_cases(*rules.aten("slice.Tensor", "select.int"))
@st.composite
def _aten_slice_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    dim = draw(st.integers(1, nd + 1))
    if key.name == "aten::select.int":
        index = draw(st.integers(-3, 2)) if dim > 1 else draw(st.integers(-c, c - 1))
        return _aten_case(key, nd, c, lambda self, x: _A.select.int(x, dim, index), f"x.select({dim}, {index})", pre)
    start, end = _aten_bound(draw), _aten_bound(draw)
    if start is None and end is None:
        start = draw(st.integers(1, 4))  # an open slice is recorded as nothing
    step = draw(st.sampled_from((1, 1, 2, 3)))
    index = (slice(None),) * dim + (slice(start, end, step),)
    return _aten_case(key, nd, c, lambda self, x: x[index], f"x[{index}]", pre)


@_cases(*rules.aten("split.Tensor", "split_with_sizes", "unbind.int", "chunk"))
@st.composite
def _aten_split_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    short = key.name.removeprefix("aten::")
    dim = draw(st.integers(2, nd + 1))
    if short == "unbind.int":
        # over the channels: a spatial axis would give a graph per size
        return _aten_case(key, nd, c, lambda self, x: x.unbind(1), "x.unbind(1)", pre)
    if short == "split_with_sizes":
        first = draw(st.integers(0, 4))
        return _aten_case(key, nd, c, lambda self, x: x.split([first, x.size(dim) - first], dim),
                          f"x.split([{first}, x.size({dim}) - {first}], {dim})", pre)
    size = draw(st.integers(1, 4))
    dim = 1  # pieces of a spatial axis: their number depends on the size (the rule refuses it)
    if short == "chunk":
        return _fx_aten_case(key, nd, c, lambda self, x: _A.chunk.default(x, size, dim), _aten_text(key, "x", size, dim),
                             draw(_pre_layers(nd)))
    return _aten_case(key, nd, c, lambda self, x: x.split(size, dim), f"x.split({size}, {dim})", pre)


# reshaping


@_cases(*rules.aten("view", "_unsafe_view", "reshape", "view_copy"))
@st.composite
def _aten_view_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    op = aten_op(key)
    shape = draw(st.sampled_from(([1, -1], [-1], [1, c, -1], [c, -1, 1], [-1, 2])))
    text = _aten_text(key, "x", shape)
    if key.name == "aten::reshape":
        return _fx_aten_case(key, nd, c, lambda self, x: op(x, shape), text, draw(_pre_layers(nd)))
    return _aten_case(key, nd, c, lambda self, x: op(x, shape), text, pre)


@_cases(*rules.aten("permute", "permute_copy", "transpose.int", "transpose_", "t"))
@st.composite
def _aten_reorder_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    op = aten_op(key)
    short = key.name.removeprefix("aten::")
    if short.startswith("permute"):
        dims = draw(st.permutations(range(nd + 2)))
        dims = [d - nd - 2 if draw(st.booleans()) else d for d in dims]
        return _aten_case(key, nd, c, lambda self, x: op(x, dims), _aten_text(key, "x", dims), pre)
    if short == "t":
        return _aten_case(key, nd, c, lambda self, x: op(x.flatten(1)), "aten::t(x.flatten(1))", pre)
    a, b = draw(st.integers(-nd - 2, nd + 1)), draw(st.integers(-nd - 2, nd + 1))
    body = (lambda self, x: op(_A.clone.default(x), a, b)) if short == "transpose_" else (lambda self, x: op(x, a, b))
    return _aten_case(key, nd, c, body, _aten_text(key, "x", a, b), pre)


@_cases(*rules.aten("unsqueeze", "unsqueeze_", "squeeze.dim", "squeeze.dims", "squeeze", "squeeze_.dim"))
@st.composite
def _aten_rank_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    op = aten_op(key)
    short = key.name.removeprefix("aten::")
    in_place = short.split(".")[0].endswith("_")
    if short.startswith("unsqueeze"):
        dim = draw(st.integers(-nd - 3, nd + 2))
        arguments = (dim,)
    elif short == "squeeze":
        arguments = ()
    # a max over spatial axes keeps them as 1: something to squeeze besides the batch.  Only
    # axes of known length are squeezed: the rank after squeezing a symbolic axis is not one
    # number (the rule refuses it)
    keep = [2] if draw(st.booleans()) else []
    if short == "squeeze":
        keep = list(range(2, nd + 2))
    known = st.sampled_from([0, 1, -nd - 2, -nd - 1] + ([2, -nd] if keep else []))
    if short == "squeeze.dims":
        arguments = (sorted(set(draw(st.lists(known, min_size=1, max_size=3)))),)
    elif short != "squeeze" and not short.startswith("unsqueeze"):
        arguments = (draw(known),)

    def body(self, x):
        x = _A.amax.default(x, keep, True) if keep else x
        return op(_A.clone.default(x) if in_place else x, *arguments)

    source = f"x.amax({keep}, keepdim=True)" if keep else "x"
    return _aten_case(key, nd, c, body, _aten_text(key, source, *arguments), pre)


@_cases(*rules.aten("mean.dim", "sum.dim_IntList", "amax", "amin", "mean", "sum", "var.correction",
                    "std.correction", "var_mean.correction"))
@st.composite
def _aten_reduction_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    op = aten_op(key)
    short = key.name.removeprefix("aten::")
    if short in ("mean", "sum"):
        return _aten_case(key, nd, c, lambda self, x: op(x), _aten_text(key, "x"), pre)
    # each axis once (a repeated axis is an error at every size), counted from either end
    axes = sorted(set(draw(st.lists(st.integers(0, nd + 1), min_size=1, max_size=3))))
    dims = [a - nd - 2 if draw(st.booleans()) else a for a in axes]
    keepdim = draw(st.booleans())
    if short == "mean.dim" and draw(st.booleans()):
        # over every spatial axis, kept: a global average pool (the resampling audit sees it)
        dims, keepdim = list(range(2, nd + 2)), True
    if short.endswith(".correction"):
        correction = draw(st.sampled_from((0, 1)))
        return _aten_case(key, nd, c, lambda self, x: op(x, dims, correction=correction, keepdim=keepdim),
                          _aten_text(key, "x", dims, f"correction={correction}", f"keepdim={keepdim}"), pre)
    return _aten_case(key, nd, c, lambda self, x: op(x, dims, keepdim), _aten_text(key, "x", dims, keepdim), pre)


@_cases(*rules.aten("expand"))
@st.composite
def _aten_expand_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    axis = draw(st.integers(2, nd + 1))
    size = draw(st.integers(1, 5))
    leading = draw(st.booleans())

    def body(self, x):
        reduced = _A.amax.default(x, [axis], True)
        shape = [-1] * (nd + 2)
        shape[axis] = size
        return _A.expand.default(reduced, [2, *shape] if leading else shape)

    return _aten_case(key, nd, c, body, f"x.amax({axis}, keepdim=True).expand(... {size} on {axis}, leading={leading})",
                      pre)


@_cases(math.ceil, math.floor)
@st.composite
def _aten_rounding_cases(draw, key):
    # timm's pad_same: math.ceil(ih / s) on a symbolic size (make_fx records the Python call)
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    divisor = draw(st.integers(2, 4))
    return _aten_case(key, nd, c, lambda self, x: x[..., : key(x.size(-1) / divisor)],
                      f"x[..., :{key.__name__}(x.size(-1) / {divisor})]", pre)


@_cases(*rules.aten("eq.Scalar", "ne.Scalar", "lt.Scalar", "le.Scalar", "gt.Scalar", "ge.Scalar"))
@st.composite
def _aten_compare_with_number_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    op = aten_op(key)
    return _aten_case(key, nd, c, lambda self, x: op(x, 0.5), _aten_text(key, "x", 0.5), draw(_aten_pre(nd)))


@_cases(*rules.aten("repeat", "roll"))
@st.composite
def _aten_repeat_roll_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    if key.name == "aten::repeat":
        counts = draw(st.lists(st.integers(1, 2), min_size=nd + 2, max_size=nd + 3))  # one more: a new leading axis
        return _aten_case(key, nd, c, lambda self, x: _A.repeat.default(x, counts), _aten_text(key, "x", counts), pre)
    shift = draw(st.integers(-3, 3))
    dims = draw(st.one_of(st.just([]), st.integers(1, nd + 1).map(lambda d: [d])))  # []: the flattened tensor
    shifts = [shift] * max(len(dims), 1)
    return _aten_case(key, nd, c, lambda self, x: _A.roll.default(x, shifts, dims), _aten_text(key, "x", shifts, dims),
                      pre)


@_cases(*rules.aten("index.Tensor"))
@st.composite
def _aten_index_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    axis = draw(st.integers(1, nd + 1))
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    # index 0 only: in range for every non-empty axis (shapecalc does not check index values)
    tensors = {"index": torch.zeros(shape, dtype=torch.long)}
    indices = [None] * axis
    return _aten_case(key, nd, c, lambda self, x: _A.index.Tensor(x, [*indices, self.index]),
                      f"aten.index.Tensor(x, [None] * {axis} + [zeros{shape}])", pre, tensors=tensors)


@_cases(*rules.aten("as_strided", "as_strided_"))
@st.composite
def _aten_as_strided_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    same = draw(st.booleans())  # a restride to its own shape (adaptive_avg_pool2d's decomposition) or one element
    op = aten_op(key)

    def body(self, x):
        x = x.clone()
        size, stride = (list(x.shape), list(x.stride())) if same else ([1, 1], [1, 1])
        return op(x, size, stride)

    return _aten_case(key, nd, c, body, f"{key.name}(x.clone(), {'x.shape, x.stride()' if same else '[1, 1], [1, 1]'})",
                      pre)


@_cases(*rules.aten("addmm", "mm", "bmm", "matmul"))
@st.composite
def _aten_matrix_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    short = key.name.removeprefix("aten::")
    if short in ("addmm", "mm"):
        # a linear layer over the channels of a channels-last tensor: a view to a matrix and a product
        layer = nn.Linear(c, draw(st.integers(1, 3)), bias=short == "addmm")
        return _aten_case(key, nd, c, lambda self, x: self.op(x.movedim(1, -1).reshape(-1, c)),
                          f"{layer!r}(x.movedim(1, -1).reshape(-1, {c}))", draw(_aten_pre(nd)), {"op": layer})
    op = aten_op(key)

    def body(self, x):
        rows = x.flatten(2)  # (1, c, n)
        return op(rows, rows.transpose(1, 2)) if draw_transposed else op(rows.transpose(1, 2), rows)

    draw_transposed = draw(st.booleans())
    text = _aten_text(key, "x.flatten(2)", "its transpose") if draw_transposed else _aten_text(key, "its transpose", "x.flatten(2)")
    if short == "matmul":
        return _fx_aten_case(key, nd, c, body, text, draw(_pre_layers(nd)))
    return _aten_case(key, nd, c, body, text, draw(_aten_pre(nd)))


# padding


@_cases(*rules.aten("constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                    "replication_pad1d", "replication_pad2d", "replication_pad3d", "_pad_circular"))
@st.composite
def _aten_pad_cases(draw, key):
    short = key.name.removeprefix("aten::")
    nd = draw(st.sampled_from((1, 2, 3))) if short in ("constant_pad_nd", "_pad_circular") else _dims_of(short)[0]
    c = draw(_channel_counts)
    low = -3 if short in ("constant_pad_nd", "_pad_circular") else 0
    pad = [draw(st.integers(low, 4)) for _ in range(2 * draw(st.integers(1, nd)) if short == "constant_pad_nd" else 2 * nd)]
    op = aten_op(key)
    text = _aten_text(key, "x", pad)
    if short == "_pad_circular":
        return _fx_aten_case(key, nd, c, lambda self, x: op(x, pad), text, draw(_pre_layers(nd)))
    return _aten_case(key, nd, c, lambda self, x: op(x, pad), text, draw(_aten_pre(nd)))


# new tensors


@_cases(*rules.aten("empty.memory_format", "zeros", "ones", "full", "new_zeros", "new_ones", "new_empty",
                    "new_full", "scalar_tensor", "arange.default", "arange.start", "arange.start_step"))
@st.composite
def _aten_new_tensor_cases(draw, key):
    nd = draw(st.sampled_from((1, 2, 3)))
    c = draw(_channel_counts)
    pre = draw(_aten_pre(nd))
    op = aten_op(key)
    short = key.name.removeprefix("aten::")
    axis = draw(st.integers(2, nd + 1))
    extra = draw(st.integers(0, 3))
    if short.startswith("arange"):
        start, step = draw(st.integers(0, 3)), draw(st.integers(1, 3))
        arguments = {"arange.default": lambda n: (n,), "arange.start": lambda n: (start, n),
                     "arange.start_step": lambda n: (start, n, step)}[short]
        return _aten_case(key, nd, c, lambda self, x: op(*arguments(x.size(axis) + extra)),
                          _aten_text(key, *arguments(f"x.size({axis}) + {extra}")), pre)
    if short == "scalar_tensor":
        return _aten_case(key, nd, c, lambda self, x: (x, op(2.0)), "(x, aten::scalar_tensor(2.0))", pre)

    def size(x):
        return [x.size(axis) + extra, 2]

    if short.startswith("new_"):
        arguments = (lambda x: (x, size(x), 1.0)) if short == "new_full" else (lambda x: (x, size(x)))
    elif short == "full":
        arguments = lambda x: (size(x), 1.0)  # noqa: E731
    else:
        arguments = lambda x: (size(x),)  # noqa: E731
    text = _aten_text(key, *(["x"] if short.startswith("new_") else []), f"[x.size({axis}) + {extra}, 2]")
    return _aten_case(key, nd, c, lambda self, x: op(*arguments(x)), text, pre)
