"""The library names a bad parameter in its own terms ("input spec",
"expected output size", ``max_size``); only the CLI names flags.

Each case is one bad input given twice: through the Python API, whose error
message must name no ``--flag``, and on the command line, whose one stderr
line must name the flag the person typed."""

import re

import pytest
import torch.nn as nn

from shapecalc import ShapecalcError, analyze
from shapecalc.answers.checking import check_model
from shapecalc.answers.export_spec import MAX_LIMIT, export_spec
from shapecalc.answers.sizes import sizes_report
from shapecalc.capture.specs import parse_model_args, parse_sizes
from shapecalc.cli import main
from shapecalc.output.docsgen import Page, generate, write_pages
from shapecalc.verify import verify

FLAG = re.compile(r"--[a-z]")
NET_SOURCE = "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


#: (id, the API call, its parameter, the CLI arguments after the MODEL spec and the flag the line names)
CASES = [
    ("input", lambda: analyze(_net(), "Hx"), "input", ["trace", "{m}", "--input", "Hx"], "--input"),
    ("input-axes", lambda: analyze(_net(), "D,H,W"), "input", ["trace", "{m}", "--input", "D,H,W"], "--input"),
    ("arg", lambda: parse_model_args(["width=1", "width=2"]), "arg",
     ["trace", "{m}", "--input", "H", "--arg", "width=1", "--arg", "width=2"], "--arg"),
    ("concrete", lambda: parse_model_args(["flag"], argument="concrete"), "concrete",
     ["trace", "{m}", "--input", "H", "--concrete", "flag"], "--concrete"),
    ("expect-output", lambda: check_model(_net(), "H", expect_output="a+"), "expect_output",
     ["check", "{m}", "--input", "H", "--expect-output", "a+"], "--expect-output"),
    ("expect-output-symbols", lambda: check_model(_net(), "H", expect_output="W"), "expect_output",
     ["check", "{m}", "--input", "H", "--expect-output", "W"], "--expect-output"),
    ("max-shift", lambda: check_model(_net(), "H", max_shift=-1), "max_shift",
     ["check", "{m}", "--input", "H", "--max-shift", "-1"], "--max-shift"),
    ("near", lambda: sizes_report(analyze(_net(), "HxW"), near="0"), "near",
     ["sizes", "{m}", "--input", "HxW", "--near", "0"], "--near"),
    ("range", lambda: sizes_report(analyze(_net(), "HxW"), range="9..3"), "range",
     ["sizes", "{m}", "--input", "HxW", "--range", "9..3"], "--range"),
    ("sizes", lambda: parse_sizes("0"), "sizes", ["docs", "{m}", "--sizes", "0"], "--sizes"),
    ("docs-input", lambda: generate(["net.py:build"], "H+"), "input", ["docs", "{m}", "--input", "H+"], "--input"),
    ("verify-input", lambda: verify(_net(), "H+", device="meta"), "input",
     ["verify", "{m}", "--input", "H+", "--device", "meta"], "--input"),
    ("export-max", lambda: export_spec(_net(), "HxW", max_size=MAX_LIMIT + 1), "max_size",
     ["export-spec", "{m}", "--input", "HxW", "--max", str(MAX_LIMIT + 1)], "--max"),
]


@pytest.mark.parametrize("call, argument", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_library_errors_name_parameters_not_flags(call, argument):
    with pytest.raises(ShapecalcError) as caught:
        call()
    error = caught.value
    assert error.argument == argument
    assert not FLAG.search(str(error)), str(error)


@pytest.mark.parametrize("argv, flag", [(c[3], c[4]) for c in CASES], ids=[c[0] for c in CASES])
def test_cli_lines_name_the_flag_typed(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # docs would write under docs/sizes
    (tmp_path / "net.py").write_text(NET_SOURCE)
    code = main([part.format(m="net.py:build") for part in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{flag} " in err, err


def test_library_errors_without_a_value_name_the_parameter_to_set(tmp_path):
    (tmp_path / "m.md").write_text("my own notes\n")
    with pytest.raises(ShapecalcError) as caught:
        write_pages([Page("m.md", "m", "page\n")], tmp_path)
    assert caught.value.argument == "force" and not FLAG.search(str(caught.value))
    assert "force=True" in str(caught.value)


def test_verify_problems_name_parameters_not_flags():
    # Linear(7200): only 32x32 inputs run (torch: Conv2d(3, 8, 3) then 8 * 30 * 30 features)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(7200, 10))
    report = verify(model, "HxW", device="meta", examples=2, max_size=20)
    assert report.problem and not FLAG.search(report.problem) and not FLAG.search(report.summary())


def test_reports_name_the_input_spec_in_library_terms():
    assert not FLAG.search(check_model(_net(), "H").to_text())
    assert not FLAG.search(sizes_report(analyze(_net(), "HxW"), near=9).to_text())
