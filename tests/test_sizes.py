"""Nearest valid sizes, the padding rule, which requirement excludes which
sizes, and the explanation of a size that cannot run, all against meta
forward passes: the model really fails at the size, really runs at the
nearest sizes below and above, really fails in between, padding to the
multiple really works, and the node torch fails at is the one named."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.fx
import torch.nn as nn

from shapecalc import SizeError, analyze, load_model
from shapecalc.cli import main
from shapecalc.engine.domain import PeriodicSet
from shapecalc.output.report import to_json
from shapecalc.answers.sizes import explain_failure, nearest_above, nearest_below, padding_multiple, sizes_report

MODELS = '''
import torch
import torch.nn as nn


class UNet(nn.Module):
    """Four 2x poolings, padded convs and cat skips: runs for H a multiple of 16."""

    def __init__(self, depth=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.ModuleList([nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)) for _ in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(4, 4, 2, stride=2) for _ in range(depth)])
        self.fuse = nn.ModuleList([nn.Conv2d(8, 4, 3, padding=1) for _ in range(depth)])

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for d in self.down:
            skips.append(x)
            x = d(x)
        for u, f, s in zip(self.up, self.fuse, reversed(skips)):
            x = f(torch.cat([u(x), s], 1))
        return x


class LeNet(nn.Module):
    """A Linear after two conv/pool stages: square inputs 32..35 only."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(1, 6, 5), nn.MaxPool2d(2)
        self.conv2, self.pool2 = nn.Conv2d(6, 16, 5), nn.MaxPool2d(2)
        self.fc = nn.Linear(400, 10)

    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))
'''


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sizes") / "nets.py"
    path.write_text(MODELS)
    return str(path)


@pytest.fixture(scope="module")
def unet(models_file):
    return load_model(f"{models_file}:UNet")


@pytest.fixture(scope="module")
def lenet(models_file):
    return load_model(f"{models_file}:LeNet")


def _channels(model) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def runs(model, h: int, w: int = None) -> bool:
    try:
        with torch.no_grad():
            model(torch.empty(1, _channels(model), h, h if w is None else w, device="meta"))
        return True
    except (RuntimeError, ValueError):  # instance norm refuses a 1x1 map with a ValueError
        return False


class _FailingNode(torch.fx.Interpreter):
    """Runs an fx graph on meta tensors and remembers the node torch fails at."""

    def run_node(self, n):
        self.current = n.name
        return super().run_node(n)


def torch_failing_node(model, h: int, w: int = None):
    graph = torch.fx.symbolic_trace(model)
    interpreter = _FailingNode(graph)
    interpreter.extra_traceback = False
    try:
        with torch.no_grad():
            interpreter.run(torch.empty(1, _channels(model), h, h if w is None else w, device="meta"))
    except RuntimeError:
        return interpreter.current
    return None


def _check_nearest(model, valid, n, *, sweep_width=None):
    """below/above/pad against meta runs: fails at n (when invalid), runs at both, fails in between."""
    below, above = nearest_below(valid, n), nearest_above(valid, n)
    w = sweep_width
    assert runs(model, n, w) == (below == n == above), n
    if below is not None:
        assert runs(model, below, w)
        assert not any(runs(model, m, w) for m in range(below + 1, n)), (n, below)
    if above is not None:
        assert runs(model, above, w)
        assert not any(runs(model, m, w) for m in range(n + 1, above)), (n, above)
    return below, above


# ---------------------------------------------------------------------------
# U-Net with cats: H a multiple of 16


def test_unet_nearest_sizes_and_padding_against_meta(unet):
    analysis = analyze(unet, "H")
    valid = analysis.valid_sizes("H")
    for n in (1, 9, 15, 16, 17, 100, 225, 239, 240):
        _check_nearest(unet, valid, n)
    m = padding_multiple(valid)
    assert m is not None
    # padding to a multiple of m runs for every n of a sweep; no smaller modulus does
    assert all(runs(unet, m * math.ceil(n / m)) for n in range(1, 70))
    for smaller in range(1, m):
        assert not all(runs(unet, smaller * j) for j in range(1, 2 * m + 1)), smaller
    report = sizes_report(analysis, near=225).to_json()["axes"]["H"]
    assert (report["below"], report["above"]) == (nearest_below(valid, 225), nearest_above(valid, 225))
    assert report["pad"] == {"amount": report["above"] - 225, "to": report["above"], "multiple": m}
    assert report["valid"] is False and not runs(unet, 225)


def test_unet_exclusions_name_the_node_torch_fails_at(unet):
    analysis = analyze(unet, "H")
    excluded = to_json(analysis)["domain"]["excluded"]
    assert excluded, "a U-Net with cats excludes sizes"
    seen = set()
    for item in excluded:
        sizes = [n for n in range(1, 65) if n in _periodic(item["sizes"])]
        for n in sizes[:3]:
            assert torch_failing_node(unet, n) == item["node"], (n, item)
        seen.update(sizes)
    # the exclusions cover exactly the sizes torch refuses
    assert seen == {n for n in range(1, 65) if not runs(unet, n)}


def _periodic(data):
    """A PeriodicSet back from its JSON (as_data) form."""
    period = data["period"]
    classes = []
    for r in range(period):
        intervals = []
        for lo, hi in data["intervals"][str(r)]:
            intervals.append(((lo - r) // period, None if hi is None else (hi - r) // period))
        classes.append(tuple(intervals))
    return PeriodicSet(period, tuple(classes))


def test_unet_failure_at_225x256_is_explained_per_axis(unet):
    with pytest.raises(SizeError) as raised:
        analyze(unet, "225x256")
    failure = explain_failure(unet, "225x256", raised.value)
    assert failure.node == torch_failing_node(unet, 225, 256)
    h, = [a for a in failure.axes if a.symbol == "H"]
    w, = [a for a in failure.axes if a.symbol == "W"]
    assert w.ok is True and runs(unet, 224, 256)
    assert h.ok is False
    _check_nearest(unet, h.valid, 225, sweep_width=256)
    assert runs(unet, 225 + h.pad, 256)
    # the chain of sizes leading there: torch's own sizes at those nodes
    graph = torch.fx.symbolic_trace(unet)
    shapes = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                shapes[n.name] = tuple(value.shape[2:])
            return value

    with pytest.raises(RuntimeError):
        Recorder(graph).run(torch.empty(1, 3, 225, 256, device="meta"))
    hops = [hop for chain in failure.chains for hop in chain]
    assert hops and all(shapes[hop.node] == hop.sizes for hop in hops)


# ---------------------------------------------------------------------------
# LeNet: a finite domain


def test_lenet_finite_domain(lenet):
    analysis = analyze(lenet, "H")
    valid = analysis.valid_sizes("H")
    assert [n for n in range(1, 60) if runs(lenet, n)] == [n for n in range(1, 60) if n in valid]
    assert _check_nearest(lenet, valid, 30) == (None, nearest_above(valid, 30))
    below, above = _check_nearest(lenet, valid, 40)
    assert above is None and below is not None
    assert not any(runs(lenet, n) for n in range(41, 200, 7))
    assert padding_multiple(valid) is None  # a finite set holds no multiple of every m
    data = sizes_report(analysis, near=40, range="1..40").to_json()["axes"]["H"]
    assert data["above"] is None and data["pad"] == {"amount": None, "to": None, "multiple": None}
    assert data["range"]["valid"] == [n for n in range(1, 41) if runs(lenet, n)]


# ---------------------------------------------------------------------------
# the bundled models run for every H: nearest is the size itself


@pytest.mark.parametrize("name, n", [("fcn8s", 225), ("deeplabv3", 97)])
def test_bundled_models_need_no_padding(name, n):
    model = load_model(name, {"width": 0.0625})
    data = sizes_report(analyze(model, "H"), near=n).to_json()["axes"]["H"]
    assert (data["below"], data["above"], data["valid"]) == (n, n, True)
    assert data["pad"] == {"amount": 0, "to": n, "multiple": 1}
    for size in (n - 1, n, n + 1):
        model(torch.empty(1, 3, size, size, device="meta"))


# ---------------------------------------------------------------------------
# the command line


def test_trace_at_an_invalid_size_explains_and_exits_1(capsys, models_file, unet):
    code = main(["trace", f"{models_file}:UNet", "--input", "225x256"])
    out, err = capsys.readouterr()
    assert code == 1
    node = torch_failing_node(unet, 225, 256)
    assert f"at node {node!r}" in out and "pad H by 15 to 240" in out and "W=256: valid" in out
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code = main(["trace", f"{models_file}:UNet", "--input", "225x256", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False and data["binding"]["node"] == node
    assert data["axes"]["H"]["below"] == 224 and data["axes"]["H"]["above"] == 240
    assert runs(unet, 224, 256) and runs(unet, 240, 256) and not runs(unet, 225, 256)
    assert data["axes"]["W"]["valid"] is True


def test_check_at_an_invalid_size_explains(capsys, models_file):
    code = main(["check", f"{models_file}:UNet", "--input", "225", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["explanation"]["axes"]["H"]["pad"]["to"] == 240


def test_sizes_command(capsys, models_file, lenet):
    code = main(["sizes", f"{models_file}:LeNet", "--input", "H", "--near", "30", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0  # a question, not a check: N invalid still answers
    axis = data["axes"]["H"]
    assert axis["below"] is None and axis["above"] == 32 and axis["pad"]["amount"] == 2
    assert runs(lenet, 32) and not runs(lenet, 30) and not runs(lenet, 31)
    code = main(["sizes", f"{models_file}:LeNet", "--near", "30", "--range", "1..40"])
    out = capsys.readouterr().out
    assert code == 0 and "pad H by 2 to 32" in out and "32..35" in out


@pytest.mark.parametrize("argv, words", [
    (["--input", "225"], "symbolic --input"),
    (["--near", "0"], "bad --near"),
    (["--near", "3x4x5"], "bad --near"),
    (["--range", "9..3"], "bad --range"),
    (["--range", "abc"], "bad --range"),
])
def test_sizes_bad_input_exit_2(capsys, models_file, argv, words):
    code = main(["sizes", f"{models_file}:LeNet", *argv])
    _, err = capsys.readouterr()
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# a third-party model: MONAI's UNet, whose strided convs and cats run for two residues mod 4


def test_monai_unet_nearest_sizes_and_padding_against_meta():
    import zoo_setup

    model = zoo_setup.small_monai_unet()
    valid = analyze(model, "H").valid_sizes("H")
    # the set the engine found is torch's: meta forward passes over a sweep
    assert [h for h in range(1, 60) if h in valid] == [h for h in range(1, 60) if runs(model, h)]
    for n in (1, 2, 5, 30, 45, 101):
        _check_nearest(model, valid, n)
    m = padding_multiple(valid)
    assert m is not None
    assert all(runs(model, m * math.ceil(n / m)) for n in range(1, 50))
    for smaller in range(1, m):
        assert not all(runs(model, smaller * j) for j in range(1, 2 * m + 1)), smaller
