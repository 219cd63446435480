"""Ops that return a tuple: max pooling with indices (module and functional,
fixed and adaptive), and max unpooling with those indices (SegNet).

Each test runs torch (CPU forward passes) over a range of sizes and checks
the engine's exact valid sizes and every node's shape against it.  Before
these rules ``pool(x)[0]`` was read as indexing the batch axis of one tensor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import SizeError, analyze
from shapecalc.engine.propagate import META_KEY
from shapecalc.engine.symbolic import evaluate
from shapecalc.engine.tensors import SymbolicTensor

SIZES = range(1, 41)
#: concrete analyses are slower than torch: a few sizes on each side of the bounds
CONCRETE = (1, 2, 3, 5, 6, 7, 10)


def torch_shapes(model, h: int, channels: int):
    """Every node's output shape(s) in a CPU forward pass, or None if torch raises."""
    x = torch.randn(1, channels, h, h)
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, IndexError):
        return None
    return _shapes(out)


def _shapes(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return tuple(_shapes(v) for v in value)


def _engine_shapes(value, env):
    if isinstance(value, SymbolicTensor):
        return tuple(int(evaluate(s, env)) for s in value.shape)
    return tuple(_engine_shapes(v, env) for v in value)


def assert_matches_torch(model, channels: int = 3):
    analysis = analyze(model, "H", channels=channels)
    (symbol,) = analysis.symbols
    valid = analysis.valid_sizes(symbol)
    output = [n for n in analysis.graph_module.graph.nodes if n.op == "output"][0]
    result = output.args[0]
    for h in SIZES:
        real = torch_shapes(model, h, channels)
        assert (h in valid) == (real is not None), (h, analysis.validity_sentence(), real)
        if h not in CONCRETE and real is not None:
            assert _engine_shapes(_node_value(result), {symbol: h}) == real, h
        elif real is not None:
            predicted = _engine_shapes(_node_value(result), {symbol: h})
            assert predicted == real, (h, predicted, real)
            concrete = analyze(model, str(h), channels=channels)
            if isinstance(real[0], int):  # one tensor out
                assert tuple(int(s) for s in concrete.outputs["output"].shape) == real
        elif h in CONCRETE:
            with pytest.raises(SizeError):
                analyze(model, str(h), channels=channels)
    return analysis


def _node_value(arg):
    if isinstance(arg, torch.fx.Node):
        return arg.meta[META_KEY]
    return tuple(_node_value(a) for a in arg)


class PoolThenConv(nn.Module):
    """The issue's reproducer: Conv2d(3,4,1) -> MaxPool2d(2,2,return_indices=True) -> [0] -> Conv2d(4,4,3)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.conv2(self.pool(self.conv1(x))[0])


def test_pool_with_indices_then_index_zero_is_the_values():
    analysis = assert_matches_torch(PoolThenConv().eval())
    assert 6 in analysis.valid_sizes("H") and 5 not in analysis.valid_sizes("H")
    assert min(h for h in SIZES if h in analysis.valid_sizes("H")) == 6
    # the false "Conv2d expects 4 input channels, got 5" at --input 10
    assert tuple(analyze(PoolThenConv().eval(), "10").outputs["output"].shape) == (1, 4, 3, 3)


class SegNetStage(nn.Module):
    """``y, i = pool(x)``, a conv on y, then unpool(y, i) back to the pooled size."""

    def __init__(self, output_size: bool):
        super().__init__()
        self.output_size = output_size
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        y, i = self.pool(x)
        y = self.conv(y)
        if self.output_size:
            return self.unpool(y, i, output_size=x.size())
        return self.unpool(y, i), i


def test_unpool_back_to_the_pooled_input_size():
    assert_matches_torch(SegNetStage(output_size=True).eval())


def test_unpool_with_the_default_size():
    """Without output_size torch gives (n//2)*2; at odd n some indices may
    point past that output (an error that depends on the values), so the
    comparison runs at even sizes and the engine notes the risk."""
    model = SegNetStage(output_size=False).eval()
    analysis = analyze(model, "H")
    out, indices = analysis.outputs["0"], analysis.outputs["1"]
    for h in range(2, 41, 2):
        real = torch_shapes(model, h, 3)
        assert real == (_engine_shapes(out, {analysis.symbols[0]: h}), _engine_shapes(indices, {analysis.symbols[0]: h}))
    assert any("invalid max index" in note for note in analysis.notes)


class FunctionalWithIndices(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.adaptive = nn.AdaptiveMaxPool2d(3, return_indices=True)

    def forward(self, x):
        if self.how == "max_pool2d":
            y, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
            return F.max_unpool2d(y, i, 3, 2, 1, output_size=x.shape[2:]), i
        if self.how == "with_indices":
            y, i = F.max_pool2d_with_indices(x, 2, ceil_mode=True)
            return y + 1, i
        if self.how == "adaptive_module":
            return self.adaptive(x)
        y, i = F.adaptive_max_pool2d(x, (2, 3), return_indices=True)
        return i


@pytest.mark.parametrize("how", ["max_pool2d", "with_indices", "adaptive_module", "adaptive_functional"])
def test_functional_and_adaptive_pools_return_values_and_indices(how):
    assert_matches_torch(FunctionalWithIndices(how).eval())
