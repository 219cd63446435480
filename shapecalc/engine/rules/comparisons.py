"""Size comparisons and assertions."""

from __future__ import annotations

import operator
import sympy
import torch
import torch.fx
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import (eq, ge, gt, le, lt)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.merges import elementwise
from shapecalc.engine.rules.properties import Untracked
from shapecalc.engine.rules.registry import rule


def _comparison(relation, tensor_rule=None):
    def compare(ctx, a, b):
        if isinstance(a, SymbolicTensor) or isinstance(b, SymbolicTensor):
            return elementwise(ctx, a, b)  # a bool tensor, broadcast
        if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
            # torch.Size == (1, 3, 224, 224): every entry, and the same length
            if not isinstance(a, (tuple, list)) or not isinstance(b, (tuple, list)) or len(a) != len(b):
                return sympy.false if relation is eq else sympy.true
            same = sympy.And(*[eq(x, y) for x, y in zip(a, b)])
            return same if relation is eq else sympy.Not(same)
        if isinstance(a, (str, Untracked)) or isinstance(b, (str, Untracked)) or a is None or b is None:
            raise UnsupportedOpError(f"comparison of {a!r} and {b!r}")
        return relation(a, b)
    return compare


def _ne(a, b):
    return sympy.Not(eq(a, b))


@rule(operator.eq, merge="broadcast")
def equal(ctx, a, b):
    return _comparison(eq)(ctx, a, b)


@rule(operator.ne, merge="broadcast")
def not_equal(ctx, a, b):
    return _comparison(_ne)(ctx, a, b)


def _ordered(ctx, relation, a, b):
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        raise UnsupportedOpError("ordering of size tuples")
    return _comparison(relation)(ctx, a, b)


@rule(operator.lt, merge="broadcast")
def less_than(ctx, a, b):
    return _ordered(ctx, lt, a, b)


@rule(operator.le, merge="broadcast")
def at_most(ctx, a, b):
    return _ordered(ctx, le, a, b)


@rule(operator.gt, merge="broadcast")
def greater_than(ctx, a, b):
    return _ordered(ctx, gt, a, b)


@rule(operator.ge, merge="broadcast")
def at_least(ctx, a, b):
    return _ordered(ctx, ge, a, b)


@rule(torch._assert)
def assertion(ctx, condition, message):
    """``torch._assert(H == 224, "...")``: the forward pass needs the condition;
    a size that breaks it fails with the model's own message."""
    if isinstance(condition, SymbolicTensor):
        raise UnsupportedOpError("torch._assert on a tensor's values (not its sizes)")
    if isinstance(condition, (bool, int)):
        condition = sympy.true if condition else sympy.false
    ctx.require(condition, str(message))
    return None
