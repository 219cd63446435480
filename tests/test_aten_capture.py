"""The ATen front end (``capture="aten"``) against torch.

* FCN-8s and DeepLab-v3 give the same answers through both front ends, and
  both match meta forward passes;
* a model whose Python looks at sizes (a raise, a ``torch._assert``, a branch
  that changes the graph) is mapped piece by piece: at every size of a sweep,
  whether it runs, its output shape, and the model's own message and line
  where it raises, all from real CPU forward passes;
* segmentation_models_pytorch's FPN reads as the divisibility smp enforces;
* a bound on captures says what is unexplored instead of claiming a map;
* every ATen op the test models record has a rule.
"""

from __future__ import annotations

import operator
import re
import traceback
from functools import lru_cache

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import TraceError, analyze, load_model
from shapecalc.engine import rules
from shapecalc.engine.symbolic import evaluate


class Branchy(nn.Module):
    """Python that looks at sizes three ways (lines named in the assertions)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % 8 != 0 or w % 4 != 0:
            raise RuntimeError(f"Wrong input shape height={h}, width={w}")
        torch._assert(h >= 16, "too small")
        y = self.conv(x)
        if y.shape[2] > 40:  # another graph: one more crop
            y = y[:, :, 1:]
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


@lru_cache(maxsize=None)
def _branchy():
    torch.manual_seed(0)
    model = Branchy().eval()
    return model, analyze(model, "HxW", capture="aten")


@lru_cache(maxsize=None)
def _bundled(name: str, capture: str):
    model = load_model(name)
    return model, analyze(model, "H", capture=capture)


def _sizes(tensor, env) -> tuple[int, ...]:
    return tuple(int(evaluate(s, env)) for s in tensor.shape)


@pytest.mark.parametrize("name", ["fcn8s", "deeplabv3"])
def test_bundled_models_give_the_same_answers_through_both_front_ends(name):
    model, fx = _bundled(name, "fx")
    _, aten = _bundled(name, "aten")
    assert (fx.capture, aten.capture) == ("fx", "aten")
    (h,) = fx.symbols
    assert aten.domain.sets[h] == fx.domain.sets[h]
    assert aten.aligned_domain[h] == fx.aligned_domain[h]
    assert sorted(c.offset for c in aten.crops) == sorted(c.offset for c in fx.crops)
    assert [c.aligned for c in aten.crops] == [c.aligned for c in fx.crops]
    assert sorted(m.aligned for m in aten.merges) == sorted(m.aligned for m in fx.merges)
    assert sorted(str(r.aligned) for r in aten.resamples) == sorted(str(r.aligned) for r in fx.resamples)
    assert aten.pieces_complete is True and len(aten.pieces) == 1 and aten.pieces[0].runs
    # the output's coordinate map and receptive field (tests/test_receptive_field.py holds fx's to autograd)
    for mine, theirs in zip(aten.outputs["output"].geometry, fx.outputs["output"].geometry):
        assert (mine.scale, mine.shift, mine.rf) == (theirs.scale, theirs.shift, theirs.rf)
    # and both are torch's: the output at sizes of every residue the domain keeps, on meta
    sizes = [n for n in range(1, 90) if n in fx.domain.sets[h]][::7]
    assert len(sizes) >= 8
    for n in sizes:
        with torch.no_grad():
            real = tuple(model(torch.empty(1, 3, n, n, device="meta")).shape)
        assert _sizes(fx.outputs["output"], {h: n}) == real == _sizes(aten.outputs["output"], {h: n})
    # every layer that a module produced has the same sizes in both, by module path
    fx_layers = {layer.module: layer for layer in fx.layers if layer.module}
    compared = 0
    for layer in aten.layers:
        twin = fx_layers.get(layer.module)
        if twin is not None and layer.op == "aten.convolution":
            assert [evaluate(s, {h: 61}) for s in layer.tensor.shape] == \
                [evaluate(s, {h: 61}) for s in twin.tensor.shape], layer.module
            compared += 1
    assert compared >= 10


def test_fcn8s_crops_are_5_9_and_31_through_the_aten_front_end():
    _, aten = _bundled("fcn8s", "aten")
    assert sorted(c.offset for c in aten.crops) == [(5, 5), (9, 9), (31, 31)]
    assert all(c.aligned for c in aten.crops)


def _real(model, h, w):
    """Whether the model runs at h x w on CPU, its output shape, or its exception and line."""
    try:
        with torch.no_grad():
            return True, tuple(model(torch.zeros(1, 3, h, w)).shape), None, None
    except (RuntimeError, AssertionError) as error:
        frame = traceback.extract_tb(error.__traceback__)
        model_frames = [f for f in frame if f.filename == __file__]
        return False, None, str(error), model_frames[-1].lineno


def _piece_at(analysis, env):
    found = [p for p in analysis.pieces if bool(p.condition.subs(env))]
    assert len(found) == 1, (env, [p.describe() for p in found])
    return found[0]


def test_pieces_of_shape_dependent_python_match_cpu_forward_passes():
    model, analysis = _branchy()
    h, w = analysis.symbols
    assert analysis.pieces_complete is True
    mismatches, checked = [], 0
    for height in range(1, 70):
        for width in (4, 6, 12, 30):
            runs, shape, message, line = _real(model, height, width)
            env = {h: height, w: width}
            said = env in analysis.domain
            piece = _piece_at(analysis, env)
            checked += 1
            if said != runs or piece.runs != runs:
                mismatches.append(f"{height}x{width}: torch {'runs' if runs else 'raises'}, shapecalc {said}")
            elif runs:
                predicted = _sizes(piece.outputs["output"], env)
                if predicted != shape:
                    mismatches.append(f"{height}x{width}: torch {shape}, shapecalc {predicted}")
            else:
                # the piece's message with the sizes put back is the model's own; its line is the raise
                text = re.sub(r"\bW\b", str(width), re.sub(r"\bH\b", str(height), piece.message))
                if text != message or not piece.location.endswith(f"test_aten_capture.py:{line}"):
                    mismatches.append(f"{height}x{width}: {message!r} at {line}, shapecalc {text!r} at "
                                      f"{piece.location}")
    assert checked == 276 and not mismatches, mismatches[:5]
    # two graphs run (with and without the crop): the valid sizes are their union, per symbol
    assert sum(p.runs for p in analysis.pieces) == 2
    assert analysis.valid_sizes("H").describe("H") == "H = 8k from 16; never for H not a multiple of 8"
    assert "raises 'too small'" in analysis.validity_sentence()


def test_auto_falls_back_to_aten_where_fx_cannot_trace():
    model, aten = _branchy()
    with pytest.raises(TraceError):
        analyze(model, "HxW", capture="fx")
    auto = analyze(model, "HxW", capture="auto", max_captures=2)
    assert auto.capture == "aten" and "torch.fx could not be used" in auto.notes[0]
    assert analyze(load_model("fcn8s"), "H", capture="auto").capture == "fx"


def test_a_bound_on_captures_says_what_is_unexplored():
    model, _ = _branchy()
    bounded = analyze(model, "HxW", capture="aten", max_captures=2)
    assert bounded.pieces_complete is False and len(bounded.pieces) == 2
    assert "not explored" in bounded.validity_sentence()
    assert any("not explored (the bound on captures stopped it)" in n for n in bounded.notes)
    # what it does claim is still true: every size it calls valid runs on CPU
    h, w = bounded.symbols
    for height in range(8, 120, 8):
        for width in (4, 8, 12):
            if {h: height, w: width} in bounded.domain:
                assert _real(model, height, width)[0], (height, width)


@lru_cache(maxsize=None)
def _fpn():
    pytest.importorskip("zoo_setup").require_zoo()
    model = load_model("segmentation_models_pytorch:FPN", {"encoder_name": "resnet18", "encoder_weights": None,
                                                            "encoder_depth": 5, "decoder_segmentation_channels": 32,
                                                            "decoder_pyramid_channels": 32})
    return model, analyze(model, "HxW", capture="aten")


def test_smp_fpn_reads_as_the_divisibility_smp_enforces():
    model, analysis = _fpn()
    h, w = analysis.symbols
    assert analysis.pieces_complete is True
    assert analysis.valid_sizes("H").describe("H") == "H = 32k from 32; never for H not a multiple of 32"
    assert analysis.valid_sizes("W").describe("W") == "W = 32k from 32; never for W not a multiple of 32"
    assert {h: 32, w: 32} not in analysis.domain and {h: 32, w: 64} in analysis.domain
    sentence = analysis.validity_sentence()
    assert "segmentation_models_pytorch/base/model.py:" in sentence and "divisible by 32" in sentence
    mismatches = []
    for height, width in [(224, 224), (224, 223), (223, 224), (96, 160), (100, 128), (64, 96), (32, 32),
                          (160, 33), (31, 64), (288, 64)]:
        try:
            with torch.no_grad():
                real = tuple(model(torch.empty(1, 3, height, width, device="meta")).shape)
        except (RuntimeError, ValueError) as error:
            # smp's own check, or (32x32: a 1x1 map) torch's batch-norm check in the decoder
            assert "Wrong input shape" in str(error) or (height, width) == (32, 32), error
            real = None
        env = {h: height, w: width}
        said = env in analysis.domain
        if said != (real is not None):
            mismatches.append(f"{height}x{width}: torch {real}, shapecalc valid={said}")
        elif real is not None and _sizes(analysis.outputs["output"], env) != real:
            mismatches.append(f"{height}x{width}: torch {real}, shapecalc {_sizes(analysis.outputs['output'], env)}")
    assert not mismatches, mismatches


def test_every_aten_op_the_test_models_record_has_a_rule():
    analyses = [_bundled("fcn8s", "aten")[1], _bundled("deeplabv3", "aten")[1], _branchy()[1]]
    missing = set()
    for analysis in analyses:
        for node in analysis.graph_module.graph.nodes:
            if node.op != "call_function":
                continue
            if isinstance(node.target, torch._ops.OpOverload) or node.target in (operator.getitem, operator.mul,
                                                                                   operator.add):
                if rules.lookup("call_function", node.target) is None:
                    missing.add(str(node.target))
            else:
                missing.add(f"unexpected target {node.target}")
    assert not missing, sorted(missing)


def test_a_symbol_in_a_message_is_shapecalcs_not_torchs():
    _, analysis = _branchy()
    raised = [p for p in analysis.pieces if not p.runs]
    assert raised and all(not re.search(r"\bs\d+\b", p.message) for p in raised)
    assert "H" in {str(s) for p in raised for s in p.condition.free_symbols}


class ParityMatched(nn.Module):
    """Runs where H and W have the same parity, through two graphs: a union
    of regions that is not a product of per-symbol sets."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % 2 == 0:
            if w % 2 != 0:
                raise ValueError("mixed parity")
            return self.conv(x)
        if w % 2 == 0:
            raise ValueError("mixed parity")
        return self.conv(x)[:, :, 1:]


def test_a_union_of_regions_that_is_no_product_is_exact():
    model = ParityMatched().eval()
    analysis = analyze(model, "HxW", capture="aten")
    h, w = analysis.symbols
    assert analysis.pieces_complete is True and sum(p.runs for p in analysis.pieces) == 2
    assert analysis.domain.cells is not None  # the valid sizes tie H and W
    mismatches = []
    for height in range(1, 16):
        for width in range(1, 16):
            try:
                with torch.no_grad():
                    shape = tuple(model(torch.zeros(1, 3, height, width)).shape)
            except (RuntimeError, ValueError):
                shape = None
            env = {h: height, w: width}
            if (env in analysis.domain) != (shape is not None):
                mismatches.append(f"{height}x{width}: torch {shape}, shapecalc {env in analysis.domain}")
            elif shape is not None:
                predicted = _sizes(_piece_at(analysis, env).outputs["output"], env)
                if predicted != shape:
                    mismatches.append(f"{height}x{width}: torch {shape}, shapecalc {predicted}")
    assert not mismatches, mismatches[:5]


def test_assert_valid_for_follows_the_pieces():
    from shapecalc.testing import assert_valid_for
    model, _ = _branchy()
    # both running graphs: 24x8 (no crop) and 64x12 (the crop); each really runs on CPU
    assert _real(model, 24, 8)[0] and _real(model, 64, 12)[0]
    assert_valid_for(model, [(24, 8), (64, 12)], capture="aten")
    with pytest.raises(AssertionError, match="raises 'too small'"):
        assert_valid_for(model, [(8, 8)], capture="aten")
    assert not _real(model, 8, 8)[0]


def test_a_wrong_rule_is_caught_by_torchs_own_sizes():
    """A rule one pixel off makes torch's recorded size disagree at the example: an error, never a number."""
    import shapecalc
    from shapecalc.aten_analysis import DisagreementError
    from shapecalc.engine.rules.aten_ops import aten_convolution

    with shapecalc.rule_scope():
        @shapecalc.rule(*shapecalc.aten("convolution"), replace=True)
        def off_by_one(ctx, *args):
            out = aten_convolution(ctx, *args)
            return out.with_spatial([n + 1 for n in out.spatial_sizes])

        with pytest.raises(DisagreementError, match="torch records .* shapecalc computes"):
            analyze(nn.Sequential(nn.Conv2d(3, 2, 3)), "H", capture="aten")


def test_an_aten_op_without_a_rule_is_named_with_how_to_add_one():
    from shapecalc import UnsupportedOpError, rule_scope, unregister, aten
    with rule_scope():
        unregister(*aten("convolution"))
        with pytest.raises(UnsupportedOpError) as refused:
            analyze(nn.Sequential(nn.Conv2d(3, 2, 3)), "H", capture="aten")
    message = str(refused.value)
    assert "aten::convolution" in message and "shapecalc.aten('convolution')" in message and "\n" not in message


@pytest.mark.slow
def test_monai_basic_unet_is_mapped_completely_for_square_inputs():
    """MONAI's UpCat pads by one where a skip is odd (a parity branch at each of four levels, the
    branches torch.fx silently drops), and its instance norms refuse a 1x1 map: 16 running regions
    of H and five where torch raises, every size decided, against meta forward passes."""
    pytest.importorskip("zoo_setup").require_zoo()
    model = load_model("monai.networks.nets:BasicUNet", {"features": (8, 8, 16, 16, 32, 8), "spatial_dims": 2,
                                                         "in_channels": 1, "out_channels": 2})
    analysis = analyze(model, "H", capture="aten")
    (h,) = analysis.symbols
    assert analysis.pieces_complete is True and sum(p.runs for p in analysis.pieces) == 16
    mismatches = []
    for n in [*range(1, 40), 47, 63, 64, 65, 97, 100, 127]:
        try:
            with torch.no_grad():
                real = tuple(model(torch.empty(1, 1, n, n, device="meta")).shape)
        except ValueError as error:
            assert "Expected more than 1 spatial element" in str(error)
            real = None
        said = {h: n} in analysis.domain
        if said != (real is not None):
            mismatches.append(f"H={n}: torch {real}, shapecalc valid={said}")
        elif real is not None:
            predicted = _sizes(_piece_at(analysis, {h: n}).outputs["output"], {h: n})
            if predicted != real:
                mismatches.append(f"H={n}: torch {real}, shapecalc {predicted}")
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("bounds", [{"max_captures": 0}, {"max_captures": 2.5}, {"max_captures": True},
                                    {"max_seconds": 0}, {"max_seconds": -1.0}, {"max_seconds": float("nan")}])
def test_a_bound_that_bounds_nothing_is_refused(bounds):
    with pytest.raises(ValueError, match="max_"):
        analyze(nn.Conv2d(3, 2, 3), "H", capture="aten", **bounds)


@pytest.mark.slow
def test_monai_swin_unetr_says_its_code_decides_per_size():
    """SwinUNETR builds its attention masks in Python from the window counts: a capture holds at
    its own size only.  What it says there is torch's; what it cannot map it says, never guesses."""
    pytest.importorskip("zoo_setup").require_zoo()
    model = load_model("monai.networks.nets:SwinUNETR", {"in_channels": 1, "out_channels": 2, "feature_size": 12,
                                                         "spatial_dims": 2, "depths": (1, 1, 1, 1),
                                                         "num_heads": (1, 1, 1, 1)})
    analysis = analyze(model, "HxW", capture="aten", max_captures=1)
    h, w = analysis.symbols
    with torch.no_grad():  # built on CPU (its constructor reads tensor values): a CPU forward pass
        real = tuple(model(torch.zeros(1, 1, 224, 224)).shape)
    assert _sizes(analysis.outputs["output"], {h: 224, w: 224}) == real
    assert {h: 224, w: 224} in analysis.domain and analysis.pieces_complete is False
    assert any("swin_unetr.py" in n and "decides per size" in n for n in analysis.notes), analysis.notes
    assert "where explored:" in analysis.validity_sentence()
    # the one size it calls valid really runs; the next multiple of 32 is outside what it claims
    assert {h: 256, w: 256} not in analysis.domain
    assert not any(p.runs and bool(p.condition.subs({h: 256, w: 256})) for p in analysis.pieces)


def test_check_does_not_pass_for_regions_it_did_not_audit():
    from shapecalc.answers.checking import check
    _, complete = _branchy()  # two graphs run: only the first is audited
    report = check(complete)
    assert not report.ok and any("2 regions run" in f.message for f in report.findings)
    model, _ = _branchy()
    bounded = check(analyze(model, "HxW", capture="aten", max_captures=2))
    assert not bounded.ok and any("not explored" in f.message for f in bounded.findings)
    fcn = check(_bundled("fcn8s", "aten")[1])  # one region, every size: as the fx front end checks it
    assert fcn.ok == check(_bundled("fcn8s", "fx")[1]).ok


def test_verify_compares_each_running_piece_with_its_own_outputs():
    from shapecalc.verify import verify
    model, _ = _branchy()
    report = verify(model, "HxW", device="cpu", examples=12, max_size=96, capture="aten")
    assert report.passed and report.nodes_compared > 0, report.summary()
