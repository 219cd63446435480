"""The ``shapecalc`` command line: thin commands over the library.

Every command parses its arguments, calls library functions and prints what
they return.  Errors are one line on stderr: exit 2 for bad usage or input,
1 for a finding (a size the model cannot run at, a failed check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from ._errors import ShapecalcError

FORMATS = ("table", "markdown", "json")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _console():
    """The one Console.  Piped output gets a wide page so table rows stay
    whole in files and CI logs (rich would otherwise assume 80 columns)."""
    from rich.console import Console

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(soft_wrap=False, width=width)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="bundled name (fcn8s, deeplabv3), package.module:factory or path/to/file.py:factory")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the model factory (repeatable), e.g. --arg backbone=resnet101")
    parser.add_argument("--channels", type=int, default=None, metavar="N",
                        help="input channels (default: from the first layer that consumes the input)")


def _analysis(args):
    from .analysis import analyze
    from .trace import load_model, parse_input_spec, parse_model_args

    spec = parse_input_spec(args.input)
    model = load_model(args.model, parse_model_args(args.arg))
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    return analyze(model, spec, channels=args.channels, name=args.model)


def raise_usage(message: str):
    from ._errors import InputSpecError

    raise InputSpecError(message)


# ---------------------------------------------------------------------------
# trace


def _add_trace(subparsers) -> None:
    parser = subparsers.add_parser(
        "trace", help="sizes, crops, output and valid inputs of every layer",
        description="Trace MODEL with torch.fx and show, for every layer, its spatial size as an exact "
                    "expression of the input, the crop offsets (derived and as coded), the output size and "
                    "the set of input sizes for which the forward pass runs.")
    _add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="SPEC",
                        help="input size: H, HxW, 512, 512x384, Hx384 (names are symbols; 1 or 3 parts for 1-D/3-D nets)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(handler=_trace)


def _trace(args) -> int:
    from .report import render_markdown, render_table, to_json

    analysis = _analysis(args)
    if args.format == "json":
        print(json.dumps(to_json(analysis), indent=2))
    elif args.format == "markdown":
        print(render_markdown(analysis), end="")
    else:
        _console().print(render_table(analysis))
    return 0


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
    from .checking import check_model
    from .trace import load_model, parse_input_spec, parse_model_args

    spec = parse_input_spec(args.input)
    if args.channels is not None and args.channels < 1:
        raise_usage(f"--channels must be positive, got {args.channels}")
    model = load_model(args.model, parse_model_args(args.arg))
    report = check_model(model, spec, expect_output=args.expect_output, max_shift=args.max_shift,
                         channels=args.channels, name=args.model)
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else report.to_text(), end="\n" if args.format == "json" else "")
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shapecalc", description="Exact spatial sizes, crop offsets and valid input sizes of "
                                                   "convolutional networks, derived symbolically from torch.fx graphs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_trace(subparsers)
    _add_check(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except ShapecalcError as error:
        print(f"shapecalc {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("shapecalc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # a bug: one line unless asked for the traceback
        if os.environ.get("SHAPECALC_DEBUG"):
            raise
        print(f"shapecalc {args.command}: internal error: {type(error).__name__}: {error} "
              "(set SHAPECALC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
