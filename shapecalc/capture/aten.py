"""The ATen front end: capture a model with PyTorch's own symbolic tracing.

torch.fx's ``symbolic_trace`` runs ``forward`` on Proxies, so Python that
looks at sizes (``if h % 32 != 0: raise``, ``torch.jit.isinstance``, numpy on
shapes) either fails or silently takes one branch.  Here ``forward`` runs on
FakeTensors whose spatial sizes are symbols of a ShapeEnv (``make_fx`` in
symbolic mode): every Python decision on a size becomes a *guard*, an
expression in the input sizes, and the graph records ATen ops.

What this module returns is one capture at one example size: the ATen graph
(or the model's own exception), the guards of the model's code that fixed
the branches taken (the *region* where this graph is the model), and where
each guard came from.  The sizes themselves are computed afterwards by
shapecalc's own rules over the ATen ops (engine/rules/aten_ops.py): torch's
recorded sizes are exact only inside the region and serve as a check.

Three settings make the guards those of the model rather than of torch's
internals (measured on 27 zoo models, torch 2.13): ``duck_shape=False`` (H
and W are separate symbols even when equal), ``specialize_zero_one=False``
and ``backed_size_oblivious`` (no contiguity and stride guards).  Module
paths come from forward hooks that note where each module's nodes begin
and end (:class:`_ModuleSpans`): make_fx's own ``record_module_stack`` costs
a fifth of a capture.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import time
import traceback
import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

import sympy
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from shapecalc._errors import TraceError, UnsupportedOpError

#: guard origins: the model's own Python (a branch or a raise), a
#: ``torch._assert``/``torch._check`` the model calls, or a code path inside
#: torch's Python (nn.functional, decompositions) that may change the graph
MODEL, ASSERT, TORCH_PATH = "model", "assert", "torch"

#: files whose guards are torch's size arithmetic (meta functions, fake
#: kernels, the symbolic-shape machinery): they never change which ops are
#: recorded, and shapecalc's rules decide the same conditions exactly
_SIZE_ARITHMETIC_FILES = ("_meta_registrations.py", "_prims_common", "_prims/", "fx/experimental/",
                          "_subclasses/")

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


@dataclass(frozen=True)
class Guard:
    """One decision the captured code made on the input sizes."""

    condition: sympy.Basic  # in shapecalc's input symbols
    origin: str             # MODEL, ASSERT or TORCH_PATH
    location: str           # "segmentation_models_pytorch/base/model.py:46"

    def text(self) -> str:
        from shapecalc.engine.symbolic import format_expr
        return f"{format_expr(self.condition)} ({self.location})"


@dataclass(frozen=True)
class ModelRaised:
    """The model's own exception at a size (the region where it raises)."""

    kind: str       # the exception's class name
    message: str    # first line, torch's symbols replaced by shapecalc's
    location: str   # where it was raised, "file.py:line"
    origin: str     # MODEL, ASSERT, TORCH_PATH (torch's Python raised on a guarded branch) or "size"
    #: the file the exception left Python from (torch's own code for a size check)
    raised_in: str = ""


@dataclass
class AtenCapture:
    """One symbolic capture at ``example`` (symbol -> size)."""

    example: dict
    graph_module: Optional[torch.fx.GraphModule]
    guards: tuple[Guard, ...]
    raised: Optional[ModelRaised] = None
    seconds: float = 0.0
    #: torch's symbol for each input symbol (to read torch's recorded sizes)
    torch_symbols: dict = field(default_factory=dict)
    #: the ShapeEnv's example values of its own symbols
    torch_example: dict = field(default_factory=dict)

    @property
    def pointwise(self) -> bool:
        """torch's own size check failed: that says nothing of the rest of
        the region (the graph there is unknown), so the capture covers only
        its example size."""
        return self.raised is not None and self.raised.origin == "size"

    @property
    def region(self) -> sympy.Basic:
        """Where this capture holds: every guard of the model's code (and
        only the example itself for a pointwise capture)."""
        conditions = self.guards_as_conditions()
        if self.pointwise:
            conditions += [sympy.Eq(s, int(v)) for s, v in self.example.items()]
        return sympy.And(*conditions) if conditions else sympy.true

    def guards_as_conditions(self) -> list:
        return [g.condition for g in self.guards]

    def contains(self, sizes: dict) -> bool:
        """Whether this capture's region holds ``sizes`` (symbol -> int)."""
        if self.pointwise and any(int(sizes[s]) != int(v) for s, v in self.example.items()):
            return False
        return all(bool(g.condition.subs(sizes)) for g in self.guards)


# ---------------------------------------------------------------------------
# resampling kept whole

def _interpolate_reference(x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias):
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                         recompute_scale_factor=recompute_scale_factor, antialias=antialias)


def _define_interpolate_op():
    """``shapecalc::interpolate``: F.interpolate as one recorded op.

    Under the symbolic tracer F.interpolate decomposes into aranges, index
    arithmetic and ``_unsafe_index`` (about 40 nodes for bilinear), which
    hides the mode, the scale factors and align_corners the resampling audit
    reads.  Recorded whole, it carries F.interpolate's own arguments, and its
    fake kernel is F.interpolate itself, so torch's recorded size is still
    torch's."""
    namespace = getattr(torch.ops, "shapecalc", None)
    if namespace is not None and hasattr(namespace, "interpolate"):
        return torch.ops.shapecalc.interpolate.default

    @torch.library.custom_op("shapecalc::interpolate", mutates_args=())
    def interpolate(x: torch.Tensor, size: Optional[list[int]], scale_factor: Optional[list[float]], mode: str,
                    align_corners: Optional[bool], recompute_scale_factor: Optional[bool],
                    antialias: bool) -> torch.Tensor:
        return _interpolate_reference(x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)

    interpolate.register_fake(_interpolate_size)
    return torch.ops.shapecalc.interpolate.default


def _interpolate_size(x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias):
    """The op's fake kernel: only the output's size, as upsample's C++ computes
    it (``size``, or ``floor(n * scale)`` per axis).  Running F.interpolate
    itself on fake tensors would trace its whole decomposition again (about
    half of an smp FPN capture); its checks (mode against rank, a positive
    output) are shapecalc's rule's, as for every op."""
    spatial = x.shape[2:]
    if size is not None:
        out = list(size)
    else:
        # a double is a dyadic rational p/q exactly, and n*p/q is exact in double for any
        # real size: integer arithmetic gives the same floor without float symbols in guards
        out = []
        for n, factor in zip(spatial, scale_factor):
            exact = Fraction(float(factor))
            out.append((n * exact.numerator) // exact.denominator)
    return x.new_empty((*x.shape[:2], *out))


INTERPOLATE = _define_interpolate_op()


def _define_batch_norm_op():
    """``shapecalc::batch_norm``: inference batch norm as one recorded op.

    Under the symbolic tracer each inference batch norm runs its whole
    decomposition on fake tensors (a third of an smp Unet capture), for a
    result shaped like its input.  Recorded whole, it costs a shape; the
    channel check torch's kernel makes stays in its fake kernel, with
    torch's message."""
    namespace = getattr(torch.ops, "shapecalc", None)
    if namespace is not None and hasattr(namespace, "batch_norm"):
        return torch.ops.shapecalc.batch_norm.default

    @torch.library.custom_op("shapecalc::batch_norm", mutates_args=())
    def batch_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   running_mean: torch.Tensor, running_var: torch.Tensor, eps: float) -> torch.Tensor:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    def shape_only(x, weight, bias, running_mean, running_var, eps):
        for tensor in (weight, bias, running_mean, running_var):
            if tensor is not None and (x.dim() < 2 or tensor.numel() != x.shape[1]):
                raise RuntimeError(f"running_mean should contain {x.shape[1] if x.dim() > 1 else 0} elements "
                                   f"not {tensor.numel()}")
        return x.new_empty(x.shape)

    batch_norm.register_fake(shape_only)
    return torch.ops.shapecalc.batch_norm.default


BATCH_NORM = _define_batch_norm_op()
_INTERPOLATE_SIGNATURE = inspect.signature(F.interpolate)


class _CaptureMode(TorchFunctionMode):
    """Sees every torch function the model calls while it is captured:
    records F.interpolate as :data:`INTERPOLATE`, and notes which guards a
    ``torch._assert`` or ``torch._check`` added (torch attributes them to
    the tracer's own ``__torch_function__``, not to the model's line)."""

    def __init__(self, shape_env):
        super().__init__()
        self.shape_env = shape_env
        self.asserted: dict[int, str] = {}  # id(guard) -> the model's line

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate:
            return self._interpolate(args, kwargs)
        if func is torch.batch_norm and not _argument(args, kwargs, 5, "training", True) \
                and _argument(args, kwargs, 3, "running_mean", None) is not None:
            # F.batch_norm's own Python (its checks) has run; this is the kernel call
            return BATCH_NORM(args[0], _argument(args, kwargs, 1, "weight", None), _argument(args, kwargs, 2, "bias", None),
                              _argument(args, kwargs, 3, "running_mean", None),
                              _argument(args, kwargs, 4, "running_var", None), float(_argument(args, kwargs, 7, "eps", 1e-5)))
        if func is torch._assert:
            before = len(self.shape_env.guards)
            try:
                return func(*args, **kwargs)
            finally:
                line = _caller_location()
                for guard in self.shape_env.guards[before:]:
                    self.asserted[id(guard)] = line
        return func(*args, **kwargs)

    def _interpolate(self, args, kwargs):
        bound = _INTERPOLATE_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        x = a["input"]
        spatial = x.dim() - 2
        size, scale = a["size"], a["scale_factor"]
        if size is not None:
            size = list(size) if isinstance(size, (list, tuple)) else [size] * spatial
        if scale is not None:
            scale = [float(s) for s in scale] if isinstance(scale, (list, tuple)) else [float(scale)] * spatial
        return INTERPOLATE(x, size, scale, a["mode"], a["align_corners"], a["recompute_scale_factor"],
                           bool(a["antialias"]))


def _argument(args, kwargs, position: int, name: str, default):
    return args[position] if len(args) > position else kwargs.get(name, default)


def _caller_location() -> str:
    """The innermost frame outside torch and shapecalc: the model's line."""
    for frame in reversed(traceback.extract_stack()):
        if not _is_library_file(frame.filename):
            return _short_location(frame.filename, frame.lineno)
    return "unknown"


_SHAPECALC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_library_file(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_TORCH_DIR) or path.startswith(_SHAPECALC_DIR) or "contextlib" in os.path.basename(path)


def _short_location(filename: str, line) -> str:
    """``package/module.py:46``: relative to site-packages or the working directory."""
    path = os.path.abspath(filename)
    for root in sorted({p for p in sys.path if p}, key=len, reverse=True):
        root = os.path.abspath(root) + os.sep
        if path.startswith(root) and ("site-packages" in root or "dist-packages" in root):
            return f"{path[len(root):]}:{line}"
    cwd = os.getcwd() + os.sep
    if path.startswith(cwd):
        return f"{path[len(cwd):]}:{line}"
    return f"{os.path.basename(path)}:{line}"


# ---------------------------------------------------------------------------
# the capture

class _Traced(nn.Module):
    """The model, called under a :class:`_CaptureMode`."""

    def __init__(self, model: nn.Module, mode_factory):
        super().__init__()
        self._orig_mod = model
        self._mode_factory = mode_factory

    def forward(self, x):
        with self._mode_factory():
            return self._orig_mod(x)


class _ModuleSpans:
    """Which module's call produced each graph node: global forward hooks
    note the tracer graph's last node when a module of the model starts, and
    when it ends give every node recorded since then that module's path
    unless an inner module (which ends first) already gave its own.  A
    module reached at two paths is named by the first."""

    def __init__(self, model: nn.Module):
        self.names = {}
        for name, module in model.named_modules():
            self.names.setdefault(id(module), name)
        self.open: list = []
        self.handles = []

    def __enter__(self):
        self.handles = [nn.modules.module.register_module_forward_pre_hook(self._starts),
                        nn.modules.module.register_module_forward_hook(self._ends)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    @staticmethod
    def _graph():
        from torch.fx.experimental.proxy_tensor import get_proxy_mode
        mode = get_proxy_mode()
        return None if mode is None else mode.tracer.graph

    def _starts(self, module, args):
        graph = self._graph()
        if id(module) in self.names and graph is not None:
            # the last node so far (the graph's root sentinel when there is none yet)
            self.open.append((self.names[id(module)], graph, graph._root.prev))

    def _ends(self, module, args, output):
        if id(module) not in self.names or not self.open:
            return
        name, graph, before = self.open.pop()
        node = before.next
        while node is not graph._root:
            node.meta.setdefault(MODULE_KEY, name)
            node = node.next


#: the node.meta key of the module path the capture wrote
MODULE_KEY = "shapecalc_module"


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("meta")


def capture(model: nn.Module, symbols: tuple, example: dict, *, channels: int, batch: int = 1,
            sizes: Optional[tuple] = None) -> AtenCapture:
    """Capture ``model`` on a ``(batch, channels, *sizes)`` input whose
    spatial sizes are ``sizes`` (symbols of ``symbols`` or integers; one
    symbol may appear on several axes), at the sizes ``example`` gives.

    The model's own exception is part of the result (its region is where
    it raises); anything else the tracer cannot run is a TraceError."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental import _config as shape_config
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    shape_env = ShapeEnv(specialize_zero_one=False, duck_shape=False)
    fake_mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=True)
    torch_symbols, symints = {}, {}
    for symbol in symbols:
        value = int(example[symbol])
        torch_symbol = shape_env.create_symbol(value, ConstantSource(f"shapecalc_{symbol}"),
                                               dynamic_dim=DimDynamic.DYNAMIC)
        torch_symbols[symbol] = torch_symbol
        symints[symbol] = shape_env.create_symintnode(torch_symbol, hint=value)
    dims = [symints[s] if s in symints else int(s) for s in (sizes or symbols)]
    modes: list[_CaptureMode] = []

    def mode_factory():
        mode = _CaptureMode(shape_env)
        modes.append(mode)
        return mode

    started = time.perf_counter()
    graph_module, raised = None, None
    with shape_config.patch(backed_size_oblivious=True), _quiet_tracer():
        with fake_mode:
            x = torch.empty(batch, channels, *dims, device=_model_device(model))
        spans = _ModuleSpans(model)
        try:
            with torch.no_grad(), spans:
                graph_module = make_fx(_Traced(model, mode_factory), tracing_mode="symbolic")(x)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # the model's own exception, or one the tracer met
            raised = _classify_exception(error, torch_symbols)
    seconds = time.perf_counter() - started
    if graph_module is not None:
        _drop_aliases(graph_module)
    asserted = {k: v for mode in modes for k, v in mode.asserted.items()}
    guards = _model_guards(shape_env, torch_symbols, asserted)
    if raised is not None and raised.origin == "size" and guards and guards[-1].origin == TORCH_PATH and \
            guards[-1].location.rsplit(":", 1)[0] == _short_location(raised.raised_in, 0).rsplit(":", 1)[0]:
        # torch's Python (F.instance_norm's "more than 1 spatial element") raised right after
        # a branch on a guarded size: every size of the region takes that branch and raises
        raised = dataclasses.replace(raised, origin=TORCH_PATH)
    torch_example = {s: int(example[k]) for k, s in torch_symbols.items()}
    return AtenCapture(dict(example), graph_module, guards, raised, seconds, torch_symbols, torch_example)


#: ops that return their input as it is (autograd's bookkeeping under make_fx)
_ALIASES = ("aten::detach", "aten::alias", "aten::lift_fresh_copy")


def _drop_aliases(graph_module: torch.fx.GraphModule) -> None:
    """Remove ``detach``/``alias`` nodes (make_fx records one after every
    in-place activation): a reader looks for layers, not for autograd."""
    for node in list(graph_module.graph.nodes):
        if isinstance(node.target, torch._ops.OpOverload) and node.target._schema.name in _ALIASES and node.args:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.recompile()


@contextlib.contextmanager
def _quiet_tracer():
    # torch logs a warning per guard on a backed symbol in some versions; the
    # capture's findings reach the user through the report instead
    import logging
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _to_ours(expr, torch_symbols: dict):
    """A ShapeEnv expression in shapecalc's symbols and functions (torch's
    FloorDiv, Mod and CeilToInt become shapecalc's exact forms)."""
    back = {t: s for s, t in torch_symbols.items()}
    return translate(sympy.sympify(expr).xreplace(back))


def translate(expr):
    """torch.utils._sympy functions as shapecalc's symbolic forms."""
    from shapecalc.engine.symbolic import floordiv
    if not isinstance(expr, sympy.Basic) or expr.is_Atom:
        return expr
    args = [translate(a) for a in expr.args]
    name = type(expr).__name__
    if name == "FloorDiv":
        return floordiv(args[0], args[1])
    if name in ("Mod", "PythonMod"):
        return args[0] - args[1] * floordiv(args[0], args[1])
    if name in ("CeilToInt", "CeilDiv"):
        return -floordiv(-args[0], 1) if name == "CeilToInt" else -floordiv(-args[0], args[1])
    if name in ("FloorToInt",):
        return floordiv(args[0], 1)
    if name in ("IntTrueDiv", "FloatTrueDiv", "CleanDiv"):
        return args[0] / args[1]
    if name in ("ToFloat", "Identity", "TruncToFloat"):
        return args[0]
    return expr.func(*args) if args != list(expr.args) else expr


def _model_guards(shape_env, torch_symbols: dict, asserted: dict) -> tuple[Guard, ...]:
    guards = []
    for guard in shape_env.guards:
        frame = guard.sloc.framework_loc
        filename = getattr(frame, "filename", None) or ""
        lineno = getattr(frame, "lineno", None)
        if id(guard) in asserted:
            origin, location = ASSERT, asserted[id(guard)]
        elif filename and not _is_library_file(filename):
            origin, location = MODEL, _short_location(filename, lineno)
        elif any(part in filename.replace(os.sep, "/") for part in _SIZE_ARITHMETIC_FILES):
            continue  # torch's size arithmetic: decided by shapecalc's rules, not a branch
        else:
            origin, location = TORCH_PATH, _short_location(filename, lineno) if filename else "torch"
        condition = _to_ours(guard.expr, torch_symbols)
        if condition is sympy.true or condition in [g.condition for g in guards]:
            continue
        guards.append(Guard(condition, origin, location))
    return tuple(guards)


_TORCH_SYMBOL = re.compile(r"\bs(\d+)\b")


def normalise_message(text: str, torch_symbols: dict) -> str:
    """The message with torch's symbol names (``s36``) replaced by shapecalc's (``H``)."""
    names = {str(t): str(s) for s, t in torch_symbols.items()}
    return _TORCH_SYMBOL.sub(lambda m: names.get(m.group(0), m.group(0)), text)


def _classify_exception(error: BaseException, torch_symbols: dict) -> ModelRaised:
    """The model's exception (raised from its code, or by a torch._assert it
    calls) or torch's own size check; anything from the tracer's machinery
    (data-dependent sizes, unsupported Python) is a TraceError."""
    frames = traceback.extract_tb(error.__traceback__)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    message = normalise_message(first, torch_symbols)[:300]
    innermost = frames[-1] if frames else None
    model_frames = [f for f in frames if not _is_library_file(f.filename)]
    tracer_trouble = ("GuardOnDataDependentSymNode", "DataDependentOutputException", "DynamicOutputShapeException",
                      "UnsupportedOperatorException", "Unsupported")
    if type(error).__name__ in tracer_trouble:
        raise TraceError(f"the ATen capture cannot follow the model here ({type(error).__name__}: {message})") \
            from error
    if innermost is not None and not _is_library_file(innermost.filename):
        return ModelRaised(type(error).__name__, message, _short_location(innermost.filename, innermost.lineno),
                           MODEL)
    if isinstance(error, AssertionError) and innermost is not None and innermost.name == "_assert":
        where = model_frames[-1] if model_frames else innermost
        return ModelRaised(type(error).__name__, message, _short_location(where.filename, where.lineno), ASSERT)
    if isinstance(error, (RuntimeError, ValueError, IndexError)) and innermost is not None:
        where = model_frames[-1] if model_frames else innermost
        return ModelRaised(type(error).__name__, message, _short_location(where.filename, where.lineno), "size",
                           innermost.filename)
    raise UnsupportedOpError(f"the ATen capture failed ({type(error).__name__}: {message})") from error


def module_path(node: torch.fx.Node) -> str:
    """The qualified name of the module whose call produced ``node``
    (``encoder.layer1.0.conv1``; "" for the model itself)."""
    if MODULE_KEY in node.meta:
        return node.meta[MODULE_KEY]
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = path.removeprefix("_orig_mod.").removeprefix("_orig_mod")
    return re.sub(r"L\['self'\]\.?", "", path)
