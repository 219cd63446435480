"""Tensor properties that sizes do not depend on, and new tensors."""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.fx
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import (as_expr, format_expr, ge)
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.common import _one_sequence_or_many
from shapecalc.engine.rules.registry import rule


@dataclass(frozen=True)
class Untracked:
    """A tensor property shapecalc does not follow (``.dtype``, ``.device``):
    fine as a ``dtype=``/``device=`` argument, refused where it would decide
    something (a comparison, an attribute of it)."""

    what: str

    def __repr__(self) -> str:
        return self.what


@rule(torch.empty, torch.zeros, torch.ones)
def new_tensor(ctx, *size, **options):
    """``torch.empty([B, 0, H // 2, W // 2], dtype=x.dtype)``: a tensor of its own
    (no pixel of the input in it, so no spatial axes)."""
    size = _one_sequence_or_many(size)
    for s in size:
        if isinstance(s, (SymbolicTensor, float, str)) or s is None:
            raise UnsupportedOpError(f"a tensor of size {size!r}")
        ctx.require(ge(s, 0), f"Trying to create tensor with negative dimension {format_expr(as_expr(s))}")
    return SymbolicTensor(tuple(as_expr(s) for s in size))
