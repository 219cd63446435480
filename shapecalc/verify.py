"""``verify``: the engine's sizes against real forward passes.

The analysis (on a meta-device copy of the model) predicts every node's shape
as an expression of the input sizes, and the exact set of sizes for which the
forward pass runs.  Verification draws input sizes from that set (with
hypothesis, always including the smallest and a few large ones), runs the
real model on a device, records every node's shape with an fx Interpreter
over the analysed graph, and compares node by node.  It also runs a few sizes
the domain excludes: those must fail.  The first disagreement is shrunk to the
smallest failing input.

hypothesis is imported only when sizes are drawn, so ``import shapecalc``
stays light.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import sympy
import torch
import torch.fx
import torch.nn as nn

from shapecalc._errors import InputSpecError, ShapecalcError
from shapecalc.analysis import Analysis, _with_context
from shapecalc.engine.domain import Domain, PeriodicSet
from shapecalc.engine.propagate import META_KEY, SizeInterpreter
from shapecalc.engine.symbolic import evaluate, format_expr
from shapecalc.engine.tensors import IDENTITY, SymbolicTensor
from shapecalc.capture.specs import shorten
from shapecalc.capture.trace import InputSpec, load_model, parse_input_spec, spatial_dimensions_and_channels, trace_module

DEVICES = ("auto", "cpu", "cuda", "meta")
#: the default input spec for a model with 1, 2 or 3 spatial axes
DEFAULT_INPUTS = {1: "H", 2: "HxW", 3: "D,H,W"}
#: per device: (examples, largest size drawn) when the caller does not say
DEFAULT_BUDGET = {"meta": (200, 2048), "cuda": (200, 1024), "cpu": (40, 512)}
#: the smallest sizes (per symbol) always run, and how many large ones
SMALLEST, LARGEST = 3, 2
#: how many sizes outside the domain are run (each must fail)
INVALID_CHECKS = 4
#: at most this many forward passes when shrinking a failure by hand
SHRINK_BUDGET = 64
#: candidate sizes whose undecided requirements are evaluated (no forward pass) in one search
SEARCH_BUDGET = 20000
#: how far a search for sizes to suggest may reach when max_size excludes every valid one
SUGGEST_LIMIT = 1 << 62

ProgressCallback = Callable[[int, int], None]


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when available, else ``cpu``; a device that
    is not there is a usage error."""
    if device not in DEVICES:
        raise InputSpecError(f"unknown device; choose one of {', '.join(DEVICES)}", argument="device",
                             value=shorten(device))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputSpecError("torch.cuda.is_available() is False on this machine", argument="device", value=device)
    return device


def _device_label(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return device


# ---------------------------------------------------------------------------
# recording real shapes


def _observed(value):
    """What a forward pass produced at a node, reduced to shapes and ints."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_observed(v) for v in value)
    if isinstance(value, dict):
        return {k: _observed(v) for k, v in value.items()}
    return None


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the analysed graph with the *real* model's modules and parameters
    (same qualified names) and keeps each node's shape, not its tensor."""

    def __init__(self, graph_module: torch.fx.GraphModule, real_module: nn.Module):
        super().__init__(graph_module, garbage_collect_values=True)
        self.real = real_module
        self.shapes: dict[str, Any] = {}
        self.failed_node: Optional[torch.fx.Node] = None

    def run_node(self, n: torch.fx.Node):
        try:
            value = super().run_node(n)
        except Exception:
            self.failed_node = n
            raise
        self.shapes[n.name] = _observed(value)
        return value

    def call_module(self, target, args, kwargs):
        return self.real.get_submodule(target)(*args, **kwargs)

    def get_attr(self, target, args, kwargs):
        owner = self.real
        try:
            for part in target.split("."):
                owner = getattr(owner, part)
            return owner
        except AttributeError:
            # fx stores tensor constants on the graph module only
            return self.fetch_attr(target)


def _peak_elements(shapes: Mapping[str, Any]) -> int:
    peak = 0
    for shape in shapes.values():
        if isinstance(shape, tuple) and shape and all(isinstance(d, int) for d in shape):
            peak = max(peak, math.prod(shape))
    return peak


#: words torch's own size refusals use (conv, pool, linear/matmul on cpu and meta,
#: broadcasting, cat, view/reshape, pads, narrow, norms, interpolate, unfold, pixel shuffle, indexing)
_SIZE_WORDS = ("size", "shape", "dim", "broadcast", "padding", "kernel", "divisible", "value per channel",
               "spatial element", "length", "negative", "out of bounds", "too small", "empty")


def is_size_error(error: BaseException) -> bool:
    """Whether ``error`` is torch refusing the input's sizes: a RuntimeError or
    ValueError (or an IndexError: an index past an axis) whose message is
    about sizes.  AttributeError, TypeError, ImportError, NotImplementedError
    (an op missing on a device) or a dtype or device clash are failures of the
    run itself, which say nothing about sizes."""
    if isinstance(error, TypeError) and str(error).startswith("cond must be a bool"):
        # torch._check handed an int by a meta kernel (upsample of an empty input): the
        # size check itself, mistyped; the cpu kernel refuses the same sizes with a RuntimeError
        return True
    if isinstance(error, AssertionError) and _raised_by_torch_assert(error):
        # the model's own check on its input (``torch._assert(h % 4 == 0, ...)``), which the
        # engine turns into a requirement: a refusal of sizes as much as a kernel's check
        return True
    if isinstance(error, NotImplementedError) or not isinstance(error, (RuntimeError, ValueError, IndexError)):
        return False
    text = str(error).lower()
    return any(word in text for word in _SIZE_WORDS)


def _raised_by_torch_assert(error: BaseException) -> bool:
    """Whether the innermost frame of ``error`` is ``torch._assert`` (a plain
    ``assert`` in the model or an assertion inside torch is not)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    code = frame.tb_frame.f_code
    return code.co_name == "_assert" and frame.tb_frame.f_globals.get("__name__") == "torch"


def _is_resource_error(error: BaseException) -> bool:
    text = str(error).lower()
    # torch refuses a tensor whose byte count overflows int64 (even on meta): a limit, not a size rule
    return (isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text
            or "size calculation overflowed" in text)


# ---------------------------------------------------------------------------
# outcomes


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the engine and a forward pass."""

    sizes: dict[str, int]
    kind: str                      # "size" | "error" (torch refused valid sizes) | "ran" (torch ran invalid ones)
                                   # | "broken" (the run failed with something other than a size error)
    node: Optional[str]
    op: Optional[str]
    predicted: Optional[str]       # the engine's expression(s) for the node
    expected: Optional[Any]        # those expressions evaluated at ``sizes``
    actual: Optional[Any]          # what torch produced
    message: str
    shrunk_from: Optional[dict[str, int]] = None

    def describe(self) -> str:
        at = ", ".join(f"{k}={v}" for k, v in self.sizes.items()) or "the given size"
        where = f" at node {self.node!r} ({self.op})" if self.node else ""
        lines = [f"mismatch at {at}{where}: {self.message}"]
        if self.predicted is not None:
            lines.append(f"  engine: {self.predicted} = {_shape_text(self.expected)}")
        if self.actual is not None:
            lines.append(f"  torch:  {_shape_text(self.actual)}")
        if self.shrunk_from:
            lines.append("  (shrunk from " + ", ".join(f"{k}={v}" for k, v in self.shrunk_from.items()) + ")")
        return "\n".join(lines)


def _shape_text(value) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "(" + ", ".join(map(str, value)) + ")"
    return str(value)


@dataclass(frozen=True)
class Outcome:
    """One input size: what the engine claimed and what torch did."""

    sizes: dict[str, int]
    claimed_valid: bool
    ran: bool
    compared: int
    mismatch: Optional[Mismatch] = None
    skipped: Optional[str] = None   # e.g. out of memory: no verdict
    peak_elements: int = 0          # the largest tensor seen (elements)
    shapes: Mapping[str, Any] = field(default_factory=dict, repr=False)  # node -> what torch produced


def _op_of(node: torch.fx.Node, graph_module: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(graph_module.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _compare(predicted, actual, env) -> Optional[tuple[Any, Any, str]]:
    """None when they agree (or cannot be compared); else (expected, actual, text)."""
    if isinstance(predicted, SymbolicTensor):
        if not isinstance(actual, tuple) or len(actual) != predicted.ndim:
            return predicted.shape, actual, f"a {predicted.ndim}-d tensor was predicted"
        expected = tuple(int(evaluate(s, env)) for s in predicted.shape)
        return None if expected == actual else (expected, actual, "shape differs")
    if isinstance(predicted, sympy.Expr):
        if not isinstance(actual, int):
            return None
        expected = evaluate(predicted, env)
        return None if expected == actual else (expected, actual, "value differs")
    if isinstance(predicted, (tuple, list)) and isinstance(actual, tuple) and len(predicted) == len(actual):
        for p, a in zip(predicted, actual):
            found = _compare(p, a, env)
            if found is not None:
                return found
    return None


def _predicted_text(predicted) -> str:
    if isinstance(predicted, SymbolicTensor):
        return "(" + ", ".join(format_expr(s) for s in predicted.shape) + ")"
    if isinstance(predicted, (tuple, list)):
        return "(" + ", ".join(_predicted_text(p) for p in predicted) + ")"
    if isinstance(predicted, sympy.Basic):
        return format_expr(predicted)
    return repr(predicted)


def _has_joint_sizes(domain: Domain) -> bool:
    """Whether the valid sizes are more than the product of each symbol's set
    (a requirement ties symbols, decided into cells, or one is undecided)."""
    return bool(domain.undecided) or getattr(domain, "cells", None) is not None


class ForwardChecker:
    """Runs a model at concrete input sizes and compares with an analysis.

    ``analysis`` comes from a (meta) copy of the model; ``real_module`` has
    the same structure, lives on ``device`` and has real weights (it may be
    the analysed module itself on the meta device)."""

    def __init__(self, analysis: Analysis, real_module: nn.Module, device: str):
        self.analysis, self.real_module, self.device = analysis, real_module, device
        self.graph_module = analysis.graph_module
        self._symbols = {str(s): s for s in analysis.symbols}
        self._nodes = [n for n in self.graph_module.graph.nodes
                       if n.op in ("call_module", "call_function", "call_method") and META_KEY in n.meta]

    def claimed_valid(self, env: Mapping[sympy.Symbol, int]) -> bool:
        """The engine's verdict: in every symbol's set, and every undecided
        requirement true at these sizes."""
        domain = self.analysis.domain
        if hasattr(type(domain), "__contains__"):
            return env in domain  # the domain judges requirements tying several symbols itself
        if any(env[s] not in domain.sets[s] for s in self.analysis.symbols):
            return False
        return all(bool(evaluate(r.condition, env)) for r in domain.undecided)

    def check(self, sizes: Mapping[str, int]) -> Outcome:
        sizes = {name: int(sizes[name]) for name in self._symbols}
        env = {symbol: sizes[name] for name, symbol in self._symbols.items()}
        claimed = self.claimed_valid(env)
        shape = tuple(int(evaluate(s, env)) for s in self.analysis.input_tensor.shape)
        recorder = self._recorder()
        try:
            with torch.inference_mode():
                x = torch.randn(shape, device=self.device) if self.device != "meta" else torch.empty(shape, device="meta")
                recorder.run(x)
                if self.device == "cuda":
                    torch.cuda.synchronize()
        except Exception as error:
            peak = _peak_elements(recorder.shapes)
            if _is_resource_error(error):
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                return Outcome(sizes, claimed, False, 0, skipped=f"{type(error).__name__}: out of memory")
            node = recorder.failed_node
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raised = f"{type(error).__name__}: {first_line}"
            if not is_size_error(error):
                # not torch refusing sizes: this run confirms nothing either way
                return Outcome(sizes, claimed, False, 0, Mismatch(
                    sizes, "broken", node.name if node is not None else None,
                    _op_of(node, self.graph_module) if node is not None else None, None, None, None,
                    f"the forward pass failed with {raised}, which is not a size error, so verification "
                    "cannot judge these sizes"), peak_elements=peak)
            if not claimed:  # torch refused sizes the engine excludes: confirmed
                return Outcome(sizes, claimed, False, 0, peak_elements=peak)
            return Outcome(sizes, claimed, False, 0, Mismatch(
                sizes, "error", node.name if node is not None else None,
                _op_of(node, self.graph_module) if node is not None else None, None, None, None,
                f"the engine says these sizes are valid, but torch raised {raised}"),
                peak_elements=peak)
        peak = _peak_elements(recorder.shapes)
        if not claimed:  # predictions outside the domain mean nothing: the domain is wrong
            return Outcome(sizes, claimed, True, 0, Mismatch(
                sizes, "ran", None, None, None, None, None,
                f"the engine says these sizes are invalid ({self.analysis.validity_sentence()}), but torch ran"),
                peak_elements=peak, shapes=recorder.shapes)
        compared = 0
        for name, op, predicted in self._predictions(env):
            actual = recorder.shapes.get(name)
            if actual is None:
                continue
            found = _compare(predicted, actual, env)
            compared += 1
            if found is not None:
                expected, actual_value, text = found
                return Outcome(sizes, claimed, True, compared, Mismatch(
                    sizes, "size", name, op, _predicted_text(predicted),
                    expected, actual_value, text), peak_elements=peak)
        return Outcome(sizes, claimed, True, compared, peak_elements=peak)

    #: what a comparison is made at: "node" (every node of the analysed graph) or "output"
    unit = "node"

    def _recorder(self):
        return _ShapeRecorder(self.graph_module, self.real_module)

    def _predictions(self, env):
        """(name, op, predicted value) of everything compared with torch at sizes ``env``."""
        return ((n.name, _op_of(n, self.graph_module), n.meta[META_KEY]) for n in self._nodes)


class _OutputRecorder:
    """Runs the real model's own forward() and keeps its outputs' shapes."""

    def __init__(self, real_module: nn.Module):
        self.real, self.shapes, self.failed_node = real_module, {}, None

    def run(self, x):
        value = self.real(x)
        if isinstance(value, dict):
            named = {str(k): v for k, v in value.items()}
        elif isinstance(value, (tuple, list)):
            named = {str(i): v for i, v in enumerate(value)}
        else:
            named = {"output": value}
        self.shapes = {k: _observed(v) for k, v in named.items()}
        return value


class OutputChecker(ForwardChecker):
    """The ATen front end's analysis against real forward passes: its graph
    is one region's (the model's Python chose its branches at one size), so
    the model itself runs, and what is compared is every output's shape and
    whether torch runs where the pieces say it does."""

    unit = "output"

    def __init__(self, analysis: Analysis, real_module: nn.Module, device: str):
        super().__init__(analysis, real_module, device)
        self._nodes = list(analysis.outputs)

    def _recorder(self):
        return _OutputRecorder(self.real_module)

    def _predictions(self, env):
        # several running pieces have graphs of their own: the outputs of the one these sizes lie in
        outputs = self.analysis.outputs
        for piece in self.analysis.pieces:
            if piece.runs and piece.outputs is not None and bool(piece.condition.subs(env)):
                outputs = piece.outputs
                break
        return ((name, "output", tensor) for name, tensor in outputs.items())


# ---------------------------------------------------------------------------
# the report


@dataclass
class VerifyReport:
    """What one verification run did and found."""

    model: str
    input: str
    device: str
    domain: str
    examples: int = 0              # valid sizes run
    invalid_checked: int = 0       # sizes outside the domain run (each must fail)
    nodes_compared: int = 0        # node comparisons, over all examples
    graph_nodes: int = 0
    skipped: int = 0               # no verdict (out of memory)
    analysis_seconds: float = 0.0
    seconds: float = 0.0
    #: the front end of the analysis ("fx" or "aten") and what was compared ("node" or "output")
    capture: str = "fx"
    unit: str = "node"
    size_range: dict[str, tuple[int, int]] = field(default_factory=dict)
    mismatch: Optional[Mismatch] = None
    #: why no valid size was compared (None when some were, or after a mismatch)
    problem: Optional[str] = None
    #: the user's bounds (max_size) exclude every valid size: a usage problem (exit 2)
    out_of_bounds: bool = False
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        # a verification that compared nothing proves nothing
        return self.mismatch is None and self.problem is None and self.nodes_compared > 0

    @property
    def exit_code(self) -> int:
        """0 passed, 2 when the bounds exclude every valid size, else 1."""
        return 0 if self.passed else 2 if self.out_of_bounds and self.mismatch is None else 1

    def summary(self) -> str:
        ranges = ", ".join(f"{k} in {lo}..{hi}" for k, (lo, hi) in self.size_range.items())
        ranges = f" ({ranges or 'the given size'})" if self.examples else ""
        lines = []
        if self.mismatch is not None:
            lines.append(self.mismatch.describe())
        elif self.problem is not None:
            lines.append(f"nothing compared: {self.problem}")
        verdict = "PASS" if self.passed else "FAIL"
        lines += [
            f"{verdict}: {self.model} with input {self.input!r} on {self.device}",
            f"  examples: {_count(self.examples, 'valid size')}{ranges}, {_count(self.invalid_checked, 'invalid size')}"
            + (f", {self.skipped} skipped (out of memory)" if self.skipped else ""),
            f"  {self.unit}s compared: {self.nodes_compared} ({_count(self.graph_nodes, self.unit)} per forward pass)",
            *([f"  capture: {self.capture} (the model's own forward passes; outputs compared)"]
              if self.unit == "output" else [f"  capture: {self.capture}"] if self.capture != "fx" else []),
            f"  valid input: {self.domain}",
            f"  time: {self.seconds:.1f} s ({self.analysis_seconds:.1f} s analysis)",
        ]
        return "\n".join(lines)

    def as_data(self) -> dict:
        m = self.mismatch
        return {
            "model": self.model, "input": self.input, "capture": self.capture, "compared": self.unit,
            "device": self.device, "passed": self.passed,
            "examples": self.examples, "invalid_checked": self.invalid_checked,
            "nodes_compared": self.nodes_compared, "skipped": self.skipped, "seconds": round(self.seconds, 3),
            "problem": self.problem,
            "mismatch": None if m is None else {
                "sizes": m.sizes, "kind": m.kind, "node": m.node, "op": m.op, "predicted": m.predicted,
                "expected": m.expected, "actual": m.actual, "message": m.message, "shrunk_from": m.shrunk_from},
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------
# planning sizes


class SizeIndex:
    """The members of a :class:`PeriodicSet` from 1 to ``max_size`` in
    increasing order, reached by index with integer arithmetic: nothing is
    listed, so a bound of 10**12 costs what a bound of 100 does.

    Sizes ``n = P*q + r`` fall in blocks ``q`` of ``P`` (the period).  Between
    two interval ends of any class the set of residues present in a block
    stays the same, so the members form runs of equal blocks; a running
    count over those runs turns an index into a block, and the block's sorted
    residues into the size."""

    def __init__(self, valid: PeriodicSet, max_size: int):
        self.valid, self.max_size = valid, max_size
        period = valid.period
        self._whole = (max_size + 1) // period  # blocks 0 .. whole-1 lie entirely in 0..max_size
        changes: dict[int, int] = {}
        for residue, intervals in enumerate(valid.classes):
            for lo, hi in intervals:
                first = max(lo, PeriodicSet.start(period, residue))  # n >= 1
                stop = self._whole if hi is None else min(hi + 1, self._whole)
                if first < stop:
                    changes[first] = changes.get(first, 0) + 1
                    changes[stop] = changes.get(stop, 0) - 1
        self._starts, self._stops, self._widths, self._before = [], [], [], []
        active, count, edges = 0, 0, sorted(changes)
        for first, stop in zip(edges, edges[1:]):
            active += changes[first]
            if active:
                self._starts.append(first)
                self._stops.append(stop)
                self._widths.append(active)
                self._before.append(count)
                count += active * (stop - first)
        self._in_whole_blocks = count
        last = max_size - period * self._whole  # residues 0..last of the partial block
        self._partial = [r for r in self._residues_at(self._whole) if r <= last]
        self.count = count + len(self._partial)
        self._cache: dict[int, list[int]] = {}

    def _residues_at(self, block: int) -> list[int]:
        period = self.valid.period
        return [r for r, intervals in enumerate(self.valid.classes)
                if any(max(lo, PeriodicSet.start(period, r)) <= block and (hi is None or block <= hi) for lo, hi in intervals)]

    def _run_residues(self, run: int) -> list[int]:
        if run not in self._cache:
            self._cache[run] = self._residues_at(self._starts[run])
        return self._cache[run]

    def __bool__(self) -> bool:
        return self.count > 0

    def __getitem__(self, index: int) -> int:
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"size index {index} out of range (0..{self.count - 1})")
        if index >= self._in_whole_blocks:
            return self.valid.period * self._whole + self._partial[index - self._in_whole_blocks]
        run = bisect.bisect_right(self._before, index) - 1
        block, position = divmod(index - self._before[run], self._widths[run])
        return self.valid.period * (self._starts[run] + block) + self._run_residues(run)[position]

    def rank(self, n: int) -> int:
        """How many members are <= ``n``."""
        n = min(n, self.max_size)
        if n < 1:
            return 0
        block, residue = divmod(n, self.valid.period)
        if block >= self._whole:
            return self._in_whole_blocks + sum(1 for r in self._partial if r <= residue)
        run = bisect.bisect_right(self._starts, block) - 1
        if run < 0:
            return 0
        below = self._before[run] + self._widths[run] * (min(block, self._stops[run]) - self._starts[run])
        if block < self._stops[run]:
            below += sum(1 for r in self._run_residues(run) if r <= residue)
        return below


def _invalid_values(valid: PeriodicSet, max_size: int) -> list[int]:
    """A few sizes the domain excludes: just below the smallest valid size,
    the smallest ones, and gaps between valid sizes."""
    invalid = SizeIndex(valid.complement(), max_size)
    if invalid.count <= INVALID_CHECKS:
        return [invalid[i] for i in range(invalid.count)]
    smallest = valid.minimum()
    below = invalid.count if smallest is None else invalid.rank(smallest)
    picks = [invalid[i] for i in range(max(below - 2, 0), below)] + [invalid[0]]
    picks += [invalid[i] for i in range(below, min(below + 2, invalid.count))]
    return sorted(dict.fromkeys(picks))[:INVALID_CHECKS]


def _explicit_sizes(values: dict[str, SizeIndex]) -> list[dict[str, int]]:
    """The smallest sizes and a few large ones, alternating (a small budget
    still gets both ends), then (for 2+ symbols) mixes."""
    names = list(values)
    plans = []
    for i in range(max(SMALLEST, LARGEST)):
        if i < SMALLEST:
            plans.append({k: v[min(i, v.count - 1)] for k, v in values.items()})
        if i < LARGEST:
            plans.append({k: v[max(v.count - 1 - i, 0)] for k, v in values.items()})
    if len(names) >= 2:
        for name in names:
            plans.append({k: (v[-1] if k == name else v[0]) for k, v in values.items()})
    unique = {tuple(p.items()): p for p in plans}
    return list(unique.values())


def size_analysis(model: nn.Module, input: Union[str, InputSpec], *, channels: Optional[int] = None,
                  name: Optional[str] = None, dimensions: Optional[int] = None) -> Analysis:
    """The sizes-and-domain half of :func:`shapecalc.analyze`: every node's
    predicted value and the exact set of valid sizes, without the crop, merge
    and resampling audits.  Verification checks only sizes and domains, and
    on nets with many merges those audits are most of the analysis time.
    ``dimensions`` (spatial axes) overrides what the first layer says."""
    name = name or type(model).__name__
    spec = parse_input_spec(input) if isinstance(input, str) else input
    try:
        graph_module = trace_module(model)
        inferred_dimensions, inferred_channels = spatial_dimensions_and_channels(graph_module)
        dimensions = dimensions or inferred_dimensions or (2 if len(spec.sizes) == 1 else len(spec.sizes))
        spec = spec.for_dimensions(dimensions)
        count = len(spec.sizes)
        input_tensor = SymbolicTensor((sympy.Integer(1), sympy.Integer(channels or inferred_channels or 3), *spec.sizes),
                                      tuple(range(2, 2 + count)), (IDENTITY,) * count)
        domain = Domain(spec.symbols)
        interpreter = SizeInterpreter(graph_module, domain)
        interpreter.run(input_tensor)
    except ShapecalcError as error:
        raise _with_context(error, name, spec) from error
    return Analysis(name, spec, input_tensor, [], {}, [], domain, interpreter.notes, graph_module)


def _load(model, kwargs, width, device):
    """(name, analysed module on meta, real module on device, device)."""
    if isinstance(model, nn.Module):
        tensors = [*model.parameters(), *model.buffers()]
        own = tensors[0].device.type if tensors else "cpu"
        if device in ("auto", own):
            return type(model).__name__, model, model, own
        device = resolve_device(device)
        if own == "meta":
            raise InputSpecError(f"the model lives on meta (no weights); it cannot run on {device}")
        return type(model).__name__, model, copy.deepcopy(model).to(device), device
    kwargs = dict(kwargs or {})
    if width is not None:
        kwargs["width"] = width
    device = resolve_device(device)
    analysed = load_model(model, kwargs)
    real = analysed if device == "meta" else load_model(model, kwargs, device=device)
    return model, analysed, real, device


def prepare(model: Union[str, nn.Module], input: Optional[str] = None, *, device: str = "auto",
            kwargs: Optional[Mapping[str, Any]] = None, width: Optional[float] = None,
            channels: Optional[int] = None, capture: str = "fx", max_captures: Optional[int] = None,
            max_seconds: Optional[float] = None) -> ForwardChecker:
    """Analyse ``model`` and set up forward passes on ``device``.  ``input``
    defaults to one symbol per spatial axis (``H``, ``HxW``, ``D,H,W``).
    ``capture`` picks the front end (see :func:`shapecalc.analyze`): with
    the ATen front end the model's own forward() runs and its outputs are
    compared (an :class:`OutputChecker`)."""
    from shapecalc.analysis import CAPTURES

    if capture not in CAPTURES:
        raise InputSpecError(f"use one of {', '.join(CAPTURES)}", argument="capture", value=shorten(repr(capture)))
    name, analysed, real, device = _load(model, kwargs, width, device)
    if capture != "fx":
        from shapecalc._errors import TraceError, UnsupportedOpError
        try:
            if capture == "auto":
                return _prepared_fx(name, analysed, real, device, input, channels)
        except (TraceError, UnsupportedOpError):
            pass  # as analyze(capture="auto"): the ATen front end where fx cannot trace the model
        return _prepared_aten(name, analysed, real, device, input, channels, max_captures, max_seconds,
                              auto=capture == "auto")
    return _prepared_fx(name, analysed, real, device, input, channels)


def _prepared_aten(name, analysed, real, device, input, channels, max_captures, max_seconds, *, auto: bool):
    from shapecalc.analysis import analyze
    from shapecalc.aten_analysis import model_rank

    if input is None:
        input = DEFAULT_INPUTS.get(model_rank(analysed) or 2, "HxW")
    spec = parse_input_spec(input) if isinstance(input, str) else input
    analysis = analyze(analysed, spec, channels=channels, name=name, capture="aten",
                       max_captures=max_captures, max_seconds=max_seconds)
    return OutputChecker(analysis, real, device)


def _prepared_fx(name, analysed, real, device, input, channels) -> ForwardChecker:
    graph_module = trace_module(analysed)
    if input is None:
        dimensions, _ = spatial_dimensions_and_channels(graph_module)
        input = DEFAULT_INPUTS.get(dimensions or 2, "HxW")
    spec = parse_input_spec(input) if isinstance(input, str) else input
    analysis = size_analysis(graph_module, spec, channels=channels, name=name)
    if not isinstance(real, torch.fx.GraphModule) and torch.fx.Tracer().is_leaf_module(real, ""):
        # trace_module traced Sequential(layer), whose node calls submodule "0":
        # run what was traced, not the bare layer
        real = nn.Sequential(real)
    return ForwardChecker(analysis, real, device)


# ---------------------------------------------------------------------------
# verify


def verify(model: Union[str, nn.Module], input: Optional[str] = None, *, device: str = "auto",
           examples: Optional[int] = None, max_size: Optional[int] = None,
           kwargs: Optional[Mapping[str, Any]] = None, width: Optional[float] = None,
           channels: Optional[int] = None, seed: int = 0,
           progress: Optional[ProgressCallback] = None, capture: str = "fx", max_captures: Optional[int] = None,
           max_seconds: Optional[float] = None) -> VerifyReport:
    """Check the engine's sizes and domain for ``model`` against real forward
    passes on ``device`` (``auto``, ``cpu``, ``cuda`` or ``meta``).

    ``examples`` valid sizes are run (default by device: 200 on meta/cuda, 40
    on cpu), drawn from the valid domain up to ``max_size`` (2048 / 1024 /
    512), always including the smallest and largest ones; a few sizes outside
    the domain are run too and must fail with a size error from torch.  The
    first disagreement is shrunk to the smallest failing input.  A run that
    compares no valid size does not pass: ``report.problem`` says why (and
    ``report.exit_code`` is 2 when ``max_size`` excludes every valid size).
    ``progress(done, total)`` is called after every forward pass.
    ``capture`` picks the front end (``"fx"``, ``"aten"``, ``"auto"``, with
    ``max_captures``/``max_seconds`` bounding the ATen exploration): the
    ATen front end's graph belongs to one region of the sizes, so there the
    model's own forward() runs and its outputs are compared.  Returns a
    :class:`VerifyReport`; prints nothing."""
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise InputSpecError("give a positive integer", argument="examples", value=shorten(repr(examples)))
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise InputSpecError("give a positive integer", argument="max_size", value=shorten(repr(max_size)))
    if width is not None and not (isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0):
        raise InputSpecError("give a positive number", argument="width", value=shorten(repr(width)))
    started = time.perf_counter()
    checker = prepare(model, input, device=device, kwargs=kwargs, width=width, channels=channels, capture=capture,
                      max_captures=max_captures, max_seconds=max_seconds)
    analysis = checker.analysis
    default_examples, default_max = DEFAULT_BUDGET[checker.device]
    examples = examples or default_examples
    max_size = max_size or default_max
    report = VerifyReport(analysis.model, analysis.input.text, _device_label(checker.device),
                          analysis.validity_sentence(), graph_nodes=len(checker._nodes), capture=analysis.capture,
                          unit=checker.unit)
    report.analysis_seconds = time.perf_counter() - started
    names = [str(s) for s in analysis.symbols]
    values = {str(s): SizeIndex(analysis.domain.sets[s], max_size) for s in analysis.symbols}
    cache: dict[tuple, Outcome] = {}
    done = [0]

    def run(sizes: dict[str, int]) -> Outcome:
        key = tuple(sizes[n] for n in names)
        if key not in cache:
            outcome = checker.check(sizes)
            cache[key] = outcome
            report.outcomes.append(outcome)
            _tally(report, outcome)
            done[0] += 1
            if progress is not None:
                progress(done[0], total)
        return cache[key]

    # sizes outside the domain, the other symbols at their smallest valid size
    base = {k: (v[0] if v else 1) for k, v in values.items()}
    invalid = [{**base, str(s): n} for s in analysis.symbols
               for n in _invalid_values(analysis.domain.sets[s], max_size)]
    runnable = all(values.values())
    listed: Optional[list[dict[str, int]]] = None  # valid sizes found by search (undecided requirements)
    if names and runnable and _has_joint_sizes(analysis.domain):
        listed, rejected = _search(checker, values, seed)
        # sizes in every symbol's set that an undecided requirement rules out: torch must refuse them too
        invalid += rejected[:INVALID_CHECKS // 2]
        explicit = _listed_sample(listed, examples, seed)
    else:
        explicit = _explicit_sizes(values)[:examples] if runnable else []
    drawn = max(examples - len(explicit), 0) if names and listed is None else 0
    total = len(invalid) + len(explicit) + drawn

    try:
        for sizes in invalid:
            outcome = run(sizes)
            if outcome.mismatch:
                report.mismatch = outcome.mismatch  # already among the smallest excluded sizes
                return _finish(report, started)
        for sizes in explicit:
            outcome = run(sizes)
            if outcome.mismatch:
                report.mismatch = (_shrink_listed(outcome, listed, run) if listed is not None
                                   else _shrink(outcome, values, run))
                return _finish(report, started)
        available = math.prod(v.count for v in values.values()) if runnable else 0
        for attempt in range(3):
            # hypothesis may stop a few short (duplicates it drew are not examples): top up
            missing = min(examples, available) - report.examples - report.skipped
            if not drawn or missing <= 0 or report.mismatch is not None:
                break
            report.mismatch = _draw(values, missing, seed + attempt, run, cache)
    finally:
        report.seconds = time.perf_counter() - started
    if report.mismatch is None and report.nodes_compared == 0:
        report.problem, report.out_of_bounds = _nothing_compared(checker, report, max_size, listed)
    return _finish(report, started)


def _nothing_compared(checker: ForwardChecker, report: VerifyReport, max_size: int,
                      listed: Optional[list]) -> tuple[str, bool]:
    """Why no valid size was compared, with values that reach one; and
    whether the user's max_size is what excluded them."""
    analysis = checker.analysis
    for symbol in analysis.symbols:
        if analysis.domain.sets[symbol].is_empty():
            return f"the engine says the network runs for no {symbol}", False
    if report.skipped:
        return f"every valid size run ran out of memory on {report.device} (try a smaller max_size)", False
    if not analysis.symbols or (report.examples and listed is None):
        return "the forward pass has no node whose size the engine predicts", False
    unbounded = {str(s): SizeIndex(analysis.domain.sets[s], SUGGEST_LIMIT) for s in analysis.symbols}
    found, _ = _search(checker, unbounded, 0, tops=False)
    where = (f"meets {'; '.join(r.reason for r in analysis.domain.undecided)}" if analysis.domain.undecided
             else "is valid")
    if not found:
        return (f"no size searched ({SEARCH_BUDGET} candidates) {where}; give a concrete input size at which the "
                "network runs"), False
    smallest = min(found, key=lambda s: (max(s.values()), sum(s.values())))
    spec = "x".join(str(n) for n in smallest.values())
    at = ", ".join(f"{k}={v}" for k, v in smallest.items())
    if max(smallest.values()) > max_size:
        return (f"no size up to max_size {max_size} {where}; the smallest found is {at}: "
                f"try max_size {max(smallest.values())} or input {spec!r}"), True
    return f"no valid size was run ({at} is valid): try input {spec!r}", False


def _index_tuples(counts: list[int], total: int):
    """Index tuples (one index per symbol, each below its count) with this sum."""
    if len(counts) == 1:
        if total < counts[0]:
            yield (total,)
        return
    for first in range(min(total, counts[0] - 1) + 1):
        for rest in _index_tuples(counts[1:], total - first):
            yield (first, *rest)


def _diagonals(counts: list[int]):
    """Every index tuple, smallest index sum first: small sizes of all symbols before large ones."""
    for total in range(sum(c - 1 for c in counts) + 1):
        yield from _index_tuples(counts, total)


def _search(checker: ForwardChecker, values: dict[str, SizeIndex], seed: int, *,
            tops: bool = True) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """Sizes in every symbol's set, sorted, that meet the undecided
    requirements (no forward pass: the engine's conditions evaluated), and
    those that do not.  At most SEARCH_BUDGET candidates: the smallest by
    index sum, the largest the same way from the top, and random ones."""
    names = list(values)
    counts = [values[n].count for n in names]
    symbols = checker._symbols
    found: dict[tuple, dict[str, int]] = {}
    rejected: list[dict[str, int]] = []
    seen: set = set()
    rng = random.Random(seed)

    def sources():
        yield from itertools.islice(_diagonals(counts), SEARCH_BUDGET // 2 if tops else SEARCH_BUDGET)
        if tops:
            for index in itertools.islice(_diagonals(counts), SEARCH_BUDGET // 4):
                yield tuple(c - 1 - i for c, i in zip(counts, index))
            for _ in range(SEARCH_BUDGET // 4):
                yield tuple(rng.randrange(c) for c in counts)

    for index in sources():
        if index in seen:
            continue
        seen.add(index)
        sizes = {n: values[n][i] for n, i in zip(names, index)}
        if checker.claimed_valid({symbols[n]: v for n, v in sizes.items()}):
            found[tuple(sizes.values())] = sizes
        elif len(rejected) < INVALID_CHECKS:
            rejected.append(sizes)
    return [found[key] for key in sorted(found)], rejected


def _listed_sample(listed: list[dict[str, int]], examples: int, seed: int) -> list[dict[str, int]]:
    """The smallest and largest found sizes, then random others, ``examples`` in all."""
    if len(listed) <= examples:
        return list(listed)
    ends = list(range(min(SMALLEST, examples))) + [len(listed) - 1 - i for i in range(LARGEST)]
    chosen = list(dict.fromkeys(i for i in ends if 0 <= i < len(listed)))[:examples]
    rest = [i for i in range(len(listed)) if i not in set(chosen)]
    chosen += random.Random(seed).sample(rest, examples - len(chosen))
    return [listed[i] for i in chosen]


def _tally(report: VerifyReport, outcome: Outcome) -> None:
    if outcome.skipped:
        report.skipped += 1
        return
    if outcome.mismatch is not None and outcome.mismatch.kind == "broken":
        return  # confirms nothing
    if outcome.claimed_valid:
        report.examples += 1
        for name, n in outcome.sizes.items():
            lo, hi = report.size_range.get(name, (n, n))
            report.size_range[name] = (min(lo, n), max(hi, n))
    else:
        report.invalid_checked += 1
    report.nodes_compared += outcome.compared


def _finish(report: VerifyReport, started: float) -> VerifyReport:
    report.seconds = time.perf_counter() - started
    return report


def _shrink(outcome: Outcome, values: dict[str, SizeIndex], run) -> Mismatch:
    """Smaller failing sizes, one symbol at a time, within a forward-pass budget."""
    current, budget = dict(outcome.sizes), SHRINK_BUDGET
    best = outcome.mismatch
    per_symbol = budget // max(len(current), 1)
    for name in current:
        below = values[name].rank(current[name] - 1)  # valid sizes smaller than the failing one
        positions = range(below)
        if below > per_symbol:
            head = per_symbol // 2
            step = max(below // (head or 1), 1)
            positions = sorted(set(range(min(head, below))) | set(range(0, below, step)))
        for position in positions:
            budget -= 1
            attempt = run({**current, name: values[name][position]})
            if attempt.mismatch is not None:
                current, best = dict(attempt.sizes), attempt.mismatch
                break
            if budget <= 0:
                break
    if current == outcome.sizes:
        return best
    return Mismatch(**{**best.__dict__, "shrunk_from": dict(outcome.sizes)})


def _shrink_listed(outcome: Outcome, listed: list[dict[str, int]], run) -> Mismatch:
    """The smallest found size (no size larger than the failing one) that fails too."""
    smaller = [s for s in listed if s != outcome.sizes and all(s[k] <= v for k, v in outcome.sizes.items())]
    smaller.sort(key=lambda s: (sum(s.values()), tuple(s.values())))
    for sizes in smaller[:SHRINK_BUDGET]:
        attempt = run(sizes)
        if attempt.mismatch is not None:
            return Mismatch(**{**attempt.mismatch.__dict__, "shrunk_from": dict(outcome.sizes)})
    return outcome.mismatch


class _Found(Exception):
    def __init__(self, outcome: Outcome):
        super().__init__(outcome.mismatch.message)
        self.outcome = outcome


def _draw(values: dict[str, SizeIndex], count: int, seed: int, run, previous: Mapping[tuple, Outcome]) -> Optional[Mismatch]:
    """Draw ``count`` valid sizes with hypothesis; it shrinks a failure to the
    smallest failing sizes (sizes are drawn by index into the sorted valid
    values, so shrinking moves towards small sizes)."""
    from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    sizes = st.fixed_dictionaries({
        name: st.integers(0, v.count - 1).map(v.__getitem__) for name, v in values.items()})
    first: list[Outcome] = []
    seen: dict[tuple, Outcome] = dict(previous)

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, derandomize=False, verbosity=Verbosity.quiet,
              phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(sizes)
    def property_holds(drawn):
        key = tuple(drawn.values())
        # a size already seen and passed is not an example: N examples are N distinct sizes
        assume(key not in seen or seen[key].mismatch is not None)
        outcome = run(drawn)
        seen[key] = outcome
        if outcome.mismatch is not None:
            first.append(outcome)
            raise _Found(outcome)

    try:
        property_holds()
    except _Found as found:
        mismatch = found.outcome.mismatch
        original = first[0].sizes if first else None
        if original is not None and original != mismatch.sizes:
            return Mismatch(**{**mismatch.__dict__, "shrunk_from": dict(original)})
        return mismatch
    return None
