"""Assertions for users' pytest suites.

    from shapecalc.testing import assert_aligned, assert_output_size, assert_valid_for

    def test_skips_line_up():
        assert_aligned(MyNet(), input="H")               # every crop and merge, every valid H

    def test_output_matches_input():
        assert_output_size(MyNet(), input="HxW", expected="HxW")

    def test_runs_at_dataset_sizes():
        assert_valid_for(MyNet(), [500, (375, 500), 513])

Each raises ``AssertionError`` with the same lines ``shapecalc check`` prints
(node, what is wrong, what it needs, an input size where it shows).  ``model``
is an ``nn.Module`` or a MODEL spec (``"fcn8s"``, ``"pkg.module:factory"``,
``"path/to/file.py:factory"``).  The pytest plugin (``shapecalc.pytest_plugin``,
loaded automatically) adds the ``shapecalc_check`` fixture and the
``@pytest.mark.shapecalc(...)`` marker on top of these.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch.nn as nn

from shapecalc._errors import SizeError
from shapecalc.analysis import analyze
from shapecalc.answers.checking import CheckReport, check_model
from shapecalc.engine.symbolic import evaluate
from shapecalc.capture.trace import load_model, parse_input_spec

__all__ = ["assert_aligned", "assert_output_size", "assert_valid_for"]

ModelLike = Union[nn.Module, str]

#: the symbols ``assert_valid_for`` uses for 1, 2 and 3 spatial axes
_AXIS_SYMBOLS = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _model(model: ModelLike, name: Optional[str]) -> tuple[nn.Module, str]:
    if isinstance(model, str):
        return load_model(model), name or model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a MODEL spec string, got {type(model).__name__}")
    return model, name or type(model).__name__


def _fail(headline: str, report: CheckReport, kinds: Optional[set] = None) -> None:
    __tracebackhide__ = True  # pytest shows the caller's line, then the message
    errors = [f for f in report.errors if kinds is None or f.kind in kinds]
    if errors:
        lines = [headline] + [f"  {f.line}" for f in errors] + [f"  valid input: {report.valid}"]
        raise AssertionError("\n".join(lines))


def assert_aligned(model: ModelLike, input: str = "H", *, max_shift: Optional[float] = None,
                   channels: Optional[int] = None, name: Optional[str] = None, capture: str = "fx") -> CheckReport:
    """Every crop and merge of ``model`` is exactly aligned for every valid
    input size (or the concrete ``input``), and the network runs for some
    size.  With ``max_shift``, no resample may shift pixels by more than that
    many input pixels.  A model with no crop, merge or resample fails: there
    was nothing to align.  ``capture`` picks the front end (``"fx"``,
    ``"aten"`` or ``"auto"``, as :func:`shapecalc.analyze`).  Returns the
    report (warnings included)."""
    __tracebackhide__ = True
    module, label = _model(model, name)
    report = check_model(module, input, max_shift=max_shift, channels=channels, name=label, capture=capture)
    if report.errors and all(f.kind == "nothing" for f in report.errors):
        # an alignment assertion on a net without crops, merges or resamples proves nothing
        _fail(f"{label} has nothing to align for input {report.input} (assert_output_size or "
              "assert_valid_for check such a net):", report)
    _fail(f"{label} is not aligned for input {report.input}:", report)
    return report


def assert_output_size(model: ModelLike, input: str = "H", expected: str = "H", *,
                       channels: Optional[int] = None, name: Optional[str] = None, capture: str = "fx") -> CheckReport:
    """The output of ``model`` has spatial size ``expected`` (a spec in the
    symbols of ``input``: ``"H"``, ``"HxW"``, ``"512"``) for every valid
    input size, as the front end ``capture`` sees the model."""
    __tracebackhide__ = True
    module, label = _model(model, name)
    report = check_model(module, input, expect_output=expected, channels=channels, name=label, capture=capture)
    _fail(f"{label} does not give output {expected} for input {report.input}:", report, {"output", "size", "domain"})
    return report


def _size_tuple(size, position: int) -> tuple[int, ...]:
    values = (size,) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise TypeError(f"sizes[{position}] must be a positive int or a tuple of them, got {size!r}")
    return values


def assert_valid_for(model: ModelLike, sizes: Iterable[Union[int, Sequence[int]]], *,
                     channels: Optional[int] = None, name: Optional[str] = None, capture: str = "fx") -> None:
    """The forward pass of ``model`` runs at every size in ``sizes``: an int
    is a square (cubic) input, a tuple gives one size per spatial axis.  The
    message names, for each size that fails, the node and what it needs.
    ``capture`` picks the front end (see :func:`shapecalc.analyze`)."""
    __tracebackhide__ = True
    module, label = _model(model, name)
    wanted = [_size_tuple(s, i) for i, s in enumerate(sizes)]
    if not wanted:
        raise ValueError("sizes is empty: assert_valid_for would check nothing")
    counts = {len(s) for s in wanted if len(s) > 1}
    if len(counts) > 1:
        raise TypeError(f"sizes mix {sorted(counts)} spatial axes")
    count = counts.pop() if counts else 1
    symbols = _AXIS_SYMBOLS.get(count)
    if symbols is None:
        raise TypeError(f"sizes have {count} axes; shapecalc handles 1 to 3 spatial axes")
    try:
        analysis = analyze(module, parse_input_spec("x".join(symbols)) if count > 1 else "H",
                           channels=channels, name=label, capture=capture)
    except SizeError as error:
        raise AssertionError(f"{label} runs at no input size: {error}") from None
    names = [str(s) for s in analysis.symbols]
    failures = []
    for size in wanted:
        full = size * len(names) if len(size) == 1 else size
        env = {symbol: value for symbol, value in zip(analysis.symbols, full)}
        reason = _first_unmet(analysis, module, env)
        if reason is None:
            continue
        where = ", ".join(f"{n}={v}" for n, v in zip(names, full))
        failures.append(f"  {where}: {reason}")
    if failures:
        raise AssertionError("\n".join([f"{label} cannot run at {len(failures)} of the given sizes:", *failures,
                                        f"  valid input: {analysis.validity_sentence()}"]))


def _first_unmet(analysis, module: nn.Module, env) -> Optional[str]:
    """The first requirement of the trace that fails at ``env`` (as
    "node: reason"), None when the network runs there.  Where the ATen
    front end found the model's own exception at these sizes, that is the
    reason ("file.py:12: raises '...'")."""
    if analysis.pieces:
        containing = [p for p in analysis.pieces if _inside(p, env)]
        raised = [p for p in containing if not p.runs]
        if raised:
            return f"{raised[0].location}: raises {raised[0].message!r}"
        if not containing:
            # no capture explored these sizes: nothing is known, so nothing is promised
            return "these sizes lie outside every region the ATen front end explored (raise --max-captures)"
        if env in analysis.domain:
            return None
        # several running regions: the domain's requirements are every region's, so only
        # membership in their exact union decides; name the region's first failing one
        return "outside the valid sizes of its region (" + analysis.validity_sentence() + ")"
    for requirement in analysis.domain.requirements:
        try:
            holds = bool(evaluate(requirement.condition, env))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            # a condition exact evaluation cannot handle: trace at this size
            return _concrete_failure(analysis, module, env)
        if not holds:
            return f"{requirement.node}: {requirement.reason}"
    return None


def _inside(piece, env) -> bool:
    try:
        return bool(piece.condition.subs(env))
    except TypeError:  # a condition that does not decide at these sizes
        return False


def _concrete_failure(analysis, module: nn.Module, env) -> Optional[str]:
    spec = parse_input_spec("x".join(str(env[s]) for s in analysis.symbols))
    try:
        # the front end that gave the analysis (auto may have fallen back to aten)
        analyze(module, spec, name=analysis.model, channels=int(analysis.input_tensor.shape[1]),
                capture=analysis.capture)
    except SizeError as error:
        reason = error.reason
        return f"{getattr(error, 'node', None) or 'input'}: {reason}"
    return None
