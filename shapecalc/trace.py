"""Getting a graph: MODEL specs, input specs, and torch.fx tracing."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from weakref import WeakKeyDictionary

import sympy
import torch
import torch.fx
import torch.nn as nn

from ._errors import InputSpecError, ModelLoadError, TraceError
from .symbolic import parse_size_text, size_symbol

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class InputSpec:
    """Spatial input sizes: each a positive integer or a size symbol."""

    text: str
    sizes: tuple[sympy.Expr, ...]

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        seen: dict[sympy.Symbol, None] = {}
        for s in self.sizes:
            if s.is_Symbol:
                seen[s] = None
        return tuple(seen)

    def for_dimensions(self, count: int) -> "InputSpec":
        """The spec for a net with ``count`` spatial axes: one part is square."""
        if len(self.sizes) == count:
            return self
        if len(self.sizes) == 1:
            return InputSpec(self.text, self.sizes * count)
        raise InputSpecError(
            f"input {self.text!r} has {len(self.sizes)} sizes but the model has {count} spatial axes")


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``H``, ``HxW``, ``512x384``, ``Hx384`` or ``D,H,W`` without eval."""
    if not isinstance(text, str) or not text.strip():
        raise InputSpecError("empty --input; give sizes like H, HxW or 512x384")
    cleaned = text.strip()
    parts = cleaned.split(",") if "," in cleaned else cleaned.split("x")
    sizes = []
    for part in parts:
        part = part.strip()
        if part.isdigit():
            sizes.append(sympy.Integer(parse_size_text(part)))
        elif _IDENTIFIER.match(part) and not keyword.iskeyword(part):
            if hasattr(sympy, part) or part in {"floor", "ceiling", "Min", "Max"}:
                raise InputSpecError(f"size symbol {part!r} clashes with a sympy name; choose another (e.g. H, W, D)")
            sizes.append(size_symbol(part))
        else:
            raise InputSpecError(
                f"bad --input {text!r}: each size is a positive integer or a name (H, W), separated by 'x' or ','")
    if len(sizes) > 3:
        raise InputSpecError(f"bad --input {text!r}: at most 3 spatial sizes")
    return InputSpec(cleaned, tuple(sizes))


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs: ints, floats, true/false/none, else strings (no eval)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not _IDENTIFIER.match(key.strip()):
            raise ModelLoadError(f"bad --arg {pair!r}: expected KEY=VALUE")
        out[key.strip()] = _literal(raw.strip())
    return out


def _literal(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


def _bundled() -> Mapping[str, Callable[..., nn.Module]]:
    from segmodels import BUNDLED_MODELS

    return BUNDLED_MODELS


def bundled_names() -> list[str]:
    return sorted(_bundled())


def load_model(spec: str, kwargs: Mapping[str, Any] | None = None, *, device: str = "meta") -> nn.Module:
    """Build the model a MODEL spec names: a bundled name, ``package.module:factory``
    or ``path/to/file.py:factory``, on ``device`` (meta: no weights are
    allocated, enough for size analysis).  The model is returned in eval mode."""
    kwargs = dict(kwargs or {})
    factory = _resolve_factory(spec)
    try:
        model, note = _build(factory, kwargs, device)
    except TypeError as error:
        raise ModelLoadError(f"cannot build {spec!r} with {kwargs or 'no arguments'}: {error}") from error
    except ValueError as error:
        raise ModelLoadError(f"cannot build {spec!r}: {error}") from error
    except Exception as error:
        raise ModelLoadError(f"building {spec!r} failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec!r} gave a {type(model).__name__}, not an nn.Module")
    if note:
        _BUILD_NOTES[model] = note
    return model.eval()


#: the note of a model that load_model had to build on CPU instead of meta
_BUILD_NOTES: "WeakKeyDictionary[nn.Module, str]" = WeakKeyDictionary()


def _build(factory: Callable[..., Any], kwargs: Mapping[str, Any], device: str) -> tuple[Any, str | None]:
    """``factory(**kwargs)`` on ``device``; a meta build that fails (a factory
    that copies or reads tensor values: "Cannot copy out of meta tensor",
    "Tensor.item() cannot be called on meta tensors") is built again on CPU,
    which allocates and initialises every weight, and says so in a note."""
    try:
        with torch.device(device):
            return factory(**kwargs), None
    except Exception as error:
        if device != "meta":
            raise
        meta_error = error
    # a failure here is not the meta device's doing: it is the one to report
    with torch.device("cpu"):
        model = factory(**kwargs)
    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, nn.Module) else []
    size = sum(t.numel() * t.element_size() for t in tensors)
    first = str(meta_error).strip().splitlines()[0] if str(meta_error).strip() else type(meta_error).__name__
    return model, (f"built on cpu ({size / 2**20:.1f} MiB of weights): building on meta failed "
                   f"({type(meta_error).__name__}: {first})")


def _message(error: BaseException) -> str:
    # a factory may echo a pasted argument whole; the error line stays readable
    return shorten(error, 300)


def _exit_text(error: SystemExit) -> str:
    # Model code that exits must not end shapecalc with its status: exit 0
    # would print nothing and pass CI.
    return f"called sys.exit({shorten(repr(error.code), 40)}); model code must not exit the process"


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    if not kwargs:
        return "no arguments"
    return "{" + ", ".join(f"{key!r}: {shorten(repr(value), 40)}" for key, value in kwargs.items()) + "}"


def _resolve_factory(spec: str) -> Callable[..., Any]:
    bundled = _bundled()
    if spec in bundled:
        return bundled[spec]
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise ModelLoadError(
            f"unknown model {spec!r}: use a bundled name ({', '.join(sorted(bundled))}), "
            "package.module:factory or path/to/file.py:factory")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise ModelLoadError(f"no such file: {location}")
        module_name = f"_shapecalc_user_{abs(hash(path.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as error:
            raise ModelLoadError(f"importing {location} failed: {type(error).__name__}: {error}") from error
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ModelLoadError(f"cannot import {location!r}: {error}") from error
        except Exception as error:
            raise ModelLoadError(f"importing {location!r} failed: {type(error).__name__}: {error}") from error
    factory = getattr(module, name, None)
    if factory is None:
        raise ModelLoadError(f"{location} has no attribute {name!r}")
    if not callable(factory):
        raise ModelLoadError(f"{location}:{name} is not callable")
    return factory


#: GraphModule.meta key of the trace's FidelityCheck (see fidelity.py)
FIDELITY_KEY = "shapecalc_fidelity"


def trace_module(model: nn.Module, *, channels: int | None = None, dimensions: int | None = None,
                 sizes: Sequence[Sequence[int]] = (), batch: int = 1, check: bool = True) -> torch.fx.GraphModule:
    """Trace with torch.fx; standard torch.nn layers stay leaves.

    With ``check`` (the default) the graph is believed only after it and the
    module gave the same output shapes on the meta device at concrete inputs
    (``sizes`` first, then fidelity.CANDIDATE_SIZES; ``channels`` and
    ``dimensions`` default to what the first layer says); an unfaithful trace
    raises TraceError.  The outcome is in ``graph_module.meta[FIDELITY_KEY]``."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    original = model
    if torch.fx.Tracer().is_leaf_module(model, ""):
        # A bare torch.nn layer: its forward is not written to be traced
        # (ConvTranspose branches on output_size); trace a call of it instead.
        model = nn.Sequential(model)
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {first}. Remove data-dependent Python control flow "
            "from forward() (or wrap that part in a leaf module with torch.fx.wrap)") from error
    except SystemExit as error:
        raise TraceError(f"forward() of {type(model).__name__} {_exit_text(error)}") from error
    graph_module.meta["shapecalc_build_note"] = _BUILD_NOTES.get(original)
    if check:
        check_fidelity(original, graph_module, channels=channels, dimensions=dimensions, sizes=sizes, batch=batch)
    return graph_module


def check_fidelity(model: nn.Module, graph_module: torch.fx.GraphModule, *, channels: int | None = None,
                   dimensions: int | None = None, sizes: Sequence[Sequence[int]] = (), batch: int = 1):
    """Compare ``graph_module`` with ``model`` (see trace_module); the result
    is kept in ``graph_module.meta[FIDELITY_KEY]`` and returned."""
    from .fidelity import FidelityCheck, candidate_shapes, check_trace

    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if len([n for n in placeholders if not n.args]) != 1:
        result = FidelityCheck((), "meta", "forward() does not take exactly one tensor input")
    else:
        inferred_dimensions, inferred_channels = spatial_dimensions_and_channels(graph_module)
        count = dimensions or inferred_dimensions or (len(sizes[0]) if sizes else 2)
        shapes = candidate_shapes(count, channels or inferred_channels or 3, batch, first=sizes)
        result = check_trace(model, graph_module, shapes)
    graph_module.meta[FIDELITY_KEY] = result
    return result


def trace_notes(graph_module: torch.fx.GraphModule) -> list[str]:
    """What a person should know about how the graph was obtained."""
    notes = [graph_module.meta.get("shapecalc_build_note")]
    fidelity = graph_module.meta.get(FIDELITY_KEY)
    notes.append(fidelity.note() if fidelity is not None else None)
    return [n for n in notes if n]


def spatial_dimensions_and_channels(graph_module: torch.fx.GraphModule) -> tuple[int | None, int | None]:
    """From the first layer that consumes the input: its number of spatial
    axes and its input channels (None when nothing says)."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return None, None
    frontier, seen = [placeholders[0]], set()
    # MaxPool1d, BatchNorm3d, F.max_pool1d...: the name says how many spatial axes
    dims = None
    while frontier:
        node = frontier.pop(0)
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            named = type(graph_module.get_submodule(user.target)).__name__ if user.op == "call_module" \
                else str(getattr(user.target, "__name__", ""))
            if dims is None and named[-2:] in ("1d", "2d", "3d"):
                dims = int(named[-2])
            if user.op == "call_module":
                module = graph_module.get_submodule(user.target)
                kernel = getattr(module, "kernel_size", None)
                channels = getattr(module, "in_channels", None) or getattr(module, "num_features", None)
                if kernel is not None and channels is not None:
                    nd = len(kernel) if isinstance(kernel, tuple) else dims
                    return nd, channels
                if channels is not None:
                    return dims, channels
            frontier.append(user)
    return dims, None


def signature_of(factory) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(...)"
