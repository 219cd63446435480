"""Coordinate maps at work: the crop offsets that align skip connections.

A tensor axis with map ``y = scale*x + shift`` (Caffe's ``coord_map``
convention, see :class:`~shapecalc.tensors.AxisGeometry`) lines up with
another when both maps are equal.  A crop that starts at ``c`` subtracts ``c``
from the shift, so the offset that aligns a cropped tensor with the tensor it
is merged with is the difference of their shifts.  Half the size difference
(the usual hand derivation) equals it only for some input sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy
import torch.fx

from .domain import Domain
from .propagate import META_KEY, CropRecord
from .tensors import IDENTITY, AxisGeometry, SymbolicTensor

#: ops that combine two or more tensors position by position
MERGE_TARGETS = {"add", "sub", "mul", "truediv", "cat", "concat", "concatenate", "stack", "maximum", "minimum",
                 "__add__", "__radd__", "__sub__", "__mul__", "div"}


@dataclass(frozen=True)
class CropAlignment:
    """One crop: the offset the code uses and the one the geometry needs."""

    name: str
    merge: Optional[str]          # the merge node it feeds, "output", or None
    partner: Optional[str]        # the tensor it is aligned against
    offset: tuple                 # per spatial axis, as the code slices
    required: tuple               # per spatial axis; None where undetermined
    aligned: Optional[bool]
    counterexample: Optional[dict]


def _target_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    found = []

    def visit(a):
        if isinstance(a, torch.fx.Node) and isinstance(a.meta.get(META_KEY), SymbolicTensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
    for a in node.args:
        visit(a)
    return found


def is_merge(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and _target_name(node) in MERGE_TARGETS and len(_tensor_inputs(node)) >= 2


def _downstream_merge(node: torch.fx.Node) -> tuple[Optional[torch.fx.Node], Optional[torch.fx.Node]]:
    """Follow single-tensor, size-keeping ops from ``node`` to the merge (or
    output) that consumes it; returns (merge node, the input it came through)."""
    current = node
    mine = node.meta.get(META_KEY)
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None, None
        user = users[0]
        if user.op == "output" or is_merge(user):
            return user, current
        value = user.meta.get(META_KEY)
        if not (isinstance(value, SymbolicTensor) and isinstance(mine, SymbolicTensor)
                and value.spatial_sizes == mine.spatial_sizes and len(_tensor_inputs(user)) == 1):
            return None, None
        current = user


def _equal_on_domain(a, b, domain: Domain) -> Optional[bool]:
    difference = sympy.expand(a - b)
    if difference == 0:
        return True
    if difference.is_Number:
        return False
    return domain.always(sympy.Eq(a, b))


def _required_offset(source: Optional[AxisGeometry], partner: Optional[AxisGeometry], domain: Domain):
    if source is None or partner is None or source.position_free or partner.position_free:
        return None
    if _equal_on_domain(source.scale, partner.scale, domain) is not True:
        return None
    return source.shift - partner.shift


def crop_alignments(graph_module: torch.fx.GraphModule, crops: list[CropRecord], domain: Domain,
                    input_tensor: SymbolicTensor) -> list[CropAlignment]:
    nodes = {n.name: n for n in graph_module.graph.nodes}
    results = []
    for record in crops:
        node = nodes[record.node]
        merge, through = _downstream_merge(node)
        partner_geometry: tuple = (None,) * len(record.source.spatial)
        partner_name = None
        if merge is not None and merge.op == "output":
            partner_name = "input"
            partner_geometry = tuple(IDENTITY for _ in record.source.spatial)
        elif merge is not None:
            others = [n for n in _tensor_inputs(merge) if n is not through]
            if others:
                partner_name = others[0].name
                partner_geometry = others[0].meta[META_KEY].geometry
        offsets = tuple(record.starts.get(axis, sympy.Integer(0)) for axis in record.source.spatial)
        required = tuple(_required_offset(g, p, domain) for g, p in zip(record.source.geometry, partner_geometry))
        aligned: Optional[bool] = None
        counterexample = None
        if all(r is not None for r in required) and required:
            verdicts = []
            for offset, need in zip(offsets, required):
                verdict = _equal_on_domain(offset, need, domain)
                verdicts.append(verdict)
                if verdict is not True and counterexample is None:
                    counterexample = domain.first_failure(sympy.Eq(offset, need))
            aligned = all(v is True for v in verdicts) if all(v is not None for v in verdicts) else (False if False in verdicts else None)
        results.append(CropAlignment(
            name=record.node, merge=None if merge is None else ("output" if merge.op == "output" else merge.name),
            partner=partner_name, offset=offsets, required=required, aligned=aligned, counterexample=counterexample))
    return results
