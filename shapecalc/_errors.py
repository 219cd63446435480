"""The one error family of shapecalc.

Internal code raises short errors with a ``reason``; whoever knows more sets
the fields (``node`` and ``op`` where a graph node fails, ``model`` and
``input`` at the public boundary, ``argument`` and ``value`` where a parameter
was bad).  The message is built from them in one place,
:meth:`ShapecalcError.message`; nothing re-parses another error's text.

The library names a parameter in its own terms (:data:`ARGUMENT_TERMS`:
"input spec", "expected output size", ``max_size``); a front end passes its
own namer to ``message`` (the CLI names the flag a person typed).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

#: how the library names a parameter in a message; a parameter not listed is
#: named as it is spelled (``max_size``, ``near``, ``range``)
ARGUMENT_TERMS = {
    "input": "input spec",
    "expect_output": "expected output size",
    "arg": "model argument",
    "concrete": "concrete argument",
    "sizes": "typical sizes",
    "force": "force=True",
}

FIELDS = ("node", "op", "model", "input", "argument", "value")


def argument_term(argument: str) -> str:
    """The library's words for parameter ``argument``."""
    return ARGUMENT_TERMS.get(argument, argument)


class ShapecalcError(Exception):
    """Base class: every error shapecalc raises on purpose is one of these.

    Fields (None where not known): ``reason`` (the bare sentence), ``node``
    (the fx node name), ``op`` (what the node calls, e.g. ``Conv2d``),
    ``model`` (the model's name or MODEL spec), ``input`` (the input spec's
    text, e.g. ``"HxW"``), ``argument`` (the parameter that was bad, as the
    library spells it: ``"input"``, ``"expect_output"``, ``"max_size"``) and
    ``value`` (what was given for it, shortened for echoing)."""

    #: process exit status the CLI uses for this kind of error
    exit_code = 2

    def __init__(self, reason: str, *, node: Optional[str] = None, op: Optional[str] = None,
                 model: Optional[str] = None, input: Optional[str] = None,
                 argument: Optional[str] = None, value: Optional[str] = None):
        super().__init__(reason)
        # torch.fx appends "While executing ..." to args[0] of errors raised
        # inside an Interpreter; the reason stays clean for messages.
        self.reason = reason
        self.node, self.op, self.model, self.input = node, op, model, input
        self.argument, self.value = argument, value

    def with_context(self, **fields) -> "ShapecalcError":
        """A copy with the given fields set where this error has none yet
        (the innermost knowledge wins: a node named deep inside stays)."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown error fields: {', '.join(sorted(unknown))}")
        copied = copy.copy(self)
        for name, value in fields.items():
            if getattr(copied, name, None) is None:
                setattr(copied, name, value)
        return copied

    def message(self, input_text: Callable[[str], str] = lambda spec: f"input {spec!r}",
                argument_text: Callable[[str], str] = argument_term) -> str:
        """The one place a message is built from the fields:
        ``MyNet with input 'H' at node 'conv1' (Conv2d): reason``, and for a
        bad parameter ``bad input spec 'H+': reason`` (with a ``value``) or
        ``reason (force=True)`` (without one: the reason says what to do).
        ``input_text`` and ``argument_text`` say how the input spec and a
        parameter are named (the CLI names its flags)."""
        subject = " ".join(part for part in (getattr(self, "model", None),
                                             None if getattr(self, "input", None) is None
                                             else f"with {input_text(self.input)}") if part)
        node = getattr(self, "node", None)
        if node is not None:
            op = getattr(self, "op", None)
            subject += f"{' ' if subject else ''}at node {node!r}" + (f" ({op})" if op else "")
        reason = getattr(self, "reason", None) or (str(self.args[0]) if self.args else "")
        argument = getattr(self, "argument", None)
        value = getattr(self, "value", None)
        # a bad input spec that the subject already names ("MyNet with input 'HxWxD'") is not named twice
        if argument is not None and not (argument == "input" and value is not None and value == getattr(self, "input", None)):
            reason = (f"{reason} ({argument_text(argument)})" if value is None
                      else f"bad {argument_text(argument)} {value!r}: {reason}")
        return f"{subject}: {reason}" if subject else reason

    def __str__(self) -> str:
        return self.message()


class InputSpecError(ShapecalcError):
    """An input spec (or a size value, or another argument) that is not well formed."""


class ModelLoadError(ShapecalcError):
    """A MODEL spec that names nothing loadable, or a factory that failed."""


class TraceError(ShapecalcError):
    """torch.fx could not trace the model."""


class UnsupportedOpError(ShapecalcError):
    """A graph node whose op has no size rule."""


class SizeError(ShapecalcError):
    """The network cannot run for the given (concrete) input size."""

    exit_code = 1


class DomainError(ShapecalcError):
    """A condition that the exact domain procedure cannot decide."""


class DisagreementError(ShapecalcError):
    """shapecalc's size of an ATen node differs from the size torch recorded
    while capturing it: a bug in a rule (or in the capture), reported
    instead of printed."""

    exit_code = 3
