"""A ``torch.export`` ``dynamic_shapes`` spec built from the exact valid domain.

The engine knows, per input symbol, every size the forward pass runs at; a
``dynamic_shapes`` spec can say one arithmetic progression per axis: a named
``Dim`` (an interval) or a derived dim ``P*Dim("h") + c`` (one residue class).
The widest progression inside the valid set is tried first; when export
refuses it, torch's "Constraints violated" message names the guards it could
not prove, and each guard is evaluated exactly at every size of the candidate
to cut it down, a bounded number of times.  A guard that holds at every
candidate size but that torch cannot prove from a range (ceil-mode pooling's
``2*((197 + H)//2) < 198 + H``) leaves the ``Dim.DYNAMIC(min=, max=)`` hint,
which export accepts and whose range it reports back.

What an accepted spec admits is read back from the exported program's range
constraints (torch raises lower bounds silently: the 0/1 specialization), and
checked by running the exported program on meta at sizes it admits (shapes
against the eager model) and at valid sizes it leaves out (it must refuse).
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Optional

from shapecalc._errors import InputSpecError

#: the default largest size in the spec; torch's own default is unbounded,
#: but coverage is counted exactly, size by size, inside 1..max
DEFAULT_MAX = 4096
#: the largest max_size accepted (guards are evaluated at every candidate size)
MAX_LIMIT = 1 << 16
#: exports tried before giving up on narrowing a spec
MAX_ATTEMPTS = 6
#: example sizes aimed at (each axis its own, so torch's duck sizing keeps them apart);
#: big enough that no layer is 1 wide, which torch would specialise
EXAMPLE_TARGETS = (128, 160, 96, 112, 144)
_ZERO_ONE = ("torch treats sizes 0 and 1 as constants (the 0/1 specialization), "
             "so export's range starts at 2")


@dataclass(frozen=True)
class AxisSpec:
    """What one input symbol is declared as: sizes ``range(start, stop + 1, step)``."""

    symbol: str
    start: int
    stop: int
    step: int = 1
    #: ``Dim.DYNAMIC(min=, max=)`` instead of a named Dim (torch could not prove a guard that holds)
    hint: bool = False

    @property
    def sizes(self) -> range:
        return range(self.start, self.stop + 1, self.step)

    def root_name(self, taken: set) -> str:
        lower = self.symbol.lower()
        return lower if lower != self.symbol and lower not in taken else f"{self.symbol}_k"

    # a derived dim's root k runs from 2 (torch raises a root's minimum to 2):
    # size = step*k + offset, offset chosen so that k = 2 is the first size
    @property
    def offset(self) -> int:
        return self.start - 2 * self.step

    @property
    def root_max(self) -> int:
        return (self.stop - self.offset) // self.step

    def torch_dim(self, torch_export, taken: set):
        Dim = torch_export.Dim
        if self.hint:
            return Dim.DYNAMIC(min=self.start, max=self.stop)
        if self.step == 1:
            return Dim(self.symbol, min=self.start, max=self.stop)
        return self.step * Dim(self.root_name(taken), min=2, max=self.root_max) + self.offset

    def python(self, taken: set) -> str:
        if self.hint:
            return f"Dim.DYNAMIC(min={self.start}, max={self.stop})"
        if self.step == 1:
            return f'Dim("{self.symbol}", min={self.start}, max={self.stop})'
        sign = "+" if self.offset >= 0 else "-"
        tail = f" {sign} {abs(self.offset)}" if self.offset else ""
        return f'{self.step}*Dim("{self.root_name(taken)}", min=2, max={self.root_max}){tail}'

    def as_data(self, taken: set) -> dict:
        if self.hint:
            return {"kind": "hint", "hint": "DYNAMIC", "min": self.start, "max": self.stop}
        if self.step == 1:
            return {"kind": "dim", "name": self.symbol, "min": self.start, "max": self.stop}
        return {"kind": "derived", "root": {"name": self.root_name(taken), "min": 2, "max": self.root_max},
                "multiplier": self.step, "offset": self.offset}

    def describe(self) -> str:
        return _progression_text(self.symbol, self.sizes)


@dataclass
class LeftOut:
    """Valid sizes of one symbol the spec does not admit, and why."""

    symbol: str
    sizes: list[int]
    reason: str
    guard: Optional[str] = None

    def sentence(self) -> str:
        return f"{_sizes_text(self.symbol, self.sizes)}: {self.reason}"

    def as_data(self) -> dict:
        return {"symbol": self.symbol, "sizes": _runs(self.sizes), "count": len(self.sizes),
                "reason": self.reason, "guard": self.guard}


@dataclass
class ExportSpec:
    """The result of :func:`export_spec`: the spec, whether export ran with it, what it covers."""

    model: str
    input: str
    max_size: int
    argument: Optional[str]          # forward's argument name (None: positional tuple form)
    axes: dict[int, str]             # tensor axis -> symbol (fixed sizes are static: not listed)
    static: dict[int, int]           # tensor axis -> fixed size
    example_shape: tuple[int, ...]
    specs: dict[str, AxisSpec]
    valid: dict[str, list[int]]      # per symbol: the valid sizes in 1..max_size
    verified: bool
    covers: dict[str, list[int]]     # per symbol: the valid sizes the accepted spec admits
    left_out: list[LeftOut] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    checked: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: Optional[str] = None
    torch_version: str = ""
    device: str = "meta"
    #: the input shape with None at the symbolic axes (batch and channels fixed)
    template: tuple = ()
    #: torch's "guard added" log of the last export: (expression, torch source), and symbol -> axis
    guard_log: list = field(default_factory=list, repr=False)
    log_axes: dict = field(default_factory=dict, repr=False)
    #: the front end of the analysis the valid sizes come from: "fx" or "aten"
    capture: str = "fx"

    def _taken(self) -> set:
        return set(self.specs)

    def covers_sentence(self) -> str:
        if not self.verified:
            return f"no spec was accepted: {self.error}"
        parts = []
        for symbol, admitted in self.covers.items():
            valid = self.valid[symbol]
            parts.append(f"{_progression_text(symbol, admitted) if admitted else 'no ' + symbol}: "
                         f"{len(admitted)} of the {len(valid)} valid {symbol} in 1..{self.max_size}")
        sentence = "; ".join(parts)
        if self.left_out:
            sentence += "; left out: " + "; ".join(item.sentence() for item in self.left_out)
        return sentence

    def dynamic_shapes_data(self):
        taken = self._taken()
        per_axis = {str(axis): self.specs[symbol].as_data(taken) for axis, symbol in self.axes.items()}
        return {self.argument: per_axis} if self.argument else [per_axis]

    def python(self) -> str:
        taken = self._taken()
        # the command that gives this spec again, as one pastes it: a command line on purpose
        capture = "" if self.capture == "fx" else f" --capture {self.capture}"
        lines = [f"# shapecalc export-spec {self.model} --input {self.input} --max {self.max_size}{capture}"]
        if self.verified:
            lines.append(f"# verified: torch.export.export (torch {self.torch_version}, strict=False) ran with "
                         f"this spec on {self.device}, example input of shape {tuple(self.example_shape)}")
        else:
            lines.append(f"# NOT verified: {self.error}")
        lines += _comment(f"covers: {self.covers_sentence()}")
        lines += ["import torch", "from torch.export import Dim", ""]
        for symbol, spec in self.specs.items():
            lines.append(f"{symbol} = {spec.python(taken)}")
        inner = ", ".join(f"{axis}: {symbol}" for axis, symbol in self.axes.items())
        shapes = f'{{"{self.argument}": {{{inner}}}}}' if self.argument else f"({{{inner}}},)"
        lines.append(f"dynamic_shapes = {shapes}")
        lines.append(f"example_inputs = (torch.randn{tuple(self.example_shape)},)")
        lines.append("# ep = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)")
        return "\n".join(lines) + "\n"

    def as_data(self) -> dict:
        return {
            "model": self.model, "input": self.input, "capture": self.capture, "max": self.max_size,
            "torch": self.torch_version,
            "device": self.device, "example_shape": list(self.example_shape),
            "dynamic_shapes": self.dynamic_shapes_data(), "python": self.python(), "verified": self.verified,
            "covers": {
                "sentence": self.covers_sentence(),
                "sizes": {s: _runs(v) for s, v in self.covers.items()},
                "count": {s: len(v) for s, v in self.covers.items()},
                "valid_count": {s: len(v) for s, v in self.valid.items()},
                "fraction": {s: (len(self.covers[s]) / len(v) if v else None) for s, v in self.valid.items()},
                "left_out": [item.as_data() for item in self.left_out],
                "checked": self.checked,
            },
            "attempts": self.attempts, "notes": self.notes, "error": self.error,
        }


# ---------------------------------------------------------------------------
# sets of sizes


def _runs(sizes) -> list[list[int]]:
    """Sorted sizes as [first, last, step] progressions (step 1 runs merged)."""
    sizes = sorted(sizes)
    if len(sizes) > 2:
        step = sizes[1] - sizes[0]
        if all(b - a == step for a, b in zip(sizes, sizes[1:])):
            return [[sizes[0], sizes[-1], step]]
    runs: list[list[int]] = []
    for n in sizes:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n, 1])
    return runs


def _progression_text(symbol: str, sizes) -> str:
    runs = _runs(sizes)
    if len(runs) == 1:
        first, last, step = runs[0]
        if first == last:
            return f"{symbol} = {first}"
        if step == 1:
            return f"{symbol} = {first}..{last}"
        return f"{symbol} = {first}, {first + step}, ..., {last} ({symbol} = {step}k + {first % step})"
    return _sizes_text(symbol, sizes)


def _sizes_text(symbol: str, sizes) -> str:
    runs = _runs(sizes)
    shown = [f"{a}" if a == b else f"{a}..{b}" if s == 1 else f"{a}, {a + s}, ..., {b}" for a, b, s in runs[:4]]
    more = f" and {len(runs) - 4} more runs" if len(runs) > 4 else ""
    return f"{symbol} = " + ", ".join(shown) + more


def widest_progression(symbol: str, sizes: list[int]) -> Optional[AxisSpec]:
    """The arithmetic progression inside ``sizes`` with the most members
    (ties: step 1 first, then the smaller start)."""
    members = set(sizes)
    if not members:
        return None
    best: Optional[AxisSpec] = None
    ordered = sorted(members)
    # steps between early members: a set like "H = 32k or 32k - 1" has no consecutive gap of 32
    steps = {1} | {b - a for i, a in enumerate(ordered[:16]) for b in ordered[i + 1:i + 64]}
    for step in sorted(steps)[:128]:
        for start in ordered:
            if start - step in members:
                continue  # not the first of its run
            stop = start
            while stop + step in members:
                stop += step
            candidate = AxisSpec(symbol, start, stop, step)
            if best is None or len(candidate.sizes) > len(best.sizes):
                best = candidate
    return best


# ---------------------------------------------------------------------------
# reading torch's refusal


_VIOLATION = re.compile(r"Not all values of (\w+) = .*? satisfy the generated guard (.+?)\.?$", re.M)
_SUGGESTION = re.compile(r"^\s*(\w+) = Dim\('\w+'(?:, min=(-?\d+))?(?:, max=(-?\d+))?\)", re.M)
_SIZE_ACCESS = re.compile(r"L\['(\w+)'\]\.size\(\)\[(\d+)\]")


def _guard_function(guard: str):
    """A Python function of {axis: size} for a guard as torch prints it, or None."""
    text = _SIZE_ACCESS.sub(lambda m: f"_size[{int(m.group(2))}]", guard)
    names = {"Max": max, "Min": min, "max": max, "min": min, "abs": abs, "Eq": lambda a, b: a == b, "Ne": lambda a, b: a != b,
             "Mod": lambda a, b: a % b, "FloorDiv": lambda a, b: a // b, "__builtins__": {}}
    try:
        code = compile(text, "<guard>", "eval")
    except SyntaxError:
        return None

    def holds(sizes: dict[int, int]) -> Optional[bool]:
        try:
            return bool(eval(code, dict(names), {"_size": sizes}))  # noqa: S307 - torch's own guard text, no builtins
        except Exception:
            return None
    return holds


# ---------------------------------------------------------------------------
# the search


def export_spec(model, input: str = "HxW", *, max_size: int = DEFAULT_MAX, channels: Optional[int] = None,
                name: Optional[str] = None, analysis=None, capture: str = "fx", max_captures: Optional[int] = None,
                max_seconds: Optional[float] = None) -> ExportSpec:
    """The widest ``dynamic_shapes`` spec inside ``model``'s valid domain that
    ``torch.export.export`` accepts, verified by exporting with it."""
    if not isinstance(max_size, int) or not 1 <= max_size <= MAX_LIMIT:
        raise InputSpecError(f"give an integer between 1 and {MAX_LIMIT}", argument="max_size",
                             value=str(max_size)[:40])
    import torch
    import torch.export

    from shapecalc.analysis import analyze

    if analysis is None:
        analysis = analyze(model, input, channels=channels, name=name, capture=capture, max_captures=max_captures,
                           max_seconds=max_seconds)
    name = name or analysis.model
    shape = analysis.input_tensor.shape
    axes, static = {}, {}
    for axis in analysis.input_tensor.spatial:
        size = shape[axis]
        if size.is_Symbol:
            axes[axis] = str(size)
        else:
            static[axis] = int(size)
    symbols = list(dict.fromkeys(axes.values()))
    valid = {s: [n for n in range(1, max_size + 1) if n in analysis.valid_sizes(s)] for s in symbols}
    result = ExportSpec(name, analysis.input.text, max_size, _argument_name(model), axes, static, (), {}, valid,
                        False, {s: [] for s in symbols}, torch_version=torch.__version__,
                        device=_device_of(model),
                        template=tuple(None if d.is_Symbol else int(d) for d in shape), capture=analysis.capture)
    if analysis.domain.cells is not None:
        result.notes.append("the valid sizes tie the symbols together (" + analysis.domain.joint_sentence()
                            + "); a dynamic_shapes spec bounds each axis on its own, so export decides that")
    if analysis.domain.undecided:
        result.notes.append("some requirements were not decided by the engine; the valid sizes are an upper bound")
    for s in symbols:
        spec = widest_progression(s, valid[s])
        if spec is None:
            result.error = f"no valid {s} in 1..{max_size}"
            return result
        result.specs[s] = spec
        rest = sorted(set(valid[s]) - set(spec.sizes))
        if rest:
            result.left_out.append(LeftOut(s, rest, "a spec admits one arithmetic progression per axis; "
                                                    f"this is the longest inside the valid {s}"))
    exported = _search(model, result, torch)
    if exported is not None:
        _read_back(exported, result)
        tightened = {s: widest_progression(s, result.covers[s]) for s in result.specs}
        if all(tightened.values()) and any(t.sizes != result.specs[s].sizes for s, t in tightened.items()):
            # the spec printed is the one export ran with: bounds torch narrowed are narrowed
            # here too, and exported once more
            result.specs = {s: AxisSpec(s, t.start, t.stop, t.step, hint=result.specs[s].hint)
                            for s, t in tightened.items()}
            left_out = list(result.left_out)
            exported = _search(model, result, torch)
            result.left_out = left_out
            if exported is None:
                return result
            _read_back(exported, result)
        _check(model, exported, result, torch)
    return result


def _search(model, result: ExportSpec, torch):
    for attempt in range(MAX_ATTEMPTS):
        example = _example_shape(result)
        result.example_shape = example
        taken = set(result.specs)
        per_axis = {axis: result.specs[s].torch_dim(torch.export, taken) for axis, s in result.axes.items()}
        shapes = {result.argument: per_axis} if result.argument else (per_axis,)
        record = {"spec": {s: spec.python(taken) for s, spec in result.specs.items()}, "example_shape": list(example)}
        result.attempts.append(record)
        x = torch.empty(example, device=result.device)
        with _guard_log(result) as guards:
            try:
                exported = torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
            except Exception as error:  # torch's UserError and whatever the trace raised
                message = str(error)
                record["error"] = _first_lines(message)
                if "Constraints violated" not in message or not _narrow(result, message, guards, example):
                    result.error = f"torch.export.export refused the spec: {type(error).__name__}: " \
                                   f"{_first_lines(message, 1)}"
                    return None
                continue
        record["accepted"] = True
        result.verified = True
        return exported
    result.error = f"no spec accepted after {MAX_ATTEMPTS} exports"
    return None


def _narrow(result: ExportSpec, message: str, guards: list, example) -> bool:
    """Cut the candidate of every symbol torch complained about; False when nothing can change."""
    by_symbol: dict[str, list[str]] = {}
    for symbol, guard in _VIOLATION.findall(message):
        by_symbol.setdefault(symbol, []).append(guard.strip())
    suggested = {m.group(1): (m.group(2), m.group(3)) for m in _SUGGESTION.finditer(message)}
    changed = False
    example_sizes = dict(zip(range(len(example)), example))
    for symbol, spec in list(result.specs.items()):
        root = spec.root_name(set(result.specs)) if spec.step > 1 else symbol
        violated = by_symbol.get(symbol, []) + by_symbol.get(root, [])
        if not violated and root not in suggested:
            continue
        admitted = list(spec.sizes)
        if root in suggested:
            low, high = suggested[root]
            if spec.step > 1:  # the suggestion bounds the root k
                low = None if low is None else spec.step * int(low) + spec.offset
                high = None if high is None else spec.step * int(high) + spec.offset
            admitted = [n for n in admitted if (low is None or n >= int(low)) and (high is None or n <= int(high))]
            _leave_out(result, symbol, spec.sizes, admitted, f"torch.export suggested {root} in "
                       f"{low}..{high}", violated[0] if violated else None, guards)
        unprovable = []
        for guard in violated:
            holds = _guard_function(guard)
            if holds is None:
                continue
            if all(holds({**example_sizes, **{a: n for a, s in result.axes.items() if s == symbol}}) is not False
                   for n in spec.sizes):
                unprovable.append(guard)
                continue
            kept = []
            for n in admitted:
                sizes = dict(example_sizes)
                sizes.update({axis: n for axis, s in result.axes.items() if s == symbol})
                if holds(sizes) is not False:
                    kept.append(n)
            if len(kept) < len(admitted) and not spec.hint:
                _leave_out(result, symbol, admitted, kept, "export's guard fails there", guard, guards)
                admitted = kept
        if unprovable and spec.step == 1 and not spec.hint:
            # a guard that holds at every size but that torch cannot prove from a range
            # (ceil-mode pooling's 2*((197 + H)//2) < 198 + H) rules out every named Dim;
            # the DYNAMIC hint over the whole valid run lets export narrow it itself
            # (read back from its range constraints)
            original = result.specs[symbol]
            result.left_out = [item for item in result.left_out if item.symbol != symbol
                               or not item.reason.startswith(("export's guard", "torch.export suggested"))]
            result.specs[symbol] = AxisSpec(symbol, original.start, original.stop, 1, hint=True)
            result.notes.append(f"{symbol}: torch cannot prove {_readable_torch_guard(unprovable[0], result)} "
                                "from a range although it holds at every size, so no named Dim is accepted; "
                                "the spec uses Dim.DYNAMIC(min=, max=)")
            changed = True
            continue
        narrowed = widest_progression(symbol, admitted)
        if narrowed is None:
            return False
        if narrowed.sizes != spec.sizes:
            _leave_out(result, symbol, admitted, list(narrowed.sizes),
                       "a spec admits one arithmetic progression per axis", None, guards)
            result.specs[symbol] = narrowed
            changed = True
    return changed


def _leave_out(result, symbol, before, after, reason, guard, guards) -> None:
    gone = sorted(set(before) - set(after))
    if gone:
        # the size next to what is kept is the one whose guard sets the bound
        edge = gone[-1] if after and gone[-1] < min(after) else gone[0]
        source = _guard_source(result, symbol, edge) if guards else None
        text = reason + (f": {_readable_torch_guard(guard, result)}" if guard else "") + (f"; the guard torch added: {source}" if source else "")
        result.left_out.append(LeftOut(symbol, gone, text, guard))


def _read_back(exported, result: ExportSpec) -> None:
    """What the exported program admits: our sizes inside every range constraint torch reports."""
    user_inputs = set(exported.graph_signature.user_inputs)
    placeholder = next(n for n in exported.graph.nodes if n.op == "placeholder" and n.name in user_inputs)
    shape = placeholder.meta["val"].shape
    for symbol, spec in result.specs.items():
        axis = next(a for a, s in result.axes.items() if s == symbol)
        dim = shape[axis]
        expr = dim.node.expr if hasattr(dim, "node") else None
        admitted = list(spec.sizes)
        if expr is not None:
            free = sorted(expr.free_symbols, key=str)
            checks = [(key, vr) for key, vr in exported.range_constraints.items() if key.free_symbols <= set(free)]
            kept = []
            for n in admitted:
                root_value = (n - spec.offset) // spec.step if spec.step > 1 else n
                bindings = {s: root_value for s in free}
                if all(_within(key.subs(bindings), vr) for key, vr in checks):
                    kept.append(n)
            if len(kept) < len(admitted):
                first = min(kept) if kept else None
                reason = _ZERO_ONE if first == 2 or (spec.step > 1 and first is not None and first > spec.start) \
                    else "outside the range constraints of the exported program"
                _leave_out(result, symbol, admitted, kept, reason, None, [])
            admitted = kept
        # the exported module checks these at every call (a size-1 layer's Ne(..., 1) among
        # them), beyond what range_constraints says: what they refuse is not covered
        kept = admitted
        sizes = dict(enumerate(result.example_shape))
        for guard in getattr(exported, "_guards_code", None) or []:
            holds = _guard_function(guard)
            axes_used = {int(m.group(2)) for m in _SIZE_ACCESS.finditer(guard)}
            if holds is None or not axes_used & {a for a, s in result.axes.items() if s == symbol}:
                continue
            now = [n for n in kept if holds({**sizes, **{a: n for a, s in result.axes.items() if s == symbol}})
                   is not False]
            if len(now) < len(kept):
                _leave_out(result, symbol, kept, now, "the exported program's own check refuses them: "
                           + _readable_torch_guard(guard, result), None, result.guard_log)
            kept = now
        admitted = kept
        result.covers[symbol] = admitted
    asserts = [n for n in exported.graph.nodes if "_assert_scalar" in str(n.target)]
    if asserts:
        result.notes.append(f"the exported program has {len(asserts)} run-time size assertion(s) of its own "
                            "(covers counts the range constraints only; the checks below run it)")


def _within(value, vr) -> bool:
    try:
        return bool(vr.lower <= int(value) <= vr.upper)
    except (TypeError, ValueError):
        return True


def _check(model, exported, result: ExportSpec, torch) -> None:
    """Run the exported program on meta at sizes it admits (shapes against the
    eager model) and at valid sizes it leaves out (it must refuse)."""
    module = exported.module()
    inside = {s: _spread(v) for s, v in result.covers.items()}
    outside = {s: _spread(sorted(set(result.valid[s]) - set(result.covers[s])), 2) for s in result.covers}
    base = {s: (v[len(v) // 2] if v else None) for s, v in result.covers.items()}
    cases = []
    for s in result.covers:
        cases += [({**base, s: n}, True) for n in inside[s]]
        cases += [({**base, s: n}, False) for n in outside[s]]
    for sizes, admitted in cases:
        if None in sizes.values():
            continue
        shape = list(result.example_shape)
        for axis, s in result.axes.items():
            shape[axis] = sizes[s]
        x = torch.empty(shape, device=result.device)
        entry = {"sizes": dict(sizes), "admitted": admitted}
        try:
            got = _shapes(module(x))
            entry["ran"] = True
            if admitted:
                with torch.no_grad():
                    entry["matches_eager"] = got == _shapes(model(x))
        except Exception as error:
            entry["ran"] = False
            entry["refusal"] = _first_lines(str(error), 1)
        result.checked.append(entry)
    bad = [c for c in result.checked if c["admitted"] and not (c["ran"] and c.get("matches_eager"))]
    if bad:
        result.verified = False
        result.error = f"the exported program failed or differed from the model at {bad[0]['sizes']}"
    unrefused = [c for c in result.checked if not c["admitted"] and c["ran"]]
    if unrefused:
        result.notes.append(f"the exported program does not refuse {unrefused[0]['sizes']}, a valid size "
                            "outside the spec (torch checks a derived dim's bounds at run time, not its residue)")


def _spread(sizes: list[int], count: int = 3) -> list[int]:
    if len(sizes) <= count:
        return list(sizes)
    return sorted({sizes[0], sizes[len(sizes) // 2], sizes[-1]})[:count] if count >= 3 else [sizes[0], sizes[-1]]


def _shapes(value):
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shapes(v) for v in value]
    return None


def _example_shape(result: ExportSpec) -> tuple[int, ...]:
    chosen: dict[str, int] = {}
    for index, (symbol, spec) in enumerate(result.specs.items()):
        target = EXAMPLE_TARGETS[index % len(EXAMPLE_TARGETS)]
        members = [n for n in spec.sizes if n not in chosen.values()] or list(spec.sizes)
        # not the smallest two members: torch must see a generic size, not one it specialises
        inner = [n for n in members if n >= min(members) + 2 * spec.step] or members
        chosen[symbol] = min(inner, key=lambda n: (abs(n - target), n))
    return tuple(chosen[result.axes[a]] if a in result.axes else d for a, d in enumerate(result.template))


def _argument_name(model) -> Optional[str]:
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if parameters and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                             inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return parameters[0].name
    return None


def _device_of(model) -> str:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return "meta" if tensor.is_meta else str(tensor.device)
    return "meta"


def _first_lines(text: str, count: int = 8) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:count])


def _comment(text: str, width: int = 100) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2)]


# ---------------------------------------------------------------------------
# where torch added a guard (its symbolic_shapes INFO log, captured, not printed)


_GUARD_ADDED = re.compile(r"eval (?:\[guard suppressed\] )?(.+?) \[guard added\] \((.+?)\)")
_SYMBOL_CREATED = re.compile(r"create_symbol (s\d+) = \d+ for L\['\w+'\]\.size\(\)\[(\d+)\]")


class _guard_log:
    """Captures torch's "guard added" records during one export into
    ``result.guard_log`` (and which symbol is which axis), without printing them."""

    def __init__(self, result: ExportSpec):
        self.result = result

    def __enter__(self):
        self.logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
        # torch's own handler sits on this logger: it is set aside, so nothing is printed
        self.saved = (self.logger.level, self.logger.propagate, self.logger.handlers[:])
        self.result.guard_log, self.result.log_axes = [], {}
        self.logger.handlers = [_Collector(self.result)]
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        return self.result.guard_log

    def __exit__(self, *exc):
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]
        self.logger.handlers = self.saved[2]
        return False


class _Collector(logging.Handler):
    def __init__(self, result: ExportSpec):
        super().__init__(logging.INFO)
        self.result = result

    def emit(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a record torch formats lazily and badly is not ours to raise
            return
        created = _SYMBOL_CREATED.search(message)
        if created:
            self.result.log_axes[created.group(1)] = int(created.group(2))
        added = _GUARD_ADDED.search(message)
        if added:
            self.result.guard_log.append((added.group(1), added.group(2)))


def _guard_source(result: ExportSpec, symbol: str, size: int) -> Optional[str]:
    """The first guard torch added that fails at ``symbol = size`` (the other
    axes at the example's sizes), with the torch source line that added it."""
    import sympy

    sizes = {a: n for a, n in enumerate(result.example_shape)}
    sizes.update({a: size for a, s in result.axes.items() if s == symbol})
    axes_of_symbol = {a for a, s in result.axes.items() if s == symbol}
    names = {name: sympy.Symbol(name, integer=True) for name in result.log_axes}
    for text, source in result.guard_log:
        try:
            expr = sympy.sympify(text, locals=names)
        except Exception:
            continue
        used = {str(f) for f in getattr(expr, "free_symbols", ())}
        if not used or not used <= set(result.log_axes) or not any(result.log_axes[u] in axes_of_symbol for u in used):
            continue
        try:
            value = expr.subs({names[u]: sizes[result.log_axes[u]] for u in used})
        except Exception:
            continue
        if value is sympy.false or value == False:  # noqa: E712 - sympy booleans
            why = " (a size-1 layer: torch specializes sizes 0 and 1)" if re.search(r"Ne\(.*, 1\)$|>= 2$", text) \
                else ""
            return f"{_readable_guard(text, result, used)}{why} (added at torch {source})"
    return None


def _readable_torch_guard(guard: str, result: ExportSpec) -> str:
    """A guard as export prints it (``L['x'].size()[2]``) in the input's symbols."""
    return _SIZE_ACCESS.sub(lambda m: result.axes.get(int(m.group(2)), f"size[{m.group(2)}]"), guard)


def _readable_guard(text: str, result: ExportSpec, used) -> str:
    for name in sorted(used, key=len, reverse=True):
        axis = result.log_axes[name]
        text = re.sub(rf"\b{name}\b", result.axes.get(axis, f"size[{axis}]"), text)
    return text
