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
from shapecalc._selftest.op_cases import OP_CASES
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


@pytest.mark.parametrize("key", MERGE_KEYS, ids=_ids(MERGE_KEYS))
def test_every_merge_rule_is_audited_and_its_shift_is_torchs(key):
    graph_module = _misaligned_merge(key, rules.RULES[key].merge)
    analysis = shapecalc.analyze(graph_module, "H")
    (merge,) = analysis.merges
    # torch: where the two inputs' pixels sit, by autograd
    x = (0.5 + torch.rand(1, 3, 12, 12, dtype=torch.float64)).requires_grad_()
    recorder = Recorder(graph_module)
    recorder.run(x)
    first, second = merge.inputs
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


# ---------------------------------------------------------------------------
# resamplers


def _calls(graph_module, key) -> list[torch.fx.Node]:
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
            analysis = shapecalc.analyze(case.module, sizes, channels=case.channels)
        except shapecalc.ShapecalcError:
            return  # a drawn case torch refuses at this size: nothing sampled
        called = {n.name for n in _calls(analysis.graph_module, key)}
        assert called, f"{case!r} does not call {rules.key_name(key)}"
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
        graph_module = case.module if isinstance(case.module, torch.fx.GraphModule) \
            else torch.fx.symbolic_trace(case.module)
        for node in _calls(graph_module, key):
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
