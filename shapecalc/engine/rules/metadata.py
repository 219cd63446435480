"""What a rule tells the rest of shapecalc: spatial rank, params text, sampling."""

from __future__ import annotations

import inspect
import operator
from typing import Optional
import torch
import torch.fx
import torch.nn as nn
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.rules.registry import Sampling, lookup, node_rule, registered_class


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
