"""Advanced (tensor) indexing in ``x[...]``: integer index tensors whose
shape is known (a Swin's ``table[relative_position_index]``).

The index tensors broadcast together; their shape replaces the indexed axes
where those axes are adjacent, and goes first otherwise (NumPy's rule, which
PyTorch follows).  Supported: integer index tensors (a parameter or buffer
read by get_attr, or a list of ints) mixed with slices and ``...``.  Refused
with one line: a mask (its result size depends on its values), an index of
unknown dtype, and tensors mixed with ints or None (PyTorch applies those
first, NumPy does not: shapecalc does not guess)."""

from __future__ import annotations

import sympy
from shapecalc._errors import UnsupportedOpError
from shapecalc.engine.symbolic import format_expr, ge
from shapecalc.engine.tensors import SymbolicTensor
from shapecalc.engine.rules.merges import broadcast_size


def _index_shape(item):
    """The shape of an advanced index, or None for a basic one."""
    if isinstance(item, SymbolicTensor):
        if item.dtype_kind == "bool":
            raise UnsupportedOpError("advanced (tensor) indexing with a mask: the result size depends on its values")
        if item.dtype_kind != "integer":
            raise UnsupportedOpError("advanced (tensor) indexing with an index of unknown dtype (only a parameter "
                                     "or buffer is known to hold integers)")
        return item.shape
    if isinstance(item, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
            raise UnsupportedOpError("advanced indexing with a list of other than ints")
        return (sympy.Integer(len(item)),)
    if item is None or item is Ellipsis or isinstance(item, slice):
        return None
    if hasattr(item, "shape"):  # a tensor constant left in the graph
        raise UnsupportedOpError(f"advanced indexing with a {type(item).__name__}")
    return None


def advanced_index(ctx, x: SymbolicTensor, items: list, basic_index) -> SymbolicTensor:
    """``x[items]`` where some items are index tensors; ``basic_index`` is the
    slicing rule, applied first with each index tensor as ``:``."""
    shapes = [_index_shape(item) for item in items]
    if any(item is None or (shape is None and not isinstance(item, slice) and item is not Ellipsis)
           for item, shape in zip(items, shapes)):
        raise UnsupportedOpError("advanced (tensor) indexing mixed with integers or None")
    if items.count(Ellipsis) > 1:
        raise UnsupportedOpError("an index can only have a single ellipsis ('...')")
    if len(items) - items.count(Ellipsis) > x.ndim:
        ctx.require(sympy.false, f"too many indices for tensor of dimension {x.ndim}")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = x.ndim - (len(items) - 1)
        items = items[:at] + [slice(None)] * fill + items[at + 1:]
        shapes = shapes[:at] + [None] * fill + shapes[at + 1:]
    items += [slice(None)] * (x.ndim - len(items))
    shapes += [None] * (x.ndim - len(shapes))
    sliced = basic_index(ctx, x, tuple(slice(None) if s is not None else item for item, s in zip(items, shapes)))
    indexed = [axis for axis, s in enumerate(shapes) if s is not None]
    # broadcast the index shapes, right-aligned
    rank = max(len(shapes[a]) for a in indexed)
    result = [sympy.Integer(1)] * rank
    for axis in indexed:
        padded = (sympy.Integer(1),) * (rank - len(shapes[axis])) + tuple(shapes[axis])
        result = [broadcast_size(ctx, r, p) for r, p in zip(result, padded)]
        # every index value is out of range for an empty axis
        ctx.require(sympy.Or(ge(sliced.shape[axis], 1), *[sympy.Eq(p, 0) for p in padded]),
                    f"index into an empty axis (size {format_expr(sliced.shape[axis])})")
    ctx.note("advanced indexing: the index values are not checked against the axis sizes (torch raises "
             "'index ... is out of bounds' on a value outside them)")
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    at = indexed[0] if adjacent else 0
    kept = [a for a in range(x.ndim) if a not in indexed]
    shape = [sliced.shape[a] for a in kept]
    shape[at:at] = result
    # the gathered axes hold chosen pixels: no spatial mark; the others keep theirs, moved
    position = {a: i + (rank if i >= at else 0) for i, a in enumerate(kept)}
    spatial, geometry = [], []
    for a, g in zip(sliced.spatial, sliced.geometry):
        if a in position:
            spatial.append(position[a])
            geometry.append(g)
    return SymbolicTensor(tuple(shape), tuple(spatial), tuple(geometry))
