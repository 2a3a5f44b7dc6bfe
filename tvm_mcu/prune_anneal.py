"""DTMM's pruning scheduler: simulated annealing over per-layer filterlet ratios under the budgets.

``tvm-mcu prune --granularity filterlet|mixed --scheduler anneal``. Where the ``global`` scheduler
(:func:`tvm_mcu.prune_sparse.prune_sparse`) zeroes the weakest filterlets of the whole model in one
order, whatever each costs, this one searches a keep ratio per layer, as DTMM does (Han et al. 2024,
``pruning/`` of its public code: simulated annealing from T0 = 100 down to 0.1, cooling 0.9, 100 moves
per temperature, each move one layer's ratio by +-0.05, with repair loops until SRAM and flash fit):

- a state is a ratio per layer; a layer keeping ratio ``a`` of its filterlets keeps the ``a * O * kh *
  kw`` strongest (one per output channel first, its strongest: zeroing a whole filter is channel
  pruning), by the same importance and per-layer normalisation as the global order;
- its energy is the importance it zeroes, as a fraction of the model's, plus a penalty of
  ``PENALTY`` per unit of relative excess over each budget. The figures are counted, as the global
  scheduler counts them (:mod:`tvm_mcu.analysis.sparsity`): flash with the CSR index bytes, MACs, and
  instructions from the kernels' cost model (:mod:`tvm_mcu.schedule.cost`), on top of the dense
  twin's measurement;
- a move is accepted when it lowers the energy, else with probability ``exp(-dE / T)``;
- DTMM minimises predicted latency with per-layer accuracy bounds; with an ``instructions=`` budget
  latency is a constraint like the others here, and the objective is the importance kept (the same
  accuracy proxy the global order uses), so the two schedulers differ only in how they spend a budget.

The best feasible state found is then repaired (DTMM's loops) or, where it leaves room under every
budget, filled a filterlet at a time by importance per unit of budget spent. So a layer whose
filterlets are cheap (few input channels, small maps) keeps more of them than the global order gives
it, and an expensive one fewer, at the same importance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import numpy as np

from tvm_mcu.analysis.sparsity import Masks, WeightSite, dense_bytes, dense_instructions, filterlet_figures

# DTMM's annealing (``pruning/``): its temperatures were in its latency units; ours are in units of the
# energy, whose importance part is a fraction in [0, 1]: the same 66 temperatures, scaled by 1e-3.
T_START = 0.1
T_END = 1e-4
COOLING = 0.9
MOVES_PER_TEMPERATURE = 100
STEP = 0.05
# Energy per unit of relative excess over a budget: 10 % over costs as much as zeroing all importance.
PENALTY = 10.0
RESOURCES = ("flash", "weights", "macs", "instructions")
# Each figure's column of a layer's saving table: flash and the stored weights save the same bytes.
COLUMN = {"flash": 0, "weights": 0, "macs": 1, "instructions": 2}


@attrs.frozen
class Layer:
    """One site's filterlets in the order a layer keeps them (one per output channel first, then by
    score) and the cumulative normalised score kept after ``k`` of them."""

    site: WeightSite
    order: np.ndarray  # flat (o * taps + tap) indices
    kept_score: np.ndarray  # [units + 1]: kept_score[k] = score of the first k in ``order``
    least: int  # one filterlet per output channel

    @property
    def units(self) -> int:
        return len(self.order)

    def mask(self, kept: int) -> np.ndarray:
        """The OIHW element mask keeping the first ``kept`` filterlets of ``order``."""
        o, i, kh, kw = self.site.shape
        on = np.zeros(o * kh * kw, bool)
        on[self.order[:kept]] = True
        return np.ascontiguousarray(np.broadcast_to(on.reshape(o, 1, kh, kw), self.site.shape))


def layer(site: WeightSite, score: np.ndarray) -> Layer:
    """``score``: ``(O, kh, kw)``, one per filterlet, normalised as the global order normalises."""
    o = site.out_channels
    flat = np.asarray(score, np.float64).reshape(o, -1)
    taps = flat.shape[1]
    strongest = np.argmax(flat, axis=1) + np.arange(o) * taps  # ties: the first tap
    rest = np.setdiff1d(np.arange(o * taps), strongest)
    rest = rest[np.argsort(-flat.ravel()[rest], kind="stable")]
    order = np.concatenate([strongest, rest])
    kept = np.concatenate([[0.0], np.cumsum(flat.ravel()[order])])
    return Layer(site, order, kept, o)


@attrs.frozen
class Figures:
    """What the counted figures are held to, and what the dense twin measured."""

    dense: Mapping[str, float]  # resource -> the dense twin's figure
    limits: Mapping[str, float]  # resource -> budget (only those given)


class Anneal:
    """The state, its figures and energy; every site's figures at every count, computed once."""

    def __init__(self, layers: list[Layer], figures: Figures, itemsize: int) -> None:
        self.layers, self.fig = layers, figures
        self.total = max(sum(float(lay.kept_score[-1]) for lay in layers), 1e-30)
        # Per layer and kept count: the saving against dense (bytes, MACs, instructions).
        self.saving: list[np.ndarray] = []
        for lay in layers:
            s = lay.site
            base = np.array(
                [dense_bytes(s, itemsize), s.pixels * int(np.prod(s.shape)), dense_instructions(s, itemsize)]
            )
            rows = [base - np.array(filterlet_figures(s, k, itemsize)) for k in range(lay.units + 1)]
            self.saving.append(np.array(rows, np.float64))

    def figures(self, kept: list[int]) -> dict[str, float]:
        saved = sum((sv[k] for sv, k in zip(self.saving, kept, strict=True)), np.zeros(3))
        return {r: self.fig.dense[r] - saved[COLUMN[r]] for r in RESOURCES if r in self.fig.dense}

    def excess(self, kept: list[int]) -> float:
        f = self.figures(kept)
        return sum(max(0.0, f[r] / lim - 1.0) for r, lim in self.fig.limits.items() if r in f)

    def energy(self, kept: list[int]) -> float:
        lost = self.total - sum(float(lay.kept_score[k]) for lay, k in zip(self.layers, kept, strict=True))
        return lost / self.total + PENALTY * self.excess(kept)

    def kept(self, ratios: np.ndarray) -> list[int]:
        return [
            min(lay.units, max(lay.least, int(round(a * lay.units))))
            for lay, a in zip(self.layers, ratios, strict=True)
        ]


@attrs.frozen
class Search:
    """What the annealing did: temperatures, moves tried and taken, the state's energy and excess
    before the repair or fill, and the filterlets each of those moved."""

    temperatures: int
    moves: int
    accepted: int
    energy: float
    excess: float
    repaired: int
    filled: int


def anneal(
    layers: list[Layer],
    figures: Figures,
    *,
    itemsize: int,
    seed: int = 0,
) -> tuple[Masks, Search]:
    """Per-layer ratios by simulated annealing (module docstring); the masks and what the search did.
    Raises ValueError when even the deepest cut misses a budget (the caller checks that first)."""
    a = Anneal(layers, figures, itemsize)
    if a.excess([lay.least for lay in layers]) > 0:
        raise ValueError("the deepest cut misses the budget")
    rng = np.random.default_rng(seed)
    floor = np.array([lay.least / lay.units for lay in layers])
    # From the deepest cut, which fits (checked above), upwards: the figures are not monotone in a
    # layer's count (a layer turns compact, and its kernel sparse, only below a count; the sparse
    # kernel may cost more per MAC than the dense one), so a walk down from the dense model can stall
    # at a wall of rising instructions; from the fitting side every state the walk keeps is known.
    ratios = floor.copy()
    energy = a.energy(a.kept(ratios))
    best: tuple[float, np.ndarray] | None = (energy, ratios.copy())
    temperatures = moves = accepted = 0
    t = T_START
    while t > T_END:
        temperatures += 1
        for _ in range(MOVES_PER_TEMPERATURE):
            moves += 1
            i = int(rng.integers(len(layers)))
            trial = ratios.copy()
            trial[i] = float(np.clip(trial[i] + (STEP if rng.random() < 0.5 else -STEP), floor[i], 1.0))
            e = a.energy(a.kept(trial))
            if e <= energy or rng.random() < math.exp(-(e - energy) / t):
                ratios, energy = trial, e
                accepted += 1
                if a.excess(a.kept(ratios)) == 0 and (best is None or e < best[0]):
                    best = (e, ratios.copy())
        t *= COOLING
    kept = a.kept(best[1] if best is not None else ratios)
    before_energy, before_excess = a.energy(kept), a.excess(kept)
    repaired = _repair(a, kept)
    filled = _fill(a, kept)
    masks = {lay.site.key: lay.mask(k) for lay, k in zip(layers, kept, strict=True)}
    return masks, Search(temperatures, moves, accepted, before_energy, before_excess, repaired, filled)


def _cost(a: Anneal, kept: list[int], i: int, step: int) -> tuple[float, float]:
    """(score, budget spent) by moving layer ``i``'s count by ``step``: the score kept or lost and the
    change of every budgeted figure relative to its limit."""
    lay = a.layers[i]
    k = kept[i]
    score = float(lay.kept_score[k + step] - lay.kept_score[k])
    delta = a.saving[i][k] - a.saving[i][k + step]  # > 0: the figure grows
    spent = sum(float(delta[COLUMN[r]]) / lim for r, lim in a.fig.limits.items())
    return score, spent


def _repair(a: Anneal, kept: list[int]) -> int:
    """While a budget is missed, lower the one layer's count that loses the least importance per unit
    of excess it removes, to any lower count (the figures are not monotone in a count: a single
    filterlet may remove none); DTMM's repair loops. How many filterlets were zeroed."""
    n = 0
    while (excess := a.excess(kept)) > 0:
        current = a.figures(kept)
        best: tuple[float, int, int] | None = None
        for i, lay in enumerate(a.layers):
            counts = np.arange(lay.least, kept[i])
            if counts.size == 0:
                continue
            # Each budgeted figure at every lower count of this layer (the others as they are).
            delta = a.saving[i][counts] - a.saving[i][kept[i]]  # [counts, columns]: more saved
            over = sum(
                np.maximum(0.0, (current[r] - delta[:, COLUMN[r]]) / lim - 1.0)
                for r, lim in a.fig.limits.items()
            )
            gain = excess - np.asarray(over)
            lost = lay.kept_score[kept[i]] - lay.kept_score[counts]
            for j in np.flatnonzero(gain > 0):
                ratio = float(lost[j] / gain[j])
                if best is None or ratio < best[0]:
                    best = (ratio, i, int(counts[j]))
        if best is None:
            break  # cannot happen: the deepest cut fits (checked by anneal)
        n += kept[best[1]] - best[2]
        kept[best[1]] = best[2]
    return n


def _fill(a: Anneal, kept: list[int]) -> int:
    """Spend what the budgets leave: keep the next filterlet of the layer whose next one brings the
    most importance per unit of budget, while every budget still holds; how many."""
    n = 0
    while True:
        options = []
        for i, lay in enumerate(a.layers):
            if kept[i] < lay.units:
                score, spent = _cost(a, kept, i, 1)
                kept[i] += 1
                fits = a.excess(kept) == 0
                kept[i] -= 1
                if fits:
                    options.append((-(score / spent) if spent > 0 else -math.inf, i))
        if not options:
            return n
        kept[min(options)[1]] += 1
        n += 1
