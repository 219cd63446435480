"""Exact valid-size sets against brute force.

The set algebra of ``PeriodicSet`` and ``condition_set`` is checked against
exhaustive enumeration of integers (with an independent Python evaluation of
each condition); the domains of small networks against torch itself: a meta
forward pass at every size from 1 to 300.
"""

from __future__ import annotations

import re

import pytest
import sympy
import torch
import torch.fx
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from shapecalc import PeriodicSet, load_model
from shapecalc.engine.domain import condition_set
from shapecalc.strategies import conv_layers, pool_layers, resampling_layers, transposed_conv_layers
from shapecalc.engine.symbolic import ceildiv, floordiv, size_symbol
from shapecalc.verify import size_analysis

N = size_symbol("n")
LIMIT = 300  # sizes enumerated; every bounded interval drawn below ends well before


# ---------------------------------------------------------------------------
# periodic sets from their members


@st.composite
def periodic_sets(draw):
    """A PeriodicSet and its members in 1..LIMIT: per residue class a few
    bounded runs of k and perhaps an unbounded tail."""
    period = draw(st.integers(1, 12))
    classes, members = [], set()
    for r in range(period):
        start = PeriodicSet.start(period, r)
        ks = set()
        for _ in range(draw(st.integers(0, 2))):
            lo = draw(st.integers(start, start + 8))
            ks.update(range(lo, lo + draw(st.integers(0, 4)) + 1))
        tail = draw(st.one_of(st.none(), st.integers(start, start + 14)))
        intervals = []
        for k in sorted(ks):
            if tail is not None and k >= tail - 1:
                continue
            if intervals and intervals[-1][1] == k - 1:
                intervals[-1][1] = k
            else:
                intervals.append([k, k])
        if tail is not None:
            if intervals and intervals[-1][1] >= tail - 1:
                intervals[-1][1] = None
            else:
                intervals.append([tail, None])
        classes.append(tuple((lo, hi) for lo, hi in intervals))
        for lo, hi in intervals:
            stop = (LIMIT - r) // period if hi is None else hi
            members.update(period * k + r for k in range(lo, stop + 1) if 1 <= period * k + r <= LIMIT)
    return PeriodicSet(period, tuple(classes)), members


def members_of(sizes: PeriodicSet) -> set:
    return {n for n in range(1, LIMIT + 1) if n in sizes}


def minimal_period(members: set) -> int:
    """The smallest p with n in S <=> n + p in S for all large n (the set is
    eventually periodic; every drawn interval ends below 200)."""
    window = range(200, LIMIT - 24)
    return next(p for p in range(1, 25) if all((n in members) == (n + p in members) for n in window))


@settings(max_examples=200)
@given(drawn=periodic_sets())
def test_membership_minimum_and_residue_minimums(drawn):
    sizes, members = drawn
    assert members_of(sizes) == members
    assert 0 not in sizes and -sizes.period not in sizes
    assert sizes.minimum() == (min(members) if members else None)
    assert sizes.is_empty() == (not members)
    for r, smallest in sizes.residue_minimums().items():
        in_class = [n for n in members if n % sizes.period == r]
        assert smallest == (min(in_class) if in_class else None)


@settings(max_examples=150)
@given(first=periodic_sets(), second=periodic_sets())
def test_intersection_complement_difference(first, second):
    (a, members_a), (b, members_b) = first, second
    everything = set(range(1, LIMIT + 1))
    assert members_of(a.intersection(b)) == members_a & members_b
    assert members_of(a.complement()) == everything - members_a
    assert members_of(a.difference(b)) == members_a - members_b
    assert members_of(a.complement().complement()) == members_a


@settings(max_examples=200)
@given(drawn=periodic_sets())
def test_reduced_keeps_the_set_and_finds_the_smallest_period(drawn):
    sizes, members = drawn
    reduced = sizes.reduced()
    assert members_of(reduced) == members
    assert sizes.period % reduced.period == 0
    assert reduced.period == minimal_period(members), (sizes, reduced)


def read_description(text: str, symbol: str = "n"):
    """A membership test from ``PeriodicSet.describe``'s sentence."""
    if text.startswith(f"no {symbol}"):
        return lambda n: False
    if text.startswith("every "):
        text = text[len("every "):]
    tests = []
    for clause in text.split("; "):
        if clause.startswith("never for"):
            continue
        periodic = re.fullmatch(rf"{symbol} = (\d+)k(?: \+ (\d+))? (.*)", clause)
        if periodic:
            period, residue = int(periodic[1]), int(periodic[2] or 0)
            for piece in periodic[3].split(", "):
                bounds = re.fullmatch(r"from (\d+)(?: to (\d+))?", piece)
                assert bounds, piece
                lo, hi = int(bounds[1]), None if bounds[2] is None else int(bounds[2])
                assert lo % period == residue and (hi is None or hi % period == residue)
                tests.append(lambda n, p=period, r=residue, lo=lo, hi=hi: n % p == r and lo <= n and (hi is None or n <= hi))
            continue
        for part in clause.split(" or "):
            if m := re.fullmatch(rf"{symbol} >= (\d+)", part):
                tests.append(lambda n, lo=int(m[1]): n >= lo)
            elif m := re.fullmatch(rf"{symbol} = (\d+)", part):
                tests.append(lambda n, v=int(m[1]): n == v)
            elif m := re.fullmatch(rf"(\d+) <= {symbol} <= (\d+)", part):
                tests.append(lambda n, lo=int(m[1]), hi=int(m[2]): lo <= n <= hi)
            else:
                raise AssertionError(f"unreadable part {part!r} of {text!r}")
    return lambda n: any(test(n) for test in tests)


@settings(max_examples=200)
@given(drawn=periodic_sets())
def test_describe_says_exactly_the_set(drawn):
    sizes, members = drawn
    for candidate in (sizes, sizes.reduced()):
        text = candidate.describe("n")
        says = read_description(text)
        assert {n for n in range(1, LIMIT + 1) if says(n)} == members, text
        data = candidate.as_data()
        listed = set()
        for r, intervals in data["intervals"].items():
            for lo, hi in intervals:
                stop = LIMIT if hi is None else hi
                listed.update(range(lo, stop + 1, data["period"]))
        assert {n for n in listed if n <= LIMIT} == members


def test_describe_common_cases():
    assert PeriodicSet.everything().describe("H") == "every H >= 1"
    assert PeriodicSet.at_least(17).describe("H") == "every H >= 17"
    assert PeriodicSet.at_least(None).describe("H") == "no H (the network never runs)"
    even = PeriodicSet(2, ((( 1, None),), ()))
    assert even.describe("H") == "H = 2k from 2; never for odd H"


# ---------------------------------------------------------------------------
# condition_set against an independent evaluation


@st.composite
def sizes_of_n(draw, depth: int = 2):
    """(sympy expression, python function) pairs built from one recipe."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            a, b = draw(st.integers(1, 3)), draw(st.integers(-6, 6))
            return a * N + b, (lambda n, a=a, b=b: a * n + b)
        c = draw(st.integers(-3, 8))
        return sympy.Integer(c), (lambda n, c=c: c)
    kind = draw(st.sampled_from(("floor", "ceil", "affine", "sum", "min", "max")))
    e, f = draw(sizes_of_n(depth - 1))
    if kind in ("floor", "ceil"):
        q = draw(st.integers(1, 4))
        if kind == "floor":
            return floordiv(e, q), (lambda n: f(n) // q)
        return ceildiv(e, q), (lambda n: -(-f(n) // q))
    if kind == "affine":
        a, b = draw(st.integers(1, 3)), draw(st.integers(-5, 5))
        return a * e + b, (lambda n: a * f(n) + b)
    e2, f2 = draw(sizes_of_n(depth - 1))
    if kind == "sum":
        sign = draw(st.sampled_from((1, -1)))
        return e + sign * e2, (lambda n: f(n) + sign * f2(n))
    if kind == "min":
        return sympy.Min(e, e2), (lambda n: min(f(n), f2(n)))
    return sympy.Max(e, e2), (lambda n: max(f(n), f2(n)))


RELATIONS = {
    sympy.Ge: lambda a, b: a >= b, sympy.Gt: lambda a, b: a > b, sympy.Le: lambda a, b: a <= b,
    sympy.Lt: lambda a, b: a < b, sympy.Eq: lambda a, b: a == b, sympy.Ne: lambda a, b: a != b,
}


@st.composite
def conditions_on_n(draw, depth: int = 1):
    if depth > 0 and draw(st.integers(0, 3)) == 0:
        (c1, t1), (c2, t2) = draw(conditions_on_n(depth - 1)), draw(conditions_on_n(depth - 1))
        kind = draw(st.sampled_from(("and", "or", "not")))
        if kind == "and":
            return sympy.And(c1, c2), (lambda n: t1(n) and t2(n))
        if kind == "or":
            return sympy.Or(c1, c2), (lambda n: t1(n) or t2(n))
        return sympy.Not(c1), (lambda n: not t1(n))
    relation = draw(st.sampled_from(sorted(RELATIONS, key=lambda r: r.__name__)))
    (e1, f1), (e2, f2) = draw(sizes_of_n()), draw(sizes_of_n())
    compare = RELATIONS[relation]
    return relation(e1, e2), (lambda n: compare(f1(n), f2(n)))


@settings(max_examples=250)
@given(drawn=conditions_on_n())
def test_condition_set_is_exact(drawn):
    condition, truth = drawn
    sizes = condition_set(condition, N)
    expected = {n for n in range(1, LIMIT + 1) if truth(n)}
    assert members_of(sizes) == expected, (condition, sizes)


def test_condition_set_with_a_long_period_searches_monotone_bounds():
    # 2**40: far above the residue-class limit; the monotone search still decides it
    deep = N
    for _ in range(40):
        deep = ceildiv(deep, 2)
    sizes = condition_set(sympy.Ge(deep - 3, 1), N)
    assert sizes.minimum() == 3 * 2**40 + 1
    assert 3 * 2**40 not in sizes and 5 * 2**40 in sizes


# ---------------------------------------------------------------------------
# domains of small networks against torch


class _Merge(nn.Module):
    """``body(x)`` merged with ``up(down(body(x)))``: U-Net's skip without a crop."""

    def __init__(self, body, down, up, how):
        super().__init__()
        self.body, self.down, self.up, self.how = body, down, up, how

    def forward(self, x):
        y = self.body(x)
        z = self.up(self.down(y))
        if self.how == "add":
            return y + z
        if self.how == "cat":
            return torch.cat([y, z], 1)
        return y[:, :, : z.size(2)] * z  # crop to the smaller, then merge


@st.composite
def small_networks(draw):
    """1-d nets: a chain of layers, or a chain whose output meets a down- and
    up-sampled copy of itself (periodic domains)."""
    layers, channels = [], 1
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("conv", "pool", "transposed")))
        if kind == "conv":
            layer = draw(conv_layers(1, in_channels=channels, max_kernel_size=7, padding_modes=("zeros", "reflect")))
            channels = layer.out_channels
        elif kind == "pool":
            layer = draw(pool_layers(1))
        else:
            layer = draw(transposed_conv_layers(1, in_channels=channels))
            channels = layer.out_channels
        layers.append(layer)
    body = nn.Sequential(*layers)
    if draw(st.booleans()):
        return body.eval()
    down = draw(pool_layers(1, max_stride=3))
    up = draw(st.one_of(
        transposed_conv_layers(1, in_channels=channels, max_out_channels=1).map(
            lambda t: nn.ConvTranspose1d(channels, channels, t.kernel_size, t.stride, t.padding, t.output_padding,
                                         dilation=t.dilation)),
        resampling_layers(1, modes=("nearest", "linear"))))
    return _Merge(body, down, up, draw(st.sampled_from(("add", "cat", "crop")))).eval()


def runs_on_meta(model, n: int) -> bool:
    try:
        model(torch.empty(1, 1, n, device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


@settings(max_examples=30)
@given(model=small_networks())
def test_network_domains_equal_torch_at_every_size(model):
    model = model.to("meta")
    analysis = size_analysis(model, "H", channels=1, dimensions=1)
    assert not analysis.domain.undecided
    valid = analysis.valid_sizes("H")
    runs = {n for n in range(1, LIMIT + 1) if runs_on_meta(model, n)}
    assert members_of(valid) == runs, valid.describe("H")
    assert valid.minimum() == (min(runs) if runs else None)
    says = read_description(valid.describe("H"), "H")
    assert {n for n in range(1, LIMIT + 1) if says(n)} == runs


def test_an_unet_skip_runs_only_on_even_sizes():
    model = _Merge(nn.Identity(), nn.MaxPool1d(2), nn.ConvTranspose1d(1, 1, 2, stride=2), "add").to("meta").eval()
    valid = size_analysis(model, "H", channels=1, dimensions=1).valid_sizes("H")
    assert valid.period == 2 and valid.minimum() == 2
    assert members_of(valid) == {n for n in range(1, LIMIT + 1) if runs_on_meta(model, n)}
    assert valid.describe("H") == "H = 2k from 2; never for odd H"


@pytest.mark.parametrize("name", ["fcn8s", "deeplabv3"])
def test_bundled_models_run_for_every_size(name):
    """GEOMETRY: FCN-8s and DeepLab-v3 (eval) run for every H >= 1; torch agrees
    on the smallest sizes and a few around the strides."""
    model = load_model(name, {"width": 0.0625})
    valid = size_analysis(model, "H").valid_sizes("H")
    assert valid.describe("H") == "every H >= 1"
    for n in (1, 2, 3, 15, 16, 17, 31, 32, 33):
        model(torch.empty(1, 3, n, n, device="meta"))
