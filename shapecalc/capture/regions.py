"""Piecewise answers for shape-dependent Python: the regions of the size space.

One ATen capture holds where the model's code took the branches it took
(the capture's guards); outside that region the model may run another graph
or raise its own exception.  :func:`explore` re-captures at sizes chosen from
the negated guards (not at random) until every size is in some region, or a
bound on captures or time stops it; then :class:`Exploration` says which part
of the size space is unexplored, never presenting a partial map as complete.

Each region is decided exactly by the domain machinery into cells (per-symbol
:class:`PeriodicSet` s; guards on one symbol like ``H % 32 == 0`` and joint ones
like instance norm's ``H*W != 1``).  Whether the cells cover everything is
decided on the atoms of each symbol's line (the pieces every cell's set
either holds or misses whole), so ``H % 32 == 0`` and ``H % 32 != 0`` cover the
line with no sampling.  Exploration goes to the uncovered atom nearest the
example size; sizes chosen so come from the negated guards, never at random.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import sympy

from shapecalc.capture.aten import AtenCapture, capture
from shapecalc.engine.domain import Domain, PeriodicSet, Requirement

#: default bounds on exploration (``--max-captures``, ``--max-seconds``)
MAX_CAPTURES = 32
MAX_SECONDS = 120.0
#: how far from the example the search for a size outside the known regions looks
SEARCH_SPAN = 1024
#: how far the fallback search walks from the example, per guard
SCAN_SPAN = 48
#: the size each symbol is first captured at, when the spec has symbols
EXAMPLE_SIZE = 224


@dataclass
class Exploration:
    """Every capture made, in order, and whether their regions cover every size."""

    symbols: tuple
    captures: list[AtenCapture] = field(default_factory=list)
    #: True: the regions cover every size; False: a part is unexplored; None: not decided
    complete: Optional[bool] = None
    stopped_by: Optional[str] = None   # "captures" or "time" when a bound stopped it
    seconds: float = 0.0
    #: the pieces of the size space no region covers (symbol -> PeriodicSet), when decided
    unexplored: list = field(default_factory=list)
    #: how many pieces the guards seen cut the size space into (each symbol's atoms, multiplied)
    pieces_of_space: Optional[int] = None

    @property
    def running(self) -> list[AtenCapture]:
        return [c for c in self.captures if c.graph_module is not None]

    def unexplored_text(self) -> Optional[str]:
        """The part of the size space no capture explained, as a condition."""
        if self.complete:
            return None
        if not self.captures:
            return "every size"
        if not self.unexplored:
            return "sizes outside the regions listed (coverage not decided)"
        shown = "; ".join(" and ".join(self.unexplored[0][s].describe(str(s)) for s in self.symbols)
                          for _ in range(1))
        count = len(self.unexplored)
        return (f"{count} of the {self.pieces_of_space} pieces the guards seen cut the size space into, "
                f"e.g. where {shown}") if count > 1 else f"where {shown}"


#: atoms per symbol beyond which coverage is left undecided
MAX_ATOMS = 512


def _atoms(sets: list[PeriodicSet]) -> list[PeriodicSet]:
    """The non-empty pieces of the line that each of ``sets`` holds or misses whole."""
    pieces = [PeriodicSet.everything()]
    for s in dict.fromkeys(sets):
        refined = []
        for piece in pieces:
            for part in (piece.intersection(s), piece.difference(s)):
                if not part.is_empty():
                    refined.append(part)
        pieces = refined
        if len(pieces) > MAX_ATOMS:
            break
    return pieces


def _within(piece: PeriodicSet, allowed: PeriodicSet) -> bool:
    return piece.difference(allowed).is_empty()


def _nearest_member(piece: PeriodicSet, target: int) -> Optional[int]:
    for offset in range(0, SEARCH_SPAN):
        for value in (target - offset, target + offset):
            if value >= 1 and value in piece:
                return value
    return piece.minimum()


def explore(model, symbols: tuple, sizes: tuple, *, channels: int, batch: int = 1,
            example: Optional[dict] = None, max_captures: int = MAX_CAPTURES, max_seconds: float = MAX_SECONDS,
            progress: Optional[Callable[[str], None]] = None) -> Exploration:
    """Capture ``model`` at ``example`` (each symbol at :data:`EXAMPLE_SIZE`
    by default), then at sizes outside every region found so far, until the
    regions cover every size or a bound stops it."""
    example = dict(example or {s: EXAMPLE_SIZE for s in symbols})
    found = Exploration(tuple(symbols))
    started = time.perf_counter()
    point: Optional[dict] = example
    tried: list[dict] = []
    while point is not None:
        if len(found.captures) >= max_captures:
            found.stopped_by = "captures"
            break
        if found.captures and time.perf_counter() - started > max_seconds:
            found.stopped_by = "time"
            break
        if progress is not None:
            progress(f"ATen capture {len(found.captures) + 1} at " + ", ".join(f"{s}={point[s]}" for s in symbols)
                     if symbols else "ATen capture at the given size")
        result = capture(model, tuple(symbols), point, channels=channels, batch=batch, sizes=sizes)
        tried.append(point)
        found.captures.append(result)
        if not symbols:
            found.complete = True  # one concrete size: it runs or it raises
            break
        verdict, point = _uncovered(found.captures, symbols, example, found)
        found.complete = verdict
        if verdict is True:
            break
        if result.pointwise and not found.running:
            # torch's own size check failed and nothing ran yet: the neighbours of a size
            # that is too small (or not the one fixed size) fail too; try the usual sizes
            point = next((p for p in _usual_sizes(symbols) if p not in tried
                          and not any(c.contains(p) for c in found.captures)), point)
        if point is None or point in tried:
            point = _next_by_scanning(found.captures, symbols, example, tried)
    found.seconds = time.perf_counter() - started
    return found


#: sizes models are usually built for, tried when the example fails torch's own size checks
USUAL_SIZES = (256, 128, 64, 512, 96, 32, 384, 160, 192, 320, 448, 16, 640, 768, 1024)


def _usual_sizes(symbols):
    return ({s: n for s in symbols} for n in USUAL_SIZES)


def _uncovered(captures: list[AtenCapture], symbols, near: dict, found: Optional["Exploration"] = None
               ) -> tuple[Optional[bool], Optional[dict]]:
    """Whether the captures' regions cover every size, and if not a size
    outside them near ``near``.  Each region is decided exactly into cells by
    the domain machinery (joint guards included, like instance norm's
    ``H*W != 1``); whether the cells cover everything is decided on the atoms
    of each symbol's line, which keeps nested per-axis branches (MONAI's
    BasicUNet: 16 classes of H times 16 of W) to a few hundred pieces instead
    of negating every region."""
    if any(c.region is sympy.true for c in captures):
        return True, None
    cells = []
    for c in captures:
        region = Domain(tuple(symbols))
        for condition in sympy.And.make_args(c.region):
            region.add(Requirement(condition, "exploration", "inside a region found"))
        if region.undecided:
            return None, None
        cells += [cell for cell in region._cells_or_box() if not any(v.is_empty() for v in cell.sets.values())]
    if any(cell.ties for cell in cells):
        return None, None
    atoms = {s: _atoms([cell.projection(s) for cell in cells]) for s in symbols}
    if any(len(a) > MAX_ATOMS for a in atoms.values()):
        return None, None
    best, missing = None, []
    for combination in itertools.product(*(atoms[s] for s in symbols)):
        if any(all(_within(piece, cell.projection(s)) for piece, s in zip(combination, symbols)) for cell in cells):
            continue
        missing.append(dict(zip(symbols, combination)))
        point = {s: _nearest_member(piece, near[s]) for piece, s in zip(combination, symbols)}
        if None not in point.values() and (best is None or _distance(point, near) < _distance(best, near)):
            best = point
    if found is not None:
        found.unexplored = missing
        found.pieces_of_space = math.prod(len(atoms[s]) for s in symbols)
    return (True, None) if not missing else (False, best)


def _distance(point: dict, near: dict) -> int:
    return sum(abs(point[s] - near[s]) for s in point)


def _next_by_scanning(captures: list[AtenCapture], symbols, example: dict, tried: list[dict]) -> Optional[dict]:
    """A size outside every region, near the example, moving one guard's
    symbols at a time (for guards that tie symbols together)."""
    for c in captures:
        for guard in c.guards:
            moving = [s for s in symbols if s in guard.condition.free_symbols]
            # a short walk: each step asks every region's guards (sympy), and this is the
            # fallback where coverage could not be decided (the notes say so)
            for offset in range(1, SCAN_SPAN):
                for sign in (1, -1):
                    point = dict(example)
                    for s in moving:
                        point[s] = example[s] + sign * offset
                    if min(point.values()) < 1 or point in tried:
                        continue
                    if not any(other.contains(point) for other in captures):
                        return point
    return None
