"""``shapecalc.answers.cost`` against torch: FLOPs against ``FlopCounterMode`` (per
node and for the module's own forward pass), parameters against
``sum(p.numel())``, activations against the shapes of a real forward pass and
the peak against the storages that pass allocates, at non-square sizes that
are not multiples of 32.

The peak check recomputes the live-storage sums from torch's own storages
(their identity and byte size in a meta forward pass at each size) under the
liveness rule ``cost`` documents: it proves the closed-form sizes and which
outputs share storage, not the liveness rule itself.
"""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
import torch.fx
from torch.utils.flop_counter import FlopCounterMode

from shapecalc import analyze, load_model
from shapecalc.cli import main
from shapecalc.answers.cost import cost
from shapecalc.engine.symbolic import evaluate

SIZES = [(45, 59), (77, 89), (101, 115)]


class _Measured(torch.fx.Interpreter):
    """Per node of a meta forward pass: FLOPs counted by FlopCounterMode,
    output shape, and the storages (id, bytes) of every tensor in its value."""

    def run_node(self, n):
        before = self.counter.get_total_flops()
        value = super().run_node(n)
        self.flops[n.name] = self.counter.get_total_flops() - before
        if isinstance(value, torch.Tensor):
            self.shapes[n.name] = tuple(value.shape)
        leaves = torch.utils._pytree.tree_leaves(value)
        # held until the pass ends: a freed storage's id could be reused by a later one
        self.kept.extend(t for t in leaves if isinstance(t, torch.Tensor))
        self.storages[n.name] = [(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
                                 for t in leaves if isinstance(t, torch.Tensor)]
        return value

    def measure(self, shape):
        self.flops, self.shapes, self.storages, self.kept = {}, {}, {}, []
        self.counter = FlopCounterMode(display=False)
        with torch.no_grad(), self.counter:
            self.run(torch.empty(shape, device="meta"))
        return self


def _measured_peak(graph, measured) -> int:
    """The largest sum of live storage bytes over the nodes, from torch's storages:
    a storage lives from its first node to the last user of any node holding it
    (the input for the whole pass); parameters and buffers are not counted."""
    nodes = list(graph.nodes)
    order = {n.name: i for i, n in enumerate(nodes)}
    constant = {sid for n in nodes if n.op == "get_attr" for sid, _ in measured.storages.get(n.name, ())}
    born, dies, size = {}, {}, {}
    for node in nodes:
        for sid, nbytes in measured.storages.get(node.name, ()):
            if sid in constant or node.op in ("get_attr", "output"):
                continue
            born.setdefault(sid, order[node.name])
            size[sid] = nbytes
            end = len(nodes) if node.op == "placeholder" else max([order[u.name] for u in node.users] +
                                                                  [order[node.name]])
            dies[sid] = max(dies.get(sid, 0), end)
    return max(sum(size[s] for s in born if born[s] <= i <= dies[s]) for i in range(len(nodes)))


def _on_meta(module):
    on_cpu = any(t.device.type != "meta" for t in [*module.parameters(), *module.buffers()])
    return copy.deepcopy(module).to("meta") if on_cpu else module


def _disagreements(module, name, sizes=SIZES):
    """(number of compared values, the disagreements) over every node and total at each size."""
    analysis = analyze(module, "HxW", name=name)
    result = cost(analysis, module)
    on_meta = _on_meta(module)
    graph_module = _on_meta(analysis.graph_module)
    h, w = analysis.symbols
    compared, wrong = 0, []
    truth_params = sum(p.numel() for p in module.parameters())
    compared += 1
    if result.params != truth_params:
        wrong.append(f"params: torch {truth_params}, shapecalc {result.params}")
    layers = {layer.name: layer for layer in result.layers}
    for size in sizes:
        env = {h: _valid(analysis, h, size[0]), w: _valid(analysis, w, size[1])}
        shape = tuple(int(evaluate(s, env)) for s in analysis.input_tensor.shape)
        measured = _Measured(graph_module).measure(shape)
        for node_name, flops in measured.flops.items():
            predicted = int(evaluate(layers[node_name].flops, env)) if node_name in layers else 0
            compared += 1
            if predicted != flops:
                wrong.append(f"{node_name} flops at {shape}: torch {flops}, shapecalc {predicted}")
        for node_name, layer in layers.items():
            compared += 1
            numel = torch.Size(measured.shapes.get(node_name, (-1,))).numel()
            if int(evaluate(layer.activation, env)) != numel:
                wrong.append(f"{node_name} activation at {shape}: torch {numel}, "
                             f"shapecalc {evaluate(layer.activation, env)}")
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            on_meta(torch.empty(shape, device="meta"))
        totals = result.at(env)
        compared += 2
        if totals["flops"] != counter.get_total_flops():
            wrong.append(f"total flops at {shape}: torch {counter.get_total_flops()}, shapecalc {totals['flops']}")
        peak = _measured_peak(graph_module.graph, measured)
        if totals["peak_activation_bytes"] != peak:
            wrong.append(f"peak at {shape}: torch storages {peak}, shapecalc {totals['peak_activation_bytes']}")
    return compared, wrong


def _valid(analysis, symbol, target):
    valid = analysis.valid_sizes(symbol)
    return next(n for n in range(target, target + 96) if n % 32 and n in valid)


@pytest.mark.parametrize("name", ["fcn8s", "deeplabv3"])
def test_bundled_models_match_flop_counter_and_storages(name):
    compared, wrong = _disagreements(load_model(name, {"width": 0.125}), name)
    assert compared > 100 and not wrong, wrong[:5]


_THIN_DECODER = {"encoder_depth": 3, "decoder_channels": (32, 16, 8)}
_MONAI_2D = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
#: third-party models (tests/zoo_setup.py): channels-last Linear and depthwise convs (convnext), in-place
#: activations and squeeze-excite (mobilenet_v3), ceil-mode pools (squeezenet), transposed convs (DynUNet),
#: an encoder built deeper than it is called (smp Unet with encoder_depth=3: unused parameters)
ZOO = [
    ("timm:create_model", {"model_name": "convnext_atto", "pretrained": False}),
    ("timm:create_model", {"model_name": "hgnetv2_b0", "pretrained": False}),
    ("segmentation_models_pytorch:Unet", {"encoder_name": "resnet18", "encoder_weights": None, **_THIN_DECODER}),
    ("monai.networks.nets:DynUNet", {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
                                     "filters": [8, 16, 32], **_MONAI_2D}),
    ("monai.networks.nets:AttentionUnet", {"channels": (4, 8, 16), "strides": (2, 2), **_MONAI_2D}),
    ("torchvision.models:mobilenet_v3_small", {"weights": None}),
    ("torchvision.models:squeezenet1_1", {"weights": None}),
]


@pytest.fixture(scope="module")
def zoo():
    try:
        import zoo_setup

        zoo_setup.import_zoo()
    except ImportError as error:  # the [zoo] extra is optional
        pytest.skip(f"zoo extra not installed ({error}); pip install -e '.[zoo]'")


@pytest.mark.parametrize("spec,kwargs", ZOO, ids=[kw.get("model_name") or kw.get("encoder_name") or spec.split(":")[1]
                                                  for spec, kw in ZOO])
def test_zoo_models_match_flop_counter_and_storages(zoo, spec, kwargs):
    compared, wrong = _disagreements(load_model(spec, kwargs), spec)
    assert compared > 100 and not wrong, wrong[:5]


def test_cli_json_totals_match_torch_at_a_concrete_size(capsys):
    assert main(["cost", "fcn8s", "--input", "45x59", "--arg", "width=0.125", "--format", "json",
                 "--dtype", "float16"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = load_model("fcn8s", {"width": 0.125})
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(torch.empty(1, 3, 45, 59, device="meta"))
    total = data["total"]
    assert int(total["flops"]) == counter.get_total_flops() and int(total["macs"]) * 2 == int(total["flops"])
    assert total["params"] == sum(p.numel() for p in model.parameters())
    last = data["layers"][-1]
    assert int(last["activation"]["elements"]) == out.numel() and int(last["activation"]["bytes"]) == 2 * out.numel()


def test_cli_symbolic_markdown_and_table(capsys):
    assert main(["cost", "deeplabv3", "--input", "HxW", "--arg", "width=0.125", "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "| layer | op | flops |" in text and "peak activation (float32): Max(" in text
    assert main(["cost", "deeplabv3", "--input", "H", "--arg", "width=0.125"]) == 0
    assert "ceiling(H/16)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["cost", "fcn8s", "--input", "0"], "sizes must be positive"),
    (["cost", "fcn8s", "--input", "H", "--dtype", "int8"], "invalid choice"),
    (["cost", "nosuch", "--input", "H"], "unknown model"),
    (["cost", "fcn8s", "--input", "H", "--channels", "0"], "--channels must be positive"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, argv, message):
    # argparse rejects a --dtype itself (SystemExit 2); the rest come back from main
    with pytest.raises(SystemExit) if "--dtype" in argv else contextlib.nullcontext() as raised:
        code = main(argv)
    code = raised.value.code if raised else code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
