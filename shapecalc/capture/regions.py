"""Piecewise answers for shape-dependent Python: the regions of the size space.

One ATen capture holds where the model's code took the branches it took
(the capture's guards); outside that region the model may run another graph
or raise its own exception.  :func:`explore` re-captures at sizes chosen from
the negated guards (not at random) until every size is in some region, or a
bound on captures or time stops it; then :class:`Exploration` says which part
of the size space is unexplored, never presenting a partial map as complete.

Regions are boxes when every guard is on one symbol (``H % 32 == 0``,
``H > 100``): a per-symbol :class:`PeriodicSet` each, decided exactly.  Whether
the boxes cover everything is decided on the atoms of each symbol's sets
(the pieces of the size line every box's set either holds or misses whole), so
``H % 32 == 0`` and ``H % 32 != 0`` cover the line with no sampling.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import sympy

from shapecalc.capture.aten import AtenCapture, capture
from shapecalc.engine.domain import Domain, PeriodicSet, Requirement, condition_set

#: default bounds on exploration (``--max-captures``, ``--max-seconds``)
MAX_CAPTURES = 8
MAX_SECONDS = 120.0
#: how far from the example the search for a size outside the known regions looks
SEARCH_SPAN = 1024
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

    @property
    def running(self) -> list[AtenCapture]:
        return [c for c in self.captures if c.graph_module is not None]

    def unexplored_text(self) -> Optional[str]:
        """The part of the size space no capture explained, as a condition."""
        if self.complete:
            return None
        if not self.captures:
            return "every size"
        outside = Domain(tuple(self.symbols))
        for c in self.captures:
            outside.add(Requirement(sympy.Not(c.region), "exploration", "outside the regions found"))
        if outside.undecided:
            return "sizes outside the regions listed (not decided)"
        text = "; ".join(outside.sets[s].describe(str(s)) for s in self.symbols)
        joint = outside.joint_sentence()
        return f"{text}; jointly: {joint}" if joint else text


def _box(condition_list, symbols) -> Optional[dict]:
    """A region as a per-symbol PeriodicSet, or None when a guard ties symbols."""
    box = {s: PeriodicSet.everything() for s in symbols}
    for condition in condition_list:
        free = condition.free_symbols & set(symbols)
        if len(free) > 1:
            return None
        if not free:
            if condition is sympy.false:
                return {s: PeriodicSet.at_least(None) for s in symbols}
            continue
        (symbol,) = free
        box[symbol] = box[symbol].intersection(condition_set(condition, symbol))
    return box


def _atoms(sets: list[PeriodicSet]) -> list[PeriodicSet]:
    """The non-empty pieces of the line that each of ``sets`` holds or misses whole."""
    pieces = [PeriodicSet.everything()]
    for s in sets:
        refined = []
        for piece in pieces:
            for part in (piece.intersection(s), piece.difference(s)):
                if not part.is_empty():
                    refined.append(part)
        pieces = refined
        if len(pieces) > 256:
            break
    return pieces


def covers_everything(boxes: list[dict], symbols) -> Optional[bool]:
    """Whether the union of ``boxes`` is every size (None when too many pieces to decide)."""
    if not symbols:
        return bool(boxes)
    atoms = {s: _atoms([b[s] for b in boxes]) for s in symbols}
    if any(len(a) > 256 for a in atoms.values()):
        return None
    for combination in itertools.product(*(atoms[s] for s in symbols)):
        inside = any(all(_within(piece, box[s]) for piece, s in zip(combination, symbols)) for box in boxes)
        if not inside:
            return False
    return True


def _within(piece: PeriodicSet, allowed: PeriodicSet) -> bool:
    return piece.difference(allowed).is_empty()


def uncovered_point(boxes: list[dict], symbols, near: dict) -> Optional[dict]:
    """A size in no box, as near ``near`` as the atoms allow."""
    atoms = {s: _atoms([b[s] for b in boxes]) for s in symbols}
    best = None
    for combination in itertools.product(*(atoms[s] for s in symbols)):
        if any(all(_within(p, box[s]) for p, s in zip(combination, symbols)) for box in boxes):
            continue
        point = {}
        for piece, s in zip(combination, symbols):
            value = _nearest_member(piece, near[s])
            if value is None:
                break
            point[s] = value
        else:
            distance = sum(abs(point[s] - near[s]) for s in symbols)
            if best is None or distance < best[0]:
                best = (distance, point)
    return None if best is None else best[1]


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
            progress("capturing at " + "x".join(str(point[s]) for s in symbols) if symbols else "capturing")
        result = capture(model, tuple(symbols), point, channels=channels, batch=batch, sizes=sizes)
        tried.append(point)
        found.captures.append(result)
        if not symbols:
            found.complete = True  # one concrete size: it runs or it raises
            break
        verdict, point = _uncovered(found.captures, symbols, example)
        found.complete = verdict
        if verdict is True:
            break
        if point is None or point in tried:
            point = _next_by_scanning(found.captures, symbols, example, tried)
    found.seconds = time.perf_counter() - started
    return found


def _uncovered(captures: list[AtenCapture], symbols, near: dict) -> tuple[Optional[bool], Optional[dict]]:
    """Whether the captures' regions cover every size (decided exactly by the
    domain machinery, joint guards included), and if not a size outside them
    near ``near``."""
    if any(c.region is sympy.true for c in captures):
        return True, None
    outside = Domain(tuple(symbols))
    for c in captures:
        outside.add(Requirement(sympy.Not(c.region), "exploration", "outside the regions found"))
    if outside.undecided:
        return None, None
    if all(outside.sets[s].is_empty() for s in symbols):
        return True, None
    point = {s: _nearest_member(outside.sets[s], near[s]) for s in symbols}
    if None in point.values() or point not in outside:
        point = None
        for cell in outside.cells or []:
            candidate = {s: _nearest_member(cell.projection(s), near[s]) for s in symbols}
            for tie in cell.ties:  # tied symbols take one size
                first = min(tie, key=str)
                for s in tie:
                    candidate[s] = candidate[first]
            if None in candidate.values() or candidate not in outside:
                continue
            if point is None or _distance(candidate, near) < _distance(point, near):
                point = candidate
    return False, point


def _distance(point: dict, near: dict) -> int:
    return sum(abs(point[s] - near[s]) for s in point)


def _next_by_scanning(captures: list[AtenCapture], symbols, example: dict, tried: list[dict]) -> Optional[dict]:
    """A size outside every region, near the example, moving one guard's
    symbols at a time (for guards that tie symbols together)."""
    for c in captures:
        for guard in c.guards:
            moving = [s for s in symbols if s in guard.condition.free_symbols]
            for offset in range(1, SEARCH_SPAN):
                for sign in (1, -1):
                    point = dict(example)
                    for s in moving:
                        point[s] = example[s] + sign * offset
                    if min(point.values()) < 1 or point in tried:
                        continue
                    if not any(other.contains(point) for other in captures):
                        return point
    return None
