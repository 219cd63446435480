"""``analyze``: trace a model, propagate sizes, derive crops and the domain.

This is the public boundary: errors raised inside gain the model, the input
spec and the node here, so every message a person sees names all three.
"""

from __future__ import annotations

import dataclasses
import os
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import sympy
import torch
import torch.fx
import torch.nn as nn

from shapecalc.engine import rules
from shapecalc._errors import ShapecalcError, TraceError, UnsupportedOpError
from shapecalc.engine.domain import Domain, PeriodicSet
from shapecalc.audits.geometry import CropAlignment, MergeAlignment, aligned_sizes, crop_alignments, crop_conditions, merge_alignments
from shapecalc.engine.propagate import META_KEY, SizeInterpreter
from shapecalc.audits.resampling import ResampleAlignment, resample_alignments
from shapecalc.engine.symbolic import display_form, format_expr
from shapecalc.engine.tensors import IDENTITY, SymbolicTensor
from shapecalc.capture.trace import (InputSpec, check_fidelity, op_label, parse_input_spec, spatial_dimensions_and_channels,
                                     trace_module, trace_notes)


@dataclass(frozen=True)
class Layer:
    """One graph node whose value is a tensor with spatial axes."""

    name: str
    op: str
    params: str
    tensor: SymbolicTensor
    #: the qualified name of the module whose call produced it (``encoder.layer1.0.conv1``; "" for the model's own code)
    module: str = ""

    @property
    def spatial(self) -> tuple[sympy.Expr, ...]:
        """The spatial sizes, in the form that prints as the CLI shows them."""
        return tuple(display_form(s) for s in self.tensor.spatial_sizes)

    def __repr__(self) -> str:
        return (f"Layer(name={self.name!r}, module={self.module!r}, op={self.op!r}, params={self.params!r}, "
                f"spatial=({', '.join(format_expr(s) for s in self.tensor.spatial_sizes)}))")


@dataclass(frozen=True)
class Analysis:
    """Everything shapecalc knows about one model at one input spec.

    Immutable, like the einops plan it is modelled on: the collections are
    tuples, ``outputs`` and ``aligned_domain`` read-only mappings and the
    domain frozen, so no report can change what the next one reads (a
    variant is a new Analysis: ``dataclasses.replace``).  The traced
    ``graph_module`` is torch's own object and stays as torch made it."""

    model: str
    input: InputSpec
    input_tensor: SymbolicTensor
    layers: tuple[Layer, ...]
    outputs: Mapping[str, SymbolicTensor]
    crops: tuple[CropAlignment, ...]
    domain: Domain
    notes: tuple[str, ...]
    graph_module: torch.fx.GraphModule = field(repr=False)
    merges: tuple[MergeAlignment, ...] = ()
    resamples: tuple[ResampleAlignment, ...] = ()
    #: per input symbol, the valid sizes where every crop, merge and resample is exact
    aligned_domain: Mapping[sympy.Symbol, PeriodicSet] = field(default_factory=lambda: types.MappingProxyType({}))
    #: alignment conditions that could not be decided (they leave aligned_domain an upper bound)
    alignment_undecided: tuple = field(default=(), repr=False)
    #: the front end that captured the graph: "fx" (torch.fx) or "aten" (make_fx over a ShapeEnv)
    capture: str = "fx"
    #: the ATen front end's regions of the size space (see shapecalc.capture.regions), in capture order
    pieces: tuple = ()
    #: True when the pieces cover every size, False when part is unexplored, None when not decided
    pieces_complete: Optional[bool] = None

    def __post_init__(self):
        # whatever sequences and dicts the caller built, the result holds read-only copies
        for name in ("layers", "crops", "notes", "merges", "resamples", "alignment_undecided", "pieces"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("outputs", "aligned_domain"):
            object.__setattr__(self, name, types.MappingProxyType(dict(getattr(self, name))))
        self.domain.freeze()

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        return self.input.symbols

    def __repr__(self) -> str:
        # the dataclass repr would list every layer and raw sympy trees
        outputs = ", ".join(f"{name!r}: ({', '.join(format_expr(s) for s in t.spatial_sizes)})"
                            for name, t in self.outputs.items())
        return (f"Analysis(model={self.model!r}, input={self.input.text!r}, layers={len(self.layers)}, "
                f"outputs={{{outputs}}}, valid={self.validity_sentence()!r})")

    def valid_sizes(self, symbol: Union[str, sympy.Symbol]) -> PeriodicSet:
        """The exact set of sizes of ``symbol`` for which the forward pass runs."""
        for s in self.symbols:
            if s == symbol or str(s) == str(symbol):
                return self.domain.sets[s]
        raise KeyError(f"{symbol} is not an input symbol (have: {', '.join(map(str, self.symbols)) or 'none'})")

    def validity_sentence(self) -> str:
        parts = [self.domain.sets[s].describe(str(s)) for s in self.symbols]
        if self.pieces and self.pieces_complete is not True:
            # outside the regions explored nothing is known: no "never" about them
            parts = ["where explored: " + parts[0].split("; never for")[0]] + \
                [p.split("; never for")[0] for p in parts[1:]]
        if not self.symbols:
            parts.append("runs at this size")
        joint = self.domain.joint_sentence()
        if joint is not None:
            parts.append(f"jointly: {joint}")
        parts += self._pieces_sentences()
        if self.domain.undecided:
            parts.append("also needs " + "; ".join(
                f"{r.reason} (node {r.node})" for r in self.domain.undecided) + " (not decided)")
        return "; ".join(parts)

    def _pieces_sentences(self) -> list[str]:
        """What the ATen front end found outside the valid sizes: the model's
        own exceptions (once per line and message), and what is unexplored."""
        by_location: dict[tuple, list] = {}
        for piece in self.pieces:
            if not piece.runs:
                by_location.setdefault((piece.location, piece.origin), []).append(piece)
        out = []
        for (location, origin), raised in by_location.items():
            message = _common_message([p.message for p in raised])
            if origin == "size":
                out.append(f"where {raised[0].region_text()}, torch raises {message!r}")
            elif origin == "torch":
                out.append(f"where {' or '.join(p.region_text() for p in raised)}, torch raises {message!r} "
                           f"(called at {location})")
            else:
                out.append(f"otherwise {location} raises {message!r}")
        if self.pieces and self.pieces_complete is not True:
            out.append("part of the size space was not explored (see notes): the valid sizes hold in the regions "
                       "explored")
        return out

    def aligned(self) -> Optional[bool]:
        """Whether every crop, merge and resample is exact for every valid size."""
        verdicts = [c.aligned for c in self.crops] + [m.aligned for m in self.merges]
        verdicts += [r.aligned for r in self.resamples]
        return False if False in verdicts else (True if all(v is True for v in verdicts) else None)

    def aligned_sentence(self) -> str:
        """Where everything lines up, as a sentence (``H = 16k + 1 from 1``)."""
        if not self.symbols:
            verdict = self.aligned()
            return {True: "aligned at this size", False: "not aligned at this size",
                    None: "alignment at this size not decided"}[verdict]
        parts = [self.aligned_domain[s].describe(str(s)) if not self.aligned_domain[s].is_empty()
                 else f"no valid {s}" for s in self.symbols]
        if self.alignment_undecided:
            parts.append("at most: some conditions were not decided")
        return "; ".join(parts)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _common_message(messages: list[str]) -> str:
    """One message for several (smp's differ only in the padded size it
    suggests): their common start, cut after a sentence, or the message."""
    first = messages[0]
    if all(m == first for m in messages):
        text = first
    else:
        prefix = os.path.commonprefix(messages)
        cut = prefix.rfind(". ")
        text = (prefix[:cut + 1] if cut > 0 else prefix.rstrip()) + " ..."
    return text if len(text) <= 120 else text[:117] + "..."


def _params(node: torch.fx.Node, graph_module: torch.fx.GraphModule) -> str:
    """The params column: what the node's rule shows of its parameters
    (``k3 s2 p1 d2 ceil``, ``bilinear x2``, ``[:, :, 1:5]``)."""
    found = rules.node_rule(node, graph_module)
    return found.params_text(node, graph_module) if found is not None else ""


def _outputs(value) -> dict[str, SymbolicTensor]:
    if isinstance(value, SymbolicTensor):
        return {"output": value}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items() if isinstance(v, SymbolicTensor)}
    if isinstance(value, (tuple, list)):
        return {str(i): v for i, v in enumerate(value) if isinstance(v, SymbolicTensor)}
    return {}


#: the front ends ``analyze(capture=...)`` and ``--capture`` take
CAPTURES = ("fx", "aten", "auto")


def analyze(model: nn.Module, input: Union[str, InputSpec], *, channels: Optional[int] = None, batch: int = 1,
            name: Optional[str] = None, leaf: Sequence = (), concrete_args: Optional[Mapping[str, Any]] = None,
            capture: str = "fx", max_captures: Optional[int] = None, max_seconds: Optional[float] = None,
            progress: Optional[Callable[[str], None]] = None) -> Analysis:
    """Trace ``model`` and derive, for the input spec (``"H"``, ``"HxW"``,
    ``"512x384"``), every layer's spatial sizes, the crop offsets, the output
    sizes and the exact set of valid input sizes.  ``leaf`` (module classes,
    functions or ``package.module:Name`` specs) stay one node each and
    ``concrete_args`` fix forward() arguments (see :func:`shapecalc.tracing`).

    ``capture`` picks the front end: ``"fx"`` (torch.fx, fast), ``"aten"``
    (PyTorch's symbolic tracing, for models whose Python looks at sizes: the
    domain becomes piecewise, each region of the size space mapped to a
    graph or to the model's own exception, exploring at most
    ``max_captures`` captures and ``max_seconds``), or ``"auto"`` (fx, and
    the ATen front end where fx cannot trace the model faithfully).
    ``progress`` receives a line per ATen capture (``capturing at 224x223``)."""
    name = name or type(model).__name__
    spec = parse_input_spec(input) if isinstance(input, str) else input
    if capture not in CAPTURES:
        raise ValueError(f"capture={capture!r}: use one of {', '.join(CAPTURES)}")
    if max_captures is not None and (isinstance(max_captures, bool) or not isinstance(max_captures, int)
                                     or max_captures < 1):
        raise ValueError(f"max_captures={max_captures!r}: give a whole number of captures, at least 1")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not max_seconds > 0):
        raise ValueError(f"max_seconds={max_seconds!r}: give a positive number of seconds")
    if capture == "aten":
        return _analyze_aten(model, spec, channels=channels, batch=batch, name=name, max_captures=max_captures,
                             max_seconds=max_seconds, progress=progress)
    try:
        return _analyze_fx(model, spec, channels=channels, batch=batch, name=name, leaf=leaf,
                           concrete_args=concrete_args)
    except (TraceError, UnsupportedOpError) as fx_error:
        if capture != "auto":
            raise
        why = f"torch.fx could not be used ({fx_error.reason})"
    try:
        analysis = _analyze_aten(model, spec, channels=channels, batch=batch, name=name, max_captures=max_captures,
                                 max_seconds=max_seconds, progress=progress)
    except ShapecalcError as aten_error:
        from shapecalc.aten_analysis import copy_error
        raise copy_error(aten_error, f"{aten_error.reason}; {why}") from aten_error
    return dataclasses.replace(analysis, notes=(f"captured with the ATen front end: {why}", *analysis.notes))


def _analyze_fx(model: nn.Module, spec: InputSpec, *, channels, batch, name, leaf, concrete_args) -> Analysis:
    try:
        concrete = [tuple(int(s) for s in spec.sizes)] if not spec.symbols else []
        graph_module = trace_module(model, channels=channels, batch=batch, sizes=concrete,
                                    dimensions=len(spec.sizes) if len(spec.sizes) > 1 else None,
                                    leaf=leaf, concrete_args=concrete_args)
        dimensions, inferred_channels = spatial_dimensions_and_channels(graph_module)
        spec = spec.for_dimensions(dimensions or (2 if len(spec.sizes) == 1 else len(spec.sizes)))
        channel_count = channels or inferred_channels or 3
        input_tensor = _input_tensor(spec, channel_count, batch)
        placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        required = [n for n in placeholders if not n.args]
        if len(required) > 1:
            raise TraceError(f"forward() takes {len(required)} tensor inputs; shapecalc traces models with one input")
        domain = Domain(spec.symbols)
        interpreter = SizeInterpreter(graph_module, domain)
        result = interpreter.run(input_tensor)
        _check_at_valid_sizes(model, graph_module, domain, spec, channel_count, batch)
    except ShapecalcError as error:
        raise _with_context(error, name, spec) from error
    notes = trace_notes(graph_module) + interpreter.notes
    return _assembled(name, spec, input_tensor, graph_module, interpreter, result, domain, notes, capture="fx")


def _input_tensor(spec: InputSpec, channels: int, batch: int) -> SymbolicTensor:
    count = len(spec.sizes)
    return SymbolicTensor((sympy.Integer(batch), sympy.Integer(channels), *spec.sizes),
                          tuple(range(2, 2 + count)), (IDENTITY,) * count)


def _assembled(name, spec, input_tensor, graph_module, interpreter, result, domain, notes, *, capture: str,
               pieces=(), pieces_complete=None) -> Analysis:
    """The Analysis of a sized graph: layers, crops, merges, resamples, alignment."""
    layers = []
    for node in graph_module.graph.nodes:
        value = node.meta.get(META_KEY)
        if isinstance(value, SymbolicTensor) and value.spatial and node.op != "output" and not _unread_index(node, value):
            layers.append(Layer(_layer_name(node, capture), op_label(node, graph_module), _params(node, graph_module),
                                value, _module_of(node, capture)))
    crops = crop_alignments(graph_module, interpreter.crops, domain, input_tensor)
    merges = merge_alignments(graph_module, domain)
    resamples = resample_alignments(graph_module, domain)
    conditions = [c for crop in crops for c in crop_conditions(crop)]
    conditions += [c for m in merges for c in m.conditions] + [c for r in resamples for c in r.conditions]
    aligned_domain, undecided = aligned_sizes(domain, conditions)
    # An audit that could not even state its condition (aligned is None and
    # nothing was recorded) must still keep the aligned domain an upper bound.
    undecided = list(undecided) + [f"{item.name}: alignment not decided" for item in (*crops, *merges, *resamples)
                                   if item.aligned is None and not getattr(item, "conditions", ())]
    return Analysis(name, spec, input_tensor, layers, _outputs(result), crops, domain, notes, graph_module,
                    merges=merges, resamples=resamples, aligned_domain=aligned_domain, alignment_undecided=undecided,
                    capture=capture, pieces=pieces, pieces_complete=pieces_complete)


def _unread_index(node: torch.fx.Node, value: SymbolicTensor) -> bool:
    # a max pool's indices that nothing reads (an ATen graph always has them)
    return value.dtype_kind == "integer" and not node.users and node.op == "call_function"


def _module_of(node: torch.fx.Node, capture: str) -> str:
    if node.op == "call_module":
        return str(node.target)
    from shapecalc.capture.aten import module_path
    return module_path(node)


def _layer_name(node: torch.fx.Node, capture: str) -> str:
    # an ATen node's own name (convolution_3) says little: it is read with its module (docs/json.md)
    return node.name


def _check_at_valid_sizes(model, graph_module, domain: Domain, spec: InputSpec, channels: int, batch: int) -> None:
    """When the module ran at none of the generic sizes the trace was checked
    at, check it at the smallest sizes the engine says are valid."""
    fidelity = graph_module.meta.get("shapecalc_fidelity")
    if graph_module is model or fidelity is None or fidelity.checked or not spec.symbols:
        return
    smallest = {s: domain.sets[s].minimum() for s in spec.symbols}
    if None in smallest.values():
        return
    sizes = [tuple(int(smallest.get(s, s)) for s in spec.sizes)]
    check_fidelity(model, graph_module, channels=channels, dimensions=len(spec.sizes), sizes=sizes, batch=batch)


def _analyze_aten(model: nn.Module, spec: InputSpec, *, channels, batch, name, max_captures, max_seconds,
                  progress=None) -> Analysis:
    from shapecalc import aten_analysis
    try:
        return aten_analysis.analyze_aten(model, spec, channels=channels, batch=batch, name=name,
                                       max_captures=max_captures, max_seconds=max_seconds, progress=progress)
    except ShapecalcError as error:
        raise _with_context(error, name, spec) from error


def _with_context(error: ShapecalcError, model: str, spec: InputSpec) -> ShapecalcError:
    """``error`` with the boundary's fields set (the message is built from them)."""
    return error.with_context(model=model, input=spec.text)
