"""FLOPs, multiply-accumulates, parameters and activation memory as exact
closed forms in the input symbols.

Counting follows ``torch.utils.flop_counter.FlopCounterMode``: only
convolutions (plain and transposed) and matrix products (``nn.Linear`` /
``F.linear``, which reach ``aten.mm``/``addmm``) cost anything, a
multiply-accumulate is 2 FLOPs, and bias additions, pointwise ops, pooling,
norms and interpolation are free.  ``macs`` is ``flops / 2``.

Activation memory counts tensor storage: a node whose output shares storage
with an earlier tensor (a view, an in-place op, ``Identity``, eval dropout)
allocates nothing.  Which outputs share storage is how torch's ops alias, and
``reshape`` is a view or a copy depending on strides, so it is read from torch
itself: one forward pass of the graph on the meta device at one valid size.
The sizes are the closed forms of the analysis.

Peak memory of an inference forward pass: the graph's nodes run in order; a
storage is live from the node that creates it until the last node that uses
any tensor on it has run (the input for the whole pass, since the caller
holds it; outputs until the end).  At each node the live storages plus the
node's new outputs are summed; the peak is the largest of these sums.
Parameters, buffers and a kernel's internal workspace are not activations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from shapecalc._errors import InputSpecError
from shapecalc.capture.trace import op_label
from shapecalc.engine.propagate import META_KEY
from shapecalc.engine.symbolic import evaluate, format_expr, largest
from shapecalc.engine.tensors import SymbolicTensor

#: --dtype choices: bytes per element of a floating-point activation
DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_LINEAR_FUNCTIONS = {F.linear}


@dataclass(frozen=True)
class LayerCost:
    """One graph node whose value is a tensor."""

    name: str
    op: str
    #: FLOPs in FlopCounterMode's convention (a multiply-accumulate is 2)
    flops: sympy.Expr
    #: parameters of the module this node calls (0 for functions)
    params: int
    #: elements of the output tensor
    activation: sympy.Expr
    #: bytes per element of the output
    itemsize: int
    #: the output shares storage with an earlier tensor (view, in-place): it allocates nothing
    shares_storage: bool
    #: the qualified name of the module whose call produced it ("" for the model's own code)
    module: str = ""

    @property
    def macs(self) -> sympy.Expr:
        return self.flops / 2

    @property
    def activation_bytes(self) -> sympy.Expr:
        return self.activation * self.itemsize


@dataclass
class Cost:
    """The cost of one forward pass of a model at one input spec."""

    model: str
    input: str
    symbols: tuple[sympy.Symbol, ...]
    dtype: str
    layers: list[LayerCost]
    flops: sympy.Expr
    params: int
    #: elements and bytes of every storage the pass allocates (the input included)
    activation: sympy.Expr
    activation_bytes: sympy.Expr
    #: the largest sum of live storages at any node (elements, and bytes)
    peak_activation: sympy.Expr
    peak_activation_bytes: sympy.Expr
    #: parameters the traced forward pass reads (``params`` counts every parameter of the module)
    params_used: int
    #: the nodes at which the peak can occur (one per candidate of the Max)
    peak_nodes: list[str] = field(default_factory=list)
    #: the live-storage sums, one per node in execution order (bytes), for checking
    live_bytes: list[tuple[str, sympy.Expr]] = field(default_factory=list, repr=False)
    #: the front end of the analysis counted: "fx" or "aten"
    capture: str = "fx"

    @property
    def macs(self) -> sympy.Expr:
        return self.flops / 2

    def at(self, sizes: Mapping[Union[str, sympy.Symbol], int]) -> dict[str, int]:
        """The totals at concrete sizes (``{"H": 224, "W": 320}``)."""
        env = _environment(self.symbols, sizes)
        return {key: int(evaluate(getattr(self, key), env)) for key in
                ("flops", "macs", "activation", "activation_bytes", "peak_activation", "peak_activation_bytes")} | {
            "params": self.params, "params_used": self.params_used}

    def __repr__(self) -> str:
        return (f"Cost(model={self.model!r}, input={self.input!r}, flops={format_expr(self.flops)!r}, "
                f"params={self.params}, peak_activation_bytes={format_expr(self.peak_activation_bytes)!r})")


def _environment(symbols, sizes) -> dict[sympy.Symbol, int]:
    env = {}
    for symbol in symbols:
        value = sizes.get(symbol, sizes.get(str(symbol)))
        if value is None:
            raise KeyError(f"no value for {symbol}")
        env[symbol] = int(value)
    return env


def _numel(tensor: SymbolicTensor) -> sympy.Expr:
    return sympy.Mul(*tensor.shape)


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def _tensor_arg(node: torch.fx.Node, index: int, name: str) -> Optional[SymbolicTensor]:
    value = node.args[index] if len(node.args) > index else node.kwargs.get(name)
    value = value.meta.get(META_KEY) if isinstance(value, torch.fx.Node) else None
    return value if isinstance(value, SymbolicTensor) else None


def node_flops(node: torch.fx.Node, graph_module: torch.fx.GraphModule) -> sympy.Expr:
    """FLOPs of one node as FlopCounterMode counts them.

    Convolution: ``2 * numel(output) * prod(weight.shape[1:])`` (the weight is
    ``(C_out, C_in/groups, *kernel)``); transposed convolution, whose weight is
    ``(C_in, C_out/groups, *kernel)``, is counted over the *input* positions:
    ``2 * numel(input) * prod(weight.shape[1:])``.  Linear:
    ``2 * numel(output) * in_features`` (aten.mm/addmm over the flattened rows).
    """
    out = node.meta.get(META_KEY)
    if not isinstance(out, SymbolicTensor):
        return sympy.Integer(0)
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if isinstance(module, _TRANSPOSED_MODULES):
            x = _tensor_arg(node, 0, "input")
            return 2 * _numel(x) * _prod(module.weight.shape[1:])
        if isinstance(module, _CONV_MODULES):
            return 2 * _numel(out) * _prod(module.weight.shape[1:])
        if isinstance(module, nn.Linear):
            return 2 * _numel(out) * int(module.in_features)
        return sympy.Integer(0)
    if node.op == "call_function" and (node.target in _CONV_FUNCTIONS or node.target in _LINEAR_FUNCTIONS):
        weight = _tensor_arg(node, 1, "weight")
        return 2 * _numel(out) * _prod(weight.shape[1:])
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return _aten_flops(node, out)
    return sympy.Integer(0)


#: ATen matrix products FlopCounterMode counts: the argument holding the left matrix
_ATEN_MATMULS = {"aten::mm": 0, "aten::bmm": 0, "aten::addmm": 1, "aten::baddbmm": 1}


def _aten_flops(node: torch.fx.Node, out: SymbolicTensor) -> sympy.Expr:
    """FLOPs of an ATen op (the ATen front end's graph), as FlopCounterMode
    counts them: ``aten.convolution`` as the modules above (its argument 6
    says transposed), a matrix product ``2 * numel(output) * K``."""
    name = node.target._schema.name
    if name in ("aten::convolution", "aten::_convolution"):
        weight = _tensor_arg(node, 1, "weight")
        transposed = node.args[6] if len(node.args) > 6 else node.kwargs.get("transposed", False)
        counted = _tensor_arg(node, 0, "input") if transposed else out
        if weight is None or counted is None:
            return sympy.Integer(0)
        return 2 * _numel(counted) * _prod(weight.shape[1:])
    if name in _ATEN_MATMULS:
        left = _tensor_arg(node, _ATEN_MATMULS[name], "mat1" if name == "aten::addmm" else "self")
        return sympy.Integer(0) if left is None else 2 * _numel(out) * left.shape[-1]
    return sympy.Integer(0)


def _leaves(value) -> list:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def _probe_sizes(analysis) -> dict[sympy.Symbol, int]:
    """One valid size per symbol, large enough that no stride-32 axis is 1
    (reshape's view-or-copy can hinge on size-1 axes), distinct per symbol."""
    sizes: dict[sympy.Symbol, int] = {}
    for i, symbol in enumerate(analysis.symbols):
        valid = analysis.valid_sizes(symbol)
        start = 67 + 8 * i
        chosen = next((n for n in range(start, start + 4096) if n in valid and n not in sizes.values()), None)
        if chosen is None:
            chosen = valid.minimum()
        if chosen is None:
            raise InputSpecError(f"no valid size of {symbol} to measure storage sharing at")
        sizes[symbol] = chosen
    return sizes


class _StorageRecorder(torch.fx.Interpreter):
    """Which storages each node's tensors live on, in a meta forward pass."""

    def run_node(self, n):
        value = super().run_node(n)
        leaves = [t for t in _leaves(value) if isinstance(t, torch.Tensor)]
        self.storages[n.name] = [(t.untyped_storage()._cdata, t.untyped_storage().nbytes(), t) for t in leaves]
        return value


def storage_map(graph_module: torch.fx.GraphModule, input_shape) -> dict[str, list]:
    """Per node name: ``(storage id, storage bytes, tensor)`` for each tensor in its value."""
    on_meta = graph_module
    if any(t.device.type != "meta" for t in [*graph_module.parameters(), *graph_module.buffers()]):
        on_meta = copy.deepcopy(graph_module).to("meta")
    recorder = _StorageRecorder(on_meta)
    recorder.storages = {}
    with torch.no_grad():
        recorder.run(torch.empty(tuple(input_shape), device="meta"))
    return recorder.storages


def cost(analysis, model: Optional[nn.Module] = None, *, dtype: str = "float32") -> Cost:
    """FLOPs, MACs, parameters and activation memory of ``analysis``'s model,
    as exact expressions in its input symbols (see the module docstring).

    ``params`` counts every parameter of ``model`` (``sum(p.numel())``, what
    torch and model cards report); ``params_used`` only those the traced
    forward pass reads (fewer when a module is built but not called).  Without
    ``model`` both are the traced graph's."""
    if dtype not in DTYPES:
        raise InputSpecError(f"unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
    float_size = DTYPES[dtype]
    graph_module = analysis.graph_module
    nodes = list(graph_module.graph.nodes)
    probe = _probe_sizes(analysis)
    input_shape = [int(evaluate(s, probe)) for s in analysis.input_tensor.shape]
    storages = storage_map(graph_module, input_shape)
    constant = {sid for n in nodes if n.op == "get_attr" for sid, _, _ in storages.get(n.name, ())}
    constant |= {t.untyped_storage()._cdata for t in [*graph_module.parameters(), *graph_module.buffers()]
                 if t.device.type == "meta"}

    def itemsize(tensor: torch.Tensor) -> int:
        # a floating activation takes --dtype's size; indices keep theirs (int64: 8)
        return float_size if tensor.dtype.is_floating_point else tensor.element_size()

    order = {n.name: i for i, n in enumerate(nodes)}
    # storage id -> (elements, bytes per element) in closed form, and the node that creates it
    sizes: dict[int, tuple[sympy.Expr, int]] = {}
    created_at: dict[int, int] = {}
    last_use: dict[int, int] = {}
    layers: list[LayerCost] = []
    for node in nodes:
        if node.op in ("get_attr", "output"):
            continue
        value = node.meta.get(META_KEY)
        recorded = storages.get(node.name, [])
        forms = [v for v in _leaves(value) if isinstance(v, SymbolicTensor)]
        if len(forms) != len(recorded):
            forms = [None] * len(recorded)
        entries = [(sid, nbytes, t, form) for (sid, nbytes, t), form in zip(recorded, forms) if sid not in constant]
        fresh = [e for e in entries if e[0] not in created_at]
        for sid, nbytes, tensor, form in fresh:
            created_at[sid] = order[node.name]
        for sid, nbytes, tensor, form in entries:
            end = len(nodes) if node.op == "placeholder" else max(
                [order[u.name] for u in node.users] + [order[node.name]])
            last_use[sid] = max(last_use.get(sid, 0), end)
            # the storage's closed-form size: the first tensor (in execution order) that spans all of it
            if sid not in sizes and form is not None and tensor.numel() * tensor.element_size() == nbytes:
                sizes[sid] = (_numel(form), itemsize(tensor))
        if isinstance(value, SymbolicTensor) and entries:
            module_params = 0
            if node.op == "call_module":
                module_params = sum(p.numel() for p in graph_module.get_submodule(node.target).parameters())
            layers.append(LayerCost(node.name, op_label(node, graph_module), node_flops(node, graph_module),
                                    module_params, _numel(value), itemsize(entries[0][2]), not fresh,
                                    _module_of(node)))
    missing = [sid for sid in created_at if sid not in sizes]
    if missing:
        owners = sorted({nodes[created_at[sid]].name for sid in missing})
        raise InputSpecError(f"cannot size the storage created at {', '.join(owners)}: no node's output spans it")

    def total(selected, unit) -> sympy.Expr:
        return sympy.Add(*(sizes[sid][0] * (sizes[sid][1] if unit else 1) for sid in selected))

    live_sets = []
    for i, node in enumerate(nodes):
        live = frozenset(sid for sid in created_at if created_at[sid] <= i <= last_use[sid])
        if live:
            live_sets.append((node.name, live))
    peak_elements, _ = _peak(live_sets, sizes, False)
    peak_bytes, peak_nodes = _peak(live_sets, sizes, True)
    params_used = sum(p.numel() for p in graph_module.parameters())
    params = params_used if model is None else sum(p.numel() for p in model.parameters())
    return Cost(analysis.model, analysis.input.text, tuple(analysis.symbols), dtype, layers,
                sympy.Add(*(layer.flops for layer in layers)), params,
                total(created_at, False), total(created_at, True), peak_elements, peak_bytes,
                params_used, peak_nodes,
                [(name, total(live, True)) for name, live in live_sets], capture=analysis.capture)


def _module_of(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    from shapecalc.capture.aten import module_path
    return module_path(node)


def _terms(live, sizes, in_bytes: bool) -> dict[sympy.Expr, int]:
    """A live set's total as {size form: integer coefficient}; every form is >= 0."""
    terms: dict[sympy.Expr, int] = {}
    for sid in live:
        elements, item = sizes[sid]
        coefficient, form = sympy.sympify(elements).as_coeff_Mul()
        weight = coefficient * (item if in_bytes else 1)
        terms[form] = terms.get(form, 0) + weight
    return terms


def _dominates(a: dict, b: dict) -> bool:
    # every form is a size (>= 0), so more of each form is never less in total
    return all(a.get(form, 0) >= weight for form, weight in b.items())


def _peak(live_sets, sizes, in_bytes: bool) -> tuple[sympy.Expr, list[str]]:
    """Max over the live sums, without the sums that another one dominates for every size."""
    candidates = []
    for name, live in live_sets:
        terms = _terms(live, sizes, in_bytes)
        if any(_dominates(kept, terms) for _, kept in candidates):
            continue
        candidates = [(n, kept) for n, kept in candidates if not _dominates(terms, kept)]
        candidates.append((name, terms))
    if not candidates:
        return sympy.Integer(0), []
    forms = [sympy.Add(*(weight * form for form, weight in terms.items())) for _, terms in candidates]
    return largest(*forms), [name for name, _ in candidates]
