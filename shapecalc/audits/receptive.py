"""Receptive-field windows: which input pixels one output index depends on.

A window is a pair ``(first, last)`` of expressions in :data:`INDEX` (the
index ``i`` along one axis of a tensor): the first and last input pixel whose
value can change index ``i``.  Along a chain of convolutions and pools the
window is ``center + i*stride -+ (rf - 1)/2``, but a transposed convolution
(or a resampling) gathers a number of taps that depends on the phase of
``i``, so its windows form a staircase: ``first`` and ``last`` are
floor-affine in ``i``, not affine.  They stay exact under composition
because every step substitutes one floor-affine map into another.

The windows are interior formulas: near a border, padding or clamping
removes pixels from a window, never adds any.  Dilation can leave holes
inside a window (a dilated first layer reads every other pixel); the window
is the hull.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Optional

import sympy

from shapecalc.engine.symbolic import FloorDiv, as_expr, ceildiv, evaluate, floordiv

#: the output index the windows are functions of
INDEX = sympy.Dummy("i", integer=True)

Window = tuple  # (first, last): sympy expressions in INDEX (and possibly sizes)


def identity_window() -> Window:
    """The input itself: index ``i`` is pixel ``i``."""
    return (INDEX, INDEX)


def substitute(expr, value) -> sympy.Expr:
    """``expr`` with :data:`INDEX` replaced by ``value``, floors rebuilt in
    canonical form (``xreplace`` would keep ``FloorDiv(2*i + 2, 2)``)."""
    expr = as_expr(expr)
    if INDEX not in expr.free_symbols:
        return expr
    if expr == INDEX:
        return as_expr(value)
    if isinstance(expr, FloorDiv):
        return floordiv(substitute(expr.numerator, value), expr.divisor)
    return expr.func(*[substitute(a, value) for a in expr.args])


def reindexed(window: Optional[Window], first, last) -> Optional[Window]:
    """The window of an index whose inputs run from index ``first`` to
    ``last`` of a tensor with windows ``window`` (windows grow with the
    index, so the hull is first's start to last's end)."""
    if window is None:
        return None
    return (substitute(window[0], first), substitute(window[1], last))


def at_index(window: Optional[Window], index) -> Optional[Window]:
    """The (index-free) window of one fixed index: what every index of a
    position-free axis sees."""
    return reindexed(window, as_expr(index), as_expr(index))


def conv_window(window, kernel: int, stride: int, pad_left: int, dilation: int) -> Optional[Window]:
    """Conv / pool: index ``u`` reads ``s*u - p`` to ``s*u - p + d(k-1)``."""
    start = stride * INDEX - pad_left
    return reindexed(window, start, start + dilation * (kernel - 1))


def transposed_window(window, kernel: int, stride: int, padding: int, dilation: int) -> Optional[Window]:
    """Transposed conv: index ``u`` gathers input ``i`` through tap ``j`` when
    ``i*s + j*d = u + p``.  With ``gcd(d, s) = 1`` the taps are
    ``j = j0 (mod s)`` for ``j0 = (u + p) * d^-1 mod s``: the largest input
    comes from the smallest tap ``j0``, the smallest input from the largest
    tap below ``k``.  With ``k < s``, or a common factor of ``d`` and ``s``,
    whole phases get no tap at all (empty windows); those return None."""
    if window is None or math.gcd(dilation, stride) != 1 or kernel < stride:
        return None
    s, d = stride, dilation
    inverse = pow(d, -1, s) if s > 1 else 0
    t = (INDEX + padding) * inverse
    j0 = t - s * floordiv(t, s)
    last = sympy.expand((INDEX + padding - d * j0) / s)
    extra = floordiv(kernel - 1 - j0, s)  # taps beyond j0, s apart
    first = sympy.expand(last - d * extra)
    return reindexed(window, first, last)


def sampled_window(window, mode: str, align_corners: bool, n, out, ratio=None) -> Optional[Window]:
    """Interpolation: the source pixels output ``u`` reads, from PyTorch's
    source-index formulas (``area_pixel_compute_source_index``,
    ``nearest_idx``).  ``ratio`` is source pixels per output pixel when the
    caller passed ``scale_factor`` (PyTorch then uses ``1/scale_factor``);
    otherwise ``n/out``.  Only a constant ratio gives floor-affine windows;
    a size-dependent one returns None."""
    if window is None:
        return None
    n, out = as_expr(n), as_expr(out)
    u = INDEX
    if mode in ("nearest", "nearest-exact"):
        r = as_expr(ratio) if ratio is not None else n / out
        if not r.is_Rational:
            return None
        p, q = int(r.p), int(r.q)
        source = floordiv(p * u, q) if mode == "nearest" else floordiv((2 * u + 1) * p, 2 * q)
        return reindexed(window, source, source)
    if mode == "area":
        return adaptive_window(window, n, out)
    if align_corners:
        if not (n.is_Integer and out.is_Integer):
            return None
        if out == 1 or n == 1:
            return at_index(window, 0)
        numerator, denominator = (n - 1) * u, out - 1
    else:
        r = as_expr(ratio) if ratio is not None else n / out
        if not r.is_Rational:
            return None
        p, q = int(r.p), int(r.q)
        numerator, denominator = (2 * u + 1) * p - q, 2 * q  # (u + 1/2) * r - 1/2
    below, above = floordiv(numerator, denominator), ceildiv(numerator, denominator)
    if mode == "bicubic":
        # Four taps floor-1 .. floor+2, but at an integer source the cubic
        # weights are exactly (0, 1, 0, 0): one tap.
        return reindexed(window, 2 * below - above, 2 * above - below)
    return reindexed(window, below, above)


def adaptive_window(window, n, out) -> Optional[Window]:
    """Adaptive pool cell ``u``: ``floor(u*n/o)`` to ``ceil((u+1)*n/o) - 1``."""
    n, out = as_expr(n), as_expr(out)
    if window is None or not (n.is_Integer and out.is_Integer):
        return None
    return reindexed(window, floordiv(n * INDEX, out), ceildiv(n * (INDEX + 1), out) - 1)


def global_window(window, n) -> Optional[Window]:
    """Every index of a globally pooled axis sees input indices 0 .. n-1."""
    if window is None:
        return None
    return (substitute(window[0], 0), substitute(window[1], as_expr(n) - 1))


# ---------------------------------------------------------------------------
# comparing windows


def increment(expr, period: int) -> Optional[sympy.Expr]:
    """``c`` with ``expr(i + period) = expr(i) + c`` for every i, or None."""
    if INDEX not in expr.free_symbols:
        return sympy.Integer(0)
    if expr == INDEX:
        return sympy.Integer(period)
    if expr.is_Add:
        parts = [increment(a, period) for a in expr.args]
        return None if any(p is None for p in parts) else sympy.Add(*parts)
    if expr.is_Mul:
        coefficient, rest = expr.as_coeff_Mul()
        if coefficient != 1:
            inner = increment(rest, period)
            return None if inner is None else coefficient * inner
        return None
    if isinstance(expr, FloorDiv):
        inner = increment(expr.numerator, period)
        if inner is None or not inner.is_Integer or int(inner) % expr.divisor:
            return None
        return sympy.Integer(int(inner) // expr.divisor)
    if isinstance(expr, (sympy.Min, sympy.Max)):
        parts = {increment(a, period) for a in expr.args}
        return parts.pop() if len(parts) == 1 and None not in parts else None
    return None


def index_period(expr) -> int:
    """A period in the index for the floors of ``expr``."""
    expr = as_expr(expr)
    if isinstance(expr, FloorDiv):
        return expr.divisor * index_period(expr.numerator)
    if not expr.args:
        return 1
    return reduce(math.lcm, (index_period(a) for a in expr.args), 1)


def periodic_values(expr) -> Optional[list]:
    """The values of an index-periodic expression over one period (None if it
    is not periodic in the index or involves sizes)."""
    expr = sympy.expand(as_expr(expr))
    if expr.free_symbols - {INDEX}:
        return None
    period = index_period(expr)
    if increment(expr, period) != 0:
        return None
    return [evaluate(expr, {INDEX: i}) for i in range(period)]


def union(a: Optional[Window], b: Optional[Window]) -> Optional[Window]:
    """The hull of two windows of the same index (paths that merge)."""
    if a is None or b is None:
        return None
    return (_pick(a[0], b[0], lower=True), _pick(a[1], b[1], lower=False))


def _pick(x, y, *, lower: bool):
    """min(x, y) (or max), decided once when the difference is periodic."""
    difference = periodic_values(x - y)
    if difference is not None:
        if max(difference) <= 0:
            return x if lower else y
        if min(difference) >= 0:
            return y if lower else x
    return sympy.Min(x, y) if lower else sympy.Max(x, y)


def widest(window: Optional[Window]) -> Optional[int]:
    """The largest window width over all indices (the receptive field size),
    or None where it depends on sizes or is not periodic."""
    if window is None:
        return None
    values = periodic_values(window[1] - window[0] + 1)
    return None if values is None else max(values)


def window_at(window: Window, index: int, sizes: Optional[dict] = None) -> tuple[int, int]:
    """The first and last input pixel of index ``index`` (sizes bind any size
    symbols the window mentions, e.g. after global pooling)."""
    env = {INDEX: index, **(sizes or {})}
    return evaluate(window[0], env), evaluate(window[1], env)
