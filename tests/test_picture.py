"""The domain picture against torch: every mark of the SVG says whether a meta
forward pass runs at that size, every point of the output curve is the output
size torch gives there.  The SVG is parsed with xml.etree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import analyze, load_model
from shapecalc.cli import main
from shapecalc.output.docsgen import generate, stale_pages, write_pages
from shapecalc.output.picture import domain_picture
from shapecalc.output.report import render_markdown

SVG = "{http://www.w3.org/2000/svg}"


class EvenOnly(nn.Module):
    """Runs only for even sizes >= 2: the pooled-then-upsampled branch must
    match the input's size to be added."""

    def forward(self, x):
        return x + F.interpolate(F.max_pool2d(x, 2), scale_factor=2)


class ValidFromSeven(nn.Module):
    """A 5x5 conv (H >= 5), a ceil-mode stride-3 pool and a slice from 1 (which may leave nothing)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 5)

    def forward(self, x):
        return F.max_pool2d(self.conv(x), 3, 3, ceil_mode=True)[:, :, 1:]


def _torch_output(model: nn.Module, channels: int, height: int, width: int):
    """The output's spatial shape of a meta forward pass, or None where torch refuses."""
    try:
        with torch.no_grad():
            out = model(torch.empty(1, channels, height, width, device="meta"))
    except Exception:
        return None
    return tuple(out.shape[2:])


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def _marks(root: ET.Element, symbol: str) -> dict[int, str]:
    return {int(r.get("data-size")): r.get("data-state")
            for r in root.iter(f"{SVG}rect") if r.get("data-symbol") == symbol and r.get("data-size")}


def _points(root: ET.Element, symbol: str) -> dict[tuple[int, int], int]:
    points = {}
    for plot in root.iter(f"{SVG}g"):
        if plot.get("class") != "plot" or plot.get("data-symbol") != symbol:
            continue
        for series in plot.iter(f"{SVG}g"):
            if series.get("class") == "series":
                for point in series.iter(f"{SVG}circle"):
                    points[(int(series.get("data-axis")), int(point.get("data-input")))] = int(point.get("data-value"))
    return points


def _check_against_torch(model, spec, channels, fixed=None):
    """Every mark and point of ``spec``'s picture against meta passes; with
    HxW, the other axis is held at ``fixed`` (a size that runs)."""
    analysis = analyze(model, spec, channels=channels)
    root = _parse(domain_picture(analysis))
    checked = 0
    for position, symbol in enumerate(str(s) for s in analysis.symbols):
        marks, points = _marks(root, symbol), _points(root, symbol)
        assert marks and min(marks) == 1 and sorted(marks) == list(range(1, max(marks) + 1))
        for n, state in marks.items():
            sizes = [n, n] if len(analysis.symbols) == 1 else ([n, fixed] if position == 0 else [fixed, n])
            shape = _torch_output(model, channels, *sizes)
            assert (shape is not None) == (state != "fails"), (symbol, n, state, shape)
            for axis in (2, 3):
                if (axis, n) in points:
                    assert shape is not None and points[(axis, n)] == shape[axis - 2], (symbol, n, axis)
                    checked += 1
            if shape is not None:
                drawn_axes = {axis for axis, _ in points}
                assert all((axis, n) in points for axis in drawn_axes), (symbol, n)
    return root, checked


def test_marks_of_a_periodic_domain_match_meta_forward_passes():
    root, checked = _check_against_torch(EvenOnly(), "H", channels=1)
    strip = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "strip")
    assert strip.get("data-layout") == "period" and strip.get("data-rows") == "2"
    assert set(_marks(root, "H").values()) == {"runs", "fails"}  # nothing is aligned: nearest shifts by half a pixel
    assert checked >= 32


def test_marks_of_a_lower_bound_and_the_output_curve_match_meta_forward_passes():
    root, checked = _check_against_torch(ValidFromSeven(), "H", channels=1)
    assert [n for n, state in _marks(root, "H").items() if state == "fails"] == [1, 2, 3, 4]
    assert checked >= 50


def test_each_symbol_has_its_own_strip():
    root, checked = _check_against_torch(EvenOnly(), "HxW", channels=1, fixed=8)
    assert {g.get("data-symbol") for g in root.iter(f"{SVG}g") if g.get("class") == "strip"} == {"H", "W"}
    assert any("joint" in (t.text or "") for t in root.iter(f"{SVG}text"))


def test_fcn8s_marks_and_output_sizes_match_meta_forward_passes():
    model = load_model("fcn8s")
    root, checked = _check_against_torch(model, "H", channels=3)
    assert checked == 64


def test_concrete_input_has_no_picture():
    assert domain_picture(analyze(EvenOnly(), "8x8", channels=1)) is None


def test_trace_markdown_embeds_the_svg(tmp_path, capsys):
    markdown = render_markdown(analyze(EvenOnly(), "H", channels=1))
    start = markdown.index("<svg")
    block = markdown[start:markdown.index("</svg>") + len("</svg>")]
    assert "\n\n" not in block  # one HTML block
    assert _marks(_parse(block), "H")
    assert "<svg" not in render_markdown(analyze(EvenOnly(), "H", channels=1), picture=False)


def test_docs_write_and_check_the_svg_beside_the_page(tmp_path, capsys):
    pages = generate(["fcn8s"], "H")
    names = sorted(p.filename for p in pages)
    assert names == ["fcn8s.md", "fcn8s.svg"]
    write_pages(pages, tmp_path)
    assert "](fcn8s.svg)" in (tmp_path / "fcn8s.md").read_text()
    _parse((tmp_path / "fcn8s.svg").read_text())  # the marker comment precedes the root: still one document
    assert stale_pages(pages, tmp_path) == []
    svg = tmp_path / "fcn8s.svg"
    svg.write_text(svg.read_text().replace('data-state="aligned"', 'data-state="runs"', 1))
    assert any("fcn8s.svg is stale" in p for p in stale_pages(pages, tmp_path))
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>\n")  # hand-made: not overwritten
    with pytest.raises(Exception, match="not overwriting"):
        write_pages(pages, tmp_path)
    assert main(["docs", "fcn8s", "--out", str(tmp_path), "--check"]) == 1
    assert "fcn8s.svg is not a generated page" in capsys.readouterr().out


def test_a_third_party_model_marks_and_output_sizes_match_meta_forward_passes():
    # MONAI's UNet: strided convs and cats that run for two residues mod 4 (a period-4 strip)
    import zoo_setup

    model = zoo_setup.small_monai_unet()
    root, checked = _check_against_torch(model, "H", channels=1)
    states = set(_marks(root, "H").values())
    assert "fails" in states and states - {"fails"}, states  # some sizes run, some do not
    assert checked >= 16
