"""Ops that real networks (issue 8) needed: torchvision's stochastic_depth,
``.dtype``/``.device`` feeding ``torch.empty``, ``matmul``/``bmm``,
``movedim``, and ConvNeXt's channel-last round trip.

Sizes and valid sizes are checked against CPU forward passes at H = 1..40
(``test_model_ops.assert_matches_torch``); the coordinate map after the
channel-last round trip against autograd's gradient support.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from shapecalc import UnsupportedOpError, analyze
from shapecalc.audits.receptive import window_at

sys.path.insert(0, str(Path(__file__).parent))
from test_model_ops import _Forward, assert_matches_torch  # noqa: E402


def _smp_dummy_feature(self, x):
    # smp's TimmUniversalEncoder for a stride-4 first stage: an empty feature at half size
    y = self.conv(x)
    b, _, h, w = y.shape
    dummy = torch.empty([b, 0, h // 2, w // 2], dtype=y.dtype, device=y.device)
    return y, dummy, torch.zeros([b, 1, h - 3], dtype=x.dtype)


def test_dtype_and_device_feed_new_tensors():
    assert_matches_torch(_Forward(_smp_dummy_feature, conv=nn.Conv2d(3, 4, 3, 2)))


def test_a_comparison_of_dtypes_is_refused_not_guessed():
    # shapecalc does not follow dtypes (a comparison or an .int() would change them)
    with pytest.raises(UnsupportedOpError, match="dtype"):
        analyze(_Forward(lambda self, x: (x.dtype == torch.float16, x)[1]), "H")


def _attention(self, x):
    y = self.conv(x)                               # (1, 4, h, w)
    tokens = y.flatten(2).transpose(1, 2)          # (1, hw, 4)
    scores = torch.matmul(tokens, tokens.mT)       # (1, hw, hw)
    mixed = torch.bmm(scores.softmax(-1), tokens)  # (1, hw, 4)
    rows = y @ self.w                              # contracts the last spatial axis: w must be 5
    return mixed.movedim(-1, 1), rows, tokens[0, 0] @ tokens[0, 1], y.mean((2, 3)) @ self.v


def test_matrix_products_and_movedim():
    model = _Forward(_attention, conv=nn.Conv2d(3, 4, 3, 2))
    model.register_buffer("w", torch.randn(5, 2))
    model.register_buffer("v", torch.randn(4))
    analysis = assert_matches_torch(model)
    (h,) = analysis.symbols
    assert 11 in analysis.valid_sizes(h) and 12 in analysis.valid_sizes(h) and 13 not in analysis.valid_sizes(h)


def _torchvision_ops():
    pytest.importorskip("zoo_setup").require_torchvision()
    import torchvision.ops

    return torchvision.ops


@pytest.mark.parametrize("training", [False, True])
def test_torchvision_stochastic_depth(training):
    ops = _torchvision_ops()

    def residual(self, x):
        y = self.conv(x)
        return y + self.drop(self.branch(y))

    model = _Forward(residual, conv=nn.Conv2d(3, 4, 3, 2), branch=nn.Conv2d(4, 4, 3, padding=1),
                     drop=ops.StochasticDepth(0.3, "row"))
    model.eval()
    model.drop.train(training)
    analysis = assert_matches_torch(model)
    assert any(layer.name == "stochastic_depth" for layer in analysis.layers)


def test_stochastic_depth_with_a_bad_mode_never_runs():
    ops = _torchvision_ops()
    model = _Forward(lambda self, x: self.drop(x), drop=ops.StochasticDepth(0.3, "col")).train()
    with pytest.raises(ValueError, match="mode has to be"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(Exception, match="mode has to be"):
        analyze(model, "H")


def _channel_last_block(self, x):
    y = self.conv(x)
    z = self.norm(y.permute(0, 2, 3, 1))
    z = self.mlp(z).permute(0, 3, 1, 2)
    return self.head(y + z.movedim(1, -1).movedim(-1, 1))


def test_channel_last_round_trip_keeps_the_coordinate_map():
    """ConvNeXt's permute -> LayerNorm/Linear -> permute: the head's receptive
    field windows equal the input pixels with a non-zero gradient."""
    model = _Forward(_channel_last_block, conv=nn.Conv2d(1, 4, 3, 2, 1), norm=nn.LayerNorm(4),
                     mlp=nn.Linear(4, 4), head=nn.Conv2d(4, 1, 3, 2)).double()
    analysis = assert_matches_torch(model.float(), channels=1)
    model.double()
    head = analysis.layers[-1]
    (h,) = analysis.symbols
    n = 29
    x = torch.rand(1, 1, n, 1, dtype=torch.float64, requires_grad=True)
    out = model(torch.nn.functional.pad(x, (3, 3)))  # 7 columns: the width stays valid
    window = head.tensor.geometry[0].window
    assert window is not None
    for index in range(out.shape[2]):
        grad, = torch.autograd.grad(out[0, 0, index].sum(), x, retain_graph=True)
        support = (grad[0, 0, :, 0] != 0).nonzero().flatten().tolist()
        first, last = window_at(window, index, {h: n})
        assert support == list(range(max(first, 0), min(last, n - 1) + 1)), index
