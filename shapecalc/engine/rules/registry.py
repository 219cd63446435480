"""The registry itself: :class:`Rule`, the ``rule`` decorator, lookups by
module class, function, method name or qualified name, and what a rule
function receives (:class:`RuleContext`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol
import torch
import torch.nn as nn


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
    if isinstance(target, torch._ops.OpOverload):
        return RULES.get(AtenOp(f"{target._schema.name}.{target._overloadname}")) or \
            RULES.get(AtenOp(target._schema.name))
    try:
        return RULES.get(target) or RULES.get(_qualified(target))
    except TypeError:  # unhashable target
        return None


@dataclass(frozen=True)
class QualifiedName:
    """A key for a function or class of a library shapecalc does not import
    (torchvision's ``stochastic_depth``), matched by ``module.qualname``."""

    name: str


@dataclass(frozen=True)
class AtenOp:
    """A key for an op of an ATen graph (the ATen front end): the schema
    name, ``aten::convolution`` (every overload) or with one overload,
    ``aten::add.Tensor``.  Rules keyed so need not import the op."""

    name: str


def aten(*names: str) -> tuple[AtenOp, ...]:
    """``aten("convolution", "add.Tensor")``: keys of ``aten::`` ops (a name
    with ``::`` names another namespace)."""
    return tuple(AtenOp(n if "::" in n else f"aten::{n}") for n in names)


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
    if isinstance(key, (QualifiedName, AtenOp)):
        return key.name
    if isinstance(key, str):
        return f"Tensor.{key}"
    if isinstance(key, type):
        return f"{key.__module__.replace('torch.nn.modules', 'nn').split('.')[0]}.{key.__name__}" if key.__module__.startswith("torch.nn") else key.__name__
    module = getattr(key, "__module__", None) or ""
    return f"{module}.{getattr(key, '__name__', repr(key))}"
