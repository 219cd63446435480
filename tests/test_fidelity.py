"""A trace is checked before it is believed, and a model that cannot be built
on meta is built on CPU.

The nets here branch the way MONAI's BasicUNet does: ``torch.jit.isinstance(x,
torch.Tensor)`` is True when the module runs and False for torch.fx's Proxy,
so ``symbolic_trace`` records a graph without the skip concatenation.  The
ground truth is torch itself: the module runs on meta, the recorded graph
does not (or returns another shape), and shapecalc must refuse, never report
the graph's sizes as the model's.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.fx
import torch.nn as nn

from shapecalc import TraceError, analyze, load_model
from shapecalc.answers.checking import check_model
from shapecalc.cli import main


class UpCat(nn.Module):
    """MONAI BasicUNet's UpCat: upsample, then concatenate the skip when there is one."""

    def __init__(self, channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.convs = nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x, skip):
        upsampled = self.upsample(x)
        if skip is not None and torch.jit.isinstance(skip, torch.Tensor):
            upsampled = torch.cat([skip, upsampled], dim=1)
        return self.convs(upsampled)


class SkipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.MaxPool2d(2)
        self.up = UpCat(8)

    def forward(self, x):
        features = self.stem(x)
        return self.up(self.down(features), features)


class PoolsTensors(nn.Module):
    """Pools only what is a tensor at run time: the trace keeps full size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.conv(x)
        if torch.jit.isinstance(x, torch.Tensor):
            x = self.pool(x)
        return {"out": x}


def _meta(module: nn.Module, *shape: int):
    with torch.no_grad():
        return module(torch.empty(shape, device="meta"))


def test_the_trace_lies_where_torch_runs():
    """The premise, from torch alone: the module runs, its fx graph does not."""
    model = SkipNet().to("meta")
    assert _meta(model, 1, 3, 64, 96).shape == (1, 8, 64, 96)
    with pytest.raises(RuntimeError):
        _meta(torch.fx.symbolic_trace(model), 1, 3, 64, 96)


@pytest.mark.parametrize("spec", ["HxW", "H", "64x96"])
def test_an_unfaithful_graph_is_refused_not_reported(spec):
    # before: "Conv2d expects 16 input channels, got 8", a false verdict on a net that runs
    with pytest.raises(TraceError) as raised:
        analyze(SkipNet().to("meta"), spec)
    message = str(raised.value)
    assert "unfaithful" in message and "'up_convs'" in message
    assert "expects 16 input channels" not in message


def test_a_graph_with_another_output_shape_is_refused_naming_the_output():
    model = PoolsTensors().to("meta")
    real = _meta(model, 1, 3, 64, 96)["out"]
    traced = _meta(torch.fx.symbolic_trace(model), 1, 3, 64, 96)["out"]
    assert real.shape != traced.shape  # torch says the graph is not the model
    with pytest.raises(TraceError) as raised:
        analyze(model, "HxW")
    message = str(raised.value)
    assert "unfaithful" in message and "output['out']" in message
    assert f"{'x'.join(map(str, real.shape))} from the module" in message


def test_check_model_refuses_too():
    with pytest.raises(TraceError, match="unfaithful"):
        check_model(SkipNet().to("meta"), "HxW")


MODEL_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import sys
    sys.path.insert(0, {tests!r})
    from test_fidelity import SkipNet

    def skipnet():
        return SkipNet()
''')


@pytest.mark.parametrize("command", [["trace", "--input", "HxW"], ["check", "--input", "HxW"], ["docs", "--check"]])
def test_cli_commands_refuse_an_unfaithful_trace(command, tmp_path, capsys):
    path = tmp_path / "skipnet.py"
    path.write_text(MODEL_FILE.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    argv = [command[0], f"{path}:skipnet", *command[1:]]
    if command[0] == "docs":
        argv += ["--out", str(tmp_path / "pages")]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "unfaithful" in lines[0] and "Traceback" not in captured.err


# --- building on CPU when meta cannot ------------------------------------------------------------


class ReadsItsWeights(nn.Module):
    """A constructor that reads a tensor value (torchvision's regnet copies, MONAI's SwinUNETR calls .item())."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.depth = int(torch.linspace(1, 3, 3)[-1].item())


class KeepsACpuConstant(ReadsItsWeights):
    """A plain tensor attribute (no buffer): its forward does not run on meta."""

    def __init__(self):
        super().__init__()
        self.scale = torch.ones(4, 1, 1)

    def forward(self, x):
        return self.conv(x) * self.scale


class LiesOnCpu(SkipNet):
    def __init__(self):
        super().__init__()
        self.depth = int(torch.ones(()).item())


def test_a_model_that_cannot_be_built_on_meta_is_built_on_cpu(monkeypatch):
    with pytest.raises(RuntimeError):  # torch: the meta build fails
        with torch.device("meta"):
            KeepsACpuConstant()
    module = sys.modules[__name__]
    model = load_model(f"{module.__name__}:KeepsACpuConstant")
    assert model.conv.weight.device.type == "cpu"
    analysis = analyze(model, "HxW")
    notes = " ".join(analysis.notes)
    assert "built on cpu" in notes and "building on meta failed" in notes
    # the forward needs its CPU constant: the trace was checked by real CPU passes
    assert "real forward passes on cpu" in notes
    expected = model(torch.zeros(1, 3, 64, 96)).shape[2:]
    got = analysis.outputs["output"].spatial_sizes
    symbols = {str(s): s for s in analysis.symbols}
    assert tuple(int(e.subs({symbols["H"]: 64, symbols["W"]: 96})) for e in got) == tuple(expected)


def test_a_cpu_built_model_is_still_checked():
    model = load_model(f"{__name__}:LiesOnCpu")
    assert model.stem.weight.device.type == "cpu"
    with pytest.raises(TraceError, match="unfaithful"):
        analyze(model, "HxW")


def test_a_factory_that_fails_everywhere_reports_its_own_error():
    with pytest.raises(Exception, match="building"):
        load_model(f"{__name__}:_fails_everywhere")


def _fails_everywhere():
    raise RuntimeError("no such backbone")


class ReturnsAnOrderedDict(nn.Module):
    """torchvision's segmentation nets return an OrderedDict; fx's graph returns a dict."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        from collections import OrderedDict

        return OrderedDict(out=self.conv(x))


def test_a_dict_for_an_ordered_dict_is_the_same_output():
    model = ReturnsAnOrderedDict().to("meta")
    assert type(_meta(torch.fx.symbolic_trace(model), 1, 3, 64, 96)) is not type(_meta(model, 1, 3, 64, 96))
    analysis = analyze(model, "64x96")
    assert tuple(int(s) for s in analysis.outputs["out"].shape) == tuple(_meta(model, 1, 3, 64, 96)["out"].shape)
