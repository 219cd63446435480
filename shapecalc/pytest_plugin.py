"""pytest plugin (entry point ``pytest11``): loaded in every pytest run of an
environment where shapecalc is installed, so it imports nothing heavy until a
test asks for it.

``shapecalc_check`` fixture: call it with a model; it fails the test with
``shapecalc check``'s lines when a crop or merge is misaligned, the output
has the wrong size or a resample shifts too far, and returns the report::

    def test_net(shapecalc_check):
        shapecalc_check(MyNet(), input="HxW", expect_output="HxW")

``@pytest.mark.shapecalc(input=..., expect_output=..., max_shift=...,
channels=...)`` sets the fixture's defaults for one test (or, as
``pytestmark``, a module)::

    @pytest.mark.shapecalc(input="H", expect_output="H")
    def test_net(shapecalc_check):
        shapecalc_check(MyNet())
"""

from __future__ import annotations

import pytest

MARKER = "shapecalc"
_MARKER_OPTIONS = ("input", "expect_output", "max_shift", "channels")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(input='H', expect_output=None, max_shift=None, channels=None): "
                   "defaults for the shapecalc_check fixture")


def _marker_options(request) -> dict:
    options: dict = {}
    # closest marker last, so a test's marker overrides its module's
    for mark in reversed(list(request.node.iter_markers(MARKER))):
        if mark.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only "
                                    f"({', '.join(_MARKER_OPTIONS)}), got {mark.args!r}")
        unknown = set(mark.kwargs) - set(_MARKER_OPTIONS)
        if unknown:
            raise pytest.UsageError(f"@pytest.mark.{MARKER}: unknown argument(s) {', '.join(sorted(unknown))}; "
                                    f"valid: {', '.join(_MARKER_OPTIONS)}")
        options.update(mark.kwargs)
    return options


@pytest.fixture
def shapecalc_check(request):
    """A callable ``(model, input=None, *, expect_output=None, max_shift=None,
    channels=None) -> CheckReport`` that fails the test on any error finding.
    Arguments left out come from ``@pytest.mark.shapecalc``, then ``input="H"``."""
    defaults = {"input": "H", **_marker_options(request)}

    def run(model, input=None, *, expect_output=None, max_shift=None, channels=None):
        from shapecalc.answers.checking import check_model

        options = dict(defaults)
        given = {"input": input, "expect_output": expect_output, "max_shift": max_shift, "channels": channels}
        options.update({k: v for k, v in given.items() if v is not None})
        name = model if isinstance(model, str) else type(model).__name__
        report = check_model(model, options["input"], expect_output=options.get("expect_output"),
                             max_shift=options.get("max_shift"), channels=options.get("channels"), name=name)
        if not report.ok:
            pytest.fail(f"shapecalc check failed for {name} at input {report.input}:\n"
                        + "".join(f"  {f.line}\n" for f in report.errors) + f"  valid input: {report.valid}",
                        pytrace=False)
        return report

    return run
