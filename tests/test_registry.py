"""The registry is the only source of op knowledge: a walk over
``rules.RULES`` checks that what the merge audit, the resampling audit, the
params column and input inference know about an op comes from its rule.

Ground truth is torch: autograd for where the inputs of a merge sit (as in
``test_geometry``), meta-tensor forward passes for sizes and channels.
"""

from __future__ import annotations

import inspect
import operator
import re
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

import shapecalc
from shapecalc.engine import rules
from shapecalc._selftest import op_cases
from shapecalc._selftest.op_cases import OP_CASES, aten_binary_call, aten_calls, aten_op
from shapecalc.engine.symbolic import evaluate
from shapecalc.capture.trace import spatial_dimensions_and_channels
from test_geometry import centroid, run
from test_receptive_field import Recorder

MERGE_KEYS = [key for key, found in rules.RULES.items() if found.merge is not None]
RESAMPLE_KEYS = [key for key, found in rules.RULES.items() if found.resample is not None]


def _ids(keys):
    return [rules.key_name(k) for k in keys]


# ---------------------------------------------------------------------------
# merges


def _misaligned_merge(key, kind: str) -> torch.fx.GraphModule:
    """``key`` applied to two crops of the input one row apart (the first
    starts at row 1, the second at row 0)."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    late = graph.call_function(operator.getitem, (x, (slice(None), slice(None), slice(1, None))))
    early = graph.call_function(operator.getitem, (x, (slice(None), slice(None), slice(None, -1))))
    args, kwargs = ((late, early), {}) if kind == "broadcast" else (([late, early],), {"dim": 1})
    merged = graph.create_node("call_method" if isinstance(key, str) else "call_function", key, args, kwargs)
    graph.output(merged)
    return torch.fx.GraphModule(nn.Module(), graph)


class _AtenMisalignedMerge(nn.Module):
    """An ATen merge op on two crops of the input one row apart (as
    :func:`_misaligned_merge`), for the ATen capture to record."""

    def __init__(self, key):
        super().__init__()
        self.key = key
        # where.self's condition: a constant, so the merge's positioned inputs are the two crops
        self.register_buffer("condition", torch.ones((), dtype=torch.bool))

    def forward(self, x):
        late, early = x[:, :, 1:], x[:, :, :-1]
        if self.key.name.split(".")[0].endswith("_"):
            late = late.clone()  # in place: not on a view of the input
        kind, op = rules.RULES[self.key].merge, aten_op(self.key)
        if kind != "broadcast":
            return op([late, early], 1)
        if self.key.name == "aten::where.self":
            return op(self.condition, late, early)
        return aten_binary_call(self.key)(late, early)


def _floating_source(graph_module, name: str, values) -> str:
    """``name``, or the node it casts or copies: a boolean operand's float
    source, an in-place op's copy (its value is overwritten by the op)."""
    node = next(n for n in graph_module.graph.nodes if n.name == name)
    while not values[node.name].is_floating_point() or node.target is torch.ops.aten.clone.default:
        node = node.args[0]
    return node.name


@pytest.mark.parametrize("key", MERGE_KEYS, ids=_ids(MERGE_KEYS))
def test_every_merge_rule_is_audited_and_its_shift_is_torchs(key):
    if isinstance(key, rules.AtenOp):
        # an AtenOp key is no callable for an fx node: the ATen capture of a module calling it
        analysis = shapecalc.analyze(_AtenMisalignedMerge(key), "H", channels=3, capture="aten")
        assert aten_calls(analysis.graph_module, key), f"the capture does not call {key.name}"
        graph_module = analysis.graph_module
    else:
        graph_module = _misaligned_merge(key, rules.RULES[key].merge)
        analysis = shapecalc.analyze(graph_module, "H")
    (merge,) = analysis.merges
    # torch: where the two inputs' pixels sit, by autograd
    x = (0.5 + torch.rand(1, 3, 12, 12, dtype=torch.float64)).requires_grad_()
    recorder = Recorder(graph_module)
    recorder.run(x)
    first, second = [_floating_source(graph_module, n, recorder.values) for n in dict.fromkeys(merge.inputs)]
    measured = centroid(recorder.values[second], x, 4) - centroid(recorder.values[first], x, 4)
    assert measured == pytest.approx(-1.0)
    assert merge.aligned is False and merge.shift[0] == round(measured)


def test_true_divide_merge_is_reported():
    # the reproducer, traced from a module (fx records torch.true_divide itself)
    class Divide(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv1d(1, 1, 2, stride=2)
            self.same = nn.Conv1d(1, 1, 1, stride=2)

        def forward(self, x):
            return torch.true_divide(self.down(x), self.same(x))

    analysis = shapecalc.analyze(Divide(), "H")
    (merge,) = analysis.merges
    # torch: down's pixel j averages inputs 2j and 2j+1 (centre 2j + 1/2), same's reads 2j
    x = (0.5 + torch.rand(1, 1, 16, dtype=torch.float64)).requires_grad_()
    values = run(analysis, x)
    measured = centroid(values["same"], x, 3) - centroid(values["down"], x, 3)
    assert merge.aligned is False and float(merge.shift[0]) == pytest.approx(measured)


def test_binary_tensor_cases_are_merge_rules():
    # the cross-check cases that combine two tensors (the cases' own list)
    # are exactly ops the merge audit must see
    missing = [rules.key_name(k) for k in op_cases._BINARY if rules.RULES[k].merge is None]
    assert not missing, f"binary tensor ops without merge=: {missing}"


class _TwoTensors(nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, x):
        return self.call(x, x.amax(2, keepdim=True))


#: the fx binary cases' tensor functions, and the concatenations
_TWO_TENSOR_CALLS = sorted({f for f in op_cases._BINARY if callable(f)} | {torch.cat, torch.stack}, key=str)


@pytest.mark.parametrize("call", _TWO_TENSOR_CALLS, ids=_ids(_TWO_TENSOR_CALLS))
def test_aten_ops_combining_two_positioned_tensors_are_merge_rules(call):
    # the ATen side of the check above: whatever ATen op a two-tensor call is
    # recorded as, an op reading two tensors with spatial axes (torch's own
    # recorded shapes) is one the merge audit sees
    if call in (torch.cat, torch.stack):
        module = _TwoTensors(lambda a, b: call([a, b.expand_as(a)], 1))
    else:
        module = _TwoTensors(call)
    graph_module = shapecalc.analyze(module, "H", channels=2, capture="aten").graph_module
    combining = []
    for node in graph_module.graph.nodes:
        operands = [a for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)
                    and a.meta["val"].dim() > 2]
        if node.op == "call_function" and len(operands) > 1:
            combining.append(node)
    assert combining, f"{rules.key_name(call)}: no ATen op reads both tensors:\n{graph_module.graph}"
    not_merges = [str(n.target) for n in combining if rules.node_rule(n, graph_module).merge is None]
    assert not not_merges, f"{rules.key_name(call)} is recorded as {not_merges}, ops without merge="


FX_ONLY_ATEN = [key for key in rules.RULES if isinstance(key, rules.AtenOp) and op_cases.never_captured(key)]


@pytest.mark.parametrize("key", FX_ONLY_ATEN, ids=_ids(FX_ONLY_ATEN))
def test_aten_keys_checked_on_fx_graphs_are_never_captured(key):
    # an AtenOp key whose case is an fx graph (op_cases.never_captured) must
    # really be one the ATen capture does not record: its case's module,
    # captured, calls something else (or cannot be captured at all)
    @settings(max_examples=1, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=OP_CASES[key]())
    def check(case):
        assert case.capture == "fx"
        spec = {1: "H", 2: "HxW", 3: "DxHxW"}[case.dims]
        try:
            graph_module = shapecalc.analyze(case.module, spec, channels=case.channels, capture="aten").graph_module
        except shapecalc.ShapecalcError:
            return
        assert not aten_calls(graph_module, key), f"{case!r}: the ATen capture records {key.name}: give it an ATen case"

    check()


# ---------------------------------------------------------------------------
# resamplers


def _calls(graph_module, key) -> list[torch.fx.Node]:
    if isinstance(key, rules.AtenOp):
        return aten_calls(graph_module, key)
    found = rules.RULES[key]
    return [n for n in graph_module.graph.nodes if rules.node_rule(n, graph_module) is found
            and (n.target is key or n.target == key if n.op != "call_module"
                 else rules.registered_class(graph_module.get_submodule(n.target)) is key)]


@pytest.mark.parametrize("key", RESAMPLE_KEYS, ids=_ids(RESAMPLE_KEYS))
def test_every_resampler_is_audited(key):
    @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=OP_CASES[key]())
    def check(case):
        sizes = "x".join(["12"] * case.dims)
        try:
            analysis = shapecalc.analyze(case.module, sizes, channels=case.channels, capture=case.capture)
        except shapecalc.ShapecalcError:
            return  # a drawn case torch refuses at this size: nothing sampled
        calls = _calls(analysis.graph_module, key)
        assert calls, f"{case!r} does not call {rules.key_name(key)}"
        if isinstance(key, rules.AtenOp):
            # an ATen op may resample only in some calls (mean.dim: over every spatial axis, kept)
            calls = [n for n in calls if rules.RULES[key].resample(n, analysis.graph_module, case.dims) is not None]
            if not calls:
                return
        called = {n.name for n in calls}
        assert called <= {r.name for r in analysis.resamples}, f"{case!r}: {called} not audited"
        audited.append(case)

    audited: list = []
    check()
    assert audited, f"no drawn case of {rules.key_name(key)} ran at 12 pixels"


# ---------------------------------------------------------------------------
# params and spatial rank


#: constructor or rule parameters that move sizes: the params column shows them
SHOWN = {"kernel_size", "stride", "padding", "dilation", "output_size", "scale_factor"}
#: ... and these belong to a window over a fixed number of spatial axes
WINDOWED = {"kernel_size", "stride", "padding", "dilation"}


def _parameter_names(key) -> set:
    target = key.__init__ if isinstance(key, type) else rules.RULES[key].function
    return set(inspect.signature(target).parameters)


@pytest.mark.parametrize("key", list(rules.RULES), ids=_ids(rules.RULES))
def test_windowed_ops_carry_params_and_spatial_rank(key):
    names = _parameter_names(key)
    found = rules.RULES[key]
    if names & SHOWN:
        assert found.params is not None, f"{rules.key_name(key)} takes {sorted(names & SHOWN)} but has no params="
    if names & WINDOWED:
        assert found.spatial_rank is not None, f"{rules.key_name(key)} takes {sorted(names & WINDOWED)} but has no spatial_rank="


RANKED = [key for key, found in rules.RULES.items() if found.spatial_rank is not None]


@pytest.mark.parametrize("key", RANKED, ids=_ids(RANKED))
def test_spatial_rank_is_the_cases_rank(key):
    # a case says how many spatial axes torch runs the op on
    @settings(max_examples=2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=OP_CASES[key]())
    def check(case):
        if case.capture == "aten":
            spec = {1: "H", 2: "HxW", 3: "DxHxW"}[case.dims]  # symbolic: a kernel larger than 12 still captures
            graph_module = shapecalc.analyze(case.module, spec, channels=case.channels, capture="aten").graph_module
        else:
            graph_module = case.module if isinstance(case.module, torch.fx.GraphModule) \
                else torch.fx.symbolic_trace(case.module)
        calls = _calls(graph_module, key)
        assert calls, f"{case!r} does not call {rules.key_name(key)}"
        for node in calls:
            subject = graph_module.get_submodule(node.target) if node.op == "call_module" else node
            rank = rules.RULES[key].rank_of(subject)
            assert rank in (None, case.dims), f"{case!r}: rank {rank}"

    check()


# ---------------------------------------------------------------------------
# no op tables outside the registry


@pytest.mark.parametrize("module", ["audits/geometry", "audits/resampling", "analysis", "capture/trace",
                                    "engine/propagate"])
def test_no_op_references_outside_rules(module):
    source = (Path(shapecalc.__file__).parent / f"{module}.py").read_text()
    ops = re.findall(r"\bnn\.(?!Module\b|Sequential\b)[A-Z]\w*|\bF\.\w+|\btorch\.(?:true_divide|cat|stack|add|mul)\b",
                     source)
    assert not ops, f"shapecalc/{module}.py names ops {sorted(set(ops))}: put what it needs in their rules"


# ---------------------------------------------------------------------------
# a subclass is the class it derives from


class LeafTracer(torch.fx.Tracer):
    """A tracer that keeps the subclasses below as leaves (as a user's own
    tracer or a library's graph may)."""

    def is_leaf_module(self, m, qualified_name):
        return isinstance(m, (Pool, Average, Mirror)) or super().is_leaf_module(m, qualified_name)


class Pool(nn.MaxPool2d):
    pass


class Average(nn.AdaptiveAvgPool2d):
    pass


class Mirror(nn.ReflectionPad2d):
    pass


class Subclassed(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = Mirror(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = Pool(2, ceil_mode=True)
        self.average = Average(5)

    def forward(self, x):
        return self.average(self.pool(self.conv(self.pad(x))))


def _meta_shape(model, h: int):
    try:
        return tuple(model(torch.empty(1, 3, h, h, device="meta")).shape)
    except RuntimeError:
        return None


def test_subclasses_of_registered_layers_size_like_their_base():
    model = Subclassed().eval()
    graph_module = torch.fx.GraphModule(model, LeafTracer().trace(model))
    assert {n.target for n in graph_module.graph.nodes if n.op == "call_module"} == {"pad", "conv", "pool", "average"}
    analysis = shapecalc.analyze(graph_module, "H")
    (symbol,) = analysis.symbols
    output = analysis.outputs["output"]
    valid = analysis.valid_sizes(symbol)
    for h in range(1, 12):
        real = _meta_shape(model, h)
        assert (h in valid) == (real is not None), f"H={h}: torch {real}"
        if real is not None:
            assert tuple(int(evaluate(s, {symbol: h})) for s in output.shape) == real
    assert [r.name for r in analysis.resamples] == ["average"] and analysis.resamples[0].mode == "adaptive_avg"


# ---------------------------------------------------------------------------
# input channels come from the first layer that reads them


class PaddedStem(nn.Module):
    """A same-padded functional stem (as EfficientNet's): a pad module, then
    F.conv2d with 5 input channels; the input's shape is also read."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.weight = nn.Parameter(torch.randn(8, 5, 3, 3))
        self.conv = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = F.conv2d(self.pad(x) * 0.5, self.weight, stride=2)
        return self.conv(y)[:, :, : x.shape[-1] // 4]


def test_input_channels_come_from_the_layer_that_reads_the_input():
    model = PaddedStem().eval()
    assert spatial_dimensions_and_channels(torch.fx.symbolic_trace(model)) == (2, 5)
    analysis = shapecalc.analyze(model, "H")
    (symbol,) = analysis.symbols
    output = analysis.outputs["output"]
    for h in (5, 9, 16, 23):
        real = tuple(model(torch.empty(1, 5, h, h, device="meta")).shape)
        assert tuple(int(evaluate(s, {symbol: h})) for s in output.shape) == real
