"""Hypothesis strategies for models and layers whose sizes shapecalc derives.

Like hypothesis' own ``extra`` modules: strategies are plural nouns, bounds
are the keyword-only ``min_value`` / ``max_value``, and every argument is
checked when the strategy is built, raising ``InvalidArgument`` that names it.

* :func:`input_sizes` draws sizes from a model's exact valid domain.
* :func:`conv_layers`, :func:`transposed_conv_layers`, :func:`pool_layers` and
  :func:`resampling_layers` draw valid ``nn.Module`` layers.
* :func:`architectures` draws random networks from the registry's ops (the
  engine's own fuzzer; each comes with its forward code in one line).

shapecalc's cross-check cases (one per rule key) are its test harness and
live in ``shapecalc._selftest``, not here.

This module imports hypothesis; ``import shapecalc`` does not import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from shapecalc.engine import rules
from shapecalc._errors import ShapecalcError
from shapecalc.analysis import Analysis, analyze
from shapecalc.engine.symbolic import evaluate

__all__ = [
    "architectures", "conv_layers", "input_sizes", "pool_layers", "resampling_layers", "transposed_conv_layers",
]


# ---------------------------------------------------------------------------
# argument validation


def _check_integer(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}={value!r} must be an int")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{name}={value!r} must be at most {maximum}")


def _check_dims(dims) -> None:
    _check_integer(dims, "dims")
    if dims not in (1, 2, 3):
        raise InvalidArgument(f"dims={dims!r} must be 1, 2 or 3")


def _check_choices(values, name: str, allowed) -> tuple:
    if isinstance(values, str) or not isinstance(values, (tuple, list, frozenset, set)):
        raise InvalidArgument(f"{name}={values!r} must be a tuple of strings")
    values = tuple(values)
    if not values:
        raise InvalidArgument(f"{name} must not be empty")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InvalidArgument(f"{name} has unknown entries {unknown!r}; choose from {sorted(allowed)!r}")
    return values


# ---------------------------------------------------------------------------
# input sizes


@dataclass(frozen=True)
class _Progression:
    """Sizes first, first + step, ..., count of them."""

    first: int
    step: int
    count: int

    def size(self, index: int) -> int:
        return self.first + self.step * index


def _progressions(valid, min_value: int, max_value: int) -> list[_Progression]:
    found = []
    for residue, intervals in enumerate(valid.classes):
        for lo, hi in intervals:
            first_k = max(lo, -((residue - min_value) // valid.period))  # ceil((min_value - r)/P)
            last_k = (max_value - residue) // valid.period
            if hi is not None:
                last_k = min(last_k, hi)
            if last_k >= first_k:
                found.append(_Progression(valid.period * first_k + residue, valid.period, last_k - first_k + 1))
    # sampled_from shrinks to its first element: the smallest valid size.
    return sorted(found, key=lambda p: p.first)


def input_sizes(model_or_analysis, symbol: str = "H", *, min_value: int = 1, max_value: int = 1024):
    """Sizes of ``symbol`` in ``[min_value, max_value]`` for which the model runs.

    ``model_or_analysis`` is an ``nn.Module`` (analysed with ``--input symbol``)
    or an :class:`~shapecalc.Analysis`.  Draws come from the exact valid set
    (every residue class and interval of ``Analysis.valid_sizes``), so they
    never need filtering; the smallest valid size is the one draws shrink to.
    """
    _check_integer(min_value, "min_value", 1)
    _check_integer(max_value, "max_value", min_value)
    if not isinstance(symbol, str) or not symbol.isidentifier():
        raise InvalidArgument(f"symbol={symbol!r} must be a size name such as 'H'")
    if isinstance(model_or_analysis, Analysis):
        analysis = model_or_analysis
    elif isinstance(model_or_analysis, nn.Module):
        try:
            analysis = analyze(model_or_analysis, symbol)
        except ShapecalcError as error:
            raise InvalidArgument(f"model_or_analysis cannot be analysed: {error}") from error
    else:
        raise InvalidArgument(
            f"model_or_analysis={model_or_analysis!r} must be an nn.Module or a shapecalc Analysis")
    try:
        valid = analysis.valid_sizes(symbol)
    except KeyError as error:
        raise InvalidArgument(f"symbol={symbol!r} is not an input symbol of the analysis: {error.args[0]}") from None
    progressions = _progressions(valid, min_value, max_value)
    if not progressions:
        raise InvalidArgument(
            f"no valid {symbol} between min_value={min_value} and max_value={max_value} "
            f"(the model runs for {valid.describe(symbol)})")
    strategy = st.sampled_from(progressions).flatmap(
        lambda p: st.integers(0, p.count - 1).map(p.size))
    # Requirements the periodic procedure could not decide are checked per draw.
    pending = [r.condition for r in analysis.domain.undecided
               if {str(s) for s in r.condition.free_symbols} == {symbol}]
    if pending:
        (sym,) = pending[0].free_symbols
        strategy = strategy.filter(lambda n: all(evaluate(c, {sym: n}) for c in pending))
    return strategy


# ---------------------------------------------------------------------------
# layer configurations


def _axis_values(dims: int, elements) -> st.SearchStrategy:
    """One value for every axis (an int) or a tuple with one per axis."""
    return st.one_of(elements, st.tuples(*[elements] * dims)) if dims > 1 else elements


def _per_axis(value, dims: int) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value,) * dims


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_layers(dims: int = 2, *, in_channels: int = 1, max_out_channels: int = 3, max_kernel_size: int = 5,
                max_stride: int = 3, max_dilation: int = 3, padding_modes=_PADDING_MODES):
    """``nn.Conv{dims}d`` layers with random kernel, stride, padding (numbers,
    ``'same'`` when unstrided, ``'valid'``), dilation, groups and padding mode."""
    _check_dims(dims)
    _check_integer(in_channels, "in_channels", 1)
    _check_integer(max_out_channels, "max_out_channels", 1)
    _check_integer(max_kernel_size, "max_kernel_size", 1)
    _check_integer(max_stride, "max_stride", 1)
    _check_integer(max_dilation, "max_dilation", 1)
    modes = _check_choices(padding_modes, "padding_modes", _PADDING_MODES)

    @st.composite
    def layers(draw):
        kernel = draw(_axis_values(dims, st.integers(1, max_kernel_size)))
        stride = draw(_axis_values(dims, st.integers(1, max_stride)))
        dilation = draw(_axis_values(dims, st.integers(1, max_dilation)))
        unstrided = all(s == 1 for s in _per_axis(stride, dims))
        padding = draw(st.one_of(
            _axis_values(dims, st.integers(0, max_kernel_size)),
            st.sampled_from(("same", "valid") if unstrided else ("valid",))))
        groups = draw(st.sampled_from([g for g in range(1, in_channels + 1) if in_channels % g == 0]))
        out_channels = groups * draw(st.integers(1, max(1, max_out_channels // groups)))
        return _CONV[dims](in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, bias=draw(st.booleans()), padding_mode=draw(st.sampled_from(modes)))

    return layers()


def transposed_conv_layers(dims: int = 2, *, in_channels: int = 1, max_out_channels: int = 3,
                           max_kernel_size: int = 5, max_stride: int = 3, max_dilation: int = 3):
    """``nn.ConvTranspose{dims}d`` layers, ``output_padding`` below stride or
    dilation as torch requires; padding may exceed the kernel (then small
    inputs give empty outputs, which the domain must exclude)."""
    _check_dims(dims)
    _check_integer(in_channels, "in_channels", 1)
    _check_integer(max_out_channels, "max_out_channels", 1)
    _check_integer(max_kernel_size, "max_kernel_size", 1)
    _check_integer(max_stride, "max_stride", 1)
    _check_integer(max_dilation, "max_dilation", 1)

    @st.composite
    def layers(draw):
        kernel = draw(st.tuples(*[st.integers(1, max_kernel_size)] * dims))
        stride = draw(st.tuples(*[st.integers(1, max_stride)] * dims))
        dilation = draw(st.tuples(*[st.integers(1, max_dilation)] * dims))
        padding = draw(st.tuples(*[st.integers(0, max_kernel_size)] * dims))
        output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        groups = draw(st.sampled_from([g for g in range(1, in_channels + 1) if in_channels % g == 0]))
        out_channels = groups * draw(st.integers(1, max(1, max_out_channels // groups)))
        compact = (lambda v: v[0] if len(set(v)) == 1 else v)
        return _TRANSPOSED[dims](in_channels, out_channels, compact(kernel), stride=compact(stride),
                                 padding=compact(padding), output_padding=compact(output_padding), groups=groups,
                                 bias=draw(st.booleans()), dilation=compact(dilation))

    return layers()


@st.composite
def _pool_parameters(draw, dims: int, max_kernel_size: int, max_stride: int, max_dilation: int):
    kernel = draw(_axis_values(dims, st.integers(1, max_kernel_size)))
    # torch: "pad should be at most half of effective kernel size" (of k, not d(k-1)+1)
    padding = tuple(draw(st.integers(0, k // 2)) for k in _per_axis(kernel, dims))
    if len(set(padding)) == 1 and draw(st.booleans()):
        padding = padding[0]
    stride = draw(st.one_of(st.none(), _axis_values(dims, st.integers(1, max_stride))))
    dilation = draw(_axis_values(dims, st.integers(1, max_dilation)))
    return kernel, stride, padding, dilation, draw(st.booleans())


def pool_layers(dims: int = 2, *, kinds=("max", "avg"), max_kernel_size: int = 4, max_stride: int = 3,
                max_dilation: int = 2):
    """``nn.MaxPool{dims}d`` / ``nn.AvgPool{dims}d`` layers: kernel, stride
    (or the kernel's default), padding at most half the kernel as torch
    requires, dilation (max pooling), ``ceil_mode`` and ``count_include_pad``."""
    _check_dims(dims)
    kinds = _check_choices(kinds, "kinds", ("max", "avg"))
    _check_integer(max_kernel_size, "max_kernel_size", 1)
    _check_integer(max_stride, "max_stride", 1)
    _check_integer(max_dilation, "max_dilation", 1)

    @st.composite
    def layers(draw):
        kind = draw(st.sampled_from(kinds))
        kernel, stride, padding, dilation, ceil_mode = draw(
            _pool_parameters(dims, max_kernel_size, max_stride, max_dilation if kind == "max" else 1))
        if kind == "max":
            return _MAXPOOL[dims](kernel, stride, padding, dilation, ceil_mode=ceil_mode)
        return _AVGPOOL[dims](kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()))

    return layers()


_RESAMPLING_MODES = {
    1: ("nearest", "nearest-exact", "linear", "area"),
    2: ("nearest", "nearest-exact", "bilinear", "bicubic", "area"),
    3: ("nearest", "nearest-exact", "trilinear", "area"),
}
_ALIGNABLE = ("linear", "bilinear", "bicubic", "trilinear")
#: dyadic rationals: PyTorch's double-precision floor(n * f) is then exact
DYADIC_SCALE_FACTORS = (0.25, 0.5, 0.75, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


@st.composite
def _resampling_parameters(draw, dims: int, modes, max_size: int, scale_factors):
    mode = draw(st.sampled_from(modes))
    align_corners = draw(st.sampled_from((None, False, True))) if mode in _ALIGNABLE else None
    if draw(st.booleans()):
        size = draw(_axis_values(dims, st.integers(1, max_size)))
        return dict(size=size, mode=mode, align_corners=align_corners)
    factor = draw(_axis_values(dims, st.sampled_from(scale_factors)))
    recompute = draw(st.sampled_from((None, True)))
    return dict(scale_factor=factor, mode=mode, align_corners=align_corners, recompute_scale_factor=recompute)


def resampling_layers(dims: int = 2, *, modes=None, max_size: int = 32, scale_factors=DYADIC_SCALE_FACTORS):
    """``nn.Upsample`` layers: a fixed ``size`` or a dyadic ``scale_factor``
    (per axis or shared), any mode valid for ``dims``, ``align_corners`` where
    the mode has it, and ``recompute_scale_factor``."""
    _check_dims(dims)
    modes = _check_choices(modes if modes is not None else _RESAMPLING_MODES[dims], "modes", _RESAMPLING_MODES[dims])
    _check_integer(max_size, "max_size", 1)
    if isinstance(scale_factors, (str, bytes)) or not isinstance(scale_factors, (tuple, list)) or not scale_factors:
        raise InvalidArgument(f"scale_factors={scale_factors!r} must be a non-empty tuple of numbers")
    for f in scale_factors:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0:
            raise InvalidArgument(f"scale_factors has {f!r}; every factor must be a positive number")
        if not rules.exact_in_double(float(f)):
            raise InvalidArgument(
                f"scale_factors has {f!r}, not a dyadic rational: torch rounds n*{f} in floating point")
    return _resampling_parameters(dims, modes, max_size, tuple(scale_factors)).map(lambda kw: nn.Upsample(**kw))


# ---------------------------------------------------------------------------
# random architectures


def architectures(*, min_steps: int = 1, max_steps: int = 8, dims=(1, 2, 2, 3)):
    """Random networks built from the registry's ops, as
    :class:`~shapecalc._selftest.architectures.Architecture` values (a module
    factory plus its forward code in one line): the strategy shapecalc
    fuzzes its own engine with.  Imported on first use, so this module does
    not load the self-test harness."""
    from shapecalc._selftest.architectures import architectures as draw

    return draw(min_steps=min_steps, max_steps=max_steps, dims=dims)
