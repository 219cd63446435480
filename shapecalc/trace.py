"""Getting a graph: MODEL specs, input specs, and torch.fx tracing."""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from weakref import WeakKeyDictionary

import torch
import torch.fx
import torch.nn as nn

from ._errors import ModelLoadError, TraceError
# parsed torch-free in specs; re-exported here, where callers have always found them
from .specs import InputSpec, parse_input_spec, parse_model_args, shorten  # noqa: F401


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
        raise ModelLoadError(f"cannot build {shorten(spec)!r} with {_kwargs_text(kwargs)}: {_message(error)}") \
            from error
    except ValueError as error:
        raise ModelLoadError(f"cannot build {shorten(spec)!r}: {_message(error)}") from error
    except Exception as error:
        raise ModelLoadError(f"building {shorten(spec)!r} failed: {type(error).__name__}: {_message(error)}") \
            from error
    except SystemExit as error:
        raise ModelLoadError(f"building {shorten(spec)!r} {_exit_text(error)}") from error
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{shorten(spec)!r} gave a {type(model).__name__}, not an nn.Module")
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
            f"unknown model {shorten(spec)!r}{_did_you_mean(spec, bundled)}: use a bundled name "
            f"({', '.join(sorted(bundled))}), package.module:factory or path/to/file.py:factory")
    shown = shorten(location)
    if location.endswith(".py") or "/" in location or "\\" in location:
        module = _import_file(location)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ModelLoadError(f"cannot import {shown!r}: {_message(error)}") from error
        except Exception as error:
            raise ModelLoadError(f"importing {shown!r} failed: {type(error).__name__}: {_message(error)}") from error
        except SystemExit as error:
            raise ModelLoadError(f"importing {shown!r} {_exit_text(error)}") from error
    factory = getattr(module, name, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ModelLoadError(f"{shown} has no attribute {shorten(name)!r}{_did_you_mean(name, public)}")
    if not callable(factory):
        raise ModelLoadError(f"{shown}:{shorten(name)} is not callable")
    return factory


def _did_you_mean(word: str, choices) -> str:
    if len(word) > 100:  # nothing that long is a typo of a name
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _import_file(location: str):
    """The module of a ``path/to/file.py``, executed under a private name."""
    shown = shorten(location)
    # os.path, not Path: Path.is_file raises on a name too long for the system
    if os.path.isdir(location):
        raise ModelLoadError(f"{shown} is a folder; MODEL is path/to/file.py:factory")
    if not os.path.isfile(location):
        raise ModelLoadError(f"no such file: {shown}")
    path = Path(location)
    if path.suffix not in importlib.machinery.SOURCE_SUFFIXES:
        raise ModelLoadError(f"{shown} is not a Python file (.py); MODEL is path/to/file.py:factory")
    module_name = f"_shapecalc_user_{abs(hash(path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelLoadError(f"{shown} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing {shown} failed: {type(error).__name__}: {_message(error)}") from error
    except SystemExit as error:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing {shown} {_exit_text(error)}") from error
    return module


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
