"""Random architectures: the engine's sizes AND domain against meta-device
forward passes.  For each drawn net and each size in a sweep, torch must run
exactly where the engine's domain says it does, with every node's shape as
predicted.  Regression tests pin the disagreements the long fuzz run found
(see docs/performance.md)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument

from shapecalc._selftest.architectures import (Architecture, LayerSpec, Step, architectures, cross_check,
                                     random_architecture)

#: CI budget: a bounded number of drawn nets (each swept over ~50 sizes)
CI_EXAMPLES = 60


def _layer(cls, **kwargs):
    return LayerSpec(cls, tuple(kwargs.items()))


def _assert_agrees(architecture, sizes=None):
    result = cross_check(architecture, sizes)
    assert result.engine_error is None, result.describe()
    assert result.agrees, result.describe()
    return result


@settings(max_examples=CI_EXAMPLES, deadline=None)
@given(architectures(max_steps=6))
def test_engine_agrees_with_torch_on_random_architectures(architecture):
    _assert_agrees(architecture)


def test_random_architecture_is_reproducible():
    assert random_architecture(7) == random_architecture(7)
    assert random_architecture(7) != random_architecture(8)


def test_random_architectures_trace_and_build():
    for seed in range(5):
        architecture = random_architecture(seed)
        model = architecture.build()
        torch.fx.symbolic_trace(model)
        assert architecture.describe().startswith("Architecture(")


@pytest.mark.parametrize("kwargs", [{"min_steps": 0}, {"max_steps": True}, {"min_steps": 5, "max_steps": 2},
                                    {"dims": ()}, {"dims": (4,)}])
def test_strategy_arguments_are_validated(kwargs):
    with pytest.raises(InvalidArgument, match=next(iter(kwargs))):
        architectures(**kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        random_architecture(0, **kwargs)


def test_sweep_checks_sizes_outside_the_domain():
    # a 7-wide valid conv: H < 7 is invalid and torch must refuse it
    net = Architecture(2, 1, (Step("layer", (_layer("Conv2d", in_channels=1, out_channels=1, kernel_size=7),)),))
    result = _assert_agrees(net)
    assert min(result.valid) == 7 and 6 in result.sizes


# ---------------------------------------------------------------------------
# regressions found by fuzzing


def test_residual_add_that_only_broadcasts():
    # x + conv(x) with a shrinking conv runs only where one side is 1 wide
    # (broadcasting): the sizes are a Piecewise, which exact evaluation
    # once failed to compile ("cannot evaluate ExprCondPair").
    conv = _layer("Conv1d", in_channels=3, out_channels=3, kernel_size=3, stride=2, padding="valid", dilation=3)
    net = Architecture(1, 3, (Step("residual", (conv,)), Step("layer", (_layer("ReplicationPad1d", padding=(0, 2)),))))
    result = _assert_agrees(net)
    assert result.valid  # some sizes broadcast


def test_circular_padding_cannot_wrap_twice():
    # torch: "Padding value causes wrapping around more than once" when a
    # circular pad exceeds the size; the engine only asked for a non-empty input.
    net = Architecture(2, 1, (Step("functional", options=(("function", "pad"), ("pad", (0, 3, 2, 1)),
                                                          ("mode", "circular"))),))
    result = _assert_agrees(net)
    assert min(result.valid) == 3


def test_pool_padding_more_than_half_the_kernel():
    # torch refuses padding > kernel // 2 (the kernel, not the dilated window)
    # at every size; the engine did not check it
    pool = _layer("MaxPool1d", kernel_size=5, stride=3, padding=3, dilation=2)
    result = _assert_agrees(Architecture(1, 1, (Step("layer", (pool,)),)))
    assert result.never_runs and not result.valid
    ok = Step("functional", options=(("function", "avg_pool"), ("kernel_size", 2), ("padding", 1)))
    assert _assert_agrees(Architecture(2, 1, (ok,))).valid


def test_area_interpolation_may_produce_an_empty_output():
    # mode="area" is adaptive average pooling: floor(H/4) = 0 still runs
    shrink = Step("functional", options=(("function", "interpolate"), ("scale_factor", 0.25), ("mode", "area"),
                                         ("recompute_scale_factor", True)))
    result = _assert_agrees(Architecture(2, 1, (shrink,)))
    assert min(result.valid) == 1


def test_dimensionality_comes_from_the_architecture():
    # no layer with a kernel says the net is 3-d: the input spec must
    slicing = Step("slice", options=(("bounds", ((None, 1, 2),) * 3),))
    assert _assert_agrees(Architecture(3, 3, (slicing,))).valid


def test_centre_crop_with_a_negative_start():
    # (a - H) // 2 is 0 at H = 1 and negative above: Python counts it from
    # the end.  The Piecewise of the two cases lost its first branch (a branch
    # was dropped when its condition failed for *some* size, not for all).
    pool = Step("functional", options=(("function", "avg_pool"), ("kernel_size", 4), ("padding", 1),
                                       ("ceil_mode", True)))
    crop = Step("merge", options=(("op", "sub"), ("crop", "center"), ("cut", "current")), source=0)
    assert _assert_agrees(Architecture(1, 1, (pool, crop))).valid


def test_avg_pool3d_needs_the_unpadded_input_to_cover_the_kernel():
    pool = Step("functional", options=(("function", "avg_pool"), ("kernel_size", 4), ("padding", (1, 1, 0))))
    result = _assert_agrees(Architecture(3, 1, (pool,)))
    assert min(result.valid) == 4
    # avg_pool2d pads first: H = 2 runs
    flat = Step("functional", options=(("function", "avg_pool"), ("kernel_size", 4), ("padding", 1)))
    assert min(_assert_agrees(Architecture(2, 1, (flat,))).valid) == 2


def test_broadcasting_merge_whose_domain_has_overlapping_intervals():
    # x - skip[5:5+n] broadcasts where one side is 1 wide: the union of the
    # cases had intervals starting at the same k, and sorting them compared
    # None (unbounded) with an int
    conv = _layer("Conv3d", in_channels=1, out_channels=2, kernel_size=5, stride=4, padding=(2, 3, 0))
    crop = Step("merge", options=(("op", "sub"), ("crop", "fixed"), ("cut", "skip"), ("offset", 5)), source=0)
    assert _assert_agrees(Architecture(3, 1, (Step("layer", (conv,)), crop))).valid


def test_one_dimensional_net_without_a_kernel_layer():
    # nothing in the graph says "1-d": the check must not default to 2-d
    resize = Step("resize", options=(("q", 2), ("m", 2), ("c", 2)))
    assert _assert_agrees(Architecture(1, 3, (resize, Step("slice", options=(("bounds", ((2, -2, None),)),))))).valid


def test_negative_padding_crops_before_it_pads():
    # F.pad(x, (-3, 2)) needs H >= 3 although H - 1 >= 0 already at H = 1
    pad = Step("functional", options=(("function", "pad"), ("pad", (-3, 2)), ("mode", "constant")))
    conv = _layer("Conv1d", in_channels=1, out_channels=1, kernel_size=1)
    assert min(_assert_agrees(Architecture(1, 1, (pad, Step("layer", (conv,))))).valid) == 3


def test_global_average_pooling_of_an_empty_input():
    # AdaptiveAvgPool(1) is a mean and runs on an empty input (cpu and meta);
    # other output sizes, and adaptive max pooling, refuse it
    empty = Step("slice", options=(("bounds", ((0, -1, None),)),))
    mean = Step("layer", (_layer("AdaptiveAvgPool1d", output_size=1),))
    assert min(_assert_agrees(Architecture(1, 3, (empty, mean))).valid) == 1
    two = Step("layer", (_layer("AdaptiveAvgPool1d", output_size=2),))
    assert min(_assert_agrees(Architecture(1, 3, (empty, two))).valid) == 2
    biggest = Step("layer", (_layer("AdaptiveMaxPool1d", output_size=1),))
    assert min(_assert_agrees(Architecture(1, 3, (empty, biggest))).valid) == 2
