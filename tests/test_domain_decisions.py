"""Domains that need more than affine reasoning, against torch.

Polynomial conditions (a flattened feature count, a view's element count)
and conditions tying two symbols (broadcasting a transpose, a norm's "more
than one value", a feature count over H*W).  The truth is a meta-tensor
forward pass at every size (or every (H, W) pair) of a small range.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import analyze
from shapecalc.engine.symbolic import evaluate


def _runs(model: nn.Module, *spatial: int, channels: int) -> bool:
    try:
        model(torch.empty(1, channels, *spatial, device="meta"))
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


def _on_meta(model: nn.Module) -> nn.Module:
    return model.to("meta").eval()


# ---------------------------------------------------------------------------
# one symbol: polynomial conditions


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(1, 6, 5), nn.MaxPool2d(2)
        self.conv2, self.pool2 = nn.Conv2d(6, 16, 5), nn.MaxPool2d(2)
        self.fc = nn.Linear(400, 10)

    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


class FlattenChunks(nn.Module):
    """flatten, then rows of 8 features into a Linear: needs 8 | 2*H*H (H even)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1).view(-1, 8))


class ViewPairs(nn.Module):
    """view(1, 3, -1, 2): needs an even 3*H*H, i.e. an even H (periodic)."""

    def forward(self, x):
        return x.view(1, 3, -1, 2)


class ViewFixed(nn.Module):
    """reshape to 48 elements after a 3x3 conv: (H - 2)**2 * 3 == 48, i.e. H == 6 (finite)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv(x).reshape(1, 48)


@pytest.mark.parametrize("model, channels, limit", [
    (LeNet, 1, 80), (FlattenChunks, 1, 40), (ViewPairs, 3, 40), (ViewFixed, 3, 40)],
    ids=["lenet-finite", "flatten-linear-periodic", "view-periodic", "reshape-finite"])
def test_one_symbol_polynomial_domain_matches_torch(model, channels, limit):
    net = model()
    analysis = analyze(net, "H", channels=channels)
    assert not analysis.domain.undecided, analysis.validity_sentence()
    (symbol,) = analysis.symbols
    meta = _on_meta(net)
    truth = {n for n in range(1, limit + 1) if _runs(meta, n, n, channels=channels)}
    claimed = {n for n in range(1, limit + 1) if n in analysis.domain.sets[symbol]}
    assert claimed == truth
    assert truth, "the example must run somewhere"


def test_lenet_domain_is_exactly_32_to_35():
    analysis = analyze(LeNet(), "H", channels=1)
    valid = analysis.domain.sets[analysis.symbols[0]]
    meta = _on_meta(LeNet())
    truth = [n for n in range(1, 81) if _runs(meta, n, n, channels=1)]
    assert truth == [32, 33, 34, 35]
    # beyond the swept range too: the set is finite and these are its members
    assert [n for n in range(1, 2000) if n in valid] == truth
    assert "not decided" not in analysis.validity_sentence()


# ---------------------------------------------------------------------------
# two symbols


class TransposeAdd(nn.Module):
    def forward(self, x):
        return x + x.transpose(2, 3)


class GroupNormAfterPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(3, 3)

    def forward(self, x):
        return F.max_pool2d(self.norm(x), 1)


class ConvFlattenLinear(nn.Module):
    """(H - 2)*(W - 2) == 4: (3, 6), (4, 4), (6, 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class TransposeCat(nn.Module):
    """cat needs H == W; a later stride-2 conv needs H >= 3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 2, 3, stride=2)

    def forward(self, x):
        return self.conv(torch.cat([x, x.transpose(2, 3)], 1))


class ViewRows(nn.Module):
    """view(1, -1, 4): needs 4 | 3*H*W (periodic in both symbols)."""

    def forward(self, x):
        return x.view(1, -1, 4)


GRID = 10


@pytest.mark.parametrize("model, channels", [
    (TransposeAdd, 3), (GroupNormAfterPool, 3), (ConvFlattenLinear, 1), (TransposeCat, 3), (ViewPairs, 3),
    (ViewRows, 3)],
    ids=["transpose-add", "group-norm", "flatten-linear-hw", "transpose-cat", "view-pairs-hw", "view-rows-hw"])
def test_two_symbol_domain_matches_torch_on_a_grid(model, channels):
    net = model()
    analysis = analyze(net, "HxW", channels=channels)
    assert not analysis.domain.undecided, analysis.validity_sentence()
    h, w = analysis.symbols
    meta = _on_meta(net)
    for a in range(1, GRID + 1):
        for b in range(1, GRID + 1):
            ran = _runs(meta, a, b, channels=channels)
            assert ({h: a, w: b} in analysis.domain) == ran, (a, b, analysis.validity_sentence())
            if ran:
                out = meta(torch.empty(1, channels, a, b, device="meta"))
                predicted = analysis.outputs["output"].shape
                assert tuple(int(evaluate(s, {h: a, w: b})) for s in predicted) == tuple(out.shape), (a, b)
    # the per-symbol sets are exact projections: each listed size occurs in a run
    for symbol, index in ((h, 0), (w, 1)):
        for n in range(1, GRID + 1):
            if n in analysis.domain.sets[symbol]:
                assert any(_runs(meta, *((n, m) if index == 0 else (m, n)), channels=channels)
                           for m in range(1, 40)), (symbol, n)


def test_broadcast_transpose_sizes_stay_plain():
    """Single-symbol questions are still decided beside a two-symbol
    requirement: the broadcast size is Max(H, W), not a nested Piecewise."""
    analysis = analyze(TransposeAdd(), "HxW")
    for size in analysis.outputs["output"].spatial_sizes:
        assert not size.has(__import__("sympy").Piecewise), size
    meta = _on_meta(TransposeAdd())
    h, w = analysis.symbols
    assert {h: 1, w: 7} in analysis.domain and _runs(meta, 1, 7, channels=3)
    assert {h: 2, w: 7} not in analysis.domain and not _runs(meta, 2, 7, channels=3)


def test_group_norm_fails_only_at_one_by_one():
    analysis = analyze(GroupNormAfterPool(), "HxW")
    h, w = analysis.symbols
    meta = _on_meta(GroupNormAfterPool())
    assert not _runs(meta, 1, 1, channels=3) and _runs(meta, 1, 2, channels=3) and _runs(meta, 2, 1, channels=3)
    assert {h: 1, w: 1} not in analysis.domain
    assert {h: 1, w: 2} in analysis.domain and {h: 2, w: 1} in analysis.domain
    assert "not decided" not in analysis.validity_sentence()


# ---------------------------------------------------------------------------
# wording


class PadToMultiple(nn.Module):
    def forward(self, x):
        pad = (32 - x.size(2) % 32) % 32
        return F.pad(x, (0, 0, 0, pad))


def test_padding_to_a_multiple_prints_as_one():
    import sympy

    analysis = analyze(PadToMultiple(), "H")
    size = analysis.outputs["output"].spatial_sizes[0]
    from shapecalc.engine.symbolic import format_expr

    text = format_expr(size)
    assert text == "32*ceiling(H/32)"
    (h,) = analysis.symbols
    parsed = sympy.sympify(text, locals={"H": h})
    for n in range(1, 70):
        out = PadToMultiple()(torch.empty(1, 1, n, 3, device="meta"))
        assert int(parsed.subs(h, n)) == out.shape[2] == int(evaluate(size, {h: n}))


class EvenOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.up = nn.Conv2d(3, 3, 2, stride=2), nn.ConvTranspose2d(3, 3, 2, stride=2)

    def forward(self, x):
        return x + self.up(self.down(x))


def test_residue_classes_read_as_words():
    analysis = analyze(EvenOnly(), "H")
    meta = _on_meta(EvenOnly())
    runs = [n for n in range(1, 21) if _runs(meta, n, n, channels=3)]
    assert runs == list(range(2, 21, 2))
    assert analysis.validity_sentence() == "H = 2k from 2; never for odd H"


# ---------------------------------------------------------------------------
# polynomial conditions against an independent evaluation (plain Python ints)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def floor_products(draw):
    """A product of floor((a*n + b)/q) terms, as a sympy expression and as a
    Python function of n."""
    from shapecalc.engine.symbolic import floordiv, size_symbol

    n = size_symbol("n")
    terms = [(draw(st.integers(1, 3)), draw(st.integers(-12, 12)), draw(st.integers(1, 4)))
             for _ in range(draw(st.integers(1, 3)))]
    expr, pieces = 1, []
    for a, b, q in terms:
        expr = expr * floordiv(a * n + b, q)
        pieces.append((a, b, q))

    def value(m):
        out = 1
        for a, b, q in pieces:
            out *= (a * m + b) // q
        return out
    return n, expr, value


@settings(max_examples=60, deadline=None)
@given(floor_products(), st.integers(-30, 400), st.sampled_from(["eq", "ge", "gt", "le", "ne"]))
def test_polynomial_condition_sets_match_enumeration(product, constant, kind):
    import operator

    import sympy

    from shapecalc.engine.domain import condition_set

    n, expr, value = product
    relation = {"eq": sympy.Eq, "ge": sympy.Ge, "gt": sympy.Gt, "le": sympy.Le, "ne": sympy.Ne}[kind]
    compare = {"eq": operator.eq, "ge": operator.ge, "gt": operator.gt, "le": operator.le, "ne": operator.ne}[kind]
    condition = relation(expr, constant, evaluate=False)
    allowed = condition_set(condition, n)
    for m in range(1, 301):
        assert (m in allowed) == compare(value(m), constant), (condition, m)
