"""Coordinate maps at work: crop offsets, merge alignment, aligned sizes.

A tensor axis with map ``y = scale*x + shift`` (Caffe's ``coord_map``
convention, see :class:`~shapecalc.engine.tensors.AxisGeometry`) lines up with
another when both maps are equal.  A crop that starts at ``c`` subtracts ``c``
from the shift, so the offset that aligns a cropped tensor with the tensor it
is merged with is the difference of their shifts.  Half the size difference
(the usual hand derivation) equals it only for some input sizes.

A merge (add, mul, cat, ...) is aligned when its inputs' strides and centres
agree for every valid size; each comparison is an exact condition on the
input size (ratios of sizes are multiplied out first, so they stay affine on
every residue class), and the sizes where all of them hold form the
aligned-input domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

import sympy
import torch.fx

from shapecalc.engine import rules
from shapecalc._errors import DomainError
from shapecalc.engine.domain import MAX_PERIOD, Domain, PeriodicSet, condition_set, period_of
from shapecalc.engine.propagate import META_KEY, CropRecord
from shapecalc.engine.symbolic import FloorDiv, as_expr, evaluate, format_expr
from shapecalc.engine.tensors import IDENTITY, AxisGeometry, SymbolicTensor

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


def merge_kind(node: torch.fx.Node) -> Optional[str]:
    """How ``node`` combines two or more tensors position by position (its
    rule's ``merge``: broadcast, concat, stack), or None."""
    if node.op not in ("call_function", "call_method", "call_module"):
        return None
    found = rules.node_rule(node, node.graph.owning_module)
    if found is None or found.merge is None or len(_tensor_inputs(node)) < 2:
        return None
    return found.merge


def is_merge(node: torch.fx.Node) -> bool:
    return merge_kind(node) is not None


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


# ---------------------------------------------------------------------------
# exact zero tests on the domain


# ---------------------------------------------------------------------------
# exact decisions on the domain
#
# Alignment conditions compare coordinates, and coordinates of resampled
# tensors are ratios of sizes (``16*ceiling(H/16)/H``).  Multiplied out they
# become polynomial (``H**2 - 16*H*ceiling(H/16) + ...``); on each residue
# class of the input every floor is affine in k, so an equation is a
# polynomial in k whose integer roots are exact.


def _degree(expr, symbol) -> int:
    """The degree in ``symbol`` once every floor is affine (a floor of a
    non-affine expression, Min/Max/Abs or a division by the symbol is not
    polynomial)."""
    if symbol not in expr.free_symbols:
        return 0
    if expr == symbol:
        return 1
    if isinstance(expr, (FloorDiv, sympy.floor, sympy.ceiling)):
        if _degree(expr.args[0], symbol) > 1:
            raise DomainError(f"{format_expr(expr)} is not floor-affine in {symbol}")
        return 1
    if expr.is_Add:
        return max(_degree(a, symbol) for a in expr.args)
    if expr.is_Mul:
        return sum(_degree(a, symbol) for a in expr.args)
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        return int(expr.exp) * _degree(expr.base, symbol)
    raise DomainError(f"{format_expr(expr)} is not polynomial in {symbol} and its floors")


def _on_class(expr, symbol, period: int, residue: int, degree: int) -> list[Fraction]:
    """``expr`` at ``symbol = period*k + residue`` as polynomial coefficients
    in k (constant first): every floor is affine in k there, so ``degree + 1``
    exact values determine it (Lagrange, in exact fractions)."""
    start = PeriodicSet.start(period, residue)
    points = [start + j for j in range(degree + 1)]
    values = [Fraction(evaluate(expr, {symbol: period * p + residue})) for p in points]
    coefficients = [Fraction(0)] * (degree + 1)
    for i, (xi, yi) in enumerate(zip(points, values)):
        basis, denominator = [Fraction(1)], Fraction(1)
        for j, xj in enumerate(points):
            if j != i:
                basis = [Fraction(0)] + basis  # times k ...
                for m in range(len(basis) - 1):
                    basis[m] -= xj * basis[m + 1]  # ... minus xj
                denominator *= xi - xj
        for m, c in enumerate(basis):
            coefficients[m] += yi * c / denominator
    while len(coefficients) > 1 and coefficients[-1] == 0:
        coefficients.pop()
    return coefficients


def _at(coefficients: list[Fraction], k: int) -> Fraction:
    value = Fraction(0)
    for c in reversed(coefficients):
        value = value * k + c
    return value


def _root_brackets(coefficients: list[Fraction]) -> set[int]:
    """Integers around every real root (each root lies between two of them)."""
    degree = len(coefficients) - 1
    if degree == 1:
        root = -coefficients[0] / coefficients[1]
        return {math.floor(root), math.floor(root) + 1}
    if degree == 2:
        common = math.lcm(*(c.denominator for c in coefficients))
        c, b, a = (int(x * common) for x in coefficients)
        discriminant = b * b - 4 * a * c
        if discriminant < 0:
            return set()
        low = math.isqrt(discriminant)
        out = set()
        for sign in (1, -1):
            ends = [Fraction(-b + sign * r, 2 * a) for r in (low, low + 1)]
            out.update(range(math.floor(min(ends)), math.ceil(max(ends)) + 1))
        return out
    polynomial = sympy.Poly([sympy.Rational(c.numerator, c.denominator) for c in reversed(coefficients)],
                            sympy.Dummy("k"))
    return {b for root in polynomial.real_roots() for b in (int(sympy.floor(root)), int(sympy.floor(root)) + 1)}


def _polynomial_truth(coefficients: list[Fraction], holds, start: int) -> tuple:
    """The integers k >= start where ``holds(polynomial(k))``, as intervals.
    The sign is constant between real roots, so it can only change at the
    integers that bracket a root."""
    if len(coefficients) == 1:
        return ((start, None),) if holds(coefficients[0]) else ()
    breaks = sorted(b for b in _root_brackets(coefficients) if b >= start)
    pieces = []  # (lo, hi, a sample k)
    cursor = start
    for b in breaks:
        if b > cursor:
            pieces.append((cursor, b - 1, cursor))
        if b >= cursor:
            pieces.append((b, b, b))
            cursor = b + 1
    pieces.append((cursor, None, cursor))
    kept = [(lo, hi) for lo, hi, sample in pieces if holds(_at(coefficients, sample))]
    merged: list = []
    for lo, hi in kept:
        if merged and merged[-1][1] is not None and merged[-1][1] + 1 >= lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return tuple(merged)


_RELATIONS = {sympy.Eq: lambda v: v == 0, sympy.Ne: lambda v: v != 0, sympy.Ge: lambda v: v >= 0,
              sympy.Gt: lambda v: v > 0, sympy.Le: lambda v: v <= 0, sympy.Lt: lambda v: v < 0}


def _polynomial_set(condition, symbol) -> PeriodicSet:
    """The sizes n >= 1 of ``symbol`` where a comparison of expressions
    polynomial in the symbol and its floors holds, exactly."""
    holds = next((h for kind, h in _RELATIONS.items() if isinstance(condition, kind)), None)
    if holds is None:
        raise DomainError(f"cannot decide {condition}")
    expr = sympy.expand(condition.lhs - condition.rhs)
    period = period_of(expr)
    if period > MAX_PERIOD:
        raise DomainError(f"deciding {condition} needs period {period}")
    degree = _degree(expr, symbol)
    classes = []
    for residue in range(period):
        coefficients = _on_class(expr, symbol, period, residue, degree)
        classes.append(_polynomial_truth(coefficients, holds, PeriodicSet.start(period, residue)))
    return PeriodicSet(period, tuple(classes)).reduced()


def _members(sizes: PeriodicSet) -> Optional[list[int]]:
    """Every element of a finite set (None for an infinite one)."""
    out = []
    for residue, intervals in enumerate(sizes.classes):
        for lo, hi in intervals:
            if hi is None or hi - lo > 4096:
                return None
            out.extend(sizes.period * k + residue for k in range(lo, hi + 1))
    return sorted(out)


def _of_members(members: list[int]) -> PeriodicSet:
    intervals: list = []
    for n in members:
        if intervals and intervals[-1][1] + 1 == n:
            intervals[-1] = (intervals[-1][0], n)
        else:
            intervals.append((n, n))
    return PeriodicSet(1, (tuple(intervals),))


def _plain(sizes: PeriodicSet) -> PeriodicSet:
    """A finite set written without a period (``H = 1``, not ``H = 16k + 1
    from 1 to 1``)."""
    members = _members(sizes)
    return sizes if members is None else _of_members(members)


def describe_sizes(sizes: PeriodicSet, symbol: str) -> str:
    """A sentence for a set of sizes that may be empty."""
    return f"no {symbol}" if sizes.is_empty() else _plain(sizes).describe(symbol)


def sizes_where(condition, symbol, within: PeriodicSet) -> PeriodicSet:
    """The sizes in ``within`` where ``condition`` holds, exactly: affine
    conditions by residue class, polynomial equations by integer roots, and
    anything else element by element when ``within`` is finite."""
    try:
        return _plain(within.intersection(condition_set(condition, symbol)))
    except DomainError:
        pass
    try:
        return _plain(within.intersection(_polynomial_set(condition, symbol)))
    except (DomainError, sympy.PolynomialError):
        pass
    members = _members(within)
    if members is None:
        raise DomainError(f"cannot decide {condition} on an infinite set of sizes")
    return _of_members([n for n in members if evaluate(condition, {symbol: n})])


def decide(condition, domain: Domain) -> tuple[Optional[bool], Optional[dict]]:
    """(holds for every valid size?, the smallest valid size where it fails)."""
    if condition is sympy.true:
        return True, None
    if condition is sympy.false:
        return False, domain.first_failure(sympy.false) if domain.symbols else None
    symbols = condition.free_symbols
    if len(symbols) != 1 or domain.undecided or next(iter(symbols)) not in domain.sets:
        return None, None
    (symbol,) = symbols
    valid = domain.sets[symbol]
    try:
        failing = valid.difference(sizes_where(condition, symbol, valid))
    except DomainError:
        return None, None
    smallest = failing.minimum()
    return smallest is None, None if smallest is None else {str(symbol): smallest}


def _positive_on(expr, domain: Domain) -> bool:
    """Whether every factor of ``expr`` is a positive number or a size that
    is at least 1 on the domain (so it can be multiplied away)."""
    for factor in sympy.Mul.make_args(expr):
        base, exponent = factor.as_base_exp()
        if factor.is_Number:
            if factor <= 0:
                return False
            continue
        if not (exponent.is_Integer and exponent > 0):
            return False
        if base.is_Number:
            if base <= 0:
                return False
            continue
        if _decide(sympy.Ge(base, 1), domain) is not True:
            return False
    return True


def _decide(condition, domain: Domain) -> Optional[bool]:
    return decide(condition, domain)[0]


def cleared(expr, domain: Domain):
    """``expr`` as ``numerator / denominator`` with a denominator positive on
    the domain; returns the numerator (same sign, same zeros) or None.
    Ratios of sizes (``16*ceiling(H/16)/H``) become affine this way."""
    expr = sympy.expand(as_expr(expr))
    if not expr.free_symbols:
        return expr
    numerator, denominator = sympy.fraction(sympy.together(expr))
    if denominator.is_Number:
        return sympy.expand(numerator * sympy.sign(denominator))
    if not _positive_on(denominator, domain):
        return None
    return sympy.expand(numerator)


def zero_condition(expr, domain: Domain):
    """The condition (affine where it can be) under which ``expr`` is 0, or
    None if it cannot be put in a decidable form."""
    numerator = cleared(expr, domain)
    if numerator is None:
        return None
    if numerator.is_Number:
        return sympy.true if numerator == 0 else sympy.false
    return sympy.Eq(numerator, 0)


def always_zero(expr, domain: Domain) -> tuple[Optional[bool], Optional[sympy.Basic], Optional[dict]]:
    """(verdict, condition, counterexample) for ``expr == 0`` on the domain."""
    condition = zero_condition(expr, domain)
    if condition is None:
        return None, None, None
    verdict, counterexample = decide(condition, domain)
    return verdict, condition, counterexample


def magnitude(expr, domain: Domain):
    """``|expr|`` without ``Abs`` where the sign is fixed on the domain."""
    expr = sympy.expand(as_expr(expr))
    if expr.is_Number:
        return abs(expr)
    numerator = cleared(expr, domain)
    if numerator is not None:
        if _decide(sympy.Ge(numerator, 0), domain) is True:
            return expr
        if _decide(sympy.Le(numerator, 0), domain) is True:
            return sympy.expand(-expr)
    return sympy.Abs(expr)


def _at_most(a, b, domain: Domain) -> bool:
    """Whether ``a <= b`` for every valid size (``|x| <= b`` is ``x <= b``
    and ``-x <= b``); False also where that is not decided."""
    if isinstance(a, sympy.Abs):
        return _at_most(a.args[0], b, domain) and _at_most(-a.args[0], b, domain)
    if isinstance(b, sympy.Abs):
        return _at_most(a, b.args[0], domain) or _at_most(a, -b.args[0], domain)
    difference = cleared(b - a, domain)
    return difference is not None and _decide(sympy.Ge(difference, 0), domain) is True


def largest(values, domain: Domain):
    """The maximum of non-negative expressions, decided pairwise where the
    domain allows (``Max`` of what is left)."""
    kept: list = []
    for value in values:
        value = as_expr(value)
        if any(sympy.expand(value - k) == 0 for k in kept) or any(_at_most(value, k, domain) for k in kept):
            continue
        kept = [k for k in kept if not _at_most(k, value, domain)] + [value]
    if not kept:
        return sympy.Integer(0)
    return kept[0] if len(kept) == 1 else sympy.Max(*kept)


# ---------------------------------------------------------------------------
# merges


@dataclass(frozen=True)
class MergeAlignment:
    """One merge (add, sub, mul, cat, stack, ...) of positioned tensors.

    ``shift`` is, per spatial axis, the centre of the first input whose
    pixels sit elsewhere minus the centre of ``inputs[0]`` (input pixels; 0
    when all agree, None where unknown).  Position-free inputs (after global
    pooling or broadcast from size 1) align with anything and are listed in
    ``position_free``."""

    name: str
    inputs: tuple                 # node names of the merged tensors, in argument order
    aligned: Optional[bool]
    shift: tuple                  # per spatial axis
    counterexample: Optional[dict]
    position_free: tuple = ()     # inputs that carry no position
    reason: str = ""              # why not aligned / not decided, in words
    conditions: tuple = field(default=(), repr=False, compare=False)  # what alignment needs


def merge_alignments(graph_module: torch.fx.GraphModule, domain: Domain) -> list[MergeAlignment]:
    results = []
    for node in graph_module.graph.nodes:
        if not is_merge(node):
            continue
        value = node.meta.get(META_KEY)
        if not isinstance(value, SymbolicTensor) or not value.spatial:
            continue
        inputs = [n for n in _tensor_inputs(node) if n.meta[META_KEY].spatial]
        if len(inputs) < 2:
            continue
        concat_axis = None
        if merge_kind(node) == "concat":
            arguments = rules.bound_arguments(node, graph_module)
            dim = arguments["axis"] if arguments.get("axis") is not None else arguments.get("dim", 0)
            first = inputs[0].meta[META_KEY]
            concat_axis = first.ndim - first.axis(dim) if isinstance(dim, int) else None
        results.append(_merge_alignment(node, inputs, value, concat_axis, domain))
    return results


def _merge_alignment(node, inputs, value: SymbolicTensor, concat_axis, domain: Domain) -> MergeAlignment:
    axes = [value.ndim - a for a in value.spatial]  # counted from the right
    per_input = []
    free_names = []
    for n in inputs:
        tensor = n.meta[META_KEY]
        by_right = {tensor.ndim - a: (g, tensor.shape[a]) for a, g in zip(tensor.spatial, tensor.geometry)}
        geometries = []
        for axis, size in zip(axes, value.spatial_sizes):
            g, own = by_right.get(axis, (None, None))
            if g is not None and own == 1 and size != 1:
                g = AxisGeometry(None, None, g.rf)  # broadcast: every index sees the same value
            geometries.append(g)
        if all(g is not None and g.position_free for g in geometries):
            free_names.append(n.name)
        per_input.append((n.name, geometries))
    shifts, conditions, verdicts, reasons = [], [], [], []
    counterexample = None
    for k, axis in enumerate(axes):
        if axis == concat_axis:
            shifts.append(None)
            continue
        positioned = [(name, gs[k]) for name, gs in per_input if gs[k] is None or not gs[k].position_free]
        if any(g is None for _, g in positioned):
            shifts.append(None)
            verdicts.append(None)
            reasons.append("an input's coordinate map is unknown")
            continue
        if len(positioned) < 2:
            shifts.append(sympy.Integer(0))
            verdicts.append(True)
            continue
        reference_name, reference = positioned[0]
        axis_shift = sympy.Integer(0)
        axis_verdict: Optional[bool] = True
        for name, g in positioned[1:]:
            stride_verdict, stride_condition, stride_failure = always_zero(g.stride - reference.stride, domain)
            center_verdict, center_condition, center_failure = always_zero(g.center - reference.center, domain)
            conditions.extend(c for c in (stride_condition, center_condition) if c is not None)
            if stride_condition is None or center_condition is None:
                axis_verdict = None if axis_verdict is not False else False
                reasons.append(f"alignment of {name} with {reference_name} could not be decided")
            if stride_verdict is False:
                reasons.append(f"{name} has stride {format_expr(g.stride)}, {reference_name} {format_expr(reference.stride)}")
            pair_verdict = False if False in (stride_verdict, center_verdict) else (
                True if stride_verdict is True and center_verdict is True else None)
            if pair_verdict is not True and axis_shift == 0:
                axis_shift = sympy.expand(g.center - reference.center)
            if pair_verdict is False:
                axis_verdict = False
                counterexample = counterexample or center_failure or stride_failure
            elif pair_verdict is None and axis_verdict is True:
                axis_verdict = None
        shifts.append(axis_shift)
        verdicts.append(axis_verdict)
    aligned = False if False in verdicts else (True if all(v is True for v in verdicts) else None)
    if aligned is False and counterexample is None and domain.symbols:
        counterexample = domain.first_failure(sympy.false)
    return MergeAlignment(node.name, tuple(n.name for n in inputs), aligned, tuple(shifts), counterexample,
                          tuple(free_names), "; ".join(dict.fromkeys(reasons)), tuple(conditions))


# ---------------------------------------------------------------------------
# the sizes where everything lines up


def crop_conditions(crop: CropAlignment) -> list:
    return [sympy.Eq(sympy.expand(o - r), 0) for o, r in zip(crop.offset, crop.required) if r is not None]


def aligned_sizes(domain: Domain, conditions) -> tuple[dict, list]:
    """Per input symbol, the valid sizes where every condition holds (same
    periodic form as the domain), and the conditions left undecided."""
    sets = dict(domain.sets)
    undecided = []
    for condition in conditions:
        if condition is sympy.true:
            continue
        if condition is sympy.false:
            sets = {s: PeriodicSet.at_least(None) for s in sets}
            continue
        symbols = condition.free_symbols
        if len(symbols) != 1 or next(iter(symbols)) not in sets:
            undecided.append(condition)
            continue
        (symbol,) = symbols
        try:
            sets[symbol] = sizes_where(condition, symbol, sets[symbol])
        except DomainError:
            undecided.append(condition)
    # a condition left over may still be decided once the others made the set finite
    for condition in list(undecided):
        symbols = condition.free_symbols
        if len(symbols) == 1 and next(iter(symbols)) in sets:
            (symbol,) = symbols
            try:
                sets[symbol] = sizes_where(condition, symbol, sets[symbol])
                undecided.remove(condition)
            except DomainError:
                pass
    return sets, undecided
