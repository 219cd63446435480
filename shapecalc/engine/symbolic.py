"""Every sympy helper shapecalc uses: size symbols, floor division, canonical
form, exact evaluation and printing.

Sizes are integer-valued expressions built from positive integer symbols with
``+``, integer ``*``, :class:`FloorDiv`, ``Min``, ``Max`` and (rarely)
``Piecewise``.  There is one canonical form for rounding: ``ceil(a/b)`` is
always stored as ``FloorDiv(a + b - 1, b)``, nested floor divisions are
collapsed when they constructed, and only the printer chooses between
``floor`` and ``ceiling`` for display.  Generic ``sympy.simplify`` is never
used: it is slow and does not know these identities.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache, reduce
from typing import Callable, Mapping

import sympy
from sympy.printing.str import StrPrinter

from shapecalc._errors import InputSpecError


class FloorDiv(sympy.Function):
    """``floor(p / q)`` for an integer-valued ``p`` and a positive integer ``q``.

    Build it with :func:`floordiv`, which puts it in canonical form; ``eval``
    handles numbers only, as sympy's custom-function guide asks.
    """

    is_integer = True
    nargs = 2

    @classmethod
    def eval(cls, numerator, divisor):
        if numerator.is_Integer and divisor.is_Integer:
            return sympy.Integer(int(numerator) // int(divisor))
        if divisor == 1:
            return numerator
        return None

    @property
    def numerator(self) -> sympy.Expr:
        return self.args[0]

    @property
    def divisor(self) -> int:
        return int(self.args[1])

    def _sympystr(self, printer) -> str:
        # sympy's own str()/repr() print the display form too, so a size a
        # user holds prints as the CLI shows it (ceiling((H + 198)/32)), and
        # sympy.sympify(str(size)) reads it back.
        return _floordiv_text(self, printer)


def size_symbol(name: str) -> sympy.Symbol:
    """The symbol for an input size: a positive integer."""
    return sympy.Symbol(name, integer=True, positive=True)


def as_expr(value) -> sympy.Expr:
    """A python int / sympy value as a sympy expression (never parses text)."""
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, bool):
        return sympy.Integer(int(value))
    if isinstance(value, int):
        return sympy.Integer(value)
    if isinstance(value, float):
        # A double is an exact (dyadic) rational; a nearby decimal is not the
        # value Python computes with (int(90 * 0.7) is 62, not 63).
        return sympy.Rational(*value.as_integer_ratio())
    if isinstance(value, Fraction):
        return sympy.Rational(value.numerator, value.denominator)
    raise TypeError(f"not a size: {value!r}")


def _integer_coefficients(expr: sympy.Expr) -> dict[sympy.Expr, int] | None:
    """Terms of ``expr`` with their integer coefficients, or None when some
    coefficient is not an integer or some term is not integer-valued."""
    coefficients = {}
    for term, coefficient in sympy.expand(expr).as_coefficients_dict().items():
        if not coefficient.is_Integer:
            return None
        if term != 1 and not term.is_integer:
            return None
        coefficients[term] = int(coefficient)
    return coefficients


def _from_terms(terms: Mapping[sympy.Expr, int]) -> sympy.Expr:
    return sympy.Add(*[sympy.Integer(c) * t for t, c in terms.items() if c])


def floordiv(numerator, divisor) -> sympy.Expr:
    """``floor(numerator / divisor)`` in canonical form.

    Uses, for integer ``x``, ``y`` and positive integers ``p``, ``q``:
    ``floor((q*m*x + y)/q) = m*x + floor(y/q)``;
    ``floor((g*x + c)/(g*q)) = floor((x + floor(c/g))/q)``;
    ``floor((floor(x/p) + y)/q) = floor((x + p*y)/(p*q))``.
    sympy knows none of these for its own ``floor``.
    """
    numerator = as_expr(numerator)
    divisor = as_expr(divisor)
    if not (divisor.is_Integer and divisor > 0):
        # A symbolic or negative divisor: no canonical form, keep sympy's floor.
        return sympy.floor(numerator / divisor)
    q = int(divisor)
    if q == 1 and numerator.is_integer:
        return numerator
    terms = _integer_coefficients(numerator)
    if terms is None:
        # Rational coefficients (e.g. from a scale factor): clear denominators.
        denominators = [sympy.fraction(c)[1] for c in sympy.expand(numerator).as_coefficients_dict().values()]
        common = int(reduce(sympy.ilcm, denominators, sympy.Integer(1)))
        scaled = sympy.expand(numerator * common)
        if _integer_coefficients(scaled) is None:
            return sympy.floor(numerator / q)
        return floordiv(scaled, q * common)
    whole: dict[sympy.Expr, int] = {}
    rest: dict[sympy.Expr, int] = {}
    for term, c in terms.items():
        if term == 1:
            # Constants stay inside: 2*floor((H + 229)/32) - 10 keeps the
            # model's own numbers visible, which is how people read sizes.
            rest[term] = c
        elif c % q == 0 or c > q:
            whole[term], rest[term] = divmod(c, q)
        else:
            rest[term] = c
    rest = {t: c for t, c in rest.items() if c}
    extracted = _from_terms(whole)
    if not rest:
        return extracted
    nested = [t for t, c in rest.items() if isinstance(t, FloorDiv) and c == 1]
    if len(nested) == 1:
        inner = nested[0]
        others = _from_terms({t: c for t, c in rest.items() if t is not inner})
        return extracted + floordiv(inner.numerator + inner.divisor * others, inner.divisor * q)
    variable = [c for t, c in rest.items() if t != 1]
    g = math.gcd(q, *variable)
    if g > 1:
        constant = rest.pop(sympy.Integer(1), 0)
        reduced = {t: c // g for t, c in rest.items()}
        reduced[sympy.Integer(1)] = constant // g
        return extracted + floordiv(_from_terms(reduced), q // g)
    return extracted + FloorDiv(_from_terms(rest), sympy.Integer(q))


def merge_floor_terms(expr):
    """Combine floor terms that differ by whole multiples of their divisor.

    ``floor((x + 8)/2) - floor((x - 4)/2)`` is ``6`` for every integer ``x``,
    but sympy keeps both terms because each was built on its own.  Writing
    every ``FloorDiv(e + q*m, q)`` as ``FloorDiv(e, q) + m`` against the first
    term seen with the same divisor and variable part lets them cancel.
    """
    if not isinstance(expr, sympy.Basic) or expr.is_Atom:
        return expr
    args = [merge_floor_terms(a) for a in expr.args]
    if args != list(expr.args):
        expr = expr.func(*args)
    if not expr.is_Add:
        return expr
    representatives: dict[tuple, FloorDiv] = {}
    replacements = {}
    for term in sorted(expr.atoms(FloorDiv), key=sympy.default_sort_key):  # sorted: stable output
        constant, variable = term.numerator.as_coeff_Add()
        if not constant.is_Integer:
            constant, variable = sympy.Integer(0), term.numerator
        key = (variable, term.divisor)
        first = representatives.setdefault(key, term)
        if first is term:
            continue
        first_constant = first.numerator.as_coeff_Add()[0] if first.numerator.as_coeff_Add()[0].is_Integer else 0
        difference = int(constant) - int(first_constant)
        if difference % term.divisor == 0:
            replacements[term] = first + difference // term.divisor
    return expr.xreplace(replacements) if replacements else expr


def fold_multiple_of_floor(expr):
    """``m*c + c*floor(n/q)`` as ``c*floor((n + m*q)/q)`` when that leaves
    no constant in the rounding, ``32 - 32*floor((32 - H)/32)`` ->
    ``32*ceiling(H/32)`` (padding to a multiple).  A negated floor of a
    negated numerator is first written as a ceiling, ``-floor(-n/q) =
    floor((n + q - 1)/q)``.  Other sums keep the model's numbers outside."""
    if not isinstance(expr, sympy.Basic) or expr.is_Atom:
        return expr
    args = [fold_multiple_of_floor(a) for a in expr.args]
    if args != list(expr.args):
        expr = expr.func(*args)
    if not expr.is_Add:
        return expr
    constant, rest = expr.as_coeff_Add()
    terms = sympy.Add.make_args(rest)
    if not constant.is_Integer or len(terms) != 1:
        return expr
    c, floor_term = terms[0].as_coeff_Mul()
    if not (c.is_Integer and isinstance(floor_term, FloorDiv)):
        return expr
    c, q, numerator = int(c), floor_term.divisor, floor_term.numerator
    variable = numerator.as_coeff_Add()[1].as_coefficients_dict().values()
    if c < 0 and all(v < 0 for v in variable):
        c, numerator = -c, sympy.expand(-numerator + q - 1)
    if int(constant) % c:
        return expr
    folded = sympy.expand(numerator + int(constant) // c * q)
    inner = folded.as_coeff_Add()[0]
    if not (inner.is_Integer and int(inner) in (0, q - 1)):
        return expr
    return c * floordiv(folded, q)


def ceildiv(numerator, divisor) -> sympy.Expr:
    """``ceil(numerator / divisor)``, stored in its canonical floor form."""
    numerator = as_expr(numerator)
    divisor = as_expr(divisor)
    if divisor.is_Integer and divisor > 0 and numerator.is_integer:
        return floordiv(numerator + divisor - 1, divisor)
    return -floordiv(-numerator, divisor)


def floor_of(value) -> sympy.Expr:
    """``floor(value)`` for a rational-affine size expression."""
    return floordiv(value, 1)


def is_concrete(value) -> bool:
    return isinstance(value, int) or (isinstance(value, sympy.Basic) and value.is_Number)


def free_size_symbols(expr) -> set[sympy.Symbol]:
    return as_expr(expr).free_symbols if isinstance(expr, (sympy.Basic, int)) else set()


# ---------------------------------------------------------------------------
# relations and clamps, without sympy's evaluation
#
# sympy decides ``Ge(a, b)`` and ``Min(a, b)`` at construction by asking its
# assumptions system about every term: milliseconds per relation between
# floor-laden sizes and tens of milliseconds per Min, rarely with an answer.
# The domain decides such conditions exactly; these settle only what a
# numeric difference settles and otherwise build the unevaluated form.


def _numeric_difference(a: sympy.Expr, b: sympy.Expr):
    # no sympy.expand: it descends into every FloorDiv (milliseconds); sizes
    # are sums of terms with numeric coefficients, which ``-`` already combines
    difference = a - b
    return difference if difference.is_Number else None


def _relation(kind, decide, a, b) -> sympy.Basic:
    a, b = as_expr(a), as_expr(b)
    difference = _numeric_difference(a, b)
    if difference is not None:
        return sympy.true if decide(difference) else sympy.false
    return kind(a, b, evaluate=False)


def ge(a, b) -> sympy.Basic:
    """``a >= b``: true/false when ``a - b`` is a number, else unevaluated."""
    return _relation(sympy.Ge, lambda d: d >= 0, a, b)


def gt(a, b) -> sympy.Basic:
    return _relation(sympy.Gt, lambda d: d > 0, a, b)


def le(a, b) -> sympy.Basic:
    return _relation(sympy.Le, lambda d: d <= 0, a, b)


def lt(a, b) -> sympy.Basic:
    return _relation(sympy.Lt, lambda d: d < 0, a, b)


def eq(a, b) -> sympy.Basic:
    return _relation(sympy.Eq, lambda d: d == 0, a, b)


def _clamp(kind, args, keep_first_when) -> sympy.Expr:
    kept: list[sympy.Expr] = []
    for candidate in dict.fromkeys(as_expr(a) for a in args):
        dominated = False
        for i, other in enumerate(kept):
            difference = _numeric_difference(candidate, other)
            if difference is None:
                continue
            if not keep_first_when(difference):
                kept[i] = candidate  # the newcomer wins against this one
            dominated = True
            break
        if not dominated:
            kept.append(candidate)
    kept = list(dict.fromkeys(kept))
    return kept[0] if len(kept) == 1 else kind(*kept, evaluate=False)


def smallest(*args) -> sympy.Expr:
    """``Min(*args)`` with numerically comparable arguments settled, unevaluated otherwise."""
    return _clamp(sympy.Min, args, lambda d: d >= 0)


def largest(*args) -> sympy.Expr:
    """``Max(*args)`` with numerically comparable arguments settled, unevaluated otherwise."""
    return _clamp(sympy.Max, args, lambda d: d <= 0)


# ---------------------------------------------------------------------------
# exact evaluation


def _compile(expr: sympy.Basic) -> Callable[[Mapping[sympy.Symbol, int]], Fraction | bool]:
    if expr.is_Integer:
        value = int(expr)
        return lambda env: value
    if expr.is_Rational:
        value = Fraction(int(expr.p), int(expr.q))
        return lambda env: value
    if expr.is_Symbol:
        return lambda env: env[expr]
    if expr is sympy.true:
        return lambda env: True
    if expr is sympy.false:
        return lambda env: False
    if isinstance(expr, sympy.Piecewise):
        # before compiling args: a Piecewise's args are (value, condition) pairs
        branches = [(_compile(e), _compile(c)) for e, c in expr.args]

        def piecewise(env):
            for value, condition in branches:
                if condition(env):
                    return value(env)
            raise ValueError("Piecewise without a matching branch")
        return piecewise
    children = [_compile(a) for a in expr.args]
    if expr.is_Add:
        return lambda env: sum(c(env) for c in children)
    if expr.is_Mul:
        def product(env):
            result = 1
            for c in children:
                result *= c(env)
            return result
        return product
    if expr.is_Pow and expr.exp.is_Integer:
        base, exponent = children[0], int(expr.exp)
        return lambda env: Fraction(base(env)) ** exponent
    if isinstance(expr, FloorDiv):
        numerator, divisor = children
        return lambda env: math.floor(Fraction(numerator(env)) / divisor(env))
    if isinstance(expr, sympy.floor):
        return lambda env: math.floor(Fraction(children[0](env)))
    if isinstance(expr, sympy.ceiling):
        return lambda env: math.ceil(Fraction(children[0](env)))
    if isinstance(expr, sympy.Min):
        return lambda env: min(c(env) for c in children)
    if isinstance(expr, sympy.Max):
        return lambda env: max(c(env) for c in children)
    comparisons = {
        sympy.Eq: lambda a, b: a == b, sympy.Ne: lambda a, b: a != b,
        sympy.Lt: lambda a, b: a < b, sympy.Le: lambda a, b: a <= b,
        sympy.Gt: lambda a, b: a > b, sympy.Ge: lambda a, b: a >= b,
    }
    for kind, compare in comparisons.items():
        if isinstance(expr, kind):
            left, right = children
            return lambda env: compare(left(env), right(env))
    if isinstance(expr, sympy.And):
        return lambda env: all(c(env) for c in children)
    if isinstance(expr, sympy.Or):
        return lambda env: any(c(env) for c in children)
    if isinstance(expr, sympy.Not):
        return lambda env: not children[0](env)
    if isinstance(expr, sympy.ITE):
        # sympy turns a relation with a Piecewise side into If-Then-Else
        condition, then, otherwise = children
        return lambda env: then(env) if condition(env) else otherwise(env)
    raise TypeError(f"cannot evaluate {type(expr).__name__} exactly: {expr}")


@lru_cache(maxsize=4096)
def compiled(expr: sympy.Basic) -> Callable[[Mapping[sympy.Symbol, int]], Fraction | bool]:
    """An exact integer/Fraction evaluator for ``expr`` (cached per expression)."""
    return _compile(expr)


def evaluate(expr, env: Mapping[sympy.Symbol, int]):
    """The exact value of ``expr`` at integer sizes ``env`` (int or Fraction)."""
    value = compiled(as_expr(expr))(env)
    if isinstance(value, Fraction) and value.denominator == 1:
        return value.numerator
    return value


# ---------------------------------------------------------------------------
# printing


def _floordiv_parts(expr: FloorDiv, shift: int = 0) -> tuple[str, sympy.Expr, int]:
    """Choose between ``floor((n + shift*q)/q)`` and ``ceiling((n + shift*q - q + 1)/q)``:
    the one with the smaller constant reads best (ties go to floor)."""
    q = expr.divisor
    numerator = sympy.expand(expr.numerator + shift * q)
    constant = int(numerator.as_coeff_Add()[0]) if numerator.as_coeff_Add()[0].is_Integer else 0
    ceiling_constant = constant - (q - 1)
    if abs(ceiling_constant) < abs(constant):
        return "ceiling", numerator - (q - 1), q
    return "floor", numerator, q


def _floordiv_text(expr: FloorDiv, printer, shift: int = 0) -> str:
    name, numerator, q = _floordiv_parts(expr, shift)
    inner = printer._print(numerator)
    if not (numerator.is_Symbol or numerator.is_Number):
        inner = f"({inner})"
    return f"{name}({inner}/{q})"


class _SizePrinter(StrPrinter):
    """Prints canonical sizes as ``ceiling((H + 198)/32)``: parsable by
    ``sympy.sympify`` with floor/ceiling, and close to how people write it."""

    def _print_FloorDiv(self, expr, shift: int = 0):
        return _floordiv_text(expr, self, shift)

    def _print_Add(self, expr, order=None):
        constant, rest = expr.as_coeff_Add()
        floor_terms = [t for t in sympy.Add.make_args(rest) if isinstance(t, FloorDiv)]
        # Fold an integer constant into a lone floor term: floor(x/2) + 1 -> ceiling((x+1)/2)
        if constant.is_Integer and constant != 0 and len(floor_terms) == 1:
            folded = self._print_FloorDiv(floor_terms[0], shift=int(constant))
            others = [t for t in sympy.Add.make_args(rest) if t is not floor_terms[0]]
            if not others:
                return folded
            return super()._print_Add(sympy.Add(*others, sympy.Symbol(folded), evaluate=False))
        return super()._print_Add(expr, order=order)


_PRINTER = _SizePrinter()


def format_expr(expr) -> str:
    """The canonical display string of a size expression."""
    try:
        # the same expression is printed many times (a layer's size in its
        # row, its consumers' messages, JSON); the printer orders terms each
        # time.  Keyed with the type: True == 1 and 2 == Integer(2) hash alike.
        return _formatted(type(expr), expr)
    except TypeError:  # unhashable: print it as it is
        return _format_uncached(expr)


@lru_cache(maxsize=4096)
def _formatted(kind: type, expr) -> str:
    return _format_uncached(expr)


def _format_uncached(expr) -> str:
    if isinstance(expr, bool):
        return str(expr)
    if isinstance(expr, (int, Fraction)):
        expr = as_expr(expr)
    return _PRINTER.doprint(expr)


def display_form(expr):
    """``expr`` with each lone floor term plus a constant folded into one
    floor term, ``floor((H - 1)/2) + 1`` -> ``floor((H + 1)/2)``: the
    identity :func:`format_expr` applies when printing, so ``str()`` of the
    result is the canonical display string (sympy's own printer cannot see
    the constant next to a floor term)."""
    if not isinstance(expr, sympy.Basic) or expr.is_Atom:
        return expr
    args = tuple(display_form(a) for a in expr.args)
    if args != expr.args:
        # unevaluated: Min/Max evaluation asks the assumptions system (slow)
        expr = expr.func(*args, evaluate=False) if isinstance(expr, (sympy.Add, sympy.Mul, sympy.Min, sympy.Max)) \
            else expr.func(*args)
    if not expr.is_Add:
        return expr
    constant, rest = expr.as_coeff_Add()
    terms = sympy.Add.make_args(rest)
    floor_terms = [t for t in terms if isinstance(t, FloorDiv)]
    if not (constant.is_Integer and constant != 0 and len(floor_terms) == 1):
        return expr
    term = floor_terms[0]
    folded = FloorDiv(sympy.expand(term.numerator + int(constant) * term.divisor), term.args[1])
    return sympy.Add(*[t for t in terms if t is not term], folded)


def parse_size_text(text: str) -> int:
    """A positive size given on the command line; no ``eval``, only digits."""
    text = text.strip()
    # str.isdigit() also accepts '²' (int() rejects it) and other scripts' digits
    if not (text.isascii() and text.isdigit()):
        raise InputSpecError(f"not a positive integer size: {text!r}")
    if len(text) > 9:
        raise InputSpecError(f"size {text} is too large (at most 999999999)")
    value = int(text)
    if value < 1:
        raise InputSpecError(f"sizes must be positive, got {value}")
    return value


def value_text(value) -> str:
    """One value as shown to a person: a size expression in canonical form,
    a float short (``7.5``), text as it is, ``?`` where unknown (None)."""
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else format_expr(value)


def axes_text(values) -> str:
    """Per-axis values, shown once when every axis has the same one
    (``9`` or ``8 x 9``); empty for no axes."""
    texts = [value_text(v) for v in values]
    if not texts:
        return ""
    return texts[0] if len(set(texts)) == 1 else " x ".join(texts)
