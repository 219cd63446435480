"""Meta forward passes that do not import torch._dynamo.

Many meta kernels are Python references (``torch._refs``: add, relu, where,
interpolate...) wrapped in ``torch._disable_dynamo``, which imports
``torch._dynamo`` on its first call only to tell the compiler not to trace
into the kernel.  That import is about 1.5 s of CPU, as much as ``import
torch`` itself, and buys nothing while no compiler runs: before
``torch._dynamo`` is imported no frame can be being compiled, so "disabled"
and "plain" are the same function.

:func:`dynamo_not_loaded` stands in for ``torch._dynamo`` while the block
runs: its ``disable`` hands the kernel back unchanged.  Afterwards every trace
of the stand-in is removed (the kernels' cached "disabled" form included), so
a later ``torch.compile`` imports the real module and disables the kernels
as usual.  Anything else asked of the stand-in (model code calling
``torch._dynamo.is_compiling``...) loads the real module and answers from it:
slower, never different.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import types
from typing import Callable, Iterator

_NAME = "torch._dynamo"
#: the attribute torch._compile._disable_dynamo caches a kernel's disabled form under
_CACHED = "__dynamo_disable"
_lock = threading.Lock()


class _StandIn(types.ModuleType):
    def __init__(self):
        super().__init__(_NAME)
        self.handed_back: list[Callable] = []
        self.replaced_by = None

    def disable(self, fn=None, recursive=True, *, reason=None, wrapping=True):
        if fn is None or not callable(fn):  # decorator-factory use: the real thing
            return self._real().disable(fn, recursive, reason=reason, wrapping=wrapping)
        self.handed_back.append(fn)
        return fn

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)

    def _real(self):
        if self.replaced_by is None:
            self.forget()
            self.replaced_by = importlib.import_module(_NAME)
        return self.replaced_by

    def forget(self) -> None:
        """Leave torch as if the stand-in had never been there."""
        _remove(self)
        for fn in self.handed_back:
            # the kernel cached itself as its own disabled form: drop that, so
            # that the real torch._dynamo wraps it when it is next called
            if getattr(fn, "__dict__", {}).get(_CACHED) is fn:
                delattr(fn, _CACHED)
        self.handed_back.clear()


def _remove(stand_in: _StandIn) -> None:
    import torch

    if sys.modules.get(_NAME) is stand_in:
        del sys.modules[_NAME]
    if torch.__dict__.get("_dynamo") is stand_in:
        del torch._dynamo


@contextlib.contextmanager
def dynamo_not_loaded() -> Iterator[None]:
    """Run the block with a stand-in for ``torch._dynamo`` when the real one
    is not loaded yet (otherwise: nothing to save, nothing changes)."""
    import torch

    if _NAME in sys.modules or not _lock.acquire(blocking=False):
        yield
        return
    stand_in = _StandIn()
    sys.modules[_NAME] = stand_in
    torch._dynamo = stand_in
    try:
        yield
    finally:
        stand_in.forget()
        _lock.release()
