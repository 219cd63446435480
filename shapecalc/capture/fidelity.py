"""Whether a torch.fx trace computes what the module computes.

``symbolic_trace`` runs ``forward`` once with Proxies.  Python that asks about
a value's type (``torch.jit.isinstance(x, torch.Tensor)`` is False for a
Proxy) takes another branch than at run time, and the graph silently leaves
out part of the network.  Sizes derived from such a graph are confidently
wrong, so the trace is checked first: the graph and the module run on the
meta device (no data, no arithmetic) at a few concrete sizes, and every output
shape must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Optional, Sequence

import torch
import torch.fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from shapecalc._errors import TraceError
from shapecalc.capture._without_dynamo import dynamo_not_loaded

#: tried in order until the module runs at two of them: non-square first (a
#: trace that swaps axes shows), then the sizes that stride-32 nets and nets
#: with a fixed input size (ViT: 224) accept
CANDIDATE_SIZES: tuple[tuple[int, ...], ...] = (
    (64, 96), (100, 76), (224, 224), (128, 160), (256, 256), (384, 320), (512, 512), (32, 32),
)

#: how many concrete sizes are compared.  Each costs two meta forward passes,
#: and a meta pass is not free (batch norm on meta runs Python decompositions:
#: about 0.7 s for a MobileNetV3 DeepLab); what the check catches, a branch
#: on a value's type, does not depend on the size
CHECKED_SIZES = 1


@dataclass(frozen=True)
class FidelityCheck:
    """What the check found: the input shapes both ran at, or why none was compared."""

    shapes: tuple[tuple[int, ...], ...]
    device: str
    reason: str = ""

    @property
    def checked(self) -> bool:
        return bool(self.shapes)

    def note(self) -> str:
        """A sentence for the analysis notes; empty for the usual case (checked on meta)."""
        if self.checked and self.device == "meta":
            return ""
        if self.checked:
            at = ", ".join("x".join(map(str, s)) for s in self.shapes)
            return (f"trace checked against the module by real forward passes on {self.device} at input {at} "
                    "(it does not run on meta)")
        return f"trace not checked against the module: {self.reason}"


def candidate_shapes(dimensions: int, channels: int, batch: int = 1,
                     first: Sequence[Sequence[int]] = ()) -> list[tuple[int, ...]]:
    """Input shapes to try: ``first`` (sizes known to be valid), then the candidates."""
    shapes: list[tuple[int, ...]] = []
    for sizes in chain(first, CANDIDATE_SIZES):
        sizes = tuple(int(s) for s in sizes)
        spatial = tuple(sizes[i % len(sizes)] for i in range(dimensions))
        shape = (batch, channels, *spatial)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def check_trace(model: nn.Module, graph_module: torch.fx.GraphModule, shapes: Sequence[tuple[int, ...]],
                *, wanted: int = CHECKED_SIZES) -> FidelityCheck:
    """Run ``model`` and ``graph_module`` at input ``shapes`` (in order) until
    ``wanted`` shapes ran on the module; raise :class:`TraceError` when the
    graph's outputs differ in structure or shape, or the graph fails where the
    module runs."""
    device = _device_of(model)
    run = _on_meta if device == "meta" else _on_meta_swapped
    with dynamo_not_loaded():  # the meta kernels' first calls would import it: 1.5 s of a 4 s CLI run
        result = _compare(model, graph_module, shapes, wanted, run, "meta")
    if not result.checked and device != "meta":
        # the module needs its real tensors (a buffer made in forward, a CPU
        # constant): compare real forward passes, at the smallest sizes only
        result = _compare(model, graph_module, sorted(shapes, key=_volume)[:3], 1,
                          lambda m, s: _on_device(m, s, device), device)
    return result


def _compare(model, graph_module, shapes, wanted, run, device) -> FidelityCheck:
    ran: list[tuple[int, ...]] = []
    first_failure = ""
    for shape in shapes:
        try:
            expected = run(model, shape)
        except Exception as error:  # the module does not run at this size: try another
            first_failure = first_failure or f"{'x'.join(map(str, shape))}: {_first_line(error)}"
            continue
        try:
            got = run(graph_module, shape)
        except Exception as error:
            node = _failing_node(graph_module, shape, run)
            at = f" at node {node!r}" if node else ""
            raise TraceError(_unfaithful(model, f"the traced graph fails{at} at input {'x'.join(map(str, shape))}, "
                                                f"where the module runs: {_first_line(error)}")) from error
        difference = _first_difference(expected, got)
        if difference:
            raise TraceError(_unfaithful(model, f"at input {'x'.join(map(str, shape))}, {difference}"))
        ran.append(tuple(shape))
        if len(ran) >= wanted:
            break
    if ran:
        return FidelityCheck(tuple(ran), device)
    tried = ", ".join("x".join(map(str, s)) for s in shapes)
    return FidelityCheck((), device, f"the module ran on {device} at none of the inputs tried ({tried}; first "
                                     f"failure {first_failure})")


def _unfaithful(model: nn.Module, detail: str) -> str:
    return (f"the torch.fx trace of {type(model).__name__} is unfaithful: {detail}. Typically a branch on a "
            "value's type (torch.jit.isinstance, isinstance(x, torch.Tensor)) went another way for the tracer's "
            "Proxy; no sizes are reported from this graph")


class _NodeRecorder(torch.fx.Interpreter):
    """Runs a graph node by node, remembering the node being run."""

    current: Optional[str] = None

    def run_node(self, n: torch.fx.Node) -> Any:
        self.current = n.name
        return super().run_node(n)


def _failing_node(graph_module: torch.fx.GraphModule, shape, run) -> Optional[str]:
    """The node at which ``graph_module`` fails at ``shape`` (same device as ``run``)."""
    recorder = _NodeRecorder(graph_module)
    try:
        run(_Forward(recorder), shape)
    except Exception:
        return recorder.current
    return None


class _Forward(nn.Module):
    """An Interpreter as a module: ``run`` calls modules (and swaps their tensors)."""

    def __init__(self, interpreter: torch.fx.Interpreter):
        super().__init__()
        self.graph_module = interpreter.module
        self.interpreter = interpreter

    def forward(self, x):
        return self.interpreter.run(x)


def _first_difference(expected: Any, got: Any) -> Optional[str]:
    """The first output whose shape (or presence) differs, as a phrase.  Outputs
    are matched by where they sit (``output['out']``, ``output[1]``): a graph
    that returns a dict where the module returns an OrderedDict (fx does so)
    or a list for a tuple is the same."""
    expected_leaves = _leaves(expected)
    got_leaves = _leaves(got)
    for key, leaf in expected_leaves.items():
        if not isinstance(leaf, torch.Tensor):
            continue
        if key not in got_leaves:
            return f"the module returns {key} of shape {_shape(leaf)} and the graph does not"
        other = got_leaves[key]
        if not isinstance(other, torch.Tensor):
            return f"{key} is a tensor of shape {_shape(leaf)} from the module but a {type(other).__name__} from the graph"
        if tuple(other.shape) != tuple(leaf.shape):
            return f"{key} has shape {_shape(leaf)} from the module but {_shape(other)} from the graph"
    for key, leaf in got_leaves.items():
        if isinstance(leaf, torch.Tensor) and not isinstance(expected_leaves.get(key), torch.Tensor):
            return f"the graph returns {key} of shape {_shape(leaf)} and the module does not"
    return None


def _leaves(value: Any) -> dict[str, Any]:
    leaves, _ = pytree.tree_flatten_with_path(value)
    return {"output" + pytree.keystr(path): leaf for path, leaf in leaves}


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "()"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _volume(shape: tuple[int, ...]) -> int:
    volume = 1
    for s in shape:
        volume *= s
    return volume


def _device_of(model: nn.Module) -> str:
    for tensor in chain(model.parameters(), model.buffers()):
        return tensor.device.type
    return "meta"


def _on_meta(module: nn.Module, shape) -> Any:
    with torch.no_grad():
        return module(torch.empty(shape, device="meta"))


def _on_meta_swapped(module: nn.Module, shape) -> Any:
    """A forward pass on meta of a module whose tensors live elsewhere: its
    parameters and buffers are swapped for meta ones for the call only."""
    named = chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False))
    swapped = {name: torch.empty_like(tensor, device="meta") for name, tensor in named}
    with torch.no_grad():
        return torch.func.functional_call(module, swapped, (torch.empty(shape, device="meta"),), strict=False)


def _on_device(module: nn.Module, shape, device: str) -> Any:
    with torch.no_grad():
        return module(torch.zeros(shape, device=device))
