"""Exact sets of valid input sizes.

Every size is floor-affine in the input size ``n``: on each residue class
``n = P*k + r`` (``P`` a multiple of every divisor inside the expression) a
``FloorDiv`` becomes affine in ``k``, and ``Min``/``Max``/``Piecewise`` split
the line into finitely many affine segments.  A condition (``size >= 1``,
``a == b``) is then a union of integer intervals of ``k`` per residue class,
decided exactly with integer arithmetic: no sampling, no sympy ``solve``.

For a monotone condition (a size that can only grow with ``n`` must reach a
bound) the answer is ``n >= n0``; a doubling-and-bisection search with exact
evaluation finds ``n0`` whatever the period, so deep stacks of strided layers
(periods like 2**40) stay cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache, reduce
from typing import Iterable, Iterator, Optional, Sequence

import sympy

from ._errors import DomainError
from .symbolic import FloorDiv, compiled, format_expr

#: the largest period decided residue class by residue class
MAX_PERIOD = 1 << 14
#: sizes beyond which a monotone search gives up (documented limit)
SEARCH_LIMIT = 1 << 128
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
# piecewise-affine functions of k on one residue class


@dataclass(frozen=True)
class _Segment:
    lo: int
    hi: Optional[int]
    slope: Fraction
    intercept: Fraction


def _constant(value, start: int) -> list[_Segment]:
    return [_Segment(start, None, Fraction(0), Fraction(value))]


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


def _combine(f, g, slope_op, intercept_op) -> list[_Segment]:
    return [_Segment(lo, hi, slope_op(a.slope, b.slope), intercept_op(a.intercept, b.intercept))
            for lo, hi, a, b in _common_pieces(f, g)]


def _nonnegative_part(segment: _Segment, lo: int, hi: Optional[int]) -> tuple[Interval, ...]:
    """Integers k in [lo, hi] with slope*k + intercept >= 0."""
    a, b = segment.slope, segment.intercept
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
    a, b = segment.slope, segment.intercept
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
            out.append(_Segment(lo, hi, seg.slope, seg.intercept))
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
            return [_Segment(self.start, None, Fraction(self.period), Fraction(self.residue))]
        if expr.is_Add:
            parts = [self.affine(a) for a in expr.args]
            return reduce(lambda f, g: _combine(f, g, Fraction.__add__, Fraction.__add__), parts)
        if expr.is_Mul:
            coefficient, rest = expr.as_coeff_Mul()
            if rest.is_Mul and any(not a.is_Number for a in rest.args[1:]):
                raise DomainError(f"{format_expr(expr)} is not affine in {self.symbol}")
            c = Fraction(int(coefficient.p), int(coefficient.q))
            return [_Segment(s.lo, s.hi, s.slope * c, s.intercept * c) for s in self.affine(rest)]
        if isinstance(expr, (FloorDiv, sympy.floor, sympy.ceiling)):
            if isinstance(expr, FloorDiv):
                inner, q, rounding = self.affine(expr.numerator), expr.divisor, math.floor
            else:
                inner, q, rounding = self.affine(expr.args[0]), 1, (math.floor if isinstance(expr, sympy.floor) else math.ceil)
            out = []
            for s in inner:
                slope = s.slope / q
                if slope.denominator != 1:
                    raise DomainError(f"internal: period {self.period} too small for {format_expr(expr)}")
                out.append(_Segment(s.lo, s.hi, slope, Fraction(rounding(s.intercept / q))))
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

    def _min_max(self, f, g, pick_first_when_nonneg: bool) -> list[_Segment]:
        out = []
        for lo, hi, a, b in _common_pieces(f, g):
            difference = _Segment(lo, hi, a.slope - b.slope, a.intercept - b.intercept)
            first = _nonnegative_part(difference, lo, hi)
            second = _complement(first, lo)
            if hi is not None:
                second = _intersect(second, [(lo, hi)])
            if not pick_first_when_nonneg:
                first, second = second, first
                # For Min, ties (difference 0) may go either way: values are equal.
            for region, seg in ((first, a), (second, b)):
                out.extend(_Segment(l, h, seg.slope, seg.intercept) for l, h in region)
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
        tail = f"; never for {symbol} mod {self.period} in {{{', '.join(map(str, excluded))}}}" if excluded else ""
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


def condition_set(condition: sympy.Basic, symbol: sympy.Symbol) -> PeriodicSet:
    """The exact set of sizes n >= 1 of ``symbol`` where ``condition`` holds."""
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
# the running domain of one trace


@dataclass
class Requirement:
    """One condition a forward pass needs, with the node that needs it."""

    condition: sympy.Basic
    node: str
    reason: str


@dataclass
class Domain:
    """The valid input sizes, built up one requirement at a time."""

    symbols: tuple[sympy.Symbol, ...]
    sets: dict[sympy.Symbol, PeriodicSet] = field(default_factory=dict)
    requirements: list[Requirement] = field(default_factory=list)
    undecided: list[Requirement] = field(default_factory=list)

    def __post_init__(self):
        for s in self.symbols:
            self.sets.setdefault(s, PeriodicSet.everything())

    def add(self, requirement: Requirement) -> None:
        self.requirements.append(requirement)
        symbols = requirement.condition.free_symbols
        if len(symbols) != 1:
            self.undecided.append(requirement)
            return
        (symbol,) = symbols
        try:
            allowed = condition_set(requirement.condition, symbol)
        except DomainError:
            self.undecided.append(requirement)
            return
        self.sets[symbol] = self.sets[symbol].intersection(allowed)

    def always(self, condition: sympy.Basic) -> Optional[bool]:
        """True if ``condition`` holds for every size in the domain so far,
        False if it fails for some, None if that cannot be decided."""
        if condition is sympy.true:
            return True
        if condition is sympy.false:
            return False
        symbols = condition.free_symbols
        if len(symbols) != 1 or self.undecided:
            return None
        (symbol,) = symbols
        try:
            failing = self.sets[symbol].difference(condition_set(condition, symbol))
        except DomainError:
            return None
        return failing.is_empty()

    def first_failure(self, condition: sympy.Basic) -> Optional[dict[str, int]]:
        """The smallest valid size where ``condition`` is false (None: none)."""
        if not condition.free_symbols:
            if condition is sympy.true or not self.symbols:
                return None
            symbol = self.symbols[0]
            smallest = self.sets[symbol].minimum()
            return None if smallest is None else {str(symbol): smallest}
        for symbol in sorted(condition.free_symbols, key=str):
            try:
                failing = self.sets[symbol].difference(condition_set(condition, symbol))
            except DomainError:
                continue
            smallest = failing.minimum()
            if smallest is not None:
                return {str(symbol): smallest}
        return None
