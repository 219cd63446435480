"""Size rules for your own layers and functions, without editing shapecalc.

A rule is ``function(ctx, *args, **kwargs) -> value``, called for each graph
node whose target is one of its keys: an ``nn.Module`` class (the node calls a
module of exactly that class, or of a subclass marked a leaf), a function, or
a tensor method name (``"view"``).  ``args``/``kwargs`` are the node's
arguments with every tensor replaced by a :class:`SymbolicTensor` and every
size by a sympy expression.  ``ctx`` is a :class:`RuleContext`.

A module class or Python function with a rule is a leaf of the trace: torch.fx
records one call of it instead of tracing its body, so the rule fires even
where the body cannot be traced.  Everything a rule needs is public here (and
re-exported from ``shapecalc``): see docs/guide.md, 'Rules for your own
layers and functions'.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import torch.nn as nn

from shapecalc.engine import rules as _rules
from shapecalc._errors import InputSpecError
from shapecalc.engine.symbolic import ceildiv, floor_of, floordiv
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor
from shapecalc.capture.trace import tracing

__all__ = ["AxisGeometry", "RuleContext", "SymbolicTensor", "ceildiv", "floor_of", "floordiv", "rule", "rule_scope",
           "tracing", "unregister", "window_geometry", "with_spatial_sizes"]


class RuleContext(Protocol):
    """What a rule may use while it handles one node."""

    #: the node's name in the graph (``conv1``, ``add_2``)
    node_name: str
    #: the module a ``call_module`` node calls (None for functions and methods)
    module: Optional[nn.Module]
    #: whether the model is in training mode
    training: bool

    def require(self, condition, reason: str) -> None:
        """The forward pass needs ``condition`` (a sympy relation of sizes, or
        a bool).  A concretely false one is a SizeError naming the node and
        ``reason``; a symbolic one narrows the valid input sizes."""

    def simplify(self, expr):
        """``expr`` with ``Min``/``Max``/``Piecewise`` resolved where what is
        required so far fixes the branch."""

    def always(self, condition) -> Optional[bool]:
        """Whether ``condition`` holds for every valid size so far: True,
        False, or None (not decided)."""

    def note(self, text: str) -> None:
        """A note for the person reading the report, prefixed with the node."""


def _key_text(key) -> str:
    return _rules.key_name(key) if isinstance(key, (str, type)) or callable(key) else repr(key)


def aten(*names: str) -> tuple:
    """Rule keys for ops of ATen graphs (``analyze(capture="aten")``):
    ``@shapecalc.rule(*shapecalc.aten("mylib::blur", "repeat"))``; a name without
    ``::`` is an ``aten::`` op, with ``.overload`` one overload only."""
    for name in names:
        if not isinstance(name, str) or not name.replace("::", ".").replace("_", "").replace(".", "").isalnum():
            raise InputSpecError(f"aten op name {name!r}: use 'name', 'name.overload' or 'namespace::name'")
    return _rules.aten(*names)


def _check_key(key) -> None:
    if isinstance(key, _rules.AtenOp):
        return
    if isinstance(key, str):
        if not key.isidentifier():
            raise InputSpecError(f"rule key {key!r} is not a tensor method name")
    elif isinstance(key, type):
        if not issubclass(key, nn.Module):
            raise InputSpecError(f"rule key {key.__name__} is a class but not an nn.Module subclass")
    elif not callable(key):
        raise InputSpecError(f"rule key {key!r} is neither an nn.Module class, a function nor a method name")
    try:
        hash(key)
    except TypeError:
        raise InputSpecError(f"rule key {key!r} is not hashable") from None


def _same_definition(a: Callable, b: Callable) -> bool:
    """The same rule defined again: its module imported a second time (a
    MODEL file is executed once per load)."""
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def rule(*keys, merge: Any = None, resample: Any = None, params: Any = None, spatial_rank: Optional[int] = None,
         replace: bool = False) -> Callable[[Callable], Callable]:
    """Register the decorated ``function(ctx, *args, **kwargs)`` as the size
    rule of every key (an ``nn.Module`` class, a function, or a tensor method
    name); module classes and Python functions among the keys become leaves.

    ``merge``, ``resample``, ``params`` and ``spatial_rank`` are passed to the
    registry (see :func:`shapecalc.engine.rules.rule`).  A key that already has a
    rule is an error unless ``replace=True``.  Returns the function unchanged."""
    if not keys:
        raise InputSpecError("rule() needs at least one key: an nn.Module class, a function or a method name")
    for key in keys:
        _check_key(key)
    if not isinstance(replace, bool):
        raise InputSpecError(f"replace must be True or False, got {replace!r}")
    if spatial_rank is not None and (isinstance(spatial_rank, bool) or not isinstance(spatial_rank, int)
                                     or spatial_rank < 1):
        raise InputSpecError(f"spatial_rank must be a positive integer (spatial axes), got {spatial_rank!r}")
    if params is not None and not callable(params):
        raise InputSpecError(f"params must be a function of the node's module or arguments, got "
                             f"{type(params).__name__}")
    options = {name: value for name, value in (("merge", merge), ("resample", resample), ("params", params),
                                                ("spatial_rank", spatial_rank)) if value is not None}
    accepted = inspect.signature(_rules.rule).parameters
    for name in options:
        if name not in accepted:
            raise InputSpecError(f"rule(): {name}= is not supported by this shapecalc's registry")

    def register(function: Callable) -> Callable:
        if not callable(function):
            raise InputSpecError(f"@rule(...) decorates a function, got {type(function).__name__}")
        if not _looks_like_rule(function):
            raise InputSpecError(f"rule {getattr(function, '__name__', function)!r} must take the context as its "
                                 "first argument: def my_rule(ctx, x, ...)")
        unique = list(dict.fromkeys(keys))
        taken = [key for key in unique if key in _rules.RULES
                 and not replace and not _same_definition(_rules.RULES[key].function, function)]
        if taken:
            raise InputSpecError(f"{', '.join(_key_text(k) for k in taken)} already "
                                 f"{'has a rule' if len(taken) == 1 else 'have rules'} "
                                 f"({', '.join(_rules.RULES[k].name for k in taken)}); pass replace=True to "
                                 "replace it, or unregister it first")
        for key in unique:
            _rules.RULES.pop(key, None)
        _rules.rule(*unique, **options)(function)
        return function

    return register


def _looks_like_rule(function: Callable) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return True  # a builtin: nothing to check
    return bool(parameters) and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                       inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                       inspect.Parameter.VAR_POSITIONAL)


def unregister(*keys) -> None:
    """Remove the rules of ``keys`` (a key without a rule is an error)."""
    missing = [key for key in keys if key not in _rules.RULES]
    if missing:
        raise InputSpecError(f"no rule to unregister for {', '.join(_key_text(k) for k in missing)}")
    for key in keys:
        del _rules.RULES[key]


@contextmanager
def rule_scope() -> Iterator[None]:
    """Rules registered, replaced or removed inside the block are undone at
    its end (tests use it so that their rules do not leak into each other)."""
    saved = dict(_rules.RULES)
    try:
        yield
    finally:
        _rules.RULES.clear()
        _rules.RULES.update(saved)


def with_spatial_sizes(x: SymbolicTensor, sizes: Sequence, geometry: Optional[Sequence[Optional[AxisGeometry]]] = None
                       ) -> SymbolicTensor:
    """``x`` with new spatial sizes, one per spatial axis.  Where each output
    pixel sits in the input is ``geometry`` (one :class:`AxisGeometry` per
    axis, e.g. from :func:`window_geometry`); without it, unknown (None), so
    crops and merges after this tensor are reported as not decided, never
    guessed."""
    if not isinstance(x, SymbolicTensor):
        raise InputSpecError(f"with_spatial_sizes() takes a SymbolicTensor, got {type(x).__name__}")
    sizes = tuple(sizes)
    if len(sizes) != len(x.spatial):
        raise InputSpecError(f"with_spatial_sizes() got {len(sizes)} sizes for a tensor with "
                             f"{len(x.spatial)} spatial axes")
    if geometry is None:
        geometry = (None,) * len(sizes)
    elif len(tuple(geometry)) != len(sizes):
        raise InputSpecError(f"with_spatial_sizes() got {len(tuple(geometry))} geometries for {len(sizes)} sizes")
    return x.with_spatial(sizes, tuple(geometry))


def window_geometry(axis: Optional[AxisGeometry], kernel: int, stride: int = 1, padding: int = 0,
                    dilation: int = 1) -> Optional[AxisGeometry]:
    """Where the pixels of a conv- or pool-like window (``kernel``, ``stride``,
    leading ``padding``, ``dilation``) over an axis with geometry ``axis`` sit:
    the coordinate map and receptive field a convolution gives."""
    for name, value, least in (("kernel", kernel, 1), ("stride", stride, 1), ("padding", padding, 0),
                               ("dilation", dilation, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputSpecError(f"window_geometry(): {name} must be an integer >= {least}, got {value!r}")
    return _rules.common._windowed_geometry(axis, kernel, stride, padding, dilation)

