"""Merge alignment, resampling shifts and the aligned-input domain, each
checked against torch: autograd for where pixels sit, ``F.interpolate`` on a
ramp for where resampling samples, forward passes for where a net runs.

Where a pixel sits is measured with autograd on a copy whose weights are all
``1/fan-in`` (every window averages, so nothing pulls the centre aside): the
gradient-weighted centroid of its input pixels, averaged over one period of
the staircase a transposed conv leaves (see ``test_receptive_field``).
"""

from __future__ import annotations

import json

import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import segmodels
import shapecalc
from shapecalc.audits.receptive import INDEX
from shapecalc.output.report import render_markdown, render_table, to_json
from shapecalc.engine.symbolic import evaluate
from shapecalc.capture.trace import load_model
from test_receptive_field import Recorder, positive_copy

UNET = "docs/examples/center_crop_unet.py:CenterCropUNet"


def symbol(analysis, name: str = "H") -> sympy.Symbol:
    return next(s for s in analysis.symbols if s.name == name)


def centroid(value: torch.Tensor, x: torch.Tensor, index: int) -> float:
    """Gradient-weighted mean input row of output row ``index`` (middle of
    the other spatial axes, summed over channels)."""
    where = [s // 2 for s in value.shape[3:]]
    grad, = torch.autograd.grad(value[(0, slice(None), index, *where)].sum(), x, retain_graph=True)
    weights = grad[0].sum(0)
    if weights.dim() > 1:
        weights = weights.sum(tuple(range(1, weights.dim())))
    rows = torch.arange(weights.numel(), dtype=weights.dtype)
    return float((weights * rows).sum() / weights.sum())


def position(values, x, name: str, indices) -> float:
    """Where the pixels ``indices`` of ``name`` sit on average (input pixels)."""
    return sum(centroid(values[name], x, i) for i in indices) / len(indices)


def run(analysis, x):
    recorder = Recorder(positive_copy(analysis.graph_module, uniform=True))
    recorder.run(x)
    return recorder.values


# ---------------------------------------------------------------------------
# merges


def test_fcn8s_merges_after_its_crops_are_aligned():
    torch.manual_seed(0)
    analysis = shapecalc.analyze(segmodels.fcn8s(n_class=1, width=1 / 64).eval(), "H")
    assert [(c.name, c.offset[0], c.required[0], c.aligned) for c in analysis.crops] == [
        ("getitem_2", 5, 5, True), ("getitem_5", 9, 9, True), ("getitem_8", 31, 31, True)]
    merges = {m.name: m for m in analysis.merges}
    assert set(merges) == {"add_2", "add_5"}
    assert merges["add_2"].inputs == ("upscore2", "getitem_2")
    assert all(m.aligned is True and m.shift == (0, 0) for m in merges.values())
    assert analysis.aligned_sentence() == "every H >= 1"
    # autograd: both inputs of each merge sit at the same input pixels
    x = (0.5 + torch.rand(1, 3, 520, 1, dtype=torch.float64)).requires_grad_()
    values = run(analysis, x)
    for merge, indices in (("add_2", [16, 17]), ("add_5", [36, 37, 38, 39])):
        a, b = merges[merge].inputs
        assert position(values, x, a, indices) == pytest.approx(position(values, x, b, indices), abs=1e-6)


class SkipNet(nn.Module):
    """A skip connection cropped by a fixed offset before an add: offset 1
    lines the two paths up, 2 is off by one pixel."""

    def __init__(self, offset: int):
        super().__init__()
        self.offset = offset
        self.skip = nn.Conv2d(1, 1, 3)
        self.pool = nn.MaxPool2d(2)
        self.deep = nn.Conv2d(1, 1, 3)
        self.up = nn.ConvTranspose2d(1, 1, 4, stride=2)

    def forward(self, x):
        s = self.skip(x)
        u = self.up(self.deep(self.pool(s)))
        c = self.offset
        return u + s[:, :, c:c + u.size(2), c:c + u.size(3)]


@pytest.mark.parametrize("offset, shift", [(1, 0), (2, 1)])
def test_skip_crop_off_by_one_is_reported_with_its_shift(offset, shift):
    torch.manual_seed(0)
    analysis = shapecalc.analyze(SkipNet(offset), "H")
    (crop,) = analysis.crops
    (merge,) = analysis.merges
    H = symbol(analysis)
    assert crop.required == (1, 1) and crop.offset == (offset, offset)
    assert merge.inputs == ("up", "getitem") and merge.shift == (shift, shift)
    assert merge.aligned is (shift == 0) and crop.aligned is (shift == 0)
    smallest = analysis.valid_sizes(H).minimum()
    assert merge.counterexample == (None if shift == 0 else {"H": smallest})
    data = to_json(analysis)["merges"][0]
    assert data["shift"] == [str(shift)] * 2 and data["aligned"] is (shift == 0)
    assert data["counterexample"] == (None if shift == 0 else smallest)
    # autograd: the cropped skip sits `shift` pixels right of the upsampled path
    x = (0.5 + torch.rand(1, 1, 40, 40, dtype=torch.float64)).requires_grad_()
    values = run(analysis, x)
    measured = position(values, x, "getitem", [14, 15]) - position(values, x, "up", [14, 15])
    assert measured == pytest.approx(shift, abs=1e-9)


def test_resnet_residual_adds_are_aligned():
    torch.manual_seed(0)
    analysis = shapecalc.analyze(segmodels.deeplabv3(n_class=1, width=1 / 32).eval(), "H")
    merges = {m.name: m for m in analysis.merges}
    assert len(merges) == 9 and all(m.aligned is True for m in merges.values())
    assert merges["add_2"].inputs == ("backbone_layer2_0_bn2", "backbone_layer2_0_downsample_1")
    # the ASPP image-pooling branch carries no position: it aligns with anything
    assert merges["cat"].position_free == ("interpolate",)
    x = (0.5 + torch.rand(1, 3, 420, 1, dtype=torch.float64)).requires_grad_()
    values = run(analysis, x)
    for name in merges["add_2"].inputs:  # 1x1 stride-2 shortcut and the 3x3 path: both at 8*i
        assert position(values, x, name, [16]) == pytest.approx(8 * 16, abs=1e-9)
    # layer4 features (what the final upsample reads) sit at input 16*j (field 403 inside the image)
    assert position(values, x, "backbone_layer4_1_relu_1", [13]) == pytest.approx(16 * 13, abs=1e-9)


# ---------------------------------------------------------------------------
# resampling: DeepLab-v3's final upsample


def ramp_samples(n: int, out: int, align_corners: bool) -> torch.Tensor:
    """Where ``F.interpolate`` (DeepLab's arguments) reads a source of
    length n for each of ``out`` outputs: interpolate the coordinates."""
    ramp = torch.arange(n, dtype=torch.float64).reshape(1, 1, n, 1)
    return F.interpolate(ramp, size=(out, 1), mode="bilinear", align_corners=align_corners)[0, 0, :, 0]


@pytest.fixture(scope="module", params=[False, True], ids=["align_corners=False", "align_corners=True"])
def deeplab(request):
    with torch.device("meta"):
        model = segmodels.deeplabv3(width=1 / 16, align_corners=request.param).eval()
    return request.param, shapecalc.analyze(model, "H")


def test_deeplab_pooling_branch_is_not_flagged(deeplab):
    _, analysis = deeplab
    resamples = {r.name: r for r in analysis.resamples}
    assert set(resamples) == {"aspp_pooling_pool", "interpolate", "interpolate_1"}
    for name in ("aspp_pooling_pool", "interpolate"):
        assert resamples[name].aligned is True and resamples[name].max_shift == (0, 0)


def test_deeplab_final_upsample_against_torch(deeplab):
    align_corners, analysis = deeplab
    H = symbol(analysis)
    final = next(r for r in analysis.resamples if r.name == "interpolate_1")
    classifier = analysis.layer("classifier").tensor.geometry[0]
    assert (classifier.center, classifier.stride) == (0, 16)  # confirmed by autograd above
    assert final.reference == "x" and final.align_corners is align_corners
    sizes = list(range(1, 70)) + [500, 511, 512, 513]
    for h in sizes:
        n = -(-h // 16)
        source = ramp_samples(n, h, align_corners)
        shift = 16 * source - torch.arange(h, dtype=torch.float64)  # sampled minus where pixel u sits
        claimed = torch.tensor([float(evaluate(final.pixel_shift[0], {INDEX: u, H: h})) for u in range(h)],
                               dtype=torch.float64)
        unclamped = (source > 0) & (source < n - 1) if not align_corners else torch.ones(h, dtype=torch.bool)
        assert torch.allclose(shift[unclamped], claimed[unclamped], atol=1e-9), h
        largest = float(evaluate(final.max_shift[0], {H: h}))
        assert largest == pytest.approx(float(claimed.abs().max()), abs=1e-12)
        if align_corners:
            assert largest == pytest.approx(float(shift.abs().max()), abs=1e-9)
            assert (h in final.exact[H]) == (h % 16 == 1) == (float(shift.abs().max()) < 1e-9)
        elif h % 16 == 0:
            assert largest == 7.5 and torch.allclose(shift[unclamped], torch.tensor(-7.5, dtype=torch.float64))
    if align_corners:
        assert evaluate(final.max_shift[0], {H: 512}) == 15 and evaluate(final.max_shift[0], {H: 513}) == 0
        assert final.exact[H].period == 16 and final.exact[H].minimum() == 1
        assert analysis.aligned_domain[H] == final.exact[H]
    else:
        assert [h for h in range(1, 200) if h in final.exact[H]] == [1]
    assert final.aligned is False and final.counterexample == {"H": 2}


# ---------------------------------------------------------------------------
# resampling inside a net: nearest and linear upsampling against a merge
# partner, adaptive pooling against its own grid


class UpMerge(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.down = nn.Conv1d(1, 1, 1, stride=2)
        self.same = nn.Conv1d(1, 1, 1)
        self.up = nn.Upsample(scale_factor=2, mode=mode)

    def forward(self, x):
        return self.up(self.down(x)) + self.same(x)


@pytest.mark.parametrize("mode, largest", [("nearest", 1), ("linear", sympy.Rational(1, 2))])
def test_upsampling_against_its_merge_partner(mode, largest):
    analysis = shapecalc.analyze(UpMerge(mode), "H")
    H = symbol(analysis)
    (resample,) = analysis.resamples
    (merge,) = analysis.merges
    assert resample.reference == "same" and resample.max_shift == (largest,)
    # the merge compares grids: both modes put output u at u - 1/2 on average
    assert resample.aligned is False and merge.shift == (sympy.Rational(1, 2),)
    for h in (8, 9, 20):
        n, out = -(-h // 2), 2 * (-(-h // 2))
        ramp = torch.arange(n, dtype=torch.float64).reshape(1, 1, n)
        source = F.interpolate(ramp, scale_factor=2, mode=mode)[0, 0]
        shift = 2 * source - torch.arange(out, dtype=torch.float64)  # down's pixel j sits at 2j
        interior = (source > 0) & (source < n - 1) if mode == "linear" else torch.ones(out, dtype=torch.bool)
        claimed = torch.tensor([float(evaluate(resample.pixel_shift[0], {INDEX: u, H: h})) for u in range(out)],
                               dtype=torch.float64)
        assert torch.equal(shift[interior], claimed[interior])
        assert float(shift[interior].abs().max()) == float(largest)


def test_adaptive_pool_is_exact_when_the_cells_divide_evenly():
    analysis = shapecalc.analyze(nn.Sequential(nn.Conv1d(1, 1, 1), nn.AdaptiveAvgPool1d(3)), "H")
    H = symbol(analysis)
    (resample,) = analysis.resamples
    assert resample.mode == "adaptive_avg" and resample.reference is None
    assert resample.exact[H].period == 3 and resample.exact[H].residue_minimums() == {0: 3, 1: None, 2: None}
    for h in range(1, 25):
        ramp = torch.arange(h, dtype=torch.float64).reshape(1, 1, h)
        centres = F.adaptive_avg_pool1d(ramp, 3)[0, 0]  # the mean of a cell of integers is its midpoint
        grid = (torch.arange(3, dtype=torch.float64) + 0.5) * h / 3 - 0.5
        measured = float((centres - grid).abs().max())
        assert measured == pytest.approx(float(evaluate(resample.max_shift[0], {H: h})), abs=1e-12)
        assert (measured < 1e-12) == (h in resample.exact[H])


# ---------------------------------------------------------------------------
# the aligned-input domain of a U-Net with size-computed centre crops


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return shapecalc.analyze(load_model(UNET, {"dims": 1, "width": 1}, device="cpu"), "H")


def test_unet_runs_for_many_sizes_but_aligns_for_some(unet):
    H = symbol(unet)
    assert unet.validity_sentence() == "every H >= 44"
    aligned = unet.aligned_domain[H]
    assert aligned.period == 4 and aligned.residue_minimums() == {0: 44, 1: 45, 2: None, 3: None}
    assert [c.required for c in unet.crops] == [(4,), (16,)]
    data = to_json(unet)["domain"]["aligned"]
    assert data["counterexample"] == 46 and data["H"]["period"] == 4
    assert data["sentence"] == "H = 4k from 44; H = 4k + 1 from 45; never for H mod 4 in {2, 3}"
    merge = {m.name: m for m in unet.merges}["cat_1"]
    assert merge.inputs == ("getitem_1", "up1")
    assert merge.aligned is False and merge.counterexample == {"H": 46}
    assert [evaluate(merge.shift[0], {H: h}) for h in range(44, 52)] == [0, 0, -1, -1, 0, 0, -1, -1]


def test_unet_domains_against_torch(unet):
    H = symbol(unet)
    model = load_model(UNET, {"dims": 1, "width": 1}, device="cpu").eval()
    merge = {m.name: m for m in unet.merges}["cat_1"]
    for h in range(36, 58):
        runs = True
        try:
            with torch.no_grad():
                model(torch.zeros(1, 1, h))
        except RuntimeError:
            runs = False
        assert runs == (h in unet.valid_sizes(H)), h
        if not runs:
            continue
        x = (0.5 + torch.rand(1, 1, h, dtype=torch.float64)).requires_grad_()
        values = run(unet, x)
        middle = values["cat_1"].shape[2] // 2
        period = range(middle - 2, middle + 2)  # two stride-2 up-convs: windows repeat every 4
        first, second = merge.inputs  # shift: where the second sits minus where the first does
        measured = position(values, x, second, period) - position(values, x, first, period)
        assert measured == pytest.approx(float(evaluate(merge.shift[0], {H: h})), abs=1e-9), h
        assert (abs(measured) < 1e-9) == (h in unet.aligned_domain[H]), h


# ---------------------------------------------------------------------------
# half the size difference is not the crop offset


def test_half_the_size_difference_is_not_fcn8s_crop_offset():
    """Real (meta) forward passes: the crops FCN-8s needs are 5, 9 and 31
    for every H, but half the size difference of the tensors each crop lines
    up is 4.5 or 5, 7.5 to 9, 31 to 46.5 depending on H mod 32; all three
    agree with the geometry only for H = 32k + 26."""
    with torch.device("meta"):
        model = segmodels.fcn8s(width=1 / 16).eval()
    analysis = shapecalc.analyze(model, "H")
    assert [c.required[0] for c in analysis.crops] == [5, 9, 31]
    recorder = Recorder(analysis.graph_module)
    halves = {}
    for h in range(1, 65):
        recorder.run(torch.empty(1, 3, h, 1, device="meta"))
        size = {name: recorder.values[name].shape[2] for name in ("score_pool4", "upscore2", "score_pool3",
                                                                  "upscore_pool4", "upscore8")}
        halves[h] = ((size["score_pool4"] - size["upscore2"]) / 2, (size["score_pool3"] - size["upscore_pool4"]) / 2,
                     (size["upscore8"] - h) / 2)
    assert {h % 32 for h, half in halves.items() if half[0] == 5} == set(range(11, 27))
    assert {h % 32 for h, half in halves.items() if half[1] == 9} == set(range(19, 27))
    assert {h % 32 for h, half in halves.items() if half[2] == 31} == {26}
    assert {half[0] for half in halves.values()} == {4.5, 5}
    assert min(half[2] for half in halves.values()) == 31 and max(half[2] for half in halves.values()) == 46.5


# ---------------------------------------------------------------------------
# reports


def test_reports_show_merges_resamples_and_the_aligned_domain(deeplab):
    align_corners, analysis = deeplab
    data = json.loads(json.dumps(to_json(analysis)))
    H = symbol(analysis)
    for merge in data["merges"]:
        assert set(merge) >= {"name", "inputs", "aligned", "shift", "counterexample"}
        assert all(sympy.sympify(s) == 0 for s in merge["shift"])
    final = data["resamples"][-1]
    assert set(final) >= {"name", "mode", "align_corners", "max_shift", "aligned", "counterexample", "exact"}
    assert final["mode"] == "bilinear" and final["align_corners"] is align_corners and final["counterexample"] == 2
    parsed = sympy.sympify(final["max_shift"][0], locals={"H": H})
    assert parsed.subs(H, 512) == (15 if align_corners else sympy.Rational(15, 2))
    assert data["domain"]["aligned"]["sentence"] == analysis.aligned_sentence()
    markdown = render_markdown(analysis)
    assert "### Merges" in markdown and "### Resamples" in markdown and "aligned input:" in markdown
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(render_table(analysis))
    text = console.export_text()
    assert "resamples" in text and "interpolate_1" in text and "position-free" in text


def test_undecided_resample_keeps_the_aligned_domain_an_upper_bound():
    # nearest to a fixed 17x11 grid from a symbolic source: too many pixels to
    # compare symbolically, so the audit is undecided and must say so
    import torch.nn.functional as F
    from torch import nn

    from shapecalc import analyze

    class FixedGrid(nn.Module):
        def forward(self, x):
            return F.interpolate(F.max_pool2d(x, 1, 2), size=(17, 11))

    analysis = analyze(FixedGrid(), "HxW", channels=3)
    (resample,) = analysis.resamples
    assert resample.aligned is None
    assert "not decided" in analysis.aligned_sentence()
