"""`shapecalc.testing` and the pytest plugin, in this process and in a fresh
pytest project (pytester), with the claims checked against torch."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from shapecalc.testing import assert_aligned, assert_output_size, assert_valid_for

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


class Small(nn.Module):
    """5x5 conv, 2x2 pool, 3x3 conv: runs for H >= 10, output floor((H - 8)/2)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 5)
        self.p = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.c2(self.p(self.c1(x)))


class UNetStep(nn.Module):
    """Two U-Net-like levels (4x4/2 convs down, 4x4/2 transposed convs up)
    with the skip centre-cropped by half the size difference, as such code
    is often written.  The path keeps positions, so the crop that aligns is
    0; half the difference is 1 when H mod 4 is 2 or 3."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Conv2d(3, 4, 4, stride=2, padding=1)
        self.down2 = nn.Conv2d(4, 4, 4, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        up = self.up2(self.up1(self.down2(self.down1(x))))
        skip = self.skip(x)
        top = (skip.size(2) - up.size(2)) // 2
        left = (skip.size(3) - up.size(3)) // 2
        return up + skip[:, :, top:top + up.size(2), left:left + up.size(3)]


def torch_runs(model: nn.Module, size) -> bool:
    h, w = (size, size) if isinstance(size, int) else size
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w))
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------------
# the assertions


def test_assert_aligned_passes_for_bundled_model():
    report = assert_aligned("fcn8s", input="H")
    assert report.ok and report.checked["crop"] == 3


def test_assert_aligned_message_names_node_offsets_and_size(tmp_path):
    source = (REPO / "segmodels" / "fcn.py").read_text().replace("from ._blocks", "from segmodels._blocks")
    skip = "h[:, :, 9:9 + upscore_pool4.size()[2], 9:9 + upscore_pool4.size()[3]]"
    assert source.count(skip) == 1
    (tmp_path / "fcn10.py").write_text(source.replace(skip, skip.replace("9:9", "10:10")))
    with pytest.raises(AssertionError) as raised:
        assert_aligned(f"{tmp_path / 'fcn10.py'}:fcn8s", input="H")
    message = str(raised.value)
    assert "is not aligned for input H:" in message
    assert "error: getitem_5: crop offset 10 where 9 aligns with upscore_pool4 (H=1)" in message
    assert "valid input: every H >= 1" in message


def _row_centre(pixel: torch.Tensor, x: torch.Tensor) -> float:
    (gradient,) = torch.autograd.grad(pixel, x, retain_graph=True)
    weights = gradient.sum(dim=(0, 1, 3))
    return float((weights * torch.arange(len(weights), dtype=torch.float64)).sum() / weights.sum())


def _up_row_centre(height: int, row: int) -> float:
    """Input row where row ``row`` of the upsampled path sits, measured as the
    centroid of its gradient with constant down kernels and bilinear up
    kernels (symmetric bumps, so the centroid is the centre)."""
    model = UNetStep().double()
    bilinear = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)
    with torch.no_grad():
        for conv in (model.down1, model.down2):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        for conv in (model.up1, model.up2):
            conv.weight.copy_(torch.outer(bilinear, bilinear).expand_as(conv.weight))
            conv.bias.zero_()
    x = torch.zeros(1, 3, height, 8, dtype=torch.float64, requires_grad=True)
    up = model.up2(model.up1(model.down2(model.down1(x))))
    return _row_centre(up[0, 0, row].sum(), x)


def test_assert_aligned_on_size_dependent_crop():
    """shapecalc names the crop, its offset as a function of H, the offset
    that aligns and the smallest H where they differ."""
    with pytest.raises(AssertionError) as raised:
        assert_aligned(UNetStep(), input="H")
    message = str(raised.value)
    assert "error: getitem: crop offset " in message
    assert "where 0 aligns with up2 (H=6: offset 1, needs 0)" in message
    # torch: row r of the upsampled path sits at input row r (so 0 aligns),
    # at every residue of H mod 4; the centre crop starts at 1 for H = 6
    for height in (204, 205, 206, 207):
        assert _up_row_centre(height, 100) == pytest.approx(100.0, abs=1e-9)
    assert (6 - 4 * (6 // 4)) // 2 == 1


def test_assert_output_size():
    assert_output_size("fcn8s", input="HxW", expected="HxW")
    with pytest.raises(AssertionError) as raised:
        assert_output_size(Small(), input="H", expected="H")
    message = str(raised.value)
    assert "Small does not give output H for input H:" in message
    assert "error: c2: output size floor((H - 8)/2) where H is expected (H=10: size 1, expected 10)" in message
    assert Small()(torch.zeros(1, 3, 10, 10)).shape[2:] == (1, 1)


def test_assert_valid_for_agrees_with_torch():
    sizes = [10, 11, (10, 40), (40, 10)]
    assert all(torch_runs(Small(), s) for s in sizes)
    assert_valid_for(Small(), sizes)
    bad = [9, (9, 40), (40, 5)]
    assert not any(torch_runs(Small(), s) for s in bad)
    with pytest.raises(AssertionError) as raised:
        assert_valid_for(Small(), [10, *bad])
    lines = str(raised.value).splitlines()
    assert lines[0] == "Small cannot run at 3 of the given sizes:"
    assert lines[1].startswith("  H=9, W=9: c2: ")
    assert lines[2].startswith("  H=9, W=40: c2: ")
    assert lines[3].startswith("  H=40, W=5: p: ")
    assert lines[-1] == "  valid input: every H >= 10; every W >= 10"


def test_assert_valid_for_rejects_bad_sizes():
    with pytest.raises(TypeError, match=r"sizes\[1\]"):
        assert_valid_for(Small(), [10, 0])
    with pytest.raises(TypeError, match="mix"):
        assert_valid_for(Small(), [(10, 10), (10, 10, 10)])
    with pytest.raises(TypeError, match="nn.Module"):
        assert_aligned(42)


# ---------------------------------------------------------------------------
# a fresh pytest project: the plugin comes from the pytest11 entry point

USER_TESTS = '''
import pytest
import torch.nn as nn

from shapecalc.testing import assert_aligned, assert_output_size, assert_valid_for


class Net(nn.Module):
    """Two paths merged by a crop at ``offset``: aligned at offset 1."""

    def __init__(self, offset=1):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)           # loses one pixel each side
        self.b = nn.Conv2d(3, 4, 1)
        self.offset = offset

    def forward(self, x):
        a = self.a(x)
        b = self.b(x)[:, :, self.offset:self.offset + a.size(2), self.offset:self.offset + a.size(3)]
        return a + b


def test_fixture_passes(shapecalc_check):
    report = shapecalc_check(Net(), input="HxW")
    assert report.ok


@pytest.mark.shapecalc(input="H", expect_output="H")
def test_marker_output_size_fails(shapecalc_check):
    shapecalc_check(Net())


@pytest.mark.shapecalc(input="H")
def test_marker_alignment_fails(shapecalc_check):
    shapecalc_check(Net(offset=2))


def test_assertions():
    assert_aligned(Net(), input="H")
    assert_valid_for(Net(), [3, (3, 7)])


def test_assert_valid_for_fails():
    assert_valid_for(Net(), [2])
'''


def test_fresh_pytest_project_in_subprocess(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    assert "shapecalc check failed for Net at input H:" in out
    assert "error: add_2: output size H - 2 where H is expected (H=3: size 1, expected 3)" in out
    # the crop is the cause; the merge it feeds is not reported a second time
    assert "error: getitem: crop offset 2 where 1 aligns with a (H=3)" in out and "error: add_2: merges" not in out
    assert "Net cannot run at 1 of the given sizes:" in out and "H=2: a: " in out
    # shapecalc's own frames are hidden: the test's line, then the message
    assert "shapecalc/testing.py" not in out and "checking.py" not in out


def test_marker_is_registered_and_validated(pytester):
    pytester.makepyfile(test_marks='''
import pytest

@pytest.mark.shapecalc(input="H", nonsense=1)
def test_bad_marker(shapecalc_check):
    shapecalc_check("fcn8s")
''')
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(errors=1)
    assert "unknown argument(s) nonsense" in result.stdout.str()
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.shapecalc(input='H', expect_output=None, max_shift=None, channels=None)" in markers


# ---------------------------------------------------------------------------
# no false passes (issue 10)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_assert_output_size_fails_on_an_output_without_spatial_axes():
    assert Classifier()(torch.zeros(1, 3, 9, 9)).shape == (1, 5)  # torch: nothing spatial to be H
    with pytest.raises(AssertionError, match=r"output \(1, 5\) has no spatial axes where H is expected"):
        assert_output_size(Classifier(), input="H", expected="H")


def test_assertions_that_would_check_nothing_fail(shapecalc_check):
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert torch_runs(plain, 3)  # torch runs it: what fails is that nothing was aligned
    with pytest.raises(AssertionError, match="nothing to align"):
        assert_aligned(plain, input="H")
    with pytest.raises(pytest.fail.Exception, match="nothing to check"):
        shapecalc_check(plain)
    with pytest.raises(ValueError, match="nothing"):
        assert_valid_for(plain, [])
    assert torch_runs(plain, 8) and plain(torch.zeros(1, 3, 8, 8)).shape[-1] == 6
    with pytest.raises(AssertionError, match="H - 2"):
        assert_output_size(plain, input="H", expected="H")
