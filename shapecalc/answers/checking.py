"""``check``: the pass/fail verdict CI asks for.

An :class:`~shapecalc.analysis.Analysis` already knows every crop offset the
geometry needs, how merged tensors line up, how far resampling moves pixels
and the exact set of valid input sizes.  ``check`` turns that into findings:
one sentence per problem, naming the node, what the code has, what it needs
and an input size where it goes wrong.  A finding is an *error* (CI fails) or
a *warning* (reported, not failed).  Nothing here prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional, Sequence, Union

import sympy

from shapecalc._errors import InputSpecError, ShapecalcError, SizeError
from shapecalc.analysis import Analysis, analyze
from shapecalc.engine.domain import DomainError, condition_set
from shapecalc.engine.symbolic import as_expr, axes_text, compiled, evaluate, value_text
from shapecalc.capture.specs import parse_expected_output, shorten
from shapecalc.capture.trace import InputSpec, parse_input_spec

CHECK_JSON_VERSION = 1

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One problem: ``node`` is the torch.fx node name, ``message`` the
    sentence after it; ``actual``/``required`` are per-axis display strings
    and ``counterexample`` an input size where it shows (None: every size)."""

    severity: str
    kind: str                       # crop, merge, resample, output, domain, size, nothing
    node: str
    message: str
    actual: tuple = ()
    required: tuple = ()
    counterexample: Optional[dict] = None

    @property
    def line(self) -> str:
        return f"{self.severity}: {self.node}: {self.message}"

    def as_data(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "node": self.node, "message": self.message,
                "actual": list(self.actual), "required": list(self.required),
                "counterexample": None if self.counterexample is None else dict(self.counterexample)}


@dataclass(frozen=True)
class CheckReport:
    """The findings of one check, and what was looked at."""

    model: str
    input: str
    findings: tuple[Finding, ...]
    checked: dict = field(default_factory=dict)   # kind -> how many were examined
    valid: str = ""                               # the validity sentence
    #: for a concrete size that cannot run: sizes.SizeFailure.to_json() (binding requirement, nearest sizes, pad)
    explanation: Optional[dict] = None
    #: the front end of the analysis checked: "fx" or "aten"
    capture: str = "fx"

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        counts = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in self.checked.items())
        verdict = "ok" if self.ok else "FAILED"
        errors, warnings = len(self.errors), len(self.warnings)
        front = " (aten capture)" if self.capture == "aten" else ""  # named only where it is not the default
        return (f"{verdict}: {self.model} with input {self.input!r}{front}: {errors} error{'s' if errors != 1 else ''}, "
                f"{warnings} warning{'s' if warnings != 1 else ''} ({counts or 'nothing'} checked; "
                f"valid input: {self.valid})")

    def to_text(self, *, warnings: bool = True) -> str:
        """One line per finding (errors first), then a summary line."""
        shown = list(self.errors) + (list(self.warnings) if warnings else [])
        return "\n".join([f.line for f in shown] + [self.summary()]) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CHECK_JSON_VERSION,
            "model": self.model,
            "input": self.input,
            "capture": self.capture,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checked": dict(self.checked),
            "valid": self.valid,
            "findings": [f.as_data() for f in self.findings],
            "explanation": self.explanation,
        }


# ---------------------------------------------------------------------------
# small helpers


def _where(counterexample: Optional[dict], analysis: Analysis) -> str:
    if counterexample:
        return ", ".join(f"{k}={v}" for k, v in counterexample.items())
    if not analysis.symbols:
        return f"at {analysis.input.text}"
    return ""


def _env(analysis: Analysis, counterexample: Optional[dict]) -> Optional[dict]:
    """Sizes for every input symbol at a counterexample (others at their
    smallest valid size), so expressions can be shown as numbers there."""
    if not analysis.symbols:
        return {}
    env = {}
    for symbol in analysis.symbols:
        value = (counterexample or {}).get(str(symbol))
        if value is None:
            value = analysis.domain.sets[symbol].minimum()
        if value is None:
            return None
        env[symbol] = value
    return env


def _values_at(values: Sequence, env: Optional[dict]) -> Optional[str]:
    """``values`` evaluated at ``env``, when any of them depends on the input."""
    if env is None or not any(isinstance(v, sympy.Basic) and v.free_symbols for v in values):
        return None
    try:
        return axes_text([evaluate(v, env) for v in values])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _suffix(counterexample: Optional[dict], analysis: Analysis, shown: list[tuple[str, Sequence]]) -> str:
    """`` (H=1)`` or ``(H=5: offset 7, needs 9)`` when the values depend on H."""
    where = _where(counterexample, analysis)
    env = _env(analysis, counterexample)
    numbers = [(label, _values_at(values, env)) for label, values in shown]
    if any(text is not None for _, text in numbers):
        details = ", ".join(f"{label} {text if text is not None else axes_text(values)}"
                            for (label, text), (_, values) in zip(numbers, shown))
        return f" ({where}: {details})" if where else f" ({details})"
    return f" ({where})" if where else ""


def _is_zero(value) -> bool:
    return value is not None and not (isinstance(value, sympy.Basic) and value.free_symbols) and value == 0


# ---------------------------------------------------------------------------
# the checks


def _crop_findings(analysis: Analysis) -> list[Finding]:
    findings = []
    for crop in analysis.crops:
        offset, required = axes_text(crop.offset), axes_text(crop.required)
        if crop.aligned is True:
            continue
        if crop.aligned is False:
            counterexample = crop.counterexample if analysis.symbols else None
            message = (f"crop offset {offset} where {required} aligns with {crop.partner}"
                       + _suffix(counterexample, analysis, [("offset", crop.offset), ("needs", crop.required)]))
            findings.append(Finding(ERROR, "crop", crop.name, message, tuple(map(value_text, crop.offset)),
                                    tuple(map(value_text, crop.required)), counterexample))
            continue
        if crop.merge is None:
            why = "it feeds no merge or output, so nothing says where it must start"
        elif any(r is None for r in crop.required):
            why = f"its scale differs from {crop.partner}'s or a position is unknown"
        else:
            why = "alignment could not be decided for every valid size"
        findings.append(Finding(WARNING, "crop", crop.name, f"crop offset {offset} not checked: {why}",
                                tuple(map(value_text, crop.offset)), tuple(map(value_text, crop.required))))
    return findings


def _merge_findings(analysis: Analysis, explained: set) -> list[Finding]:
    """Merges whose inputs sit at different positions; a merge fed by a crop
    already reported as misaligned is not reported twice."""
    findings = []
    for merge in analysis.merges:
        if merge.aligned is True or merge.name in explained:
            continue
        names = " and ".join(merge.inputs) if len(merge.inputs) <= 2 else ", ".join(merge.inputs)
        shift = tuple(merge.shift)
        if merge.aligned is False:
            counterexample = merge.counterexample if analysis.symbols else None
            message = (f"merges {names} with pixel centres {axes_text(shift)} px apart where 0 aligns"
                       + _suffix(counterexample, analysis, [("apart", shift)]))
            findings.append(Finding(ERROR, "merge", merge.name, message, tuple(map(value_text, shift)),
                                    tuple("0" for _ in shift), counterexample))
        else:
            why = merge.reason or "it could not be decided for every valid size"
            findings.append(Finding(WARNING, "merge", merge.name, f"alignment of {names} not checked: {why}",
                                    tuple(map(value_text, shift))))
    return findings


#: symbolic shifts the exact procedure cannot bound are evaluated at every valid size up to this
SCAN_LIMIT = 1024


def _pixels(value) -> str:
    value = Fraction(value) if not isinstance(value, Fraction) else value
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.4g}"


def _shift_evaluator(shift):
    # exact evaluation knows Max but not Abs: |e| = Max(e, -e)
    return compiled(shift.replace(sympy.Abs, lambda e: sympy.Max(e, -e, evaluate=False)))


def shift_value(shift, env: dict) -> Optional[Fraction]:
    """The exact ``|shift|`` (input pixels) at sizes ``env`` (symbol -> int);
    None where it cannot be evaluated."""
    if shift is None:
        return None
    try:
        return abs(Fraction(_shift_evaluator(as_expr(shift))(env)))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def format_pixels(value) -> str:
    """``7.5``, ``15``, ``7.111``: exact integers, else four significant digits."""
    return _pixels(value)


@dataclass(frozen=True)
class _ShiftScan:
    worst: Fraction             # largest |shift| seen
    worst_at: Optional[dict]    # where it was first seen (None: concrete input)
    over_at: Optional[dict]     # smallest size where |shift| > limit (None: none seen)
    over: Fraction              # |shift| there
    complete: bool              # every valid size was looked at (or decided exactly)


def _scan_shift(shift, limit: Optional[float], analysis: Analysis) -> Optional[_ShiftScan]:
    """Exact values of ``|shift|`` at the valid sizes (all of them for a
    concrete input, those up to :data:`SCAN_LIMIT` otherwise)."""
    if shift is None:
        return None
    shift = as_expr(shift)
    if not shift.free_symbols:
        value = abs(Fraction(evaluate(shift.replace(sympy.Abs, lambda e: sympy.Max(e, -e)), {})))
        return _ShiftScan(value, None, {} if limit is not None and value > limit else None, value, True)
    symbols = sorted(shift.free_symbols, key=str)
    if len(symbols) != 1 or symbols[0] not in analysis.domain.sets:
        return None
    (symbol,) = symbols
    valid = analysis.domain.sets[symbol]
    try:
        evaluate_at = _shift_evaluator(shift)
    except TypeError:
        return None
    worst, worst_at, over_at, over = Fraction(0), None, None, Fraction(0)
    for n in range(1, SCAN_LIMIT + 1):
        if n not in valid:
            continue
        value = abs(Fraction(evaluate_at({symbol: n})))
        if worst_at is None or value > worst:
            worst, worst_at = value, {str(symbol): n}
        if over_at is None and limit is not None and value > limit:
            over_at, over = {str(symbol): n}, value
    if worst_at is None:
        return None
    complete = over_at is not None or limit is None or _proved_within(shift, limit, symbol, analysis)
    return _ShiftScan(worst, worst_at, over_at, over, complete)


def _proved_within(shift, limit: float, symbol, analysis: Analysis) -> bool:
    """Whether ``|shift| <= limit`` for every valid size, decided exactly."""
    bound = sympy.Rational(str(limit))
    shift = shift.replace(sympy.Abs, lambda e: sympy.Max(e, -e, evaluate=False))
    condition = sympy.And(sympy.Le(shift, bound), sympy.Ge(shift, -bound))
    if analysis.domain.undecided:
        return False
    try:
        return analysis.domain.sets[symbol].difference(condition_set(condition, symbol)).is_empty()
    except (DomainError, TypeError, ValueError):
        return False


def _resample_findings(analysis: Analysis, max_shift: Optional[float]) -> list[Finding]:
    findings = []
    for resample in analysis.resamples:
        shifts = tuple(resample.max_shift)
        if resample.aligned is True or (shifts and all(_is_zero(s) for s in shifts)):
            continue
        what = f"{resample.mode}{' (align_corners=True)' if resample.align_corners else ''} resample"
        scans = [_scan_shift(s, max_shift, analysis) for s in shifts]
        actual = tuple(map(value_text, shifts))
        if any(scan is None for scan in scans):
            counterexample = resample.counterexample if analysis.symbols else None
            message = (f"{what} shifts pixels by up to {axes_text(shifts)} px"
                       + _suffix(counterexample, analysis, [("shift", shifts)]))
            findings.append(Finding(WARNING, "resample", resample.name, message, actual, (), counterexample))
            continue
        over = [scan for scan in scans if scan.over_at is not None]
        if max_shift is not None and over:
            scan = min(over, key=lambda sc: sorted(sc.over_at.values()))
            where = _where(scan.over_at, analysis)
            message = (f"{what} shifts pixels by {_pixels(scan.over)} px where at most {max_shift:g} is allowed"
                       + (f" ({where})" if where else ""))
            findings.append(Finding(ERROR, "resample", resample.name, message, actual,
                                    tuple(f"{max_shift:g}" for _ in shifts), scan.over_at or None))
            continue
        if max_shift is not None and all(scan.complete for scan in scans):
            continue
        scan = max(scans, key=lambda sc: sc.worst)
        where = _where(scan.worst_at, analysis)
        message = f"{what} shifts pixels by {_pixels(scan.worst)} px" + (f" ({where})" if where else "")
        if max_shift is not None:
            message += (f"; within {max_shift:g} px for every valid size up to {SCAN_LIMIT}, "
                        "not decided beyond")
        elif analysis.symbols:
            message += f", the most at any valid size up to {SCAN_LIMIT}"
        findings.append(Finding(WARNING, "resample", resample.name, message, actual, (), scan.worst_at))
    return findings


def _output_producers(analysis: Analysis) -> dict[str, str]:
    """Output name -> the fx node whose value it is."""
    import torch.fx

    producers: dict[str, str] = {}
    for node in analysis.graph_module.graph.nodes:
        if node.op != "output":
            continue
        value = node.args[0]
        if isinstance(value, torch.fx.Node):
            producers["output"] = value.name
        elif isinstance(value, dict):
            producers.update({str(k): v.name for k, v in value.items() if isinstance(v, torch.fx.Node)})
        elif isinstance(value, (tuple, list)):
            producers.update({str(i): v.name for i, v in enumerate(value) if isinstance(v, torch.fx.Node)})
    return producers


def _output_findings(analysis: Analysis, expected: InputSpec) -> list[Finding]:
    findings = []
    producers = _output_producers(analysis)
    unknown = set(expected.symbols) - set(analysis.symbols)
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise InputSpecError(f"uses {names}, which the input spec {analysis.input.text!r} does not define",
                             argument="expect_output", value=expected.text)
    if not analysis.outputs:
        return [Finding(ERROR, "output", "output", f"no tensor output to compare with {expected.text}: "
                                                   "the model returns no tensor")]
    for name, tensor in analysis.outputs.items():
        sizes = tensor.spatial_sizes
        label = "output" if name == "output" else f"output {name!r}"
        node = producers.get(name, name)
        if not sizes:
            # e.g. a classifier's (1, 5): an expectation about spatial sizes cannot hold
            shape = "(" + ", ".join(map(value_text, tensor.shape)) + ")"
            findings.append(Finding(ERROR, "output", node, f"{label} {shape} has no spatial axes where "
                                                           f"{expected.text} is expected", (), (expected.text,)))
            continue
        try:
            wanted = expected.for_dimensions(len(sizes)).sizes
        except InputSpecError as error:
            raise InputSpecError(error.reason, argument="expect_output", value=expected.text) from error
        counterexample, bad = None, False
        for size, want in zip(sizes, wanted):
            condition = sympy.Eq(size, want)
            if condition is sympy.true:
                continue
            verdict = False if condition is sympy.false else analysis.domain.always(condition)
            if verdict is not True:
                bad = True
                counterexample = counterexample or analysis.domain.first_failure(condition)
        if bad:
            message = (f"{label} size {axes_text(sizes)} where {axes_text(wanted)} is expected"
                       + _suffix(counterexample, analysis, [("size", sizes), ("expected", wanted)]))
            findings.append(Finding(ERROR, "output", node, message, tuple(map(value_text, sizes)),
                                    tuple(map(value_text, wanted)), counterexample))
    return findings


def _domain_findings(analysis: Analysis) -> list[Finding]:
    findings = []
    for symbol in analysis.symbols:
        if not analysis.domain.sets[symbol].is_empty():
            continue
        # name the requirement that rules out the last remaining sizes
        remaining, culprit = None, None
        for requirement in analysis.domain.requirements:
            if requirement.condition.free_symbols != {symbol}:
                continue
            try:
                allowed = condition_set(requirement.condition, symbol)
            except DomainError:
                continue
            remaining = allowed if remaining is None else remaining.intersection(allowed)
            if remaining.is_empty():
                culprit = requirement
                break
        node = culprit.node if culprit else "input"
        why = f": {culprit.reason}" if culprit else ""
        findings.append(Finding(ERROR, "domain", node, f"the network runs for no {symbol}{why}"))
    for requirement in analysis.domain.undecided:
        findings.append(Finding(WARNING, "domain", requirement.node,
                                f"could not decide for which sizes {requirement.reason}; check at a concrete "
                                "input size"))
    return findings


def _parse_expected(expect_output) -> Optional[InputSpec]:
    if expect_output is None or isinstance(expect_output, InputSpec):
        return expect_output
    if isinstance(expect_output, int) and not isinstance(expect_output, bool):
        expect_output = str(expect_output)
    if isinstance(expect_output, (tuple, list)):
        expect_output = "x".join(str(s) for s in expect_output)
    if not isinstance(expect_output, str):
        raise InputSpecError("give a spec like 'H' or 'HxW'", argument="expect_output",
                             value=shorten(repr(expect_output)))
    return parse_expected_output(expect_output)


def _parse_max_shift(max_shift) -> Optional[float]:
    if max_shift is None:
        return None
    try:
        value = float(max_shift)
    except (TypeError, ValueError):
        raise InputSpecError("give a number of pixels", argument="max_shift",
                             value=shorten(repr(max_shift))) from None
    if not value >= 0 or value == float("inf"):
        raise InputSpecError("give a finite number of pixels >= 0", argument="max_shift", value=f"{value:g}")
    return value


def _pieces_findings(analysis: Analysis) -> list[Finding]:
    """The ATen front end's map: a check speaks for every valid size only
    where every region was explored and its one graph was audited."""
    if analysis.capture != "aten":
        return []
    findings = []
    if analysis.pieces_complete is not True:
        findings.append(Finding(ERROR, "domain", "model",
                                "part of the size space was not explored (the ATen front end's bounds stopped it): "
                                "nothing is checked there; raise --max-captures / --max-seconds"))
    running = [p for p in analysis.pieces if p.runs]
    if len(running) > 1:
        findings.append(Finding(ERROR, "domain", "model",
                                f"{len(running)} regions run, each with a graph of its own; crops, merges and "
                                f"resamples were audited on the first ({running[0].region_text()}) only"))
    return findings


def _nothing_findings(analysis: Analysis, expected: Optional[InputSpec], limit: Optional[float]) -> list[Finding]:
    """A check that examined nothing does not pass silently: with no crop,
    merge or resample to audit and no expected output it is an error (the
    run proved only that the network runs for some size); a max_shift with
    no resample to measure is a warning (the limit held vacuously)."""
    audited = len(analysis.crops) + len(analysis.merges) + len(analysis.resamples)
    # a crop feeding no merge, or a merge whose alignment could not be decided, was looked at
    # but judged nothing: it does not make a pass
    decided = sum(1 for item in (*analysis.crops, *analysis.merges, *analysis.resamples) if item.aligned is not None)
    findings = []
    if not audited and expected is None:
        findings.append(Finding(ERROR, "nothing", "model", "nothing to check: no crop, merge or resample to audit "
                                                           "and no expected output size given"))
    elif not decided and expected is None:
        findings.append(Finding(ERROR, "nothing", "model", "nothing checked: no crop, merge or resample could be "
                                                           "judged (see the warnings) and "
                                                           "no expected output size was given"))
    elif limit is not None and not analysis.resamples:
        findings.append(Finding(WARNING, "resample", "model", f"max shift {limit:g}: no resample to measure"))
    return findings


def check(analysis: Analysis, *, expect_output: Union[str, InputSpec, None] = None,
          max_shift: Optional[float] = None) -> CheckReport:
    """Check an analysis: every crop and merge exactly aligned, the output of
    the expected size (``expect_output``: ``"H"``, ``"HxW"``, ``"512"``; an
    output without spatial axes fails it), no resample shifting pixels by
    more than ``max_shift`` (without it, resampling shifts are warnings), and
    some input size for which the network runs.  With nothing to audit and no
    expected output the report is not ok: it checked nothing."""
    expected = _parse_expected(expect_output)
    limit = _parse_max_shift(max_shift)
    crops = _crop_findings(analysis)
    explained = {crop.merge for crop in analysis.crops if crop.aligned is False and crop.merge}
    findings = _domain_findings(analysis) + _pieces_findings(analysis) + crops + _merge_findings(analysis, explained)
    findings += _resample_findings(analysis, limit)
    # what was judged, not what was looked at: an undecided audit is a warning, not a check
    checked = {kind: sum(1 for item in items if item.aligned is not None) for kind, items in
               (("crop", analysis.crops), ("merge", analysis.merges), ("resample", analysis.resamples))}
    if expected is not None:
        findings += _output_findings(analysis, expected)
        checked["output"] = len(analysis.outputs)
    findings += _nothing_findings(analysis, expected, limit)
    return CheckReport(analysis.model, analysis.input.text, tuple(findings), checked, analysis.validity_sentence(),
                       capture=analysis.capture)


def check_model(model, input: Union[str, InputSpec] = "H", *, expect_output: Union[str, InputSpec, None] = None,
                max_shift: Optional[float] = None, channels: Optional[int] = None,
                name: Optional[str] = None, capture: str = "fx", max_captures: Optional[int] = None,
                max_seconds: Optional[float] = None) -> CheckReport:
    """Analyse ``model`` (an ``nn.Module`` or a MODEL spec such as ``"fcn8s"``
    or ``"path/to/file.py:factory"``) and check it.  A concrete input size the
    network cannot run at is an error finding, not an exception."""
    from shapecalc.capture.trace import load_model

    if isinstance(model, str):
        name = name or model
        model = load_model(model)
    spec = parse_input_spec(input) if isinstance(input, str) else input
    expected = _parse_expected(expect_output)
    limit = _parse_max_shift(max_shift)
    bounds = {"capture": capture, "max_captures": max_captures, "max_seconds": max_seconds}
    try:
        analysis = analyze(model, spec, channels=channels, name=name, **bounds)
    except SizeError as error:
        from shapecalc.answers.sizes import explain_failure

        failure = explain_failure(model, spec, error, channels=channels, name=name, **bounds)
        report = _size_error_report(error, name or type(model).__name__, spec, failure)
        # auto names the front end that explained it; fx or aten the one asked for
        front = failure.capture if failure is not None else "aten" if capture == "aten" else "fx"
        return dataclasses.replace(report, capture=front)
    return check(analysis, expect_output=expected, max_shift=limit)


def _size_error_report(error: ShapecalcError, model: str, spec: InputSpec, failure=None) -> CheckReport:
    reason = error.reason  # the boundary copies the error with its fields: the reason is its own
    node = getattr(error, "node", None) or "input"
    where = f"for any {' x '.join(map(str, spec.sizes))}" if spec.symbols else f"at {spec.text}"
    findings = [Finding(ERROR, "size", node, f"the network cannot run {where}: {reason}")]
    if failure is not None:
        # the explanation as further lines of the one finding's story: where the sizes come from, what to use
        if failure.chains:
            findings.append(Finding(ERROR, "size", node, f"sizes leading there: {failure.chain_text()}"))
        for axis in failure.axes:
            if axis.ok is False:
                findings.append(Finding(ERROR, "size", node, f"{axis.near_sentence()}; {axis.pad_sentence()}"))
    return CheckReport(model, spec.text, tuple(findings), {}, "does not run at this size",
                       explanation=None if failure is None else failure.to_json())
