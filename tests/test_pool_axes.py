"""Pools work on the last axes of their input, whatever shapecalc marked as
spatial: ``F.max_pool1d(x.flatten(2), 4)`` pools the flattened image (the
engine once left it unpooled, a wrong size with no error), and a pool of the
wrong rank fails at every size.  Each case against CPU forward passes over a
range of sizes: the valid set and the output shape at every valid size."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import SizeError, analyze
from shapecalc.engine.symbolic import evaluate


class _Model(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)  # a 2-d input, whatever the pool's rank
        self.body = body

    def forward(self, x):
        return self.body(self.conv(x))


def _unpooled(x):
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    return F.max_unpool2d(values, indices, 2)


CASES = {
    "max_pool1d of a flattened image": lambda x: F.max_pool1d(x.flatten(2), 4),
    "avg_pool1d of a flattened image": lambda x: F.avg_pool1d(x.flatten(2), 3, ceil_mode=True),
    "adaptive_avg_pool1d of a flattened image": lambda x: F.adaptive_avg_pool1d(x.flatten(2), 5),
    "adaptive_max_pool1d of a flattened image": lambda x: F.adaptive_max_pool1d(x.flatten(2), 3),
    "max_pool1d of an unbatched slice": lambda x: F.max_pool1d(x[0], 2),
    "max_pool2d indices": lambda x: F.max_pool2d(x, 2, return_indices=True)[1],
    "MaxPool1d after Flatten": nn.Sequential(nn.Flatten(2), nn.MaxPool1d(3)),
    "AvgPool1d after Flatten": nn.Sequential(nn.Flatten(2), nn.AvgPool1d(3, ceil_mode=True)),
    "AdaptiveAvgPool1d after Flatten": nn.Sequential(nn.Flatten(2), nn.AdaptiveAvgPool1d(4)),
    "max_unpool2d": _unpooled,
    "max_pool1d of a 4-d tensor (never runs)": lambda x: F.max_pool1d(x, 2),
}


def _torch_shape(model, h):
    try:
        with torch.no_grad():
            return tuple(model(torch.zeros(1, 2, h, h)).shape)
    except (RuntimeError, ValueError, NotImplementedError):  # torch's size refusals for these ops
        return None


@pytest.mark.parametrize("name", list(CASES))
def test_pools_take_the_last_axes_as_torch_does(name):
    body = CASES[name]
    model = _Model(body if isinstance(body, nn.Module) else _Lambda(body)).eval()
    truth = {h: _torch_shape(model, h) for h in range(1, 21)}
    try:
        analysis = analyze(model, "H")
    except SizeError:
        assert all(shape is None for shape in truth.values()), truth  # the engine: never runs; torch agrees
        return
    valid = analysis.valid_sizes("H")
    assert [h for h in truth if h in valid] == [h for h, shape in truth.items() if shape is not None]
    (output,) = analysis.outputs.values()
    for h, shape in truth.items():
        if shape is not None:
            env = {analysis.symbols[0]: h}
            assert tuple(int(evaluate(s, env)) for s in output.shape) == shape, (h, shape)


class _Lambda(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


# interpolation resamples every axis after batch and channels, marked or not; F.batch_norm with
# training=True refuses one value per channel whatever mode the model is in
CASES_AFTER_FLATTEN = {
    "interpolate of a flattened image": lambda x: F.interpolate(x.flatten(2), scale_factor=2),
    "interpolate of a flattened image to a size": lambda x: F.interpolate(x.flatten(2), size=7, mode="linear"),
    "bilinear interpolation of a 3-d tensor (never runs)": lambda x: F.interpolate(x[:, 0], scale_factor=2,
                                                                                   mode="bilinear"),
    "batch_norm with training=True of a flattened image": lambda x: F.batch_norm(x.flatten(2), None, None,
                                                                                 training=True),
}
CASES.update(CASES_AFTER_FLATTEN)


@pytest.mark.parametrize("name", list(CASES_AFTER_FLATTEN))
def test_resampling_and_norms_follow_torch_after_a_flatten(name):
    test_pools_take_the_last_axes_as_torch_does(name)
