"""Library ops keyed by name (shapecalc does not import the library)."""

from __future__ import annotations

import sympy
from shapecalc.engine.rules.common import _expect_tensor
from shapecalc.engine.rules.registry import QualifiedName, rule


@rule(QualifiedName("torchvision.ops.stochastic_depth.stochastic_depth"))
def stochastic_depth(ctx, x, p, mode, training=True):
    """Zeroes whole rows (a per-sample factor): sizes and pixel positions stay."""
    x = _expect_tensor(x, "stochastic_depth")
    if not 0.0 <= p <= 1.0:
        ctx.require(sympy.false, f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        ctx.require(sympy.false, f"mode has to be either 'batch' or 'row', but got {mode}")
    if training and p != 0.0 and mode == "row" and x.ndim == 0:
        ctx.require(sympy.false, "row-mode stochastic depth of a 0-d tensor (it has no batch axis)")
    return x
