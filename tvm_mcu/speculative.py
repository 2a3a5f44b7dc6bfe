"""Sequential searches (bisections) measured several candidates at a time, with the serial result.

A search is a generator: it yields the point it wants judged next, receives the verdict (``True``: the
candidate fits), and returns its answer. Which point comes next depends only on the verdicts so far, so
the search is a binary decision tree whose nodes are points. :func:`run` with ``width`` 1 judges one
point at a time, in the serial search's order. With ``width`` W, each round judges together the first
W points not yet judged of the tree below where the real verdicts lead (breadth first: the next point,
the two that may follow it, the four after those, ...), then follows the real verdicts down as far as
they reach: a bisection with 2^d - 1 <= W descends d levels a round (a W between such sizes also fills
part of the next level). Every point the serial search judges is judged, and ``judge`` is a function
of the point, so the verdicts on the serial path are the serial ones and the answer is the serial
answer, by construction; the points off that path are the cost of speculating.

The search is replayed from its start for every node it explores (points and verdicts are cheap; the
judging is what costs), so a search function must be deterministic and free of side effects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Hashable, Mapping
from typing import Generic, TypeVar

import attrs

P = TypeVar("P", bound=Hashable)
R = TypeVar("R")

Search = Callable[[], Generator[P, bool, R]]


@attrs.frozen
class _Answer(Generic[R]):
    value: R


@attrs.frozen
class _Ask(Generic[P]):
    point: P


def _replay(search: Search[P, R], verdicts: Mapping[P, bool]) -> _Answer[R] | _Ask[P]:
    """Run ``search`` with the ``verdicts`` it meets: its answer, or the first point without one."""
    steps = search()
    try:
        point = next(steps)
        while point in verdicts:
            point = steps.send(verdicts[point])
    except StopIteration as stop:
        return _Answer(stop.value)
    steps.close()
    return _Ask(point)


def _frontier(search: Search[P, R], known: Mapping[P, bool], width: int) -> _Answer[R] | list[P]:
    """The search's answer when ``known`` decides it, else the first ``width`` points without a verdict
    breadth first below the point it asks next (that point first)."""
    first = _replay(search, known)
    if isinstance(first, _Answer):
        return first
    points = [first.point]
    # Each entry: verdicts assumed for points not yet judged, one path down the tree.
    paths: deque[dict[P, bool]] = deque([{first.point: True}, {first.point: False}])
    while paths and len(points) < width:
        assumed = paths.popleft()
        step = _replay(search, {**known, **assumed})
        if isinstance(step, _Answer):
            continue
        if step.point not in points:
            points.append(step.point)
        paths.extend(({**assumed, step.point: True}, {**assumed, step.point: False}))
    return points


def run(search: Search[P, R], judge: Callable[[list[P]], list[bool]], width: int = 1) -> R:
    """The answer of ``search`` whose points ``judge`` decides, ``width`` points a round (module
    docstring); ``judge`` is called once a round with the round's points, and returns their verdicts."""
    known: dict[P, bool] = {}
    while True:
        ask = _frontier(search, known, max(1, width))
        if isinstance(ask, _Answer):
            return ask.value
        verdicts = judge(ask)
        assert len(verdicts) == len(ask), (ask, verdicts)
        known.update(zip(ask, verdicts, strict=True))


def bisection_rounds(levels: int, width: int) -> int:
    """Rounds of a bisection ``levels`` deep judged ``width`` points a round (whole levels only)."""
    depth = max(1, (max(1, width) + 1).bit_length() - 1)  # the largest d with 2^d - 1 <= width
    return -(-levels // depth)
