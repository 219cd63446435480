"""Receptive fields against autograd.

For one output pixel, the input pixels with a non-zero gradient are exactly
its receptive field.  Each model is measured as a thin copy with positive
weights and a positive input (so no contribution cancels), max pools swapped
for average pools of the same geometry (a max pool passes gradient to one
pixel per window), and compared, away from the borders, with the window the
engine predicts for that index: ``center + i*stride -+ (rf - 1)/2`` along a
chain of convs and pools, an exact staircase after transposed convs and
resampling.
"""

from __future__ import annotations

import copy

import pytest
import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import segmodels
import shapecalc
from shapecalc.audits.receptive import window_at
from shapecalc.engine.symbolic import evaluate

_POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d}


def positive_copy(graph_module: torch.fx.GraphModule, seed: int = 0, *, uniform: bool = False) -> torch.fx.GraphModule:
    """Positive weights (about 1/fan-in, so values stay O(1); exactly 1/fan-in
    with ``uniform``), average pools for max pools, no in-place ReLU, float64,
    eval mode."""
    gm = copy.deepcopy(graph_module)
    for name, module in list(gm.named_modules()):
        average = _POOLS.get(type(module))
        if average is not None:
            assert module.dilation in (1, (1,), (1, 1)), "AvgPool has no dilation"
            parent, _, leaf = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf,
                    average(module.kernel_size, module.stride, module.padding, module.ceil_mode))
        if isinstance(module, nn.ReLU):
            module.inplace = False
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gm.parameters():
            fan = p[0].numel() if p.dim() > 1 else 1
            p.copy_((1.0 if uniform else 0.5 + torch.rand(p.shape, generator=generator)) / fan)
    gm = gm.double().eval()
    gm.requires_grad_(False)  # only the input's gradient is measured
    return gm


class Recorder(torch.fx.Interpreter):
    """Runs a graph and keeps every node's value (graph inputs keep grads)."""

    def __init__(self, graph_module):
        super().__init__(graph_module, garbage_collect_values=False)
        self.values = {}

    def run_node(self, n):
        value = super().run_node(n)
        self.values[n.name] = value
        return value


def measured_support(value: torch.Tensor, x: torch.Tensor, index: int, axis: int = 0) -> list[int]:
    """Input pixels along ``axis`` (0: the first spatial axis) with a
    non-zero gradient for output ``index`` along that axis (middle of the
    other axes, summed over channels)."""
    spatial = value.shape[2:]
    where = [s // 2 for s in spatial]
    where[axis] = index
    grad, = torch.autograd.grad(value[(0, slice(None), *where)].sum(), x, retain_graph=True)
    magnitude = grad[0].sum(0)
    other = tuple(d for d in range(magnitude.dim()) if d != axis)
    if other:
        magnitude = magnitude.sum(other)
    return (magnitude > 0).nonzero().flatten().tolist()


def predicted(analysis, name: str, index: int, sizes: dict, axis: int = 0):
    g = analysis.layer(name).tensor.geometry[axis]
    return window_at(g.window, index, sizes)


def clipped(window, n: int) -> list[int]:
    return list(range(max(window[0], 0), min(window[1], n - 1) + 1))


def chain_window(analysis, name: str, index: int, axis: int = 0):
    """The window the per-layer columns give: center + i*stride -+ (rf-1)/2."""
    g = analysis.layer(name).tensor.geometry[axis]
    middle = g.center + index * g.stride
    half = (g.rf - 1) / 2
    return int(middle - half), int(middle + half)


# ---------------------------------------------------------------------------
# FCN-8s: fc6, the upscore staircases, the skip merges, the final crop


@pytest.fixture(scope="module")
def fcn_run():
    torch.manual_seed(0)
    model = segmodels.fcn8s(n_class=1, width=1 / 64).eval()
    analysis = shapecalc.analyze(model, "H")
    H, W = 520, 1  # FCN-8s runs for every W >= 1; one column keeps autograd cheap
    x = (0.5 + torch.rand(1, 3, H, W, dtype=torch.float64)).requires_grad_()
    recorder = Recorder(positive_copy(analysis.graph_module))
    recorder.run(x)
    return analysis, recorder.values, x, {sympy.Symbol("H", integer=True, positive=True): H}


def test_fcn8s_known_receptive_fields(fcn_run):
    analysis = fcn_run[0]
    pool5 = analysis.layer("pool5").tensor.geometry[0]
    fc6 = analysis.layer("fc6").tensor.geometry[0]
    assert (pool5.rf, pool5.stride) == (212, 32)
    assert (fc6.rf, fc6.stride) == (404, 32)


@pytest.mark.parametrize("name, indices", [
    ("pool5", [12, 13]),
    ("fc6", [8, 9]),
    ("upscore2", [16, 17, 18]),           # transposed k4 s2: pairs of indices share a window
    ("add_2", [17, 18]),                  # merge: the union of upscore2 and the cropped skip
    ("upscore_pool4", [36, 37, 38, 39]),  # a full period of the second staircase
    ("getitem_8", [258, 280, 281]),       # the output after the crop at 31 (the window moves at 281)
])
def test_fcn8s_windows_equal_gradient_support(fcn_run, name, indices):
    analysis, values, x, sizes = fcn_run
    H = x.shape[2]
    widths = []
    for i in indices:
        window = predicted(analysis, name, i, sizes)
        assert 0 <= window[0] and window[1] < H, "choose an index away from the borders"
        support = measured_support(values[name], x, i)
        assert support == clipped(window, H), (name, i, window)
        widths.append(len(support))
        if name in ("pool5", "fc6"):
            assert window == chain_window(analysis, name, i)
    if name == "upscore_pool4":
        # after two stride-2 deconvolutions the width alternates; rf is the widest
        assert sorted(set(widths)) == [436, 468]
        assert analysis.layer(name).tensor.geometry[0].rf == max(widths)


# ---------------------------------------------------------------------------
# ResNet stem, dilated stage and residual merges (DeepLab-v3 backbone), ASPP


@pytest.fixture(scope="module")
def deeplab_run():
    torch.manual_seed(0)
    model = segmodels.deeplabv3(n_class=2, width=1 / 32).eval()
    analysis = shapecalc.analyze(model, "HxW")
    H, W = 1024, 1
    x = (0.5 + torch.rand(1, 3, H, W, dtype=torch.float64)).requires_grad_()
    recorder = Recorder(positive_copy(analysis.graph_module))
    recorder.run(x)
    symbols = {s.name: s for s in analysis.symbols}
    return analysis, recorder.values, x, {symbols["H"]: H, symbols["W"]: W}


def test_resnet_stem_rf_11_stride_4(deeplab_run):
    analysis, values, x, sizes = deeplab_run
    g = analysis.layer("backbone_maxpool").tensor.geometry[0]
    assert (g.rf, g.stride, g.center) == (11, 4, 0)
    for i in (100, 101):
        window = predicted(analysis, "backbone_maxpool", i, sizes)
        assert window == chain_window(analysis, "backbone_maxpool", i) == (4 * i - 5, 4 * i + 5)
        assert measured_support(values["backbone_maxpool"], x, i) == clipped(window, x.shape[2])


@pytest.mark.parametrize("name, index", [
    ("add_2", 60),                          # 1x1 stride-2 shortcut + 3x3 path
    ("backbone_layer4_1_relu_1", 30),       # dilated stage (d = 2), stride 16
    ("aspp_b3_2", 32),                      # dilation 18 on top: rf 979
])
def test_backbone_windows_equal_gradient_support(deeplab_run, name, index):
    analysis, values, x, sizes = deeplab_run
    window = predicted(analysis, name, index, sizes)
    assert window == chain_window(analysis, name, index)
    assert 0 <= window[0] and window[1] < x.shape[2]
    assert measured_support(values[name], x, index) == clipped(window, x.shape[2])


def test_global_branch_makes_every_output_see_the_whole_image(deeplab_run):
    analysis, values, x, sizes = deeplab_run
    window = predicted(analysis, "classifier", 32, sizes)
    assert window[0] <= 0 and window[1] >= x.shape[2] - 1
    assert measured_support(values["classifier"], x, 32) == list(range(x.shape[2]))


# ---------------------------------------------------------------------------
# small 1-D chains: dilation, transposed convs (every phase), merges, crops,
# padding and resampling, checked at every interior index with one Jacobian


class Chain(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class TwoPaths(nn.Module):
    """A 3x3 path and an off-centre 5-tap path merged by add and by cat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Conv1d(2, 2, 3))
        self.b = nn.Conv1d(1, 2, 5, padding=1)
        self.c = nn.Conv1d(1, 2, 3, dilation=2)

    def forward(self, x):
        a = self.a(x)
        b = self.b(x)[:, :, 1:1 + a.size(2)]
        c = self.c(x)
        return a + b, torch.cat([a, c], dim=1)


class Resampling(nn.Module):
    def __init__(self, mode, align_corners=None, scale_factor=None, size=None):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, stride=2)
        self.mode, self.align_corners, self.scale_factor, self.size = mode, align_corners, scale_factor, size

    def forward(self, x):
        h = F.pad(self.conv(x[:, :, 2:]), (1, 2))
        return F.interpolate(h, size=self.size, scale_factor=self.scale_factor, mode=self.mode,
                             align_corners=self.align_corners)


CHAINS = {
    "dilated": (Chain(nn.Conv1d(1, 1, 3), nn.Conv1d(1, 1, 3, dilation=2), nn.Conv1d(1, 1, 3, dilation=4, padding=4)), "H", 70),
    "transposed k4 s2 p1": (Chain(nn.Conv1d(1, 1, 3), nn.ConvTranspose1d(1, 1, 4, stride=2, padding=1)), "H", 40),
    "transposed k3 s2 op1": (Chain(nn.Conv1d(1, 1, 3, stride=2), nn.ConvTranspose1d(1, 1, 3, stride=2, padding=1, output_padding=1)), "H", 40),
    "transposed k3 s3 d2": (Chain(nn.Conv1d(1, 1, 5), nn.ConvTranspose1d(1, 1, 3, stride=3, dilation=2)), "H", 30),
    "transposed twice": (Chain(nn.Conv1d(1, 1, 3), nn.ConvTranspose1d(1, 1, 4, stride=2), nn.Conv1d(1, 1, 3),
                               nn.ConvTranspose1d(1, 1, 5, stride=3, padding=1)), "H", 20),
    "pool ceil": (Chain(nn.Conv1d(1, 1, 3), nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), nn.Conv1d(1, 1, 3)), "H", 50),
    "two paths": (TwoPaths(), "H", 40),
    "nearest x2": (Resampling("nearest", scale_factor=2), "H", 40),
    "nearest x0.5": (Resampling("nearest", scale_factor=0.5), "H", 80),
    "nearest-exact x1.5": (Resampling("nearest-exact", scale_factor=1.5), "H", 40),
    "linear x2": (Resampling("linear", scale_factor=2), "H", 40),
    "linear x0.5": (Resampling("linear", scale_factor=0.5), "H", 80),
    "linear size=30 align_corners": (Resampling("linear", align_corners=True, size=30), "41", 41),
    "adaptive pool 7": (Chain(nn.Conv1d(1, 1, 3), nn.AdaptiveAvgPool1d(7)), "40", 40),
}


#: layers whose dilation exceeds the receptive field below them
HOLES = {("dilated", "layers_1"), ("two paths", "c")}


def _jacobian_supports(graph_module, name, n):
    x = (0.5 + torch.rand(1, 1, n, dtype=torch.float64)).requires_grad_()
    recorder = Recorder(graph_module)
    recorder.run(x)
    value = recorder.values[name]
    rows = []
    for i in range(value.shape[2]):
        grad, = torch.autograd.grad(value[0, :, i].sum(), x, retain_graph=True)
        rows.append((grad[0, 0] > 0).nonzero().flatten().tolist())
    return rows


@pytest.mark.parametrize("case", sorted(CHAINS))
def test_chain_windows_at_every_interior_index(case):
    torch.manual_seed(1)
    model, spec, n = CHAINS[case]
    analysis = shapecalc.analyze(model, spec)
    symbols = {s: n for s in analysis.symbols}
    graph_module = positive_copy(analysis.graph_module)
    layers = [layer for layer in analysis.layers if layer.op not in ("input",)]
    checked = 0
    for layer in layers:
        g = layer.tensor.geometry[0]
        assert g is not None and g.window is not None, (case, layer.name)
        supports = _jacobian_supports(graph_module, layer.name, n)
        widths = []
        for i, support in enumerate(supports):
            lo, hi = window_at(g.window, i, symbols)
            if lo < 0 or hi > n - 1 or not 3 <= i < len(supports) - 3:
                continue  # borders: padding, crops and clamping take pixels away
            if (case, layer.name) in HOLES:
                # a dilation wider than the field below leaves holes: the window is the hull
                assert (support[0], support[-1]) == (lo, hi)
            else:
                assert support == list(range(lo, hi + 1)), (case, layer.name, i, (lo, hi), support)
            widths.append(hi - lo + 1)
            checked += 1
        if widths and len(supports) > 8:
            assert max(widths) == evaluate(g.rf, symbols), (case, layer.name)
    assert checked >= len(layers)


def test_dilated_first_layer_reads_every_other_pixel():
    model = Chain(nn.Conv1d(1, 1, 3, dilation=2))
    analysis = shapecalc.analyze(model, "H")
    supports = _jacobian_supports(positive_copy(analysis.graph_module), "layers_0", 12)
    assert supports[3] == [3, 5, 7]
    assert window_at(analysis.layer("layers_0").tensor.geometry[0].window, 3) == (3, 7)
