"""The ``shapecalc`` command line: thin commands over the library.

Every command parses its arguments, calls library functions and prints what
they return.  Errors are one line on stderr: exit 2 for bad usage or input,
1 for a finding (a size the model cannot run at, a failed check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Optional, Sequence

from shapecalc._errors import ShapecalcError

FORMATS = ("table", "markdown", "json")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


#: the width when neither COLUMNS nor any terminal says (a file or CI log)
UNKNOWN_WIDTH = 200
#: COLUMNS beyond this is treated as this (tables are never wider than their content anyway)
MAX_WIDTH = 10_000


def output_width() -> int:
    """COLUMNS when it is a positive integer; else the width of the terminal
    behind stdout, stderr or stdin (``trace ... | less`` still has one); else
    UNKNOWN_WIDTH.  A COLUMNS of 0, negative or not a number is ignored."""
    text = os.environ.get("COLUMNS", "").strip()
    if text.isascii() and text.isdigit() and int(text) > 0:
        return min(int(text), MAX_WIDTH)
    for stream in (sys.stdout, sys.stderr, sys.stdin):
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            continue
        if columns > 0:
            return columns
    return UNKNOWN_WIDTH


def _console():
    """The one Console, as wide as :func:`output_width` says."""
    from rich.console import Console

    return Console(soft_wrap=False, width=output_width())


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="bundled name (fcn8s, deeplabv3), package.module:factory or path/to/file.py:factory")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the model factory (repeatable), e.g. --arg backbone=resnet101")
    parser.add_argument("--channels", type=int, default=None, metavar="N",
                        help="input channels (default: from the first layer that consumes the input)")
    _add_tracing_arguments(parser)


#: the front ends --capture takes (shapecalc.analysis.CAPTURES, spelled out so that parsing does not import torch)
CAPTURES = ("fx", "aten", "auto")


def _add_tracing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--capture", choices=CAPTURES, default="fx",
                        help="front end: fx (torch.fx, fast; the default), aten (PyTorch's symbolic tracing, for "
                             "models whose Python looks at sizes: the valid sizes become pieces, each region of "
                             "the size space mapped to a graph or to the model's own error) or auto (fx, and aten "
                             "where fx cannot trace the model)")
    parser.add_argument("--max-captures", type=_positive_int, default=None, metavar="N",
                        help="with aten/auto: at most N captures while exploring regions (default: 32)")
    parser.add_argument("--max-seconds", type=_positive_float, default=None, metavar="S",
                        help="with aten/auto: stop exploring regions after S seconds (default: 120)")
    parser.add_argument("--leaf", action="append", default=[], metavar="package.module:Name",
                        help="a module class or function (or path/to/file.py:Name) traced as one node, whose size "
                             "rule comes from shapecalc.rule (repeatable)")
    parser.add_argument("--concrete", action="append", default=[], metavar="NAME=VALUE",
                        help="trace with forward()'s argument NAME fixed to VALUE (an int, float, True/False/None "
                             "or a string; repeatable), as torch.fx concrete_args")


def _capture(args) -> dict:
    """The --capture, --max-captures and --max-seconds options as analyze()'s keywords."""
    return {"capture": getattr(args, "capture", "fx") or "fx", "max_captures": getattr(args, "max_captures", None),
            "max_seconds": getattr(args, "max_seconds", None)}


def _tracing(args):
    """The --leaf and --concrete options in force while a command runs
    (checked before torch loads; the named leaves are imported when a trace
    needs them, after the model's own file)."""
    if getattr(args, "capture", "fx") == "fx":
        for flag in ("max_captures", "max_seconds"):
            if getattr(args, flag, None) is not None:
                # a bound on nothing: say so rather than let it look in force
                raise_usage(f"{_flag(None, flag)} bounds the ATen front end's exploration; give --capture aten "
                            "or --capture auto with it")
    leaves, pairs = getattr(args, "leaf", None) or [], getattr(args, "concrete", None) or []
    if getattr(args, "capture", "fx") == "aten" and (leaves or pairs):
        # torch.fx's options: the ATen front end traces through every module and takes forward() as called
        raise_usage(f"{'--leaf' if leaves else '--concrete'} applies to torch.fx tracing; --capture aten does not "
                    "use it (--capture auto uses it for the torch.fx attempt)")
    if not leaves and not pairs:
        return contextlib.nullcontext()
    from shapecalc.capture.specs import parse_model_args

    for leaf in leaves:
        location, sep, name = leaf.rpartition(":")
        if not sep or not location or not all(part.isidentifier() for part in name.split(".")):
            raise_usage(f"bad --leaf {leaf[:80]!r}: expected package.module:Name or path/to/file.py:Name")
    concrete_args = parse_model_args(pairs, argument="concrete")
    from shapecalc.capture.trace import tracing

    return tracing(leaf=leaves, concrete_args=concrete_args)


#: per command, the flag of a library parameter not spelled ``--`` + its name
_FLAGS = {"export-spec": {"max_size": "--max"}}


def _flag(command: Optional[str], argument: str) -> str:
    """The flag a person typed for the library's parameter ``argument``."""
    return _FLAGS.get(command, {}).get(argument) or f"--{argument.replace('_', '-')}"


def _error_line(error: ShapecalcError, command: Optional[str] = None) -> str:
    """The error as one line, its input spec and bad parameter named as the
    flags that gave them (the library names them in its own terms)."""
    if not hasattr(error, "message"):
        return _one_line(error)
    return _one_line(error.message(input_text=lambda spec: f"--input {spec}",
                                   argument_text=lambda argument: _flag(command, argument)))


def _analysis(args):
    from shapecalc.capture.specs import parse_input_spec, parse_model_args

    _freeze_loaded_objects(args)  # sympy's objects: torch's import then does not rescan them
    # what was typed is checked before torch loads: a typo fails at once
    spec = parse_input_spec(args.input)
    model_args = parse_model_args(args.arg)
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    from shapecalc.analysis import analyze
    from shapecalc.capture.trace import load_model

    _freeze_loaded_objects(args)

    with _user_output_to_stderr(), _capture_progress(args) as progress:
        model = load_model(args.model, model_args)
        return analyze(model, spec, channels=args.channels, name=args.model, progress=progress, **_capture(args))


def _freeze_loaded_objects(args) -> None:
    """When main() is the whole process (the console script, ``python -m
    shapecalc``), move every object alive now out of the garbage collector's
    sight: torch, sympy and shapecalc's modules are a few million objects,
    all kept until exit, and each full collection (several while a model is
    analysed, and one as the interpreter exits) would scan them all again,
    about 0.3 s of a trace's CPU time.  A program that calls main() itself
    keeps its collector as it was."""
    if getattr(args, "whole_process", False):
        import gc

        gc.freeze()


@contextlib.contextmanager
def _capture_progress(args, console=None):
    """With the ATen front end on a terminal: a transient status line on
    stderr per capture (``capturing at 224x223``), since exploring takes
    seconds; yields the callback for analyze(progress=), or None."""
    if getattr(args, "capture", "fx") == "fx":
        yield None
        return
    from rich.console import Console

    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with console.status("ATen capture") as status:
        yield lambda line: status.update(f"ATen capture: {line}")


def _user_output_to_stderr():
    """While model code runs (import, factory, forward): its prints go to
    stderr, so stdout carries only shapecalc's output (JSON stays valid)."""
    return contextlib.redirect_stdout(sys.stderr)


def raise_usage(message: str):
    from shapecalc._errors import InputSpecError

    raise InputSpecError(message)


# ---------------------------------------------------------------------------
# trace


def _add_trace(subparsers) -> None:
    parser = subparsers.add_parser(
        "trace", help="sizes, crops, output and valid inputs of every layer",
        description="Trace MODEL (torch.fx; --capture aten: PyTorch's symbolic tracing) and show, for every layer, its spatial size as an exact "
                    "expression of the input, the crop offsets (derived and as coded), the output size and "
                    "the set of input sizes for which the forward pass runs.")
    _add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="SPEC",
                        help="input size: H, HxW, 512, 512x384, Hx384 (names are symbols; 1 or 3 parts for 1-D/3-D nets)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(handler=_trace)


def _trace(args) -> int:
    from shapecalc._errors import SizeError

    try:
        analysis = _analysis(args)
    except SizeError as error:
        return _explained_size_error(args, error)
    from shapecalc.output.report import render_markdown, render_table, to_json

    if args.format == "json":
        print(json.dumps(to_json(analysis), indent=2))
    elif args.format == "markdown":
        print(render_markdown(analysis), end="")
    else:
        # crop=False: below the narrowest layout lines run long rather than lose text
        _console().print(render_table(analysis), crop=False)
    return 0


# ---------------------------------------------------------------------------
# cost


def _add_cost(subparsers) -> None:
    parser = subparsers.add_parser(
        "cost", help="FLOPs, MACs, parameters and activation memory as exact expressions of the input size",
        description="Trace MODEL and give, per layer and in total, FLOPs (torch.utils.flop_counter.FlopCounterMode's "
                    "convention: a multiply-accumulate counts 2, only convolutions and matrix products count), "
                    "multiply-accumulates, parameters, activation memory (elements and bytes) and the peak "
                    "activation memory of an inference forward pass, as exact expressions in the input symbols.")
    _add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="SPEC",
                        help="input size: H, HxW, 512, 512x384, Hx384 (names are symbols)")
    # the keys of shapecalc.answers.cost.DTYPES, spelled out so that parsing does not import torch
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"), default="float32",
                        help="element type of floating activations, for bytes (default: float32)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(handler=_cost)


def _cost(args) -> int:
    from shapecalc.capture.specs import parse_input_spec, parse_model_args

    spec = parse_input_spec(args.input)  # fails before torch loads
    model_args = parse_model_args(args.arg)
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    from shapecalc.analysis import analyze
    from shapecalc.answers.cost import cost
    from shapecalc.output.cost_report import cost_markdown, cost_table, cost_to_json
    from shapecalc.capture.trace import load_model

    with _user_output_to_stderr(), _capture_progress(args) as progress:
        model = load_model(args.model, model_args)
        result = cost(analyze(model, spec, channels=args.channels, name=args.model, progress=progress,
                              **_capture(args)), model, dtype=args.dtype)
    if args.format == "json":
        print(json.dumps(cost_to_json(result), indent=2))
    elif args.format == "markdown":
        print(cost_markdown(result), end="")
    else:
        _console().print(cost_table(result), crop=False)
    return 0


def _explained_size_error(args, error) -> int:
    """A concrete size the model cannot run at is a finding: the explanation
    (binding requirement, sizes leading there, nearest valid sizes, padding)
    goes to stdout (JSON with --format json), the one-line error to stderr, exit 1."""
    from shapecalc.answers.sizes import explain_failure
    from shapecalc.capture.specs import parse_input_spec, parse_model_args
    from shapecalc.capture.trace import load_model

    with _user_output_to_stderr():
        model = load_model(args.model, parse_model_args(args.arg))
        failure = explain_failure(model, parse_input_spec(args.input), error, channels=args.channels, name=args.model,
                                  **_capture(args))
    if failure is None:
        raise error
    print(json.dumps(failure.to_json(), indent=2) if args.format == "json" else failure.to_text(), end=""
          if args.format != "json" else "\n")
    print(f"shapecalc {args.command}: error: {_error_line(error, args.command)}", file=sys.stderr)
    return error.exit_code


# ---------------------------------------------------------------------------
# sizes


def _add_sizes(subparsers) -> None:
    parser = subparsers.add_parser(
        "sizes", help="the valid (and aligned) input sizes, the nearest ones to N and how to pad to one",
        description="Answer which input sizes MODEL runs at: per axis the valid and aligned sizes, with --near N "
                    "the nearest valid sizes below and above N and the padding that makes N valid, and the "
                    "smallest m such that padding to a multiple of m always works. Exit 0 when it answered, "
                    "even if N is not valid.")
    _add_model_arguments(parser)
    parser.add_argument("--input", default="H", metavar="SPEC", help="symbolic input size: H or HxW (default: H)")
    parser.add_argument("--near", default=None, metavar="N", help="a size (every axis) or NxM (per axis)")
    parser.add_argument("--range", default=None, metavar="A..B", help="list the valid sizes from A to B")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    parser.set_defaults(handler=_sizes)


def _sizes(args) -> int:
    from shapecalc.capture.specs import parse_input_spec
    from shapecalc.answers.sizes import parse_near, parse_range

    spec = parse_input_spec(args.input)
    if not spec.symbols:
        raise_usage(f"sizes needs a symbolic --input such as H or HxW (got {args.input!r}); "
                    "give the concrete size as --near")
    near = parse_near(args.near, len(spec.symbols))
    bounds = parse_range(args.range)
    from shapecalc.answers.sizes import sizes_report

    report = sizes_report(_analysis(args), near=near, range=bounds)
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else report.to_text(), end=""
          if args.format != "json" else "\n")
    return 0


# ---------------------------------------------------------------------------
# verify


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_verify(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="check the engine's sizes and valid inputs against real forward passes",
        description="Draw input sizes from MODEL's valid domain (always its smallest sizes and a few large ones), "
                    "run real forward passes on the device and compare every node's shape with the engine's "
                    "prediction; sizes outside the domain must fail. A mismatch is shrunk to the smallest "
                    "failing input and reported with its node. Exit 0 pass; 1 mismatch, or no valid size compared; "
                    "2 usage, or --max-size excluding every valid size.")
    _add_model_arguments(parser)
    parser.add_argument("--input", default=None, metavar="SPEC",
                        help="input size (default: one symbol per spatial axis, e.g. HxW)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "meta"), default="auto",
                        help="where to run (auto: cuda if available, else cpu; meta: shapes only)")
    parser.add_argument("--examples", type=_positive_int, default=None, metavar="N",
                        help="valid sizes to run (default: 200 on meta/cuda, 40 on cpu)")
    parser.add_argument("--max-size", type=_positive_int, default=None, metavar="N",
                        help="largest size drawn (default: 2048 meta, 1024 cuda, 512 cpu)")
    parser.add_argument("--width", type=_positive_float, default=None, metavar="W",
                        help="width= for the model factory (bundled models: thinner channels, same sizes)")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing sizes (default: 0)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    parser.set_defaults(handler=_verify)


def _verify(args) -> int:
    from shapecalc.capture.specs import parse_input_spec, parse_model_args

    if args.input is not None:
        parse_input_spec(args.input)  # fails before torch loads
    model_args = parse_model_args(args.arg)
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    from shapecalc.verify import verify

    with _progress_bar("verifying") as progress, _user_output_to_stderr():
        report = verify(args.model, args.input, device=args.device, examples=args.examples, max_size=args.max_size,
                        kwargs=model_args, width=args.width, channels=args.channels,
                        seed=args.seed, progress=progress, **_capture(args))
    print(json.dumps(report.as_data(), indent=2) if args.format == "json" else report.summary())
    return report.exit_code


class _progress_bar:
    """A transient rich progress bar on stderr (only on a terminal)."""

    def __init__(self, label: str):
        self.label, self._progress, self._task = label, None, None

    def __enter__(self):
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=max(total, done))

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


# ---------------------------------------------------------------------------
# check


def _add_check(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="fail (exit 1) on misaligned crops or merges, a wrong output size or large resampling shifts",
        description="Check MODEL for every valid input size (or the concrete one): every crop and merge exactly "
                    "aligned, the output of the expected size, no resample shifting pixels by more than "
                    "--max-shift. Prints one line per finding; exit 0 when there is no error, 1 otherwise.")
    _add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="SPEC", help="input size: H, HxW, 512, 512x384, Hx384")
    parser.add_argument("--expect-output", metavar="SPEC", default=None,
                        help="the output's spatial size, in the symbols of --input (e.g. H or HxW)")
    parser.add_argument("--max-shift", type=float, metavar="PIXELS", default=None,
                        help="largest resampling shift allowed (default: shifts are warnings, not failures)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    parser.set_defaults(handler=_check)


def _check(args) -> int:
    from shapecalc.capture.specs import parse_expected_output, parse_input_spec, parse_model_args

    spec = parse_input_spec(args.input)
    if args.expect_output is not None:
        parse_expected_output(args.expect_output)  # its spelling fails before torch loads, too
    model_args = parse_model_args(args.arg)
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    from shapecalc.answers.checking import check_model
    from shapecalc.capture.trace import load_model

    with _user_output_to_stderr():
        model = load_model(args.model, model_args)
        report = check_model(model, spec, expect_output=args.expect_output, max_shift=args.max_shift,
                             channels=args.channels, name=args.model, **_capture(args))
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else report.to_text(), end="\n" if args.format == "json" else "")
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------
# docs


def _add_docs(subparsers) -> None:
    parser = subparsers.add_parser(
        "docs", help="write (or --check) one Markdown size page per model",
        description="Write one Markdown page per MODEL (default: every bundled model, plus an index): the per-layer "
                    "size table with values at typical sizes, crops and merges with derived offsets, the valid "
                    "input sizes and a Mermaid diagram of the layer graph. With --check, write nothing and exit 1 "
                    "when a page differs from what the code gives now.")
    parser.add_argument("models", nargs="*", metavar="MODEL", help="bundled name, package.module:factory or "
                                                                   "path/to/file.py:factory (default: all bundled)")
    parser.add_argument("--out", default="docs/sizes", metavar="DIR", help="folder of the pages (default: docs/sizes)")
    parser.add_argument("--input", default="H", metavar="SPEC", help="input size spec (default: H)")
    parser.add_argument("--sizes", default=None, metavar="N,N,...",
                        help="typical sizes to show values at (default: 224,500,513)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a stale page")
    parser.add_argument("--force", action="store_true",
                        help="overwrite files in DIR that shapecalc docs did not write (default: refuse)")
    _add_tracing_arguments(parser)
    parser.set_defaults(handler=_docs)


def _docs(args) -> int:
    from shapecalc.capture.specs import parse_input_spec, parse_sizes

    parse_input_spec(args.input)  # fails before torch loads
    sizes = parse_sizes(args.sizes)
    from shapecalc.output.docsgen import generate, regenerate_command, stale_pages, write_pages

    with _user_output_to_stderr():
        pages = generate(args.models, args.input, sizes=sizes, **_capture(args))
    if not args.check:
        for path in write_pages(pages, args.out, force=args.force):
            print(f"wrote {path}")
        return 0
    problems = stale_pages(pages, args.out, complete=not args.models)
    for problem in problems:
        print(problem)
    if problems:
        print(f"regenerate with: {regenerate_command(args.models, args.out, args.input, args.sizes, **_capture(args))}")
        return 1
    count = sum(p.filename.endswith(".md") for p in pages)
    pictures = len(pages) - count
    also = f" and {pictures} picture{'s' if pictures != 1 else ''}" if pictures else ""
    print(f"{count} page{'s' if count != 1 else ''}{also} in {args.out} up to date")
    return 0


# ---------------------------------------------------------------------------
# export-spec


def _add_export_spec(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-spec", help="a torch.export dynamic_shapes spec from the valid sizes, verified by exporting",
        description="Build a torch.export dynamic_shapes spec (named Dims, derived dims for periodic sizes) from "
                    "MODEL's exact valid input sizes, run torch.export.export with it (strict=False, on meta) and "
                    "print it as Python to paste or as JSON, with what it covers. Where export refuses the whole "
                    "valid range, the widest spec it accepts is printed with what it leaves out and the torch "
                    "guard behind it. Exit 0 verified; 1 when no spec was accepted.")
    _add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="SPEC", help="input size: H, HxW, Hx384 (symbols are dims)")
    parser.add_argument("--max", type=_positive_int, default=None, metavar="N",
                        help="largest size in the spec (default: 4096; at most 65536); coverage is counted in 1..N")
    parser.add_argument("--format", choices=("python", "json"), default="python",
                        help="output format (default: python)")
    parser.set_defaults(handler=_export_spec)


def _export_spec(args) -> int:
    from shapecalc.answers.export_spec import DEFAULT_MAX, MAX_LIMIT
    from shapecalc.capture.specs import parse_input_spec, parse_model_args

    spec = parse_input_spec(args.input)  # what was typed is checked before torch loads
    model_args = parse_model_args(args.arg)
    max_size = DEFAULT_MAX if args.max is None else args.max
    if max_size > MAX_LIMIT:
        raise_usage(f"--max must be at most {MAX_LIMIT}, got {max_size}")
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    from shapecalc.answers.export_spec import export_spec
    from shapecalc.capture.trace import load_model

    with _user_output_to_stderr():
        model = load_model(args.model, model_args)
        result = export_spec(model, spec.text, max_size=max_size, channels=args.channels, name=args.model,
                             **_capture(args))
    if args.format == "json":
        print(json.dumps(result.as_data(), indent=2))
    else:
        print(result.python(), end="")
    return 0 if result.verified else 1


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shapecalc", description="Exact spatial sizes, crop offsets and valid input sizes of "
                                                   "convolutional networks, derived symbolically from torch.fx or ATen graphs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_trace(subparsers)
    _add_cost(subparsers)
    _add_verify(subparsers)
    _add_check(subparsers)
    _add_sizes(subparsers)
    _add_docs(subparsers)
    _add_export_spec(subparsers)
    return parser


def _capture_hint(args, error: ShapecalcError) -> str:
    """Where torch.fx could not trace the model, the front end that may."""
    from shapecalc._errors import TraceError

    if getattr(args, "capture", None) != "fx" or not isinstance(error, TraceError) or "control flow" not in str(error):
        return ""
    return "; --capture auto (or aten) traces Python that looks at sizes with PyTorch's symbolic tracing"


def _one_line(error: BaseException) -> str:
    # A factory's or torch's own message may span lines; stderr gets one.
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    args.whole_process = argv is None
    try:
        with _tracing(args):
            return args.handler(args)
    except ShapecalcError as error:
        print(f"shapecalc {args.command}: error: {_error_line(error, args.command)}{_capture_hint(args, error)}",
              file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("shapecalc: interrupted", file=sys.stderr)
        return 130
    except SystemExit as error:  # model code exited where no loader caught it (a forward pass)
        from shapecalc.capture.specs import shorten

        models = getattr(args, "model", None) or ", ".join(getattr(args, "models", None) or ["bundled models"])
        print(f"shapecalc {args.command}: error: model code of {shorten(models)} called "
              f"sys.exit({shorten(repr(error.code), 40)}); model code must not exit the process", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as error:  # a bug: one line unless asked for the traceback
        if os.environ.get("SHAPECALC_DEBUG"):
            raise
        print(f"shapecalc {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
              "(set SHAPECALC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
