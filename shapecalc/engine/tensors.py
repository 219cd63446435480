"""The values that flow through the size interpreter in place of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import sympy

from shapecalc.audits.receptive import INDEX, Window, identity_window, substitute
from shapecalc.engine.symbolic import as_expr, format_expr


@dataclass(frozen=True)
class AxisGeometry:
    """Where one spatial axis of a tensor sits in the input image.

    ``scale`` and ``shift`` are Caffe's coordinate map: input coordinate ``x``
    lands at index ``scale*x + shift`` of this axis.  ``rf`` is the receptive
    field size in input pixels (None where unknown).  A resampled axis has
    size-dependent (symbolic) values.  After global pooling every index sees
    the whole axis: such an axis is *position-free* (``scale`` and ``shift``
    are None) and aligns with anything.  ``window`` is the exact receptive
    field of index ``i`` as the first and last input pixel, expressions in
    :data:`~shapecalc.audits.receptive.INDEX` (None where unknown); ``rf`` is its
    largest width.  After a transposed conv the window is a staircase and is
    not centred on the pixel's coordinate (see :mod:`shapecalc.audits.receptive`).
    """

    scale: Optional[sympy.Expr]
    shift: Optional[sympy.Expr]
    rf: Optional[sympy.Expr]
    window: Optional[Window] = None

    @property
    def position_free(self) -> bool:
        return self.scale is None

    @property
    def stride(self) -> Optional[sympy.Expr]:
        """Input pixels per step along this axis."""
        return None if self.scale is None else sympy.expand(1 / self.scale)

    @property
    def center(self) -> Optional[sympy.Expr]:
        """Input coordinate of the centre of index 0."""
        return None if self.scale is None else sympy.expand(-self.shift / self.scale)

    def shifted(self, offset) -> "AxisGeometry":
        """The map after dropping ``offset`` leading indices (a crop)."""
        if self.position_free:
            return self
        window = None if self.window is None else tuple(substitute(w, INDEX + as_expr(offset)) for w in self.window)
        return replace(self, shift=self.shift - as_expr(offset), window=window)


IDENTITY = AxisGeometry(sympy.Integer(1), sympy.Integer(0), sympy.Integer(1), identity_window())


@dataclass(frozen=True)
class SymbolicTensor:
    """A tensor known by its shape: sympy sizes, which axes are spatial, and
    where each spatial axis sits in the input image."""

    shape: tuple[sympy.Expr, ...]
    spatial: tuple[int, ...] = ()
    geometry: tuple[Optional[AxisGeometry], ...] = ()
    #: "integer", "bool" or "floating" where known (a parameter or buffer
    #: read by get_attr), else None: whether a tensor index selects by
    #: position or by mask (a mask's result size depends on its values)
    dtype_kind: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(as_expr(s) for s in self.shape))
        if len(self.geometry) != len(self.spatial):
            object.__setattr__(self, "geometry", (None,) * len(self.spatial))

    def __repr__(self) -> str:
        # sizes as the CLI prints them; the geometry has its own repr
        return f"SymbolicTensor(shape=({', '.join(format_expr(s) for s in self.shape)}), spatial={self.spatial})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial_sizes(self) -> tuple[sympy.Expr, ...]:
        return tuple(self.shape[i] for i in self.spatial)

    def axis(self, dim: int) -> int:
        """A possibly negative dim as a non-negative axis index."""
        if not -self.ndim <= dim < self.ndim:
            raise IndexError(f"dim {dim} out of range for a {self.ndim}-d tensor")
        return dim % self.ndim

    def with_spatial(self, sizes, geometry=None) -> "SymbolicTensor":
        """The same tensor with new spatial sizes (and geometry)."""
        shape = list(self.shape)
        for axis, size in zip(self.spatial, sizes):
            shape[axis] = as_expr(size)
        return SymbolicTensor(tuple(shape), self.spatial, tuple(geometry) if geometry is not None else self.geometry)

    def with_dim(self, axis: int, size) -> "SymbolicTensor":
        shape = list(self.shape)
        shape[axis] = as_expr(size)
        return replace(self, shape=tuple(shape))
