"""Which sizes run, the nearest ones to a given size, and why a size fails.

Everything is read off the exact domain (``Domain.sets``: one
:class:`~shapecalc.engine.domain.PeriodicSet` per input symbol) with residue-class
arithmetic, never by enumerating sizes:

* ``nearest_below`` / ``nearest_above``: per residue class, the last (first)
  interval end at or before (after) ``n``;
* ``padding_multiple``: the smallest ``m`` such that padding up to a multiple
  of ``m`` always gives a valid size, i.e. every positive multiple of ``m``
  is valid (``m*ceil(n/m)`` takes exactly the values m, 2m, 3m, ...);
* ``explain_failure``: for a concrete size the engine refused, the binding
  requirement (the first in graph order that the size violates, the node and
  module that state it), the sizes leading there, and per axis the nearest
  valid sizes and the padding that makes the size run.

Nothing here prints; ``SizesReport`` and ``SizeFailure`` give text and the
JSON documented in docs/json.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union


from shapecalc._errors import InputSpecError, ShapecalcError
from shapecalc.capture.specs import shorten
from shapecalc.engine.domain import PeriodicSet
from shapecalc.engine.symbolic import evaluate

SIZES_JSON_VERSION = 1
#: the period beyond which the padding-multiple search is not attempted
MAX_MULTIPLE_PERIOD = 1 << 12
#: a range may list its sizes one by one up to this many
LISTED_SIZES = 64
#: producers shown before the failing node, per input
CHAIN_HOPS = 3


# ---------------------------------------------------------------------------
# arithmetic on a periodic set


def _residue_k(n: int, period: int, residue: int) -> tuple[int, int]:
    """(floor, ceil) of (n - residue)/period: the k of the class members around n."""
    low = (n - residue) // period
    return low, -((residue - n) // period)


def nearest_below(valid: PeriodicSet, n: int) -> Optional[int]:
    """The largest valid size <= n (None: none)."""
    best = None
    for residue, intervals in enumerate(valid.classes):
        k_max, _ = _residue_k(n, valid.period, residue)
        for lo, hi in reversed(intervals):
            if lo > k_max:
                continue
            k = k_max if hi is None else min(hi, k_max)
            size = valid.period * k + residue
            best = size if best is None else max(best, size)
            break
    return best


def nearest_above(valid: PeriodicSet, n: int) -> Optional[int]:
    """The smallest valid size >= n (None: none)."""
    best = None
    for residue, intervals in enumerate(valid.classes):
        _, k_min = _residue_k(n, valid.period, residue)
        for lo, hi in intervals:
            if hi is not None and hi < k_min:
                continue
            size = valid.period * max(lo, k_min) + residue
            best = size if best is None else min(best, size)
            break
    return best


def _tail_starts(valid: PeriodicSet) -> list[Optional[int]]:
    """Per residue class, the size from which every member of the class is valid (None: never)."""
    starts = []
    for residue, intervals in enumerate(valid.classes):
        if intervals and intervals[-1][1] is None:
            starts.append(valid.period * intervals[-1][0] + residue)
        else:
            starts.append(None)
    return starts


def _all_multiples_valid(valid: PeriodicSet, m: int, tails: Sequence[Optional[int]]) -> bool:
    """Whether m, 2m, 3m, ... are all in ``valid``: past its class's tail start a
    multiple is valid, and the multiples of one class grow by lcm(m, P), so the
    ones below the largest tail start are the only ones to look at."""
    period = valid.period
    horizon = 0
    for j in range(1, period // math.gcd(m, period) + 1):
        tail = tails[(m * j) % period]
        if tail is None:
            return False
        horizon = max(horizon, tail)
    return all(m * j in valid for j in range(1, max(horizon - 1, 0) // m + 1))


def padding_multiple(valid: PeriodicSet) -> Optional[int]:
    """The smallest m such that every positive multiple of m is a valid size,
    so padding any n up to ``m*ceil(n/m)`` makes it valid (None: no such m).

    m must be valid itself, and its multiples hit the residues ``gcd(m, P)*i``
    mod P, each class of which must be valid from some size on.  Beyond the
    largest tail start T every multiple whose residues qualify works, so the
    answer is at most T + P; below that each candidate is checked exactly."""
    if valid.is_empty() or valid.period > MAX_MULTIPLE_PERIOD:
        return None
    tails = _tail_starts(valid)
    if tails[0] is None:  # multiples of m reach residue 0 (at m*P/gcd): needs a tail there
        return None
    known = [t for t in tails if t is not None]
    limit = max(known) + valid.period
    m = valid.minimum()
    while m is not None and m <= limit:
        if _all_multiples_valid(valid, m, tails):
            return m
        m = nearest_above(valid, m + 1)
    return None


def within(valid: PeriodicSet, lo: int, hi: int) -> PeriodicSet:
    """The valid sizes in lo..hi."""
    window = PeriodicSet(1, (((max(lo, 1), hi),) if hi >= max(lo, 1) else (),))
    return valid.intersection(window)


def count(valid: PeriodicSet) -> Optional[int]:
    """How many sizes (None: infinitely many)."""
    total = 0
    for intervals in valid.classes:
        for lo, hi in intervals:
            if hi is None:
                return None
            total += hi - lo + 1
    return total


def _members(valid: PeriodicSet) -> list[int]:
    return sorted(valid.period * k + r for r, intervals in enumerate(valid.classes)
                  for lo, hi in intervals for k in range(lo, hi + 1))


def _runs_text(members: Sequence[int]) -> str:
    runs: list[list[int]] = []
    for n in members:
        if runs and runs[-1][1] + 1 == n:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def _residues_text(residues: Sequence[int]) -> str:
    return _runs_text(residues).replace("..", "-")


def compact(sizes: PeriodicSet, symbol: str) -> str:
    """A short phrase for a set of sizes: ``H mod 16 in {8-15} from 24``,
    ``4 <= H <= 7``, or the domain's own sentence when neither fits."""
    if sizes.is_empty():
        return f"no {symbol}"
    if sizes.period == 1 or not sizes.is_upward_closed_per_class():
        return sizes.plain().describe(symbol)
    residues = [r for r, c in enumerate(sizes.classes) if c]
    smallest, minimums = sizes.minimum(), sizes.residue_minimums()
    # one threshold for all the classes: each starts at its first member >= the smallest
    if all(minimums[r] == smallest + (r - smallest) % sizes.period for r in residues):
        return f"{symbol} mod {sizes.period} in {{{_residues_text(residues)}}} from {smallest}"
    return sizes.describe(symbol)


# ---------------------------------------------------------------------------
# per-axis answers


@dataclass(frozen=True)
class AxisAnswer:
    """The nearest valid sizes to ``size`` on one axis, and how to pad to one."""

    symbol: str
    size: Optional[int]
    valid: PeriodicSet
    below: Optional[int] = None
    above: Optional[int] = None
    multiple: Optional[int] = None

    @classmethod
    def of(cls, symbol: str, valid: PeriodicSet, size: Optional[int]) -> "AxisAnswer":
        below = above = None
        if size is not None:
            below, above = nearest_below(valid, size), nearest_above(valid, size)
        return cls(symbol, size, valid, below, above, padding_multiple(valid))

    @property
    def ok(self) -> Optional[bool]:
        return None if self.size is None else self.size in self.valid

    @property
    def pad(self) -> Optional[int]:
        """What to add to ``size`` for the nearest valid size at or above it."""
        return None if self.size is None or self.above is None else self.above - self.size

    def pad_data(self) -> dict[str, Any]:
        return {"amount": self.pad, "to": self.above if self.size is not None else None, "multiple": self.multiple}

    def as_data(self) -> dict[str, Any]:
        return {"size": self.size, "valid": self.ok, "below": self.below, "above": self.above,
                "pad": self.pad_data()}

    def pad_sentence(self) -> str:
        s = self.symbol
        parts = []
        if self.size is not None:
            if self.ok:
                parts.append(f"{s}={self.size} is valid: no padding needed")
            elif self.above is not None:
                parts.append(f"pad {s} by {self.pad} to {self.above}")
            else:
                edge = f"; crop to {self.below} instead" if self.below is not None else ""
                parts.append(f"no valid {s} above {self.size}: padding cannot help{edge}")
        if self.multiple == 1:  # every size runs: a multiple of 1 is no advice
            parts.append(f"every {s} >= 1 runs")
        elif self.multiple is not None:
            parts.append(f"padding {s} to a multiple of {self.multiple} works for every {s}")
        elif not self.valid.is_empty():
            parts.append(f"no multiple works for every {s}")
        return "; ".join(parts)

    def near_sentence(self) -> str:
        s = self.symbol

        def shown(value):
            return "none" if value is None else str(value)

        if self.ok:
            return f"{s}={self.size} is valid"
        return f"{s}={self.size} is not valid; nearest valid: {shown(self.below)} below, {shown(self.above)} above"


def _sizes_data(valid: PeriodicSet, symbol: str) -> dict[str, Any]:
    return {**valid.as_data(), "sentence": compact(valid, symbol) if not valid.is_empty() else f"no {symbol}"}


# ---------------------------------------------------------------------------
# which requirement excludes which sizes


def _module_path(analysis, node_name: str) -> Optional[str]:
    for node in analysis.graph_module.graph.nodes:
        if node.name == node_name:
            if node.op == "call_module":
                return str(node.target)
            if getattr(analysis, "capture", "fx") == "aten":
                # an ATen node's own name (convolution_3) says little: its module says where it is
                from shapecalc.capture.aten import module_path
                return module_path(node) or None
            return None
    return None


def _where(node: str, module: Optional[str]) -> str:
    """The module path where the node is just its fx spelling (``down.0.0``), else ``node (module)``."""
    if module is None:
        return node
    return module if module.replace(".", "_") == node else f"{node} ({module})"


def exclusions_data(analysis) -> list[dict[str, Any]]:
    """``domain.excluded`` of the JSON contract: per requirement that rules out
    sizes (graph order), the node, its module path, the reason and the sizes."""
    out = []
    for exclusion in analysis.domain.exclusions:
        requirement, symbol = exclusion.requirement, str(exclusion.symbol)
        out.append({"symbol": symbol, "node": requirement.node, "module": _module_path(analysis, requirement.node),
                    "reason": requirement.reason, "condition": str(requirement.condition),
                    "sizes": exclusion.sizes.as_data(), "sentence": compact(exclusion.sizes, symbol)})
    return out


def exclusion_rows(analysis) -> list[list[str]]:
    """Rows (excluded sizes, node, module, requirement) for the table and Markdown."""
    return [[item["sentence"], item["node"], item["module"] or "-", item["reason"]]
            for item in exclusions_data(analysis)]


EXCLUSION_COLUMNS = ["excluded", "node", "module", "requirement"]


# ---------------------------------------------------------------------------
# `shapecalc sizes`


def parse_range(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``A..B`` (inclusive, positive integers, A <= B)."""
    if text is None:
        return None
    parts = text.strip().split("..")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise InputSpecError("give A..B with positive integers, e.g. 200..260", argument="range",
                             value=shorten(text, 40))
    lo, hi = (int(p) for p in parts)
    if lo < 1 or hi < lo:
        raise InputSpecError("need 1 <= A <= B", argument="range", value=shorten(text, 40))
    if hi > 1 << 64:
        raise InputSpecError("B is larger than 2**64", argument="range", value=shorten(text, 40))
    return lo, hi


def parse_near(text: Optional[str], count: int) -> Optional[tuple[int, ...]]:
    """``N`` (every axis) or ``NxM`` (one per axis)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.strip().split("x")]
    if not all(p.isascii() and p.isdigit() and int(p) >= 1 for p in parts) or len(parts) not in (1, count):
        raise InputSpecError("give a positive size, or one per axis like 225x256", argument="near",
                             value=shorten(text, 40))
    if any(int(p) > 1 << 64 for p in parts):
        raise InputSpecError("sizes larger than 2**64", argument="near", value=shorten(text, 40))
    values = tuple(int(p) for p in parts)
    return values * count if len(values) == 1 else values


@dataclass
class SizesReport:
    """The answer of ``shapecalc sizes``: per input symbol its valid and aligned
    sizes, the nearest ones to ``near`` and the padding rule."""

    model: str
    input: str
    axes: list[AxisAnswer]
    aligned: list[AxisAnswer]
    range: Optional[tuple[int, int]] = None
    joint: Optional[str] = None
    undecided: list[str] = field(default_factory=list)
    #: the front end of the analysis: "fx" or "aten"
    capture: str = "fx"

    def to_json(self) -> dict[str, Any]:
        axes = {}
        for answer, aligned in zip(self.axes, self.aligned):
            entry = {"valid_sizes": _sizes_data(answer.valid, answer.symbol), **answer.as_data(),
                     "aligned": {"sizes": _sizes_data(aligned.valid, aligned.symbol), **aligned.as_data()}}
            if self.range is not None:
                entry["range"] = _range_data(answer.valid, aligned.valid, self.range, answer.symbol)
            axes[answer.symbol] = entry
        return {"version": SIZES_JSON_VERSION, "model": self.model, "input": self.input, "capture": self.capture,
                "axes": axes,
                "joint": self.joint, "undecided": list(self.undecided), "exact": not self.undecided}

    def to_text(self) -> str:
        # the front end is named only where it is not the default one
        lines = [f"{self.model} with input {self.input!r}" + (" (aten capture)" if self.capture == "aten" else "")]
        for answer, aligned in zip(self.axes, self.aligned):
            s = answer.symbol
            lines.append(f"valid {s}: {compact(answer.valid, s) if not answer.valid.is_empty() else f'no {s}'}")
            lines.append(f"aligned {s}: {compact(aligned.valid, s) if not aligned.valid.is_empty() else f'no {s}'}")
            if self.range is not None:
                data = _range_data(answer.valid, aligned.valid, self.range, s)
                lines.append(f"in {self.range[0]}..{self.range[1]}: {data['count']} valid: {data['text']}; "
                             f"{data['aligned_count']} aligned: {data['aligned_text']}")
            if answer.size is not None:
                lines.append(answer.near_sentence())
                if aligned.ok is False:
                    lines.append(f"aligned: nearest {aligned.below if aligned.below is not None else 'none'} below, "
                                 f"{aligned.above if aligned.above is not None else 'none'} above")
            lines.append(answer.pad_sentence())
        if self.joint:
            lines.append(f"jointly: {self.joint} (per-axis answers hold with the other axes at their given sizes)")
        if self.undecided:
            lines.append("not exact: " + "; ".join(self.undecided))
        return "\n".join(lines) + "\n"


def _range_data(valid: PeriodicSet, aligned: PeriodicSet, bounds: tuple[int, int], symbol: str) -> dict[str, Any]:
    data: dict[str, Any] = {"from": bounds[0], "to": bounds[1]}
    for key, sizes in (("valid", within(valid, *bounds)), ("aligned", within(aligned, *bounds))):
        n = count(sizes)
        listed = _members(sizes) if n is not None and n <= LISTED_SIZES else None
        data[key] = listed
        data[f"{key}_count" if key == "aligned" else "count"] = n
        text = ("none" if n == 0 else _runs_text(listed)) if listed is not None else compact(sizes, symbol)
        data["text" if key == "valid" else "aligned_text"] = text
    return data


def _slice(domain, symbol, others: dict) -> PeriodicSet:
    """The valid sizes of ``symbol`` with the other symbols at ``others``."""
    if domain.cells is None:
        return domain.sets[symbol]
    pieces = []
    for cell in domain.cells:
        if not all(others[t] in cell.projection(t) for t in others):
            continue
        allowed = cell.projection(symbol)
        for tie in cell.ties:
            if symbol in tie:
                for t in tie:
                    if t in others:
                        allowed = allowed.intersection(PeriodicSet(1, (((others[t], others[t]),),)))
        pieces.append(allowed)
    result = PeriodicSet.at_least(None)
    for piece in pieces:
        result = result.union(piece)
    return result


def axis_answers(analysis, near: Optional[Sequence[int]]) -> tuple[list[AxisAnswer], list[AxisAnswer]]:
    """(valid, aligned) answers per input symbol, ``near`` one size per symbol."""
    symbols = analysis.symbols
    at = dict(zip(symbols, near)) if near is not None else None
    valid, aligned = [], []
    for symbol in symbols:
        if at is not None:
            others = {t: v for t, v in at.items() if t != symbol}
            sizes = _slice(analysis.domain, symbol, others)
        else:
            sizes = analysis.domain.sets[symbol]
        aligned_sizes = analysis.aligned_domain.get(symbol, analysis.domain.sets[symbol]).intersection(sizes)
        size = None if at is None else at[symbol]
        valid.append(AxisAnswer.of(str(symbol), sizes, size))
        aligned.append(AxisAnswer.of(str(symbol), aligned_sizes, size))
    return valid, aligned


def sizes_report(analysis, *, near: Union[str, Sequence[int], None] = None,
                 range: Union[str, tuple[int, int], None] = None) -> SizesReport:
    """The valid sizes of a symbolic analysis, the nearest ones to ``near``
    (``225``, ``"225x256"`` or one int per symbol) and the padding rule."""
    if not analysis.symbols:
        raise InputSpecError("valid sizes need a symbolic input spec (H, HxW); give the concrete size as near",
                             argument="input", value=analysis.input.text)
    if isinstance(near, str):
        near = parse_near(near, len(analysis.symbols))
    elif isinstance(near, int):
        near = (near,) * len(analysis.symbols)
    bounds = parse_range(range) if isinstance(range, str) else range
    valid, aligned = axis_answers(analysis, near)
    undecided = [f"{r.reason} (node {r.node})" for r in analysis.domain.undecided]
    undecided += [str(c) for c in analysis.alignment_undecided]
    return SizesReport(analysis.model, analysis.input.text, valid, aligned, bounds,
                       analysis.domain.joint_sentence(), undecided, capture=analysis.capture)


# ---------------------------------------------------------------------------
# why a concrete size fails


@dataclass(frozen=True)
class Hop:
    """One tensor on the way to the failing node: its node, module path and spatial sizes there."""

    node: str
    module: Optional[str]
    sizes: tuple[int, ...]
    #: True when ``sizes`` is the whole shape (a tensor without spatial axes, e.g. flattened)
    whole_shape: bool = False

    def text(self) -> str:
        shown = f"shape {tuple(self.sizes)}" if self.whole_shape else "x".join(map(str, self.sizes))
        return f"{_where(self.node, self.module)} -> {shown}"


@dataclass
class SizeFailure:
    """A concrete input size the network cannot run at, explained."""

    model: str
    input: str
    node: str
    module: Optional[str]
    reason: str
    condition: Optional[str]
    sizes: dict[str, int]                 # the symbol each axis got in the explanation -> the size
    chains: list[list[Hop]]               # per input of the failing node, producers first
    axes: list[AxisAnswer]
    bindings: dict[str, Optional[dict]]   # per axis: the first requirement on it that fails
    exact: bool = True
    capture: str = "fx"                   # the front end of the analysis that explains it

    def headline(self) -> str:
        return (f"{self.model} with input {self.input!r} at node {_where(self.node, self.module)!r}: "
                f"{self.reason}")

    def chain_text(self) -> str:
        return "; ".join(", ".join(h.text() for h in chain) for chain in self.chains if chain)

    def to_text(self) -> str:
        lines = [f"cannot run: {self.headline()}"]
        if self.chains:
            lines.append(f"  sizes leading there: {self.chain_text()}")
        for answer in self.axes:
            binding = self.bindings.get(answer.symbol)
            if answer.ok:
                lines.append(f"  {answer.symbol}={answer.size}: valid on this axis")
                continue
            why = (f" (binding: {_where(binding['node'], binding['module'])}: {binding['reason']})"
                   if binding else "")
            lines.append(f"  {answer.near_sentence()}{why}")
            lines.append(f"  {answer.pad_sentence()}")
        if not self.exact:
            lines.append("  (some requirements were not decided: the nearest sizes are upper bounds)")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SIZES_JSON_VERSION, "model": self.model, "input": self.input, "capture": self.capture,
            "ok": False,
            "error": self.headline(),
            "binding": {"node": self.node, "module": self.module, "reason": self.reason,
                        "condition": self.condition,
                        "chain": [[{"node": h.node, "module": h.module,
                                    ("shape" if h.whole_shape else "spatial"): list(h.sizes)} for h in chain]
                                  for chain in self.chains]},
            "axes": {a.symbol: {**a.as_data(), "binding": self.bindings.get(a.symbol)} for a in self.axes},
            "exact": self.exact,
        }


_AXIS_NAMES = {1: ("H",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _symbolic_spec(spec):
    """The spec with each concrete size replaced by a symbol; (spec, {symbol: size})."""
    from shapecalc.capture.trace import parse_input_spec

    taken = {str(s) for s in spec.symbols}
    names = iter([n for n in _AXIS_NAMES.get(len(spec.sizes), ()) if n not in taken]
                 + [f"S{i}" for i in range(1, 8) if f"S{i}" not in taken])
    parts, at = [], {}
    for size in spec.sizes:
        if size.is_Symbol:
            parts.append(str(size))
        else:
            name = next(names)
            parts.append(name)
            at[name] = int(size)
    return parse_input_spec("x".join(parts)), at


def _spatial_values(value, env) -> Optional[tuple[int, ...]]:
    """The spatial sizes at ``env``; the whole shape of a tensor without spatial axes (a flattened one)."""
    from shapecalc.engine.tensors import SymbolicTensor

    if not isinstance(value, SymbolicTensor):
        return None
    try:
        return tuple(int(evaluate(s, env)) for s in (value.spatial_sizes if value.spatial else value.shape))
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _tensor_inputs(node):
    from shapecalc.engine.propagate import META_KEY
    from shapecalc.engine.tensors import SymbolicTensor

    return [n for n in node.all_input_nodes if isinstance(n.meta.get(META_KEY), SymbolicTensor)]


def _chains(analysis, node_name: str, env) -> list[list[Hop]]:
    from shapecalc.engine.propagate import META_KEY

    nodes = {n.name: n for n in analysis.graph_module.graph.nodes}
    node = nodes.get(node_name)
    if node is None:
        return []
    chains = []
    for start in _tensor_inputs(node):
        hops, current = [], start
        while current is not None and len(hops) < CHAIN_HOPS:
            sizes = _spatial_values(current.meta.get(META_KEY), env)
            if sizes is None:
                break
            value = current.meta.get(META_KEY)
            hops.append(Hop(current.name, str(current.target) if current.op == "call_module" else None, sizes,
                            whole_shape=not value.spatial))
            producers = _tensor_inputs(current)
            current = producers[0] if producers and current.op != "placeholder" else None
        chains.append(list(reversed(hops)))
    return chains


def _fails(condition, env) -> bool:
    try:
        return not bool(evaluate(condition, env))
    except (TypeError, ValueError, ZeroDivisionError):
        return False


def explain_failure(model, spec, error: ShapecalcError, *, channels: Optional[int] = None, batch: int = 1,
                    name: Optional[str] = None, capture: str = "fx", max_captures: Optional[int] = None,
                    max_seconds: Optional[float] = None) -> Optional[SizeFailure]:
    """Explain a :class:`SizeError` that analysing ``model`` at the concrete
    (or partly concrete) ``spec`` raised: analyse it with a symbol per concrete
    axis, name the first requirement in graph order that the sizes violate,
    evaluate the sizes leading to that node, and answer per axis with the
    nearest valid sizes and the padding.  None when the symbolic analysis
    itself fails (then the plain error is all there is to say)."""
    from shapecalc.analysis import analyze
    from shapecalc.capture.trace import parse_input_spec

    spec = parse_input_spec(spec) if isinstance(spec, str) else spec
    name = name or type(model).__name__
    symbolic, at = _symbolic_spec(spec)
    try:
        analysis = analyze(model, symbolic, channels=channels, batch=batch, name=name, capture=capture,
                           max_captures=max_captures, max_seconds=max_seconds)
    except ShapecalcError:
        return None
    env = {s: at[str(s)] for s in analysis.symbols if str(s) in at}
    for s in analysis.symbols:
        if s not in env:  # an axis the user left symbolic: explain at its smallest valid size
            smallest = analysis.domain.sets[s].minimum()
            if smallest is None:
                return None
            env[s] = smallest
    failing = [r for r in analysis.domain.requirements if r.condition.free_symbols <= set(env)
               and _fails(r.condition, env)]
    node = getattr(error, "node", None)
    first = failing[0] if failing else None
    reason = error.reason  # the boundary copies the error with its fields: the reason is its own
    if node is None and first is not None:
        node = first.node
    if node is None:
        return None
    bindings: dict[str, Optional[dict]] = {}
    for s in analysis.symbols:
        mine = next((r for r in failing if s in r.condition.free_symbols), None)
        bindings[str(s)] = None if mine is None else {
            "node": mine.node, "module": _module_path(analysis, mine.node), "reason": mine.reason,
            "condition": str(mine.condition)}
    axes, _ = axis_answers(analysis, [env[s] for s in analysis.symbols])
    condition = str(first.condition) if first is not None and first.node == node else None
    return SizeFailure(name, spec.text, node, _module_path(analysis, node), reason, condition,
                       {str(s): v for s, v in env.items()}, _chains(analysis, node, env),
                       [a for a in axes if a.symbol in at], bindings, exact=not analysis.domain.undecided,
                       capture=analysis.capture)
