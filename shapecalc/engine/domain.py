"""Exact sets of valid input sizes.

Every size is floor-affine in the input size ``n``: on each residue class
``n = P*k + r`` (``P`` a multiple of every divisor inside the expression) a
``FloorDiv`` becomes affine in ``k``, and ``Min``/``Max``/``Piecewise`` split
the line into finitely many affine segments.  A condition (``size >= 1``,
``a == b``) is then a union of integer intervals of ``k`` per residue class,
decided exactly with integer arithmetic: no sampling, no sympy ``solve``.

Products of such terms (a flattened feature count, a view's element count)
are polynomials in ``k`` on each class; their sign on the integers is decided
exactly by forward differences and bisection (``_sign_runs``).

For a monotone condition (a size that can only grow with ``n`` must reach a
bound) the answer is ``n >= n0``; a doubling-and-bisection search with exact
evaluation finds ``n0`` whatever the period, so deep stacks of strided layers
(periods like 2**40) stay cheap.

A condition on several symbols becomes a union of cells (per-symbol periodic
sets, some symbols tied equal): ``H == W``, a product of per-symbol sizes
against a constant, a divisibility ``q | A*B``.  ``Domain`` keeps per-symbol
projections beside the cells, so one-symbol questions stay cheap.
"""

from __future__ import annotations

import itertools
import math
import types
from dataclasses import FrozenInstanceError, dataclass, field
from fractions import Fraction
from functools import lru_cache, reduce
from typing import Iterable, Iterator, Optional, Sequence

import sympy

from shapecalc._errors import DomainError
from shapecalc.engine.symbolic import FloorDiv, compiled, evaluate, floordiv, format_expr

#: the largest period decided residue class by residue class
MAX_PERIOD = 1 << 14
#: sizes beyond which a monotone search gives up (documented limit)
SEARCH_LIMIT = 1 << 128
#: the largest polynomial degree (in k, per residue class) decided exactly
MAX_DEGREE = 8
#: sizes listed one by one when a period is reduced past bounded runs
LISTING_LIMIT = 1 << 12

Interval = tuple[int, Optional[int]]  # inclusive; None means unbounded above


# ---------------------------------------------------------------------------
# integer interval sets


def _normalise(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    # key, not tuple order: (3, None) against (3, 7) would compare None with 7
    ordered = sorted(((lo, hi) for lo, hi in intervals if hi is None or hi >= lo),
                     key=lambda iv: (iv[0], math.inf if iv[1] is None else iv[1]))
    merged: list[list] = []
    for lo, hi in ordered:
        if merged and (merged[-1][1] is None or lo <= merged[-1][1] + 1):
            if merged[-1][1] is not None and (hi is None or hi > merged[-1][1]):
                merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def _intersect(a: Sequence[Interval], b: Sequence[Interval]) -> tuple[Interval, ...]:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo = max(lo1, lo2)
            hi = hi1 if hi2 is None else hi2 if hi1 is None else min(hi1, hi2)
            if hi is None or hi >= lo:
                out.append((lo, hi))
    return _normalise(out)


def _complement(a: Sequence[Interval], start: int) -> tuple[Interval, ...]:
    out = []
    cursor: Optional[int] = start
    for lo, hi in a:
        if cursor is None:
            break
        if lo > cursor:
            out.append((cursor, lo - 1))
        cursor = None if hi is None else max(cursor, hi + 1)
    if cursor is not None:
        out.append((cursor, None))
    return _normalise(out)


# ---------------------------------------------------------------------------
# piecewise-polynomial functions of k on one residue class
#
# A floor of an affine term is affine in k on a residue class; products of
# such terms (a flattened feature count, a view's element count) are
# polynomials in k.  Their sign on the integers is decided exactly through
# forward differences: where p(k+1) - p(k) keeps one sign, p is monotone, and
# a monotone integer sequence changes sign once (found by bisection).

Polynomial = tuple[Fraction, ...]  # coefficients, constant first, no trailing zeros


def _trimmed(coefficients) -> Polynomial:
    coefficients = list(coefficients)
    while len(coefficients) > 1 and coefficients[-1] == 0:
        coefficients.pop()
    return tuple(coefficients) or (Fraction(0),)


def _poly_add(p: Polynomial, q: Polynomial) -> Polynomial:
    if len(p) <= 2 and len(q) <= 2:  # the common affine case, without the generic loop
        constant = p[0] + q[0]
        slope = (p[1] if len(p) > 1 else 0) + (q[1] if len(q) > 1 else 0)
        return (constant, slope) if slope else (constant,)
    size = max(len(p), len(q))
    return _trimmed((p[i] if i < len(p) else 0) + (q[i] if i < len(q) else 0) for i in range(size))


def _poly_mul(p: Polynomial, q: Polynomial) -> Polynomial:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return _trimmed(out)


def _poly_value(p: Polynomial, k: int) -> Fraction:
    value = Fraction(0)
    for c in reversed(p):
        value = value * k + c
    return value


def _forward_difference(p: Polynomial) -> Polynomial:
    """p(k + 1) - p(k), one degree lower."""
    shifted = [Fraction(0)] * len(p)
    for i, c in enumerate(p):
        for j in range(i + 1):
            shifted[j] += c * math.comb(i, j)
    return _trimmed(s - c for s, c in zip(shifted[:-1], p[:-1]))


def _sign(value) -> int:
    return (value > 0) - (value < 0)


def _first_true(holds, lo: int, hi: Optional[int]) -> Optional[int]:
    """The smallest k in [lo, hi] with holds(k), for holds false then true."""
    if holds(lo):
        return lo
    if hi is None:
        step = 1
        while not holds(lo + step):
            step *= 2
            if step > SEARCH_LIMIT:
                raise DomainError("a polynomial condition changes sign beyond the search limit")
        low, high = lo + step // 2, lo + step
    else:
        if not holds(hi):
            return None
        low, high = lo, hi
    while high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle
    return high


def _sign_runs(p: Polynomial, lo: int, hi: Optional[int]) -> list[tuple[int, Optional[int], int]]:
    """Maximal runs (first, last, sign) of the sign of p on the integers of [lo, hi]."""
    if len(p) == 1:
        return [(lo, hi, _sign(p[0]))]
    if hi is not None and hi <= lo:
        return [(lo, lo, _sign(_poly_value(p, lo)))]
    steps = _sign_runs(_forward_difference(p), lo, None if hi is None else hi - 1)
    runs: list[list] = []
    for index, (a, b, step_sign) in enumerate(steps):
        end = hi if index == len(steps) - 1 else b  # the last step run also covers hi
        direction = 1 if step_sign >= 0 else -1     # p is monotone on [a, end]
        # on a monotone run the sign goes -1, 0, 1 (rising) or 1, 0, -1 (falling)
        zero_from = _first_true(lambda k: direction * _poly_value(p, k) >= 0, a, end)
        positive_from = None if zero_from is None else _first_true(
            lambda k: direction * _poly_value(p, k) > 0, zero_from, end)
        pieces = []
        if zero_from is None:
            pieces.append((a, end, -direction))
        else:
            if zero_from > a:
                pieces.append((a, zero_from - 1, -direction))
            if positive_from is None:
                pieces.append((zero_from, end, 0))
            else:
                if positive_from > zero_from:
                    pieces.append((zero_from, positive_from - 1, 0))
                pieces.append((positive_from, end, direction))
        for first, last, sign in pieces:
            if runs and runs[-1][2] == sign and runs[-1][1] is not None and runs[-1][1] + 1 >= first:
                runs[-1][1] = last
            else:
                runs.append([first, last, sign])
    return [tuple(r) for r in runs]


@dataclass(frozen=True)
class _Segment:
    lo: int
    hi: Optional[int]
    coefficients: Polynomial  # the value at k, constant first


def _constant(value, start: int) -> list[_Segment]:
    return [_Segment(start, None, (Fraction(value),))]


def _common_pieces(f: list[_Segment], g: list[_Segment]) -> Iterator[tuple[int, Optional[int], _Segment, _Segment]]:
    i = j = 0
    lo = max(f[0].lo, g[0].lo)
    while i < len(f) and j < len(g):
        a, b = f[i], g[j]
        his = [h for h in (a.hi, b.hi) if h is not None]
        hi = min(his) if his else None
        if hi is None or hi >= lo:
            yield lo, hi, a, b
        if hi is None:
            return
        lo = hi + 1
        if a.hi == hi:
            i += 1
        if b.hi == hi:
            j += 1


def _combine(f, g, operation) -> list[_Segment]:
    return [_Segment(lo, hi, operation(a.coefficients, b.coefficients)) for lo, hi, a, b in _common_pieces(f, g)]


def _difference(a: _Segment, b: _Segment, lo: int, hi: Optional[int]) -> _Segment:
    return _Segment(lo, hi, _poly_add(a.coefficients, tuple(-c for c in b.coefficients)))


def _nonnegative_part(segment: _Segment, lo: int, hi: Optional[int]) -> tuple[Interval, ...]:
    """Integers k in [lo, hi] with p(k) >= 0."""
    p = segment.coefficients
    if len(p) > 2:
        return _normalise((first, last) for first, last, sign in _sign_runs(p, lo, hi) if sign >= 0)
    b, a = p[0], (p[1] if len(p) > 1 else Fraction(0))
    if a == 0:
        return ((lo, hi),) if b >= 0 else ()
    bound = -b / a
    if a > 0:
        start = max(lo, math.ceil(bound))
        return ((start, hi),) if hi is None or start <= hi else ()
    stop = math.floor(bound)
    stop = stop if hi is None else min(hi, stop)
    return ((lo, stop),) if stop >= lo else ()


def _zero_part(segment: _Segment, lo: int, hi: Optional[int]) -> tuple[Interval, ...]:
    p = segment.coefficients
    if len(p) > 2:
        return _normalise((first, last) for first, last, sign in _sign_runs(p, lo, hi) if sign == 0)
    b, a = p[0], (p[1] if len(p) > 1 else Fraction(0))
    if a == 0:
        return ((lo, hi),) if b == 0 else ()
    root = -b / a
    if root.denominator != 1 or root < lo or (hi is not None and root > hi):
        return ()
    return ((int(root), int(root)),)


def _restrict(f: list[_Segment], region: Sequence[Interval]) -> list[_Segment]:
    out = []
    for seg in f:
        for lo, hi in _intersect([(seg.lo, seg.hi)], region):
            out.append(_Segment(lo, hi, seg.coefficients))
    return out


class _ResidueClass:
    """Evaluates expressions of one symbol on ``n = period*k + residue``."""

    def __init__(self, symbol: sympy.Symbol, period: int, residue: int):
        self.symbol, self.period, self.residue = symbol, period, residue
        self.start = -((residue - 1) // period)  # smallest k with n >= 1
        self._affine: dict[sympy.Basic, list[_Segment]] = {}

    def affine(self, expr: sympy.Basic) -> list[_Segment]:
        # Sizes repeat subterms (a crop's offset and length share its floors):
        # each is walked once per class.  Callers build new lists, never mutate.
        found = self._affine.get(expr)
        if found is None:
            found = self._affine[expr] = self._affine_uncached(expr)
        return found

    def _affine_uncached(self, expr: sympy.Basic) -> list[_Segment]:
        if expr.is_Number:
            return _constant(Fraction(int(expr.p), int(expr.q)), self.start)
        if expr.is_Symbol:
            if expr != self.symbol:
                raise DomainError(f"condition mixes {expr} and {self.symbol}")
            return [_Segment(self.start, None, (Fraction(self.residue), Fraction(self.period)))]
        if expr.is_Add:
            return reduce(lambda f, g: _combine(f, g, _poly_add), [self.affine(a) for a in expr.args])
        if expr.is_Mul:
            coefficient, rest = expr.as_coeff_Mul()
            factors = sympy.Mul.make_args(rest)
            # products of sizes (a flattened feature count) are polynomials in k
            segments = self.affine(factors[0]) if len(factors) == 1 else reduce(
                lambda f, g: self._bounded(_combine(f, g, _poly_mul), expr), [self.affine(a) for a in factors])
            c = Fraction(int(coefficient.p), int(coefficient.q))
            return segments if c == 1 else [_Segment(s.lo, s.hi, _trimmed(x * c for x in s.coefficients))
                                             for s in segments]
        if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
            base = self.affine(expr.base)
            return reduce(lambda f, g: self._bounded(_combine(f, g, _poly_mul), expr), [base] * int(expr.exp))
        if isinstance(expr, (FloorDiv, sympy.floor, sympy.ceiling)):
            if isinstance(expr, FloorDiv):
                inner, q, rounding = self.affine(expr.numerator), expr.divisor, math.floor
            else:
                inner, q, rounding = self.affine(expr.args[0]), 1, (math.floor if isinstance(expr, sympy.floor) else math.ceil)
            out = []
            for s in inner:
                # floor(p(k)/q) is a polynomial when every non-constant
                # coefficient is a multiple of q (the period includes q)
                scaled = [c / q for c in s.coefficients[1:]]
                if any(c.denominator != 1 for c in scaled):
                    raise DomainError(f"{format_expr(expr)} is not polynomial on residue classes of {self.symbol} "
                                      f"(period {self.period})")
                out.append(_Segment(s.lo, s.hi, _trimmed([Fraction(rounding(s.coefficients[0] / q)), *scaled])))
            return out
        if isinstance(expr, (sympy.Min, sympy.Max)):
            pick_first_when_nonneg = isinstance(expr, sympy.Max)
            return reduce(lambda f, g: self._min_max(f, g, pick_first_when_nonneg), [self.affine(a) for a in expr.args])
        if isinstance(expr, sympy.Piecewise):
            remaining: tuple[Interval, ...] = ((self.start, None),)
            out = []
            for value, condition in expr.args:
                region = _intersect(remaining, self.truth(condition))
                out.extend(_restrict(self.affine(value), region))
                remaining = _intersect(remaining, _complement(region, self.start))
            return sorted(out, key=lambda s: s.lo)
        raise DomainError(f"cannot decide conditions on {type(expr).__name__}: {format_expr(expr)}")

    def _bounded(self, segments: list[_Segment], expr) -> list[_Segment]:
        if any(len(s.coefficients) > MAX_DEGREE + 1 for s in segments):
            raise DomainError(f"{format_expr(expr)} has degree above {MAX_DEGREE} in {self.symbol}")
        return segments

    def _min_max(self, f, g, pick_first_when_nonneg: bool) -> list[_Segment]:
        out = []
        for lo, hi, a, b in _common_pieces(f, g):
            first = _nonnegative_part(_difference(a, b, lo, hi), lo, hi)
            second = _complement(first, lo)
            if hi is not None:
                second = _intersect(second, [(lo, hi)])
            if not pick_first_when_nonneg:
                first, second = second, first
                # For Min, ties (difference 0) may go either way: values are equal.
            for region, seg in ((first, a), (second, b)):
                out.extend(_Segment(l, h, seg.coefficients) for l, h in region)
        return sorted(out, key=lambda s: s.lo)

    def truth(self, condition: sympy.Basic) -> tuple[Interval, ...]:
        """The integers k >= start where ``condition`` holds."""
        everything = ((self.start, None),)
        if condition is sympy.true or condition == True:  # noqa: E712 - sympy booleans
            return everything
        if condition is sympy.false or condition == False:  # noqa: E712
            return ()
        if isinstance(condition, sympy.And):
            return reduce(_intersect, [self.truth(c) for c in condition.args], everything)
        if isinstance(condition, sympy.Or):
            return _normalise([iv for c in condition.args for iv in self.truth(c)])
        if isinstance(condition, sympy.Not):
            return _complement(self.truth(condition.args[0]), self.start)
        if isinstance(condition, sympy.ITE):
            # sympy turns a relation with a Piecewise side into If-Then-Else
            test, then, otherwise = (self.truth(c) for c in condition.args)
            return _normalise(_intersect(test, then) + _intersect(_complement(test, self.start), otherwise))
        left, right = getattr(condition, "lhs", None), getattr(condition, "rhs", None)
        if left is None:
            raise DomainError(f"cannot decide condition {condition}")
        if isinstance(condition, (sympy.Ge, sympy.Gt, sympy.Le, sympy.Lt)):
            if isinstance(condition, (sympy.Le, sympy.Lt)):
                left, right = right, left
            difference = self.affine(sympy.expand(left - right))
            nonneg = _normalise([iv for s in difference for iv in _nonnegative_part(s, s.lo, s.hi)])
            if isinstance(condition, (sympy.Ge, sympy.Le)):
                return nonneg
            # strict: left > right  <=>  not (right - left >= 0)
            return _complement(self.truth(sympy.Ge(right, left, evaluate=False)), self.start)
        if isinstance(condition, (sympy.Eq, sympy.Ne)):
            difference = self.affine(sympy.expand(left - right))
            zero = _normalise([iv for s in difference for iv in _zero_part(s, s.lo, s.hi)])
            return zero if isinstance(condition, sympy.Eq) else _complement(zero, self.start)
        raise DomainError(f"cannot decide condition {condition}")


# ---------------------------------------------------------------------------
# periods and monotonicity


@lru_cache(maxsize=8192)
def period_of(expr: sympy.Basic) -> int:
    """A period P: on every class n = P*k + r, each floor inside is affine in k."""
    if isinstance(expr, FloorDiv):
        return expr.divisor * period_of(expr.numerator)
    if isinstance(expr, (sympy.floor, sympy.ceiling)):
        denominators = [int(sympy.fraction(c)[1]) for c in sympy.expand(expr.args[0]).as_coefficients_dict().values()]
        return reduce(math.lcm, denominators, 1) * period_of(expr.args[0])
    if not expr.args:
        return 1
    return reduce(math.lcm, (period_of(a) for a in expr.args), 1)


def _is_nondecreasing(expr: sympy.Basic) -> bool:
    if expr.is_Number or expr.is_Symbol:
        return True
    if expr.is_Add or isinstance(expr, (sympy.Min, sympy.Max)):
        return all(_is_nondecreasing(a) for a in expr.args)
    if expr.is_Mul:
        coefficient, rest = expr.as_coeff_Mul()
        return coefficient >= 0 and not rest.is_Mul and _is_nondecreasing(rest)
    if isinstance(expr, FloorDiv):
        return _is_nondecreasing(expr.numerator)
    return False


def _smallest_nonnegative(f, symbol) -> Optional[int]:
    """Smallest n >= 1 with f(n) >= 0 for a non-decreasing f (exact)."""
    evaluate = compiled(f)
    if evaluate({symbol: 1}) >= 0:
        return 1
    low, high = 1, 2
    while evaluate({symbol: high}) < 0:
        low, high = high, high * 2
        if high > SEARCH_LIMIT:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        if evaluate({symbol: middle}) >= 0:
            high = middle
        else:
            low = middle
    return high


# ---------------------------------------------------------------------------
# periodic sets of sizes


@dataclass(frozen=True)
class PeriodicSet:
    """A set of sizes n >= 1: for each residue r mod ``period``, the integers
    k (n = period*k + r) as disjoint inclusive intervals."""

    period: int
    classes: tuple[tuple[Interval, ...], ...]

    @staticmethod
    def start(period: int, residue: int) -> int:
        return -((residue - 1) // period)

    @classmethod
    def everything(cls) -> "PeriodicSet":
        return cls(1, (((1, None),),))

    @classmethod
    def at_least(cls, n0: Optional[int]) -> "PeriodicSet":
        return cls(1, (((max(n0, 1), None),) if n0 is not None else (),))

    def _lifted(self, period: int) -> list[tuple[Interval, ...]]:
        """The same set described with a multiple of its period."""
        m = period // self.period
        out = []
        for residue in range(period):
            base = residue % self.period
            offset = (residue - base) // self.period  # k_self = m*k + offset
            start = self.start(period, residue)
            pieces = []
            for lo, hi in self.classes[base]:
                new_lo = max(start, -((offset - lo) // m))
                new_hi = None if hi is None else (hi - offset) // m
                pieces.append((new_lo, new_hi))
            out.append(_normalise(pieces))
        return out

    def intersection(self, other: "PeriodicSet") -> "PeriodicSet":
        period = math.lcm(self.period, other.period)
        a, b = self._lifted(period), other._lifted(period)
        return PeriodicSet(period, tuple(_intersect(x, y) for x, y in zip(a, b))).reduced()

    def complement(self) -> "PeriodicSet":
        return PeriodicSet(self.period, tuple(
            _complement(c, self.start(self.period, r)) for r, c in enumerate(self.classes))).reduced()

    def difference(self, other: "PeriodicSet") -> "PeriodicSet":
        return self.intersection(other.complement())

    def union(self, other: "PeriodicSet") -> "PeriodicSet":
        return self.complement().intersection(other.complement()).complement()

    def is_empty(self) -> bool:
        return not any(self.classes)

    def minimum(self) -> Optional[int]:
        mins = [self.period * c[0][0] + r for r, c in enumerate(self.classes) if c]
        return min(mins) if mins else None

    def __contains__(self, n: int) -> bool:
        r = n % self.period
        k = (n - r) // self.period
        return n >= 1 and any(lo <= k and (hi is None or k <= hi) for lo, hi in self.classes[r])

    def residue_minimums(self) -> dict[int, Optional[int]]:
        return {r: (self.period * c[0][0] + r if c else None) for r, c in enumerate(self.classes)}

    def is_upward_closed_per_class(self) -> bool:
        return all(len(c) == 0 or (len(c) == 1 and c[0][1] is None) for c in self.classes)

    def reduced(self) -> "PeriodicSet":
        """The same set with the smallest period this representation allows."""
        current = self
        changed = True
        while changed and current.period > 1:
            changed = False
            for p in _prime_factors(current.period):
                candidate = current._coarsened(current.period // p)
                if candidate is not None:
                    current, changed = candidate, True
                    break
        return current

    def _coarsened(self, period: int) -> Optional["PeriodicSet"]:
        # Build the coarse description from the smallest member of each
        # coarse class, then accept it only if lifting it back reproduces us.
        classes = []
        for residue in range(period):
            # the fine classes inside this coarse one, visited directly (scanning
            # every fine class per coarse residue was quadratic in the period)
            fine = [(r, self.classes[r]) for r in range(residue, self.period, period)]
            members = [self.period * c[0][0] + r for r, c in fine if c]
            bounded = any(iv[1] is not None for _, c in fine for iv in c)
            many = any(len(c) > 1 for _, c in fine)
            if bounded or many:
                return self._coarsened_by_listing(period)
            if members:
                n0 = min(members)
                classes.append((((n0 - residue) // period, None),))
            else:
                classes.append(())
        candidate = PeriodicSet(period, tuple(classes))
        if candidate._lifted(self.period) == list(self.classes):
            return candidate
        return self._coarsened_by_listing(period)  # e.g. {2} and every n >= 4

    def _coarsened_by_listing(self, period: int) -> Optional["PeriodicSet"]:
        # Bounded runs (W = 5, 4 <= H <= 9): list each coarse class up to a
        # horizon past every run's end and every tail's start; beyond it the
        # fine classes inside one coarse class must agree (all go on or none).
        edges = [self.period * (lo if hi is None else hi) + r for r, c in enumerate(self.classes) for lo, hi in c]
        horizon = max(edges, default=0) + self.period
        if horizon > LISTING_LIMIT:
            return None
        classes = []
        for residue in range(period):
            going_on = {bool(self.classes[r]) and self.classes[r][-1][1] is None
                        for r in range(residue, self.period, period)}
            if len(going_on) > 1:
                return None
            last = (horizon - residue) // period
            runs: list[list] = []
            for k in range(self.start(period, residue), last + 1):
                if period * k + residue in self:
                    if runs and runs[-1][1] == k - 1:
                        runs[-1][1] = k
                    else:
                        runs.append([k, k])
            if going_on == {True}:
                runs[-1][1] = None  # every fine class is on from the horizon on
            classes.append(tuple((lo, hi) for lo, hi in runs))
        candidate = PeriodicSet(period, tuple(classes))
        return candidate if candidate._lifted(self.period) == list(self.classes) else None

    def plain(self) -> "PeriodicSet":
        """A finite set written without a period (``H = 1``, not ``H = 16k + 1 from 1 to 1``)."""
        members = []
        for residue, intervals in enumerate(self.classes):
            for lo, hi in intervals:
                if hi is None or len(members) + hi - lo > LISTING_LIMIT:
                    return self
                members.extend(self.period * k + residue for k in range(lo, hi + 1))
        runs: list[list[int]] = []
        for n in sorted(members):
            if runs and runs[-1][1] + 1 == n:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        return PeriodicSet(1, (tuple((lo, hi) for lo, hi in runs),))

    def describe(self, symbol: str) -> str:
        """A sentence a person reads, e.g. ``every H >= 1``."""
        if self.is_empty():
            return f"no {symbol} (the network never runs)"
        if self.period == 1:
            parts = [_describe_interval(symbol, lo, hi) for lo, hi in self.classes[0]]
            if len(parts) == 1 and self.classes[0][0][1] is None:
                return "every " + parts[0]
            return " or ".join(parts)
        clauses = []
        for r, intervals in enumerate(self.classes):
            if not intervals:
                continue
            ranges = [(self.period * lo + r, None if hi is None else self.period * hi + r) for lo, hi in intervals]
            text = ", ".join(f"from {lo}" + ("" if hi is None else f" to {hi}") for lo, hi in ranges)
            clauses.append(f"{symbol} = {self.period}k + {r} {text}" if r else f"{symbol} = {self.period}k {text}")
        excluded = [r for r, c in enumerate(self.classes) if not c]
        tail = f"; never for {_residues_phrase(symbol, self.period, excluded)}" if excluded else ""
        return "; ".join(clauses) + tail

    def as_data(self) -> dict:
        return {
            "period": self.period,
            "min": {str(r): v for r, v in self.residue_minimums().items()},
            "intervals": {
                str(r): [[self.period * lo + r, None if hi is None else self.period * hi + r] for lo, hi in c]
                for r, c in enumerate(self.classes)
            },
        }


def _residues_phrase(symbol: str, period: int, residues: list[int]) -> str:
    """Residues mod ``period`` in words: ``odd H``, ``H a multiple of 4``,
    ``H = 3k + 1`` when they are one class of a divisor, else the list."""
    for d in range(2, period + 1):
        if period % d:
            continue
        classes = {r % d for r in residues}
        if len(classes) == 1 and len(residues) == period // d:
            (r,) = classes
            if d == 2:
                return f"odd {symbol}" if r else f"even {symbol}"
            return f"{symbol} a multiple of {d}" if r == 0 else f"{symbol} = {d}k + {r}"
    kept = [r for r in range(period) if r not in set(residues)]
    if len(residues) > period // 2 and kept:
        # every class but the multiples of a divisor: "H not a multiple of 32"
        kept_phrase = _residues_phrase(symbol, period, kept)
        if kept_phrase.endswith(" a multiple of " + kept_phrase.rsplit(" ", 1)[-1]) and " mod " not in kept_phrase:
            return kept_phrase.replace(" a multiple of", " not a multiple of")
    return f"{symbol} mod {period} in {{{', '.join(map(str, residues))}}}"


def _describe_interval(symbol: str, lo: int, hi: Optional[int]) -> str:
    if hi is None:
        return f"{symbol} >= {lo}"
    if lo == hi:
        return f"{symbol} = {lo}"
    return f"{lo} <= {symbol} <= {hi}"


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        if n % p == 0:
            factors.append(p)
            while n % p == 0:
                n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


@lru_cache(maxsize=4096)
def condition_set(condition: sympy.Basic, symbol: sympy.Symbol) -> PeriodicSet:
    """The exact set of sizes n >= 1 of ``symbol`` where ``condition`` holds
    (a pure function of two immutable sympy values: the audits ask the same
    question of every layer that carries an axis unchanged)."""
    if condition is sympy.true:
        return PeriodicSet.everything()
    if condition is sympy.false:
        return PeriodicSet.at_least(None)
    if isinstance(condition, (sympy.Ge, sympy.Le)):
        left, right = (condition.lhs, condition.rhs) if isinstance(condition, sympy.Ge) else (condition.rhs, condition.lhs)
        difference = sympy.expand(left - right)
        if _is_nondecreasing(difference):
            return PeriodicSet.at_least(_smallest_nonnegative(difference, symbol))
    period = period_of(condition)
    if period > MAX_PERIOD:
        raise DomainError(
            f"deciding {condition} needs period {period}, above the limit of {MAX_PERIOD} residue classes")
    classes = tuple(_ResidueClass(symbol, period, r).truth(condition) for r in range(period))
    return PeriodicSet(period, classes).reduced()


# ---------------------------------------------------------------------------
# conditions on several symbols
#
# A condition on several sizes is kept as a union of cells: in each cell every
# symbol ranges over its own periodic set, and some symbols may be tied equal
# (``H == W``).  What a forward pass asks of two sizes almost always has this
# form: broadcasting (H == W, or one of them 1), a feature count or a view
# (a product of per-symbol sizes equal to a constant: finitely many factor
# pairs), a norm's "more than one value" (a product above a small bound).

#: cells a condition may expand into before it counts as undecided
MAX_CELLS = 256
#: the largest bound a product inequality is split at (A*B >= t: t cases)
MAX_PRODUCT_BOUND = 64


class _Cell:
    """Sizes where each symbol lies in its set and tied symbols are equal."""

    __slots__ = ("sets", "ties")

    def __init__(self, sets: dict, ties: tuple = ()):
        self.sets, self.ties = sets, ties

    @classmethod
    def tied_equal(cls, symbols) -> "_Cell":
        return cls({}, (frozenset(symbols),))

    def projection(self, symbol) -> PeriodicSet:
        return self.sets.get(symbol) or PeriodicSet.everything()

    def intersection(self, other: "_Cell") -> Optional["_Cell"]:
        """The common part, or None when it is empty."""
        sets = dict(self.sets)
        for symbol, allowed in other.sets.items():
            sets[symbol] = sets[symbol].intersection(allowed) if symbol in sets else allowed
        groups: list[set] = []
        for tie in (*self.ties, *other.ties):
            merged = set(tie)
            for group in [g for g in groups if g & merged]:
                merged |= group
                groups.remove(group)
            groups.append(merged)
        for group in groups:
            common = reduce(PeriodicSet.intersection, [sets[s] for s in group if s in sets], PeriodicSet.everything())
            for s in group:
                sets[s] = common
        if any(allowed.is_empty() for allowed in sets.values()):
            return None
        ties = tuple(sorted((frozenset(g) for g in groups), key=lambda g: sorted(map(str, g))))
        return _Cell(sets, ties)

    def contains(self, sizes) -> bool:
        return (all(sizes[s] in allowed for s, allowed in self.sets.items())
                and all(len({sizes[s] for s in tie}) == 1 for tie in self.ties))

    def within(self, other: "_Cell") -> bool:
        """Whether every size in this cell is in ``other`` too."""
        for symbol, allowed in other.sets.items():
            if not self.projection(symbol).difference(allowed).is_empty():
                return False
        return all(any(tie <= mine for mine in self.ties)
                   or all(_same_single_size(self.projection(a), self.projection(b)) for a in tie for b in tie)
                   for tie in other.ties)

    def key(self):
        return tuple(sorted((str(s), v) for s, v in self.sets.items())), self.ties

    def smallest(self, symbols) -> dict[str, int]:
        return {str(s): self.projection(s).minimum() for s in sorted(symbols, key=str)}


def _cells_intersection(a: list[_Cell], b: list[_Cell]) -> list[_Cell]:
    return _union([cell for x in a for y in b for cell in [x.intersection(y)] if cell is not None])


def _absorbed(cells: list[_Cell]) -> list[_Cell]:
    """The cells not contained in another one (the first of equal ones stays)."""
    kept: list[_Cell] = []
    for cell in cells:
        if any(cell.within(other) for other in kept):
            continue
        kept = [other for other in kept if not other.within(cell)] + [cell]
    return kept


def _negated(condition: sympy.Basic) -> sympy.Basic:
    if isinstance(condition, sympy.And):
        return sympy.Or(*[_negated(c) for c in condition.args])
    if isinstance(condition, sympy.Or):
        return sympy.And(*[_negated(c) for c in condition.args])
    if isinstance(condition, sympy.Not):
        return condition.args[0]
    if isinstance(condition, sympy.core.relational.Relational):
        return condition.negated
    if condition is sympy.true or condition is sympy.false:
        return sympy.false if condition is sympy.true else sympy.true
    raise DomainError(f"cannot negate {condition}")


def condition_cells(condition: sympy.Basic) -> list[_Cell]:
    """``condition`` on any number of symbols as an exact union of cells
    (DomainError when it has no such form here)."""
    if condition is sympy.true:
        return [_Cell({})]
    if condition is sympy.false:
        return []
    symbols = condition.free_symbols
    if len(symbols) == 1:
        (symbol,) = symbols
        allowed = condition_set(condition, symbol)
        return [] if allowed.is_empty() else [_Cell({symbol: allowed})]
    if isinstance(condition, sympy.And):
        return reduce(_cells_intersection, [condition_cells(c) for c in condition.args], [_Cell({})])
    if isinstance(condition, sympy.Or):
        return _union(*[condition_cells(c) for c in condition.args])
    if isinstance(condition, sympy.Not):
        return condition_cells(_negated(condition.args[0]))
    if isinstance(condition, sympy.core.relational.Relational):
        return _relation_cells(condition)
    raise DomainError(f"cannot decide {condition}")


def _relation_cells(relation) -> list[_Cell]:
    difference = sympy.expand(relation.lhs - relation.rhs)
    terms = difference.as_coefficients_dict()
    variable = {t: c for t, c in terms.items() if t != 1}
    # x == y between two symbols, up to a common factor
    if isinstance(relation, sympy.Eq) and len(variable) == 2 and not terms.get(sympy.Integer(1)):
        (x, cx), (y, cy) = variable.items()
        if x.is_Symbol and y.is_Symbol and cx == -cy:
            return [_Cell.tied_equal((x, y))]
    if isinstance(relation, sympy.Eq):
        divisible = _divisibility_cells(difference)
        if divisible is not None:
            return divisible
    constant, product, coefficient = _product_form(relation)
    factors = [sympy.Mul(*fs) for _, fs in sorted(_factors_by_symbol(product).items(), key=lambda item: str(item[0]))]
    target = Fraction(int((-constant).p), int((-constant).q)) / Fraction(int(coefficient.p), int(coefficient.q))
    kind = type(relation)
    if coefficient < 0:  # dividing by a negative coefficient flips the comparison
        kind = {sympy.Ge: sympy.Le, sympy.Gt: sympy.Lt, sympy.Le: sympy.Ge, sympy.Lt: sympy.Gt}.get(kind, kind)
    if kind is sympy.Eq:
        return _product_equal(factors, target) if target.denominator == 1 else []
    if kind is sympy.Ne:
        if target.denominator != 1:
            return [_Cell({})]
        return _union(_product_at_least(factors, int(target) + 1), _product_at_most(factors, int(target) - 1))
    if kind is sympy.Ge:
        return _product_at_least(factors, math.ceil(target))
    if kind is sympy.Gt:
        return _product_at_least(factors, math.floor(target) + 1)
    if kind is sympy.Le:
        return _product_at_most(factors, math.floor(target))
    if kind is sympy.Lt:
        return _product_at_most(factors, math.ceil(target) - 1)
    raise DomainError(f"cannot decide {relation}")


def _divisibility_cells(difference) -> Optional[list[_Cell]]:
    """``c*floor(N/q) - c*N/q == 0`` says q divides N (a view's inferred axis
    must come out whole); for N a product of per-symbol sizes, q | A*B holds
    exactly when g | A and (q/g) | B for some divisor g of q."""
    floors = [f for f in difference.atoms(FloorDiv) if len(f.free_symbols) > 1]
    if len(floors) != 1:
        return None
    (floor_term,) = floors
    c = difference.coeff(floor_term)
    if not c.is_Rational or c == 0:
        return None
    numerator, q = floor_term.numerator, floor_term.divisor
    if sympy.expand(difference - c * floor_term + c * numerator / q) != 0:
        return None
    constant, rest = sympy.expand(numerator).as_coeff_Add()
    if constant != 0 or rest.is_Add:
        rest = sympy.factor(numerator)
    multiplier, product = rest.as_coeff_Mul()
    if not multiplier.is_Integer:
        return None
    try:
        groups = _factors_by_symbol(product)
    except DomainError:
        return None
    factors = [sympy.Mul(*fs) for _, fs in sorted(groups.items(), key=lambda item: str(item[0]))]
    return _product_divisible(factors, q // math.gcd(q, abs(int(multiplier))))


def _product_divisible(factors, q: int) -> list[_Cell]:
    first, rest = factors[0], factors[1:]
    if q == 1:
        return [_Cell({})]
    if not rest:
        return _single(first, sympy.Eq(q * floordiv(first, q), first, evaluate=False))
    cases = []
    for g in range(1, q + 1):
        if q % g == 0:
            mine = [_Cell({})] if g == 1 else _single(first, sympy.Eq(g * floordiv(first, g), first, evaluate=False))
            cases.append(_cells_intersection(mine, _product_divisible(rest, q // g)))
    return _union(*cases)


def _factors_by_symbol(product) -> dict:
    groups: dict = {}
    for factor in sympy.Mul.make_args(product):
        owners = factor.free_symbols
        if len(owners) != 1:
            raise DomainError(f"{factor} mixes symbols")
        groups.setdefault(next(iter(owners)), []).append(factor)
    return groups


def _product_form(relation):
    """(constant, product, coefficient) with lhs - rhs == coefficient*product + constant,
    the product's factors each of one symbol: as built ((H - 2)*(W - 2) - 4),
    else factored (a view compares expanded element counts)."""
    difference = relation.lhs - relation.rhs
    for attempt in (lambda d: d, sympy.expand, None):
        if attempt is None:
            constant, rest = sympy.expand(difference).as_coeff_Add()
            candidate = constant + sympy.factor(rest)
        else:
            candidate = attempt(difference)
        constant, rest = candidate.as_coeff_Add()
        if rest.is_Add or not constant.is_Rational:
            continue
        coefficient, product = rest.as_coeff_Mul()
        if coefficient.is_Rational and coefficient != 0:
            try:
                _factors_by_symbol(product)
            except DomainError:
                continue
            return constant, product, coefficient
    raise DomainError(f"{relation} is not a product of per-symbol sizes against a constant")


def _union(*cell_lists) -> list[_Cell]:
    cells: dict = {}
    for cell in (c for cells_ in cell_lists for c in cells_):
        cells.setdefault(cell.key(), cell)
    if len(cells) > MAX_CELLS:
        raise DomainError(f"the condition splits into more than {MAX_CELLS} cases")
    return _absorbed(list(cells.values()))


def _single(factor, relation) -> list[_Cell]:
    (symbol,) = factor.free_symbols
    allowed = condition_set(relation, symbol)
    return [] if allowed.is_empty() else [_Cell({symbol: allowed})]


def _with(factor, relation, rest: list[_Cell]) -> list[_Cell]:
    return _cells_intersection(_single(factor, relation), rest) if rest else []


def _product_equal(factors, target: int) -> list[_Cell]:
    """Integer factors whose product is ``target``: finitely many divisor splits."""
    first, rest = factors[0], factors[1:]
    if not rest:
        return _single(first, sympy.Eq(first, int(target), evaluate=False))
    target = int(target)
    if target == 0:
        return _union(_single(first, sympy.Eq(first, 0, evaluate=False)), _product_equal(rest, 0))
    divisors = [d for d in range(1, math.isqrt(abs(target)) + 1) if target % d == 0]
    divisors = sorted(set(divisors + [abs(target) // d for d in divisors]))
    if 2 * len(divisors) > MAX_CELLS:
        raise DomainError(f"{target} has too many divisors to split")
    cases = []
    for d in divisors:
        for value in (d, -d):
            cases.append(_with(first, sympy.Eq(first, value, evaluate=False), _product_equal(rest, target // value)))
    return _union(*cases)


def _product_at_least(factors, bound: int) -> list[_Cell]:
    """Integer factors whose product is at least ``bound``."""
    first, rest = factors[0], factors[1:]
    if not rest:
        return _single(first, sympy.Ge(first, bound, evaluate=False))
    if abs(bound) > MAX_PRODUCT_BOUND:
        raise DomainError(f"a product bound of {bound} splits into too many cases")
    if bound <= 0:
        # at least 0: both factors of one sign; a negative bound adds the few values below 0
        nonnegative = _union(
            _with(first, sympy.Ge(first, 0, evaluate=False), _product_at_least(rest, 0)),
            _with(first, sympy.Le(first, 0, evaluate=False), _product_at_most(rest, 0)))
        return _union(nonnegative, *[_product_equal(factors, v) for v in range(bound, 0)])
    cases = [_with(first, sympy.Ge(first, bound, evaluate=False), _product_at_least(rest, 1)),
             _with(first, sympy.Le(first, -bound, evaluate=False), _product_at_most(rest, -1))]
    for d in range(1, bound):
        need = -(-bound // d)
        cases.append(_with(first, sympy.Eq(first, d, evaluate=False), _product_at_least(rest, need)))
        cases.append(_with(first, sympy.Eq(first, -d, evaluate=False), _product_at_most(rest, -need)))
    return _union(*cases)


def _product_at_most(factors, bound: int) -> list[_Cell]:
    # a*b <= t  <=>  (-a)*b >= -t
    return _product_at_least([-factors[0], *factors[1:]], -bound)


def _describe_cell(cell: _Cell, projections: dict) -> str:
    parts = [" = ".join(sorted(map(str, tie))) for tie in cell.ties]
    # a tied group's common set is named once, by its first symbol
    followers = {s for tie in cell.ties for s in sorted(tie, key=str)[1:]}
    for symbol in sorted(cell.sets, key=str):
        allowed = cell.sets[symbol]
        if symbol in followers or allowed == projections.get(symbol):
            continue
        parts.append(_cell_phrase(allowed, str(symbol)))
    return " and ".join(parts) or "any sizes"


def _cell_phrase(allowed: PeriodicSet, symbol: str) -> str:
    """One symbol's part of a cell, short enough to sit between ``and``/``or``."""
    plain = allowed.plain()
    if plain.period == 1:
        return plain.describe(symbol).removeprefix("every ")
    whole = [r for r, c in enumerate(allowed.classes) if c == ((PeriodicSet.start(allowed.period, r), None),)]
    if len(whole) + sum(1 for c in allowed.classes if not c) == allowed.period:
        phrase = _residues_phrase(symbol, allowed.period, whole)
        if " mod " not in phrase:  # one residue class of a divisor: "even W", "H a multiple of 4"
            return phrase
    return f"({allowed.describe(symbol)})"


# ---------------------------------------------------------------------------
# the running domain of one trace


@dataclass(frozen=True)
class Requirement:
    """One condition a forward pass needs, with the node that needs it."""

    condition: sympy.Basic
    node: str
    reason: str


@dataclass(frozen=True)
class Exclusion:
    """Sizes of one symbol that ``requirement`` rules out (and no earlier one did)."""

    requirement: Requirement
    symbol: sympy.Symbol
    sizes: PeriodicSet


@dataclass
class Domain:
    """The valid input sizes, built up one requirement at a time.

    ``sets`` holds, per symbol, the sizes that occur in some valid input (its
    projection).  Requirements tying several symbols are decided exactly into
    ``cells`` (None while the domain is a plain product of ``sets``);
    ``undecided`` holds what could not be decided, and then ``sets`` is an
    upper bound.  :meth:`freeze` makes it final (an Analysis does when made, before
    handing it out): its collections become read-only and :meth:`add` raises."""

    symbols: tuple[sympy.Symbol, ...]
    sets: dict[sympy.Symbol, PeriodicSet] = field(default_factory=dict)
    requirements: list[Requirement] = field(default_factory=list)
    undecided: list[Requirement] = field(default_factory=list)
    #: requirements on several symbols that were decided exactly
    joint: list[Requirement] = field(default_factory=list)
    #: the valid sizes as a union of cells, once some requirement ties symbols
    cells: Optional[list[_Cell]] = field(default=None, repr=False)
    #: per requirement that shrank a symbol's set, the sizes it removed (graph order)
    exclusions: list["Exclusion"] = field(default_factory=list, repr=False)

    def __post_init__(self):
        for s in self.symbols:
            self.sets.setdefault(s, PeriodicSet.everything())

    @property
    def frozen(self) -> bool:
        return self.__dict__.get("_frozen", False)

    def freeze(self) -> "Domain":
        """Make this domain final: ``sets`` a read-only mapping, the lists
        tuples, and :meth:`add` or setting a field an error.  An analysis's
        answers (valid sizes, exclusions, the requirements named in
        explanations) must not change under whoever reads them; a caller that
        wants more requirements builds a new Domain."""
        if not self.frozen:
            fields = {"sets": types.MappingProxyType(dict(self.sets)), "requirements": tuple(self.requirements),
                      "undecided": tuple(self.undecided), "joint": tuple(self.joint),
                      "exclusions": tuple(self.exclusions),
                      "cells": None if self.cells is None else tuple(self.cells)}
            for name, value in fields.items():
                object.__setattr__(self, name, value)
            object.__setattr__(self, "_frozen", True)
        return self

    def __setattr__(self, name, value):
        if self.frozen:
            raise FrozenInstanceError(f"cannot set Domain.{name}: the domain is final after analysis "
                                      "(build a new Domain)")
        object.__setattr__(self, name, value)

    def add(self, requirement: Requirement) -> None:
        if self.frozen:
            raise FrozenInstanceError(f"cannot add the requirement of node {requirement.node!r}: the domain is "
                                      "final after analysis (build a new Domain)")
        self.requirements.append(requirement)
        symbols = requirement.condition.free_symbols
        if not symbols or not symbols <= set(self.sets):
            self.undecided.append(requirement)
            return
        try:
            if len(symbols) == 1:
                (symbol,) = symbols
                allowed = condition_set(requirement.condition, symbol)
                if self.cells is None:  # a plain product of per-symbol sets stays one
                    before = self.sets[symbol]
                    self.sets[symbol] = before.intersection(allowed)
                    self._record_exclusion(requirement, symbol, before)
                    return
                restriction = [_Cell({symbol: allowed})]
            elif self.cells is None and self._failing_cells(requirement.condition) == []:
                return  # holds at the one valid size per symbol (see _failing_cells)
            else:
                restriction = condition_cells(requirement.condition)
            cells = _cells_intersection(self._cells_or_box(), restriction)
        except DomainError:
            self.undecided.append(requirement)
            return
        if len(symbols) > 1:
            self.joint.append(requirement)
        for s in self.symbols:
            before = self.sets[s]
            self.sets[s] = reduce(PeriodicSet.union, [c.projection(s) for c in cells], PeriodicSet.at_least(None))
            self._record_exclusion(requirement, s, before)
        # a union that is just the product of its projections needs no cells
        plain = len(cells) == 1 and not cells[0].ties
        self.cells = None if plain or (not cells and self.cells is None) else cells

    @classmethod
    def union_of(cls, domains: Sequence["Domain"]) -> "Domain":
        """The sizes valid in any of ``domains`` (the ATen front end's running
        regions, each a graph of its own), exact: a union of their cells,
        kept as one product where it is one.  Requirements and exclusions
        are theirs, in order; an undecided requirement of any stays undecided."""
        symbols = domains[0].symbols
        union = cls(symbols)
        cells = _absorbed([cell for d in domains for cell in d._cells_or_box()
                           if not any(allowed.is_empty() for allowed in cell.sets.values())])
        for s in symbols:
            union.sets[s] = reduce(PeriodicSet.union, [c.projection(s) for c in cells], PeriodicSet.at_least(None))
        box = _Cell(dict(union.sets))
        # a union that is the product of its projections needs no cells
        product = all(c.within(box) for c in cells) and _covered(box, cells, symbols)
        union.cells = None if product else cells
        for d in domains:
            union.requirements.extend(d.requirements)
            union.undecided.extend(d.undecided)
            union.joint.extend(d.joint)
        return union

    def _record_exclusion(self, requirement: Requirement, symbol, before: PeriodicSet) -> None:
        # the first requirement in graph order that removes a size is the one named for it
        if self.sets[symbol] != before:
            self.exclusions.append(Exclusion(requirement, symbol, before.difference(self.sets[symbol])))

    def _cells_or_box(self) -> list[_Cell]:
        return self.cells if self.cells is not None else [_Cell(dict(self.sets))]

    def __contains__(self, sizes) -> bool:
        """Whether the engine counts the sizes ``{symbol: n}`` as valid
        (undecided requirements are evaluated at them)."""
        if any(sizes[s] not in self.sets[s] for s in self.symbols):
            return False
        if self.cells is not None and not any(c.contains(sizes) for c in self.cells):
            return False
        return all(bool(evaluate(r.condition, sizes)) for r in self.undecided)

    def always(self, condition: sympy.Basic) -> Optional[bool]:
        """True if ``condition`` holds for every size in the domain so far,
        False if it fails for some, None if that cannot be decided."""
        if condition is sympy.true:
            return True
        if condition is sympy.false:
            return False
        failing = self._failing_cells(condition)
        if failing is None:
            return None
        if not failing:
            return True
        # holding on an upper bound of the domain is proof; failing there is
        # proof only when nothing was left undecided
        return None if self.undecided else False

    def _failing_cells(self, condition) -> Optional[list[_Cell]]:
        """Cells of valid sizes where ``condition`` fails ([]: nowhere; None: not decidable)."""
        symbols = condition.free_symbols
        if not symbols or not symbols <= set(self.sets):
            return None
        try:
            if len(symbols) == 1:
                (symbol,) = symbols
                failing = self.sets[symbol].difference(condition_set(condition, symbol))
                # the projection holds only sizes of valid inputs, so a failing size is a valid input's
                return [] if failing.is_empty() else [_Cell({symbol: failing})]
            if isinstance(condition, sympy.Eq) and condition.lhs.is_Symbol and condition.rhs.is_Symbol:
                # H == W fails in every cell that neither ties them nor pins both to one size
                x, y = condition.lhs, condition.rhs
                return [c for c in self._cells_or_box() if not any({x, y} <= tie for tie in c.ties)
                        and not _same_single_size(c.projection(x), c.projection(y))]
            pinned = {s: self.sets[s].minimum() for s in symbols}
            if self.cells is None and all(_same_single_size(self.sets[s], self.sets[s]) for s in symbols):
                # one valid size per symbol (a ViT's fixed image size): the condition is a number there
                return [] if bool(evaluate(condition, pinned)) else [_Cell({s: self.sets[s] for s in symbols})]
            return _cells_intersection(self._cells_or_box(), condition_cells(_negated(condition)))
        except DomainError:
            return None

    def first_failure(self, condition: sympy.Basic) -> Optional[dict[str, int]]:
        """The smallest valid sizes where ``condition`` is false (None: none),
        as ``{symbol: size}`` for the symbols of the condition."""
        if not condition.free_symbols:
            if condition is sympy.true or not self.symbols:
                return None
            symbol = self.symbols[0]
            smallest = self.sets[symbol].minimum()
            return None if smallest is None else {str(symbol): smallest}
        failing = self._failing_cells(condition)
        if not failing:
            return None
        points = [c.smallest(condition.free_symbols) for c in failing]
        return min(points, key=lambda point: tuple(point.values()))

    def joint_sentence(self) -> Optional[str]:
        """The condition tying several symbols, in words (None when there is none)."""
        if self.cells is None:
            return None
        return " or ".join(_describe_cell(c, self.sets) for c in self.cells) or "no sizes"

    def joint_data(self) -> Optional[dict]:
        """``domain.joint`` of the JSON contract (docs/json.md); None for a plain product."""
        if self.cells is None:
            return None
        return {
            "sentence": self.joint_sentence(),
            "any_of": [{"sets": {str(s): c.projection(s).as_data() for s in self.symbols},
                        "equal": [sorted(map(str, tie)) for tie in c.ties]} for c in self.cells],
            "requirements": [{"node": r.node, "reason": r.reason, "condition": str(r.condition)} for r in self.joint],
        }


def _covered(box: _Cell, cells: list[_Cell], symbols) -> bool:
    """Whether ``box`` (untied) lies in the union of untied ``cells``: decided
    on the pieces of each symbol's line that every set holds or misses whole."""
    if any(c.ties for c in cells):
        return False
    pieces = {}
    for s in symbols:
        line = [box.projection(s)]
        for c in cells:
            allowed = c.projection(s)
            line = [part for piece in line for part in (piece.intersection(allowed), piece.difference(allowed))
                    if not part.is_empty()]
            if len(line) > MAX_CELLS:
                return False
        pieces[s] = line
    for combination in itertools.product(*(pieces[s] for s in symbols)):
        if not any(all(p.difference(c.projection(s)).is_empty() for p, s in zip(combination, symbols))
                   for c in cells):
            return False
    return True


def _same_single_size(a: PeriodicSet, b: PeriodicSet) -> bool:
    m = a.minimum()
    if m is None or b.minimum() != m:
        return False
    single = PeriodicSet(1, (((m, m),),))
    return a.difference(single).is_empty() and b.difference(single).is_empty()
