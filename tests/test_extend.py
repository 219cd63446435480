"""Rules for a user's own layers and functions, from outside the package
(shapecalc.rule), leaves (--leaf, leaf=) and concrete forward() arguments
(--concrete, concrete_args=), each checked against torch forward passes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sympy
import torch
import torch.nn as nn

import shapecalc
from shapecalc.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
SIZES = [(1, 1), (2, 3), (5, 5), (6, 9), (13, 8), (31, 32)]


@pytest.fixture(autouse=True)
def no_leaked_rules():
    with shapecalc.rule_scope():
        yield


def guide_block(first_line: str) -> str:
    """The fenced code block of docs/guide.md that starts with ``first_line``."""
    blocks = re.findall(r"```(?:python|bash)\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sizes_at(expr, env) -> int:
    return int(sympy.Integer(sympy.sympify(expr).subs(env)))


def torch_shapes(model: nn.Module, h: int, w: int, channels: int = 3, **kwargs):
    """Every leaf module's output shape in a real (meta) forward pass, by module name."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            shapes["output"] = tuple(model(torch.empty(1, channels, h, w, device="meta"), **kwargs).shape)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def assert_matches_torch(analysis, model, sizes=SIZES, **kwargs):
    """Every named layer's and the output's sizes, at each size, as torch computes them."""
    H, W = analysis.symbols
    for h, w in sizes:
        env = {H: h, W: w}
        try:
            actual = torch_shapes(model, h, w, **kwargs)
        except RuntimeError:
            assert not (h in analysis.valid_sizes("H") and w in analysis.valid_sizes("W")), (h, w)
            continue
        assert h in analysis.valid_sizes("H") and w in analysis.valid_sizes("W"), (h, w)
        for layer in analysis.layers:
            if layer.name in actual:
                assert tuple(sizes_at(s, env) for s in layer.tensor.spatial_sizes) == actual[layer.name][2:], \
                    (layer.name, h, w)
        predicted = analysis.outputs["output"]
        assert tuple(sizes_at(s, env) for s in predicted.shape) == actual["output"], (h, w)


# ---------------------------------------------------------------------------
# the guide's example, exactly as docs/guide.md shows it


@pytest.fixture
def halfnet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "halfnet.py").write_text(guide_block("# halfnet.py"))
    return tmp_path / "halfnet.py"


def test_the_guide_example_traces_and_verifies(halfnet, capsys):
    commands = [line.split() for line in guide_block("shapecalc trace halfnet.py").splitlines() if line.strip()]
    trace, verify = commands
    assert trace[:2] == ["shapecalc", "trace"] and verify[:2] == ["shapecalc", "verify"]
    code, out, err = run(trace[1:], capsys)
    assert code == 0, err
    assert "| down | HalfSize |   | ceiling(H/2) x ceiling(W/2) | 2 | 1/2 | 4 |" in out
    code, out, err = run(verify[1:], capsys)
    assert code == 0 and out.startswith("PASS"), out + err
    assert "10 valid sizes" in out


def test_the_guide_example_matches_torch(halfnet, capsys):
    code, out, _ = run(["trace", "halfnet.py:HalfNet", "--input", "HxW", "--format", "json"], capsys)
    assert code == 0
    layers = {layer["name"]: layer for layer in json.loads(out)["layers"]}
    model = shapecalc.load_model("halfnet.py:HalfNet", device="cpu")
    analysis = shapecalc.analyze(model, "HxW")
    assert set(layers) >= {"conv", "down", "head"}
    assert_matches_torch(analysis, model)


def test_without_the_rule_the_guide_module_is_untraceable_and_the_advice_is_what_works(halfnet, capsys):
    halfnet.write_text(halfnet.read_text().replace("@shapecalc.rule(HalfSize)\n", ""))
    code, out, err = run(["trace", "halfnet.py:HalfNet", "--input", "HxW"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "cannot trace" in err and "shapecalc.rule" in err and "leaf" in err
    assert "torch.fx.wrap" not in err


def test_a_leaf_without_a_rule_names_it_and_how_to_add_one(halfnet, capsys):
    halfnet.write_text(halfnet.read_text().replace("@shapecalc.rule(HalfSize)\n", ""))
    code, out, err = run(["trace", "halfnet.py:HalfNet", "--input", "HxW", "--leaf", "halfnet.py:HalfSize"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "at node 'down' (HalfSize)" in err and "@shapecalc.rule(HalfSize)" in err and "--input HxW" in err


# ---------------------------------------------------------------------------
# leaves


class BranchyConv(nn.Conv2d):
    """A conv subclass fx cannot trace (it branches on the size); as a leaf it
    is sized by its base's rule (the MRO)."""

    def forward(self, x):
        if x.shape[2] > 10:
            return super().forward(x)
        return self._conv_forward(x, self.weight, self.bias)


class BranchyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = BranchyConv(3, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.stem(x))


def even_crop(x):
    """Drops a last odd row and column (fx cannot trace the branch)."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return x[:, :, : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    return x


class CropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return even_crop(self.conv(x))


def test_a_leaf_subclass_is_sized_by_its_bases_rule_and_matches_torch():
    with pytest.raises(shapecalc.TraceError, match="shapecalc.rule"):
        shapecalc.analyze(BranchyNet(), "HxW")
    model = BranchyNet()
    analysis = shapecalc.analyze(model, "HxW", leaf=[BranchyConv])
    assert analysis.layer("stem").op == "BranchyConv"
    assert_matches_torch(analysis, model, sizes=[*SIZES, (11, 12), (40, 3)])
    with shapecalc.tracing(leaf=[f"{__name__}:BranchyConv"]):  # the spec form, resolved at trace time
        assert shapecalc.analyze(model, "HxW").outputs["output"] == analysis.outputs["output"]


def test_a_function_with_a_rule_stays_one_node_and_matches_torch():
    @shapecalc.rule(even_crop)
    def even_crop_rule(ctx, x):
        sizes = [shapecalc.floordiv(n, 2) * 2 for n in x.spatial_sizes]
        return shapecalc.with_spatial_sizes(x, sizes, x.geometry)  # a crop from 0 keeps the coordinate map

    model = CropNet()
    analysis = shapecalc.analyze(model, "HxW")
    assert [layer.op for layer in analysis.layers] == ["input", "Conv2d", "even_crop"]
    assert_matches_torch(analysis, model, sizes=[*SIZES, (4, 5), (7, 7)])


def test_a_leaf_function_without_a_rule_is_named():
    with pytest.raises(shapecalc.UnsupportedOpError) as caught:
        shapecalc.analyze(CropNet(), "HxW", leaf=[even_crop])
    assert caught.value.op == "even_crop" and "shapecalc.rule(even_crop)" in str(caught.value)


# ---------------------------------------------------------------------------
# concrete forward() arguments


class Flagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x, flag=True):
        x = self.conv(x)
        if flag:
            x = self.pool(x)
        return x


@pytest.mark.parametrize("flag", [True, False])
def test_concrete_args_trace_the_branch_and_match_torch(flag):
    model = Flagged()
    with pytest.raises(shapecalc.TraceError):
        shapecalc.analyze(model, "HxW")
    analysis = shapecalc.analyze(model, "HxW", concrete_args={"flag": flag})
    assert ("pool" in [layer.name for layer in analysis.layers]) is flag
    assert_matches_torch(analysis, model, flag=flag)


def test_concrete_on_the_command_line(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    model = Flagged()
    for h in (3, 4, 9, 20):
        code, out, err = run(["trace", f"{Path(__file__).stem}:Flagged", "--input", str(h), "--concrete", "flag=False",
                              "--format", "json"], capsys)
        assert code == 0, err
        shape = tuple(int(s) for s in json.loads(out)["outputs"]["output"]["shape"])
        assert shape == torch_shapes(model, h, h, flag=False)["output"]
    code, out, err = run(["trace", f"{Path(__file__).stem}:Flagged", "--input", "H", "--concrete", "nope=1"], capsys)
    assert code == 2 and "concrete argument 'nope'" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, words", [
    (["--leaf", "nocolon"], ["bad --leaf", "package.module:Name"]),
    (["--leaf", "no_such_module_xyz:Thing"], ["bad leaf", "no_such_module_xyz"]),
    (["--concrete", "flag"], ["bad --concrete", "KEY=VALUE"]),
    (["--concrete", "flag=1", "--concrete", "flag=2"], ["bad --concrete 'flag=2'", "flag is given twice"]),
])
def test_bad_leaf_and_concrete_arguments_are_one_line_exit_2(argv, words, capsys):
    code, out, err = run(["trace", "fcn8s", "--input", "H", *argv], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    for word in words:
        assert word in err


def test_concrete_values_are_parsed_never_evaluated(capsys):
    from shapecalc.cli import _tracing, build_parser

    args = build_parser().parse_args(["trace", "m:f", "--input", "H", "--concrete", "a=3", "--concrete", "b=0.5",
                                      "--concrete", "c=True", "--concrete", "d=None",
                                      "--concrete", "e=__import__('os').getcwd()"])
    with _tracing(args) as options:
        assert options.concrete_args == {"a": 3, "b": 0.5, "c": True, "d": None, "e": "__import__('os').getcwd()"}


# ---------------------------------------------------------------------------
# the registration API and the error fields


def test_registering_twice_is_an_error_unless_replace(halfnet):
    class Mine(nn.Module):
        def forward(self, x):
            return x

    def first(ctx, x):
        return x

    def second(ctx, x):
        return x

    shapecalc.rule(Mine)(first)
    with pytest.raises(shapecalc.ShapecalcError, match="already has a rule"):
        shapecalc.rule(Mine)(second)
    shapecalc.rule(Mine, replace=True)(second)
    shapecalc.unregister(Mine)
    with pytest.raises(shapecalc.ShapecalcError, match="no rule to unregister"):
        shapecalc.unregister(Mine)
    with pytest.raises(shapecalc.ShapecalcError, match="already has a rule"):
        shapecalc.rule(nn.Conv2d)(first)  # a built-in rule is not replaced by accident


@pytest.mark.parametrize("call, word", [
    (lambda: shapecalc.rule(), "at least one key"),
    (lambda: shapecalc.rule(int), "not an nn.Module"),
    (lambda: shapecalc.rule(3), "neither"),
    (lambda: shapecalc.rule("not a name"), "method name"),
    (lambda: shapecalc.rule(nn.Identity, spatial_rank=0), "spatial_rank"),
    (lambda: shapecalc.rule(nn.Identity, params=3), "params"),
    (lambda: shapecalc.rule(nn.Identity, replace="yes"), "replace"),
    (lambda: shapecalc.rule(nn.Identity)(lambda: None), "context as its first argument"),
    (lambda: shapecalc.analyze(Flagged(), "H", leaf=[3]), "leaf"),
    (lambda: shapecalc.analyze(Flagged(), "H", concrete_args=["flag"]), "concrete_args"),
])
def test_bad_arguments_name_the_argument(call, word):
    with pytest.raises(shapecalc.ShapecalcError, match=word):
        call()


def test_rule_scope_undoes_registrations():
    from shapecalc.engine import rules

    before = dict(rules.RULES)
    with shapecalc.rule_scope():
        shapecalc.rule(BranchyConv)(lambda ctx, x: x)
        shapecalc.unregister(nn.Conv2d)
    assert rules.RULES == before


def test_errors_carry_fields_and_the_library_does_not_speak_cli(capsys):
    with pytest.raises(shapecalc.SizeError) as caught:
        shapecalc.analyze(nn.Sequential(nn.Conv2d(3, 4, 5)), "3x3", name="tiny")
    error = caught.value
    assert (error.node, error.op, error.model, error.input) == ("_0", "Conv2d", "tiny", "3x3")
    assert str(error).startswith("tiny with input '3x3' at node '_0' (Conv2d): ") and "--" not in str(error)
    assert error.__cause__ is not None and error.reason in str(error)
    with pytest.raises(shapecalc.InputSpecError) as caught:
        from shapecalc.verify import resolve_device

        resolve_device("tpu")
    assert "--device" not in str(caught.value)
