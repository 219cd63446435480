"""FCN-8s and DeepLab-v3: every size and crop offset shapecalc derives, checked
against torch.

The ground truth is always torch, never the engine:

* real forward passes, node by node, at sizes hypothesis draws (full-width
  models on CUDA when there is one, thin models on the CPU otherwise);
* forward passes on the meta device for every H in 1..1024 (square, then W
  with H fixed), which also tell which sizes run;
* coordinate fields measured on a linearised FCN-8s for the crop offsets: the
  input holds each pixel's own row (or column) number, every layer averages
  symmetrically, so every tensor index ends up holding the input coordinate
  of its centre.

The engine is analysed once per model and its expressions are evaluated
exactly with :func:`shapecalc.engine.symbolic.evaluate`.
"""

from __future__ import annotations

import json
import math
import operator
from fractions import Fraction
from functools import lru_cache

import pytest
import sympy
import torch
import torch.fx
import torch.nn as nn
from hypothesis import example, given, settings
from hypothesis import strategies as st

from segmodels import deeplabv3, fcn8s
from shapecalc import analyze, format_expr, load_model
from shapecalc.engine.symbolic import evaluate

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"

# name -> (MODEL spec, factory, keyword arguments, width on CPU)
MODELS = {
    "fcn8s": ("fcn8s", fcn8s, {}, 1 / 32),
    "deeplabv3": ("deeplabv3", deeplabv3, {}, 1 / 16),
    "deeplabv3-resnet101": ("deeplabv3", deeplabv3, {"backbone": "resnet101"}, 1 / 32),
    "deeplabv3-resnet101-os8": ("deeplabv3", deeplabv3, {"backbone": "resnet101", "output_stride": 8}, 1 / 32),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_worker():
    # pytest -n 2 on two cores: two intra-op threads per worker only thrash.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------
# shared machinery


class ShapeRecorder(torch.fx.Interpreter):
    """Runs a graph on real tensors and keeps every tensor node's shape."""

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__(graph_module, garbage_collect_values=True)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: torch.fx.Node):
        value = super().run_node(n)
        if n.op != "output" and isinstance(value, torch.Tensor):
            self.shapes[n.name] = tuple(value.shape)
        return value


def _signature(value):
    """A hashable stand-in for an op's argument: tensors by shape and dtype."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.stride())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *(_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *((k, _signature(v)) for k, v in value.items()))
    if isinstance(value, slice):
        return ("slice", _signature(value.start), _signature(value.stop), _signature(value.step))
    hash(value)
    return value


class MetaShapeRecorder(ShapeRecorder):
    """The same on the meta device, remembering each op's answer per input
    signature.

    Meta kernels compute an output from argument shapes alone, so a node seen
    with the same argument shapes and values gives the same result; only the
    first few nodes see a new shape at every size, which is what makes a
    sweep over a thousand sizes cheap.  Failures are remembered too.
    """

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__(graph_module)
        self.answers: dict = {}

    def run_node(self, n: torch.fx.Node):
        if n.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(n)
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            key = (n.name, _signature(args), _signature(kwargs))
            if key not in self.answers:
                try:
                    self.answers[key] = (True, getattr(self, n.op)(n.target, args, kwargs))
                except Exception as error:  # noqa: BLE001 - a size torch refuses is data here
                    self.answers[key] = (False, error)
            ok, value = self.answers[key]
        if not ok:
            raise value
        if isinstance(value, torch.Tensor):
            self.shapes[n.name] = tuple(value.shape)
        return value


def predicted_shapes(analysis, env) -> dict[str, tuple]:
    """Every layer's full shape from the engine's expressions, at ``env``."""
    return {layer.name: tuple(evaluate(size, env) for size in layer.tensor.shape) for layer in analysis.layers}


def assert_same_shapes(analysis, recorded: dict, env) -> None:
    predicted = predicted_shapes(analysis, env)
    at = ", ".join(f"{s}={v}" for s, v in env.items())
    assert list(predicted) == list(recorded), f"engine layers differ from the tensor nodes torch ran at {at}"
    wrong = [(name, predicted[name], recorded[name]) for name in recorded if predicted[name] != recorded[name]]
    assert not wrong, f"at {at}, engine vs torch (first 5 of {len(wrong)}): {wrong[:5]}"


def _env(analysis, *sizes):
    return dict(zip(analysis.symbols, sizes))


@lru_cache(maxsize=None)
def analysis_of(key: str, width: float):
    spec, _factory, kwargs, _ = MODELS[key]
    return analyze(load_model(spec, {**kwargs, "width": width}), "HxW", name=key)


@lru_cache(maxsize=None)
def real_model(key: str, width: float) -> nn.Module:
    _spec, factory, kwargs, _ = MODELS[key]
    torch.manual_seed(0)
    with torch.device(DEVICE):
        return factory(**kwargs, width=width).eval()


# ---------------------------------------------------------------------------
# real forward passes at drawn sizes

#: spatial sizes a forward pass is cheap at on a CPU, including 1
input_sizes = st.integers(min_value=1, max_value=600)


@pytest.mark.parametrize("key", list(MODELS))
@settings(max_examples=12 if not ON_CUDA else 40)
@given(height=input_sizes, width=input_sizes)
@example(height=1, width=1)
@example(height=1, width=600)
@example(height=599, width=2)
@example(height=513, width=513)
@example(height=511, width=97)
@example(height=32, width=33)
def test_every_node_matches_a_real_forward_pass(key, height, width):
    channel_width = 1.0 if ON_CUDA else MODELS[key][3]
    analysis = analysis_of(key, channel_width)
    recorder = ShapeRecorder(torch.fx.GraphModule(real_model(key, channel_width), analysis.graph_module.graph))
    with torch.inference_mode():
        recorder.run(torch.randn(1, 3, height, width, device=DEVICE))
    env = _env(analysis, height, width)
    assert_same_shapes(analysis, recorder.shapes, env)
    assert height in analysis.valid_sizes("H") and width in analysis.valid_sizes("W")


# ---------------------------------------------------------------------------
# meta-device sweeps: every H in 1..1024


SWEEP = range(1, 1025)
# Two halves per sweep, so that pytest -n 2 can share them out evenly.  The first half already
# proves what the whole sweep does: every size here is floor/ceil of an affine function of the
# size before it, so each layer's size is quasi-affine in H with a period dividing the model's
# total stride (32 for FCN-8s, 16 for DeepLab-v3): past the small sizes where clamps act,
# f(H + P) = f(H) + c for engine and torch alike, and agreement on two whole periods fixes every
# residue's offset and the slope c.  1..512 holds 16 periods of 32; the second half is kept
# (marked slow) for large-number arithmetic, not for a new residue.
HALVES = [range(1, 513), pytest.param(range(513, 1025), marks=pytest.mark.slow)]
FIXED_HEIGHT = 37  # an odd height that is not a multiple of any stride


def _sweep(key: str, sizes_at, sizes) -> list[int]:
    """Runs the full-width model on meta at each ``sizes_at(n)``; checks every
    node and returns the n for which torch ran."""
    analysis = analysis_of(key, 1.0)
    recorder = MetaShapeRecorder(analysis.graph_module)
    ran = []
    for n in sizes:
        height, width = sizes_at(n)
        recorder.shapes = {}
        try:
            with torch.no_grad():
                recorder.run(torch.empty(1, 3, height, width, device="meta"))
        except Exception:  # noqa: BLE001 - the domain check below decides
            continue
        ran.append(n)
        assert_same_shapes(analysis, recorder.shapes, _env(analysis, height, width))
    return ran


@pytest.mark.parametrize("sizes", HALVES, ids=["1-512", "513-1024"])
@pytest.mark.parametrize("key", list(MODELS)[:2])
def test_meta_sweep_square(key, sizes):
    analysis = analysis_of(key, 1.0)
    ran = _sweep(key, lambda n: (n, n), sizes)
    valid = [n for n in sizes if n in analysis.valid_sizes("H") and n in analysis.valid_sizes("W")]
    assert ran == valid == list(sizes)
    assert analysis.validity_sentence() == "every H >= 1; every W >= 1"


@pytest.mark.parametrize("sizes", HALVES, ids=["1-512", "513-1024"])
@pytest.mark.parametrize("key", list(MODELS)[:2])
def test_meta_sweep_width_with_height_fixed(key, sizes):
    analysis = analysis_of(key, 1.0)
    ran = _sweep(key, lambda n: (FIXED_HEIGHT, n), sizes)
    assert ran == [n for n in sizes if n in analysis.valid_sizes("W")] == list(sizes)


@pytest.mark.parametrize("key", list(MODELS)[:2])
def test_remembered_answers_equal_plain_meta_runs(key):
    """The sweeps' shortcut (reusing an op's answer for the same argument
    shapes) gives what running every op gives, sizes seen before or not."""
    graph_module = analysis_of(key, 1.0).graph_module
    remembering = MetaShapeRecorder(graph_module)
    for height, width in [(37, 41), (38, 41), (37, 41), (600, 3), (601, 3)]:
        remembering.shapes, plain = {}, ShapeRecorder(graph_module)
        with torch.no_grad():
            remembering.run(torch.empty(1, 3, height, width, device="meta"))
            plain.run(torch.empty(1, 3, height, width, device="meta"))
        assert remembering.shapes == plain.shapes


def test_the_sweeps_cover_every_size():
    halves = [getattr(half, "values", (half,))[0] for half in HALVES]  # a pytest.param holds its range
    assert sorted(n for half in halves for n in half) == list(SWEEP)


def test_meta_sweep_catches_a_wrong_prediction():
    """The sweep's comparison is not vacuous: a size off by one is reported."""
    analysis = analysis_of("fcn8s", 1.0)
    recorder = MetaShapeRecorder(analysis.graph_module)
    with torch.no_grad():
        recorder.run(torch.empty(1, 3, 100, 90, device="meta"))
    recorder.shapes["pool5"] = recorder.shapes["pool5"][:2] + (999, 999)
    with pytest.raises(AssertionError, match="pool5"):
        assert_same_shapes(analysis, recorder.shapes, _env(analysis, 100, 90))


def test_published_sizes_hold_for_every_height():
    """The sizes issue 2 quotes, as the engine prints them, and torch's sizes
    at those nodes for H from 1 to 1013 in steps of 23 (W = H + 5)."""
    fcn = analysis_of("fcn8s", 1.0)
    deeplab = analysis_of("deeplabv3", 1.0)
    assert format_expr(fcn.layer("pool5").spatial[0]) == "ceiling((H + 198)/32)"
    assert format_expr(fcn.layer("upscore2").spatial[0]) == "2*ceiling((H + 198)/32) - 10"
    assert [format_expr(s) for s in fcn.outputs["output"].spatial_sizes] == ["H", "W"]
    aspp_input = _input_of(deeplab, "aspp_b0_0")
    assert [format_expr(s) for s in deeplab.layer(aspp_input).spatial] == ["ceiling(H/16)", "ceiling(W/16)"]
    assert [format_expr(s) for s in deeplab.outputs["output"].spatial_sizes] == ["H", "W"]
    fcn_recorder, deeplab_recorder = MetaShapeRecorder(fcn.graph_module), MetaShapeRecorder(deeplab.graph_module)
    for n in range(1, 1025, 23):
        with torch.no_grad():
            fcn_recorder.run(torch.empty(1, 3, n, n + 5, device="meta"))
            deeplab_recorder.run(torch.empty(1, 3, n, n + 5, device="meta"))
        assert fcn_recorder.shapes["pool5"][2] == math.ceil((n + 198) / 32)
        assert fcn_recorder.shapes["upscore2"][2] == 2 * math.ceil((n + 198) / 32) - 10
        assert deeplab_recorder.shapes[aspp_input][2:] == (math.ceil(n / 16), math.ceil((n + 5) / 16))


def _input_of(analysis, node_name: str) -> str:
    node = next(n for n in analysis.graph_module.graph.nodes if n.name == node_name)
    return node.args[0].name


# ---------------------------------------------------------------------------
# crop offsets: coordinate fields measured with torch
#
# A linearised FCN-8s in float64: every conv averages its window uniformly and
# copies channel 0 into even output channels and channel 1 into odd ones, max
# pools become average pools with the same window, the deconvolutions keep
# their bilinear kernels and every bias is zero.  Channel 0 of the input holds
# each pixel's row (or column) number and channel 1 holds ones.  A symmetric
# average of an affine field is the field at the window's centre, and the
# ratio channel 0 / channel 1 cancels every normalisation (zero padding,
# ceil-mode windows, the other axis), so wherever a window lies inside the
# image, index i of a tensor holds the input coordinate of its centre.  The
# offset that aligns two tensors is read off those numbers.


class ValueRecorder(torch.fx.Interpreter):
    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__(graph_module)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node):
        value = super().run_node(n)
        if n.op != "output" and isinstance(value, torch.Tensor):
            self.values[n.name] = value.clone()  # the ReLUs work in place
        return value


def _tent(size: int) -> torch.Tensor:
    # FCN's bilinear deconvolution kernel: weights fall off linearly from the
    # centre (size - 1)/2, reaching 0 one stride beyond it.
    factor = (size + 1) // 2
    centre = (size - 1) / 2
    return 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor


def _linearised_fcn8s(graph: torch.fx.Graph) -> torch.fx.GraphModule:
    module = torch.fx.GraphModule(fcn8s(n_class=2, width=1 / 32).double().eval(), graph)
    for name, layer in list(module.named_children()):
        if isinstance(layer, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                               ceil_mode=layer.ceil_mode))
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                layer.weight.zero_()
                kh, kw = layer.weight.shape[2:]
                for o in range(layer.out_channels):
                    layer.weight[o, o % 2] = 1 / (kh * kw)
                layer.bias.zero_()
            elif isinstance(layer, nn.ConvTranspose2d):
                layer.weight.zero_()
                kh, kw = layer.weight.shape[2:]
                for c in range(min(layer.in_channels, layer.out_channels)):
                    layer.weight[c, c] = _tent(kh)[:, None] * _tent(kw)[None, :]
    return module


def _measure_fields(module, height: int, width: int, axis: int):
    """Per tensor node: the raw field along ``axis`` (2: rows, 3: columns)
    and (stride, centre of index 0), measured in the middle of the tensor."""
    x = torch.zeros(1, 3, height, width, dtype=torch.float64)
    coordinate = torch.arange(height if axis == 2 else width, dtype=torch.float64)
    x[0, 0] = coordinate[:, None] if axis == 2 else coordinate[None, :]
    x[0, 1] = 1
    recorder = ValueRecorder(module)
    with torch.no_grad():
        recorder.run(x)
    fields, maps = {}, {}
    for name, value in recorder.values.items():
        line = value[0, :, :, value.shape[3] // 2] if axis == 2 else value[0, :, value.shape[2] // 2, :]
        field = line[0] / line[1]
        m = len(field) // 2
        step = field[m + 1] - field[m]
        window = field[m - 3:m + 4]
        straight = field[m] + step * torch.arange(-3, 4, dtype=torch.float64)
        assert torch.allclose(window, straight, atol=1e-7), f"{name}: not affine in the middle: {window.tolist()}"
        fields[name], maps[name] = field, (_rational(step.item()), _rational((field[m] - m * step).item()))
    return fields, maps


def _rational(value: float):
    """``value`` as an exact fraction with a small denominator, or None: a
    field that mixes misaligned tensors has no clean centre."""
    exact = Fraction(value).limit_denominator(64)
    return exact if abs(float(exact) - value) < 1e-7 else None


def _exact(value) -> Fraction:
    rational = sympy.Rational(value)
    return Fraction(int(rational.p), int(rational.q))


# (height, width, axis): a tall input measured along H, a wide one along W;
# 900 and 931 fall in different classes mod 32.
FIELD_CASES = [(900, 40, 2), (40, 931, 3)]
CAFFE_OFFSETS = {"add_2": 5, "add_5": 9, "output": 31}


@pytest.mark.parametrize("height, width, axis", FIELD_CASES)
def test_crop_offsets_align_the_measured_coordinate_fields(height, width, axis):
    analysis = analysis_of("fcn8s", 1.0)
    module = _linearised_fcn8s(analysis.graph_module.graph)
    fields, maps = _measure_fields(module, height, width, axis)
    fields["input"] = torch.arange(height if axis == 2 else width, dtype=torch.float64)
    maps["input"] = (Fraction(1), Fraction(0))
    env = _env(analysis, height, width)
    nodes = {n.name: n for n in analysis.graph_module.graph.nodes}
    spatial = axis - 2
    assert {crop.merge for crop in analysis.crops} == set(CAFFE_OFFSETS)
    for crop in analysis.crops:
        source = nodes[crop.name].args[0].name
        (stride, source_centre), (partner_stride, partner_centre) = maps[source], maps[crop.partner]
        assert stride == partner_stride, f"{source} and {crop.partner} have different strides"
        # cropped[i] = source[i + c] sits where partner[i] does: c = (centre_p - centre_s) / stride
        measured = (partner_centre - source_centre) / stride
        assert measured == CAFFE_OFFSETS[crop.merge]
        assert evaluate(crop.required[spatial], env) == measured, f"{crop.name}: derived offset"
        assert evaluate(crop.offset[spatial], env) == measured, f"{crop.name}: offset in the code"
        assert crop.aligned is True and crop.counterexample is None
        # after the crop, index by index, both tensors sit at the same place
        cropped, partner = fields[crop.name], fields[crop.partner]
        m = len(partner) // 2
        assert torch.allclose(cropped[m - 3:m + 4], partner[m - 3:m + 4], atol=1e-7)


@pytest.mark.parametrize("height, width, axis", FIELD_CASES)
def test_coordinate_maps_of_every_fcn8s_layer(height, width, axis):
    """The engine's stride and centre (the JSON's ``stride``/``center``) of
    every layer equal the measured ones."""
    analysis = analysis_of("fcn8s", 1.0)
    _fields, maps = _measure_fields(_linearised_fcn8s(analysis.graph_module.graph), height, width, axis)
    spatial = axis - 2
    wrong = []
    for layer in analysis.layers:
        geometry = layer.tensor.geometry[spatial]
        engine = (_exact(geometry.stride), _exact(geometry.center))
        if engine != maps[layer.name]:
            wrong.append((layer.name, engine, maps[layer.name]))
    assert not wrong, f"(layer, engine (stride, centre), measured): {wrong}"
    assert maps["pool3"] == (8, Fraction(-191, 2)) and maps["upscore8"] == (1, -31)


def test_half_the_size_difference_is_not_the_offset():
    """The measured offset is 5 at every size, but half the difference of the
    sizes torch gives (the hand derivation) is not."""
    analysis = analysis_of("fcn8s", 1.0)
    recorder = MetaShapeRecorder(analysis.graph_module)
    halves = set()
    for n in range(1, 65):
        with torch.no_grad():
            recorder.run(torch.empty(1, 3, n, n, device="meta"))
        halves.add(Fraction(recorder.shapes["score_pool4"][2] - recorder.shapes["upscore2"][2], 2))
    assert halves != {5} and len(halves) > 1


def test_a_shifted_crop_is_caught_by_both_torch_and_the_engine():
    """Moving FCN-8s's first crop from 5 to 6: the measured fields of the two
    merged tensors now differ by one step, and the engine says misaligned."""
    shifted = torch.fx.symbolic_trace(fcn8s(width=1 / 32).eval())
    node = next(n for n in shifted.graph.nodes if n.name == "getitem_2")
    batch, channel, rows, columns = node.args[1]
    with shifted.graph.inserting_before(node):
        row_stop = shifted.graph.call_function(operator.add, (rows.stop, 1))
        column_stop = shifted.graph.call_function(operator.add, (columns.stop, 1))
    node.args = (node.args[0], (batch, channel, slice(6, row_stop), slice(6, column_stop)))
    shifted.recompile()
    analysis = analyze(shifted, "H", name="fcn8s-shifted")
    crop = next(c for c in analysis.crops if c.name == "getitem_2")
    assert [evaluate(o, {}) for o in crop.offset] == [6, 6] and crop.aligned is False
    assert crop.counterexample == {"H": 1}
    fields, maps = _measure_fields(_linearised_fcn8s(shifted.graph), 900, 40, 2)
    stride = maps["upscore2"][0]
    m = len(fields["upscore2"]) // 2
    assert fields["getitem_2"][m].item() - fields["upscore2"][m].item() == pytest.approx(float(stride))
    assert (maps["score_pool4"][1] + 6 * stride) - maps["upscore2"][1] == stride


# ---------------------------------------------------------------------------
# the command line's analysis of a deeper configuration

RESNET101_OS8 = ["deeplabv3", "--arg", "backbone=resnet101", "--arg", "output_stride=8"]


def test_cli_analysis_of_resnet101_at_output_stride_8(capsys):
    from shapecalc.cli import main

    assert main(["trace", *RESNET101_OS8, "--input", "HxW", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    symbols = {name: sympy.Symbol(name, integer=True, positive=True) for name in ("H", "W")}
    parsed = {layer["name"]: [sympy.sympify(e, locals=symbols) for e in layer["spatial"]] for layer in data["layers"]}
    graph_module = torch.fx.symbolic_trace(load_model("deeplabv3", {"backbone": "resnet101", "output_stride": 8}))
    aspp_input = next(n for n in graph_module.graph.nodes if n.name == "aspp_b0_0").args[0].name
    assert data["layers"][[layer["name"] for layer in data["layers"]].index(aspp_input)]["spatial"] == \
        ["ceiling(H/8)", "ceiling(W/8)"]
    assert data["outputs"]["output"]["spatial"] == ["H", "W"]
    assert data["domain"]["valid"] == "every H >= 1; every W >= 1"
    recorder = MetaShapeRecorder(graph_module)
    for height, width in [(1, 1), (7, 300), (513, 513), (64, 1000), (1023, 17)]:
        recorder.shapes = {}
        with torch.no_grad():
            recorder.run(torch.empty(1, 3, height, width, device="meta"))
        assert list(parsed) == list(recorder.shapes)
        at = {symbols["H"]: height, symbols["W"]: width}
        for name, shape in recorder.shapes.items():
            assert [e.xreplace(at) for e in parsed[name]] == list(shape[2:]), (name, height, width)
