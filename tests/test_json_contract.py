"""The JSON contract of ``shapecalc trace --format json`` (docs/json.md).

Checked for the bundled models and for models written here, outside
segmodels: a small U-Net with unpadded convolutions, a centre crop computed
from sizes inside ``forward``, a ``torch.cat`` merge and a dict output (once
with the crop rounded the aligned way, once the other way); a crop with fixed
bounds (sizes with ``Min``/``Max``); a 1-D net.

Every expression is parsed with a parser that knows only ``floor``,
``ceiling``, ``Min``, ``Max`` and the input symbols, then evaluated at
concrete sizes and compared with torch forward passes; the domain is compared
with the sizes at which torch runs.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import sympy
import torch
import torch.fx
from sympy.parsing.sympy_parser import parse_expr, standard_transformations

from model_sources import EVEN_ONLY
from shapecalc import load_model
from shapecalc.cli import main

MODELS_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn


    def block(c_in, c_out):
        # unpadded, as in the original U-Net: each conv loses 2 pixels
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3), nn.ReLU(inplace=True),
                             nn.Conv2d(c_out, c_out, 3), nn.ReLU(inplace=True))


    class TinyUNet(nn.Module):
        def __init__(self, rounding=0):
            super().__init__()
            self.rounding = rounding
            self.enc1 = block(3, 4)
            self.pool = nn.MaxPool2d(2)
            self.enc2 = block(4, 8)
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.dec = block(8, 4)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            u = self.up(e2)
            # centre crop of the skip, computed from the sizes at run time
            dh = (e1.size(2) - u.size(2) + self.rounding) // 2
            dw = (e1.size(3) - u.size(3) + self.rounding) // 2
            skip = e1[:, :, dh:dh + u.size(2), dw:dw + u.size(3)]
            d = self.dec(torch.cat([skip, u], dim=1))
            return {"out": self.head(d), "features": e2}


    class FixedCrop(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)[:, :, 3:60, -40:]


    class Skip(nn.Module):
        # x + up(down(x)): equal sizes for even H, broadcasting at H = 1
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(8, 3, 2, stride=2)

        def forward(self, x):
            return x + self.up(self.down(x))


    class Net1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 5, stride=2)
            self.pool = nn.MaxPool1d(3, ceil_mode=True)

        def forward(self, x):
            return self.pool(self.conv(x))
''')


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "contract_models.py"
    path.write_text(MODELS_SOURCE + EVEN_ONLY)
    return path


# case -> (MODEL, --arg list, --input, input channels, whether to run on meta)
CASES = {
    "fcn8s-H": ("fcn8s", [], "H"),
    "fcn8s-300x301": ("fcn8s", [], "300x301"),
    "deeplabv3-HxW": ("deeplabv3", [], "HxW"),
    "deeplabv3-Hx384": ("deeplabv3", [], "Hx384"),
    "unet-HxW": ("{file}:TinyUNet", [], "HxW"),
    "unet-H": ("{file}:TinyUNet", [], "H"),
    "unet-64x65": ("{file}:TinyUNet", [], "64x65"),
    "unet-odd-HxW": ("{file}:TinyUNet", ["rounding=1"], "HxW"),
    "fixed-crop-HxW": ("{file}:FixedCrop", [], "HxW"),
    "net1d-L": ("{file}:Net1d", [], "L"),
    "skip-H": ("{file}:Skip", [], "H"),
}

# case -> (MODEL, --arg list, --input, further flags): the ATen front end (not the fx contract cases above)
ATEN_CASES = {
    "even-H-auto": ("{file}:EvenOnly", [], "H", ["--capture", "auto"]),
    "skip-H-aten": ("{file}:Skip", [], "H", ["--capture", "aten"]),
}

_cache: dict = {}


def contract(case: str, models_file) -> tuple[dict, str, dict]:
    """(the JSON, the MODEL spec, the factory arguments) for ``case``, once."""
    if case not in _cache:
        model, args, spec, *flags = CASES.get(case) or ATEN_CASES[case]
        model = model.format(file=models_file)
        argv = ["trace", model, "--input", spec, "--format", "json", *(flags[0] if flags else [])]
        for arg in args:
            argv += ["--arg", arg]
        from io import StringIO
        from contextlib import redirect_stdout

        out = StringIO()
        with redirect_stdout(out):
            assert main(argv) == 0
        kwargs = dict(a.split("=") for a in args)
        _cache[case] = (json.loads(out.getvalue()), model, {k: int(v) for k, v in kwargs.items()})
    return _cache[case]


def input_symbols(data) -> dict[str, sympy.Symbol]:
    names = [s for s in data["input"]["spatial"] if not s.isdigit()]
    return {name: sympy.Symbol(name, integer=True, positive=True) for name in dict.fromkeys(names)}


# only these names may appear in an expression, besides the input symbols
ALLOWED_FUNCTIONS = {"floor": sympy.floor, "ceiling": sympy.ceiling, "Min": sympy.Min, "Max": sympy.Max}
_PARSER_NAMES = {"Integer": sympy.Integer, "Rational": sympy.Rational, **ALLOWED_FUNCTIONS}


def parse(text: str, symbols: dict[str, sympy.Symbol]) -> sympy.Expr:
    """A contract expression, parsed with nothing but the allowed names in
    scope; any other name becomes a stray symbol or fails, and is caught."""
    assert isinstance(text, str) and text.strip(), f"not an expression: {text!r}"
    expr = parse_expr(text, local_dict=dict(symbols), global_dict=dict(_PARSER_NAMES),
                      transformations=standard_transformations)
    assert expr.free_symbols <= set(symbols.values()), f"{text!r} uses {expr.free_symbols - set(symbols.values())}"
    for atom in expr.atoms(sympy.Function):
        assert type(atom) in (sympy.floor, sympy.ceiling, sympy.Min, sympy.Max), f"{text!r} calls {type(atom)}"
    assert not expr.atoms(sympy.Float), f"{text!r} has a float"
    assert sympy.sympify(text, locals=dict(symbols)) == expr  # the plain sympify a user would call
    return expr


def value_at(expr: sympy.Expr, at: dict) -> int:
    value = expr.xreplace({s: sympy.Integer(v) for s, v in at.items()})
    assert value.is_Integer, f"{expr} at {at} is {value}, not an integer"
    return int(value)


def in_domain(domain: dict, symbol: str, n: int) -> bool:
    """Membership from the JSON alone: n lies in one of the intervals of its
    residue class (``min`` is the first one's start; the set need not be
    upward closed, e.g. ``H = 1`` or even)."""
    entry = domain[symbol]
    intervals = entry["intervals"][str(n % entry["period"])]
    return any(lo <= n and (hi is None or n <= hi) for lo, hi in intervals)


class ShapeRecorder(torch.fx.Interpreter):
    def __init__(self, graph_module):
        super().__init__(graph_module)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n):
        value = super().run_node(n)
        if n.op != "output" and isinstance(value, torch.Tensor):
            self.shapes[n.name] = tuple(value.shape)
        return value


def forward_shapes(model, sizes, channels):
    """(every tensor node's shape, the outputs' shapes), or None where torch
    refuses the size.  Meta device: nothing is allocated."""
    recorder = ShapeRecorder(torch.fx.symbolic_trace(model))
    try:
        with torch.no_grad():
            result = recorder.run(torch.empty(1, channels, *sizes, device="meta"))
    except Exception:  # noqa: BLE001 - a size torch refuses
        return None
    outputs = result if isinstance(result, dict) else {"output": result}
    return recorder.shapes, {k: tuple(v.shape) for k, v in outputs.items()}


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_required_keys_and_types(case, models_file):
    data, model, _ = contract(case, models_file)
    assert isinstance(data["version"], int)
    assert data["model"] == model
    spatial = data["input"]["spatial"]
    assert isinstance(spatial, list) and all(isinstance(s, str) for s in spatial)
    assert len(spatial) == (1 if case.startswith("net1d") else 2)
    assert isinstance(data["layers"], list) and data["layers"]
    for layer in data["layers"]:
        assert isinstance(layer["name"], str) and isinstance(layer["op"], str)
        assert isinstance(layer["spatial"], list) and len(layer["spatial"]) == len(spatial)
    assert isinstance(data["outputs"], dict) and data["outputs"]
    for output in data["outputs"].values():
        assert len(output["spatial"]) == len(spatial)
    # the fx front end: one graph wherever the model runs, no pieces; every layer names its module
    assert data["capture"] == "fx" and data["pieces"] == [] and data["pieces_complete"] is None
    assert all(isinstance(layer["module"], str) for layer in data["layers"])
    assert isinstance(data["crops"], list)
    for crop in data["crops"]:
        assert {"name", "offset", "required", "aligned", "counterexample"} <= set(crop)
        assert isinstance(crop["name"], str)
        assert len(crop["offset"]) == len(crop["required"]) == len(spatial)
        assert isinstance(crop["aligned"], bool)
        assert crop["counterexample"] is None or type(crop["counterexample"]) is int
        assert (crop["counterexample"] is None) == crop["aligned"] or not input_symbols(data)
    domain = data["domain"]
    assert isinstance(domain["valid"], str) and domain["valid"]
    for name in input_symbols(data):
        period, smallest = domain[name]["period"], domain[name]["min"]
        assert type(period) is int and period >= 1
        assert sorted(smallest, key=int) == [str(r) for r in range(period)]
        for residue, n in smallest.items():
            assert n is None or (type(n) is int and n >= 1 and n % period == int(residue))
            intervals = domain[name]["intervals"][residue]
            assert n == (intervals[0][0] if intervals else None)
            for lo, hi in intervals:
                assert lo % period == int(residue) and (hi is None or (hi >= lo and hi % period == int(residue)))


@pytest.mark.parametrize("case", list(CASES))
def test_every_expression_parses_with_floor_ceiling_min_max_and_the_input_symbols(case, models_file):
    data, _, _ = contract(case, models_file)
    symbols = input_symbols(data)
    texts = list(data["input"]["spatial"])
    texts += [e for layer in data["layers"] for e in layer["spatial"]]
    texts += [e for output in data["outputs"].values() for e in output["spatial"]]
    texts += [e for crop in data["crops"] for e in crop["offset"] + crop["required"]]
    for text in texts:
        parse(text, symbols)
    if case == "fixed-crop-HxW":
        assert any("Min" in t for t in texts) and any("Max" in t for t in texts)


def test_the_parser_rejects_what_the_contract_forbids():
    symbols = {"H": sympy.Symbol("H", integer=True, positive=True)}
    for text in ["FloorDiv(H, 2)", "H + W", "sqrt(H)", "H/2.5", "__import__('os')"]:
        with pytest.raises(Exception):
            parse(text, symbols)


@pytest.mark.parametrize("case", list(CASES))
def test_layer_names_are_fx_node_names_in_execution_order(case, models_file):
    data, model, kwargs = contract(case, models_file)
    channels = data["input"]["channels"]
    sizes = [int(s) if s.isdigit() else 70 for s in data["input"]["spatial"]]
    shapes, _ = forward_shapes(load_model(model, kwargs), sizes, channels)
    graph_order = [n.name for n in torch.fx.symbolic_trace(load_model(model, kwargs)).graph.nodes]
    spatial_tensors = [name for name in graph_order if name in shapes and len(shapes[name]) > 2]
    assert [layer["name"] for layer in data["layers"]] == spatial_tensors


def _sizes_to_try(data) -> list[dict[str, int]]:
    """Concrete sizes: below, at and above the smallest valid ones."""
    symbols = list(input_symbols(data))
    if not symbols:
        return [{}]
    if len(symbols) == 1:
        return [{symbols[0]: n} for n in list(range(1, 41)) + [63, 64, 100, 257]]
    return [{symbols[0]: n, symbols[1]: 45 - n} for n in range(1, 45)] + [{symbols[0]: 100, symbols[1]: 71}]


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith(("fcn8s", "deeplabv3"))])
def test_expressions_evaluate_to_torch_shapes_and_the_domain_to_where_torch_runs(case, models_file):
    data, model, kwargs = contract(case, models_file)
    symbols = input_symbols(data)
    module = load_model(model, kwargs)
    layers = {layer["name"]: [parse(e, symbols) for e in layer["spatial"]] for layer in data["layers"]}
    outputs = {name: [parse(e, symbols) for e in o["spatial"]] for name, o in data["outputs"].items()}
    ran = 0
    tries = _sizes_to_try(data)
    for assignment in tries:
        at = {symbols[name]: n for name, n in assignment.items()}
        sizes = [assignment.get(s, None) or int(s) for s in data["input"]["spatial"]]
        result = forward_shapes(module, sizes, data["input"]["channels"])
        expected_to_run = all(in_domain(data["domain"], name, n) for name, n in assignment.items())
        assert (result is not None) == expected_to_run, f"torch {'ran' if result else 'failed'} at {assignment}"
        ran += result is not None
        if result is None:
            continue
        shapes, output_shapes = result
        for name, exprs in layers.items():
            assert [value_at(e, at) for e in exprs] == list(shapes[name][2:]), (name, assignment)
        assert set(outputs) == set(output_shapes)
        for name, exprs in outputs.items():
            assert [value_at(e, at) for e in exprs] == list(output_shapes[name][2:]), (name, assignment)
    # symbolic inputs: sizes on both sides of the domain's edge were tried
    assert 0 < ran and (ran < len(tries) or not symbols)


@pytest.mark.parametrize("case", ["fcn8s-H", "fcn8s-300x301", "deeplabv3-HxW", "deeplabv3-Hx384"])
def test_bundled_expressions_evaluate_to_torch_shapes(case, models_file):
    data, model, kwargs = contract(case, models_file)
    symbols = input_symbols(data)
    layers = {layer["name"]: [parse(e, symbols) for e in layer["spatial"]] for layer in data["layers"]}
    module = load_model(model, kwargs)
    for n in (1, 31, 224, 513):
        assignment = {name: n + i for i, name in enumerate(symbols)}
        sizes = [assignment.get(s, None) or int(s) for s in data["input"]["spatial"]]
        shapes, output_shapes = forward_shapes(module, sizes, 3)
        at = {symbols[name]: v for name, v in assignment.items()}
        for name, exprs in layers.items():
            assert [value_at(e, at) for e in exprs] == list(shapes[name][2:]), (name, assignment)
        assert [value_at(parse(e, symbols), at) for e in data["outputs"]["output"]["spatial"]] == sizes


def test_dict_outputs_are_named_by_their_keys(models_file):
    data, _, _ = contract("unet-HxW", models_file)
    assert set(data["outputs"]) == {"out", "features"}
    assert data["outputs"]["features"]["spatial"] == ["floor((H - 12)/2)", "floor((W - 12)/2)"]


def test_domain_of_the_unpadded_unet(models_file):
    data, _, _ = contract("unet-HxW", models_file)
    assert data["domain"]["H"] == {**data["domain"]["H"], "period": 1, "min": {"0": 18}}
    assert data["domain"]["valid"] == "every H >= 18; every W >= 18"


def test_crop_computed_from_sizes_in_forward(models_file):
    """The centre crop: its offset is what the code computes (checked with
    torch's sizes), the derived offset is 4, and rounding the other way
    misaligns it at odd sizes, first at the smallest odd valid size."""
    aligned, model, _ = contract("unet-HxW", models_file)
    odd, _, _ = contract("unet-odd-HxW", models_file)
    symbols = input_symbols(aligned)
    (crop,), (odd_crop,) = aligned["crops"], odd["crops"]
    assert crop["name"] == odd_crop["name"] == "getitem"
    assert crop["required"] == odd_crop["required"] == ["4", "4"]
    assert crop["aligned"] is True and crop["counterexample"] is None
    assert odd_crop["aligned"] is False and odd_crop["counterexample"] == 19
    module = load_model(model)
    for h in range(18, 40):
        shapes, _ = forward_shapes(module, [h, 18], 3)
        for rounding, entry in ((0, crop), (1, odd_crop)):
            coded = (shapes["enc1_3"][2] - shapes["up"][2] + rounding) // 2
            assert value_at(parse(entry["offset"][0], symbols), {symbols["H"]: h, symbols["W"]: 18}) == coded
            assert (coded == 4) == (rounding == 0 or h % 2 == 0)


def test_concrete_input_has_numbers_and_no_domain_symbols(models_file):
    data, _, _ = contract("unet-64x65", models_file)
    assert data["input"]["spatial"] == ["64", "65"]
    assert all(e.lstrip("-").isdigit() for layer in data["layers"] for e in layer["spatial"])
    assert [k for k, v in data["domain"].items() if isinstance(v, dict) and "period" in v] == []
    assert data["outputs"]["out"]["spatial"] == ["48", "48"]


def test_broadcasting_merge_and_a_periodic_domain(models_file):
    """x + up(down(x)) runs for even H, and at H = 1 by broadcasting: the size
    is written with ceiling (it was a Piecewise, outside the contract) and
    the domain is periodic and not upward closed."""
    data, _, _ = contract("skip-H", models_file)
    assert data["outputs"]["output"]["spatial"] == ["2*ceiling(H/2)"] * 2
    assert data["domain"]["H"] == {"period": 2, "min": {"0": 2, "1": 1},
                                   "intervals": {"0": [[2, None]], "1": [[1, 1]]}}


# ---------------------------------------------------------------------------
# the ATen front end: capture, module, pieces


def condition(text: str, symbols: dict) -> sympy.Basic:
    """A piece's region as sympy reads it ("True" is every size; sympify gives a Python bool for it)."""
    value = sympy.sympify(text, locals=dict(symbols))
    return sympy.true if value is True else sympy.false if value is False else value


def test_module_is_the_module_called_or_empty(models_file):
    data, model, _ = contract("unet-HxW", models_file)
    modules = dict(load_model(model).named_modules())
    for layer in data["layers"]:
        assert layer["module"] == "" or layer["module"] in modules, layer
    named = {layer["name"]: layer["module"] for layer in data["layers"]}
    assert named["enc1_0"] == "enc1.0" and named["up"] == "up" and named["getitem"] == ""


@pytest.mark.parametrize("case", list(ATEN_CASES))
def test_aten_keys_and_expressions(case, models_file):
    data, model, _ = contract(case, models_file)
    symbols = input_symbols(data)
    assert data["capture"] == "aten" and data["pieces_complete"] is True
    modules = dict(load_model(model).named_modules())
    for layer in data["layers"]:
        assert isinstance(layer["name"], str) and (layer["module"] == "" or layer["module"] in modules), layer
        for text in layer["spatial"]:
            parse(text, symbols)
    assert {layer["module"] for layer in data["layers"]} >= ({"up", "down"} if "skip" in case else {"conv", "pool"})
    assert data["pieces"] and all(isinstance(p["runs"], bool) for p in data["pieces"])
    for piece in data["pieces"]:
        region = condition(piece["condition"], symbols)
        assert region.free_symbols <= set(symbols.values())
        assert set(piece["example"]) == set(symbols) and bool(region.subs(
            {symbols[k]: v for k, v in piece["example"].items()}))  # captured inside its own region
        assert (piece["raises"] is None) == piece["runs"]
        for guard in piece["guards"]:
            assert {"condition", "origin", "location"} <= set(guard)


def test_pieces_say_where_torch_runs_and_what_it_raises(models_file):
    """Each size lies in exactly one piece; torch (the model itself, on meta)
    runs there exactly when the piece says so, raises the piece's message
    where it does not, and the outputs and domain agree with torch."""
    data, model, _ = contract("even-H-auto", models_file)
    symbols = input_symbols(data)
    H = symbols["H"]
    conditions = [condition(p["condition"], symbols) for p in data["pieces"]]
    module = load_model(model)
    output = [parse(e, symbols) for e in data["outputs"]["output"]["spatial"]]
    for h in range(1, 14):
        (piece,) = [p for p, c in zip(data["pieces"], conditions) if bool(c.subs(H, h))]
        try:
            with torch.no_grad():
                shape = tuple(module(torch.empty(1, 3, h, h, device="meta")).shape)
        except ValueError as error:
            assert not piece["runs"] and piece["raises"]["message"] == str(error), h
            assert not in_domain(data["domain"], "H", h)
            continue
        assert piece["runs"] and in_domain(data["domain"], "H", h), h
        assert [value_at(e, {H: h}) for e in output] == list(shape[2:])
    assert [p["runs"] for p in data["pieces"]] == [True, False]
    assert "torch.fx could not be used" in " ".join(data["notes"])  # auto says why it left fx
