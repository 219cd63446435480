"""`shapecalc check` and `shapecalc.answers.checking.check`: findings name the node,
what the code has, what it needs and an input size; the needed values are
confirmed with torch (autograd on a linearised FCN-8s, real forward passes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from segmodels import fcn8s
from shapecalc import analyze, load_model
from shapecalc.answers.checking import CheckReport, check, check_model
from shapecalc.cli import main

REPO = Path(__file__).resolve().parents[1]
FCN_SOURCE = (REPO / "segmodels" / "fcn.py").read_text()
SKIP3 = "h[:, :, 9:9 + upscore_pool4.size()[2], 9:9 + upscore_pool4.size()[3]]"


def fcn_variant(tmp_path: Path, offset: int) -> str:
    """FCN-8s as a user's file, with the pool3 skip cropped at ``offset``."""
    source = FCN_SOURCE.replace("from ._blocks import", "from segmodels._blocks import")
    assert source.count(SKIP3) == 1
    source = source.replace(SKIP3, SKIP3.replace("9:9", f"{offset}:{offset}"))
    path = tmp_path / f"fcn_crop{offset}.py"
    path.write_text(source)
    return f"{path}:fcn8s"


SMALL = '''
import torch.nn as nn

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 5)
        self.p = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.c2(self.p(self.c1(x)))


class Never(nn.Module):
    """conv k3, then x[:2] + x (sizes must match or broadcast: H - 2 <= 2),
    then a 4x4 pool (needs H - 2 >= 4): no input size works."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.pool = nn.MaxPool2d(4)

    def forward(self, x):
        x = self.conv(x)
        return self.pool(x[:, :, :2] + x)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        y = self.conv(x)[:, :, 1:, 1:]
        return {"plus": y + 1, "times": y * 2}
'''


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "small.py"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def crop8(tmp_path_factory) -> str:
    return fcn_variant(tmp_path_factory.mktemp("crop8"), 8)


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------
# the aligning offset, measured with torch


def _linearised_fcn(height: int) -> tuple[nn.Module, torch.Tensor]:
    """Thin FCN-8s made linear with symmetric kernels (average pools of the
    same geometry, no ReLU, constant conv weights): the gradient of a pixel
    with respect to the input is then a symmetric bump centred on where the
    pixel sits, so its centroid measures the coordinate map."""
    torch.manual_seed(0)
    model = fcn8s(n_class=1, width=1 / 32).eval()
    for name, module in list(model.named_children()):
        if isinstance(module, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(2, stride=2, ceil_mode=True))
        elif isinstance(module, (nn.ReLU, nn.Dropout2d)):
            setattr(model, name, nn.Identity())
        elif isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()
    return model.double(), torch.zeros(1, 3, height, 1, dtype=torch.float64, requires_grad=True)


def _centroid(pixel: torch.Tensor, x: torch.Tensor) -> float:
    (gradient,) = torch.autograd.grad(pixel, x, retain_graph=True)
    weights = gradient.sum(dim=(0, 1, 3)).double()
    assert (weights >= 0).all() and weights.sum() > 0
    rows = torch.arange(len(weights), dtype=torch.float64)
    return float((weights * rows).sum() / weights.sum())


def test_offset_9_aligns_pool3_skip_in_torch():
    model, x = _linearised_fcn(1000)
    seen = {}
    model.score_pool3.register_forward_hook(lambda m, i, o: seen.__setitem__("score_pool3", o))
    model.upscore_pool4.register_forward_hook(lambda m, i, o: seen.__setitem__("upscore_pool4", o))
    model(x)
    i = seen["upscore_pool4"].shape[2] // 2  # interior: the whole receptive field is inside the image
    # a row summed over its columns: the input is one column wide and padding
    # 100 puts it at column ~12 of score_pool3; kernels are separable
    target = _centroid(seen["upscore_pool4"][0, 0, i].sum(), x)
    centres = {c: _centroid(seen["score_pool3"][0, 0, i + c].sum(), x) for c in (8, 9, 10)}
    assert target == pytest.approx(8 * i - 23.5, abs=1e-6)  # upscore_pool4 is x/8 + 47/16 (GEOMETRY.md)
    assert centres[9] == pytest.approx(target, abs=1e-6)
    # each index of score_pool3 is 8 input pixels: crop 8 is a whole stride off
    assert centres[8] == pytest.approx(target - 8, abs=1e-6)
    assert centres[10] == pytest.approx(target + 8, abs=1e-6)


# ---------------------------------------------------------------------------
# the CLI


def test_bundled_fcn8s_passes(capsys):
    code, out, err = run(capsys, "check", "fcn8s", "--input", "H", "--expect-output", "H")
    assert code == 0, out + err
    assert out.startswith("ok: fcn8s with input 'H': 0 errors")
    assert "3 crops" in out and "valid input: every H >= 1" in out


def test_wrong_skip_offset_fails_with_node_offset_and_needed_offset(tmp_path):
    spec = fcn_variant(tmp_path, 8)
    done = subprocess.run([sys.executable, "-m", "shapecalc", "check", spec, "--input", "H"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "error: getitem_5: crop offset 8 where 9 aligns with upscore_pool4 (H=1)"
    assert lines[-1].startswith(f"FAILED: {spec} with input 'H': 1 error, 0 warnings")
    assert done.stderr == ""


def test_wrong_skip_offset_still_runs_in_torch(crop8):
    """The finding is about alignment, not size: the variant runs (so only the
    geometry can catch it) at the counterexample H=1 and elsewhere."""
    model = load_model(crop8, {"n_class": 2, "width": 1 / 32}, device="cpu")
    for height in (1, 37, 64):
        with torch.no_grad():
            assert model(torch.zeros(1, 3, height, height + 3)).shape[2:] == (height, height + 3)


def test_wrong_skip_offset_concrete_input(capsys, crop8):
    code, out, _ = run(capsys, "check", crop8, "--input", "500x375")
    assert code == 1
    assert out.splitlines()[0] == "error: getitem_5: crop offset 8 where 9 aligns with upscore_pool4 (at 500x375)"


def test_json_format(capsys, crop8):
    code, out, _ = run(capsys, "check", crop8, "--input", "HxW", "--expect-output", "HxW", "--format", "json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False and data["errors"] == 1 and data["version"] == 1
    assert data["checked"]["crop"] == 3 and data["checked"]["output"] == 1
    (finding,) = data["findings"]
    assert finding == {"severity": "error", "kind": "crop", "node": "getitem_5", "actual": ["8", "8"],
                       "required": ["9", "9"], "counterexample": {"H": 1},
                       "message": "crop offset 8 where 9 aligns with upscore_pool4 (H=1)"}


def test_expect_output_mismatch_names_output_node_and_counterexample(capsys, small_file):
    code, out, _ = run(capsys, "check", f"{small_file}:Small", "--input", "H", "--expect-output", "H")
    assert code == 1
    first = out.splitlines()[0]
    assert first == "error: c2: output size floor((H - 8)/2) where H is expected (H=10: size 1, expected 10)"
    # torch agrees: at the counterexample (the smallest valid H) the output is 1, not 10
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location("small_for_check", small_file)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Small()(torch.zeros(1, 3, 10, 10)).shape[2:] == (1, 1)
    with pytest.raises(RuntimeError):
        module.Small()(torch.zeros(1, 3, 9, 9))


def test_expected_output_right_for_deeplab(capsys):
    code, out, _ = run(capsys, "check", "deeplabv3", "--input", "HxW", "--expect-output", "HxW")
    assert code == 0, out
    code, out, _ = run(capsys, "check", "deeplabv3", "--input", "512", "--expect-output", "256")
    assert code == 1
    assert out.splitlines()[0] == "error: interpolate_1: output size 512 where 256 is expected (at 512)"


def test_concrete_size_that_cannot_run(capsys, small_file):
    code, out, _ = run(capsys, "check", f"{small_file}:Small", "--input", "9")
    assert code == 1
    assert out.splitlines()[0].startswith("error: c2: the network cannot run at 9: ")


def test_network_that_never_runs(capsys, small_file):
    code, out, _ = run(capsys, "check", f"{small_file}:Never", "--input", "H")
    assert code == 1
    assert out.splitlines()[0].startswith("error: pool: the network runs for no H: ")
    # torch agrees for every small H
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location("never_for_check", small_file)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    for height in range(1, 12):
        with pytest.raises(RuntimeError):
            module.Never()(torch.zeros(1, 3, height, height))


def test_unchecked_crop_is_a_warning_and_every_output_is_checked(capsys, small_file):
    code, out, _ = run(capsys, "check", f"{small_file}:TwoOutputs", "--input", "H")
    assert code == 1  # the only audit was undecided: nothing was checked, so no pass
    assert ("warning: getitem: crop offset 1 not checked: it feeds no merge or output, "
            "so nothing says where it must start") in out.splitlines()
    assert "nothing checked" in out
    code, out, _ = run(capsys, "check", f"{small_file}:TwoOutputs", "--input", "H", "--expect-output", "H")
    assert code == 1
    assert out.splitlines()[:2] == ["error: add: output 'plus' size H - 3 where H is expected (H=3: size 0, expected 3)",
                                    "error: mul: output 'times' size H - 3 where H is expected (H=3: size 0, expected 3)"]


@pytest.mark.parametrize("argv, words", [
    (["--input", "0"], "sizes must be positive"),
    (["--input", "abc+"], "bad --input"),
    (["--input", "H", "--expect-output", "a+"], "bad --expect-output 'a+'"),
    (["--input", "H", "--expect-output", "W"], "does not define"),
    (["--input", "H", "--max-shift", "-1"], "bad --max-shift '-1'"),
    (["--input", "H", "--max-shift", "wide"], "invalid float value"),
    (["--input", "H", "--format", "yaml"], "invalid choice"),
    (["--input", "H", "--channels", "0"], "--channels must be positive"),
    ([], "required: --input"),
])
def test_usage_errors_exit_2(capsys, argv, words):
    code, out, err = run(capsys, "check", "fcn8s", *argv)
    assert code == 2
    assert words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_model_exit_2(capsys):
    code, _, err = run(capsys, "check", "nosuchnet", "--input", "H")
    assert code == 2 and "unknown model" in err


# ---------------------------------------------------------------------------
# the library


def test_check_returns_report_without_printing(capsys, crop8):
    analysis = analyze(load_model(crop8), "H", name="mine")
    report = check(analysis)
    assert isinstance(report, CheckReport) and not report.ok
    assert [f.node for f in report.errors] == ["getitem_5"]
    assert report.errors[0].counterexample == {"H": 1}
    assert report.to_text().endswith("\n") and "FAILED: mine with input 'H'" in report.to_text()
    assert json.loads(json.dumps(report.to_json()))["findings"][0]["node"] == "getitem_5"
    assert capsys.readouterr().out == ""


def test_check_model_accepts_module_and_spec():
    assert check_model("fcn8s", "H", expect_output="H").ok
    with torch.device("meta"):
        model = fcn8s().eval()
    report = check_model(model, "64x48", expect_output=(64, 48))
    assert report.ok and report.model == "FCN8s"


@pytest.mark.parametrize("kwargs", [{"max_shift": -0.5}, {"max_shift": "far"}, {"expect_output": 3.5}])
def test_check_validates_arguments(kwargs):
    from shapecalc import ShapecalcError

    with pytest.raises(ShapecalcError):
        check_model("fcn8s", "H", **kwargs)


# ---------------------------------------------------------------------------
# resampling shifts


def test_resample_shift_is_a_warning_by_default(capsys):
    code, out, _ = run(capsys, "check", "deeplabv3", "--input", "H", "--expect-output", "H")
    assert code == 0, out
    assert out.splitlines()[0] == ("warning: interpolate_1: bilinear resample shifts pixels by 7.5 px (H=16), "
                                   "the most at any valid size up to 1024")
    assert "1 warning" in out.splitlines()[-1]


@pytest.mark.parametrize("argv, code, first", [
    (["--input", "512", "--max-shift", "7"], 1,
     "error: interpolate_1: bilinear resample shifts pixels by 7.5 px where at most 7 is allowed (at 512)"),
    (["--input", "512", "--max-shift", "7.5"], 0, "ok: deeplabv3 with input '512': 0 errors, 0 warnings"),
    (["--input", "512", "--arg", "align_corners=true", "--max-shift", "1"], 1,
     "error: interpolate_1: bilinear (align_corners=True) resample shifts pixels by 15 px where at most 1 is "
     "allowed (at 512)"),
    (["--input", "513", "--arg", "align_corners=true", "--max-shift", "0"], 0,
     "ok: deeplabv3 with input '513': 0 errors, 0 warnings"),
    (["--input", "H", "--arg", "align_corners=true", "--max-shift", "14"], 1,
     "error: interpolate_1: bilinear (align_corners=True) resample shifts pixels by 15 px where at most 14 is "
     "allowed (H=16)"),
])
def test_max_shift(capsys, argv, code, first):
    got, out, err = run(capsys, "check", "deeplabv3", *argv)
    assert got == code, out + err
    assert out.splitlines()[0].startswith(first)


def test_resample_shifts_match_torch():
    """Feature j of DeepLab's classifier sits at input 16j (stride 16, centre
    0); upsampling a ramp of those positions with torch gives, at each output
    pixel, the input position it samples."""
    import torch.nn.functional as F

    analysis = analyze(load_model("deeplabv3"), "512")
    geometry = analysis.layer("classifier").tensor.geometry[0]
    assert (geometry.stride, geometry.center) == (16, 0)
    positions = 16 * torch.arange(32, dtype=torch.float64).view(1, 1, 32)
    pixels = torch.arange(512, dtype=torch.float64)
    sampled = F.interpolate(positions, size=512, mode="linear", align_corners=False)[0, 0]
    # away from the edges (where torch clamps to the border pixel) every pixel is 7.5 px off
    assert torch.allclose((sampled - pixels)[8:-8], torch.full((496,), -7.5, dtype=torch.float64))
    sampled = F.interpolate(positions, size=512, mode="linear", align_corners=True)[0, 0]
    assert float((sampled - pixels).abs().max()) == 15.0
    positions = 16 * torch.arange(33, dtype=torch.float64).view(1, 1, 33)
    sampled = F.interpolate(positions, size=513, mode="linear", align_corners=True)[0, 0]
    assert torch.allclose(sampled, torch.arange(513, dtype=torch.float64))


# ---------------------------------------------------------------------------
# no false passes (issue 10)

CLASSIFIER = '''
import torch.nn as nn

def classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

def plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
'''


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cls") / "cls.py"
    path.write_text(CLASSIFIER)
    return path


def test_expected_spatial_size_on_an_output_without_spatial_axes_fails(capsys, classifier_file):
    # torch: the output is (1, 5), no spatial axis to be H
    out = load_model(f"{classifier_file}:classifier")(torch.empty(1, 3, 17, 17, device="meta"))
    assert out.shape == (1, 5)
    for given, expect in (("H", "H"), ("HxW", "HxW"), ("H", "17")):
        assert main(["check", f"{classifier_file}:classifier", "--input", given, "--expect-output", expect]) == 1
        text = capsys.readouterr().out
        assert "output (1, 5) has no spatial axes" in text and text.startswith("error:")


def test_nothing_to_check_is_not_ok(capsys, classifier_file):
    spec = f"{classifier_file}:plain"
    load_model(spec)(torch.empty(1, 3, 5, 5, device="meta"))  # torch runs it: the failure is not a size
    assert main(["check", spec, "--input", "H"]) == 1
    assert "nothing to check" in capsys.readouterr().out
    # an expectation gives it something to check (torch: H - 4)
    assert load_model(spec)(torch.empty(1, 3, 9, 9, device="meta")).shape[-2:] == (5, 5)
    assert main(["check", spec, "--input", "H", "--expect-output", "5"]) == 1
    capsys.readouterr()
    assert main(["check", spec, "--input", "9", "--expect-output", "5", "--max-shift", "1"]) == 0
    assert "warning: model: max shift 1: no resample to measure" in capsys.readouterr().out


class _PoolThenUpsample(nn.Module):
    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, 2)
        return torch.nn.functional.interpolate(pooled, scale_factor=2, mode="bilinear", align_corners=True)


def _worst_shift_in_torch(h: int) -> float:
    # pooled pixel p covers input pixels 2p, 2p+1: its centre is 2p + 0.5; resample that ramp
    # as the model does and compare where each output pixel samples with where it sits
    pooled = torch.arange(h // 2, dtype=torch.float64) * 2 + 0.5
    sampled = torch.nn.functional.interpolate(pooled.view(1, 1, -1), size=h, mode="linear", align_corners=True)
    return float((sampled.view(-1) - torch.arange(h, dtype=torch.float64)).abs().max())


def test_a_resample_warning_without_a_counterexample_has_no_empty_brackets():
    report = check(analyze(_PoolThenUpsample(), "H"))
    lines = [f.message for f in report.findings if f.kind == "resample"]
    assert lines, "the resample must be reported"
    assert all("()" not in line for line in lines), lines
    # the shift it names is the one torch's interpolation makes (the same at every even H)
    worst = {_worst_shift_in_torch(h) for h in range(2, 200, 2)}
    assert worst == {0.5}
    assert "shifts pixels by 0.5 px" in lines[0]


class _CropThenConv(nn.Module):
    """A crop that feeds no merge: nothing says where it must start."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=2)

    def forward(self, x):
        return self.conv(x[:, :, 1:-1, 1:-1])


def test_a_check_whose_audits_were_all_undecided_is_not_a_pass():
    model = _CropThenConv()
    assert model(torch.zeros(1, 3, 7, 7)).shape == (1, 4, 7, 7)  # torch: the output size is the input's
    report = check(analyze(model, "H"))
    assert not report.ok
    assert any(f.kind == "nothing" for f in report.findings)
    assert report.checked["crop"] == 0
    # with an expectation torch confirms, something was checked and it passes
    expected = check(analyze(model, "H"), expect_output="H")
    assert expected.ok, [f.message for f in expected.findings]
