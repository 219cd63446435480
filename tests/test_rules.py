"""Every size rule against torch.

For each key of ``rules.RULES`` a hypothesis cross-check draws a module from
``shapecalc._selftest.op_cases.OP_CASES`` whose graph calls that key, analyses it with
a symbolic input, and compares every node's predicted shape (and every size
value) with a real forward pass at drawn sizes.  The domain is checked both
ways: where torch raises the engine must exclude the size, where torch runs it
must include it; a concrete-size analysis must agree and raise ``SizeError``
exactly when torch raises.  An AtenOp key's case is analysed with
``capture="aten"`` and its captured ATen graph itself is run on CPU tensors
(every ATen node's size, the domain against the module).  Focused tests then pin the size facts of
docs/GEOMETRY against torch on brute-force grids (meta tensors).
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from shapecalc import SizeError, UnsupportedOpError, analyze, size_symbol
from shapecalc.engine import rules
from shapecalc.engine.propagate import META_KEY
from shapecalc._selftest.op_cases import OP_CASES, OpCase, aten_calls, aten_matches
from shapecalc.strategies import conv_layers, input_sizes, pool_layers, resampling_layers, transposed_conv_layers
from shapecalc.engine.symbolic import evaluate, format_expr
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.verify import size_analysis

# int() of a traced size is a graph call only where a module asks for it
torch.fx.wrap("int")

SPECS = {1: "H", 2: "HxW", 3: "DxHxW"}
LARGEST = {1: 64, 2: 48, 3: 10}

# Rules with many size paths get more examples; the pointwise aliases share
# one rule and need only a few each.
EXAMPLES = {
    "convolution": 20, "functional_convolution": 10, "transposed_convolution": 20, "max_pooling": 20,
    "average_pooling": 20, "functional_max_pooling": 10, "functional_average_pooling": 10, "adaptive_pooling": 6,
    "functional_adaptive_pooling": 5, "functional_adaptive_average_pooling": 5, "interpolate": 20, "upsample": 25,
    "functional_pad": 20, "padding_module": 6, "getitem": 40, "reshape": 10, "concatenate": 10, "stack": 10,
    "size": 8, "add": 5, "subtract": 4, "multiply": 4, "divide": 4, "floor_divide": 5, "modulo": 8, "negate": 8,
    "to_int": 12, "length": 5, "attribute": 6, "flatten": 6, "flatten_module": 6, "linear": 10, "permute": 5,
    "transpose": 5, "unsqueeze": 5, "squeeze": 6, "reduction": 6, "extremum": 6, "elementwise_pair": 6,
    "layer_norm": 8, "group_norm": 6, "instance_norm": 6,
}
DEFAULT_EXAMPLES = 3
# ATen cases cost a capture each (~0.05-0.3 s): rules shared by many keys
# (every unary op, every broadcasting one) get one or two examples per key,
# the window and reshaping families a few more.
ATEN_EXAMPLES = {
    "aten_convolution": 12, "aten_max_pool_with_indices": 8, "aten_average_pool": 8,
    "aten_adaptive_average_pool": 5, "aten_adaptive_max_pool": 5, "aten_interpolate": 12, "aten_slice": 10,
    "aten_view": 5, "aten_permute": 4, "aten_transpose": 4, "aten_squeeze": 4, "aten_reduction": 3, "aten_mean": 5,
    "aten_cat": 6, "aten_stack": 5, "aten_split": 4, "aten_constant_pad": 8, "aten_mode_pad": 4,
    "aten_shape_preserving": 1, "aten_elementwise": 2, "aten_three_way": 2, "aten_new_tensor": 2,
}
DEFAULT_ATEN_EXAMPLES = 3


# ---------------------------------------------------------------------------
# the torch side


class _Recorder(torch.fx.Interpreter):
    """Runs the graph on real tensors and keeps every node's value."""

    def __init__(self, graph_module):
        super().__init__(graph_module, garbage_collect_values=False)
        self.extra_traceback = False  # else the first error imports torch._dynamo
        self.values = {}

    def run_node(self, n):
        value = super().run_node(n)
        self.values[n.name] = value
        return value


def torch_values(graph_module, channels: int, sizes: tuple):
    """Every node's value in a real forward pass, or the exception torch raised."""
    x = torch.randn(1, channels, *sizes)
    recorder = _Recorder(graph_module)
    try:
        with torch.no_grad():
            recorder.run(x)
    except Exception as error:  # noqa: BLE001 - any torch failure is a size verdict
        return error
    for node in graph_module.graph.nodes:
        # PyTorch's kernels disagree on a transposed conv with an empty output
        # axis: the reference CPU path (groups=1) rejects it, oneDNN (groups>1)
        # returns an empty tensor, the meta check rejects it only when every
        # axis is empty.  shapecalc takes the reference kernel's side.
        if node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), _TRANSPOSED) \
                and recorder.values[node.name].numel() == 0:
            return RuntimeError(f"{node.name}: empty transposed-conv output (the reference kernel rejects it)")
    return recorder.values


_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def node_key(node: torch.fx.Node, graph_module):
    if node.op == "call_module":
        return type(graph_module.get_submodule(node.target))
    if node.op in ("call_function", "call_method"):
        return node.target
    return None


def same_key(a, b) -> bool:
    # a key by qualified name (a library shapecalc does not import) matches its function
    return a is b or (isinstance(a, str) and a == b) or (isinstance(b, rules.QualifiedName) and rules.registry._qualified(a) == b) \
        or aten_matches(a, b)


# ---------------------------------------------------------------------------
# comparing engine values with torch values


def assert_same(engine, real, env, where: str) -> None:
    if isinstance(real, torch.Tensor):
        assert isinstance(engine, SymbolicTensor), f"{where}: engine has {engine!r} for a tensor"
        predicted = tuple(evaluate(s, env) for s in engine.shape)
        assert predicted == tuple(real.shape), f"{where}: engine {engine.shape} = {predicted}, torch {tuple(real.shape)}"
        assert all(0 <= a < len(predicted) for a in engine.spatial), f"{where}: spatial axes {engine.spatial}"
    elif isinstance(real, (tuple, list, torch.Size)):
        assert isinstance(engine, (tuple, list)) and len(engine) == len(real), f"{where}: {engine!r} vs {real!r}"
        for i, (e, r) in enumerate(zip(engine, real)):
            assert_same(e, r, env, f"{where}[{i}]")
    elif isinstance(real, bool) or real is None or isinstance(real, (torch.dtype, str)):
        return
    elif isinstance(real, (int, float)):
        value = evaluate(engine, env) if isinstance(engine, (sympy.Basic, int, Fraction)) else engine
        if isinstance(real, float):
            # Python divides in double precision, the engine keeps the exact
            # rational: the correctly rounded double of it is Python's result.
            value = float(value)
        assert value == real, f"{where}: engine {engine} = {value}, torch {real}"


def engine_accepts(analysis, env) -> bool:
    """Is ``env`` inside the engine's exact domain (conditions tying several
    symbols included, undecided ones evaluated)?"""
    return env in analysis.domain


def graph_values(graph_module) -> dict:
    return {n.name: n.meta[META_KEY] for n in graph_module.graph.nodes if META_KEY in n.meta}


def concrete_spec(sizes) -> str:
    return "x".join(map(str, sizes))


def _probes(data, analysis, dims: int) -> list:
    """3-4 drawn sizes per case, and one the analysis calls valid where it has one that small."""
    probes = data.draw(st.lists(st.tuples(*[axis_sizes(dims)] * dims), min_size=3, max_size=4), label="sizes")
    if analysis is not None:
        try:
            probes.append(data.draw(st.tuples(*[input_sizes(analysis, str(s), max_value=LARGEST[dims])
                                                for s in analysis.symbols]), label="valid sizes"))
        except InvalidArgument:
            pass  # no valid size that small
    return probes


def axis_sizes(dims: int):
    return st.one_of(st.sampled_from((1, 2, 3, 5, 7, 8)), st.integers(1, LARGEST[dims]))


def cross_check(case: OpCase, data) -> None:
    """Everything a rule must satisfy for one drawn case."""
    module, dims = case.module, case.dims
    symbols = [size_symbol(s) for s in SPECS[dims].split("x")]
    try:
        # sizes and domain only: the crop/merge/resample audits are not rules
        analysis = size_analysis(module, SPECS[dims], channels=case.channels, dimensions=dims)
    except SizeError:
        analysis = None  # a constant requirement failed: torch must fail at every size
    graph_module = analysis.graph_module if analysis else torch.fx.symbolic_trace(module) \
        if not isinstance(module, torch.fx.GraphModule) else module
    assert any(same_key(node_key(n, graph_module), case.key) for n in graph_module.graph.nodes), \
        f"{case!r}: the traced graph never calls {rules.key_name(case.key)}"
    symbolic = graph_values(graph_module) if analysis else {}

    probes = _probes(data, analysis, dims)
    for sizes in probes:
        env = dict(zip(symbols, sizes))
        real = torch_values(graph_module, case.channels, sizes)
        torch_ran = not isinstance(real, Exception)
        if analysis is not None:
            accepted = engine_accepts(analysis, env)
            assert accepted == torch_ran, (
                f"{case!r} at {sizes}: torch {'runs' if torch_ran else f'raises {real!r}'}, "
                f"engine domain {'includes' if accepted else 'excludes'} it ({analysis.validity_sentence()})")
        else:
            assert not torch_ran, f"{case!r}: engine says it never runs, torch runs at {sizes}"
        if torch_ran:
            for name, value in real.items():
                assert_same(symbolic[name], value, env, f"{case!r} at {sizes}, node {name}")
        try:
            concrete = analyze(module, concrete_spec(sizes), channels=case.channels)
        except SizeError as error:
            assert not torch_ran, f"{case!r} at {sizes}: concrete analysis raises {error} but torch runs"
            continue
        assert torch_ran, f"{case!r} at {sizes}: torch raises {real!r}, concrete analysis does not"
        for name, value in real.items():
            assert_same(graph_values(concrete.graph_module)[name], value, {}, f"{case!r} at {sizes} (concrete), node {name}")


def _is_transposed_conv(node) -> bool:
    return node.op == "call_function" and getattr(node.target, "_schema", None) is not None \
        and node.target._schema.name == "aten::convolution" and bool(node.args[6])


class _ShapeRecorder(_Recorder):
    """Keeps each tensor's shape as the node left it (a meta tensor): an
    in-place op on a later node (unsqueeze_, as_strided_) must not change
    what an earlier node is compared with."""

    def run_node(self, n):
        value = super().run_node(n)
        self.values[n.name] = _snapshot(value)
        return value


def _snapshot(value):
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (tuple, list)):
        return type(value)(_snapshot(v) for v in value)
    return value


def aten_torch_values(graph_module, channels: int, sizes: tuple):
    """Every node's value when the captured ATen graph itself runs on a real
    CPU tensor (an fx.Interpreter over torch's own kernels), or what it raised."""
    recorder = _ShapeRecorder(graph_module)
    try:
        with torch.no_grad():
            recorder.run(torch.randn(1, channels, *sizes))
    except Exception as error:  # noqa: BLE001 - any torch failure is a size verdict
        return error
    for node in graph_module.graph.nodes:
        # as for the fx cases: the reference transposed-conv kernel rejects an empty output
        if _is_transposed_conv(node) and recorder.values[node.name].numel() == 0:
            return RuntimeError(f"{node.name}: empty transposed-conv output (the reference kernel rejects it)")
    return recorder.values


def module_runs(module, channels: int, sizes: tuple) -> bool:
    try:
        with torch.no_grad():
            module(torch.randn(1, channels, *sizes))
    except Exception:  # noqa: BLE001
        return False
    return True


#: captures per ATen analysis in the cross-check: a region where torch
#: raises may take several; sizes left unexplored are not compared
ATEN_CAPTURES = 4


def _holds(condition, env) -> bool:
    return bool(sympy.sympify(condition).subs(env))


def aten_cross_check(case: OpCase, data) -> None:
    """An ATen case: analyse with the ATen front end, then compare every ATen
    node's size and the domain with the captured graph run on CPU tensors."""
    module, dims = case.module, case.dims
    symbols = [size_symbol(s) for s in SPECS[dims].split("x")]
    analysis = analyze(module, SPECS[dims], channels=case.channels, capture="aten", max_captures=ATEN_CAPTURES)
    graph_module = analysis.graph_module
    assert aten_calls(graph_module, case.key), \
        f"{case!r}: the ATen capture never calls {rules.key_name(case.key)}:\n{graph_module.graph}"
    symbolic = graph_values(graph_module)
    # the graph is the model inside its capture's region (where the code's decisions on sizes go the same way)
    graph_piece = next(p for p in analysis.pieces if p.runs)

    probes = _probes(data, analysis, dims)
    for sizes in probes:
        env = dict(zip(symbols, sizes))
        piece = next((p for p in analysis.pieces if _holds(p.condition, env)), None)
        if piece is None:
            # outside every explored region: the analysis claims nothing there (its notes say so)
            assert analysis.pieces_complete is not True, f"{case!r} at {sizes}: in no piece of a complete analysis"
            continue
        accepted = engine_accepts(analysis, env)
        if piece is not graph_piece:
            # another region: only the verdict is compared, with the module itself
            torch_ran = module_runs(module, case.channels, sizes)
            assert accepted == torch_ran, (f"{case!r} at {sizes} (region {format_expr(piece.condition)}): torch "
                                           f"{'runs' if torch_ran else 'raises'}, engine {'accepts' if accepted else 'excludes'}")
            continue
        # the verdict is the module's (its Python may check sizes the ATen op does not, as
        # F.batch_norm's "more than 1 value per channel"); the sizes are the graph's nodes'
        real = aten_torch_values(graph_module, case.channels, sizes)
        torch_ran = module_runs(module, case.channels, sizes) and not isinstance(real, Exception)
        assert accepted == torch_ran, (
            f"{case!r} at {sizes}: torch {'runs' if torch_ran else 'raises'} (the graph: "
            f"{'runs' if not isinstance(real, Exception) else f'raises {real!r}'}), "
            f"engine domain {'includes' if accepted else 'excludes'} it ({analysis.validity_sentence()})")
        if torch_ran:
            for name, value in real.items():
                assert_same(symbolic[name], value, env, f"{case!r} at {sizes}, node {name}")
    # one concrete-size capture (each costs a capture): it must raise SizeError exactly where torch raises
    sizes = probes[-1]
    torch_ran = module_runs(module, case.channels, sizes)
    try:
        concrete = analyze(module, concrete_spec(sizes), channels=case.channels, capture="aten", max_captures=1)
    except SizeError as error:
        assert not torch_ran, f"{case!r} at {sizes}: concrete analysis raises {error} but torch runs"
        return
    assert torch_ran, f"{case!r} at {sizes}: torch raises, the concrete analysis does not"
    real = aten_torch_values(concrete.graph_module, case.channels, sizes)
    assert not isinstance(real, Exception), f"{case!r} at {sizes}: the concrete capture's graph raises {real!r}"
    for name, value in real.items():
        assert_same(graph_values(concrete.graph_module)[name], value, {}, f"{case!r} at {sizes} (concrete), node {name}")


# ---------------------------------------------------------------------------
# the registry walk


def test_every_rule_key_has_a_cross_check_case():
    missing = [rules.key_name(key) for key in rules.RULES if key not in OP_CASES]
    assert not missing, f"rules without an OP_CASES entry in shapecalc/_selftest/op_cases.py: {missing}"
    extra = [repr(key) for key in OP_CASES if key not in rules.RULES]
    assert not extra, f"OP_CASES entries without a rule: {extra}"


KEYS = list(rules.RULES)


@pytest.mark.parametrize("key", KEYS, ids=[rules.key_name(k) for k in KEYS])
def test_rule_matches_torch(key):
    if key == "cuda" and not torch.cuda.is_available():
        pytest.skip("Tensor.cuda needs a CUDA device")
    name = rules.RULES[key].name
    examples = ATEN_EXAMPLES.get(name, DEFAULT_ATEN_EXAMPLES) if isinstance(key, rules.AtenOp) \
        else EXAMPLES.get(name, DEFAULT_EXAMPLES)

    @settings(max_examples=examples)
    @given(case=OP_CASES[key](), data=st.data())
    def check(case, data):
        assert case.key == key, f"{case!r} is a case of another key"
        if case.capture == "aten":
            aten_cross_check(case, data)
        else:
            cross_check(case, data)

    check()


# ---------------------------------------------------------------------------
# GEOMETRY facts, brute force against torch


def meta_size(layer, n: int):
    """Output length of ``layer`` on a 1-d input of length n, or None if torch raises."""
    try:
        return layer(torch.empty(1, 1, n, device="meta")).shape[-1]
    except RuntimeError:
        return None


def test_ceil_mode_pool_drops_a_window_starting_in_the_padding():
    layer = nn.MaxPool2d(2, 2, padding=1, ceil_mode=True)
    assert layer(torch.empty(1, 1, 7, 7, device="meta")).shape[-2:] == (4, 4)
    analysis = analyze(layer, "7")
    assert analysis.layers[-1].spatial == (4, 4)
    H = size_symbol("H")
    symbolic = analyze(layer, "H").layers[-1].spatial[0]
    assert evaluate(symbolic, {H: 7}) == 4


def test_pool_sizes_match_torch_on_a_grid():
    """Every (k, s, p, d, ceil_mode) with p <= k/2 and n in 1..24."""
    H = size_symbol("H")
    checked = 0
    for k, s, d, ceil_mode in itertools.product(range(1, 5), range(1, 4), range(1, 4), (False, True)):
        for p in range(0, k // 2 + 1):
            layer = nn.MaxPool1d(k, s, p, d, ceil_mode=ceil_mode)
            size, numerator = rules.pooled_size(H, k, s, p, d, ceil_mode)
            for n in range(1, 25):
                expected = meta_size(layer, n)
                runs = evaluate(numerator, {H: n}) >= 0
                assert runs == (expected is not None), (k, s, p, d, ceil_mode, n)
                if expected is not None:
                    assert evaluate(size, {H: n}) == expected, (k, s, p, d, ceil_mode, n)
                    # GEOMETRY.md's two-step statement of the same rule
                    reach = n + 2 * p - d * (k - 1) - 1
                    out = (-(-reach // s) if ceil_mode else reach // s) + 1
                    if ceil_mode and (out - 1) * s >= n + p:
                        out -= 1
                    assert out == expected
                checked += 1
    assert checked > 3000


def test_avg_pool_sizes_match_torch_on_a_grid():
    H = size_symbol("H")
    for k, s, ceil_mode in itertools.product(range(1, 6), range(1, 4), (False, True)):
        for p in range(0, k // 2 + 1):
            layer = nn.AvgPool1d(k, s, p, ceil_mode=ceil_mode)
            analysis = analyze(layer, "H", channels=1)
            (size,) = analysis.layers[-1].spatial
            for n in range(1, 25):
                expected = meta_size(layer, n)
                assert (n in analysis.valid_sizes("H")) == (expected is not None), (k, s, p, ceil_mode, n)
                if expected is not None:
                    assert evaluate(size, {H: n}) == expected, (k, s, p, ceil_mode, n)


def test_transposed_conv_sizes_with_output_padding_and_dilation():
    H = size_symbol("H")
    for k, s, p, d in itertools.product(range(1, 5), range(1, 4), range(0, 4), range(1, 4)):
        for output_padding in range(max(s, d)):
            layer = nn.ConvTranspose1d(1, 1, k, s, p, output_padding, dilation=d, bias=False, device="meta")
            analysis = analyze(layer, "H", channels=1)
            (size,) = analysis.layers[-1].spatial
            for n in (1, 2, 3, 4, 7, 10):
                expected = meta_size(layer, n)
                assert (n in analysis.valid_sizes("H")) == (expected is not None), (k, s, p, d, output_padding, n)
                if expected is not None:
                    assert evaluate(size, {H: n}) == expected
                    assert expected == (n - 1) * s - 2 * p + d * (k - 1) + output_padding + 1


@pytest.mark.parametrize("factor", [0.25, 0.5, 0.75, 1.5, 2.0, 2.5, 3.0])
def test_interpolate_with_a_scale_factor_floors(factor):
    H = size_symbol("H")
    layer = nn.Upsample(scale_factor=factor, mode="nearest")
    analysis = analyze(layer, "H", channels=1)  # square: nothing says 1-d
    size = analysis.layers[-1].spatial[0]
    for n in range(1, 80):
        expected = meta_size(layer, n)
        assert (n in analysis.valid_sizes("H")) == (expected is not None), n
        if expected is not None:
            assert evaluate(size, {H: n}) == expected == int(Fraction(factor) * n)


def test_interpolate_refuses_factors_that_round_in_floating_point():
    with pytest.raises(UnsupportedOpError, match="dyadic"):
        analyze(nn.Upsample(scale_factor=0.1), "H", channels=1)


class _Slice(nn.Module):
    def __init__(self, start, stop):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x):
        return x[:, :, self.start:self.stop]


@pytest.mark.parametrize("start", [None, -13, -5, -1, 0, 1, 3, 13])
def test_slices_clamp_like_python(start):
    """``x[a:b]`` never raises: bounds count from the end and clamp to [0, n]."""
    H = size_symbol("H")
    for stop in (None, -13, -4, -1, 0, 2, 5, 13):
        analysis = analyze(_Slice(start, stop), "H", channels=1)
        size = analysis.layers[-1].spatial[0]
        for n in range(1, 17):
            expected = torch.empty(1, 1, n, device="meta")[:, :, start:stop].shape[-1]
            assert evaluate(size, {H: n}) == expected, (start, stop, n)
            assert n in analysis.valid_sizes("H")


def test_crop_that_does_not_fit_gives_a_shorter_tensor():
    class Crop(nn.Module):
        def forward(self, x):
            return x[:, :, 5:5 + 8]

    H = size_symbol("H")
    size = analyze(Crop(), "H", channels=1).layers[-1].spatial[0]
    for n in range(1, 20):
        assert evaluate(size, {H: n}) == torch.empty(1, 1, n, device="meta")[:, :, 5:13].shape[-1]


class _FloatCrop(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x[:, :, : int(x.size(2) * self.factor)]


def test_int_of_a_float_product_is_what_python_computes():
    # 90 * 0.7 is 62.99999999999999 in double precision: int() gives 62
    assert analyze(_FloatCrop(0.7), "90x90", channels=1).layers[-1].spatial[0] == 62
    with pytest.raises(UnsupportedOpError, match="double precision"):
        analyze(_FloatCrop(0.7), "H", channels=1)
    H = size_symbol("H")
    size = analyze(_FloatCrop(0.75), "H", channels=1).layers[-1].spatial[0]
    for n in range(1, 200):
        assert evaluate(size, {H: n}) == torch.empty(1, 1, n, 1, device="meta")[:, :, : int(n * 0.75)].shape[2]


class _CentreCrop(nn.Module):
    """A centre crop whose offset goes negative when the input is small."""

    def forward(self, x):
        offset = int((x.size(2) - 10) / 3)
        return x[:, :, offset + 4:]


def test_int_truncates_toward_zero():
    H = size_symbol("H")
    size = analyze(_CentreCrop(), "H", channels=1).layers[-1].spatial[0]
    for n in range(1, 40):
        expected = torch.empty(1, 1, n, 1, device="meta")[:, :, int((n - 10) / 3) + 4:].shape[2]
        assert evaluate(size, {H: n}) == expected, n
        assert analyze(_CentreCrop(), f"{n}x1", channels=1).layers[-1].spatial[0] == expected


class _FoldLast(nn.Module):
    def forward(self, x):
        return x.view(1, 1, -1, 2)


def test_view_with_an_inferred_axis_needs_divisibility():
    H = size_symbol("H")
    analysis = size_analysis(_FoldLast(), "H", channels=1, dimensions=1)
    for n in range(1, 30):
        runs = n % 2 == 0
        assert (n in analysis.valid_sizes("H")) == runs
        if runs:
            assert evaluate(analysis.graph_module.graph.output_node().args[0].meta["shapecalc"].shape[2], {H: n}) \
                == torch.empty(1, 1, n).view(1, 1, -1, 2).shape[2]


# ---------------------------------------------------------------------------
# the strategies themselves


def test_import_shapecalc_does_not_import_hypothesis():
    import subprocess
    import sys

    code = "import sys, shapecalc; print('hypothesis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


class _Skip(nn.Module):
    """A U-Net skip without a crop: runs only for even sizes >= 2."""

    def __init__(self):
        super().__init__()
        self.down, self.up = nn.MaxPool2d(2), nn.ConvTranspose2d(1, 1, 2, stride=2)

    def forward(self, x):
        return x + self.up(self.down(x))


def test_input_sizes_draw_only_valid_sizes_and_shrink_to_the_smallest():
    from hypothesis import find

    analysis = analyze(_Skip(), "H", channels=1)
    assert find(input_sizes(analysis, "H"), lambda n: True) == 2
    assert find(input_sizes(_Skip(), "H", min_value=7), lambda n: True) == 8

    @settings(max_examples=50)
    @given(n=input_sizes(analysis, "H", max_value=64))
    def check(n):
        assert n % 2 == 0 and 2 <= n <= 64
        _Skip()(torch.empty(1, 1, n, n, device="meta"))

    check()


@pytest.mark.parametrize("call, name", [
    (lambda: input_sizes(_Skip(), "H", min_value=0), "min_value"),
    (lambda: input_sizes(_Skip(), "H", min_value=5, max_value=4), "max_value"),
    (lambda: input_sizes(_Skip(), "H", max_value="9"), "max_value"),
    (lambda: input_sizes(_Skip(), "H", min_value=3, max_value=3), "max_value"),
    (lambda: input_sizes(analyze(_Skip(), "H", channels=1), "W"), "symbol"),
    (lambda: input_sizes(_Skip(), "H W"), "symbol"),
    (lambda: input_sizes(42, "H"), "model_or_analysis"),
    (lambda: conv_layers(dims=4), "dims"),
    (lambda: conv_layers(in_channels=0), "in_channels"),
    (lambda: conv_layers(padding_modes=("mirror",)), "padding_modes"),
    (lambda: transposed_conv_layers(max_stride=True), "max_stride"),
    (lambda: pool_layers(kinds=("min",)), "kinds"),
    (lambda: pool_layers(kinds=()), "kinds"),
    (lambda: resampling_layers(2, modes=("trilinear",)), "modes"),
    (lambda: resampling_layers(scale_factors=(0.1,)), "scale_factors"),
    (lambda: resampling_layers(max_size=0), "max_size"),
])
def test_strategy_arguments_are_validated_at_once(call, name):
    with pytest.raises(InvalidArgument, match=name):
        call()


@settings(max_examples=40)
@given(data=st.data(), dims=st.sampled_from((1, 2, 3)))
def test_layer_strategies_draw_modules_torch_accepts(data, dims):
    layer = data.draw(st.one_of(conv_layers(dims, in_channels=2), transposed_conv_layers(dims, in_channels=2),
                                pool_layers(dims), resampling_layers(dims)))
    x = torch.empty(1, 2, *[16] * dims)
    assert layer(x).dim() == dims + 2


class _CropThen(nn.Module):
    def __init__(self, reduce):
        super().__init__()
        self.reduce = reduce

    def forward(self, x):
        return getattr(x[:, :, 5:], self.reduce)(2)


@pytest.mark.parametrize("reduce", ["sum", "mean", "amax", "amin"])
def test_reductions_over_an_emptied_axis(reduce):
    """A sum or mean of nothing runs (0, nan); amax/amin of nothing raises."""
    valid = size_analysis(_CropThen(reduce), "H", channels=1, dimensions=1).valid_sizes("H")
    for n in range(1, 12):
        try:
            getattr(torch.empty(1, 1, n, device="meta")[:, :, 5:], reduce)(2)
            runs = True
        except (RuntimeError, IndexError):
            runs = False
        assert (n in valid) == runs, (reduce, n)


class _Circular(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x, self.pad, mode="circular")


@pytest.mark.parametrize("dims, axis", [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_circular_padding_after_a_crop_on_the_other_side(dims, axis):
    """On the outermost padded axis torch wraps the cropped input, and a pad
    wider than what the crop leaves fails ("...refer to a single memory
    location"); inner axes run.  Checked wherever the crop leaves at least
    one element (beyond that torch gives garbage or fails, by side)."""
    for left, right in itertools.product(range(-4, 6), repeat=2):
        pad = [0] * (2 * dims)
        pad[2 * axis], pad[2 * axis + 1] = left, right
        pad = tuple(pad)
        valid = size_analysis(_Circular(pad), "H", channels=1, dimensions=dims).valid_sizes("H")
        for n in range(1, 10):
            if n + min(left, 0) + min(right, 0) < 1 and max(left, right) > 0:
                continue
            try:
                F.pad(torch.zeros(1, 1, *[n] * dims), pad, mode="circular")
                runs = True
            except RuntimeError:
                runs = False
            assert (n in valid) == runs, (pad, n)
