"""Small models that use the ops real networks need beyond conv and pool:
ops that return (values, indices) or several pieces (max/min with dim,
sort, topk, split, chunk, unbind, narrow), size assertions
(``torch._assert`` on ``x.shape``/``x.ndim``), broadcasting copies
(expand, repeat), reorderings (flip, roll), sub-pixel rearrangements
(pixel_shuffle/unshuffle) and channel-last ``F.linear``.

Each test runs the model on CPU over a range of sizes and checks the
engine's exact valid sizes and the shape of every graph node against the
forward pass; an invalid size must be a ``SizeError`` (with the model's own
message for an assertion).  Before these rules each model was refused.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import SizeError, UnsupportedOpError, analyze
from shapecalc.engine.propagate import META_KEY
from shapecalc.engine.symbolic import evaluate
from shapecalc.engine.tensors import SymbolicTensor

SIZES = range(1, 41)
#: concrete analyses are slower than torch: a few sizes only
CONCRETE = (1, 2, 3, 7, 8, 16)


class _Recorder(torch.fx.Interpreter):
    def __init__(self, graph_module):
        super().__init__(graph_module, garbage_collect_values=False)
        self.extra_traceback = False
        self.values = {}

    def run_node(self, n):
        self.values[n.name] = value = super().run_node(n)
        return value


def torch_shapes(graph_module, h: int, channels: int):
    """Every node's shape(s) in a CPU forward pass, or the exception torch raised."""
    recorder = _Recorder(graph_module)
    try:
        with torch.no_grad():
            recorder.run(torch.randn(1, channels, h, h))
    except Exception as error:  # noqa: BLE001 - any torch failure is a size verdict
        return error
    return {name: _shapes(v) for name, v in recorder.values.items() if _shapes(v) is not None}


def _shapes(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (torch.Tensor, tuple, list)) for v in value):
        return tuple(_shapes(v) for v in value)
    return None


def _engine_shapes(value, env):
    if isinstance(value, SymbolicTensor):
        return tuple(int(evaluate(s, env)) for s in value.shape)
    return tuple(_engine_shapes(v, env) for v in value)


def assert_matches_torch(model, channels: int = 3):
    model = model.eval()
    analysis = analyze(model, "H", channels=channels)
    (symbol,) = analysis.symbols
    valid = analysis.valid_sizes(symbol)
    graph_module = analysis.graph_module
    engine = {n.name: n.meta[META_KEY] for n in graph_module.graph.nodes if META_KEY in n.meta}
    ran = []
    for h in SIZES:
        real = torch_shapes(graph_module, h, channels)
        torch_ran = not isinstance(real, Exception)
        assert (h in valid) == torch_ran, (h, analysis.validity_sentence(), real)
        if torch_ran:
            ran.append(h)
            for name, shape in real.items():
                assert _engine_shapes(engine[name], {symbol: h}) == shape, (h, name)
        if h in CONCRETE:
            if torch_ran:
                concrete = analyze(model, str(h), channels=channels)
                values = {n.name: n.meta[META_KEY] for n in concrete.graph_module.graph.nodes if META_KEY in n.meta}
                for name, shape in real.items():
                    assert _engine_shapes(values[name], {}) == shape, (h, name)
            else:
                with pytest.raises(SizeError):
                    analyze(model, str(h), channels=channels)
    assert ran, "no size in range runs: the comparison checked nothing"
    return analysis


class _Forward(nn.Module):
    def __init__(self, forward, **modules):
        super().__init__()
        self.body = forward
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x):
        return self.body(self, x)


def _max_pool_channels(self, x):
    # channel attention as CBAM computes it: max and mean over channels, then a conv
    y = self.conv(x)
    peak = torch.max(y, dim=1, keepdim=True).values
    low, where = y.min(2)
    return self.gate(torch.cat([peak, y.mean(1, keepdim=True)], 1)), low, where


def _glu_and_split(self, x):
    a, b = self.conv(x).chunk(2, dim=1)  # GLU over channels
    y = a * torch.sigmoid(b)
    body, border = torch.split(y, [y.shape[2] - 2, 2], dim=2)
    return self.post(body), border


def _topk_and_sort(self, x):
    y = self.conv(x)
    values, indices = torch.topk(y, 3, dim=-1)
    ordered = y.sort(dim=2, descending=True)[0]
    return values + 1, indices, ordered


def _narrow_center(self, x):
    y = self.conv(x)
    return torch.narrow(y, 2, 2, y.shape[2] - 4).narrow(3, -3, 2)


def _unbind_channels(self, x):
    r, g, b = x.unbind(1)
    return self.conv(torch.stack([b, g, r], 1))


def _chunk_even_part(self, x):
    y = self.conv(x)
    half = y.shape[-1] // 2 * 2
    left, right = y[..., :half].chunk(2, -1)
    return left - right


def _squeeze_excite_copies(self, x):
    y = self.conv(x)
    scale = y.amax((2, 3), keepdim=True).expand_as(y)
    tiled = y.amax(2, keepdim=True).repeat(1, 1, 2, 1)
    return torch.flip(y * scale, (2,)).roll(1, 3), tiled


def _assert_then_subpixel(self, x):
    torch._assert(x.shape[2] % 4 == 0, "input height must be a multiple of 4")
    torch._assert(x.ndim == 4, "input must be NCHW")
    y = F.pixel_unshuffle(x, 2)
    return self.shuffle(self.conv(y))


def _channel_last_linear(self, x):
    y = self.conv(x).permute(0, 2, 3, 1)
    y = F.linear(y, self.weight)
    return y.permute(0, 3, 1, 2)


class _WithWeight(_Forward):
    def __init__(self, forward, **modules):
        super().__init__(forward, **modules)
        self.register_buffer("weight", torch.randn(5, 4))


MODELS = {
    "max_min_named_tuple": lambda: _Forward(_max_pool_channels, conv=nn.Conv2d(3, 4, 3), gate=nn.Conv2d(2, 1, 7, padding=3)),
    "chunk_and_split": lambda: _Forward(_glu_and_split, conv=nn.Conv2d(3, 8, 3), post=nn.Conv2d(4, 2, 3)),
    "topk_and_sort": lambda: _Forward(_topk_and_sort, conv=nn.Conv2d(3, 2, 3, stride=2)),
    "narrow": lambda: _Forward(_narrow_center, conv=nn.Conv2d(3, 2, 3, padding=1)),
    "unbind": lambda: _Forward(_unbind_channels, conv=nn.Conv2d(3, 2, 5)),
    "chunk_of_an_even_part": lambda: _Forward(_chunk_even_part, conv=nn.Conv2d(3, 2, 3)),
    "expand_repeat_flip_roll": lambda: _Forward(_squeeze_excite_copies, conv=nn.Conv2d(3, 2, 3, stride=2)),
    "assert_and_pixel_shuffle": lambda: _Forward(_assert_then_subpixel, conv=nn.Conv2d(12, 8, 3, padding=1),
                                                 shuffle=nn.PixelShuffle(2)),
    "channel_last_linear": lambda: _WithWeight(_channel_last_linear, conv=nn.Conv2d(3, 4, 3, stride=2)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_torch(name):
    assert_matches_torch(MODELS[name]())


def test_assertion_fails_with_the_models_message():
    model = MODELS["assert_and_pixel_shuffle"]().eval()
    with pytest.raises(AssertionError, match="multiple of 4"):
        model(torch.randn(1, 3, 10, 10))
    with pytest.raises(SizeError, match="input height must be a multiple of 4"):
        analyze(model, "10", channels=3)
    assert "H = 4k" in analyze(model, "H", channels=3).validity_sentence()


def test_piece_counts_that_depend_on_the_size_are_refused():
    """torch.chunk(x, 2) of an axis of size H gives 1 piece at H = 1 and 2
    after; split(x, 2) gives ceil(H/2): the graph would change with H."""
    x1, x2 = torch.randn(1, 1, 1), torch.randn(1, 1, 6)
    assert len(x1.chunk(2, 2)) == 1 and len(x2.chunk(2, 2)) == 2
    for forward, what in ((lambda self, x: x.chunk(2, 2), "fewer than 2"), (lambda self, x: x.split(2, 3), "depends"),
                          (lambda self, x: x.unbind(2), "depends")):
        with pytest.raises(UnsupportedOpError, match=what):
            analyze(_Forward(forward).eval(), "H")
    # at a concrete size the count is known: 5 in 4 chunks is 2, 2, 1 as torch gives it
    analysis = analyze(_Forward(lambda self, x: x.chunk(4, 2)).eval(), "5")
    assert [tuple(int(s) for s in t.shape) for t in analysis.outputs.values()] == \
        [tuple(t.shape) for t in torch.randn(1, 3, 5, 5).chunk(4, 2)]
