"""What a person types: input size specs (``HxW``) and ``KEY=VALUE`` model arguments.

Parsed without torch (only sympy, for the sizes), so a malformed argument is
refused in a fraction of a second, before the framework loads; ``trace``
re-exports these names.  Every user string echoed in an error goes through
:func:`shorten`: a 100 KB argument must not become a 100 KB error line.
Errors name the bad parameter in the ``argument`` field, not in their text:
the CLI names it as the flag that was typed.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import sympy

from shapecalc._errors import InputSpecError, ModelLoadError
from shapecalc.engine.symbolic import parse_size_text, size_symbol

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: at most 3 spatial axes (Conv3d); 3 names of MAX_NAME_LENGTH and separators fit
MAX_SIZES = 3
MAX_NAME_LENGTH = 32
MAX_SPEC_LENGTH = 120
#: user text longer than this is shown with its middle elided
ECHO_LIMIT = 60


def shorten(text: Any, limit: int = ECHO_LIMIT) -> str:
    """``text`` for an error message: whole when short, else its start and end
    (a long path keeps its file name) around ``...``."""
    text = str(text)
    if len(text) <= limit:
        return text
    tail = (limit - 3) // 3
    return f"{text[:limit - 3 - tail]}...{text[len(text) - tail:]}"


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
            f"{len(self.sizes)} size{'' if len(self.sizes) == 1 else 's'} "
            f"but the model has {count} spatial {'axis' if count == 1 else 'axes'}",
            argument="input", value=shorten(self.text))


def parse_input_spec(text: str, *, argument: str = "input") -> InputSpec:
    """Parse ``H``, ``HxW``, ``512x384``, ``Hx384`` or ``D,H,W`` without eval;
    ``argument``: the parameter a bad spec is reported as."""
    if not isinstance(text, str) or not text.strip():
        raise InputSpecError("it is empty; give sizes like H, HxW or 512x384", argument=argument,
                             value=text if isinstance(text, str) else shorten(repr(text)))
    cleaned = text.strip()

    def bad(reason: str) -> InputSpecError:
        return InputSpecError(reason, argument=argument, value=shorten(cleaned))

    # Bounds first: nothing below should scale with a pasted megabyte.
    if len(cleaned) > MAX_SPEC_LENGTH:
        raise bad(f"{len(cleaned)} characters; give at most {MAX_SIZES} sizes like H, HxW or 512x384")
    separator = "," if "," in cleaned else "x"
    parts = [part.strip() for part in cleaned.split(separator)]
    if len(parts) > MAX_SIZES:
        raise bad(f"at most {MAX_SIZES} spatial sizes")
    sizes = []
    for part in parts:
        if not part:
            if separator == "x":
                raise bad("'x' is the separator between sizes (HxW, 512x384), so it cannot be or end a size "
                          "name; name sizes H, W, D")
            raise bad("an empty size between ','")
        if part.isdigit():
            try:
                sizes.append(sympy.Integer(parse_size_text(part)))
            except InputSpecError as error:
                raise bad(error.reason) from error
        elif IDENTIFIER.match(part) and not keyword.iskeyword(part):
            if len(part) > MAX_NAME_LENGTH:
                raise bad(f"size name {shorten(part, 20)!r} is longer than {MAX_NAME_LENGTH} characters")
            if hasattr(sympy, part) or part in {"floor", "ceiling", "Min", "Max"}:
                raise bad(f"size symbol {part!r} clashes with a sympy name; choose another (e.g. H, W, D)")
            sizes.append(size_symbol(part))
        else:
            raise bad("each size is a positive integer or a name (H, W), separated by 'x' or ','")
    return InputSpec(cleaned, tuple(sizes))


def parse_expected_output(text: str) -> InputSpec:
    """The expected output size: spelled like an input spec, in the input's symbols."""
    try:
        return parse_input_spec(text, argument="expect_output")
    except InputSpecError as error:
        raise InputSpecError("give sizes like H, HxW or 512x384 in the symbols of the input",
                             argument="expect_output", value=error.value) from error


def parse_model_args(pairs: Sequence[str], *, argument: str = "arg") -> dict[str, Any]:
    """``KEY=VALUE`` pairs: ints, floats, true/false/none, else strings (no
    eval).  A key given twice is an error: silently keeping one of them would
    analyse a model the person did not ask for.  ``argument``: the parameter
    a bad pair is reported as (``"concrete"`` for forward() arguments)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not IDENTIFIER.match(key):
            raise ModelLoadError("expected KEY=VALUE", argument=argument, value=shorten(pair))
        if key in out:
            raise ModelLoadError(f"key {shorten(key, 30)} is given twice; give each key once",
                                 argument=argument, value=shorten(pair))
        out[key] = _literal(raw.strip())
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


#: typical sizes of the docs: each value is a column of every page's layer table
MAX_TYPICAL_SIZES = 8


def parse_sizes(text: Optional[str]) -> Optional[list[int]]:
    """``"224,500,513"`` -> ``[224, 500, 513]`` (None stays None)."""
    if text is None:
        return None
    usage = "give positive sizes separated by commas, e.g. 224,500,513"
    if len(text) > MAX_TYPICAL_SIZES * 8:
        raise InputSpecError(f"{len(text)} characters; {usage}", argument="sizes", value=shorten(text))
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() and 1 <= int(p) <= 10**6 for p in parts):
        raise InputSpecError(usage, argument="sizes", value=shorten(text))
    if len(parts) > MAX_TYPICAL_SIZES:
        raise InputSpecError(f"at most {MAX_TYPICAL_SIZES} sizes (one table column each)",
                             argument="sizes", value=shorten(text))
    return [int(p) for p in parts]
