"""Speculative searches (tvm_mcu.speculative): judged several points a round, they give the serial
search's answer, judge every point the serial search judges, and take fewer rounds. Fake judges, many
seeded monotone predicates; no compiler, no Ray."""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator

import numpy as np
import pytest

from tvm_mcu import speculative
from tvm_mcu.prune import level_search
from tvm_mcu.prune_sparse import least_pruning, least_pruning_search

WIDTHS = (1, 2, 3, 4, 7, 8, 15)


def _least_pruning_before(fits: Callable[[int], bool], total: int, hint: int | None = None) -> int:
    """least_pruning as it was written before it became a search (calling ``fits`` in turn): the oracle."""
    lo, hi = -1, total
    if hint is not None and 0 <= hint < total:
        step = 1
        if fits(hint):
            hi = hint
            while hi - step > lo and fits(hi - step):
                hi, step = hi - step, 2 * step
            lo = max(lo, hi - step)
        else:
            lo = hint
            while lo + step < hi and not fits(lo + step):
                lo, step = lo + step, 2 * step
            hi = min(hi, lo + step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _bisect_before(fits: Callable[[float], bool], steps: int) -> tuple[str, float]:
    """prune._bisect's loop as it was written before it became a search: the oracle."""
    best, lo, hi = ("level0", 0.0), 0.0, 1.0
    for step in range(steps):
        mid = (lo + hi) / 2
        if fits(mid):
            best, lo = (f"step{step}", mid), mid
        else:
            hi = mid
    return best


class Judge:
    """Decides points by ``fits``, recording each round's points."""

    def __init__(self, fits: Callable[[object], bool]) -> None:
        self.fits = fits
        self.rounds: list[list[object]] = []

    def __call__(self, points: list[object]) -> list[bool]:
        assert len(set(points)) == len(points), points  # a point is judged once
        assert not set(points) & set(self.judged), points  # nor judged again in a later round
        self.rounds.append(list(points))
        return [self.fits(p) for p in points]

    @property
    def judged(self) -> list[object]:
        return [p for r in self.rounds for p in r]


@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: f"width{w}")
def test_level_bisection_gives_the_serial_answer_over_random_thresholds(width: int) -> None:
    rng = np.random.default_rng(width)
    steps = 9
    for _ in range(200):
        threshold = float(rng.uniform(-0.1, 1.1))  # below 0: every level fits; above 1: none

        def fits(point: object, threshold: float = threshold) -> bool:
            return point[1] <= threshold  # type: ignore[index]

        serial, fast = Judge(fits), Judge(fits)
        want = speculative.run(functools.partial(level_search, steps), serial)
        got = speculative.run(functools.partial(level_search, steps), fast, width)
        assert got == want == _bisect_before(functools.partial(float.__ge__, threshold), steps)
        assert set(serial.judged) <= set(fast.judged)  # the serial path, judged (with the same verdicts)
        assert len(serial.rounds) == steps + 1 and all(len(r) == 1 for r in serial.rounds)
        assert len(fast.rounds) <= speculative.bisection_rounds(steps + 1, width)
        assert all(len(r) <= width for r in fast.rounds)


def test_three_points_a_round_descend_two_levels() -> None:
    judge = Judge(lambda p: p[1] <= 0.3)  # type: ignore[index]
    speculative.run(functools.partial(level_search, 9), judge, 3)
    # The narrowest's two outcomes lead to the same point, judged once; then the first of its two
    # successors in breadth-first order.
    assert judge.rounds[0] == [("level0", 0.0), ("step0", 0.5), ("step1", 0.75)]
    # Then from step1 at 0.25 (step0 missed), two levels a round: ten levels in five rounds.
    assert judge.rounds[1] == [("step1", 0.25), ("step2", 0.375), ("step2", 0.125)]
    assert [len(r) for r in judge.rounds] == [3, 3, 3, 3, 3]
    assert speculative.bisection_rounds(10, 3) == 5 and speculative.bisection_rounds(10, 1) == 10


@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: f"width{w}")
def test_least_pruning_gives_the_serial_answer_with_and_without_a_hint(width: int) -> None:
    rng = np.random.default_rng(100 + width)
    for _ in range(300):
        total = int(rng.integers(1, 2000))
        answer = int(rng.integers(0, total + 1))
        hint = None if rng.random() < 0.3 else int(rng.integers(-1, total + 2))

        def fits(n: object, answer: int = answer) -> bool:
            return n >= answer  # type: ignore[operator]

        calls: list[int] = []

        def counted(n: int, calls: list[int] = calls, fits: Callable[[object], bool] = fits) -> bool:
            calls.append(n)
            return fits(n)

        want = _least_pruning_before(counted, total, hint)
        assert want == answer
        judge = Judge(fits)
        got = speculative.run(functools.partial(least_pruning_search, total, hint), judge, width)
        assert got == want
        assert set(calls) <= set(judge.judged)
        if width == 1:
            assert judge.judged == calls  # serially, the very calls of the old loop, in order
        assert len(judge.rounds) <= len(calls)


def test_least_pruning_judges_the_hint_and_its_neighbours_in_the_first_round() -> None:
    judge = Judge(lambda n: n >= 37)  # type: ignore[operator]
    assert speculative.run(lambda: least_pruning_search(1000, 36), judge, 3) == 37
    # The hint; then one below it (if it fits) or one above (if it does not).
    assert judge.rounds[0] == [36, 35, 37]
    assert len(judge.rounds) == 1
    assert least_pruning(lambda n: n >= 37, 1000, 36) == 37


def test_a_search_that_stops_early_is_not_speculated_past_its_answer() -> None:
    def search() -> Generator[str, bool, str]:
        if (yield "full"):
            return "full"
        if not (yield "narrowest"):
            return "none"
        return "between" if (yield "middle") else "narrowest"

    judge = Judge(lambda p: p == "full")
    assert speculative.run(search, judge, 7) == "full"
    assert judge.rounds == [["full", "narrowest", "middle"]]  # the whole tree has three points
    nothing = Judge(lambda p: False)
    assert speculative.run(search, nothing, 2) == "none"
    assert nothing.rounds == [["full", "narrowest"]]
