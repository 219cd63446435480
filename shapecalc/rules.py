"""THE size-rule registry: one decorated function per op, one signature.

A rule is ``rule(ctx, *args, **kwargs) -> value``: ``args``/``kwargs`` are the
node's arguments with tensors replaced by :class:`SymbolicTensor` and sizes
by sympy expressions; ``ctx`` (a :class:`RuleContext`) gives the module of a
``call_module`` node and lets the rule state what the forward pass needs
(``ctx.require``) and simplify clamped sizes against what is known so far
(``ctx.simplify``).  Keys are ``nn.Module`` classes, functions, or method names
(``"view"``).  Adding an op means one rule here plus its cross-check case in
``shapecalc.strategies``; nothing else changes.

Every formula is PyTorch's own (``torch/_meta_registrations.py``,
``aten/src/ATen/native/Pool.h``, ``torch/nn/functional.py``); each is
cross-checked against real forward passes in ``tests/test_rules.py``.
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional, Protocol, Sequence

import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ._errors import UnsupportedOpError
from . import receptive
from .symbolic import (as_expr, ceildiv, eq, floor_of, floordiv, format_expr, ge, gt, is_concrete, largest, le, lt,
                       smallest)
from .tensors import AxisGeometry, SymbolicTensor


class RuleContext(Protocol):
    node_name: str
    module: Optional[nn.Module]
    training: bool

    def require(self, condition, reason: str) -> None: ...
    def simplify(self, expr): ...
    def always(self, condition) -> Optional[bool]: ...
    def note(self, text: str) -> None: ...
    def record_crop(self, source, result, offsets) -> None: ...


#: merge kinds: how a rule combines two or more positioned tensors
#: ("broadcast": position by position after broadcasting, as add or maximum;
#: "concat": side by side along ``dim``, aligned on the other axes;
#: "stack": along a new axis, aligned on all of them)
MERGE_KINDS = ("broadcast", "concat", "stack")


@dataclass(frozen=True)
class Sampling:
    """How a resampling op reads its source (PyTorch's source index): the
    mode (nearest, bilinear, ..., area, adaptive_avg, adaptive_max), the
    corners convention, the scale factors PyTorch's source index uses (when
    passed and not recomputed) and the node whose ``.shape`` gave ``size=``."""

    mode: str
    align_corners: Optional[bool] = None
    scale_factors: Optional[tuple] = None
    size_source: Any = None   # a torch.fx.Node or None


@dataclass(frozen=True)
class Rule:
    """A size rule and what the rest of shapecalc needs to know about its op.

    ``merge``: None or a :data:`MERGE_KINDS` entry (the merge audit checks
    where the inputs' pixels sit).  ``resample``: ``(node, graph_module,
    spatial_count) -> Sampling | None`` (the resampling audit).  ``params``:
    ``(node, graph_module) -> str``, the params column.  ``spatial_rank``: an
    int or ``(module_or_node) -> int | None``, how many spatial axes the op
    works on.  ``channels``: the module attribute holding the input channels,
    or ``(node, graph_module) -> int | None``.  ``keeps_channels``: the op
    leaves the channel axis as it is (what input-channel inference follows),
    or ``(node) -> bool``."""

    name: str
    function: Callable[..., Any]
    merge: Optional[str] = None
    resample: Optional[Callable[..., Optional[Sampling]]] = None
    params: Optional[Callable[..., str]] = None
    spatial_rank: Any = None
    channels: Any = None
    keeps_channels: Any = False

    def keeps_channels_of(self, node) -> bool:
        return bool(self.keeps_channels(node) if callable(self.keeps_channels) else self.keeps_channels)

    def rank_of(self, module_or_node) -> Optional[int]:
        if callable(self.spatial_rank):
            return self.spatial_rank(module_or_node)
        return self.spatial_rank

    def params_text(self, node, graph_module) -> str:
        return self.params(node, graph_module) if self.params is not None else ""


RULES: dict[Any, Rule] = {}


def rule(*keys, merge: Optional[str] = None, resample=None, params=None, spatial_rank=None, channels=None,
         keeps_channels=False):
    """Register ``function`` as the size rule of every key (module class,
    function, or method name), with what the rest of shapecalc needs to know
    about the op (see :class:`Rule`)."""
    if merge is not None and merge not in MERGE_KINDS:
        raise ValueError(f"merge={merge!r}: use one of {MERGE_KINDS}")

    def register(function):
        for key in dict.fromkeys(keys):  # F.conv2d is torch.conv2d: one key
            if key in RULES:
                raise ValueError(f"two rules for {key!r}")
            RULES[key] = Rule(function.__name__, function, merge, resample, params, spatial_rank, channels,
                              keeps_channels)
        return function

    return register


def lookup(kind: str, target) -> Optional[Rule]:
    """The rule for a graph node: ``kind`` is the fx op, ``target`` the module
    instance, function or method name."""
    if kind == "call_module":
        for cls in type(target).__mro__:
            if cls in RULES:
                return RULES[cls]
            if _qualified(cls) in RULES:
                return RULES[_qualified(cls)]
        return None
    if kind == "call_method":
        return RULES.get(str(target))
    try:
        return RULES.get(target) or RULES.get(_qualified(target))
    except TypeError:  # unhashable target
        return None


@dataclass(frozen=True)
class QualifiedName:
    """A key for a function or class of a library shapecalc does not import
    (torchvision's ``stochastic_depth``), matched by ``module.qualname``."""

    name: str


def _qualified(target) -> Optional[QualifiedName]:
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return QualifiedName(f"{module}.{name}") if isinstance(module, str) and isinstance(name, str) else None


def node_rule(node, graph_module) -> Optional[Rule]:
    """The rule of an fx node (None for placeholders, outputs, unknown ops)."""
    if node.op == "call_module":
        return lookup(node.op, graph_module.get_submodule(node.target))
    if node.op in ("call_function", "call_method"):
        return lookup(node.op, node.target)
    return None


def registered_class(module: nn.Module):
    """The class a module's rule was registered for (a MaxPool2d subclass:
    nn.MaxPool2d)."""
    return next((cls for cls in type(module).__mro__ if cls in RULES or _qualified(cls) in RULES), None)


def key_name(key) -> str:
    if isinstance(key, QualifiedName):
        return key.name
    if isinstance(key, str):
        return f"Tensor.{key}"
    if isinstance(key, type):
        return f"{key.__module__.replace('torch.nn.modules', 'nn').split('.')[0]}.{key.__name__}" if key.__module__.startswith("torch.nn") else key.__name__
    module = getattr(key, "__module__", None) or ""
    return f"{module}.{getattr(key, '__name__', repr(key))}"


# ---------------------------------------------------------------------------
# small helpers


def _spatial_axes(count: int) -> str:
    return f"{count} spatial {'axis' if count == 1 else 'axes'}"


def _per_axis(value, count: int, what: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return tuple(value) * count
        if len(value) != count:
            raise UnsupportedOpError(f"{what} {tuple(value)} has {len(value)} entries for {_spatial_axes(count)}")
        return tuple(value)
    return (value,) * count


def _expect_tensor(value, what: str) -> SymbolicTensor:
    if not isinstance(value, SymbolicTensor):
        raise UnsupportedOpError(f"{what} expected a tensor, got {type(value).__name__}")
    return value


def _spatial_count(x: SymbolicTensor, nd: int) -> None:
    if len(x.spatial) != nd:
        raise UnsupportedOpError(f"a {nd}-d spatial op got a tensor with {_spatial_axes(len(x.spatial))}")


def _nonempty(ctx: RuleContext, sizes) -> None:
    for size in sizes:
        ctx.require(ge(size, 1), f"needs a non-empty input (size {format_expr(size)})")


def _axis_geometry(scale, shift, rf, window) -> AxisGeometry:
    """An axis's geometry; where the exact window is known its widest extent
    is the receptive field (the per-op formulas assume every index's field
    has the same width, which a staircase of transposed convs breaks)."""
    widest = receptive.widest(window)
    return AxisGeometry(scale, shift, rf if widest is None else sympy.Integer(widest), window)


def _windowed_geometry(g: Optional[AxisGeometry], kernel: int, stride: int, pad_left: int, dilation: int):
    """Coordinate map and receptive field after a conv or pool window."""
    if g is None:
        return None
    span = dilation * (kernel - 1)
    rf = None if g.rf is None or g.stride is None else g.rf + span * g.stride
    if g.position_free:
        return g
    shift = (g.shift + pad_left - sympy.Rational(span, 2)) / stride
    return _axis_geometry(g.scale / stride, shift, rf, receptive.conv_window(g.window, kernel, stride, pad_left, dilation))


def _channels(ctx: RuleContext, x: SymbolicTensor, expected: int, what: str) -> None:
    if x.ndim >= 2:
        ctx.require(eq(x.shape[1], expected), f"{what} expects {expected} input channels, got {format_expr(x.shape[1])}")


# ---------------------------------------------------------------------------
# what a rule tells the rest of shapecalc: spatial rank, params text, sampling


def _target_of(module_or_node):
    """The registered key behind a module or an fx node: a module's
    registered class (never a subclass), a function node's function."""
    if isinstance(module_or_node, nn.Module):
        return registered_class(module_or_node)
    return getattr(module_or_node, "target", None)


def _numbered(module_or_node) -> Optional[int]:
    """The spatial rank torch's own name gives the registered key
    (nn.MaxPool2d, F.avg_pool3d, nn.Dropout1d); a subclass is ranked by the
    class it derives from, whatever it is called."""
    name = getattr(_target_of(module_or_node), "__name__", "")
    return int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else None


def _kernel_rank(module: nn.Module) -> int:
    return len(module.kernel_size)


def _module_rank(module: nn.Module) -> int:
    """What a module's rule says its spatial rank is."""
    rank = lookup("call_module", module).rank_of(module)
    if rank is None:
        raise UnsupportedOpError(f"{type(module).__name__}: no spatial rank")
    return rank


def _graph_value(graph_module, node):
    """The tensor a ``get_attr`` node reads (a parameter or buffer), else None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    value = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def bound_arguments(node, graph_module=None) -> dict:
    """A function or method node's arguments by the names of its rule's
    parameters (``{"x": ..., "kernel_size": 3, "stride": None, ...}``)."""
    found = node_rule(node, graph_module) if graph_module is not None or node.op != "call_module" else None
    if found is None:
        return {}
    try:
        bound = inspect.signature(found.function).bind(None, *node.args, **node.kwargs)
    except TypeError:
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


def _tuple_text(values) -> str:
    values = tuple(values)
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


_WINDOW_PARAMETERS = (("kernel_size", "k", None), ("stride", "s", 1), ("padding", "p", 0), ("dilation", "d", 1),
                      ("output_padding", "op", 0))


def _window_params(node, graph_module) -> str:
    """The window parameters that move sizes, short: ``k3 s2 p1 d2 ceil``."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        values = {name: getattr(module, name, None) for name, _, _ in _WINDOW_PARAMETERS}
        values["ceil_mode"] = getattr(module, "ceil_mode", False)
    else:
        values = bound_arguments(node, graph_module)
        weight = _graph_value(graph_module, values.get("weight"))
        if weight is not None and weight.ndim > 2:  # a functional conv's kernel is its weight's shape
            values["kernel_size"] = tuple(weight.shape[2:])
    parts = []
    for name, prefix, default in _WINDOW_PARAMETERS:
        value = values.get(name)
        if value is None or isinstance(value, torch.fx.Node) or value in ([], ()):
            continue
        if isinstance(value, str):
            parts.append(f"{prefix}={value}")
            continue
        items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, torch.fx.Node) for v in items):
            continue
        if name == "kernel_size" or any(v != default for v in items):
            parts.append(f"{prefix}{_tuple_text(items)}")
    if values.get("ceil_mode") is True:
        parts.append("ceil")
    return " ".join(parts)


def _adaptive_params(node, graph_module) -> str:
    if node.op == "call_module":
        output_size = graph_module.get_submodule(node.target).output_size
    else:
        output_size = bound_arguments(node, graph_module).get("output_size")
    return f"out={output_size}"


LINEAR_MODES = ("linear", "bilinear", "trilinear", "bicubic")


def _interpolation_params(node, graph_module) -> str:
    if node.op == "call_module":
        m = graph_module.get_submodule(node.target)
        return m.mode + (f" x{m.scale_factor}" if m.scale_factor else f" size={m.size}")
    arguments = bound_arguments(node, graph_module)
    text = str(arguments.get("mode", "nearest"))
    if arguments.get("align_corners"):
        text += " align_corners"
    if arguments.get("scale_factor") is not None:
        text += f" x{arguments['scale_factor']}"
    return text


def _per_axis_factors(value, count: int) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value) if len(value) == count else tuple(value) * count
    return (value,) * count


def _size_source(arg):
    """The tensor whose ``.shape``/``.size()`` an interpolate ``size=`` came from."""
    if isinstance(arg, (list, tuple)):
        sources = {_size_source(a) for a in arg}
        return sources.pop() if len(sources) == 1 else None
    if not isinstance(arg, torch.fx.Node):
        return None
    if arg.op == "call_function" and arg.target is operator.getitem:
        return _size_source(arg.args[0])
    if arg.op == "call_function" and arg.target is getattr and arg.args[1:2] == ("shape",):
        return arg.args[0]
    if arg.op == "call_method" and arg.target == "size":
        return arg.args[0]
    return None


def _interpolation_sampling(node, graph_module, count: int) -> Sampling:
    if node.op == "call_module":
        m = graph_module.get_submodule(node.target)
        mode, corners, factor, recompute, size = m.mode, m.align_corners, m.scale_factor, \
            getattr(m, "recompute_scale_factor", None), None
    else:
        arguments = bound_arguments(node, graph_module)
        mode, corners, factor = arguments.get("mode", "nearest"), arguments.get("align_corners"), arguments.get("scale_factor")
        recompute, size = arguments.get("recompute_scale_factor"), arguments.get("size")
    # PyTorch's source index uses a passed factor unless told to recompute it
    factors = _per_axis_factors(factor, count) if factor is not None and not recompute else None
    return Sampling(mode, bool(corners) if mode in LINEAR_MODES else None, factors, _size_source(size))


def _adaptive_sampling(node, graph_module, count: int) -> Sampling:
    if node.op == "call_module":
        average = isinstance(graph_module.get_submodule(node.target), _ADAPTIVE_AVERAGE_MODULES)
    else:
        average = lookup(node.op, node.target).name == "functional_adaptive_average_pooling"
    return Sampling("adaptive_avg" if average else "adaptive_max")


_ADAPTIVE_AVERAGE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _functional_conv_rank(node) -> Optional[int]:
    arguments = bound_arguments(node)
    weight = _graph_value(node.graph.owning_module, arguments.get("weight"))
    return weight.ndim - 2 if weight is not None else _numbered(node)


def _functional_conv_channels(node, graph_module) -> Optional[int]:
    arguments = bound_arguments(node, graph_module)
    weight = _graph_value(graph_module, arguments.get("weight"))
    groups = arguments.get("groups", 1)
    return int(weight.shape[1]) * groups if weight is not None and isinstance(groups, int) else None


def _index_keeps_channels(node) -> bool:
    """``x[:, :, a:b]``: an index that takes every batch and channel entry."""
    index = node.args[1] if len(node.args) > 1 else None
    return isinstance(index, tuple) and len(index) >= 2 and all(i == slice(None) for i in index[:2])


def _slice_params(node, graph_module) -> str:
    index = node.args[1] if len(node.args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return "[" + ", ".join(_slice_text(i) for i in items) + "]"


def _slice_text(item) -> str:
    if isinstance(item, slice):
        def bound(b):
            if b is None:
                return ""
            return b.name if isinstance(b, torch.fx.Node) else str(b)
        return f"{bound(item.start)}:{bound(item.stop)}" + (f":{item.step}" if item.step not in (None, 1) else "")
    if isinstance(item, torch.fx.Node):
        return item.name
    return "..." if item is Ellipsis else str(item)


# ---------------------------------------------------------------------------
# convolutions


def _conv(ctx, x: SymbolicTensor, nd: int, out_channels: int, kernel, stride, padding, dilation, padding_mode="zeros"):
    _spatial_count(x, nd)
    kernel, stride, dilation = (_per_axis(v, nd, n) for v, n in ((kernel, "kernel_size"), (stride, "stride"), (dilation, "dilation")))
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * nd
        elif padding == "same":
            # PyTorch puts the odd extra pixel of 'same' padding on the right.
            pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
        else:
            raise UnsupportedOpError(f"padding={padding!r}")
    else:
        pads = [(p, p) for p in _per_axis(padding, nd, "padding")]
    _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, k, s, (left, right), d in zip(x.spatial_sizes, x.geometry, kernel, stride, pads, dilation):
        if padding_mode == "reflect":
            ctx.require(gt(n, max(left, right)), f"reflect padding {max(left, right)} must be smaller than the input ({format_expr(n)})")
        elif padding_mode == "circular":
            ctx.require(ge(n, max(left, right)), f"circular padding {max(left, right)} must not exceed the input ({format_expr(n)})")
        reach = n + left + right - d * (k - 1) - 1
        ctx.require(ge(reach, 0), f"kernel {d * (k - 1) + 1} is larger than the padded input ({format_expr(n + left + right)})")
        # floor(r/s) + 1 written as floor((r + s)/s): one floor, the form people write.
        sizes.append(floordiv(reach + s, s))
        geometry.append(_windowed_geometry(g, k, s, left, d))
    shape = list(x.shape)
    if x.ndim == nd + 2:
        shape[1] = sympy.Integer(out_channels)
    else:
        shape[0] = sympy.Integer(out_channels)
    return SymbolicTensor(tuple(shape), x.spatial, ()).with_spatial(sizes, geometry)


@rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, params=_window_params, spatial_rank=_kernel_rank, channels="in_channels")
def convolution(ctx, x, *args, **kwargs):
    m = ctx.module
    x = _expect_tensor(x, type(m).__name__)
    nd = len(m.kernel_size)
    _channels(ctx, x, m.in_channels, type(m).__name__)
    return _conv(ctx, x, nd, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode)


@rule(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, params=_window_params,
      spatial_rank=_functional_conv_rank, channels=_functional_conv_channels)
def functional_convolution(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x, weight = _expect_tensor(x, "conv"), _expect_tensor(weight, "conv weight")
    nd = weight.ndim - 2
    kernel = tuple(int(k) for k in weight.shape[2:])
    _channels(ctx, x, int(weight.shape[1]) * int(groups), "conv")
    return _conv(ctx, x, nd, int(weight.shape[0]), kernel, stride, padding, dilation)


def _transposed_axis(g: Optional[AxisGeometry], k: int, s: int, p: int, d: int):
    if g is None:
        return None
    if g.position_free:
        return g
    # An output index gathers the taps j with (u + p - j*d) divisible by s;
    # at most ceil(k / (s/gcd(d, s))) of them, d/gcd(d, s) input steps apart.
    step = s // math.gcd(d, s)
    taps = -(-k // step)
    rf = None if g.rf is None else g.rf + (taps - 1) * sympy.Rational(d, math.gcd(d, s)) * g.stride
    return _axis_geometry(g.scale * s, g.shift * s + sympy.Rational(d * (k - 1), 2) - p, rf,
                          receptive.transposed_window(g.window, k, s, p, d))


@rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, params=_window_params, spatial_rank=_kernel_rank,
      channels="in_channels")
def transposed_convolution(ctx, x, output_size=None):
    m = ctx.module
    if output_size is not None:
        raise UnsupportedOpError("ConvTranspose called with output_size= (pass output_padding instead)")
    x = _expect_tensor(x, type(m).__name__)
    nd = len(m.kernel_size)
    _spatial_count(x, nd)
    _channels(ctx, x, m.in_channels, type(m).__name__)
    _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, k, s, p, d, op in zip(x.spatial_sizes, x.geometry, m.kernel_size, m.stride, m.padding, m.dilation, m.output_padding):
        size = (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        ctx.require(ge(size, 1), f"output size {format_expr(size)} must be positive")
        sizes.append(size)
        geometry.append(_transposed_axis(g, k, s, p, d))
    shape = list(x.shape)
    shape[1 if x.ndim == nd + 2 else 0] = sympy.Integer(m.out_channels)
    return SymbolicTensor(tuple(shape), x.spatial, ()).with_spatial(sizes, geometry)


# ---------------------------------------------------------------------------
# pooling


def pooled_size(n, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool):
    """PyTorch's pooling_output_shape as one floor division.

    With ceil_mode, PyTorch rounds up and then drops a last window that would
    start inside the right padding: ``(out-1)*s >= n + p``.  Both steps
    together are ``floor((n + 2p - d(k-1) - 1 + min(d(k-1) - p, s - 1))/s) + 1``:
    the drop happens exactly when rounding up went past ``d(k-1) - p``.
    """
    reach = n + 2 * padding - dilation * (kernel - 1) - 1
    extra = min(dilation * (kernel - 1) - padding, stride - 1) if ceil_mode else 0
    return floordiv(reach + extra + stride, stride), reach + extra


def _pool(ctx, x: SymbolicTensor, nd: int, kernel, stride, padding, dilation, ceil_mode: bool):
    x = _expect_tensor(x, "pool")
    _spatial_count(x, nd)
    kernel = _per_axis(kernel, nd, "kernel_size")
    stride = _per_axis(stride if stride not in (None, [], ()) else kernel, nd, "stride")
    padding = _per_axis(padding, nd, "padding")
    dilation = _per_axis(dilation, nd, "dilation")
    for k, p in zip(kernel, padding):
        # PyTorch: "pad should be at most half of kernel size" (the kernel, not the dilated window)
        ctx.require(ge(k // 2, p), f"padding {p} is more than half the kernel size {k}")
    _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, k, s, p, d in zip(x.spatial_sizes, x.geometry, kernel, stride, padding, dilation):
        size, numerator = pooled_size(n, k, s, p, d, ceil_mode)
        ctx.require(ge(numerator, 0), f"pooling output {format_expr(size)} must be positive")
        sizes.append(size)
        geometry.append(_windowed_geometry(g, k, s, p, d))
    return x.with_spatial(sizes, geometry)


def _with_indices(values: SymbolicTensor, return_indices: bool):
    """``(values, indices)`` where torch returns both: the indices have the
    values' shape (and their positions, for an unpool to invert)."""
    return (values, values) if return_indices else values


@rule(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def max_pooling(ctx, x):
    m = ctx.module
    nd = _module_rank(m)
    return _with_indices(_pool(ctx, x, nd, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), m.return_indices)


@rule(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def average_pooling(ctx, x):
    m = ctx.module
    nd = _module_rank(m)
    return _average_pool(ctx, x, nd, m.kernel_size, m.stride, m.padding, m.ceil_mode)


def _average_pool(ctx, x, nd: int, kernel, stride, padding, ceil_mode: bool):
    x = _expect_tensor(x, "avg_pool")
    if nd == 3:
        # avg_pool3d alone checks the *unpadded* input against the kernel:
        # "input image (T: 2 H: 2 W: 2) smaller than kernel size"
        for n, k in zip(x.spatial_sizes, _per_axis(kernel, nd, "kernel_size")):
            ctx.require(ge(n, k), f"avg_pool3d needs an input of at least the kernel size {k} (size {format_expr(n)})")
    return _pool(ctx, x, nd, kernel, stride, padding, 1, ceil_mode)


@rule(F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, params=_window_params,
      spatial_rank=_numbered, keeps_channels=True)
def functional_max_pooling(ctx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    x = _expect_tensor(x, "max_pool")
    return _with_indices(_pool(ctx, x, len(x.spatial), kernel_size, stride, padding, dilation, ceil_mode), return_indices)


# F.max_pool2d(..., return_indices=True) is traced as these; they return
# (values, indices) whatever return_indices says.
@rule(F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices, params=_window_params,
      spatial_rank=_numbered, keeps_channels=True)
def max_pooling_with_indices(ctx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    x = _expect_tensor(x, "max_pool")
    return _with_indices(_pool(ctx, x, len(x.spatial), kernel_size, stride, padding, dilation, ceil_mode), True)


@rule(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def functional_average_pooling(ctx, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    x = _expect_tensor(x, "avg_pool")
    return _average_pool(ctx, x, len(x.spatial), kernel_size, stride, padding, ceil_mode)


def _adaptive_rf(g: Optional[AxisGeometry], n, out):
    """Widest adaptive-pool cell, ``[floor(i*n/o), ceil((i+1)*n/o))``, as rf."""
    if g is None or g.rf is None or g.stride is None:
        return None
    out = as_expr(out)
    if out == 1:
        return g.rf + (n - 1) * g.stride
    if is_concrete(n):
        n_, o_ = int(n), int(out)
        # an empty output (area interpolation to size 0) has no cells
        widest = max((-(-(i + 1) * n_ // o_) - (i * n_) // o_ for i in range(o_)), default=None)
        return None if widest is None else g.rf + (widest - 1) * g.stride
    return None


def _resampled_geometry(g: Optional[AxisGeometry], n, out, *, align_corners: bool, ratio=None, taps: int = 2,
                        window=None):
    """Where the pixels of a resampled axis sample their source: the affine
    map of PyTorch's source index (exact for the linear modes; for nearest
    and adaptive cells the grid the staircase follows).  ``window`` is the
    receptive field the caller worked out for the mode."""
    if g is None:
        return None
    rf = None if g.rf is None or g.stride is None else g.rf + (taps - 1) * g.stride
    if g.position_free:
        return g
    n, out = as_expr(n), as_expr(out)
    if align_corners:
        if n == 1 or out == 1:
            # every output reads source 0 (PyTorch's scale is 0 for out == 1)
            return AxisGeometry(None, None, rf, receptive.at_index(g.window, 0))
        factor = (out - 1) / (n - 1)
        return _axis_geometry(g.scale * factor, g.shift * factor, rf, window)
    factor = as_expr(ratio) if ratio is not None else out / n
    return _axis_geometry(g.scale * factor, (g.shift + sympy.Rational(1, 2)) * factor - sympy.Rational(1, 2), rf, window)


def _adaptive(ctx, x: SymbolicTensor, nd: int, output_size, average: bool = False):
    x = _expect_tensor(x, "adaptive pool")
    _spatial_count(x, nd)
    targets = _per_axis(output_size, nd, "output_size")
    if not (average and all(t is not None and as_expr(t) == 1 for t in targets)):
        # averaging down to one value per axis is a mean, which PyTorch also
        # takes over an empty input; every other adaptive pool refuses one
        _nonempty(ctx, x.spatial_sizes)
    sizes, geometry = [], []
    for n, g, target in zip(x.spatial_sizes, x.geometry, targets):
        out = n if target is None else as_expr(target)
        sizes.append(out)
        if out == 1:
            geometry.append(None if g is None else AxisGeometry(None, None, _adaptive_rf(g, n, 1),
                                                                receptive.global_window(g.window, n)))
        else:
            resampled = _resampled_geometry(g, n, out, align_corners=False, taps=1)
            geometry.append(resampled if resampled is None or resampled.position_free else _axis_geometry(
                resampled.scale, resampled.shift, _adaptive_rf(g, n, out), receptive.adaptive_window(g.window, n, out)))
    return x.with_spatial(sizes, geometry)


_ADAPTIVE = dict(params=_adaptive_params, resample=_adaptive_sampling, spatial_rank=_numbered, keeps_channels=True)


@rule(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
      nn.AdaptiveMaxPool3d, **_ADAPTIVE)
def adaptive_pooling(ctx, x):
    m = ctx.module
    pooled = _adaptive(ctx, x, _module_rank(m), m.output_size, average=isinstance(m, _ADAPTIVE_AVERAGE_MODULES))
    return _with_indices(pooled, getattr(m, "return_indices", False))


@rule(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, **_ADAPTIVE)
def functional_adaptive_pooling(ctx, x, output_size, return_indices=False):
    x = _expect_tensor(x, "adaptive pool")
    return _with_indices(_adaptive(ctx, x, len(x.spatial), output_size), return_indices)


@rule(F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices,
      **_ADAPTIVE)
def adaptive_pooling_with_indices(ctx, x, output_size, return_indices=False):
    x = _expect_tensor(x, "adaptive pool")
    return _with_indices(_adaptive(ctx, x, len(x.spatial), output_size), True)


def _unpool(ctx, x, indices, nd: int, kernel, stride, padding, output_size):
    x, indices = _expect_tensor(x, "max_unpool"), _expect_tensor(indices, "max_unpool indices")
    _spatial_count(x, nd)
    kernel = _per_axis(kernel, nd, "kernel_size")
    stride = _per_axis(stride if stride not in (None, [], ()) else kernel, nd, "stride")
    padding = _per_axis(padding, nd, "padding")
    if indices.ndim != x.ndim:
        ctx.require(sympy.false, f"indices have {indices.ndim} dimensions, the input {x.ndim}")
    for a, b in zip(x.shape, indices.shape):
        ctx.require(eq(a, b), f"indices of shape {tuple(format_expr(v) for v in indices.shape)} for an input of shape "
                              f"{tuple(format_expr(v) for v in x.shape)}")
    # "Expected input to have non-zero size for non-batch dimensions"
    _nonempty(ctx, x.shape[1:])
    defaults = [(n - 1) * s + k - 2 * p for n, k, s, p in zip(x.spatial_sizes, kernel, stride, padding)]
    if output_size is None:
        sizes = defaults
        ctx.note("max_unpool without output_size: where the pooled input was larger than the default output, "
                 "some indices may point outside it (torch then raises 'Found an invalid max index', depending "
                 "on the values); pass output_size=<the pooled input's size>")
    else:
        sizes = [as_expr(v) for v in output_size]
        if len(sizes) == nd + 2:
            sizes = sizes[2:]
        if len(sizes) != nd:
            ctx.require(sympy.false, f"output_size {tuple(output_size)} has {len(sizes)} entries for {_spatial_axes(nd)}")
        for size, default, s in zip(sizes, defaults, stride):
            # F._unpool_output_size: within one stride of the default, exclusive
            ctx.require(sympy.And(gt(size, default - s), lt(size, default + s)),
                        f"output_size {format_expr(size)} must lie strictly between {format_expr(default - s)} and "
                        f"{format_expr(default + s)}")
    for size in sizes:
        # an empty output has no place for the (non-empty) input's indices
        ctx.require(ge(size, 1), f"max_unpool output {format_expr(size)} must be positive")
    geometry = [_transposed_axis(g, k, s, p, 1) for g, k, s, p in zip(x.geometry, kernel, stride, padding)]
    return x.with_spatial(sizes, geometry)


@rule(nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def max_unpooling(ctx, x, indices, output_size=None):
    m = ctx.module
    return _unpool(ctx, x, indices, _module_rank(m), m.kernel_size, m.stride, m.padding, output_size)


@rule(F.max_unpool1d, F.max_unpool2d, F.max_unpool3d, params=_window_params, spatial_rank=_numbered, keeps_channels=True)
def functional_max_unpooling(ctx, x, indices, kernel_size, stride=None, padding=0, output_size=None):
    x = _expect_tensor(x, "max_unpool")
    return _unpool(ctx, x, indices, len(x.spatial), kernel_size, stride, padding, output_size)


@rule(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, **_ADAPTIVE)
def functional_adaptive_average_pooling(ctx, x, output_size):
    x = _expect_tensor(x, "adaptive pool")
    return _adaptive(ctx, x, len(x.spatial), output_size, average=True)


# ---------------------------------------------------------------------------
# resampling

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
    return _interpolate(ctx, x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)


@rule(nn.Upsample, params=_interpolation_params, resample=_interpolation_sampling, keeps_channels=True)
def upsample(ctx, x):
    m = ctx.module
    return _interpolate(ctx, x, m.size, m.scale_factor, m.mode, m.align_corners, getattr(m, "recompute_scale_factor", None))


# ---------------------------------------------------------------------------
# padding


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


# ---------------------------------------------------------------------------
# shape-preserving ops

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
def functional_batch_norm(ctx, x, *args, **kwargs):
    return _expect_tensor(x, "batch_norm")


# ---------------------------------------------------------------------------
# merges


def broadcast_size(ctx, a, b):
    """PyTorch broadcasting of one axis: equal, or one side is 1."""
    a, b = as_expr(a), as_expr(b)
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    equal = eq(a, b)
    ctx.require(sympy.Or(equal, eq(a, 1), eq(b, 1)),
                f"sizes {format_expr(a)} and {format_expr(b)} must match (or one be 1)")
    if ctx.always(equal):
        return a
    if ctx.always(ge(a, 1)) and ctx.always(ge(b, 1)):
        # Equal or one of them 1, and neither 0: the larger one, a form the
        # JSON contract allows (Piecewise is not in it).
        return ctx.simplify(largest(a, b))
    return sympy.Piecewise((b, eq(a, 1)), (a, True))


def _merge_geometry(ga: Optional[AxisGeometry], gb: Optional[AxisGeometry]):
    """The union of two paths' receptive fields, on the first path's map."""
    if ga is None or gb is None:
        return ga if gb is None else gb
    window = receptive.union(ga.window, gb.window)
    if ga.position_free or gb.position_free:
        free, other = (ga, gb) if ga.position_free else (gb, ga)
        # A global branch sees the whole input: every index's field covers it.
        rf = None if free.rf is None or other.rf is None else largest(free.rf, other.rf)
        return AxisGeometry(other.scale, other.shift, rf, window)
    if receptive.widest(window) is not None:
        return _axis_geometry(ga.scale, ga.shift, None, window)
    if ga.rf is None or gb.rf is None:
        return AxisGeometry(ga.scale, ga.shift, None, window)
    apart = sympy.expand(gb.center - ga.center)
    if not apart.is_Number:
        # Centres a size-dependent distance apart (a resampled path): the
        # hull has no closed form worth showing; the merge audit reports it.
        return AxisGeometry(ga.scale, ga.shift, None, window)
    low = smallest(ga.center - ga.rf / 2, gb.center - gb.rf / 2)
    high = largest(ga.center + ga.rf / 2, gb.center + gb.rf / 2)
    return AxisGeometry(ga.scale, ga.shift, high - low, window)


def elementwise(ctx, a, b):
    if not isinstance(a, SymbolicTensor) and not isinstance(b, SymbolicTensor):
        return None
    if not isinstance(b, SymbolicTensor):
        return a
    if not isinstance(a, SymbolicTensor):
        return b
    ndim = max(a.ndim, b.ndim)
    shape_a = (sympy.Integer(1),) * (ndim - a.ndim) + a.shape
    shape_b = (sympy.Integer(1),) * (ndim - b.ndim) + b.shape
    shape = tuple(broadcast_size(ctx, x, y) for x, y in zip(shape_a, shape_b))
    spatial_a = {i + ndim - a.ndim: g for i, g in zip(a.spatial, a.geometry)}
    spatial_b = {i + ndim - b.ndim: g for i, g in zip(b.spatial, b.geometry)}
    spatial = tuple(sorted(set(spatial_a) | set(spatial_b)))
    geometry = []
    for axis in spatial:
        ga, gb = spatial_a.get(axis), spatial_b.get(axis)
        # A size-1 side broadcasts: every index sees the same value.
        if axis in spatial_a and shape_a[axis] == 1 and shape_b[axis] != 1:
            ga = None
        if axis in spatial_b and shape_b[axis] == 1 and shape_a[axis] != 1:
            gb = None
        geometry.append(_merge_geometry(ga, gb))
    return SymbolicTensor(shape, spatial, tuple(geometry))


def exact_in_double(value: float, dividing: bool = False) -> bool:
    """Whether Python's double arithmetic with ``value`` is exact for every
    size (< 2**30): a product or sum needs a short dyadic (0.5, 1.5, 0.75),
    a quotient a power of two."""
    if value != value or value in (float("inf"), float("-inf")):
        return False
    exact = Fraction(value)
    numerator = abs(exact.numerator)
    odd = numerator >> ((numerator & -numerator).bit_length() - 1) if numerator else 0
    if dividing:
        return odd == 1
    return odd < 1 << 22 and exact.denominator <= 1 << 22


def _python_number(value):
    if isinstance(value, sympy.Basic):
        return int(value) if value.is_Integer else float(value)
    return value


def _scalar_or_tensor(ctx, op, a, b, python_op=None):
    result = elementwise(ctx, a, b)
    if result is not None:
        return result
    if isinstance(a, float) or isinstance(b, float):
        # Python computes with a float in double precision.  On concrete
        # sizes do exactly that (int(90 * 0.7) is 62); on a symbolic size
        # accept only floats that keep every result exact, else refuse.
        if python_op is not None and all(isinstance(v, float) or is_concrete(v) for v in (a, b)):
            return python_op(_python_number(a), _python_number(b))
        dividing = python_op in (operator.truediv, operator.floordiv, operator.mod)
        for v in (a, b):
            if isinstance(v, float) and not exact_in_double(v, dividing):
                raise UnsupportedOpError(
                    f"size arithmetic with the float {v!r} rounds in double precision, so the result depends on "
                    "the size in no closed form; use integers or a factor such as 0.5")
        a, b = (as_expr(v) if isinstance(v, float) else v for v in (a, b))
    return op(a, b)


@rule(operator.add, torch.add, "add", "__add__", "__radd__", merge="broadcast", keeps_channels=True)
def add(ctx, a, b, *, alpha=1, out=None):
    return _scalar_or_tensor(ctx, _add_sizes, a, b, operator.add)


def _add_sizes(a, b):
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) + tuple(b)
    return as_expr(a) + as_expr(b) if not isinstance(a, float) and not isinstance(b, float) else a + b


@rule(operator.sub, torch.sub, "sub", "__sub__", "__rsub__", merge="broadcast", keeps_channels=True)
def subtract(ctx, a, b, *, alpha=1, out=None):
    return _scalar_or_tensor(ctx, lambda x, y: as_expr(x) - as_expr(y), a, b, operator.sub)


@rule(operator.mul, torch.mul, "mul", "__mul__", "__rmul__", merge="broadcast", keeps_channels=True)
def multiply(ctx, a, b, *, out=None):
    def times(x, y):
        if isinstance(x, (tuple, list)) and isinstance(y, int):
            return tuple(x) * y
        return as_expr(x) * as_expr(y)
    return _scalar_or_tensor(ctx, times, a, b, operator.mul)


@rule(operator.truediv, torch.div, torch.true_divide, "div", "__truediv__", merge="broadcast", keeps_channels=True)
def divide(ctx, a, b, *, rounding_mode=None, out=None):
    def ratio(x, y):
        if rounding_mode == "floor":
            return floordiv(x, y)
        return as_expr(x) / as_expr(y)
    return _scalar_or_tensor(ctx, ratio, a, b, operator.floordiv if rounding_mode == "floor" else operator.truediv)


@rule(operator.floordiv, "__floordiv__", merge="broadcast", keeps_channels=True)
def floor_divide(ctx, a, b):
    return _scalar_or_tensor(ctx, floordiv, a, b, operator.floordiv)


@rule(operator.mod, merge="broadcast", keeps_channels=True)
def modulo(ctx, a, b):
    return _scalar_or_tensor(ctx, lambda x, y: as_expr(x) - as_expr(y) * floordiv(x, y), a, b, operator.mod)


@rule(operator.neg, keeps_channels=True)
def negate(ctx, a):
    return a if isinstance(a, SymbolicTensor) else -as_expr(a)


@rule(torch.maximum, torch.minimum, merge="broadcast")
def elementwise_pair(ctx, a, b, *, out=None):
    return elementwise(ctx, a, b)


@rule(torch.cat, torch.concat, torch.concatenate, merge="concat")
def concatenate(ctx, tensors, dim=0, *, axis=None, out=None):
    dim = axis if axis is not None else dim
    tensors = [_expect_tensor(t, "cat") for t in tensors]
    first = tensors[0]
    axis = first.axis(dim)
    shape = list(first.shape)
    geometry = dict(zip(first.spatial, first.geometry))
    for other in tensors[1:]:
        if other.ndim != first.ndim:
            raise UnsupportedOpError(f"cat of a {first.ndim}-d and a {other.ndim}-d tensor")
        for i, (x, y) in enumerate(zip(shape, other.shape)):
            if i == axis:
                shape[i] = x + y
            elif x != y:
                ctx.require(eq(x, y), f"cat needs equal sizes on dim {i}: {format_expr(x)} vs {format_expr(y)}")
        for a, g in zip(other.spatial, other.geometry):
            if a != axis:
                geometry[a] = _merge_geometry(geometry.get(a), g)
    if axis in geometry:
        geometry[axis] = None  # positions along a concatenated spatial axis no longer follow one map
    return SymbolicTensor(tuple(shape), first.spatial, tuple(geometry[a] for a in first.spatial))


@rule(torch.stack, merge="stack")
def stack(ctx, tensors, dim=0, *, out=None):
    tensors = [_expect_tensor(t, "stack") for t in tensors]
    merged = tensors[0]
    for other in tensors[1:]:
        merged = elementwise(ctx, merged, other)
        for x, y in zip(tensors[0].shape, other.shape):
            if x != y:
                ctx.require(eq(x, y), f"stack needs equal sizes: {format_expr(x)} vs {format_expr(y)}")
    axis = dim % (merged.ndim + 1)
    shape = merged.shape[:axis] + (sympy.Integer(len(tensors)),) + merged.shape[axis:]
    spatial = tuple(a + 1 if a >= axis else a for a in merged.spatial)
    return SymbolicTensor(shape, spatial, merged.geometry)


# ---------------------------------------------------------------------------
# sizes and indexing


@rule("size")
def size(ctx, x, dim=None):
    x = _expect_tensor(x, "size")
    return x.shape if dim is None else x.shape[x.axis(dim)]


@rule("dim")
def dimensions(ctx, x):
    return _expect_tensor(x, "dim").ndim


@rule(builtins.getattr)
def attribute(ctx, obj, name, *default):
    if isinstance(obj, Untracked):
        raise UnsupportedOpError(f"{obj.what} is not tracked (its .{name})")
    if isinstance(obj, SymbolicTensor):
        if name == "shape":
            return obj.shape
        if name == "ndim":
            return obj.ndim
        if name in ("dtype", "device"):
            return Untracked(f"a tensor's .{name}")
        if name in ("mT", "mH"):
            if obj.ndim < 2:
                ctx.require(sympy.false, f"tensor.{name} is only supported on matrices or batches of matrices. "
                                         f"Got {obj.ndim}-D tensor.")
            return _moved(obj, [*range(obj.ndim - 2), obj.ndim - 1, obj.ndim - 2])
        raise UnsupportedOpError(f"tensor attribute .{name}")
    if isinstance(obj, tuple) and len(obj) == 2 and name in ("values", "indices"):
        # torch's (values, indices) named tuples (max, min, sort, ...)
        return obj[0 if name == "values" else 1]
    return getattr(obj, name, *default)


@rule(builtins.len)
def length(ctx, obj):
    if isinstance(obj, SymbolicTensor):
        return obj.shape[0]
    return len(obj)


@rule(builtins.int)
def to_int(ctx, value):
    if isinstance(value, float):
        return int(value)
    value = as_expr(value)
    if value.is_integer:
        return value
    # int() truncates toward zero: floor at or above 0, ceiling below
    # (a centre crop int((a - b) / 2) is negative when b is the larger).
    if ctx.always(ge(value, 0)):
        return floor_of(value)
    if ctx.always(le(value, 0)):
        return -floor_of(-value)
    return ctx.simplify(sympy.Piecewise((floor_of(value), ge(value, 0)), (-floor_of(-value), True)))


def _clamped_bound(ctx, bound, n, default):
    """Python's slice bound normalisation: negative counts from the end, then
    clamp to [0, n].  Decided against the domain where possible."""
    if bound is None:
        return as_expr(default)
    bound = as_expr(bound)
    if ctx.always(ge(bound, 0)):
        return ctx.simplify(smallest(bound, n))
    if ctx.always(lt(bound, 0)):
        return ctx.simplify(largest(0, bound + n))
    return ctx.simplify(sympy.Piecewise((largest(0, bound + n), lt(bound, 0)), (smallest(bound, n), True)))


def _slice_axis(ctx, n, geometry: Optional[AxisGeometry], index: slice):
    if index.step not in (None, 1):
        step = index.step
        if not (isinstance(step, int) and step > 0):
            raise UnsupportedOpError(f"slice step {step!r}: only positive integer steps")
    start = _clamped_bound(ctx, index.start, n, 0)
    stop = _clamped_bound(ctx, index.stop, n, n)
    length = ctx.simplify(largest(0, stop - start))
    step = index.step or 1
    if step != 1:
        length = floordiv(length + step - 1, step)
    new_geometry = None
    if geometry is not None:
        if geometry.position_free:
            new_geometry = geometry
        else:
            moved = geometry.shifted(start)
            new_geometry = moved if step == 1 else _windowed_geometry(moved, 1, step, 0, 1)
    return length, new_geometry, start


@rule(operator.getitem, params=_slice_params, keeps_channels=_index_keeps_channels)
def getitem(ctx, obj, index):
    if not isinstance(obj, SymbolicTensor):
        if isinstance(obj, (tuple, list, torch.Size)) and isinstance(index, slice):
            return tuple(obj[index])
        return obj[index]
    return _index_tensor(ctx, obj, index)


def _index_tensor(ctx, x: SymbolicTensor, index):
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (SymbolicTensor, list, torch.Tensor)) for i in items):
        raise UnsupportedOpError("advanced (tensor) indexing")
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        position = items.index(Ellipsis)
        items[position:position + 1] = [slice(None)] * (x.ndim - consumed)
    items += [slice(None)] * (x.ndim - sum(1 for i in items if i is not None))
    shape, spatial, geometry = [], [], []
    offsets = {}
    axis = 0
    old_geometry = dict(zip(x.spatial, x.geometry))
    for item in items:
        if item is None:
            shape.append(sympy.Integer(1))
            continue
        n = x.shape[axis]
        if isinstance(item, slice):
            if item == slice(None):
                length, g, start = n, old_geometry.get(axis), sympy.Integer(0)
            else:
                length, g, start = _slice_axis(ctx, n, old_geometry.get(axis), item)
            if axis in old_geometry:
                spatial.append(len(shape))
                geometry.append(g)
                offsets[axis] = start
            shape.append(length)
        else:
            position = as_expr(item)
            ctx.require(sympy.And(ge(position, -n), lt(position, n)), f"index {format_expr(position)} out of range for size {format_expr(n)}")
        axis += 1
    result = SymbolicTensor(tuple(shape), tuple(spatial), tuple(geometry))
    ctx.record_crop(x, result, offsets)
    return result


# ---------------------------------------------------------------------------
# reshaping


def _reshape(ctx, x: SymbolicTensor, sizes):
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    sizes = [as_expr(s) for s in sizes]
    total = sympy.Mul(*x.shape)
    if any(s == -1 for s in sizes):
        known = sympy.Mul(*[s for s in sizes if s != -1])
        # With a constant rest the -1 axis is floor(total/known); the check
        # below then asks that known divides total, as PyTorch does
        # (view(1, C, -1, 2) needs an even H*W).
        inferred = floordiv(total, known) if known.is_Integer and known > 0 else total / known
        sizes = [inferred if s == -1 else s for s in sizes]
    ctx.require(eq(sympy.expand(sympy.Mul(*sizes)), sympy.expand(total)), f"view {tuple(format_expr(s) for s in sizes)} does not match {format_expr(total)} elements")
    # A spatial axis survives when its exact size expression reappears, in order.
    spatial, geometry, cursor = [], [], 0
    for axis, size in enumerate(sizes):
        for k in range(cursor, len(x.spatial)):
            if x.spatial_sizes[k] == size and not size.is_Number:
                spatial.append(axis)
                geometry.append(x.geometry[k])
                cursor = k + 1
                break
    return SymbolicTensor(tuple(sizes), tuple(spatial), tuple(geometry))


@rule("view", "reshape", torch.reshape)
def reshape(ctx, x, *sizes, shape=None):
    return _reshape(ctx, _expect_tensor(x, "view"), sizes if shape is None else (shape,))


def _flatten(x: SymbolicTensor, start: int, end: int):
    start, end = x.axis(start), x.axis(end)
    merged = sympy.Mul(*x.shape[start:end + 1])
    shape = x.shape[:start] + (merged,) + x.shape[end + 1:]
    spatial, geometry = [], []
    for a, g in zip(x.spatial, x.geometry):
        if a < start:
            spatial.append(a), geometry.append(g)
        elif a > end:
            spatial.append(a - (end - start)), geometry.append(g)
        elif start == end:
            spatial.append(a), geometry.append(g)
    return SymbolicTensor(shape, tuple(spatial), tuple(geometry))


@rule(torch.flatten, "flatten")
def flatten(ctx, x, start_dim=0, end_dim=-1):
    return _flatten(_expect_tensor(x, "flatten"), start_dim, end_dim)


@rule(nn.Flatten)
def flatten_module(ctx, x):
    return _flatten(_expect_tensor(x, "Flatten"), ctx.module.start_dim, ctx.module.end_dim)


def _linear(ctx, x: SymbolicTensor, in_features: int, out_features: Optional[int], what: str):
    """Features on the last axis (channel-last tensors keep their spatial
    axes in front); a 1-d weight contracts the last axis away."""
    last = x.ndim - 1
    ctx.require(eq(x.shape[last], in_features), f"{what} expects {in_features} features, got {format_expr(x.shape[last])}")
    keep = [(a, g) for a, g in zip(x.spatial, x.geometry) if a != last]
    tail = () if out_features is None else (sympy.Integer(out_features),)
    return SymbolicTensor(x.shape[:last] + tail, tuple(a for a, _ in keep), tuple(g for _, g in keep))


@rule(nn.Linear)
def linear(ctx, x):
    m = ctx.module
    return _linear(ctx, _expect_tensor(x, "Linear"), m.in_features, m.out_features, "Linear")


@rule(F.linear)
def functional_linear(ctx, x, weight, bias=None):
    x, weight = _expect_tensor(x, "linear"), _expect_tensor(weight, "linear weight")
    if weight.ndim not in (1, 2):
        ctx.require(sympy.false, f"linear weight must be 1-d or 2-d, got {weight.ndim}-d")
    if x.ndim == 0:
        ctx.require(sympy.false, "linear of a 0-d tensor")
    out_features = None if weight.ndim == 1 else int(weight.shape[0])
    return _linear(ctx, x, int(weight.shape[-1]), out_features, "linear")


def _moved(x: SymbolicTensor, order: Sequence[int]) -> SymbolicTensor:
    order = [x.axis(a) for a in order]
    geometry = dict(zip(x.spatial, x.geometry))
    spatial = [new for new, old in enumerate(order) if old in geometry]
    return SymbolicTensor(tuple(x.shape[a] for a in order), tuple(spatial), tuple(geometry[order[a]] for a in spatial))


@rule("permute", torch.permute)
def permute(ctx, x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return _moved(_expect_tensor(x, "permute"), dims)


@rule("transpose", torch.transpose)
def transpose(ctx, x, dim0, dim1):
    x = _expect_tensor(x, "transpose")
    order = list(range(x.ndim))
    a, b = x.axis(dim0), x.axis(dim1)
    order[a], order[b] = order[b], order[a]
    return _moved(x, order)


@rule("unsqueeze", torch.unsqueeze)
def unsqueeze(ctx, x, dim):
    x = _expect_tensor(x, "unsqueeze")
    axis = dim % (x.ndim + 1)
    shape = x.shape[:axis] + (sympy.Integer(1),) + x.shape[axis:]
    return SymbolicTensor(shape, tuple(a + 1 if a >= axis else a for a in x.spatial), x.geometry)


@rule("squeeze", torch.squeeze)
def squeeze(ctx, x, dim=None):
    x = _expect_tensor(x, "squeeze")
    dims = range(x.ndim) if dim is None else [x.axis(d) for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
    drop = [a for a in dims if x.shape[a] == 1]
    undecided = [a for a in dims if not x.shape[a].is_Number]
    if undecided:
        raise UnsupportedOpError(f"squeeze of a symbolic axis ({format_expr(x.shape[undecided[0]])}) has a size-dependent rank")
    keep = [a for a in range(x.ndim) if a not in drop]
    geometry = dict(zip(x.spatial, x.geometry))
    spatial = [i for i, a in enumerate(keep) if a in geometry]
    return SymbolicTensor(tuple(x.shape[a] for a in keep), tuple(spatial), tuple(geometry[keep[i]] for i in spatial))


@rule("mean", "sum", torch.mean, torch.sum)
def reduction(ctx, x, dim=None, keepdim=False, *, dtype=None):
    # a sum or mean over an empty axis is 0 or nan, not an error
    return _reduce(ctx, x, dim, keepdim, nonempty=False)


@rule("amax", "amin", torch.amax, torch.amin)
def extremum(ctx, x, dim=(), keepdim=False):
    # "Expected reduction dim to have non-zero size"
    return _reduce(ctx, x, None if dim in ((), []) else dim, keepdim, nonempty=True)


def _reduce(ctx, x, dim, keepdim: bool, nonempty: bool):
    x = _expect_tensor(x, "reduction")
    if dim is None:
        if nonempty:
            _nonempty(ctx, x.spatial_sizes)
        return SymbolicTensor(())
    dims = {x.axis(d) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    if nonempty:
        _nonempty(ctx, [x.shape[a] for a in dims if a in x.spatial])
    geometry = dict(zip(x.spatial, x.geometry))
    shape, spatial, new_geometry = [], [], []
    for a, n in enumerate(x.shape):
        if a in dims and not keepdim:
            continue
        if a in geometry:
            spatial.append(len(shape))
            g = geometry[a]
            new_geometry.append(g if a not in dims or g is None else AxisGeometry(
                None, None, _adaptive_rf(g, n, 1), receptive.global_window(g.window, n)))
        shape.append(sympy.Integer(1) if a in dims else n)
    return SymbolicTensor(tuple(shape), tuple(spatial), tuple(new_geometry))


# ---------------------------------------------------------------------------
# ops that return several tensors (values and indices, pieces of an axis)


def _piece(x: SymbolicTensor, axis: int, start, length, geometry_known: bool = True) -> SymbolicTensor:
    """``x`` cut to ``[start, start + length)`` along ``axis``: a spatial
    axis keeps its map, moved by ``start`` (None where positions scramble)."""
    geometry = list(x.geometry)
    if axis in x.spatial:
        k = x.spatial.index(axis)
        g = geometry[k]
        geometry[k] = None if not geometry_known or g is None else g.shifted(start)
    return SymbolicTensor(x.with_dim(axis, length).shape, x.spatial, tuple(geometry))


def _scrambled(x: SymbolicTensor, axis: int, size=None) -> SymbolicTensor:
    """``x`` with the order along ``axis`` replaced (sort, topk): no coordinate map there."""
    return _piece(x, axis, 0, x.shape[axis] if size is None else size, geometry_known=False)


@rule(torch.max, torch.min, "max", "min")
def maximum_or_minimum(ctx, x, dim=None, keepdim=False, *, out=None):
    """``max(x)``: a 0-d tensor; ``max(x, dim)``: (values, indices), torch's
    named tuple; ``max(x, y)``: the elementwise maximum."""
    x = _expect_tensor(x, "max/min")
    if isinstance(dim, SymbolicTensor):
        return elementwise(ctx, x, dim)
    if dim is None:
        # "Expected reduction dim to be specified for input.numel() == 0"
        _nonempty(ctx, [sympy.Mul(*x.shape)])
        return SymbolicTensor(())
    axis = x.axis(dim)
    # "max(): Expected reduction dim 2 to have non-zero size."
    _nonempty(ctx, [x.shape[axis]])
    values = _reduce(ctx, x, axis, keepdim, nonempty=False)
    return values, values


@rule(torch.sort, "sort")
def sort(ctx, x, dim=-1, descending=False, *, stable=None, out=None):
    x = _expect_tensor(x, "sort")
    values = _scrambled(x, x.axis(dim))
    return values, values


@rule(torch.topk, "topk")
def top_k(ctx, x, k, dim=-1, largest=True, sorted=True, *, out=None):
    x = _expect_tensor(x, "topk")
    axis = x.axis(dim)
    k = as_expr(k)
    # "selected index k out of range" (negative k as well)
    ctx.require(sympy.And(ge(k, 0), le(k, x.shape[axis])),
                f"topk of {format_expr(k)} needs at least that many elements (size {format_expr(x.shape[axis])})")
    values = _scrambled(x, axis, k)
    return values, values


def _fixed_count(ctx, count, what: str) -> int:
    """A number of output tensors: it shapes the graph, so it must not depend on the size."""
    count = ctx.simplify(count)
    if not is_concrete(count):
        raise UnsupportedOpError(f"{what} gives {format_expr(count)} tensors, a number that depends on the size; "
                                 "use it on a fixed-size axis or give explicit sizes")
    return int(count)


def _split_pieces(x: SymbolicTensor, axis: int, lengths) -> tuple:
    pieces, start = [], sympy.Integer(0)
    for length in lengths:
        pieces.append(_piece(x, axis, start, length))
        start = start + length
    return tuple(pieces)


@rule(torch.split, "split")
def split(ctx, x, split_size_or_sections, dim=0):
    x = _expect_tensor(x, "split")
    axis = x.axis(dim)
    n = x.shape[axis]
    if isinstance(split_size_or_sections, (list, tuple)):
        lengths = [as_expr(s) for s in split_size_or_sections]
        for length in lengths:
            ctx.require(ge(length, 0), f"split sizes must not be negative (got {format_expr(length)})")
        total = sympy.Add(*lengths)
        ctx.require(eq(total, n), f"split sizes {tuple(format_expr(s) for s in lengths)} add up to "
                                  f"{format_expr(total)}, not the size {format_expr(n)}")
        return _split_pieces(x, axis, lengths)
    size = as_expr(split_size_or_sections)
    if size == 0:
        ctx.require(eq(n, 0), f"split into pieces of 0 needs an empty axis (size {format_expr(n)})")
        return (x,)
    ctx.require(ge(size, 1), f"split size {format_expr(size)} must not be negative")
    # at::split: max(ceil(n/size), 1) pieces, the last one the remainder
    if ctx.always(le(n, size)):
        count = 1
    else:
        count = _fixed_count(ctx, ceildiv(n, size), f"split of an axis of size {format_expr(n)} into pieces of {format_expr(size)}")
    return _split_pieces(x, axis, [size] * (count - 1) + [n - (count - 1) * size])


@rule(torch.chunk, "chunk")
def chunk(ctx, x, chunks, dim=0):
    x = _expect_tensor(x, "chunk")
    if not isinstance(chunks, int) or chunks < 1:
        # "chunk expects `chunks` to be greater than 0"
        ctx.require(sympy.false, f"chunk expects at least one chunk, got {chunks!r}")
    axis = x.axis(dim)
    n = x.shape[axis]
    size = ceildiv(n, chunks)
    last = n - (chunks - 1) * size
    if is_concrete(n) and int(n) > 0:
        # torch splits into pieces of ceil(n/chunks): fewer than `chunks` of them where they run out
        count = -(-int(n) // int(size))
        return _split_pieces(x, axis, [size] * (count - 1) + [n - (count - 1) * size])
    # n == 0 gives `chunks` empty pieces; otherwise all `chunks` exist only when the last is non-empty
    if not ctx.always(sympy.Or(eq(n, 0), ge(last, 1))):
        raise UnsupportedOpError(
            f"chunk({chunks}) of an axis of size {format_expr(n)} gives fewer than {chunks} tensors at some sizes "
            f"(pieces of {format_expr(size)}; all {chunks} only where {format_expr(last)} >= 1), so the graph "
            "depends on the size; use split with explicit sizes")
    return _split_pieces(x, axis, [size] * (chunks - 1) + [last])


@rule(torch.unbind, "unbind")
def unbind(ctx, x, dim=0):
    x = _expect_tensor(x, "unbind")
    axis = x.axis(dim)
    n = x.shape[axis]
    if not is_concrete(n):
        raise UnsupportedOpError(f"unbind of an axis of size {format_expr(n)} gives that many tensors, a number "
                                 "that depends on the size; unbind a fixed-size axis")
    keep = [a for a in range(x.ndim) if a != axis]
    geometry = dict(zip(x.spatial, x.geometry))
    spatial = [i for i, a in enumerate(keep) if a in geometry]
    one = SymbolicTensor(tuple(x.shape[a] for a in keep), tuple(spatial), tuple(geometry[keep[i]] for i in spatial))
    return (one,) * int(n)


@rule(torch.narrow, "narrow")
def narrow(ctx, x, dim, start, length):
    x = _expect_tensor(x, "narrow")
    if isinstance(start, SymbolicTensor):
        raise UnsupportedOpError("narrow with a tensor start (its value decides the size)")
    axis = x.axis(dim)
    n = x.shape[axis]
    start, length = as_expr(start), as_expr(length)
    ctx.require(ge(length, 0), f"narrow length {format_expr(length)} must not be negative")
    ctx.require(sympy.And(ge(start, -n), le(start, n)),
                f"narrow start {format_expr(start)} out of range for size {format_expr(n)}")
    if ctx.always(ge(start, 0)):
        begin = start
    elif ctx.always(lt(start, 0)):
        begin = start + n
    else:
        begin = ctx.simplify(sympy.Piecewise((start + n, lt(start, 0)), (start, True)))
    ctx.require(le(begin + length, n), f"narrow start {format_expr(start)} + length {format_expr(length)} exceeds "
                                       f"the size {format_expr(n)}")
    result = _piece(x, axis, begin, length)
    ctx.record_crop(x, result, {axis: begin} if axis in x.spatial else {})
    return result


# ---------------------------------------------------------------------------
# broadcasting copies and reorderings


def _copied_geometry(g: Optional[AxisGeometry], copied: bool) -> Optional[AxisGeometry]:
    """An axis whose values are copies (expand from 1, repeat): a position-free
    axis stays so (every copy sees the whole input); others lose their map."""
    if not copied or g is None or g.position_free:
        return g
    return None


@rule("expand")
def expand(ctx, x, *sizes):
    x = _expect_tensor(x, "expand")
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    sizes = [as_expr(s) for s in sizes]
    if len(sizes) < x.ndim:
        ctx.require(sympy.false, f"expand to {len(sizes)} sizes of a {x.ndim}-d tensor (at least {x.ndim})")
    new = len(sizes) - x.ndim
    shape, copied = [], []
    for i, target in enumerate(sizes):
        if i < new:
            if target == -1:
                ctx.require(sympy.false, "expand: -1 is not allowed in a new leading dimension")
            ctx.require(ge(target, 0), f"expand to a negative size {format_expr(target)}")
            shape.append(target)
            continue
        source = x.shape[i - new]
        if target == -1 or target == source:
            shape.append(source)
            copied.append(False)
            continue
        # "The expanded size of the tensor (5) must match the existing size (3) at non-singleton dimension 2"
        ctx.require(sympy.Or(eq(source, target), eq(source, 1)),
                    f"expand: size {format_expr(source)} must be 1 or match {format_expr(target)}")
        ctx.require(ge(target, 0), f"expand to a negative size {format_expr(target)}")
        shape.append(target)
        copied.append(not ctx.always(eq(source, target)))
    spatial = tuple(a + new for a in x.spatial)
    geometry = tuple(_copied_geometry(g, copied[a]) for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(tuple(shape), spatial, geometry)


@rule("expand_as")
def expand_as(ctx, x, other):
    return expand(ctx, x, _expect_tensor(other, "expand_as").shape)


@rule("repeat")
def repeat(ctx, x, *repeats):
    x = _expect_tensor(x, "repeat")
    if len(repeats) == 1 and isinstance(repeats[0], (tuple, list, torch.Size)):
        repeats = tuple(repeats[0])
    repeats = [as_expr(r) for r in repeats]
    if len(repeats) < x.ndim:
        ctx.require(sympy.false, f"repeat with {len(repeats)} counts for a {x.ndim}-d tensor "
                                 "(torch: 'can not be smaller than number of dimensions of tensor')")
    for r in repeats:
        ctx.require(ge(r, 0), f"repeat count {format_expr(r)} must not be negative")
    new = len(repeats) - x.ndim
    shape = list(repeats[:new]) + [n * r for n, r in zip(x.shape, repeats[new:])]
    geometry = tuple(_copied_geometry(g, repeats[new + a] != 1) for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(tuple(shape), tuple(a + new for a in x.spatial), geometry)


def _dims(x: SymbolicTensor, dims) -> list[int]:
    return [x.axis(d) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]


@rule(torch.flip, "flip")
def flip(ctx, x, *dims):
    x = _expect_tensor(x, "flip")
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    flipped = set(_dims(x, list(dims)))
    # index i now holds input index n-1-i: a mirrored map, which Caffe's
    # positive-scale convention cannot state; unknown rather than wrong
    geometry = tuple(None if a in flipped else g for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(x.shape, x.spatial, geometry)


@rule(torch.roll, "roll")
def roll(ctx, x, shifts, dims=None):
    x = _expect_tensor(x, "roll")
    if dims is None or dims == () or dims == []:
        # rolls the flattened tensor: every axis's positions move
        rolled = set(range(x.ndim))
    else:
        shift_count = len(shifts) if isinstance(shifts, (tuple, list)) else 1
        dims = _dims(x, dims)
        if shift_count != len(dims):
            ctx.require(sympy.false, f"roll: {shift_count} shifts for {len(dims)} dims")
        rolled = set(dims)
    # a rolled axis wraps around: no single coordinate map
    geometry = tuple(None if a in rolled else g for a, g in zip(x.spatial, x.geometry))
    return SymbolicTensor(x.shape, x.spatial, geometry)


# ---------------------------------------------------------------------------
# size comparisons and assertions


def _comparison(relation, tensor_rule=None):
    def compare(ctx, a, b):
        if isinstance(a, SymbolicTensor) or isinstance(b, SymbolicTensor):
            return elementwise(ctx, a, b)  # a bool tensor, broadcast
        if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
            # torch.Size == (1, 3, 224, 224): every entry, and the same length
            if not isinstance(a, (tuple, list)) or not isinstance(b, (tuple, list)) or len(a) != len(b):
                return sympy.false if relation is eq else sympy.true
            same = sympy.And(*[eq(x, y) for x, y in zip(a, b)])
            return same if relation is eq else sympy.Not(same)
        if isinstance(a, (str, Untracked)) or isinstance(b, (str, Untracked)) or a is None or b is None:
            raise UnsupportedOpError(f"comparison of {a!r} and {b!r}")
        return relation(a, b)
    return compare


def _ne(a, b):
    return sympy.Not(eq(a, b))


@rule(operator.eq, merge="broadcast")
def equal(ctx, a, b):
    return _comparison(eq)(ctx, a, b)


@rule(operator.ne, merge="broadcast")
def not_equal(ctx, a, b):
    return _comparison(_ne)(ctx, a, b)


def _ordered(ctx, relation, a, b):
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        raise UnsupportedOpError("ordering of size tuples")
    return _comparison(relation)(ctx, a, b)


@rule(operator.lt, merge="broadcast")
def less_than(ctx, a, b):
    return _ordered(ctx, lt, a, b)


@rule(operator.le, merge="broadcast")
def at_most(ctx, a, b):
    return _ordered(ctx, le, a, b)


@rule(operator.gt, merge="broadcast")
def greater_than(ctx, a, b):
    return _ordered(ctx, gt, a, b)


@rule(operator.ge, merge="broadcast")
def at_least(ctx, a, b):
    return _ordered(ctx, ge, a, b)


@rule(torch._assert)
def assertion(ctx, condition, message):
    """``torch._assert(H == 224, "...")``: the forward pass needs the condition;
    a size that breaks it fails with the model's own message."""
    if isinstance(condition, SymbolicTensor):
        raise UnsupportedOpError("torch._assert on a tensor's values (not its sizes)")
    if isinstance(condition, (bool, int)):
        condition = sympy.true if condition else sympy.false
    ctx.require(condition, str(message))
    return None


# ---------------------------------------------------------------------------
# sub-pixel rearrangements


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


# ---------------------------------------------------------------------------
# tensor properties that sizes do not depend on, and new tensors


@dataclass(frozen=True)
class Untracked:
    """A tensor property shapecalc does not follow (``.dtype``, ``.device``):
    fine as a ``dtype=``/``device=`` argument, refused where it would decide
    something (a comparison, an attribute of it)."""

    what: str

    def __repr__(self) -> str:
        return self.what


@rule(torch.empty, torch.zeros, torch.ones)
def new_tensor(ctx, *size, **options):
    """``torch.empty([B, 0, H // 2, W // 2], dtype=x.dtype)``: a tensor of its own
    (no pixel of the input in it, so no spatial axes)."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for s in size:
        if isinstance(s, (SymbolicTensor, float, str)) or s is None:
            raise UnsupportedOpError(f"a tensor of size {size!r}")
        ctx.require(ge(s, 0), f"Trying to create tensor with negative dimension {format_expr(as_expr(s))}")
    return SymbolicTensor(tuple(as_expr(s) for s in size))


# ---------------------------------------------------------------------------
# library ops keyed by name (shapecalc does not import the library)


@rule(QualifiedName("torchvision.ops.stochastic_depth.stochastic_depth"))
def stochastic_depth(ctx, x, p, mode, training=True):
    """Zeroes whole rows (a per-sample factor): sizes and pixel positions stay."""
    x = _expect_tensor(x, "stochastic_depth")
    if not 0.0 <= p <= 1.0:
        ctx.require(sympy.false, f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        ctx.require(sympy.false, f"mode has to be either 'batch' or 'row', but got {mode}")
    if training and p != 0.0 and mode == "row" and x.ndim == 0:
        ctx.require(sympy.false, "row-mode stochastic depth of a 0-d tensor (it has no batch axis)")
    return x


# ---------------------------------------------------------------------------
# matrix products and axis moves


def _matrix_product(ctx, a: SymbolicTensor, b: SymbolicTensor, what: str, broadcast: bool):
    """``a @ b`` as aten's matmul: a 1-d side gains a unit axis that is dropped
    again, batch axes broadcast.  A spatial axis that survives (batch, rows of
    ``a``, columns of ``b``) keeps no coordinate map: each output mixes a whole
    row of one side with the other side, whose pixels shapecalc cannot tell
    from learned weights."""
    if a.ndim == 0 or b.ndim == 0:
        ctx.require(sympy.false, f"both arguments to {what} need to be at least 1-d, got {a.ndim}-d and {b.ndim}-d")
    inner_a, inner_b = a.shape[-1], b.shape[-2] if b.ndim >= 2 else b.shape[0]
    ctx.require(eq(inner_a, inner_b), f"{what}: sizes {format_expr(inner_a)} and {format_expr(inner_b)} "
                                      "(a's last axis, b's second-last) must match")
    batch_a, batch_b = a.shape[:-2], b.shape[:-2]
    rank = max(len(batch_a), len(batch_b))
    padded_a = (sympy.Integer(1),) * (rank - len(batch_a)) + batch_a
    padded_b = (sympy.Integer(1),) * (rank - len(batch_b)) + batch_b
    batch = []
    for i, (x, y) in enumerate(zip(padded_a, padded_b)):
        if broadcast:
            batch.append(broadcast_size(ctx, x, y))
        else:
            ctx.require(eq(x, y), f"{what}: batch sizes {format_expr(x)} and {format_expr(y)} must be equal")
            batch.append(x)
    # where each output axis comes from (operand axes), to carry spatial marks
    origins = [[("a", i - rank + len(batch_a)), ("b", i - rank + len(batch_b))] for i in range(rank)]
    shape = list(batch)
    if a.ndim >= 2:
        shape.append(a.shape[-2])
        origins.append([("a", a.ndim - 2)])
    if b.ndim >= 2:
        shape.append(b.shape[-1])
        origins.append([("b", b.ndim - 1)])
    spatial_of = {"a": set(a.spatial), "b": set(b.spatial)}
    spatial = tuple(i for i, sources in enumerate(origins)
                    if any(axis >= 0 and axis in spatial_of[side] for side, axis in sources))
    return SymbolicTensor(tuple(shape), spatial)


@rule(torch.matmul, "matmul", operator.matmul, "__matmul__")
def matmul(ctx, a, b, *, out=None):
    return _matrix_product(ctx, _expect_tensor(a, "matmul"), _expect_tensor(b, "matmul"), "matmul", broadcast=True)


@rule(torch.bmm, "bmm")
def batch_matmul(ctx, a, b, *, out=None):
    a, b = _expect_tensor(a, "bmm"), _expect_tensor(b, "bmm")
    if a.ndim != 3 or b.ndim != 3:
        ctx.require(sympy.false, f"bmm needs two 3-d tensors, got {a.ndim}-d and {b.ndim}-d")
    return _matrix_product(ctx, a, b, "bmm", broadcast=False)


@rule(torch.movedim, torch.moveaxis, "movedim", "moveaxis")
def movedim(ctx, x, source, destination):
    x = _expect_tensor(x, "movedim")
    source = [x.axis(d) for d in (source if isinstance(source, (tuple, list)) else [source])]
    destination = [x.axis(d) for d in (destination if isinstance(destination, (tuple, list)) else [destination])]
    if len(source) != len(destination) or len(set(source)) != len(source) or len(set(destination)) != len(destination):
        ctx.require(sympy.false, f"movedim: source {source} and destination {destination} must be as long and "
                                 "without repeats")
    order: list = [None] * x.ndim
    for s, d in zip(source, destination):
        order[d] = s
    rest = iter(a for a in range(x.ndim) if a not in source)
    return _moved(x, [a if a is not None else next(rest) for a in order])
