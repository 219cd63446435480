"""``shapecalc trace`` from the command line: every format, every MODEL and
SPEC form, and every kind of bad input.

Most tests call :func:`shapecalc.cli.main` in-process; a few run
``python -m shapecalc`` in a subprocess to see exactly what a shell sees.
Sizes printed for concrete inputs are compared with meta-device forward
passes, not with the engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest
import sympy
import torch
import torch.fx

from shapecalc import load_model
from shapecalc.cli import main

MODELS = ["fcn8s", "deeplabv3"]
SPECS = {  # --input -> the input sizes the JSON reports
    "H": ["H", "H"],
    "HxW": ["H", "W"],
    "512": ["512", "512"],
    "512x384": ["512", "384"],
    "Hx384": ["H", "384"],
}
FORMATS = ["table", "markdown", "json"]


def run(argv, capsys) -> tuple[int, str, str]:
    """``shapecalc ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse: --help and usage errors
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got {err!r}"
    assert "error" in lines[0]
    return lines[0]


def meta_shapes(model_spec: str, height: int, width: int, kwargs=None) -> dict[str, tuple[int, ...]]:
    """Every tensor node's shape, from a full-width forward pass on meta."""
    graph_module = torch.fx.symbolic_trace(load_model(model_spec, kwargs or {}))
    shapes = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.op != "output" and isinstance(value, torch.Tensor):
                shapes[n.name] = tuple(value.shape)
            return value

    with torch.no_grad():
        Recorder(graph_module).run(torch.empty(1, 3, height, width, device="meta"))
    return shapes


# ---------------------------------------------------------------------------
# formats x models x input specs


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("model", MODELS)
def test_json(model, spec, capsys):
    code, out, err = run(["trace", model, "--input", spec, "--format", "json"], capsys)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["model"] == model
    assert data["input"]["spatial"] == SPECS[spec]
    assert data["outputs"]["output"]["spatial"] == SPECS[spec]
    assert data["layers"][0] == {**data["layers"][0], "name": "x", "spatial": SPECS[spec]}
    if model == "fcn8s":
        assert [(c["offset"], c["required"], c["aligned"]) for c in data["crops"]] == [
            ([str(c)] * 2, [str(c)] * 2, True) for c in (5, 9, 31)]
    else:
        assert data["crops"] == []
    if spec.isdigit() or "x" in spec and all(p.isdigit() for p in spec.split("x")):
        # concrete: every size is a number, and it is the number torch gives
        height, width = map(int, SPECS[spec])
        shapes = meta_shapes(model, height, width)
        assert {layer["name"]: [int(s) for s in layer["spatial"]] for layer in data["layers"]} == {
            name: list(shape[2:]) for name, shape in shapes.items()}
        assert data["domain"]["valid"] == "runs at this size"
    else:
        symbols = sorted({s for s in SPECS[spec] if not s.isdigit()})
        assert sorted(k for k, v in data["domain"].items() if isinstance(v, dict) and "period" in v) == symbols
        assert data["domain"]["valid"] == "; ".join(f"every {s} >= 1" for s in symbols)


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("model", MODELS)
def test_table(model, spec, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich folds long names in narrow terminals
    code, out, err = run(["trace", model, "--input", spec], capsys)
    assert (code, err) == (0, "")
    assert model in out
    for word in ("layer", "op", "size", "valid input"):
        assert word in out
    assert ("pool5" if model == "fcn8s" else "aspp_project_0") in out
    if model == "fcn8s":
        crop_rows = [line for line in out.splitlines() if line.startswith("│ getitem_") and "✓" in line]
        assert [row.split("│")[1].strip() for row in crop_rows] == ["getitem_2", "getitem_5", "getitem_8"]
    height, width = SPECS[spec]
    assert f"input {height} x {width}" in out


@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("model", MODELS)
def test_markdown(model, spec, capsys):
    code, out, err = run(["trace", model, "--input", spec, "--format", "markdown"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"## {model}")
    header = next(i for i, line in enumerate(lines) if line.startswith("| layer |"))
    assert set(lines[header + 1]) <= set("|-: ")
    rows = [line for line in lines if line.startswith("| ") and line.endswith(" |")]
    names = [row.split("|")[1].strip() for row in rows]
    assert ("pool5" if model == "fcn8s" else "aspp_project_0") in names
    assert any(line.startswith("- ") and "valid" in line for line in lines)
    if model == "fcn8s":
        assert "### Crops" in out
        crop_rows = [row for row in rows if row.split("|")[1].strip() in ("getitem_2", "getitem_5", "getitem_8")
                     and "✓" in row]
        assert len(crop_rows) == 3


def test_table_is_the_default_format(capsys):
    default = run(["trace", "fcn8s", "--input", "H"], capsys)
    table = run(["trace", "fcn8s", "--input", "H", "--format", "table"], capsys)
    assert default == table and default[0] == 0


# ---------------------------------------------------------------------------
# --arg and --channels


def test_arg_passes_keyword_arguments(capsys):
    code, out, _ = run(["trace", "deeplabv3", "--arg", "backbone=resnet34", "--arg", "output_stride=8",
                        "--arg", "n_class=5", "--input", "H", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    names = [layer["name"] for layer in data["layers"]]
    assert "backbone_layer3_5_conv1" in names and "backbone_layer3_6_conv1" not in names  # resnet34: 6 blocks
    aspp_input = names[names.index("aspp_b0_0") - 1]
    assert next(layer for layer in data["layers"] if layer["name"] == aspp_input)["spatial"] == ["ceiling(H/8)"] * 2
    assert data["outputs"]["output"]["shape"] == ["1", "5", "H", "H"]


def test_arg_values_are_typed_without_eval(capsys):
    code, out, _ = run(["trace", "fcn8s", "--arg", "n_class=3", "--arg", "width=0.25", "--input", "64",
                        "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["outputs"]["output"]["shape"] == ["1", "3", "64", "64"]
    conv = next(layer for layer in data["layers"] if layer["name"] == "conv1_1")
    assert conv["spatial"] == ["262", "262"]


def test_channels_sets_the_input_channels(tmp_path, capsys):
    path = tmp_path / "relu_first.py"
    path.write_text(textwrap.dedent("""
        import torch.nn as nn

        def net():
            # nothing before the conv says how many channels come in
            return nn.Sequential(nn.ReLU(), nn.Conv2d(5, 2, 3, padding=1))
    """))
    code, out, _ = run(["trace", f"{path}:net", "--input", "H", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["input"]["channels"] == 5
    code, out, _ = run(["trace", f"{path}:net", "--input", "H", "--channels", "5", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["input"]["channels"] == 5
    assert json.loads(out)["layers"][0]["op"] == "input"


def test_channels_that_the_model_cannot_take(capsys):
    code, out, err = run(["trace", "fcn8s", "--input", "H", "--channels", "5"], capsys)
    assert code == 1 and out == ""
    line = assert_one_error_line(err)
    assert "conv1_1" in line and "3 input channels" in line


# ---------------------------------------------------------------------------
# MODEL forms outside the bundle

NET_SOURCE = textwrap.dedent("""
    import torch.nn as nn

    class SmallNet(nn.Module):
        def __init__(self, stride=2):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=stride, padding=1)
            self.pool = nn.MaxPool2d(2, ceil_mode=True)

        def forward(self, x):
            return self.pool(self.conv(x))

    def make(stride=2):
        return SmallNet(stride=stride)

    def raising():
        raise RuntimeError("the factory failed\\nwith a second line")

    def not_a_module():
        return 42
""")


@pytest.fixture
def package(tmp_path, monkeypatch):
    name = f"shapecalc_cli_test_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "nets.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}.nets"


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "models" / "net.py"
    path.parent.mkdir()
    path.write_text(NET_SOURCE)
    return path


def test_package_module_factory(package, capsys):
    code, out, _ = run(["trace", f"{package}:make", "--input", "H", "--format", "json"], capsys)
    assert code == 0
    assert json.loads(out)["outputs"]["output"]["spatial"] == ["ceiling(H/4)"] * 2


def test_package_module_class_with_arg(package, capsys):
    code, out, _ = run(["trace", f"{package}:SmallNet", "--arg", "stride=1", "--input", "Hx9", "--format", "json"],
                       capsys)
    assert code == 0
    assert json.loads(out)["outputs"]["output"]["spatial"] == ["ceiling(H/2)", "5"]


def test_file_factory(net_file, capsys):
    code, out, _ = run(["trace", f"{net_file}:make", "--input", "HxW", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["model"] == f"{net_file}:make"
    assert data["outputs"]["output"]["spatial"] == ["ceiling(H/4)", "ceiling(W/4)"]


def test_relative_file_factory(net_file, capsys, monkeypatch):
    monkeypatch.chdir(net_file.parent.parent)
    code, out, _ = run(["trace", "models/net.py:SmallNet", "--input", "7", "--format", "json"], capsys)
    assert code == 0
    assert json.loads(out)["outputs"]["output"]["spatial"] == ["2", "2"]


# ---------------------------------------------------------------------------
# bad input: one line on stderr, nothing on stdout, exit 2 (1 for a finding)

BAD_MODULE = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    class Fourier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.fft.fft2(self.conv(x)).real

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).nonzero()  # its size depends on the values: no size rule can give it

    class Valid(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 5)

        def forward(self, x):
            return self.conv(x)

    class Never(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return torch.cat([x, self.conv(x)], 1)

    def raising():
        raise RuntimeError("the factory failed\\nwith a second line")

    def not_a_module():
        return 42

    def broken_import_time():
        return None
""")


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(BAD_MODULE)
    return path


BAD_CASES = [
    # (argv after "trace", exit status, words the line must contain)
    (["fcn8s", "--input", "0"], 2, ["positive"]),
    (["fcn8s", "--input", "abc+"], 2, ["abc+"]),
    (["fcn8s", "--input", ""], 2, ["--input"]),
    (["fcn8s", "--input", "   "], 2, ["--input"]),
    (["fcn8s", "--input", "99999999999"], 2, ["too large"]),
    (["fcn8s", "--input", "-3"], 2, ["-3"]),
    (["fcn8s", "--input", "1e3"], 2, ["1e3"]),
    (["fcn8s", "--input", "1x2x3x4"], 2, ["at most 3"]),
    (["fcn8s", "--input", "HxWxD"], 2, ["3 sizes", "2 spatial axes"]),
    (["fcn8s", "--input", "floor"], 2, ["floor"]),
    (["fcn8s", "--input", "__import__('os')"], 2, ["--input"]),
    (["nosuchmodel", "--input", "H"], 2, ["unknown model", "nosuchmodel"]),
    (["no_such_package_xyz.sub:make", "--input", "H"], 2, ["no_such_package_xyz"]),
    (["fcn8s", "--input", "H", "--format", "xml"], 2, ["xml"]),
    (["fcn8s", "--input", "H", "--arg", "width"], 2, ["--arg", "width"]),
    (["fcn8s", "--input", "H", "--arg", "=3"], 2, ["--arg"]),
    (["fcn8s", "--input", "H", "--arg", "width=abc"], 2, ["width"]),
    (["fcn8s", "--input", "H", "--arg", "depth=3"], 2, ["depth"]),
    (["deeplabv3", "--input", "H", "--arg", "backbone=resnet7"], 2, ["resnet7"]),
    (["fcn8s", "--input", "H", "--channels", "0"], 2, ["--channels"]),
    (["fcn8s", "--input", "H", "--channels", "x"], 2, ["--channels"]),
    (["fcn8s"], 2, ["--input"]),
]


@pytest.mark.parametrize("argv, status, words", BAD_CASES, ids=[" ".join(c[0]) or "empty" for c in BAD_CASES])
def test_bad_input(argv, status, words, capsys):
    code, out, err = run(["trace", *argv], capsys)
    assert code == status and out == ""
    line = assert_one_error_line(err)
    for word in words:
        assert word in line


FILE_CASES = [
    # (factory, --input, exit status, words)
    ("missing.py:make", "H", 2, ["no such file", "missing.py"]),
    ("{file}:nothere", "H", 2, ["nothere"]),
    ("{file}:raising", "H", 2, ["raising", "the factory failed"]),
    ("{file}:not_a_module", "H", 2, ["not an nn.Module"]),
    ("{file}:broken_import_time", "H", 2, ["not an nn.Module"]),
    ("{file}:DataDependent", "H", 2, ["cannot trace", "control flow"]),
    ("{file}:Fourier", "H", 2, ["fft", "no size rule", "shapecalc/engine/rules/"]),
    ("{file}:Patches", "H", 2, ["nonzero", "no size rule"]),
    ("{file}:Valid", "4", 1, ["conv", "4"]),
    ("{file}:Valid", "4x100", 1, ["conv"]),
    ("{file}:Never", "H", 1, ["cat", "H vs H - 2"]),
]


@pytest.mark.parametrize("model, spec, status, words", FILE_CASES, ids=[f"{c[0]} {c[1]}" for c in FILE_CASES])
def test_bad_model_file(model, spec, status, words, bad_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["trace", model.format(file=bad_file), "--input", spec], capsys)
    assert code == status
    if status == 1 and spec[0].isdigit():
        # a concrete size that cannot run: the explanation is the result (tests/test_sizes.py checks it)
        assert out.startswith("cannot run:")
    else:
        assert out == ""
    line = assert_one_error_line(err)
    for word in words:
        assert word in line
    if status == 1 or "no size rule" in words:
        assert "node" in line  # the node that failed is named


def test_a_model_that_runs_at_no_size_is_a_finding(bad_file, capsys):
    code, out, _ = run(["trace", f"{bad_file}:Valid", "--input", "H", "--format", "json"], capsys)
    assert code == 0
    assert json.loads(out)["domain"]["valid"] == "every H >= 5"


# ---------------------------------------------------------------------------
# help


def test_program_help(capsys):
    code, out, err = run(["--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: shapecalc") and "trace" in out


def test_trace_help(capsys):
    code, out, err = run(["trace", "--help"], capsys)
    assert code == 0 and err == ""
    for word in ("usage: shapecalc trace", "MODEL", "--input", "SPEC", "--format", "table", "markdown", "json",
                 "--arg", "KEY=VALUE", "--channels", "package.module:factory", "path/to/file.py:factory"):
        assert word in out
    usage = out.split("\n\n")[0]
    assert "MODEL" in usage and "--input SPEC" in usage


def test_no_command_prints_usage_and_exits_2(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and out == "" and "usage: shapecalc" in err


# ---------------------------------------------------------------------------
# what a shell sees


def shell(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shapecalc", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_python_dash_m_json():
    done = shell("trace", "fcn8s", "--input", "H", "--format", "json")
    assert done.returncode == 0 and done.stderr == ""
    data = json.loads(done.stdout)
    assert [c["required"] for c in data["crops"]] == [["5", "5"], ["9", "9"], ["31", "31"]]
    assert data["domain"]["valid"] == "every H >= 1"


def test_python_dash_m_error(bad_file, tmp_path):
    # a factory whose own message spans two lines still gives one line
    done = shell("trace", f"{bad_file}:raising", "--input", "H", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    line = assert_one_error_line(done.stderr)
    assert line.startswith("shapecalc trace: error: ") and "the factory failed with a second line" in line


# ---------------------------------------------------------------------------
# model code that exits or prints: every command loads models the same way

USER_CODE = textwrap.dedent("""
    import sys
    import torch.nn as nn

    print("user code: imported")


    class Chatty(nn.Module):
        def __init__(self):
            super().__init__()
            print("user code: built")
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            print("user code: forward")
            return self.conv(x)


    class ExitsInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            sys.exit(0)


    def exits():
        raise SystemExit(0)


    def interrupted():
        raise KeyboardInterrupt
""")


@pytest.fixture
def user_code(tmp_path):
    (tmp_path / "user.py").write_text(USER_CODE)
    (tmp_path / "exit_at_import.py").write_text("import sys\nsys.exit(0)\n")
    return tmp_path


def command_argv(command: str, model: str, out_dir) -> list[str]:
    """The cheapest complete invocation of ``command`` on ``model``."""
    return {
        "trace": ["trace", model, "--input", "H", "--format", "json"],
        "check": ["check", model, "--input", "H", "--format", "json"],
        "verify": ["verify", model, "--device", "meta", "--examples", "2", "--format", "json"],
        "docs": ["docs", model, "--out", str(out_dir)],
    }[command]


COMMANDS = ["trace", "check", "verify", "docs"]
EXITS = {  # MODEL -> the words that name it in the error
    "{dir}/exit_at_import.py:make": ["exit_at_import.py", "sys.exit(0)"],
    "{dir}/user.py:exits": ["user.py:exits", "sys.exit(0)"],
    "builtins:exit": ["builtins:exit", "sys.exit(None)"],
    "{dir}/user.py:ExitsInForward": ["ExitsInForward", "sys.exit(0)"],
}


@pytest.mark.parametrize("model", list(EXITS))
@pytest.mark.parametrize("command", COMMANDS)
def test_model_code_that_exits_is_an_error(command, model, user_code, capsys):
    # SystemExit(0) used to end shapecalc with status 0 and no output: CI passed
    out_dir = user_code / "pages"
    code, out, err = run(command_argv(command, model.format(dir=user_code), out_dir), capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err.replace("user code: imported\n", ""))
    assert line.startswith(f"shapecalc {command}: error: ")
    for word in EXITS[model]:
        assert word in line
    assert not out_dir.exists()


def test_an_exit_no_loader_sees_is_an_error(user_code, capsys, monkeypatch):
    # verify runs the real module at many sizes: an exit there still names the model
    import shapecalc.verify

    def exiting(self, sizes):
        raise SystemExit(3)

    monkeypatch.setattr(shapecalc.verify.ForwardChecker, "check", exiting)
    code, out, err = run(command_argv("verify", "fcn8s", None), capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert "fcn8s" in line and "sys.exit(3)" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_keyboard_interrupt_in_model_code_stays_130(command, user_code, capsys):
    code, out, err = run(command_argv(command, f"{user_code}/user.py:interrupted", user_code / "pages"), capsys)
    assert code == 130 and out == ""
    assert err.splitlines()[-1] == "shapecalc: interrupted"


@pytest.mark.parametrize("command", COMMANDS)
def test_model_code_output_goes_to_stderr(command, user_code, capsys):
    out_dir = user_code / "pages"
    code, out, err = run(command_argv(command, f"{user_code}/user.py:Chatty", out_dir), capsys)
    assert code in (0, 1), err  # check may report a finding; either way stdout is only shapecalc's
    if command == "docs":
        # the page and its domain picture; nothing the model printed
        assert out == f"wrote {out_dir / 'Chatty.md'}\nwrote {out_dir / 'Chatty.svg'}\n"
    else:
        data = json.loads(out)
        assert isinstance(data, dict)
    for said in ("user code: imported", "user code: built", "user code: forward"):
        assert said in err
    assert "user code" not in out


def test_model_code_output_in_a_shell_keeps_json_valid(user_code):
    done = shell("trace", f"{user_code}/user.py:Chatty", "--input", "16", "--format", "json")
    assert done.returncode == 0
    data = json.loads(done.stdout)
    # the sizes are torch's: a meta forward pass of the same module
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, device="meta")
    assert data["outputs"]["output"]["shape"] == [str(n) for n in conv(torch.empty(1, 3, 16, 16, device="meta")).shape]
    assert "user code: forward" in done.stderr


# ---------------------------------------------------------------------------
# paths that are not Python files, and user text that is far too long

NOT_PYTHON = [
    # (MODEL, words the line must contain)
    ("/etc/passwd:x", ["/etc/passwd", "not a Python file"]),
    ("{dir}:make", ["is a folder"]),
    ("{dir}/notes.txt:make", ["notes.txt", "not a Python file"]),
    ("a/" * 50_000 + "net.py:make", ["no such file"]),
]


@pytest.mark.parametrize("model, words", NOT_PYTHON, ids=["passwd", "folder", "txt", "long-path"])
def test_a_model_path_that_is_not_a_python_file(model, words, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("import sys\n")
    code, out, err = run(["trace", model.format(dir=tmp_path), "--input", "H"], capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert len(line) < 300
    for word in words:
        assert word in line


LONG = 100_000
LONG_CASES = [
    # (argv, words the line must contain); every line is short whatever was typed
    (["trace", "fcn8s", "--input", "H" * LONG], ["--input", "characters"]),
    (["trace", "fcn8s", "--input", "Hx" * (LONG // 2) + "H"], ["--input"]),
    (["trace", "fcn8s", "--input", "1x" * (LONG // 2) + "1"], ["--input"]),
    (["trace", "fcn8s", "--input", "H" * 33], ["longer than 32"]),
    (["trace", "fcn8s", "--input", "H" * 33 + "xW"], ["longer than 32"]),
    (["check", "fcn8s", "--input", "W" * LONG], ["--input"]),
    (["check", "fcn8s", "--input", "H", "--expect-output", "H" * LONG], ["bad --expect-output"]),
    (["verify", "fcn8s", "--input", "W" * LONG], ["--input"]),
    (["docs", "fcn8s", "--input", "W" * LONG], ["--input"]),
    (["docs", "fcn8s", "--sizes", "1," * LONG], ["--sizes"]),
    (["docs", "fcn8s", "--sizes", "1,2,3,4,5,6,7,8,9"], ["at most 8"]),
    (["trace", "m" * LONG, "--input", "H"], ["unknown model"]),
    (["trace", "m" * LONG + ":make", "--input", "H"], ["cannot import"]),
    (["trace", "fcn8s", "--input", "H", "--arg", "w" * LONG], ["--arg"]),
    (["trace", "fcn8s", "--input", "H", "--arg", "width=" + "w" * LONG], ["width"]),
    (["trace", "deeplabv3", "--input", "H", "--arg", "backbone=" + "r" * LONG], ["backbone"]),
]


@pytest.mark.parametrize("argv, words", LONG_CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(LONG_CASES)])
def test_long_user_text_gives_a_short_error(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # docs would write under docs/sizes
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert len(line) < 500, len(line)
    for word in words:
        assert word in line
    assert not (tmp_path / "docs").exists()


def test_sizes_are_bounded_by_the_spatial_axes_torch_has():
    # Conv3d is the widest spatial convolution torch has; --input allows that many sizes
    from shapecalc.capture.specs import MAX_SIZES, parse_input_spec

    assert MAX_SIZES == max(n for n in range(1, 5) if hasattr(torch.nn, f"Conv{n}d"))
    assert len(parse_input_spec("D,H,W").sizes) == MAX_SIZES
    assert len(parse_input_spec("H" * 32).symbols) == 1


# ---------------------------------------------------------------------------
# hints

HINTS = [
    (["trace", "fcn8", "--input", "H"], ["did you mean fcn8s?"]),
    (["trace", "deeplab3", "--input", "H"], ["did you mean deeplabv3?"]),
    (["trace", "fcn8s", "--input", "x"], ["'x' is the separator"]),
    (["trace", "fcn8s", "--input", "Hx"], ["'x' is the separator"]),
    (["trace", "fcn8s", "--input", "1,,2"], ["empty size"]),
    (["trace", "fcn8s", "--input", "H", "--arg", "width=1", "--arg", "width=0.5"], ["bad --arg 'width=0.5'", "width is given twice"]),
    (["check", "fcn8s", "--input", "H", "--arg", "n_class=2", "--arg", " n_class = 3"], ["bad --arg", "n_class is given twice"]),
    (["verify", "fcn8s", "--arg", "width=1", "--arg", "width=1"], ["bad --arg", "width is given twice"]),
]


@pytest.mark.parametrize("argv, words", HINTS, ids=[" ".join(c[0])[:40] for c in HINTS])
def test_hints(argv, words, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    for word in words:
        assert word in line


def test_factory_name_hint(net_file, capsys):
    code, _, err = run(["trace", f"{net_file}:mak", "--input", "H"], capsys)
    assert code == 2 and "did you mean make?" in assert_one_error_line(err)


def test_bad_arguments_fail_before_torch_loads():
    script = textwrap.dedent("""
        import sys
        from shapecalc.cli import main

        argvs = [
            ["trace", "fcn8s", "--input", "H+"],
            ["trace", "fcn8s", "--input", "x"],
            ["check", "fcn8s", "--input", "H" * 200],
            ["verify", "fcn8s", "--input", "0"],
            ["docs", "fcn8s", "--input", "1e3"],
            ["docs", "fcn8s", "--sizes", "a"],
            ["trace", "fcn8s", "--input", "H", "--arg", "width=1", "--arg", "width=2"],
            ["trace", "fcn8s", "--input", "H", "--arg", "width"],
        ]
        print([main(argv) for argv in argvs], "torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[2, 2, 2, 2, 2, 2, 2, 2] False", done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 8


def test_an_output_without_spatial_axes_is_named_with_its_shape(tmp_path, capsys):
    # LeNet's logits: the summary gives the shape torch produces, not an empty size
    source = textwrap.dedent("""
        import torch.nn as nn
        def lenet():
            return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 10))
    """)
    path = tmp_path / "lenet_model.py"
    path.write_text(source)
    model = load_model(f"{path}:lenet")
    shape = tuple(model.to_empty(device="meta")(torch.empty(1, 1, 32, 32, device="meta")).shape)
    code, out, _ = run(["trace", f"{path}:lenet", "--input", "H"], capsys)
    assert code == 0
    assert f"output: ({', '.join(map(str, shape))}), no spatial axes" in out


# ---------------------------------------------------------------------------
# --capture: the front end (fx, aten, auto) and the bounds on the ATen exploration

#: the cheapest argv of every command that analyses a model, before any --capture flag
CAPTURE_COMMANDS = {
    "trace": ["trace", "fcn8s", "--input", "H"],
    "cost": ["cost", "fcn8s", "--input", "H"],
    "verify": ["verify", "fcn8s", "--device", "meta", "--examples", "2"],
    "check": ["check", "fcn8s", "--input", "H"],
    "sizes": ["sizes", "fcn8s"],
    "docs": ["docs", "fcn8s", "--out", "pages"],
    "export-spec": ["export-spec", "fcn8s", "--input", "H"],
}
BAD_CAPTURE = [
    # (flags, words the one line must contain)
    (["--capture", "nope"], ["--capture", "nope"]),
    (["--capture", ""], ["--capture"]),
    (["--max-captures", "0"], ["--max-captures", "'0'"]),
    (["--max-captures", "two"], ["--max-captures", "two"]),
    (["--max-seconds", "-1"], ["--max-seconds", "-1"]),
    (["--max-seconds", "nan"], ["--max-seconds", "nan"]),
    (["--capture", "aten", "--max-seconds", "inf"], ["--max-seconds", "inf"]),
    (["--max-captures", "3"], ["--max-captures", "--capture aten"]),  # a bound on nothing under fx
    (["--capture", "fx", "--max-seconds", "5"], ["--max-seconds", "--capture auto"]),
    (["--capture", "aten", "--leaf", "torch.nn:Conv2d"], ["--leaf", "torch.fx", "--capture aten"]),  # fx's options
    (["--capture", "aten", "--concrete", "n=1"], ["--concrete", "torch.fx"]),
]


@pytest.mark.parametrize("command", list(CAPTURE_COMMANDS))
def test_every_analysing_command_documents_the_capture_flags(command, capsys):
    code, out, err = run([command, "--help"], capsys)
    assert code == 0 and err == ""
    text = " ".join(out.split())  # argparse wraps help at the terminal's width
    for word in ("--capture {fx,aten,auto}", "--max-captures N", "--max-seconds S", "(torch.fx, fast; the default)",
                 "symbolic tracing"):
        assert word in text, word
    from shapecalc.capture import regions

    # the defaults are spelled out in the help (parsing does not import torch): they are the exploration's own
    assert f"(default: {regions.MAX_CAPTURES})" in text and f"(default: {regions.MAX_SECONDS:g})" in text


@pytest.mark.parametrize("flags, words", BAD_CAPTURE, ids=[" ".join(f) for f, _ in BAD_CAPTURE])
@pytest.mark.parametrize("command", list(CAPTURE_COMMANDS))
def test_bad_capture_flags_are_one_line_and_exit_2(command, flags, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # docs would write pages
    code, out, err = run([*CAPTURE_COMMANDS[command], *flags], capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert line.startswith(f"shapecalc {command}: error: "), line
    for word in words:
        assert word in line
    assert not (tmp_path / "pages").exists()


def test_bad_capture_flags_fail_before_torch_loads():
    script = textwrap.dedent("""
        import sys
        from shapecalc.cli import main

        def status(argv):
            try:
                return main(argv)
            except SystemExit as stop:  # argparse's own usage errors
                return stop.code

        argvs = [["trace", "fcn8s", "--input", "H", "--capture", "jit"],
                 ["check", "fcn8s", "--input", "H", "--max-captures", "4"],
                 ["sizes", "fcn8s", "--capture", "aten", "--max-seconds", "0"]]
        print([status(argv) for argv in argvs], "torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[2, 2, 2] False", done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 3


_capture_runs: dict = {}


def cached_run(argv: tuple, columns: str = "120") -> tuple[int, str, str]:
    """``shapecalc ARGV`` in-process, once per argv (an ATen capture of fcn8s costs seconds)."""
    if argv not in _capture_runs:
        import contextlib
        import io
        import os

        out, err = io.StringIO(), io.StringIO()
        before = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = columns
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(argv))
        finally:
            if before is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = before
        _capture_runs[argv] = (code, out.getvalue(), err.getvalue())
    return _capture_runs[argv]


def module_output_shapes(model_spec: str, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Each submodule's output shape in a meta forward pass of the model itself (forward hooks)."""
    model = load_model(model_spec)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(
                lambda module, args, out, name=name: shapes.__setitem__(name, tuple(out.shape))
                if isinstance(out, torch.Tensor) else None)
    with torch.no_grad():
        output = model(torch.empty(1, 3, height, width, device="meta"))
    shapes[""] = tuple(output.shape)
    return shapes


def test_capture_aten_on_fcn8s_gives_the_sizes_and_crops_of_fx_and_torch():
    code, out, err = cached_run(("trace", "fcn8s", "--input", "H", "--capture", "aten", "--format", "json"))
    assert (code, err) == (0, "")
    aten = json.loads(out)
    code, out, _ = cached_run(("trace", "fcn8s", "--input", "H", "--format", "json"))
    fx = json.loads(out)
    assert (aten["capture"], fx["capture"]) == ("aten", "fx")
    assert aten["outputs"] == fx["outputs"] and aten["domain"]["valid"] == fx["domain"]["valid"] == "every H >= 1"
    # the crops as coded and as derived: 5, 9 and 31 pixels on both axes, exactly aligned for every H
    for data in (aten, fx):
        assert [(c["offset"], c["required"], c["aligned"]) for c in data["crops"]] == [
            ([str(c)] * 2, [str(c)] * 2, True) for c in (5, 9, 31)]
    assert [c["name"] for c in aten["crops"]] != [c["name"] for c in fx["crops"]]  # ATen node names, not fx's
    assert fx["pieces"] == [] and fx["pieces_complete"] is None
    assert aten["pieces_complete"] is True and [p["runs"] for p in aten["pieces"]] == [True]
    # every layer names its module; the last layer of each module has the size torch gives that module's output
    assert all(isinstance(layer["module"], str) for layer in aten["layers"] + fx["layers"])
    last = {layer["module"]: layer for layer in aten["layers"] if layer["module"]}
    assert {"conv1_1", "pool5", "score_pool4", "upscore8"} <= set(last)
    H = sympy.Symbol("H", integer=True, positive=True)
    for height in (1, 31, 97):
        shapes = module_output_shapes("fcn8s", height, height)
        for module, layer in last.items():
            sizes = [int(sympy.sympify(s, locals={"H": H}).subs(H, height)) for s in layer["spatial"]]
            assert sizes == list(shapes[module][2:]), (module, height)
    fx_modules = {layer["name"]: layer["module"] for layer in fx["layers"]}
    assert fx_modules["conv1_1"] == "conv1_1" and fx_modules["x"] == ""


def test_capture_aten_crop_offsets_are_where_torch_reads():
    """The ATen graph's own crop (a slice per axis) of score_pool4's output,
    run by torch: the values it passes on are the source's from offset 5."""
    import shapecalc

    analysis = shapecalc.analyze(load_model("fcn8s", {"width": 1 / 16}, device="cpu").eval(), "H", capture="aten")
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            values[n.name] = super().run_node(n)
            return values[n.name]

    nodes = {n.name: n for n in analysis.graph_module.graph.nodes}
    with torch.no_grad():
        Recorder(analysis.graph_module).run(torch.randn(1, 3, 75, 75))
    for crop, offset in zip(analysis.crops, (5, 9, 31)):
        source = nodes[crop.name]
        while source.target is torch.ops.aten.slice.Tensor:
            source = source.args[0]
        cropped, whole = values[crop.name], values[source.name]
        h, w = cropped.shape[2:]
        assert crop.offset == (offset, offset)
        assert torch.equal(cropped, whole[:, :, offset:offset + h, offset:offset + w]), crop.name


def test_capture_aten_table_names_the_front_end_modules_and_pieces(even_only, capsys, monkeypatch):
    # a cheap capture (fcn8s's ATen table is laid out at 80 and 120 columns in test_report_width)
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = run(["trace", even_only, "--input", "H", "--capture", "aten"], capsys)
    assert (code, err) == (0, "")
    # the title may wrap where pytest's temporary path is long (under xdist): read it whole
    title = " ".join(line.strip() for line in out.split("┏")[0].splitlines() if line.strip())
    assert title == f"{even_only} — input H x H — aten capture", title
    assert max(len(line) for line in out.splitlines()) <= 120
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                              for line in out.splitlines() if line.startswith("│ "))}
    assert rows["convolution"][:2] == ["conv", "aten.convolution"] and rows["getitem"][:2] == ["pool", "getitem"]
    model = load_model(even_only)
    with pytest.raises(ValueError) as raised:
        model(torch.empty(1, 3, 7, 7, device="meta"))
    line = next(i for i, text in enumerate(EVEN_ONLY.splitlines(), 1) if "raise ValueError" in text)
    assert "pieces: 2 pieces, covering every size" in out
    # the regions' wording is the pieces' own (docs/json.md); what each does is checked here
    assert ": runs (output floor(H/2) x floor(H/2))\n" in out
    assert f": even_only.py:{line} raises {str(raised.value)!r}\n" in out
    assert "note: ATen capture: 2 captures in " in out


def test_capture_auto_keeps_fx_where_fx_traces(capsys):
    code, out, err = run(["trace", "fcn8s", "--input", "64", "--capture", "auto", "--format", "json"], capsys)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["capture"] == "fx" and data["pieces"] == [] and data["layers"][1]["module"] == "conv1_1"


from model_sources import EVEN_ONLY  # noqa: E402  (shared with test_json_contract.py)


@pytest.fixture(scope="module")
def even_only(tmp_path_factory):
    path = tmp_path_factory.mktemp("even") / "even_only.py"
    path.write_text(EVEN_ONLY)
    return f"{path}:EvenOnly"


def test_fx_refusal_names_the_front_end_that_traces_it(even_only, capsys):
    code, out, err = run(["trace", even_only, "--input", "H"], capsys)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert "control flow" in line and "--capture auto (or aten)" in line


def test_verify_with_the_aten_front_end_runs_the_model_itself(even_only, capsys):
    # the model raises at odd widths: verify must see torch refuse exactly the sizes the pieces exclude
    code, out, err = run(["verify", even_only, "--input", "H", "--capture", "auto", "--device", "meta",
                          "--examples", "3", "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["passed"] and (data["capture"], data["compared"]) == ("aten", "output")
    assert data["examples"] == 3 and data["invalid_checked"] >= 1 and data["nodes_compared"] == 3
    model = load_model(even_only)
    for h in (2, 3, 8, 9):
        try:
            model(torch.empty(1, 3, h, h, device="meta"))
            runs = True
        except ValueError:
            runs = False
        assert runs == (h % 2 == 0)  # what the pieces said verify checked: torch agrees


def test_testing_helpers_take_capture(even_only):
    from shapecalc.testing import assert_valid_for

    model = load_model(even_only)
    with pytest.raises(AssertionError) as raised:
        assert_valid_for(model, [4, 6, 5], capture="auto")
    message = str(raised.value)
    with pytest.raises(ValueError) as torch_says:
        model(torch.empty(1, 3, 5, 5, device="meta"))
    line = next(i for i, text in enumerate(EVEN_ONLY.splitlines(), 1) if "raise ValueError" in text)
    assert "1 of the given sizes" in message
    assert f"H=5: even_only.py:{line}: raises {str(torch_says.value)!r}" in message  # where and what torch raised


COUNTED = textwrap.dedent("""
    import torch.nn as nn


    class Counted(nn.Module):
        # a size check in Python (fx cannot trace it), a conv, a transposed conv and a linear layer
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            if x.shape[-1] % 2:
                raise ValueError("the input size must be even")
            return self.head(self.up(self.down(x)))
""")


def test_cost_with_the_aten_front_end_counts_as_flop_counter_mode(tmp_path, capsys):
    from torch.utils.flop_counter import FlopCounterMode

    path = tmp_path / "counted.py"
    path.write_text(COUNTED)
    code, out, err = run(["cost", f"{path}:Counted", "--input", "10x16", "--capture", "auto", "--format", "json"],
                         capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["capture"] == "aten"
    assert {"down", "up", "head"} <= {layer["module"] for layer in data["layers"]}
    model = load_model(f"{path}:Counted")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 10, 16, device="meta"))
    assert int(data["total"]["flops"]) == counter.get_total_flops() > 0
    code, out, _ = run(["cost", f"{path}:Counted", "--input", "10x16", "--capture", "auto", "--format", "markdown"],
                       capsys)
    assert code == 0 and "— aten capture" in out.splitlines()[0] and "| bytes | module |" in out


def test_cost_with_the_aten_front_end_counts_a_matmul_as_flop_counter_mode():
    # torch.matmul of feature maps is a bmm in ATen, where FlopCounterMode counts it
    import shapecalc
    from shapecalc.answers.cost import cost
    from torch.utils.flop_counter import FlopCounterMode

    class Gram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x).flatten(2)
            return torch.matmul(y.transpose(1, 2), y).unsqueeze(1)

    model = Gram().eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 8, 8))
    result = cost(shapecalc.analyze(model, "8x8", capture="aten"), model)
    assert int(result.flops) == counter.get_total_flops() and result.capture == "aten"


def test_docs_with_the_aten_front_end_writes_pages_that_check_up_to_date(even_only, tmp_path, capsys):
    out_dir = tmp_path / "pages"
    code, out, err = run(["docs", even_only, "--out", str(out_dir), "--capture", "aten"], capsys)
    assert code == 0, err
    page = (out_dir / "EvenOnly.md").read_text()
    assert "- capture: aten (" in page and "## Pieces" in page and "| module |" in page
    assert " s\n" not in page.split("## Layers")[0]  # the capture's seconds differ between runs: not on the page
    code, out, _ = run(["docs", even_only, "--out", str(out_dir), "--capture", "aten", "--check"], capsys)
    assert code == 0 and "up to date" in out
    code, out, _ = run(["docs", even_only, "--out", str(out_dir), "--check"], capsys)  # fx cannot trace it
    assert code == 2
    (out_dir / "EvenOnly.md").write_text(page + "edited\n")
    code, out, _ = run(["docs", even_only, "--out", str(out_dir), "--capture", "aten", "--check"], capsys)
    assert code == 1 and out.splitlines()[-1].endswith(f"--out {out_dir} --capture aten")


def test_capture_progress_is_a_status_line_on_a_terminal_only():
    import argparse
    import io

    from rich.console import Console

    from shapecalc.cli import _capture_progress

    aten, fx = argparse.Namespace(capture="aten"), argparse.Namespace(capture="fx")
    with _capture_progress(fx) as progress:
        assert progress is None
    with _capture_progress(aten, Console(file=io.StringIO())) as progress:  # a file or a pipe: nothing
        assert progress is None
    screen = io.StringIO()
    with _capture_progress(aten, Console(file=screen, force_terminal=True, width=60)) as progress:
        progress("capturing at 224x223")
    assert "capturing at 224x223" in screen.getvalue()
