"""Canonical forms, exact evaluation and printing of size expressions.

The printed form is a contract (docs, JSON): ``sympy.sympify`` must read it
back to the same integer at every size, and that integer must be the one a
real forward pass produces.
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.fx
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from shapecalc import InputSpecError, analyze, format_expr, load_model, parse_input_spec, size_symbol
from shapecalc.strategies import conv_layers, input_sizes, pool_layers, resampling_layers, transposed_conv_layers
from shapecalc.engine.propagate import META_KEY
from shapecalc.engine.symbolic import FloorDiv, ceildiv, evaluate, floor_of, floordiv, parse_size_text
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.verify import size_analysis

x = size_symbol("x")
H = size_symbol("H")


def rounding_nodes(expr: sympy.Basic):
    return [e for e in sympy.preorder_traversal(expr) if isinstance(e, (sympy.floor, sympy.ceiling, FloorDiv))]


def nested_rounding(expr: sympy.Basic) -> list:
    """Rounding functions with another rounding function inside."""
    return [outer for outer in rounding_nodes(expr)
            if any(rounding_nodes(arg) for arg in outer.args)]


def parsed(expr) -> sympy.Expr:
    return sympy.sympify(format_expr(expr))


def value_of(text_expr: sympy.Expr, name: str, n: int) -> int:
    return int(text_expr.subs(sympy.Symbol(name), n))


# ---------------------------------------------------------------------------
# nested rounding collapses


def test_nested_ceiling_displays_as_one_ceiling():
    assert format_expr(ceildiv(ceildiv(x, 2), 2)) == "ceiling(x/4)"
    assert ceildiv(ceildiv(x, 2), 2) == ceildiv(x, 4)
    assert format_expr(floordiv(floordiv(x, 2), 2)) == "floor(x/4)"
    assert format_expr(ceildiv(ceildiv(ceildiv(x + 198, 2), 2), 8)) == "ceiling((x + 198)/32)"


@settings(max_examples=100)
@given(a=st.integers(1, 9), b=st.integers(1, 9), c=st.integers(-20, 20), d=st.integers(-20, 20),
       ceiling=st.booleans())
def test_nested_rounding_collapses_and_keeps_its_value(a, b, c, d, ceiling):
    rounded = ceildiv if ceiling else floordiv
    expr = rounded(rounded(x + c, a) + d, b)
    assert not nested_rounding(expr), expr
    assert not nested_rounding(parsed(expr)), format_expr(expr)
    exact = (lambda p, q: -(-p // q)) if ceiling else (lambda p, q: p // q)
    text = parsed(expr)
    for n in range(1, 90):
        expected = exact(exact(n + c, a) + d, b)
        assert evaluate(expr, {x: n}) == expected
        assert value_of(text, "x", n) == expected


def test_floor_of_a_rational_affine_size():
    expr = floor_of(sympy.Rational(3, 4) * x + sympy.Rational(1, 2))
    for n in range(1, 60):
        assert evaluate(expr, {x: n}) == math.floor(sympy.Rational(3 * n, 4) + sympy.Rational(1, 2))
        assert value_of(parsed(expr), "x", n) == evaluate(expr, {x: n})


def test_fcn8s_prints_no_nested_floor_or_ceiling():
    analysis = analyze(load_model("fcn8s"), "H")
    printed = {layer.name: [format_expr(s) for s in layer.spatial] for layer in analysis.layers}
    for name, texts in printed.items():
        for text in texts:
            assert not nested_rounding(sympy.sympify(text)), f"{name}: {text}"
    assert printed["pool5"] == ["ceiling((H + 198)/32)"] * 2
    assert printed["upscore2"] == ["2*ceiling((H + 198)/32) - 10"] * 2
    assert printed["getitem_8"] == ["H", "H"]


# ---------------------------------------------------------------------------
# printed sizes read back, checked against torch


class _Shapes(torch.fx.Interpreter):
    """Every node's output shape in a meta-tensor forward pass."""

    def __init__(self, graph_module):
        super().__init__(graph_module, garbage_collect_values=False)
        self.extra_traceback = False
        self.shapes = {}

    def run_node(self, n):
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            self.shapes[n.name] = tuple(value.shape)
        return value


def meta_shapes(graph_module, sizes, channels: int = 1) -> dict:
    recorder = _Shapes(graph_module)
    recorder.run(torch.empty(1, channels, *sizes, device="meta"))
    return recorder.shapes


@st.composite
def small_1d_nets(draw):
    """Chains of 1-4 random conv / pool / transposed conv / resampling layers."""
    layers, channels = [draw(conv_layers(1, in_channels=1, padding_modes=("zeros",)))], None
    channels = layers[0].out_channels
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("conv", "pool", "transposed", "resample")))
        if kind == "conv":
            layer = draw(conv_layers(1, in_channels=channels, padding_modes=("zeros",)))
            channels = layer.out_channels
        elif kind == "transposed":
            layer = draw(transposed_conv_layers(1, in_channels=channels))
            channels = layer.out_channels
        elif kind == "pool":
            layer = draw(pool_layers(1))
        else:
            layer = draw(resampling_layers(1))
        layers.append(layer)
    return nn.Sequential(*layers).to("meta").eval()


def spatial_layers(graph_module) -> dict:
    """Each node's predicted spatial sizes (the layers of an analysis)."""
    return {n.name: n.meta[META_KEY].spatial_sizes for n in graph_module.graph.nodes
            if isinstance(n.meta.get(META_KEY), SymbolicTensor) and n.meta[META_KEY].spatial}


@settings(max_examples=80)
@given(net=small_1d_nets(), data=st.data())
def test_printed_sizes_read_back_to_torch_sizes(net, data):
    # sizes and domain only: the resampling audits are not under test here
    analysis = size_analysis(net, "H", channels=1)
    layers = spatial_layers(analysis.graph_module)
    texts = {name: parsed(sizes[0]) for name, sizes in layers.items()}
    sizes = data.draw(st.lists(input_sizes(analysis, "H", max_value=200), min_size=1, max_size=6), label="H")
    for n in sizes:
        shapes = meta_shapes(analysis.graph_module, (n,))
        for name, (size,) in layers.items():
            real = shapes[name][-1]
            assert value_of(texts[name], "H", n) == real, (name, format_expr(size), n)
            assert evaluate(size, {H: n}) == real


def test_printed_sizes_of_fcn8s_read_back_to_torch_sizes():
    model = load_model("fcn8s", {"width": 0.0625})
    analysis = analyze(model, "H")
    texts = {layer.name: parsed(layer.spatial[0]) for layer in analysis.layers}
    for n in (1, 2, 31, 32, 33, 100, 224, 500):
        shapes = meta_shapes(analysis.graph_module, (n, n), channels=3)
        for layer in analysis.layers:
            assert value_of(texts[layer.name], "H", n) == shapes[layer.name][-1], (layer.name, n)


# ---------------------------------------------------------------------------
# size texts


@pytest.mark.parametrize("text", ["0", "-3", "+5", "abc", "", " ", "1.5", "1e3", "0x10", "²", "１２", "٣",
                                  "9999999999", "1_000"])
def test_bad_size_texts_are_rejected(text):
    with pytest.raises(InputSpecError):
        parse_size_text(text)


@pytest.mark.parametrize("text", ["H+1", "Hx", "x", "0x5", "Hx0", "floor", "Min", "ceiling", "1x2x3x4", "H W",
                                  "Hx²", "__import__('os')", "H*2", "", "  ", "S", "pi", "lambda", "7x-1"])
def test_bad_input_specs_are_rejected(text):
    with pytest.raises(InputSpecError):
        parse_input_spec(text)


@pytest.mark.parametrize("text, sizes", [("H", ("H",)), ("HxW", ("H", "W")), ("512x384", (512, 384)),
                                         ("Hx384", ("H", 384)), ("D,H,W", ("D", "H", "W")), (" 7 ", (7,))])
def test_good_input_specs(text, sizes):
    spec = parse_input_spec(text)
    assert tuple(str(s) if s.is_Symbol else int(s) for s in spec.sizes) == sizes
    assert all(s.is_positive and s.is_integer for s in spec.sizes)
