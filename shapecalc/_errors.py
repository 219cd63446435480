"""The one error family of shapecalc.

Internal code raises short errors; the public boundary (``analyze``, the CLI)
adds the user's context (model, input spec, node) before they reach a person.
"""

from __future__ import annotations


class ShapecalcError(Exception):
    """Base class: every error shapecalc raises on purpose is one of these."""

    #: process exit status the CLI uses for this kind of error
    exit_code = 2

    def __init__(self, reason: str):
        super().__init__(reason)
        # torch.fx appends "While executing ..." to args[0] of errors raised
        # inside an Interpreter; the reason stays clean for messages.
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class InputSpecError(ShapecalcError):
    """An ``--input`` spec (or a size value) that is not well formed."""


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
