"""``einops.rearrange`` and ``einops.layers.torch.Rearrange``, keyed by name
(shapecalc does not import einops).  The pattern is parsed here, exactly and
only as far as this grammar goes: names, parenthesised groups of names,
``()`` and ``1`` (a unit axis) and one ``...`` outside parentheses.  Anything
else is refused with one line rather than guessed at.

An output axis that is one whole input axis keeps that axis's spatial mark
and coordinate map; an axis split or merged loses them (its pixels are
interleaved with another axis's)."""

from __future__ import annotations

import re
from functools import lru_cache
import sympy
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import as_expr, eq, floordiv, format_expr
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _expect_tensor
from shapecalc.engine.rules.registry import QualifiedName, rule

ELLIPSIS = "..."
_TOKEN = re.compile(r"\.\.\.|\(|\)|[A-Za-z_][A-Za-z0-9_]*|\d+|\S")


def _side(text: str, pattern: str) -> tuple:
    """One side as a tuple of groups: each a tuple of axis names (``()`` for a
    unit axis), or ELLIPSIS."""
    groups, current = [], None
    for token in _TOKEN.findall(text):
        if token == "(":
            if current is not None:
                raise UnsupportedOpError(f"einops pattern {pattern!r}: nested parentheses")
            current = []
        elif token == ")":
            if current is None:
                raise UnsupportedOpError(f"einops pattern {pattern!r}: unbalanced ')'")
            groups.append(tuple(current))
            current = None
        elif token == ELLIPSIS:
            if current is not None:
                raise UnsupportedOpError(f"einops pattern {pattern!r}: '...' inside parentheses is not supported")
            groups.append(ELLIPSIS)
        elif token == "1":
            if current is None:
                groups.append(())
        elif token[0].isalpha() or token[0] == "_":
            (current if current is not None else groups).append(token if current is not None else (token,))
        else:
            raise UnsupportedOpError(f"einops pattern {pattern!r}: {token!r} is not supported (names, (groups), 1, ...)")
    if current is not None:
        raise UnsupportedOpError(f"einops pattern {pattern!r}: unbalanced '('")
    return tuple(groups)


@lru_cache(maxsize=256)
def parse_pattern(pattern: str) -> tuple[tuple, tuple]:
    """``(left groups, right groups)`` of a rearrange pattern; raises
    UnsupportedOpError for what this grammar does not cover and for what
    einops itself rejects whatever the input (the same name twice, a name on
    one side only)."""
    if not isinstance(pattern, str) or pattern.count("->") != 1:
        raise UnsupportedOpError(f"einops pattern {pattern!r}: expected exactly one '->'")
    left, right = (_side(part, pattern) for part in pattern.split("->"))
    for side in (left, right):
        names = [a for g in side if g != ELLIPSIS for a in g]
        if len(names) != len(set(names)):
            raise UnsupportedOpError(f"einops pattern {pattern!r}: a name appears twice on one side")
        if side.count(ELLIPSIS) > 1:
            raise UnsupportedOpError(f"einops pattern {pattern!r}: more than one '...'")
    names = [{a for g in side if g != ELLIPSIS for a in g} for side in (left, right)]
    if names[0] != names[1] or (ELLIPSIS in left) != (ELLIPSIS in right):
        raise UnsupportedOpError(f"einops pattern {pattern!r}: identifiers only on one side of expression "
                                 f"({sorted(names[0] ^ names[1]) or '...'})")
    return left, right


def rearranged(ctx, x: SymbolicTensor, pattern: str, lengths: dict) -> SymbolicTensor:
    left, right = parse_pattern(pattern)
    fixed = len(left) - (1 if ELLIPSIS in left else 0)
    if (x.ndim < fixed) if ELLIPSIS in left else (x.ndim != fixed):
        ctx.require(sympy.false, f"einops {pattern!r}: wrong shape: expected {'at least ' if ELLIPSIS in left else ''}"
                                 f"{fixed} dims, received a {x.ndim}-dim tensor")
    unused = set(lengths) - {a for g in left if g != ELLIPSIS for a in g}
    if unused:
        raise UnsupportedOpError(f"einops {pattern!r}: axis lengths {sorted(unused)} are not in the pattern")
    # which input axes each left group covers
    at = left.index(ELLIPSIS) if ELLIPSIS in left else len(left)
    rest = x.ndim - fixed
    covered = {}
    for i, group in enumerate(left):
        start = i if i < at else i + rest - 1
        covered[i] = list(range(i, i + rest)) if group == ELLIPSIS else [start]
    sizes, whole = {}, {}
    for i, group in enumerate(left):
        if group == ELLIPSIS:
            continue
        (axis,) = covered[i]
        n = x.shape[axis]
        known = [as_expr(lengths[a]) for a in group if a in lengths]
        unknown = [a for a in group if a not in lengths]
        product = sympy.Mul(*known)
        if len(unknown) > 1:
            ctx.require(sympy.false, f"einops {pattern!r}: could not infer sizes for {unknown}")
        if unknown:
            ctx.require(eq(floordiv(n, product) * product, n), f"einops {pattern!r}: shape mismatch, "
                                                               f"{format_expr(n)} is not divisible by {format_expr(product)}")
            sizes[unknown[0]] = floordiv(n, product) if product != 1 else n
        else:
            ctx.require(eq(n, product), f"einops {pattern!r}: shape mismatch, {format_expr(n)} != {format_expr(product)}")
        sizes.update({a: as_expr(lengths[a]) for a in group if a in lengths})
        if len(group) == 1:
            whole[group[0]] = axis
    marks = dict(zip(x.spatial, x.geometry))
    shape, spatial, geometry = [], [], []
    for group in right:
        if group == ELLIPSIS:
            for axis in covered[at]:
                if axis in marks:
                    spatial.append(len(shape))
                    geometry.append(marks[axis])
                shape.append(x.shape[axis])
            continue
        if len(group) == 1 and group[0] in whole and whole[group[0]] in marks:
            spatial.append(len(shape))
            geometry.append(marks[whole[group[0]]])
        shape.append(sympy.Mul(*[sizes[a] for a in group]))
    return SymbolicTensor(tuple(shape), tuple(spatial), tuple(geometry))


@rule(QualifiedName("einops.einops.rearrange"))
def einops_rearrange(ctx, tensor, pattern, **axes_lengths):
    if isinstance(tensor, (list, tuple)):
        raise UnsupportedOpError("einops.rearrange of a list of tensors")
    return rearranged(ctx, _expect_tensor(tensor, "einops.rearrange"), pattern, axes_lengths)


@rule(QualifiedName("einops.layers.torch.Rearrange"))
def einops_rearrange_layer(ctx, x):
    m = ctx.module
    return rearranged(ctx, _expect_tensor(x, "Rearrange"), m.pattern, dict(m.axes_lengths))
