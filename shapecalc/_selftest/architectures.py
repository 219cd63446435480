"""Random convolutional architectures, and their cross-check against torch.

An :class:`Architecture` is an immutable list of steps over the registry's
ops: convolutions, pools and transposed convolutions with random kernel,
stride, padding, dilation and ceil_mode; resampling; padding and slicing;
skip merges whose crops are computed from sizes in ``forward`` or use fixed
offsets; residual adds.  ``build()`` turns it into an fx-traceable module
whose control flow depends on the steps only, never on sizes.

The same builder serves hypothesis (:func:`architectures`, which shrinks a
failing net towards a short one with small parameters) and ``random.Random``
(:func:`random_architecture`, for long fuzz runs that must not stop at the
first finding): both draw through a small *chooser*.

:func:`cross_check` analyses a net at input ``H`` and runs it on the meta
device for a sweep of sizes: torch must run exactly where the engine's domain
says it does, with every node's shape as predicted.

hypothesis is imported only by :func:`architectures`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from shapecalc._errors import ShapecalcError, SizeError
from shapecalc.capture.trace import trace_module
from shapecalc.verify import _peak_elements

# ---------------------------------------------------------------------------
# the data


@dataclass(frozen=True)
class LayerSpec:
    """An ``nn`` layer: class name and constructor keyword arguments."""

    cls: str
    kwargs: tuple[tuple[str, Any], ...]

    def build(self) -> nn.Module:
        return getattr(nn, self.cls)(**dict(self.kwargs))

    def __str__(self) -> str:
        return f"nn.{self.cls}(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs) + ")"


@dataclass(frozen=True)
class Step:
    """One step of a forward pass.  ``kind`` is one of:

    ``layer`` (``x = layer(x)``), ``functional`` (``x = F.<name>(x, **options)``),
    ``slice`` (``x = x[..., a:b:c, ...]`` per spatial axis), ``merge`` (combine
    ``x`` with the output of step ``source``, one of them cropped or resized to
    the other), ``residual`` (``x = x + block(x)``), ``resize`` (interpolate to
    a size computed from ``x.size()`` with ``//``, ``*``, ``+``).
    """

    kind: str
    layers: tuple[LayerSpec, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    source: Optional[int] = None

    def option(self, name: str, default=None):
        return dict(self.options).get(name, default)

    def __str__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options)
        if self.kind == "layer":
            return str(self.layers[0])
        if self.kind == "residual":
            return "x + (" + " -> ".join(map(str, self.layers)) + ")"
        if self.kind == "merge":
            return f"merge(x, out[{self.source}], {options})"
        return f"{self.kind}({options})"


@dataclass(frozen=True)
class Architecture:
    """A random net: spatial dimensionality, input channels and its steps."""

    nd: int
    in_channels: int
    steps: tuple[Step, ...]

    def build(self) -> "RandomNet":
        return RandomNet(self)

    def describe(self) -> str:
        lines = [f"Architecture(nd={self.nd}, in_channels={self.in_channels}):"]
        lines += [f"  out[{i + 1}] = {step}" for i, step in enumerate(self.steps)]
        return "\n".join(lines)

    __str__ = describe


# ---------------------------------------------------------------------------
# the module


def _crop_to(t, like, nd: int, mode: str, offset: int):
    """``t`` cut (or resized) to the spatial size of ``like``, sizes read in forward."""
    if mode == "resize":
        return F.interpolate(t, size=like.shape[2:], mode="nearest")
    index = [slice(None), slice(None)]
    for axis in range(2, 2 + nd):
        start = (t.size(axis) - like.size(axis)) // 2 if mode == "center" else offset
        index.append(slice(start, start + like.size(axis)))
    return t[tuple(index)]


def _merge(x, skip, step: Step, nd: int):
    crop, op = step.option("crop"), step.option("op")
    if crop != "none":
        if step.option("cut") == "skip":
            skip = _crop_to(skip, x, nd, crop, step.option("offset", 0))
        else:
            x = _crop_to(x, skip, nd, crop, step.option("offset", 0))
    if op == "add":
        return skip + x
    if op == "sub":
        return x - skip
    if op == "mul":
        return x * skip
    if op == "cat":
        return torch.cat([skip, x], dim=1)
    return torch.cat([x, skip], dim=2 + step.option("axis", 0))  # "spatial_cat"


_FUNCTIONS = {
    "max_pool": (F.max_pool1d, F.max_pool2d, F.max_pool3d),
    "avg_pool": (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d),
}


class RandomNet(nn.Module):
    """The module of an :class:`Architecture` (fx-traceable)."""

    def __init__(self, architecture: Architecture):
        super().__init__()
        self.architecture = architecture
        self.layers = nn.ModuleDict()
        for i, step in enumerate(architecture.steps):
            if step.layers:
                self.layers[f"s{i + 1}"] = nn.Sequential(*[layer.build() for layer in step.layers])

    def forward(self, x):
        nd = self.architecture.nd
        outs = [x]
        for i, step in enumerate(self.architecture.steps):
            name = f"s{i + 1}"
            if step.kind == "layer":
                x = self.layers[name](x)
            elif step.kind == "residual":
                x = x + self.layers[name](x)
            elif step.kind == "functional":
                options = dict(step.options)
                function = options.pop("function")
                if function == "interpolate":
                    x = F.interpolate(x, **options)
                elif function == "pad":
                    x = F.pad(x, **options)
                else:
                    x = _FUNCTIONS[function][nd - 1](x, **options)
            elif step.kind == "slice":
                x = x[(slice(None), slice(None)) + tuple(slice(*bounds) for bounds in step.option("bounds"))]
            elif step.kind == "resize":
                q, m, c = step.option("q"), step.option("m"), step.option("c")
                x = F.interpolate(x, size=[x.size(axis) // q * m + c for axis in range(2, 2 + nd)], mode="nearest")
            elif step.kind == "merge":
                x = _merge(x, outs[step.source], step, nd)
            else:
                raise ValueError(f"unknown step kind {step.kind!r}")
            outs.append(x)
        return x


# ---------------------------------------------------------------------------
# drawing


class _RandomChooser:
    def __init__(self, rng: random.Random):
        self._rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def choice(self, options: Sequence):
        return options[self._rng.randrange(len(options))]


class _HypothesisChooser:
    def __init__(self, draw):
        from hypothesis import strategies as st

        self._draw, self._st = draw, st

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(self._st.integers(lo, hi))

    def choice(self, options: Sequence):
        # by index: shrinking moves towards the first (simplest) option
        return options[self._draw(self._st.integers(0, len(options) - 1))]


def _per_axis(choose, nd: int, draw_one: Callable[[], int]):
    """One value for all axes, or (sometimes) one per axis."""
    if nd > 1 and choose.integer(0, 3) == 0:
        return tuple(draw_one() for _ in range(nd))
    return draw_one()


def _axes(value, nd: int) -> tuple:
    return value if isinstance(value, tuple) else (value,) * nd


def _nn(name: str, nd: int) -> str:
    return f"{name}{nd}d"


def _conv(choose, nd, c_in, c_out) -> LayerSpec:
    kernel = _per_axis(choose, nd, lambda: choose.choice((1, 3, 2, 5, 4, 7)))
    dilation = _per_axis(choose, nd, lambda: choose.choice((1, 1, 2, 3)))
    stride = _per_axis(choose, nd, lambda: choose.choice((1, 1, 2, 3, 4)))
    padding_kind = choose.choice(("int", "int", "int", "same", "valid"))
    if padding_kind == "same" and any(s != 1 for s in _axes(stride, nd)):
        padding_kind = "int"
    padding = padding_kind if padding_kind != "int" else _per_axis(choose, nd, lambda: choose.integer(0, 4))
    mode = choose.choice(("zeros", "zeros", "zeros", "reflect", "replicate", "circular"))
    kwargs = dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, padding=padding,
                  dilation=dilation, padding_mode=mode)
    return LayerSpec(_nn("Conv", nd), tuple(kwargs.items()))


def _transposed(choose, nd, c_in, c_out) -> LayerSpec:
    kernel = _per_axis(choose, nd, lambda: choose.choice((2, 1, 3, 4, 5, 16)))
    stride = _per_axis(choose, nd, lambda: choose.choice((2, 1, 3, 4, 8)))
    dilation = _per_axis(choose, nd, lambda: choose.choice((1, 1, 2)))
    padding = _per_axis(choose, nd, lambda: choose.integer(0, 3))
    # output_padding must be smaller than stride or dilation; drawn from that
    # range, and rarely beyond it (torch then refuses every size)
    limits = [max(s, d) for s, d in zip(_axes(stride, nd), _axes(dilation, nd))]
    bound = min(limits) - 1
    output_padding = choose.integer(0, bound + (1 if choose.integer(0, 15) == 0 else 0))
    kwargs = dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, padding=padding,
                  output_padding=output_padding, dilation=dilation)
    return LayerSpec(_nn("ConvTranspose", nd), tuple(kwargs.items()))


def _pool_options(choose, nd, with_dilation: bool) -> dict:
    kernel = _per_axis(choose, nd, lambda: choose.choice((2, 3, 1, 4, 5)))
    stride = choose.choice((None, "draw", "draw"))
    stride = None if stride is None else _per_axis(choose, nd, lambda: choose.choice((2, 1, 3, 4)))
    # torch needs padding <= kernel // 2; rarely drawn beyond (torch refuses every size)
    slack = 1 if choose.integer(0, 15) == 0 else 0
    padding = tuple(choose.integer(0, k // 2 + slack) for k in _axes(kernel, nd))
    padding = padding[0] if len(set(padding)) == 1 else padding
    options = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=choose.choice((False, True)))
    if with_dilation:
        options["dilation"] = _per_axis(choose, nd, lambda: choose.choice((1, 1, 2, 3)))
    return options


def _pool(choose, nd) -> LayerSpec:
    kind = choose.choice(("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool"))
    if kind.startswith("Adaptive"):
        size = _per_axis(choose, nd, lambda: choose.choice((1, 2, 3, 5, None)))
        if size is None:  # None keeps an axis, and only inside a tuple
            size = 1
        return LayerSpec(_nn(kind, nd), (("output_size", size),))
    options = _pool_options(choose, nd, kind == "MaxPool")
    if kind == "AvgPool":
        options["count_include_pad"] = choose.choice((True, False))
    return LayerSpec(_nn(kind, nd), tuple(options.items()))


_SCALES = (2, 0.5, 3, 1.5, 0.75, 0.25, 1.25)
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _resample_mode(choose, nd) -> tuple[str, Optional[bool]]:
    modes = ("nearest", _LINEAR[nd], "nearest-exact", "area") + (("bicubic",) if nd == 2 else ())
    mode = choose.choice(modes)
    align = choose.choice((False, True)) if mode in ("linear", "bilinear", "trilinear", "bicubic") else None
    return mode, align


def _upsample(choose, nd) -> LayerSpec:
    mode, align = _resample_mode(choose, nd)
    if mode == "area":
        mode = "nearest"
    if choose.integer(0, 3) == 0:
        options = dict(size=_per_axis(choose, nd, lambda: choose.integer(1, 9)))
    else:
        options = dict(scale_factor=choose.choice(_SCALES))
    options.update(mode=mode, align_corners=align)
    return LayerSpec("Upsample", tuple(options.items()))


def _pad_layer(choose, nd) -> LayerSpec:
    kind = choose.choice(("ZeroPad", "ReflectionPad", "ReplicationPad", "ConstantPad", "CircularPad"))
    pads = tuple(choose.integer(0, 3) for _ in range(2 * nd))
    options = (("padding", pads),) + ((("value", 0.5),) if kind == "ConstantPad" else ())
    return LayerSpec(_nn(kind, nd), options)


def _pointwise(choose, channels, nd) -> LayerSpec:
    kind = choose.choice(("ReLU", "BatchNorm", "Dropout", "Identity"))
    if kind == "BatchNorm":
        return LayerSpec(_nn("BatchNorm", nd), (("num_features", channels),))
    return LayerSpec(kind, ())


def _functional(choose, nd) -> Step:
    function = choose.choice(("max_pool", "avg_pool", "interpolate", "pad"))
    if function in ("max_pool", "avg_pool"):
        options = _pool_options(choose, nd, function == "max_pool")
    elif function == "interpolate":
        mode, align = _resample_mode(choose, nd)
        options = dict(scale_factor=choose.choice(_SCALES), mode=mode)
        if align is not None:
            options["align_corners"] = align
        if choose.integer(0, 2) == 0:
            options["recompute_scale_factor"] = choose.choice((True, False))
    else:
        mode = choose.choice(("constant", "constant", "reflect", "replicate", "circular"))
        low = -3 if mode == "constant" else 0
        options = dict(pad=tuple(choose.integer(low, 3) for _ in range(2 * nd)), mode=mode)
    return Step("functional", options=(("function", function),) + tuple(options.items()))


def _slice(choose, nd) -> Step:
    def bound(options):
        return choose.choice(options)

    bounds = []
    for _ in range(nd):
        start = bound((None, 1, 2, 0, 3, -1, -2, -5))
        stop = bound((None, -1, -2, 6, 12, 1, -4))
        step = bound((None, None, 2, 3))
        bounds.append((start, stop, step))
    if nd > 1 and choose.integer(0, 1) == 0:
        bounds = [bounds[0]] * nd
    return Step("slice", options=(("bounds", tuple(bounds)),))


def _draw_architecture(choose, min_steps: int, max_steps: int, dims: Sequence[int]) -> Architecture:
    nd = choose.choice(tuple(dims))
    in_channels = choose.integer(1, 3)
    channels = [in_channels]  # per output: out[0] is the input
    steps: list[Step] = []
    count = choose.integer(min_steps, max_steps)
    for _ in range(count):
        c = channels[-1]
        kind = choose.choice(("conv", "pool", "transposed", "merge", "conv", "resample", "functional", "slice",
                              "residual", "pad", "resize", "pointwise"))
        if kind == "conv":
            c_out = choose.integer(1, 3)
            steps.append(Step("layer", (_conv(choose, nd, c, c_out),)))
            channels.append(c_out)
            continue
        if kind == "transposed":
            c_out = choose.integer(1, 3)
            steps.append(Step("layer", (_transposed(choose, nd, c, c_out),)))
            channels.append(c_out)
            continue
        if kind == "merge" and len(channels) >= 2:
            source = choose.integer(0, len(channels) - 2)
            c_skip = channels[source]
            op = choose.choice(("add", "cat", "mul", "sub", "spatial_cat"))
            if op in ("add", "mul", "sub") and not (c_skip == c or 1 in (c, c_skip)):
                op = "cat"
            crop = choose.choice(("fixed", "center", "none", "resize"))
            options = dict(op=op, crop=crop, cut=choose.choice(("skip", "current")))
            if crop == "fixed":
                options["offset"] = choose.integer(0, 6)
            if op == "spatial_cat":
                options["axis"] = choose.integer(0, nd - 1)
                if c_skip != c:
                    op = options["op"] = "cat"
            steps.append(Step("merge", options=tuple(options.items()), source=source))
            channels.append(c + c_skip if op == "cat" else max(c, c_skip) if op != "spatial_cat" else c)
            continue
        if kind == "residual":
            block = [_conv(choose, nd, c, c)]
            if choose.integer(0, 1):
                block.append(choose.choice((_pointwise(choose, c, nd), _conv(choose, nd, c, c))))
            steps.append(Step("residual", tuple(block)))
            channels.append(c)
            continue
        if kind == "pool":
            steps.append(Step("layer", (_pool(choose, nd),)))
        elif kind == "resample":
            steps.append(Step("layer", (_upsample(choose, nd),)))
        elif kind == "functional":
            steps.append(_functional(choose, nd))
        elif kind == "slice":
            steps.append(_slice(choose, nd))
        elif kind == "pad":
            steps.append(Step("layer", (_pad_layer(choose, nd),)))
        elif kind == "resize":
            options = dict(q=choose.choice((1, 2, 3, 4)), m=choose.choice((1, 2, 3)), c=choose.integer(-2, 3))
            steps.append(Step("resize", options=tuple(options.items())))
        else:  # pointwise (or a merge with nothing to merge yet)
            steps.append(Step("layer", (_pointwise(choose, c, nd),)))
        channels.append(c)
    return Architecture(nd, in_channels, tuple(steps))


def _check_bounds(min_steps, max_steps, dims) -> tuple[int, int, tuple[int, ...]]:
    for name, value in (("min_steps", min_steps), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if min_steps > max_steps:
        raise ValueError(f"min_steps={min_steps} is larger than max_steps={max_steps}")
    dims = tuple(dims)
    if not dims or any(d not in (1, 2, 3) for d in dims):
        raise ValueError(f"dims must be a non-empty collection of 1, 2 and 3, got {dims!r}")
    return min_steps, max_steps, dims


def random_architecture(seed: int, *, min_steps: int = 1, max_steps: int = 10,
                        dims: Sequence[int] = (1, 2, 2, 3)) -> Architecture:
    """The architecture for ``seed`` (reproducible; for long fuzz runs)."""
    min_steps, max_steps, dims = _check_bounds(min_steps, max_steps, dims)
    return _draw_architecture(_RandomChooser(random.Random(seed)), min_steps, max_steps, dims)


def architectures(*, min_steps: int = 1, max_steps: int = 8, dims: Sequence[int] = (1, 2, 2, 3)):
    """A hypothesis strategy of random :class:`Architecture` values.

    ``min_steps``/``max_steps`` bound the number of steps; ``dims`` lists the
    spatial dimensionalities to draw from (repeat one to weight it)."""
    from hypothesis import strategies as st
    from hypothesis.errors import InvalidArgument

    try:
        min_steps, max_steps, dims = _check_bounds(min_steps, max_steps, dims)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None

    @st.composite
    def draw_architecture(draw):
        return _draw_architecture(_HypothesisChooser(draw), min_steps, max_steps, dims)

    return draw_architecture()


# ---------------------------------------------------------------------------
# cross-checking


#: sizes always swept, and a few large ones
SWEEP_LIMIT = 40
LARGE_SIZES = (97, 256, 1001, 4099)
#: a meta/engine disagreement on validity is re-run on cpu below this many elements
CPU_CONFIRM_LIMIT = 2 * 10**7


@dataclass
class CrossCheck:
    """The engine against meta-device forward passes for one architecture."""

    architecture: Architecture
    sizes: list[int] = field(default_factory=list)
    valid: list[int] = field(default_factory=list)       # sizes where torch ran (cpu's verdict where consulted)
    disagreements: list[str] = field(default_factory=list)
    engine_error: Optional[str] = None                    # the engine could not analyse the net
    never_runs: bool = False                              # the engine said no size is valid
    undecided: bool = False                               # the domain left conditions undecided
    nodes_compared: int = 0
    meta_only: list[str] = field(default_factory=list)    # meta kernels disagreed with cpu (and the engine)
    torch_inconsistent: list[str] = field(default_factory=list)  # torch's own kernels disagree (see below)

    @property
    def agrees(self) -> bool:
        return not self.disagreements and self.engine_error is None

    def describe(self) -> str:
        lines = [self.architecture.describe()]
        if self.engine_error:
            lines.append(f"engine error: {self.engine_error}")
        lines += self.disagreements[:5]
        if len(self.disagreements) > 5:
            lines.append(f"... and {len(self.disagreements) - 5} more")
        return "\n".join(lines)


def sweep_sizes(analysis, limit: int = SWEEP_LIMIT) -> list[int]:
    """1..limit, the edges of the domain's intervals (and their neighbours),
    and a few large sizes."""
    sizes = set(range(1, limit + 1)) | set(LARGE_SIZES)
    for symbol in analysis.symbols:
        allowed = analysis.domain.sets[symbol]
        for r, intervals in enumerate(allowed.classes[:64]):
            for lo, hi in intervals[:4]:
                for edge in (allowed.period * lo + r, None if hi is None else allowed.period * hi + r):
                    if edge is not None and edge < 10**6:
                        sizes.update(n for n in range(edge - 2, edge + 3) if n >= 1)
    return sorted(sizes)


def cross_check(architecture: Architecture, sizes: Optional[Sequence[int]] = None) -> CrossCheck:
    """Analyse ``architecture`` at input ``H`` (every spatial axis) and run it
    on the meta device at each size: torch must run exactly where the domain
    says so, with every node's shape as predicted."""
    from shapecalc.verify import ForwardChecker, size_analysis

    result = CrossCheck(architecture)
    with torch.device("meta"):
        model = architecture.build().eval()
    try:
        # one symbol on every axis; the dimensionality is given, since a net
        # that starts with a slice or a resize does not say it
        analysis = size_analysis(model, "H", channels=architecture.in_channels, name="RandomNet",
                                 dimensions=architecture.nd)
    except SizeError as error:
        # the engine says no size runs: torch must fail at every size
        result.never_runs = True
        result.sizes = list(sizes or range(1, SWEEP_LIMIT + 1)) + list(LARGE_SIZES)
        graph_module = trace_module(model)
        cpu_model = None
        for n in result.sizes:
            shapes = _meta_shapes(graph_module, model, architecture, n)
            if shapes is None:
                continue
            result.valid.append(n)
            empty = _empty_transposed_output(graph_module, shapes)
            if empty:
                result.torch_inconsistent.append(f"H={n}: {empty}")
                continue
            lenient = _meta_accepts_empty_input(graph_module, shapes, architecture)
            if lenient:
                _meta_only(result, n, lenient, ran_on_cpu=False)
                continue
            if _peak_elements(shapes) <= CPU_CONFIRM_LIMIT:
                cpu_model = cpu_model or architecture.build().eval()
                if not _runs(cpu_model, architecture, n, "cpu"):
                    _meta_only(result, n, "the engine says no size runs; torch ran on meta only", ran_on_cpu=False)
                    continue
            result.disagreements.append(f"engine: never runs ({error.reason}); torch ran at H={n}")
            break
        return result
    except ShapecalcError as error:
        result.engine_error = f"{type(error).__name__}: {error.reason}"
        return result
    result.undecided = bool(analysis.domain.undecided)
    checker = ForwardChecker(analysis, model, "meta")
    result.sizes = list(sizes) if sizes is not None else sweep_sizes(analysis)
    cpu_model: list[nn.Module] = []
    for n in result.sizes:
        outcome = checker.check({"H": n})
        result.nodes_compared += outcome.compared
        if outcome.ran:
            result.valid.append(n)
        mismatch = outcome.mismatch
        if mismatch is None:
            continue
        empty = mismatch.kind == "ran" and _empty_transposed_output(checker.graph_module, outcome.shapes)
        if empty:
            result.torch_inconsistent.append(f"H={n}: {empty}")
            continue
        lenient = mismatch.kind == "ran" and _meta_accepts_empty_input(checker.graph_module, outcome.shapes,
                                                                      architecture)
        if lenient:
            _meta_only(result, n, lenient, ran_on_cpu=False)
            continue
        # the cpu run must stay small: "ran" knows every shape from the meta
        # run, "error" stopped early and trusts the engine's prediction
        peak = outcome.peak_elements if mismatch.kind == "ran" else _predicted_peak(checker, n)
        if mismatch.kind in ("ran", "error") and peak <= CPU_CONFIRM_LIMIT:
            # Meta kernels check less than some cpu kernels (e.g. a transposed
            # conv with one empty output axis runs on meta, not on cpu): the
            # engine must agree with a real device.
            if not cpu_model:
                cpu_model.append(architecture.build().eval())
            if _runs(cpu_model[0], architecture, n, "cpu") == outcome.claimed_valid:
                _meta_only(result, n, mismatch.message, ran_on_cpu=outcome.claimed_valid)
                continue
        result.disagreements.append(mismatch.describe())
    return result


def _meta_only(result: CrossCheck, n: int, text: str, *, ran_on_cpu: bool) -> None:
    """Meta and cpu disagree at ``n`` and cpu agrees with the engine: the
    size counts as valid exactly when cpu ran it."""
    result.meta_only.append(f"H={n}: {text}")
    if ran_on_cpu and n not in result.valid:
        result.valid.append(n)
    if not ran_on_cpu and n in result.valid:
        result.valid.remove(n)


def _meta_shapes(graph_module, model, architecture: Architecture, n: int):
    """Every node's shape in a meta forward pass at ``n``, or None if it fails."""
    from shapecalc.verify import _ShapeRecorder

    recorder = _ShapeRecorder(graph_module, model)
    try:
        with torch.inference_mode():
            recorder.run(torch.empty((1, architecture.in_channels) + (n,) * architecture.nd, device="meta"))
    except Exception:
        return None
    return recorder.shapes


def _predicted_peak(checker, n: int) -> float:
    from shapecalc.engine.propagate import META_KEY
    from shapecalc.engine.symbolic import evaluate
    from shapecalc.engine.tensors import SymbolicTensor

    env = {symbol: n for symbol in checker.analysis.symbols}
    peak = 0
    for node in checker.graph_module.graph.nodes:
        value = node.meta.get(META_KEY)
        if isinstance(value, SymbolicTensor):
            try:
                peak = max(peak, math.prod(max(int(evaluate(s, env)), 0) for s in value.shape))
            except (TypeError, ValueError, KeyError):
                return math.inf
    return peak


def _meta_accepts_empty_input(graph_module, shapes, architecture: Architecture) -> Optional[str]:
    """A layer or function that ran on meta with an empty input or output
    axis which the cpu kernel refuses (meta convs with padding, linear, cubic
    and area resampling accept them).  That one call is re-run on cpu with its
    recorded input: small, since an empty tensor has no elements."""
    cpu_model = None
    for node in graph_module.graph.nodes:
        if node.op not in ("call_module", "call_function") or node.name not in shapes or not node.args:
            continue
        source = node.args[0]
        shape = shapes.get(source.name) if isinstance(source, torch.fx.Node) else None
        output = shapes.get(node.name)
        if not isinstance(shape, tuple) or not isinstance(output, tuple) or len(shape) < 3:
            continue
        if not (0 in shape[2:] or 0 in output[2:]) or math.prod(shape) > CPU_CONFIRM_LIMIT:
            continue
        if node.op == "call_module":
            cpu_model = cpu_model or architecture.build().eval()
            call, label = cpu_model.get_submodule(node.target), type(cpu_model.get_submodule(node.target)).__name__
        elif node.target in _ONE_TENSOR_FUNCTIONS:
            call, label = node.target, node.target.__name__
        else:
            continue
        # the other arguments are constants or recorded sizes
        args = torch.fx.node.map_arg(node.args[1:], lambda a: shapes.get(a.name))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: shapes.get(a.name))
        try:
            with torch.inference_mode():
                call(torch.zeros(shape), *args, **kwargs)
        except Exception as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
            return f"{node.name} ({label}) ran on meta from {shape} to {output}; cpu refuses: {reason}"
    return None


#: functions of one tensor the architectures use (re-run alone on cpu)
_ONE_TENSOR_FUNCTIONS = frozenset({F.interpolate, F.pad, *_FUNCTIONS["max_pool"], *_FUNCTIONS["avg_pool"]})


def _empty_transposed_output(graph_module, shapes) -> Optional[str]:
    """A transposed conv that produced an empty axis (but not all empty).

    torch's kernels disagree among themselves there: the cpu kernel refuses
    it with groups=1 (and accepts it with groups > 1, or for a 1-wide input);
    the meta kernel accepts it unless every axis is empty.  The engine
    requires every output axis to be non-empty, which is what the common
    path does; sizes where torch ran anyway are counted apart."""
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        shape = shapes.get(node.name)
        if node.op != "call_module" or not isinstance(shape, tuple):
            continue
        if isinstance(modules.get(node.target), nn.modules.conv._ConvTransposeNd):
            spatial = shape[2:]
            if 0 in spatial and any(spatial):
                return f"{node.name} ({type(modules[node.target]).__name__}) produced an empty axis: {shape}"
    return None


def _runs(model: nn.Module, architecture: Architecture, n: int, device: str = "meta") -> bool:
    try:
        with torch.inference_mode():
            model(torch.zeros((1, architecture.in_channels) + (n,) * architecture.nd, device=device))
        return True
    except Exception:
        return False
