"""The size interpreter: torch.fx's Interpreter with sizes instead of tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import sympy
import torch
import torch.fx

from shapecalc.engine import rules
from shapecalc._errors import ShapecalcError, SizeError, UnsupportedOpError
from shapecalc.engine.domain import Domain, Requirement
from shapecalc.engine.symbolic import fold_multiple_of_floor, ge, largest, le, merge_floor_terms, smallest
from shapecalc.engine.tensors import AxisGeometry, SymbolicTensor

#: the one node.meta key shapecalc writes
META_KEY = "shapecalc"


@dataclass(frozen=True)
class CropRecord:
    """A slice of spatial axes: the node, what it sliced, and where it starts."""

    node: str
    source: SymbolicTensor
    result: SymbolicTensor
    starts: dict  # source axis -> start expression


def simplify_under(expr, domain: Domain):
    """Resolve Min/Max/Piecewise whose branch is fixed on the domain so far."""
    if not isinstance(expr, sympy.Basic) or expr.is_Atom:
        return expr
    args = [simplify_under(a, domain) for a in expr.args]
    if isinstance(expr, (sympy.Min, sympy.Max)):
        keep = list(dict.fromkeys(args))
        changed = True
        while changed and len(keep) > 1:
            changed = False
            for i, a in enumerate(keep):
                for b in keep[i + 1:]:
                    a_wins = domain.always(le(a, b)) if isinstance(expr, sympy.Min) else domain.always(ge(a, b))
                    if a_wins:
                        keep.remove(b)
                        changed = True
                        break
                    # only asked when needed: each question decides a condition over a period
                    b_wins = domain.always(le(b, a)) if isinstance(expr, sympy.Min) else domain.always(ge(b, a))
                    if b_wins:
                        keep.remove(a)
                        changed = True
                        break
                if changed:
                    break
        return keep[0] if len(keep) == 1 else (smallest if isinstance(expr, sympy.Min) else largest)(*keep)
    if isinstance(expr, sympy.Piecewise):
        pieces = []
        for pair in args:
            value, condition = pair.args
            verdict = True if condition is sympy.true else domain.always(condition)
            if verdict is True:
                if not pieces:
                    return value
                pieces.append((value, True))
                break
            # drop a branch only when it is never taken: always() is False as
            # soon as the condition fails for *some* size
            if domain.always(sympy.Not(condition)):
                continue
            pieces.append((value, condition))
        return pieces[0][0] if len(pieces) == 1 else sympy.Piecewise(*pieces)
    return expr.func(*args) if args != list(expr.args) else expr


class _NodeContext:
    """What a rule may ask while it handles one node."""

    def __init__(self, interpreter: "SizeInterpreter", node: torch.fx.Node, module=None):
        self._interpreter, self._node = interpreter, node
        #: the fx node being sized: which key fired (a 1-d or a 2-d pooling function) says the op's rank
        self.node = node
        self.node_name = node.name
        self.module = module
        self.training = interpreter.module.training

    def require(self, condition, reason: str) -> None:
        condition = sympy.sympify(condition) if isinstance(condition, bool) else condition
        if condition is sympy.true:
            return
        if condition is sympy.false:
            raise SizeError(reason)
        self._interpreter.domain.add(Requirement(condition, self.node_name, reason))

    def simplify(self, expr):
        return simplify_under(expr, self._interpreter.domain)

    def always(self, condition) -> Optional[bool]:
        condition = sympy.sympify(condition) if isinstance(condition, bool) else condition
        if condition is sympy.true or condition is sympy.false:
            return bool(condition)
        return self._interpreter.domain.always(condition)

    def note(self, text: str) -> None:
        self._interpreter.notes.append(f"{self.node_name}: {text}")

    def record_crop(self, source, result, starts) -> None:
        if any(start != 0 for start in starts.values()) or source.spatial_sizes != result.spatial_sizes:
            crops = self._interpreter.crops
            producer = self._node.args[0] if self._node.args else None
            # a crop of a crop that nothing else reads is one crop: ATen slices
            # one axis per op (FCN-8s's score_pool4[:, :, 5:5+h, 5:5+w] is two slices)
            if crops and isinstance(producer, torch.fx.Node) and crops[-1].node == producer.name \
                    and len(producer.users) == 1:
                previous = crops.pop()
                starts = {**previous.starts, **{a: s for a, s in starts.items() if s != 0 or a not in previous.starts}}
                source = previous.source
            crops.append(CropRecord(self.node_name, source, result, dict(starts)))


def _size_form(expr):
    return fold_multiple_of_floor(merge_floor_terms(expr))


def _canonical(value):
    """Every size in a node's value, with floor terms merged (see merge_floor_terms)
    and a floor padded to a multiple written as one (see fold_multiple_of_floor)."""
    if isinstance(value, sympy.Basic):
        return _size_form(value)
    if isinstance(value, SymbolicTensor):
        geometry = tuple(None if g is None else AxisGeometry(*(None if v is None else _size_form(v)
                                                               for v in (g.scale, g.shift, g.rf)), g.window)
                         for g in value.geometry)
        return SymbolicTensor(tuple(_size_form(s) for s in value.shape), value.spatial, geometry, value.dtype_kind)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _describe_target(node: torch.fx.Node, module=None) -> str:
    if node.op == "call_module":
        return type(module).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


class SizeInterpreter(torch.fx.Interpreter):
    """Runs a traced graph on :class:`SymbolicTensor` values, rule by rule,
    and stores each node's value under ``node.meta["shapecalc"]``."""

    def __init__(self, module: torch.fx.GraphModule, domain: Domain):
        super().__init__(module, garbage_collect_values=False)
        # run_node already names the node; torch's extra traceback imports
        # torch._dynamo on the first error (seconds) only to log the graph.
        self.extra_traceback = False
        self.domain = domain
        self.notes: list[str] = []
        self.crops: list[CropRecord] = []
        self._node: Optional[torch.fx.Node] = None

    def run_node(self, n: torch.fx.Node) -> Any:
        self._node = n
        try:
            value = _canonical(super().run_node(n))
        except ShapecalcError as error:
            if getattr(error, "node", None) is None:
                error.node = n.name
                error.op = _describe_target(n, self._module_of(n))
            raise
        except Exception as error:  # a rule met arguments it does not handle
            wrapped = UnsupportedOpError(f"cannot size this call ({type(error).__name__}: {error})")
            wrapped.node, wrapped.op = n.name, _describe_target(n, self._module_of(n))
            raise wrapped from error
        n.meta[META_KEY] = value
        return value

    def _module_of(self, n: torch.fx.Node):
        return self.fetch_attr(n.target) if n.op == "call_module" else None

    def get_attr(self, target, args, kwargs):
        value = self.fetch_attr(target)
        if isinstance(value, torch.Tensor):
            kind = "bool" if value.dtype == torch.bool else "floating" if value.is_floating_point() or value.is_complex() \
                else "integer"
            return SymbolicTensor(tuple(value.shape), dtype_kind=kind)
        return value

    def _apply(self, kind: str, key, args, kwargs, module=None):
        found = rules.lookup(kind, module if module is not None else key)
        if found is None and isinstance(key, torch._ops.OpOverload):
            name = key._schema.name.removeprefix("aten::")
            raise UnsupportedOpError(
                f"no size rule for the ATen op {key._schema.name}.{key._overloadname}; register one with "
                f"@shapecalc.rule(*shapecalc.aten({name!r})) in your code, or add it to "
                "shapecalc/engine/rules/aten_ops.py (docs/guide.md, 'Rules for your own layers and functions')")
        if found is None:
            raise UnsupportedOpError(
                f"no size rule for {_describe_target(self._node, module)}; register one with "
                f"@shapecalc.rule({_describe_target(self._node, module)}) in your code, or add it to "
                "shapecalc/engine/rules/ (docs/guide.md, 'Rules for your own layers and functions')")
        return found.function(_NodeContext(self, self._node, module), *args, **kwargs)

    def call_function(self, target, args, kwargs):
        return self._apply("call_function", target, args, kwargs)

    def call_method(self, target, args, kwargs):
        return self._apply("call_method", target, args, kwargs)

    def call_module(self, target, args, kwargs):
        return self._apply("call_module", target, args, kwargs, module=self.fetch_attr(target))
