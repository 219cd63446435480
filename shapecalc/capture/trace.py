"""Getting a graph: MODEL specs, input specs, and torch.fx tracing."""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import types
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from weakref import WeakKeyDictionary

import torch
import torch.fx
import torch.nn as nn

from shapecalc._errors import InputSpecError, ModelLoadError, TraceError
# parsed torch-free in specs; re-exported here, where callers have always found them
from shapecalc.capture.specs import InputSpec, parse_input_spec, parse_model_args, shorten  # noqa: F401


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


def _file_module_name(path: Path) -> str:
    return f"_shapecalc_user_{abs(hash(path.resolve()))}"


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
    module_name = _file_module_name(path)
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


#: GraphModule.meta key of the concrete arguments forward() was traced with
CONCRETE_KEY = "shapecalc_concrete_args"

#: what the advice of a trace error says works (torch.fx.wrap wraps functions, not modules)
UNTRACEABLE_ADVICE = (
    "Python control flow on a size or a value cannot be traced: move that part into its own nn.Module "
    "(or function), mark it a leaf and give it a size rule with shapecalc.rule; or, when the branch "
    "is on an argument of forward(), trace with that argument concrete "
    "(docs/guide.md, 'Rules for your own layers and functions')")


@dataclass(frozen=True)
class TracingOptions:
    """What every trace in a :func:`tracing` block uses besides the defaults.

    ``leaf``: module classes and functions (or ``package.module:Name`` /
    ``path/to/file.py:Name`` specs, resolved when a trace needs them) that
    stay one node; ``concrete_args``: forward() arguments fixed to a value
    (torch.fx's ``concrete_args``)."""

    leaf: tuple = ()
    concrete_args: Mapping[str, Any] | None = None


_TRACING: ContextVar[TracingOptions] = ContextVar("shapecalc_tracing", default=TracingOptions())


@contextmanager
def tracing(*, leaf: Sequence = (), concrete_args: Mapping[str, Any] | None = None) -> Iterator[TracingOptions]:
    """Within the block, every trace (analyze, verify, check, docs) also
    treats ``leaf`` as leaves and traces with ``concrete_args``; blocks nest
    (leaves add up, inner concrete arguments win)."""
    outer = _TRACING.get()
    leaf = _leaf_items(leaf)
    merged = TracingOptions(outer.leaf + leaf, {**(outer.concrete_args or {}), **_concrete_items(concrete_args)}
                            or None)
    token = _TRACING.set(merged)
    try:
        yield merged
    finally:
        _TRACING.reset(token)


def _leaf_items(leaf) -> tuple:
    if isinstance(leaf, (str, type)) or callable(leaf):
        leaf = (leaf,)
    try:
        items = tuple(leaf)
    except TypeError:
        raise InputSpecError(f"leaf must be a module class, a function, a 'package.module:Name' spec or a "
                             f"list of them, got {type(leaf).__name__}") from None
    for item in items:
        if isinstance(item, str):
            _split_leaf_spec(item)
        elif not (isinstance(item, type) and issubclass(item, nn.Module)) and not callable(item):
            raise InputSpecError(f"leaf {shorten(repr(item), 60)} is neither an nn.Module class, a function nor "
                                 "a 'package.module:Name' spec")
    return items


def _concrete_items(concrete_args) -> dict:
    if concrete_args is None:
        return {}
    if not isinstance(concrete_args, Mapping):
        raise InputSpecError(f"concrete_args must be a dict of forward() argument names to values, "
                             f"got {type(concrete_args).__name__}")
    for name in concrete_args:
        if not (isinstance(name, str) and name.isidentifier()):
            raise InputSpecError(f"concrete_args key {shorten(repr(name), 60)} is not an argument name")
    return dict(concrete_args)


def _split_leaf_spec(spec: str) -> tuple[str, str]:
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name or not all(part.isidentifier() for part in name.split(".")):
        raise InputSpecError(f"bad leaf {shorten(spec)!r}: give package.module:Name or path/to/file.py:Name")
    return location, name


def resolve_leaf(spec: str):
    """The class or function a leaf spec names.  A file already loaded as a
    MODEL is not executed again: its classes must be the ones the model uses."""
    location, name = _split_leaf_spec(spec)
    shown = shorten(spec)
    if location.endswith(".py") or "/" in location or "\\" in location:
        loaded = sys.modules.get(_file_module_name(Path(location))) if os.path.isfile(location) else None
        module = loaded or _import_file(location)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise InputSpecError(f"bad leaf {shown!r}: cannot import {shorten(location)!r}: {_message(error)}") \
                from error
        except Exception as error:
            raise InputSpecError(f"bad leaf {shown!r}: importing {shorten(location)!r} failed: "
                                 f"{type(error).__name__}: {_message(error)}") from error
    value = module
    for part in name.split("."):
        value = getattr(value, part, None)
        if value is None:
            public = [n for n in dir(module) if not n.startswith("_")]
            raise InputSpecError(f"bad leaf {shown!r}: {shorten(location)} has no attribute "
                                 f"{shorten(name)!r}{_did_you_mean(name, public)}")
    if not (isinstance(value, type) and issubclass(value, nn.Module)) and not isinstance(value, types.FunctionType):
        raise InputSpecError(f"bad leaf {shown!r}: {type(value).__name__} is neither an nn.Module class nor a "
                             "Python function")
    return value


def registered_leaf(module: nn.Module) -> bool:
    """A module whose exact class has a size rule: a leaf, so that rule fires.
    (Only the exact class: a subclass may override forward, e.g. a conv with
    'same' padding computed in forward, and is traced through.)"""
    from shapecalc.engine.rules import RULES, registry

    try:
        # a library class keyed by name (einops' Rearrange) counts too
        return type(module) in RULES or registry._qualified(type(module)) in RULES
    except TypeError:  # an unhashable class
        return False


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with shapecalc's leaf policy: torch.nn layers, every
    module class with a size rule, and the classes the caller named."""

    def __init__(self, leaf_classes: tuple, leaf_functions: tuple):
        super().__init__(autowrap_functions=leaf_functions)
        self._leaf_classes = leaf_classes

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (super().is_leaf_module(m, module_qualified_name) or registered_leaf(m)
                or isinstance(m, self._leaf_classes))


def leaf_policy(leaf: Sequence = ()) -> tuple[tuple, tuple]:
    """(leaf module classes, leaf functions) of one trace: ``leaf``, those of
    the :func:`tracing` blocks around it, and every Python function with a
    size rule registered through :func:`shapecalc.rule`."""
    from shapecalc.engine.rules import RULES

    items = [resolve_leaf(item) if isinstance(item, str) else item
             for item in (*_TRACING.get().leaf, *_leaf_items(leaf))]
    classes = tuple(dict.fromkeys(i for i in items if isinstance(i, type)))
    functions = [i for i in items if not isinstance(i, type)]
    # a user's Python function with a rule must stay one node for its rule to
    # fire; torch's own functions are call_function nodes already
    functions += [key for key in RULES if isinstance(key, types.FunctionType)
                  and not (key.__module__ or "").startswith("torch")]
    functions += _imported_functions_keyed_by_name(RULES)
    return classes, tuple(dict.fromkeys(functions))


def _imported_functions_keyed_by_name(rules) -> list:
    """The Python functions of rules keyed by qualified name (einops.rearrange)
    whose library the model has imported already: shapecalc imports none."""
    from shapecalc.engine.rules import QualifiedName

    found = []
    for key in rules:
        if not isinstance(key, QualifiedName):
            continue
        module_name, _, name = key.name.rpartition(".")
        value = getattr(sys.modules.get(module_name), name, None)
        if isinstance(value, types.FunctionType):
            found.append(value)
    return found


class _BoundArguments(nn.Module):
    """``model`` called with its concrete forward() arguments: what the
    fidelity check compares the traced graph with."""

    def __init__(self, model: nn.Module, concrete_args: Mapping[str, Any]):
        super().__init__()
        self.model, self._concrete_args = model, dict(concrete_args)

    def forward(self, x):
        return self.model(x, **self._concrete_args)


def _check_concrete_args(model: nn.Module, concrete_args: Mapping[str, Any]) -> None:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for name in concrete_args:
        if name not in parameters:
            raise InputSpecError(f"concrete argument {shorten(name, 40)!r} is not an argument of "
                                 f"{type(model).__name__}.forward{shorten(str(inspect.signature(model.forward)), 80)}")


def trace_module(model: nn.Module, *, channels: int | None = None, dimensions: int | None = None,
                 sizes: Sequence[Sequence[int]] = (), batch: int = 1, check: bool = True,
                 leaf: Sequence = (), concrete_args: Mapping[str, Any] | None = None) -> torch.fx.GraphModule:
    """Trace with torch.fx; standard torch.nn layers, module classes with a
    size rule and the classes and functions in ``leaf`` stay leaves (one node
    each), and forward() arguments in ``concrete_args`` are fixed to their
    values (both add to those of an enclosing :func:`tracing` block).

    With ``check`` (the default) the graph is believed only after it and the
    module gave the same output shapes on the meta device at concrete inputs
    (``sizes`` first, then fidelity.CANDIDATE_SIZES; ``channels`` and
    ``dimensions`` default to what the first layer says); an unfaithful trace
    raises TraceError.  The outcome is in ``graph_module.meta[FIDELITY_KEY]``."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    original = model
    leaf_classes, leaf_functions = leaf_policy(leaf)
    concrete = {**(_TRACING.get().concrete_args or {}), **_concrete_items(concrete_args)}
    tracer = _Tracer(leaf_classes, leaf_functions)
    if tracer.is_leaf_module(model, ""):
        # A bare torch.nn layer (or a leaf with a rule): its forward is not
        # written to be traced (ConvTranspose branches on output_size); trace
        # a call of it instead.
        if concrete:
            raise InputSpecError(f"{type(model).__name__} is a leaf: it is traced as one call, "
                                 "so it takes no concrete arguments")
        model = nn.Sequential(model)
    _check_concrete_args(model, concrete)
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
        graph_module = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {first}. {UNTRACEABLE_ADVICE}") from error
    except SystemExit as error:
        raise TraceError(f"forward() of {type(model).__name__} {_exit_text(error)}") from error
    if concrete:
        _bake_concrete_args(graph_module, model, concrete)
    graph_module.meta["shapecalc_build_note"] = _BUILD_NOTES.get(original)
    if check:
        check_fidelity(original, graph_module, channels=channels, dimensions=dimensions, sizes=sizes, batch=batch)
    return graph_module


def _bake_concrete_args(graph_module: torch.fx.GraphModule, model: nn.Module, concrete: Mapping[str, Any]) -> None:
    """fx keeps a placeholder per concrete argument (with forward()'s default,
    guarded by an assert that it equals the traced value); its default becomes
    the traced value, so a call with the input alone runs the traced branch."""
    graph_module.meta[CONCRETE_KEY] = dict(concrete)
    # placeholders come in forward()'s parameter order (fx may rename them: flag_1)
    names = [name for name, p in inspect.signature(model.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    for name, node in zip(names, placeholders):
        if name in concrete:
            node.args = (concrete[name],)
    graph_module.recompile()


def check_fidelity(model: nn.Module, graph_module: torch.fx.GraphModule, *, channels: int | None = None,
                   dimensions: int | None = None, sizes: Sequence[Sequence[int]] = (), batch: int = 1):
    """Compare ``graph_module`` with ``model`` (see trace_module); the result
    is kept in ``graph_module.meta[FIDELITY_KEY]`` and returned."""
    from shapecalc.capture.fidelity import FidelityCheck, candidate_shapes, check_trace

    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    concrete = graph_module.meta.get(CONCRETE_KEY)
    if concrete:
        model = _BoundArguments(model, concrete)
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
    """What the layers that consume the input say, as their rules tell it:
    the number of spatial axes (the first rule that knows its rank) and the
    input channels (the first layer that reads the channels).  Only ops whose
    rule keeps the channel axis as it is are followed: a later layer (after a
    stem conv, or reached through ``x.shape``) says nothing about the input."""
    from shapecalc.engine import rules

    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return None, None
    frontier, seen = [placeholders[0]], set()
    dims = None
    while frontier:
        node = frontier.pop(0)
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            found = rules.node_rule(user, graph_module)
            if found is None:
                continue
            subject = graph_module.get_submodule(user.target) if user.op == "call_module" else user
            if dims is None:
                dims = found.rank_of(subject)
            channels = None
            if isinstance(found.channels, str):
                channels = getattr(subject, found.channels, None)
            elif found.channels is not None:
                channels = found.channels(user, graph_module)
            if channels is not None:
                return dims if dims is not None else found.rank_of(subject), channels
            if any(a is node for a in user.args[:2]) and found.keeps_channels_of(user):
                frontier.append(user)
    return dims, None


def signature_of(factory) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(...)"


def op_label(node: torch.fx.Node, graph_module: torch.fx.GraphModule) -> str:
    """What a graph node runs, for a person: the module's class
    (``Conv2d``, a user's ``HalfSize``), ``.view`` for a tensor method, the
    function's name, ``input`` for the input."""
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        return type(graph_module.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f".{node.target}"
    if isinstance(node.target, torch._ops.OpOverload):  # an ATen graph's op: aten.convolution, shapecalc.interpolate
        namespace, _, op = node.target._schema.name.partition("::")
        return f"{namespace}.{op}"
    return getattr(node.target, "__name__", str(node.target))
