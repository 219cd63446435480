"""F.pad against torch on a grid: every mode, ranks 3/4/5, pads in -3..3,
sizes 1..8, on CPU and on the meta device.

For each (mode, input rank, pad tuple, channels) the engine analyses one
graph with a symbolic size and the verdict (runs or not, and the output
shape) at every size is compared with torch's.  One padded axis is the
complete grid (7 x 7 pad pairs, every length torch takes or refuses on each
rank).  Several padded axes are a deterministic subset: 49 pad tuples per
layout in which every axis takes each of the 49 pairs exactly once (the full
product, 49**3 per layout, would take minutes).

CPU and meta differ in one place: circular padding copies the wrapped sides
out of the output itself, and on CPU ``copy_`` refuses ranges that overlap
("...refer to a single memory location"); meta tensors have no memory, so
the check cannot fire and meta returns a shape.  The CPU run is what a real
forward pass does, so the engine follows CPU and the test asserts that every
CPU/meta disagreement is that error.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.fx
import torch.nn.functional as F

from shapecalc import SizeError
from shapecalc.engine.symbolic import evaluate
from shapecalc.verify import size_analysis

MODES = ("constant", "reflect", "replicate", "circular")
PAIRS = list(itertools.product(range(-3, 4), repeat=2))
SIZES = range(1, 9)
OVERLAP = "single memory location"


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny pads: thread start-up, not padding, dominates otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pad_graph(pad, mode) -> torch.fx.GraphModule:
    """x -> F.pad(x, pad, mode): built directly (tracing each of ~2,000 pads is the slow part)."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(F.pad, (x, pad), {"mode": mode}))
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def torch_verdict(shape, pad, mode, device):
    """The output shape, or the error message."""
    x = torch.empty(shape, device=device)
    try:
        return tuple(F.pad(x, pad, mode=mode).shape)
    except (RuntimeError, NotImplementedError, ValueError) as error:
        return str(error)


def engine_verdicts(pad, mode, channels, dims, spec, sizes):
    """The engine's output shape (None where it excludes the size) at each
    tuple in ``sizes`` of values for the symbols of ``spec``."""
    graph_module = pad_graph(pad, mode)
    try:
        analysis = size_analysis(graph_module, spec, channels=channels, dimensions=dims)
    except SizeError:
        return {s: None for s in sizes}
    (node,) = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    shape = node.meta["shapecalc"].shape
    verdicts = {}
    for values in sizes:
        env = dict(zip(analysis.symbols, values))
        if hasattr(type(analysis.domain), "__contains__"):  # joint conditions of several sizes
            valid = env in analysis.domain
        else:
            valid = all(env[s] in analysis.valid_sizes(s) for s in analysis.symbols) and \
                all(evaluate(r.condition, env) for r in analysis.domain.undecided)
        verdicts[values] = tuple(int(evaluate(size, env)) for size in shape) if valid else None
    return verdicts


def compare(pad, mode, channels, dims, spec="H"):
    """Disagreements of the engine with CPU, and CPU/meta differences that are
    not the overlap refusal, at every size of the grid."""
    count = spec.count("x") + 1
    sizes = list(itertools.product(SIZES, repeat=count))
    engine = engine_verdicts(pad, mode, channels, dims, spec, sizes)
    wrong, devices = [], []
    for values in sizes:
        spatial = values * dims if count == 1 else values
        shape = (1, channels, *spatial)
        cpu, meta = (torch_verdict(shape, pad, mode, device) for device in ("cpu", "meta"))
        both_fail = not isinstance(cpu, tuple) and not isinstance(meta, tuple)
        if cpu != meta and not both_fail and not (OVERLAP in str(cpu) and isinstance(meta, tuple)):
            devices.append((mode, pad, shape, cpu, meta))
        expected = cpu if isinstance(cpu, tuple) else None
        if engine[values] != expected:
            wrong.append((mode, pad, shape, f"torch {cpu}", f"engine {engine[values]}"))
    return wrong, devices


def check(cases):
    wrong, devices, total = [], [], 0
    for pad, mode, channels, dims, spec in cases:
        w, d = compare(pad, mode, channels, dims, spec)
        wrong += w
        devices += d
        total += 8 ** (spec.count("x") + 1)
    assert not devices, f"{len(devices)} CPU/meta differences besides the overlap refusal, e.g. {devices[:3]}"
    assert not wrong, f"{len(wrong)} of {total} disagree with torch, e.g. {wrong[:5]}"


@pytest.mark.parametrize("mode", MODES)
def test_one_padded_axis_complete(mode):
    """Every pair in -3..3 on the last axis at sizes 1..8: rank 3 (with one
    and two channels, which decides whether circular's copies are checked
    for overlap) and ranks 4 and 5, where only constant padding takes a
    length-2 pad ("Padding size 2 is not supported for 4D input")."""
    cases = [((l, r), mode, channels, 1, "H") for l, r in PAIRS for channels in (1, 2)]
    cases += [((l, r), mode, 1, dims, "H") for l, r in PAIRS for dims in (2, 3)]
    check(cases)


def spread_tuples(axes: int):
    """49 pad tuples where axis j takes pair (t + 17 j) mod 49: each pair once per axis."""
    return [tuple(v for j in range(axes) for v in PAIRS[(t + 17 * j) % 49]) for t in range(49)]


# (rank, pad length) that each mode takes; the others refuse them at every size
LAYOUTS = {
    "constant": [(3, 4), (3, 6), (4, 4), (4, 6), (4, 8), (5, 4), (5, 6), (5, 8), (5, 10)],
    "reflect": [(3, 4), (4, 4), (4, 6), (5, 6)],
}
LAYOUTS["replicate"] = LAYOUTS["circular"] = LAYOUTS["reflect"]
REFUSED = {mode: [(rank, length) for rank in (3, 4, 5) for length in range(4, 2 * rank + 3, 2)
                  if (rank, length) not in LAYOUTS[mode]] for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_several_padded_axes(mode):
    """Square sizes 1..8 for each layout the mode takes (an unbatched 2-d or
    3-d pad also pads the channel axis: one and two channels), 49 spread pad
    tuples each; lengths it refuses (and too long pads) on a few tuples."""
    cases = []
    for rank, length in LAYOUTS[mode]:
        channel_counts = (1, 2) if length // 2 > rank - 2 or mode == "circular" else (1,)
        cases += [(pad, mode, channels, rank - 2, "H") for pad in spread_tuples(length // 2)
                  for channels in channel_counts]
    for rank, length in REFUSED[mode]:
        cases += [(pad, mode, 1, rank - 2, "H") for pad in spread_tuples(length // 2)[::16]]
    check(cases)


@pytest.mark.parametrize("mode", MODES)
def test_two_padded_axes_of_different_sizes(mode):
    """Rank 4, a 4-long pad, H and W independently 1..8: torch's conditions
    couple the axes (reflect/replicate need one non-empty output axis,
    circular checks the inner axis for overlap only where the outer output
    is 1 long)."""
    check([(pad, mode, 1, 2, "HxW") for pad in spread_tuples(2)[::2]])
