"""Resampling audit: where interpolations and adaptive pools sample their
source, against where their output pixels should sit.

For output pixel ``u`` PyTorch reads the source at (``area_pixel_compute_source_index``,
``nearest_idx``, ``adaptive_avg_pool``):

* linear modes, ``align_corners=False``: ``(u + 1/2) * r - 1/2`` with
  ``r = n_in/n_out`` (``1/scale_factor`` when a scale factor is passed);
* linear modes, ``align_corners=True``: ``u * (n_in - 1)/(n_out - 1)``;
* ``nearest``: ``floor(u * r)``; ``nearest-exact``: ``floor((u + 1/2) * r)``;
* adaptive pools (and ``area``): the centre of cell
  ``[floor(u*n/o), ceil((u+1)*n/o))``.

The source coordinate becomes an input-image coordinate through the source's
coordinate map.  Where the output *should* sit is the grid of the tensor it
is made to match: the tensor whose ``.shape`` gave ``size=``, else the tensor
it is merged with, else the input image when it is the network's output at
the input's size, else its own half-pixel grid.  The difference, in input
pixels, is the shift; the linear modes shift affinely in ``u``, so the
largest shift is at the first or the last pixel.  Edge clamping (a linear
source index below 0 or beyond the last pixel reads the edge pixel) is
border extrapolation, not a shift of the grid, and is not counted.
Position-free inputs (a global pool) and position-free outputs carry no
position to get wrong: they are exact by nature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import sympy
import torch.fx

from shapecalc.engine import rules
from shapecalc.engine.domain import Domain
from shapecalc.audits.geometry import _downstream_merge, _tensor_inputs, aligned_sizes, decide, largest, magnitude, zero_condition
from shapecalc.engine.propagate import META_KEY
from shapecalc.audits.receptive import INDEX, increment
from shapecalc.engine.rules import LINEAR_MODES, Sampling
from shapecalc.engine.symbolic import as_expr, ceildiv, floordiv
from shapecalc.engine.tensors import IDENTITY, AxisGeometry, SymbolicTensor

#: outputs up to this many pixels are checked pixel by pixel when the sampling is a staircase
ENUMERATE_LIMIT = 4096
#: with a symbolic source size every output pixel's shift is a symbolic
#: expression and finding the largest compares them pairwise: beyond this
#: many pixels the shift is reported as not decided rather than taking minutes
SYMBOLIC_ENUMERATE_LIMIT = 8



@dataclass(frozen=True)
class ResampleAlignment:
    """One interpolation or adaptive pool and how far it moves pixels.

    ``max_shift`` is, per spatial axis, the largest distance (input pixels)
    between where an output pixel samples and where it should sit on the
    ``reference`` grid (None where undecided); ``exact`` gives, per input
    symbol, the valid sizes where that distance is 0 for every pixel."""

    name: str
    mode: str                     # nearest, bilinear, ..., area, adaptive_avg, adaptive_max
    align_corners: Optional[bool]
    reference: Optional[str]      # node whose grid the output should sit on; None: its own half-pixel grid
    max_shift: tuple              # per spatial axis
    aligned: Optional[bool]
    counterexample: Optional[dict]
    exact: dict = field(default_factory=dict)   # symbol -> PeriodicSet of valid sizes where it is exact
    reason: str = ""
    #: per spatial axis, the signed shift of output pixel ``i`` (an expression in
    #: :data:`~shapecalc.audits.receptive.INDEX`; sampled minus should-sit), None where unknown
    pixel_shift: tuple = field(default=(), repr=False, compare=False)
    conditions: tuple = field(default=(), repr=False, compare=False)


def _call(node: torch.fx.Node, graph_module: torch.fx.GraphModule, count: int) -> Optional[Sampling]:
    """How ``node`` samples its source, as its rule's ``resample`` says (None: not a resampler)."""
    found = rules.node_rule(node, graph_module)
    if found is None or found.resample is None:
        return None
    return found.resample(node, graph_module, count)


def _by_right(tensor: SymbolicTensor) -> dict:
    return {tensor.ndim - a: g for a, g in zip(tensor.spatial, tensor.geometry)}


def _reference(node, call: Sampling, value: SymbolicTensor, graph_module) -> tuple[Optional[str], list]:
    """The grid the output should sit on: (name, per-axis geometry or None)."""
    axes = [value.ndim - a for a in value.spatial]

    def usable(geometries):
        return all(g is not None and not g.position_free for g in geometries)

    if call.size_source is not None:
        source = call.size_source.meta.get(META_KEY)
        if isinstance(source, SymbolicTensor):
            geometries = [_by_right(source).get(axis) for axis in axes]
            if usable(geometries):
                return call.size_source.name, geometries
    merge, through = _downstream_merge(node)
    if merge is not None and merge.op != "output":
        for other in _tensor_inputs(merge):
            if other is through:
                continue
            geometries = [_by_right(other.meta[META_KEY]).get(axis) for axis in axes]
            if usable(geometries):
                return other.name, geometries
    if merge is not None and merge.op == "output":
        placeholder = next(n for n in graph_module.graph.nodes if n.op == "placeholder")
        image = placeholder.meta.get(META_KEY)
        if isinstance(image, SymbolicTensor) and image.spatial_sizes == value.spatial_sizes:
            return placeholder.name, [IDENTITY] * len(axes)
    return None, [None] * len(axes)


def resample_alignments(graph_module: torch.fx.GraphModule, domain: Domain) -> list[ResampleAlignment]:
    results = []
    for node in graph_module.graph.nodes:
        value = node.meta.get(META_KEY)
        if isinstance(value, tuple) and value and isinstance(value[0], SymbolicTensor):
            value = value[0]  # an adaptive max pool with its indices: the values are what is sampled
        if not isinstance(value, SymbolicTensor) or not value.spatial or not node.args:
            continue
        source = node.args[0].meta.get(META_KEY) if isinstance(node.args[0], torch.fx.Node) else None
        if not isinstance(source, SymbolicTensor):
            continue
        call = _call(node, graph_module, len(value.spatial))
        if call is None:
            continue
        results.append(_audit(node, call, source, value, graph_module, domain))
    return results


def _audit(node, call: Sampling, source: SymbolicTensor, value: SymbolicTensor, graph_module, domain: Domain):
    reference_name, references = _reference(node, call, value, graph_module)
    source_geometry = _by_right(source)
    source_sizes = {source.ndim - a: n for a, n in zip(source.spatial, source.spatial_sizes)}
    shifts, conditions, reasons, pixel_shifts = [], [], [], []
    undecided = False
    for k, (a, out) in enumerate(zip(value.spatial, value.spatial_sizes)):
        axis = value.ndim - a
        g, n = source_geometry.get(axis), source_sizes.get(axis)
        produced = value.geometry[k]
        if g is not None and g.position_free or produced is not None and produced.position_free:
            shifts.append(sympy.Integer(0))  # no position to get wrong
            pixel_shifts.append(sympy.Integer(0))
            continue
        if g is None or n is None:
            shifts.append(None)
            pixel_shifts.append(None)
            undecided = True
            reasons.append("the source's coordinate map is unknown")
            continue
        factor = None if call.scale_factors is None else call.scale_factors[k]
        shift, axis_conditions, reason, pixel_shift = _axis_shift(call, g, as_expr(n), as_expr(out), factor,
                                                                  references[k], domain)
        shifts.append(shift)
        pixel_shifts.append(pixel_shift)
        if axis_conditions is None:
            undecided = True
            reasons.append(reason)
        else:
            conditions.extend(axis_conditions)
    exact, left = aligned_sizes(domain, conditions)
    decisions = [decide(c, domain) for c in conditions]
    verdicts = [v for v, _ in decisions]
    if left:
        undecided = True
    aligned = False if False in verdicts else (None if undecided or None in verdicts else True)
    failures = [f for v, f in decisions if v is False and f]
    counterexample = min(failures, key=lambda f: tuple(f.values())) if failures else None
    exact_sets = {} if undecided else {s: exact[s] for s in domain.symbols}
    return ResampleAlignment(node.name, call.mode, call.align_corners, reference_name, tuple(shifts), aligned,
                             counterexample, exact_sets, "; ".join(dict.fromkeys(reasons)), tuple(pixel_shifts),
                             tuple(conditions))


def _axis_shift(call: Sampling, g: AxisGeometry, n, out, factor, reference: Optional[AxisGeometry], domain: Domain):
    """(largest shift, conditions for exactness, reason when undecided, shift of pixel INDEX)."""
    mode = call.mode
    ratio = sympy.Integer(1) / as_expr(factor) if factor is not None else n / out  # source pixels per output pixel

    def coordinate(source_index):  # source index -> input-image coordinate
        return (source_index - g.shift) / g.scale

    def should_sit(u):
        if reference is not None:
            return (u - reference.shift) / reference.scale
        return coordinate((u + sympy.Rational(1, 2)) * ratio - sympy.Rational(1, 2))

    def sampled(u):
        if mode in LINEAR_MODES:
            if call.align_corners:
                if out == 1:
                    return coordinate(sympy.Integer(0))
                if u == INDEX and not (out - 1).is_positive:
                    # PyTorch's scale is 0 for a single output pixel; the
                    # endpoint formulas cancel (out - 1) themselves
                    return sympy.Piecewise((coordinate(sympy.Integer(0)), sympy.Eq(out, 1)),
                                           (coordinate(u * (n - 1) / (out - 1)), True))
                return coordinate(u * (n - 1) / (out - 1))
            return coordinate((u + sympy.Rational(1, 2)) * ratio - sympy.Rational(1, 2))
        if mode == "nearest":
            return coordinate(_floor(u * ratio))
        if mode == "nearest-exact":
            return coordinate(_floor((u + sympy.Rational(1, 2)) * ratio))
        # adaptive cells (and mode="area"): the centre of [floor(u*n/o), ceil((u+1)*n/o))
        return coordinate((_floor(u * n / out) + _ceil((u + 1) * n / out) - 1) / 2)

    def shift_at(u):
        return sympy.expand(sampled(u) - should_sit(u))

    pixel_shift = shift_at(INDEX)
    if mode in LINEAR_MODES:
        # affine in u: the extremes are the first and the last pixel
        candidates = [shift_at(sympy.Integer(0)), shift_at(out - 1)]
    elif out.is_Integer and int(out) <= (ENUMERATE_LIMIT if not as_expr(n).free_symbols else SYMBOLIC_ENUMERATE_LIMIT):
        candidates = [shift_at(sympy.Integer(u)) for u in range(int(out))]
    else:
        ratio = sympy.expand(ratio)
        if not ratio.is_Rational:
            return None, None, f"{mode} sampling with a size-dependent ratio ({ratio}) is not decided", pixel_shift
        period = int(ratio.q)
        drift = increment(sympy.expand(pixel_shift), period)
        if drift is None or zero_condition(drift, domain) is not sympy.true:
            return None, None, f"{mode} sampling drifts against its reference grid", pixel_shift
        candidates = [shift_at(sympy.Integer(t)) for t in range(period)]
    conditions = [zero_condition(c, domain) for c in candidates]
    if any(c is None for c in conditions):
        return largest([magnitude(c, domain) for c in candidates], domain), None, "exactness could not be decided", pixel_shift
    return largest([magnitude(c, domain) for c in candidates], domain), conditions, "", pixel_shift


def _floor(value):
    value = sympy.expand(value)
    return floordiv(value, 1) if not value.is_Number else sympy.floor(value)


def _ceil(value):
    value = sympy.expand(value)
    return ceildiv(value, 1) if not value.is_Number else sympy.ceiling(value)
