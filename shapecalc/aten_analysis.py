"""``analyze(capture="aten")``: the ATen front end's pipeline.

1. capture/regions.py explores the size space: captures at the example size
   and at sizes outside every region found so far, each region mapped to an
   ATen graph or to the model's own exception;
2. each graph is sized by shapecalc's own rules (the size interpreter over
   ATen ops), with the region's guards as requirements, so its sizes and
   domain are exact for every size of the region;
3. torch's own recorded sizes are compared with shapecalc's at sizes inside
   the region: they must agree, and a disagreement is an error, never a note;
4. the valid sizes are the union of the running regions' domains.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

import sympy
import torch
import torch.nn as nn

from shapecalc._errors import DisagreementError, ShapecalcError, SizeError, TraceError
from shapecalc.capture import regions
from shapecalc.capture.aten import AtenCapture
from shapecalc.capture.specs import InputSpec
from shapecalc.engine.domain import Domain, PeriodicSet, Requirement
from shapecalc.engine.propagate import META_KEY, SizeInterpreter
from shapecalc.engine.symbolic import evaluate, format_expr
from shapecalc.engine.tensors import SymbolicTensor


@dataclass(frozen=True)
class Piece:
    """One region of the size space and what the model does there."""

    condition: sympy.Basic           # the region, in the input symbols
    runs: bool
    example: dict                    # the size it was captured at
    message: str = ""                # the model's exception, when it raises
    location: str = ""               # where it raised, or the guards' lines
    origin: str = ""                 # "model", "assert", "torch" (torch's Python on a branch) or "size" (its kernels)
    guards: tuple = ()               # the Guard objects behind ``condition``
    #: where it runs: the outputs of its graph (valid inside the region), as Analysis.outputs
    outputs: Optional[dict] = None
    #: torch's own size check failed at ``example``: the piece is that one size
    pointwise: bool = False

    def region_text(self) -> str:
        """The region in words: per symbol when its guards are (``H = 32k from 32, W not a multiple of 32``)."""
        if self.pointwise:
            return ", ".join(f"{s} = {v}" for s, v in self.example.items()) or "this size"
        if self.condition is sympy.true:
            return "every size"
        symbols = sorted(self.condition.free_symbols, key=str)
        region = Domain(tuple(symbols))
        for condition in sympy.And.make_args(self.condition):
            region.add(Requirement(condition, "piece", "the piece's region"))
        if region.undecided:
            return format_expr(self.condition)
        parts = [_set_phrase(region.sets[s], str(s)) for s in symbols]
        parts = [p for p in parts if p is not None]
        joint = region.joint_sentence()
        if joint:
            parts.append(f"jointly {joint}")
        return ", ".join(parts) or "every size"

    def describe(self) -> str:
        where = self.region_text()
        if self.runs:
            return f"{where}: runs"
        return f"{where}: {self.location} raises {self.message!r}"

    def as_data(self) -> dict:
        return {"condition": format_expr(self.condition), "region": self.region_text(), "runs": self.runs,
                "example": {str(k): int(v) for k, v in self.example.items()},
                "raises": None if self.runs else {"message": self.message, "location": self.location,
                                                  "origin": self.origin},
                "guards": [{"condition": format_expr(g.condition), "origin": g.origin, "location": g.location}
                           for g in self.guards],
                "outputs": None if self.outputs is None else {
                    name: [format_expr(s) for s in t.shape] for name, t in self.outputs.items()}}


def _set_phrase(allowed, symbol: str) -> Optional[str]:
    """A region's set of one symbol, short: ``H not a multiple of 32`` for
    all classes but one, as the set describes itself otherwise; None for every size."""
    if allowed == allowed.everything():
        return None
    allowed = allowed.reduced()
    kept = [r for r, c in enumerate(allowed.classes) if c]
    whole_classes = all(c == ((PeriodicSet.start(allowed.period, r), None),) for r, c in enumerate(allowed.classes)
                        if c)
    if allowed.period > 1 and whole_classes:
        from shapecalc.engine.domain import _residues_phrase
        return _residues_phrase(symbol, allowed.period, kept)
    # a piece names where it is: what lies outside is other pieces', not "never"
    return allowed.describe(symbol).split("; never for")[0]


def model_channels(model: nn.Module) -> Optional[int]:
    """The input channels of the first layer that reads channels, in module order."""
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd,)):
            return int(module.in_channels)
        if isinstance(module, nn.Linear):
            return None
    return None


#: attributes where models keep the image size they were built for (MONAI UNETR, timm and torchvision ViTs)
_SIZE_ATTRIBUTES = ("img_size", "image_size", "input_size")


def _example(model: nn.Module, spec: InputSpec) -> Optional[dict]:
    """The first capture's sizes: the image size the model says it was built
    for, if it says one, else None (regions.EXAMPLE_SIZE per symbol)."""
    if not spec.symbols:
        return None
    for owner in (model, *list(model.children())[:3]):
        for name in _SIZE_ATTRIBUTES:
            value = getattr(owner, name, None)
            sizes = value if isinstance(value, (tuple, list)) else (value,) * len(spec.sizes)
            if len(sizes) == len(spec.sizes) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                     for v in sizes):
                example = {}
                for axis_size, value in zip(spec.sizes, sizes):
                    if axis_size.is_Symbol:
                        example.setdefault(axis_size, int(value))
                return example
    return None


def model_rank(model: nn.Module) -> Optional[int]:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return len(module.kernel_size)
    return None


def analyze_aten(model: nn.Module, spec: InputSpec, *, channels: Optional[int], batch: int, name: str,
                 max_captures: Optional[int] = None, max_seconds: Optional[float] = None, progress=None):
    from shapecalc.analysis import _assembled, _input_tensor

    dimensions = len(spec.sizes) if len(spec.sizes) > 1 else (model_rank(model) or 2)
    spec = spec.for_dimensions(dimensions)
    channel_count = channels or model_channels(model) or 3
    symbols = spec.symbols
    exploration = regions.explore(
        model, symbols, spec.sizes, channels=channel_count, batch=batch, example=_example(model, spec),
        max_captures=max_captures or regions.MAX_CAPTURES, max_seconds=max_seconds or regions.MAX_SECONDS,
        progress=progress)
    running = exploration.running
    if not running and not symbols:
        raised = exploration.captures[0].raised
        who = "torch" if raised.origin == "size" else "the model"
        raise SizeError(f"{who} raises at this size ({raised.location}): {raised.message}")
    if not running:
        raised = "; ".join(_piece(c).describe() for c in exploration.captures)
        raise SizeError(f"the model ran at none of the {len(exploration.captures)} sizes captured ({raised})")
    input_tensor = _input_tensor(spec, channel_count, batch)
    sized = [_size(captured, symbols, input_tensor) for captured in running]
    outputs = {id(c): _outputs(result) for c, (_, _, result, _) in zip(running, sized)}
    # a size where torch's own check failed, inside a region that runs elsewhere, is that
    # region's business: its domain (shapecalc's rules) already excludes the size, exactly
    pieces = tuple(_piece(c, outputs.get(id(c))) for c in exploration.captures
                   if not (c.pointwise and any(r.contains(c.example) for r in running)))
    graph_module, interpreter, result, domain = sized[0]
    if len(sized) > 1:
        # each region's domain holds its own guards, so the regions do not overlap
        domain = Domain.union_of([d for _, _, _, d in sized])
    from shapecalc.capture.trace import _BUILD_NOTES
    built = _BUILD_NOTES.get(model)
    notes = ([built] if built else []) + list(interpreter.notes) + _notes(exploration, pieces)
    return _assembled(name, spec, input_tensor, graph_module, interpreter, result, domain, notes, capture="aten",
                      pieces=pieces, pieces_complete=exploration.complete)


def _piece(captured: AtenCapture, outputs=None) -> Piece:
    raised = captured.raised
    return Piece(captured.region, raised is None, dict(captured.example),
                 message="" if raised is None else raised.message, location="" if raised is None else raised.location,
                 origin="" if raised is None else raised.origin, guards=captured.guards, outputs=outputs,
                 pointwise=captured.pointwise)


def _outputs(result) -> dict:
    from shapecalc.analysis import _outputs as analysis_outputs
    return analysis_outputs(result)


def _size(captured: AtenCapture, symbols, input_tensor: SymbolicTensor):
    """Size ``captured``'s graph with shapecalc's rules, inside its region."""
    graph_module = captured.graph_module
    domain = Domain(symbols)
    for guard in captured.guards:
        domain.add(Requirement(guard.condition, guard.location,
                               f"the model's code at {guard.location} takes this path only where "
                               f"{format_expr(guard.condition)}"))
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(f"the ATen graph takes {len(placeholders)} inputs; shapecalc sizes models with one input")
    interpreter = SizeInterpreter(graph_module, domain)
    interpreter.run(input_tensor)
    _simplify_on_residues(graph_module, domain, symbols)
    _compare_with_torch(graph_module, captured, domain, symbols)
    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    return graph_module, interpreter, _output_value(output.args[0]), domain


def _output_value(argument):
    if isinstance(argument, torch.fx.Node):
        return argument.meta.get(META_KEY)
    if isinstance(argument, (tuple, list)):
        return type(argument)(_output_value(a) for a in argument)
    if isinstance(argument, dict):
        return {k: _output_value(v) for k, v in argument.items()}
    return argument


def _simplify_on_residues(graph_module, domain: Domain, symbols) -> None:
    """Sizes written for the region: where the domain keeps one residue
    class of a symbol (smp's H = 32k), ``32*ceiling(H/32)`` is ``H``."""
    classes = {}
    for s in symbols:
        reduced = domain.sets[s].reduced()
        kept = [r for r, c in enumerate(reduced.classes) if c]
        if reduced.period > 1 and len(kept) == 1:
            classes[s] = (reduced.period, kept[0])
    if not classes:
        return
    memo: dict = {}  # pointwise ops pass the same expressions on: each is rewritten once
    for node in graph_module.graph.nodes:
        value = node.meta.get(META_KEY)
        if isinstance(value, SymbolicTensor):
            node.meta[META_KEY] = _replace_shape(value, classes, memo)
        elif isinstance(value, tuple) and not hasattr(value, "_fields"):
            node.meta[META_KEY] = tuple(_replace_shape(v, classes, memo) if isinstance(v, SymbolicTensor) else v
                                        for v in value)


def _replace_shape(value: SymbolicTensor, classes: dict, memo: dict) -> SymbolicTensor:
    def on_class(expr):
        if expr not in memo:
            memo[expr] = _on_class(expr, classes)
        return memo[expr]

    shape = tuple(on_class(size) for size in value.shape)
    # the coordinate maps too: the audits decide their conditions residue class by
    # residue class, and a map written for the class has no period left to split on
    geometry = tuple(None if g is None else dataclasses.replace(
        g, scale=on_class(g.scale), shift=on_class(g.shift), rf=on_class(g.rf))
        for g in value.geometry)
    if shape == value.shape and geometry == value.geometry:
        return value
    return dataclasses.replace(value, shape=shape, geometry=geometry)


def _on_class(size, classes: dict):
    from shapecalc.engine.symbolic import FloorDiv, floordiv
    from shapecalc.engine.propagate import _size_form
    if not isinstance(size, sympy.Basic) or not (size.free_symbols & set(classes)) or not size.has(FloorDiv):
        return size  # only floors can fold on a residue class
    if size.has(sympy.Max, sympy.Min) or sympy.count_ops(size) > 60:
        return size  # a receptive field's nest of maxima: seconds of sympy for a display form
    steps = {s: sympy.Symbol(f"_k_{s}", integer=True, nonnegative=True) for s in classes}

    def rebuilt(expr):
        if not isinstance(expr, sympy.Basic) or expr.is_Atom:
            return expr
        args = [rebuilt(a) for a in expr.args]
        if isinstance(expr, FloorDiv):
            return floordiv(*args)
        return expr.func(*args)

    on_class = rebuilt(sympy.expand(size.xreplace({s: p * steps[s] + r for s, (p, r) in classes.items()})))
    back = _size_form(sympy.expand(on_class.xreplace({steps[s]: (s - r) / p for s, (p, r) in classes.items()})))
    if sympy.count_ops(back) >= sympy.count_ops(size):
        return size
    # the rewrite must agree with the original on the class (checked at a few members)
    for k in range(1, 4):
        point = {s: p * k + r for s, (p, r) in classes.items()}
        try:
            if evaluate(back, point) != evaluate(size, point):
                return size
        except (ArithmeticError, TypeError, ValueError):  # not defined there: keep the form it had
            return size
    return back


def _torch_shape(value, captured: AtenCapture):
    """A FakeTensor's recorded shape as integers at the capture's example."""
    from torch.fx.experimental.symbolic_shapes import guarding_hint_or_throw
    return tuple(int(guarding_hint_or_throw(size)) for size in value.shape)


def _compare_with_torch(graph_module, captured: AtenCapture, domain: Domain, symbols) -> None:
    """torch's sizes are exact inside the region: at the capture's example
    every node's shape must be shapecalc's."""
    example = {s: int(v) for s, v in captured.example.items()}
    if example and example not in domain:
        raise DisagreementError(
            f"torch ran the model at {_sizes_text(example, symbols)}, where shapecalc's rules say it cannot "
            f"({domain_sentence(domain, symbols)}); this is a bug in shapecalc: please report it")
    for node in graph_module.graph.nodes:
        ours, theirs = node.meta.get(META_KEY), node.meta.get("val")
        pairs = list(zip(ours, theirs)) if isinstance(ours, tuple) and isinstance(theirs, (tuple, list)) \
            else [(ours, theirs)]
        for mine, recorded in pairs:
            if not isinstance(mine, SymbolicTensor) or not isinstance(recorded, torch.Tensor):
                continue
            expected = _torch_shape(recorded, captured)
            got = tuple(int(evaluate(s, example)) for s in mine.shape)
            if got != expected:
                raise DisagreementError(
                    f"at {_sizes_text(example, symbols)} torch records {expected} for node {node.name} "
                    f"({node.target}), shapecalc computes {got}; this is a bug in shapecalc: please report it")


def _sizes_text(example: dict, symbols) -> str:
    return ", ".join(f"{s}={example[s]}" for s in symbols) or "the given size"


def domain_sentence(domain: Domain, symbols) -> str:
    return "; ".join(domain.sets[s].describe(str(s)) for s in symbols)


def _notes(exploration: regions.Exploration, pieces) -> list[str]:
    notes = [f"ATen capture: {len(exploration.captures)} capture{'s' if len(exploration.captures) != 1 else ''} "
             f"in {exploration.seconds:.1f} s"]
    if exploration.complete is False or exploration.complete is None:
        bound = {"captures": "the bound on captures", "time": "the bound on time"}.get(exploration.stopped_by,
                                                                                      "exploration")
        notes.append(f"not explored ({bound} stopped it): {exploration.unexplored_text()}; the valid sizes hold "
                     "only in the regions listed")
    pinned = _finite_region(exploration)
    if pinned is not None:
        guard, symbol, sizes = pinned
        notes.append(f"the model's code at {guard.location} decides per size ({format_expr(guard.condition)}): "
                     f"the graph captured at {symbol} = {exploration.running[0].example[symbol]} holds for "
                     f"{sizes} only, so each capture maps a few sizes and --max-captures bounds how many")
    return notes


def _finite_region(exploration: regions.Exploration):
    """Where a running region holds finitely many sizes of a symbol (a
    Swin's window count, a ``H == 224``): the guard that bounds it, the
    symbol and the sizes in words; None when every running region is unbounded."""
    for captured in exploration.running:
        region = Domain(tuple(exploration.symbols))
        for guard in captured.guards:
            region.add(Requirement(guard.condition, guard.location, "the region"))
        if region.undecided:
            continue
        for symbol in exploration.symbols:
            allowed = region.sets[symbol]
            if all(hi is not None for intervals in allowed.classes for _, hi in intervals):
                bounding = [g for g in captured.guards if symbol in g.condition.free_symbols
                            and isinstance(g.condition, sympy.Eq)] or \
                    [g for g in captured.guards if symbol in g.condition.free_symbols]
                return bounding[-1], symbol, allowed.plain().describe(str(symbol))
    return None


def copy_error(error: ShapecalcError, reason: str) -> ShapecalcError:
    copied = copy.copy(error)
    copied.reason = reason
    return copied
