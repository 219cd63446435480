"""THE size-rule registry: one decorated function per op, one signature.

A rule is ``rule(ctx, *args, **kwargs) -> value``: ``args``/``kwargs`` are the
node's arguments with tensors replaced by :class:`SymbolicTensor` and sizes
by sympy expressions; ``ctx`` (a :class:`RuleContext`) gives the module of a
``call_module`` node and lets the rule state what the forward pass needs
(``ctx.require``) and simplify clamped sizes against what is known so far
(``ctx.simplify``).  Keys are ``nn.Module`` classes, functions, or method names
(``"view"``).  Adding an op means one rule in the module of its family plus its
cross-check case in ``shapecalc._selftest.op_cases``; nothing else changes.

Every formula is PyTorch's own (``torch/_meta_registrations.py``,
``aten/src/ATen/native/Pool.h``, ``torch/nn/functional.py``); each is
cross-checked against real forward passes in ``tests/test_rules.py``.

One module per op family; importing this package registers every rule.
"""

from __future__ import annotations

from shapecalc.engine.rules.registry import AtenOp, QualifiedName, aten, RULES, Rule, RuleContext, Sampling, key_name, lookup, node_rule, registered_class, rule
from shapecalc.engine.rules.metadata import LINEAR_MODES, bound_arguments
from shapecalc.engine.rules.pooling import pooled_size
from shapecalc.engine.rules.merges import exact_in_double
# every family registers its rules when imported, in this order
from shapecalc.engine.rules import common, metadata, convolution, pooling, resampling, padding, pointwise, merges, indexing, reshaping, multiple_outputs, copies, comparisons, subpixel, properties, library, matrix, attention, unfolding, windows, fractional_pooling, sampling, einops_patterns, aten_ops  # noqa: F401, E402

__all__ = ['AtenOp', 'LINEAR_MODES', 'QualifiedName', 'aten', 'RULES', 'Rule', 'RuleContext', 'Sampling', 'bound_arguments', 'exact_in_double', 'key_name', 'lookup', 'node_rule', 'pooled_size', 'registered_class', 'rule']
