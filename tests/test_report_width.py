"""The table at real terminal widths: nothing broken mid-token, no line
wider than the width, COLUMNS of any value, and the Python objects printing
sizes as the CLI does.  The numbers themselves are checked against torch in
test_cli/test_json_contract; here a meta forward pass checks that what
``str()`` of a size reads back to is what torch computes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sympy
import torch
import torch.fx
from rich.console import Console

import shapecalc
from shapecalc.cli import main
from shapecalc.output.report import UNKNOWN_LEGEND, render_markdown, render_table, to_json
from shapecalc.capture.trace import load_model

SPECS = {"fcn8s": "H", "deeplabv3": "HxW"}
#: the ATen front end's analysis of fcn8s: node names such as convolution_17, a module column, pieces
ATEN = "fcn8s-aten"
_cache: dict = {}


def analysis_of(model: str):
    if model not in _cache:
        if model == ATEN:
            _cache[model] = shapecalc.analyze(load_model("fcn8s", {}), "H", name="fcn8s", capture="aten")
        else:
            _cache[model] = shapecalc.analyze(load_model(model, {}), SPECS[model], name=model)
    return _cache[model]


def rendered(analysis, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(render_table(analysis), crop=False)
    return console.export_text()


def cell_texts(text: str) -> list[str]:
    return [c.strip() for line in text.splitlines() for c in line.split("│") + line.split("┃")]


def assert_unbroken(text: str, data: dict) -> None:
    cells = cell_texts(text)
    wanted = {layer["name"] for layer in data["layers"]} | {layer["op"] for layer in data["layers"]}
    wanted |= {layer["module"] for layer in data["layers"] if layer["module"]}
    wanted |= {s for layer in data["layers"] for s in layer["spatial"]}
    for item in wanted:
        # a name is a whole cell; a size is one axis of a cell ("A x B" or "x B")
        assert any(c == item or item in c.removeprefix("x ").split(" x ") for c in cells), item


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("model", [*SPECS, ATEN])
def test_table_fits_the_width_without_breaking_a_token(model, width):
    analysis = analysis_of(model)
    text = rendered(analysis, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert_unbroken(text, to_json(analysis))
    assert "valid input:" in text


@pytest.mark.parametrize("columns", ["80", "120", "0", "1", "-3", "abc", "99999999999999999999", ""])
def test_trace_prints_a_readable_table_for_any_columns(columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    assert main(["trace", "fcn8s", "--input", "H"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "valid input: every H >= 1" in out
    assert_unbroken(out, to_json(analysis_of("fcn8s")))
    width = int(columns) if columns in ("80", "120") else 200
    assert max(len(line) for line in out.splitlines()) <= width


def test_narrow_model_keeps_one_table():
    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = torch.nn.ConvTranspose2d(8, 3, 2, stride=2)

        def forward(self, x):
            return x + self.up(self.down(x))

    text = rendered(shapecalc.analyze(Skip(), "H"), 100)
    assert text.count("┏") == 3  # the layer, merges and excluded-sizes tables, nothing folded
    assert "│ up    │ up     │ ConvTranspose2d │ k2 s2    │ 2*ceiling(H/2) │ 1      │ -1/2   │ 3  │" in text


def test_unknown_geometry_is_explained():
    analysis = analysis_of("deeplabv3")
    layer = analysis.layer("aspp_pooling_pool")
    assert all(g.stride is None for g in layer.tensor.geometry)  # position-free after global pooling
    assert UNKNOWN_LEGEND.split(".")[0] in rendered(analysis, 120).replace("\n", " ")
    assert UNKNOWN_LEGEND in render_markdown(analysis)
    assert UNKNOWN_LEGEND not in render_markdown(analysis_of("fcn8s"))


def test_reports_name_the_front_end_and_the_pieces():
    aten, fx = analysis_of(ATEN), analysis_of("fcn8s")
    text = rendered(aten, 80)
    assert "aten capture" in text.splitlines()[0] and "pieces: 1 piece, covering every size" in text
    assert "fx capture" in rendered(fx, 80).splitlines()[0] and "pieces:" not in rendered(fx, 80)
    markdown = render_markdown(aten, picture=False)
    assert markdown.startswith("## fcn8s — input H x H — aten capture\n\ncapture: aten (")
    assert "| layer | module | op | params | size | stride | center | rf |" in markdown
    assert "| convolution | conv1_1 | aten.convolution | k3 p100 | H + 198 |" in markdown
    assert "### Pieces" in markdown and "\n- every size: runs" in markdown
    plain = render_markdown(fx, picture=False)
    assert "capture: fx (torch.fx)" in plain and "### Pieces" not in plain
    assert "| conv1_1 | conv1_1 | Conv2d | k3 p100 | H + 198 |" in plain


def meta_shapes(analysis, sizes) -> dict[str, tuple[int, ...]]:
    shapes = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                shapes[n.name] = tuple(value.shape)
            return value

    Recorder(analysis.graph_module).run(torch.empty(1, 3, *sizes, device="meta"))
    return shapes


@pytest.mark.parametrize("model", list(SPECS))
def test_python_objects_print_sizes_as_the_cli_does(model):
    analysis = analysis_of(model)
    data = to_json(analysis)
    symbols = {str(s): s for s in analysis.symbols}
    at = {"fcn8s": [(97,), (513,)], "deeplabv3": [(97, 65), (513, 31)]}[model]
    torch_shapes = [meta_shapes(analysis, sizes if len(sizes) == 2 else sizes * 2) for sizes in at]
    for layer, expected in zip(analysis.layers, data["layers"]):
        assert [str(s) for s in layer.spatial] == expected["spatial"]
        assert repr(layer.spatial) == repr(tuple(sympy.Symbol(s) for s in expected["spatial"]))
        assert "FloorDiv" not in repr(layer) + repr(layer.tensor)
        for sizes, shapes in zip(at, torch_shapes):
            env = dict(zip(symbols.values(), sizes))
            read_back = [sympy.sympify(str(s), locals=symbols).subs(env) for s in layer.spatial]
            assert read_back == list(shapes[layer.name][2:]), layer.name
    assert "FloorDiv" not in repr(analysis)


def test_dir_lists_the_public_api_once():
    shapecalc.analyze  # a looked-up name is cached in the module's globals
    names = dir(shapecalc)
    assert len(names) == len(set(names))
    assert set(names) == set(shapecalc.__all__) | {"__version__"}
    code = "import sys, shapecalc; dir(shapecalc); print(sorted(m for m in ('torch', 'sympy', 'rich', 'hypothesis') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
