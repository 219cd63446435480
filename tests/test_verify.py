"""``shapecalc verify``: the engine against real forward passes (cpu with thin
models, meta for shape-only sweeps; cuda when the machine has one)."""

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sympy
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from shapecalc.engine import rules
from shapecalc.cli import main
from shapecalc.engine.symbolic import eq, evaluate, floordiv, ge, largest, le, lt, size_symbol, smallest
from shapecalc.verify import prepare, resolve_device, verify

THIN = 1 / 32
H = size_symbol("H")


# ---------------------------------------------------------------------------
# the library


def test_fcn8s_passes_on_cpu_with_a_thin_model():
    report = verify("fcn8s", device="cpu", width=THIN, examples=8, max_size=96)
    assert report.passed, report.summary()
    assert report.examples == 8 and report.nodes_compared >= 8 * 60
    # the smallest sizes and the largest are always among the examples
    assert report.size_range["H"] == (1, 96) and report.size_range["W"] == (1, 96)
    assert report.device == "cpu"


def test_deeplabv3_passes_on_meta():
    report = verify("deeplabv3", device="meta", examples=8)
    assert report.passed, report.summary()
    assert report.size_range["H"][1] == 2048


def test_deeplabv3_passes_on_cpu_with_a_thin_model():
    report = verify("deeplabv3", "H", device="cpu", width=1 / 16, examples=5, max_size=80)
    assert report.passed, report.summary()
    assert "PASS" in report.summary() and "nodes compared" in report.summary()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fcn8s_passes_on_cuda_at_full_width():
    report = verify("fcn8s", device="cuda", examples=10, max_size=512)
    assert report.passed, report.summary()


def test_sizes_outside_the_domain_must_fail():
    model = nn.Sequential(nn.Conv2d(1, 1, 5), nn.MaxPool2d(3, stride=2, ceil_mode=True))
    report = verify(model, "H", examples=6, max_size=40)
    assert report.passed, report.summary()
    # ceil mode lets the 3-wide pool window overhang a 2-wide input: H = 6 runs
    assert report.invalid_checked >= 2 and report.size_range["H"][0] == 6


def _wrong_ceil_mode(monkeypatch):
    """Make the engine forget PyTorch's ceil_mode rounding."""
    original = rules.RULES[nn.MaxPool2d]

    def floor_only(ctx, x):
        m = ctx.module
        return rules.pooling._pool(ctx, x, 2, m.kernel_size, m.stride, m.padding, m.dilation, False)

    monkeypatch.setitem(rules.RULES, nn.MaxPool2d, dataclasses.replace(original, function=floor_only))


def test_a_wrong_domain_is_caught(monkeypatch):
    _wrong_ceil_mode(monkeypatch)
    # floor mode needs H >= 2; torch (ceil mode) runs at H = 1
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, stride=2, ceil_mode=True))
    report = verify(model, "H", examples=10, max_size=100)
    assert not report.passed
    assert report.mismatch.sizes == {"H": 1} and report.mismatch.kind == "ran"
    assert "the engine says these sizes are invalid" in report.summary()


def _wrong_in_a_band(monkeypatch, low, high):
    """Make the engine's MaxPool2d one too large for low <= H <= high."""
    original = rules.RULES[nn.MaxPool2d]

    def off_in_a_band(ctx, x):
        y = original.function(ctx, x)
        n = x.spatial_sizes[0]
        band = sympy.And(sympy.Ge(n, low), sympy.Le(n, high))
        return y.with_spatial([sympy.Piecewise((s + 1, band), (s, True)) for s in y.spatial_sizes])

    monkeypatch.setitem(rules.RULES, nn.MaxPool2d, dataclasses.replace(original, function=off_in_a_band))


def test_a_drawn_mismatch_is_shrunk_to_the_smallest_and_named(monkeypatch):
    _wrong_in_a_band(monkeypatch, 41, 70)
    # the explicit smallest and largest sizes pass; hypothesis must find the band
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(2, stride=2, ceil_mode=True))
    report = verify(model, "H", device="meta", examples=60, max_size=300)
    assert not report.passed
    mismatch = report.mismatch
    assert mismatch.sizes == {"H": 41} and mismatch.kind == "size"
    assert mismatch.node == "_1" and mismatch.op == "MaxPool2d"
    assert mismatch.expected == (1, 1, 22, 22) and mismatch.actual == (1, 1, 21, 21)
    assert "mismatch at H=41 at node '_1' (MaxPool2d)" in report.summary()


def test_an_explicit_mismatch_is_shrunk_too(monkeypatch):
    _wrong_in_a_band(monkeypatch, 20, 10**6)
    model = nn.Sequential(nn.MaxPool2d(2, stride=2, ceil_mode=True))
    report = verify(model, "H", device="meta", examples=8, max_size=500)
    assert report.mismatch.sizes == {"H": 20} and report.mismatch.shrunk_from == {"H": 500}


def test_forward_checker_reports_torch_errors_with_the_node():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3))
    checker = prepare(model, "H", device="cpu")
    outcome = checker.check({"H": 4})  # 4 -> 2 -> the second conv cannot run
    assert not outcome.claimed_valid and not outcome.ran and outcome.mismatch is None
    assert checker.check({"H": 5}).ran


def test_usage_errors():
    with pytest.raises(Exception, match="examples"):
        verify("fcn8s", examples=0)
    with pytest.raises(Exception, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="cuda"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------
# the command line


def test_cli_passes_and_prints_a_summary(capsys):
    assert main(["verify", "fcn8s", "--device", "meta", "--examples", "6", "--max-size", "200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS: fcn8s with input 'HxW' on meta")
    assert "examples: 6 valid sizes" in out and "nodes compared:" in out and "time:" in out


def test_cli_with_a_user_model_file(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent("""
        import torch.nn as nn

        def build(k=3):
            return nn.Sequential(nn.Conv1d(2, 4, k, stride=2), nn.ReLU(), nn.ConvTranspose1d(4, 1, 4, stride=2))
    """))
    code = main(["verify", f"{path}:build", "--device", "cpu", "--examples", "10", "--arg", "k=5", "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"passed": true' in out and '"invalid_checked": 4' in out


def test_cli_exit_1_on_a_mismatch(monkeypatch, tmp_path, capsys):
    _wrong_in_a_band(monkeypatch, 1, 10**6)
    path = tmp_path / "pool.py"
    path.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True))\n")
    assert main(["verify", f"{path}:build", "--device", "meta", "--examples", "5"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["verify", "fcn8s", "--device", "tpu"],
    ["verify", "fcn8s", "--examples", "0"],
    ["verify", "fcn8s", "--width", "-1"],
    ["verify", "nope"],
    ["verify", "fcn8s", "--input", "0"],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_cuda_without_a_gpu_is_a_usage_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["verify", "fcn8s", "--device", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err


def test_import_shapecalc_stays_light():
    code = "import sys, shapecalc, shapecalc.verify, shapecalc._selftest.architectures, shapecalc.cli; " \
           "print(sorted(m for m in ('rich', 'hypothesis') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# the unevaluated relations and clamps (a speedup: sympy's own evaluation
# asks its assumptions system about every floor term)

affine = st.builds(lambda a, b, q, c: floordiv(a * H + b, q) + c,
                   st.integers(0, 3), st.integers(-9, 9), st.integers(1, 4), st.integers(-5, 5))


@given(affine, affine, st.integers(1, 200))
def test_clamps_and_relations_evaluate_like_python(a, b, n):
    env = {H: n}
    x, y = evaluate(a, env), evaluate(b, env)
    assert evaluate(smallest(a, b), env) == min(x, y)
    assert evaluate(largest(a, b, 0), env) == max(x, y, 0)
    assert bool(evaluate(ge(a, b), env)) == (x >= y)
    assert bool(evaluate(le(a, b), env)) == (x <= y)
    assert bool(evaluate(lt(a, b), env)) == (x < y)
    assert bool(evaluate(eq(a, b), env)) == (x == y)


def test_numeric_differences_are_settled_at_once():
    assert ge(H + 1, H) is sympy.true and eq(H, H + 1) is sympy.false
    assert smallest(H + 3, H, H + 1) == H and largest(5, 2) == 5
    assert isinstance(le(H, 5), sympy.Le)  # left to the domain


# ---------------------------------------------------------------------------
# no false passes (issue 10)


def _flat7200():
    """conv k3 with 8 channels, flatten, Linear(7200): runs only where 8*(H-2)*(W-2) = 7200."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(7200, 10))


def _meta_runs(model, h, w) -> bool:
    try:
        model.to("meta")(torch.empty(1, 3, h, w, device="meta"))
    except RuntimeError:
        return False
    return True


def test_comparing_nothing_is_not_a_pass_and_suggests_sizes_that_reach_one(tmp_path, capsys):
    model = _flat7200()
    # torch: no size up to 20 runs, 32x32 does
    assert not any(_meta_runs(model, h, w) for h in range(3, 21) for w in range(3, 21))
    assert _meta_runs(model, 32, 32)
    report = verify(model, "HxW", device="meta", examples=5, max_size=20)
    assert not report.passed and report.exit_code == 2 and report.nodes_compared == 0
    assert "max_size 32" in report.problem and "input '32x32'" in report.problem
    assert "nothing compared" in report.summary() and "FAIL" in report.summary()
    path = tmp_path / "flat.py"
    path.write_text("import torch.nn as nn\n\ndef build():\n"
                    "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(7200, 10))\n")
    assert main(["verify", f"{path}:build", "--device", "meta", "--examples", "5", "--max-size", "20"]) == 2
    assert "input '32x32'" in capsys.readouterr().out
    # with room to reach them, the sizes where torch runs are found and compared
    wide = verify(model, "HxW", device="meta", examples=5, max_size=64)
    assert wide.passed and wide.examples >= 1
    assert all(_meta_runs(model, o.sizes["H"], o.sizes["W"]) for o in wide.outcomes if o.claimed_valid)


def test_a_network_that_never_runs_is_not_a_pass():
    class Never(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 3, 3), nn.MaxPool2d(4)

        def forward(self, x):
            x = self.conv(x)
            return self.pool(x[:, :, :2] + x)

    model = Never()
    assert not any(_meta_runs(model, h, h) for h in range(1, 40))
    report = verify(model, "H", device="meta", examples=5, max_size=40)
    assert not report.passed and report.exit_code == 1
    assert "runs for no H" in report.problem


def test_a_bare_layer_runs_what_was_traced(capsys):
    report = verify(nn.Conv2d(3, 4, 3), "HxW", device="cpu", examples=4, max_size=24)
    assert report.passed, report.summary()
    assert report.examples == 4 and report.nodes_compared == 4 and report.invalid_checked >= 2
    # every invalid size it counts is one torch refuses
    for outcome in report.outcomes:
        if not outcome.claimed_valid:
            h, w = outcome.sizes["H"], outcome.sizes["W"]
            with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
                nn.Conv2d(3, 4, 3)(torch.zeros(1, 3, h, w))
    argv = ["verify", "torch.nn:Conv2d", "--arg", "in_channels=3", "--arg", "out_channels=4",
            "--arg", "kernel_size=3", "--device", "cpu", "--examples", "3", "--max-size", "16"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("PASS")


def _torch_errors():
    """Errors torch itself raises, on cpu and meta: (error, is it about sizes)."""
    def raised(call):
        try:
            call()
        except Exception as error:  # noqa: BLE001 - collecting torch's own errors
            return error
        raise AssertionError("torch ran")

    F = torch.nn.functional
    found = []
    for d in ("cpu", "meta"):
        z = lambda *shape: torch.zeros(*shape, device=d)  # noqa: E731
        for call in (lambda: nn.Conv2d(1, 1, 3).to(d)(z(1, 1, 2, 2)), lambda: nn.MaxPool2d(3)(z(1, 1, 2, 2)),
                     lambda: nn.Linear(400, 3).to(d)(z(1, 16)), lambda: z(1, 1, 4) + z(1, 1, 5),
                     lambda: torch.cat([z(1, 1, 4), z(1, 1, 5)], 1), lambda: z(1, 10).view(1, -1, 4),
                     lambda: F.pad(z(1, 1, 2, 2), (2, 2, 2, 2), mode="reflect"),
                     lambda: nn.BatchNorm2d(1).to(d).train()(z(1, 1, 1, 1)),
                     lambda: F.interpolate(z(1, 1, 2, 2), scale_factor=0.1),
                     lambda: nn.ConvTranspose2d(1, 1, 3, padding=3).to(d)(z(1, 1, 1, 1)),
                     lambda: z(1, 1, 2).unfold(2, 3, 1), lambda: nn.LayerNorm(4).to(d)(z(1, 1, 3)),
                     lambda: F.pad(z(1, 1, 2), (-3, 2)), lambda: z(1, 1, 2)[:, :, 5]):
            found.append((raised(call), True))
        found.append((raised(lambda: F.interpolate(z(1, 1, 0, 3), size=(2, 3))), True))  # meta: a TypeError
        found.append((raised(lambda: nn.Conv2d(1, 1, 3).to(d)(z(1, 1, 5, 5).double())), False))  # dtype
    found.append((raised(lambda: nn.Conv2d(1, 1, 3)(torch.zeros(1, 1, 5, 5)).nope), False))
    found.append((raised(lambda: nn.Conv2d(1, 1, 3)("x")), False))
    found.append((raised(lambda: __import__("no_such_module_here")), False))
    found.append((raised(lambda: torch.ops.aten.nonzero(torch.zeros(3, device="meta"))), False))
    return found


def test_only_torch_size_errors_count_as_refusals():
    from shapecalc.verify import is_size_error

    for error, about_sizes in _torch_errors():
        assert is_size_error(error) is about_sizes, f"{type(error).__name__}: {error}"


def test_an_invalid_size_failing_for_another_reason_is_not_confirmed():
    # double weights, float input: every forward pass fails on dtype, whatever the size
    model = nn.Sequential(nn.Conv2d(1, 1, 5)).double()
    with pytest.raises(RuntimeError, match="type"):
        model(torch.zeros(1, 1, 2, 2))  # an invalid size, refused for its dtype first
    report = verify(model, "H", device="cpu", examples=3, max_size=20)
    assert not report.passed and report.invalid_checked == 0
    assert report.mismatch.kind == "broken" and "not a size error" in report.mismatch.message


def test_time_and_memory_follow_examples_not_max_size():
    # in a subprocess capped at 3 GiB: listing 10**12 sizes could not fit
    code = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        import torch.nn as nn
        from shapecalc.verify import verify
        r = verify(nn.Conv1d(1, 1, 3), "H", device="meta", examples=6, max_size=10**12)
        print(r.passed, r.examples, r.size_range["H"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # torch's meta forward passes ran at the smallest valid size and at 10**12
    assert out.stdout.split(None, 2) == ["True", "6", "(3, 1000000000000)\n"]


def test_size_index_matches_membership():
    from shapecalc.engine.domain import PeriodicSet
    from shapecalc.verify import SizeIndex

    sets = [PeriodicSet.everything(), PeriodicSet.at_least(7),
            PeriodicSet(4, (((3, None),), ((0, None),), (), ((2, 9),))),
            PeriodicSet(3, (((1, 2), (5, None)), (), ((0, 0), (4, 6))))]
    for valid in sets:
        for bound in (1, 2, 5, 13, 40):
            members = [n for n in range(1, bound + 1) if n in valid]
            index = SizeIndex(valid, bound)
            assert [index[i] for i in range(index.count)] == members
            assert [index.rank(n) for n in range(bound + 2)] == [sum(m <= n for m in members) for n in range(bound + 2)]


def test_verify_needs_nothing_beyond_the_main_install():
    # the README installs with `pip install -e .`; verify draws with hypothesis
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(d.replace(" ", "").startswith("hypothesis") for d in project["dependencies"])


class _AssertsMultipleOfFour(nn.Module):
    """A model that checks its own input the way torchvision's ViT does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        torch._assert(x.shape[2] % 4 == 0, "height must be a multiple of 4")
        return self.conv(x)


def test_a_failed_torch_assert_confirms_an_invalid_size():
    # torch itself refuses H = 5 with the model's AssertionError, at every other size too
    model = _AssertsMultipleOfFour()
    with pytest.raises(AssertionError, match="multiple of 4"):
        model(torch.zeros(1, 3, 5, 8))
    model(torch.zeros(1, 3, 8, 8))
    report = verify(model, "H", device="cpu", examples=4, max_size=40)
    assert report.passed, report.summary() if hasattr(report, "summary") else report
    assert report.invalid_checked > 0


def test_a_plain_assert_is_not_a_size_error():
    from shapecalc.verify import is_size_error

    def plain():
        assert 1 == 2, "size"

    try:
        plain()
    except AssertionError as error:
        assert not is_size_error(error)
