"""Sparse granularities of ``tvm-mcu prune``: zero filterlets (DTMM), filters and filterlets, or elements.

``--granularity`` chooses what is pruned (``channel``, the default, is :mod:`tvm_mcu.prune`'s channel
search and is not handled here):

``filterlet``     whole filterlets ``W[o, :, ky, kx]`` of every convolution that has them
                  (:mod:`tvm_mcu.analysis.sparsity`) are zeroed; every other layer keeps its weights.
                  An output channel always keeps at least one filterlet (zeroing them all is channel
                  pruning, which removes the channel instead: ``mixed``). Activations do not shrink, so
                  an SRAM budget the model misses is refused.
``mixed``         DTMM's per-layer filter ratio and filterlet ratio together. First the channels. With
                  data and two or more epochs, DiffPrune (:mod:`tvm_mcu.train.diffprune`, gates for
                  half the epochs, as channel pruning gets them) to MIXED_SPLIT times the budget's
                  weights, MACs and flash above the code (:func:`channel_budget`); then the filterlets
                  of what remains, as ``filterlet``, over the other half of the epochs. Without
                  training: every prunable group keeps the same fraction of its channels, the most
                  important (the importance summed over each channel's producing weights, DTMM's
                  filter importance), at the widest fraction (bisection over measured candidates,
                  ``PruneChannels``) whose SRAM meets the budget and whose flash and MACs can still
                  be met by filterlets (with one filterlet left per output channel), so channels go
                  only as far as the filterlets cannot reach.
``unstructured``  single weights anywhere in convolution and dense weights (the PatDNN-like baseline),
                  stored as CSR over elements.

Importance (``--importance``): ``taylor`` (the default when there are data) is the first-order Taylor
term ``|w * dL/dw|`` (:func:`tvm_mcu.train.sparse.taylor_scores`, gradients summed over a few training
batches) summed over the filterlet, as DTMM measures it; ``magnitude`` is the filterlet's L2 norm (an
element's absolute value), which needs no data. Without data the default is ``magnitude``, as ``diff``
falls back to ``l1`` without data; asking for ``taylor`` without data is an error.

Ranking is global across layers, each layer's scores divided by their mean first. Raw scores are not
comparable across layers (magnitudes scale with each layer's fan-in and initialisation, Taylor scores
with how much gradient reaches the layer), so without normalisation a global threshold would empty
the layers of small scores first. The mean, rather than the maximum, keeps one outlier from deciding a
layer's cut, and rather than the L2 norm of the layer's scores (Molchanov et al. 2017), it does not
depend on the number of units: an L2 norm grows with the square root of the count, so a large layer
would be cut harder for being large. One global level (how many units are zeroed, weakest first)
is then searched.

Resources: the search finds the least pruning whose figures meet the budget, by bisection on the
global level (:func:`candidate_figures`). Compiled channels-last (``prune_model(channels_last=True)``,
``prune --channels-last``) every candidate is *measured* (``prune._Job.measure``: export, quantise, compile
channels-last, build): the compiler stores each convolution weight with zeros as filterlet CSR, element
CSR or dense, whichever is least flash, so SRAM, flash and stored weights are the firmware's. MACs stay
counted (the kept weights' in a layer stored compact, what its sparse kernel visits): the compiler's
report counts every layer dense. Measuring costs one compile per bisection step (about 1 s for the
Fashion-MNIST CNN 32/64/128, 5 s for its MobileNetV2-style sibling, against 14-17 steps), and it is
worth it: counting prices a layer in the format of the granularity only, the compiler takes the least
of filterlet CSR, element CSR and dense (on the CNN at 80 % of its elements zeroed by magnitude,
59,235 B counted, 41,682 B stored; filterlets counted and stored agree to the byte, 25,984 B at 80 %
of them zeroed). Compiled NCHW (the default) the compiler stores
every weight dense, so flash, stored weights and MACs are *counted* on top of the measurement of the
dense twin (the same channels, no zeros): the weights priced in the compact formats of
:mod:`tvm_mcu.analysis.sparsity`, what the channels-last build would store; SRAM is the dense twin's
(zeros change no activation). The written model is also compiled as it is (``PruneResult.measured``).

Training (``epochs`` > 0; the ``gates`` scheduler trains its own way): the searched masks are applied
gradually over the first half of the training steps, weakest units first, on Zhu and Gupta's cubic
schedule (:class:`tvm_mcu.train.sparse.GradualMasks`), and held over the second half
(:class:`tvm_mcu.train.sparse.MaskHold`), as DiffPrune prunes over half its epochs and fine-tunes over
the other half. The schedule changes when a unit goes, not which: the written model has exactly the
searched masks, so its stored bytes are the searched ones. The written ONNX holds exact zeros, which
int8 quantisation keeps (symmetric weights, zero point 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from tvm_mcu import _tvm, speculative
from tvm_mcu._tvm import tvm
from tvm_mcu.analysis.channels import bindings, magnitudes
from tvm_mcu.analysis.sparsity import (
    Masks,
    WeightSite,
    counted_saving,
    kept_units,
    weight_sites,
)
from tvm_mcu.errors import BadOptionError, BudgetError
from tvm_mcu.passes.relax.prune_channels import PruneChannels

if TYPE_CHECKING:
    from tvm_mcu.prune import Budget, Keep, Resources, Training, _Job
    from tvm_mcu.resource_model import ResourceModel
    from tvm_mcu.train.data import Dataset

logger = logging.getLogger(__name__)

GRANULARITIES = ("channel", "filterlet", "mixed", "unstructured")
IMPORTANCES = ("taylor", "magnitude")
# How the budget is spent over the layers (filterlet and mixed): ``global``, one order of the whole
# model's filterlets; ``anneal``, DTMM's simulated annealing over per-layer ratios
# (:mod:`tvm_mcu.prune_anneal`); ``gates``, filterlet gates trained with budget losses
# (:mod:`tvm_mcu.train.filterlet_gates`).
SCHEDULERS = ("global", "anneal", "gates")
# What each sparse granularity zeroes (its units) and counts (the format of analysis.sparsity).
UNIT = {"filterlet": "filterlet", "mixed": "filterlet", "unstructured": "unstructured"}
UNIT_NAME = {"filterlet": "filterlets", "unstructured": "elements"}


def check_options(
    granularity: str, method: str | None, importance: str | None, data: str | None
) -> tuple[str, str]:
    """The pruning method (channel) or importance (sparse) to use, or a BadOptionError naming the clash.

    ``--method`` ranks channels and belongs to ``--granularity channel``; ``--importance`` ranks
    filterlets or elements and belongs to the others (``mixed`` ranks its channels by the same
    importance, summed per channel, as DTMM does). Giving one with the other granularity is refused
    rather than ignored.
    """
    if granularity not in GRANULARITIES:
        raise BadOptionError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    if importance is not None and importance not in IMPORTANCES:
        raise BadOptionError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")
    if granularity == "channel":
        if importance is not None:
            raise BadOptionError(
                f"--importance {importance} ranks filterlets or elements (--granularity filterlet, mixed "
                "or unstructured); channel pruning ranks channels by --method (diff, l1, uniform)"
            )
        return method or "diff", ""
    if method is not None:
        unit = "elements" if granularity == "unstructured" else "filterlets (and channels)"
        raise BadOptionError(
            f"--method {method} ranks the channels of --granularity channel; --granularity {granularity} "
            f"ranks {unit} by --importance (taylor or magnitude): drop --method"
        )
    if importance == "taylor" and data is None:
        raise BadOptionError(
            "--importance taylor needs --data: its gradients come from training samples "
            "(or use --importance magnitude)"
        )
    if importance is None:
        importance = "taylor" if data is not None else "magnitude"
        logger.info("importance: %s (%s)", importance, "there are data" if data else "no --data")
    return "", importance


@attrs.frozen
class SparseOutcome:
    """What :func:`prune_sparse` chose and measured."""

    keep: dict[int, tuple[int, ...]]
    mod: _tvm.IRModule = attrs.field(eq=False)  # masked (and fine-tuned)
    after: Resources  # the figures held to the budget (candidate_figures)
    measured: Resources  # the written model as the compiler builds it today
    masks: Masks = attrs.field(eq=False, repr=False)
    sparsity: dict[str, tuple[int, int]]  # layer -> (kept, of) filterlets or elements
    training: Training | None
    scheduler: str = "global"
    search: str = ""  # what the scheduler did, one line


def replace_constants(mod: _tvm.IRModule, new: dict[tuple[int, int], np.ndarray]) -> _tvm.IRModule:
    """A new module: constant argument ``arg`` of binding ``binding`` of ``main`` replaced by ``new``'s
    value for ``(binding, arg)`` (the same shape and dtype, so every type stays); ``mod`` is unchanged."""
    binds = bindings(mod["main"])
    pairs = []
    for (i, j), value in sorted(new.items()):
        old = binds[i].value.args[j]
        assert _tvm.const_value(old).shape == value.shape, (i, j)
        pairs.append((old, _tvm.relax_const(np.ascontiguousarray(value))))

    def on_const(c: Any) -> Any:
        return next((v for old, v in pairs if old.same_as(c)), c)

    return tvm.IRModule(
        {gv: _tvm.structural_map(f, [(_tvm.RelaxConst, on_const)]) for gv, f in mod.functions_items()},
        attrs=mod.attrs,
    )


def apply_masks(mod: _tvm.IRModule, masks: Masks) -> _tvm.IRModule:
    """``mod`` with every masked-out weight exactly +0.0."""
    binds = bindings(mod["main"])
    new = {}
    for (i, j), mask in masks.items():
        w = _tvm.const_value(binds[i].value.args[j])
        new[(i, j)] = np.where(mask, w, np.zeros((), w.dtype)).astype(w.dtype)
    return replace_constants(mod, new)


def masked_nonzeros(mod: _tvm.IRModule, masks: Masks) -> int:
    """How many masked-out weights of ``mod`` are not exactly zero (0 when the masks hold)."""
    binds = bindings(mod["main"])
    return sum(
        int(np.count_nonzero(_tvm.const_value(binds[i].value.args[j])[~np.asarray(m, bool)]))
        for (i, j), m in masks.items()
    )


# ------------------------------------------------------------------------------------------- ranking
def unit_scores(
    sites: tuple[WeightSite, ...], unit: str, element: dict[tuple[int, int], np.ndarray]
) -> dict[tuple[int, int], np.ndarray]:
    """Per site, one score per unit: ``element`` scores summed over each filterlet's input channels
    (shape ``(O, kh, kw)``), or the element scores themselves (the weight's shape)."""
    return {s.key: element[s.key].sum(axis=1) if unit == "filterlet" else element[s.key] for s in sites}


def element_scores(
    mod: _tvm.IRModule,
    keys: list[tuple[int, int]],
    importance: str,
    data: Dataset | None,
    seed: int,
) -> dict[tuple[int, int], np.ndarray]:
    """Per weight, each element's score: ``|w * g|`` (taylor) or ``w**2`` (magnitude; summed over a
    filterlet and square-rooted by :class:`Ranking`, the filterlet's L2 norm; an element's ``|w|``)."""
    if importance == "taylor":
        from tvm_mcu.train.bridge import RelaxModule
        from tvm_mcu.train.sparse import taylor_scores

        assert data is not None
        return taylor_scores(RelaxModule(mod), keys, data.x_train, data.y_train, seed=seed)
    binds = bindings(mod["main"])
    return {(i, j): _tvm.const_value(binds[i].value.args[j]).astype(np.float64) ** 2 for i, j in keys}


class Ranking:
    """All units of ``sites`` in one global order, weakest first, each layer's scores divided by their
    mean (module docstring); :meth:`masks` zeroes the first ``n``."""

    def __init__(
        self,
        sites: tuple[WeightSite, ...],
        scores: dict[tuple[int, int], np.ndarray],
        unit: str,
        importance: str,
    ) -> None:
        self.sites, self.unit = sites, unit
        # Magnitude scores are squares (element_scores): the L2 norm is their sum's square root.
        self.scores = {k: np.sqrt(v) if importance == "magnitude" else v for k, v in scores.items()}
        normalised = []
        for s in sites:
            v = self.scores[s.key].astype(np.float64)
            mean = float(v.mean())
            normalised.append((v / mean if mean > 0 else np.zeros_like(v)).ravel())
        self.offsets = np.cumsum([0] + [len(v) for v in normalised])
        flat = np.concatenate(normalised) if normalised else np.zeros(0)
        self.order = np.argsort(flat, kind="stable")  # ties: earlier layers, earlier units first

    @property
    def total(self) -> int:
        return len(self.order)

    def masks(self, n: int) -> dict[tuple[int, int], np.ndarray]:
        """Element masks (True: kept) with the ``n`` weakest units zeroed; an output channel whose every
        filterlet that would zero keeps its strongest one."""
        pruned = np.zeros(self.total, bool)
        pruned[self.order[:n]] = True
        out = {}
        for k, s in enumerate(self.sites):
            score = self.scores[s.key]
            gone = pruned[self.offsets[k] : self.offsets[k + 1]].reshape(score.shape)
            if self.unit == "filterlet":
                per_channel = gone.reshape(len(gone), -1)
                for o in np.flatnonzero(per_channel.all(axis=1)):
                    per_channel[o, int(np.argmax(score[o].ravel()))] = False
                out[s.key] = np.ascontiguousarray(np.broadcast_to(~gone[:, None], s.shape))
            else:
                out[s.key] = ~gone
        return out


def pruning_ranks(ranking: Ranking, masks: Masks) -> dict[tuple[int, int], np.ndarray]:
    """Per weight of ``masks``, the order in which gradual pruning zeroes its units
    (:class:`tvm_mcu.train.sparse.GradualMasks`): -1 where kept, else the unit's rank among the layer's
    pruned units, weakest by ``ranking``'s scores first, broadcast over a filterlet's input channels."""
    out = {}
    for s in ranking.sites:
        mask = np.asarray(masks[s.key], bool)
        score = ranking.scores[s.key]
        gone = ~mask.any(axis=1) if ranking.unit == "filterlet" else ~mask
        rank = np.full(score.shape, -1, np.int64)
        order = np.argsort(score[gone], kind="stable")
        ranked = np.empty(len(order), np.int64)
        ranked[order] = np.arange(len(order))
        rank[gone] = ranked
        out[s.key] = np.ascontiguousarray(
            np.broadcast_to(rank[:, None], s.shape) if ranking.unit == "filterlet" else rank
        )
    return out


def narrowest_masks(sites: tuple[WeightSite, ...]) -> dict[tuple[int, int], np.ndarray]:
    """One filterlet (the first tap) per output channel: the deepest filterlet cut, for counting."""
    out = {}
    for s in sites:
        m = np.zeros(s.shape, bool)
        m[:, :, 0, 0] = True
        out[s.key] = m
    return out


def candidate_figures(
    job: _Job,
    dense: Resources,
    mod: _tvm.IRModule,
    sites: tuple[WeightSite, ...],
    masks: Masks,
    unit: str,
    tag: str,
) -> Resources:
    """The figures ``mod`` with ``masks`` applied is held to (module docstring): measured when the job
    compiles channels-last (the compiler stores the zeros sparse; MACs counted), else counted: SRAM as
    measured on its dense twin ``dense`` (``mod`` as it is: the same channels, no zeros), flash, stored
    weights and MACs with the weights in the compact formats."""
    return candidates_figures(job, dense, mod, sites, [(masks, tag)], unit)[0]


def candidates_figures(
    job: _Job,
    dense: Resources,
    mod: _tvm.IRModule,
    sites: tuple[WeightSite, ...],
    cuts: Sequence[tuple[Masks, str]],
    unit: str,
) -> list[Resources]:
    """:func:`candidate_figures` of each (masks, tag) of ``cuts``, measured in one round."""
    savings = [counted_saving(sites, masks, unit, 1 if job.int8 else 4) for masks, _ in cuts]
    if job.channels_last:
        # The report's MACs are every layer's dense count; the sparse kernels visit the kept weights (and
        # the instructions are the cost model's, from those).
        measured = job.measure_all([(apply_masks(mod, masks), tag) for masks, tag in cuts])
        return [
            attrs.evolve(
                r, macs=dense.macs - saving.macs, instructions=dense.instructions - round(saving.instructions)
            )
            for r, saving in zip(measured, savings, strict=True)
        ]
    return [
        attrs.evolve(
            dense,
            flash=dense.flash - saving.flash,
            macs=dense.macs - saving.macs,
            weights=dense.weights - saving.flash,
            instructions=dense.instructions - round(saving.instructions),
        )
        for saving in savings
    ]


def least_pruning(fits: Callable[[int], bool], total: int, hint: int | None = None) -> int:
    """The smallest ``n`` in ``0..total`` with ``fits(n)``, for ``fits`` monotone; ``fits(total)`` is
    known to hold (:func:`least_pruning_search`, one call at a time)."""
    return speculative.run(lambda: least_pruning_search(total, hint), lambda ns: [fits(n) for n in ns])


def least_pruning_search(total: int, hint: int | None = None) -> Generator[int, bool, int]:
    """The search of :func:`least_pruning` (:mod:`tvm_mcu.speculative`): yields each ``n`` to try,
    receives whether it fits. Bisection; with ``hint``, an estimate of the answer, first steps of 1, 2,
    4, ... from it bracket the answer (about ``2 log2(miss)`` calls instead of ``log2(total)``)."""
    lo, hi = -1, total  # fits(lo) unknown/False, fits(hi) True
    if hint is not None and 0 <= hint < total:
        step = 1
        if (yield hint):
            hi = hint
            while hi - step > lo and (yield hi - step):
                hi, step = hi - step, 2 * step
            lo = max(lo, hi - step)
        else:
            lo = hint
            while lo + step < hi and not (yield lo + step):
                lo, step = lo + step, 2 * step
            hi = min(hi, lo + step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (yield mid):
            hi = mid
        else:
            lo = mid
    return hi


# -------------------------------------------------------------------------------------------- search
def prune_sparse(
    job: _Job,
    budget: Budget,
    before: Resources,
    granularity: str,
    importance: str,
    data: str | None,
    epochs: int,
    limit: int | None,
    steps: int,
    scheduler: str = "global",
    resources: ResourceModel | None = None,
) -> SparseOutcome:
    """Prune ``job``'s model at ``granularity`` until it meets ``budget`` (module docstring); fine-tune
    with the masks held when ``epochs`` > 0. ``scheduler`` (filterlet, mixed): how the cut is spread
    over the layers (SCHEDULERS)."""
    from tvm_mcu.prune import _describe, _fine_tune

    unit = UNIT[granularity]
    ds = _dataset(job, data, limit) if importance == "taylor" else None
    keep = {g.gid: tuple(range(g.size)) for g in job.plan.prunable}
    mod, dense = job.mod, before
    channel_training = None
    channels = ""  # mixed: how its channels were cut
    if granularity == "mixed":
        trained = None
        # No convolution with filterlets (1x1 and depthwise only, as MobileNetV2's): channels alone to
        # the budget at once; narrower channels never make a filterlet storable.
        split = MIXED_SPLIT if _sites(job, job.mod, "filterlet") else 1.0
        if data is not None and epochs >= 2 and (scheduler != "gates" or epochs >= 4):
            trained = _channels_diff(job, budget, before, data, epochs, limit, resources, split)
            if (
                split != 1.0
                and trained is not None
                and not _filterlets_reach(job, budget, trained[1], trained[2])
            ):
                # DiffPrune left too little for filterlets to take (layers too narrow to store sparse):
                # its channels alone to the budget, the filterlets then take what room is left.
                logger.info(
                    "prune mixed: filterlets cannot reach the budget from %s: channels to it", trained[2]
                )
                split = 1.0
                trained = _channels_diff(job, budget, before, data, epochs, limit, resources, split)
        if trained is not None:
            keep, mod, dense, channel_training = trained
            epochs -= channel_training.epochs
            to = f"{split:g}x the budget" if split != 1.0 else "the budget"
            channels = f"channels by DiffPrune ({channel_training.epochs} epochs) to {to}"
        elif data is None or epochs < 2 or before.excess(channel_budget(budget, before, job.int8)):
            keep, mod, dense = _channels(job, budget, importance, ds, steps)
            channels = "channels by bisection (as far as filterlets cannot reach)"
    elif budget.sram is not None and before.sram > budget.sram:
        raise BudgetError(
            f"{job.imported.name} needs {before.sram:,} B of SRAM on {job.board}, over the budget of "
            f"{budget.sram:,} B, and --granularity {granularity} leaves every activation as it is: "
            "prune channels (--granularity mixed or channel)"
        )
    sites = _sites(job, mod, unit)
    if not sites and granularity == "mixed" and not dense.excess(budget):
        # No weight left to zero (none the compiler stores sparse): the channels met the budget alone.
        training = None
        if epochs:
            mod, training = _fine_tune(job, mod, data, epochs, limit)
        measured = job.measure(mod, "result")
        if channel_training is not None:
            training = both_runs(channel_training, training)
        return SparseOutcome(keep, mod, measured, measured, {}, {}, training, search=channels)
    if not sites:
        stored = " that the compiler can store sparse (several taps, 8 or more input channels)"
        raise BudgetError(
            f"{job.imported.name} misses its budget ({_describe(before.excess(budget))}) and has no "
            f"convolution with {'filterlets' if unit == 'filterlet' else 'weights'}"
            f"{stored if job.channels_last else ' (kh * kw > 1, groups 1)'} to prune: try --granularity "
            f"{'mixed or channel' if job.channels_last else 'unstructured or channel'}"
        )
    deepest = candidate_figures(job, dense, mod, sites, _deepest(sites, unit), unit, "deepest")
    if deepest.excess(budget):
        what = "one filterlet per output channel" if unit == "filterlet" else "no weight"
        raise BudgetError(
            f"{job.imported.name} cannot meet the budget on {job.board} with --granularity {granularity}: "
            f"even with {what} left in {len(sites)} layers, {_describe(deepest.excess(budget))} "
            f"({'as compiled' if job.channels_last else 'flash and MACs as counted in the compact format'})"
        )
    keys = [s.key for s in sites]
    element = element_scores(mod, keys, importance, ds, job.seed)
    ranking = Ranking(sites, unit_scores(sites, unit, element), unit, importance)
    training = None
    search = ""
    masks: Masks
    level: int | None = None  # the global order's cut
    if scheduler == "global":
        seen: dict[int, Resources] = {}

        def figures_all(levels: list[int]) -> list[Resources]:
            fresh = [n for n in dict.fromkeys(levels) if n not in seen]
            cuts = [(ranking.masks(n), f"level{n}") for n in fresh]
            for n, r in zip(fresh, candidates_figures(job, dense, mod, sites, cuts, unit), strict=True):
                seen[n] = r
                logger.info("prune %s level %d of %d: %s", granularity, n, ranking.total, r)
            return [seen[n] for n in levels]

        hint = _hint(job, dense, mod, sites, ranking, budget, lambda n: figures_all([n])[0])
        n = speculative.run(
            lambda: least_pruning_search(ranking.total, hint),
            lambda levels: [not r.excess(budget) for r in figures_all(levels)],
            job.width if job.channels_last else 1,  # counted figures cost nothing to wait for
        )
        masks = ranking.masks(n)
        level = n
        search = f"global order: the {n:,} weakest of {ranking.total:,} {UNIT_NAME[unit]} zeroed"
    elif scheduler == "anneal":
        masks, search = _anneal(job, budget, dense, mod, sites, ranking)
    else:
        masks, mod, training, search = _gates(job, budget, dense, sites, ranking, mod, data, epochs, limit)
    masked = apply_masks(mod, masks)
    if epochs and scheduler != "gates":
        masked, training = _fine_tune(
            job, mod, data, epochs, limit, masks=masks, ranks=pruning_ranks(ranking, masks)
        )
    # The masks held through training (MaskHold): an internal invariant, not a user error.
    assert masked_nonzeros(masked, masks) == 0
    measured = job.measure(masked, "result")
    # Channels-last the written model's own figures are the measured ones (fine-tuning moves no zero).
    saving = counted_saving(sites, masks, unit, 1 if job.int8 else 4)
    after = (
        attrs.evolve(
            measured,
            macs=dense.macs - saving.macs,
            instructions=dense.instructions - round(saving.instructions),
        )
        if job.channels_last
        else candidate_figures(job, dense, mod, sites, masks, unit, "result")
    )
    if after.excess(budget) and job.compress != "off" and job.channels_last and level is not None:
        # Coded, the weights' bytes depend on the values fine-tuning moved, not on the zeros alone: the
        # next weakest (the same order) zeroed in the fine-tuned model until it fits again.
        tuned = masked

        def fits(k: int) -> bool:
            return not job.measure(apply_masks(tuned, ranking.masks(k)), f"refit{k}").excess(budget)

        more = least_pruning(fits, ranking.total, hint=level + 1)
        masks = ranking.masks(more)
        masked = apply_masks(tuned, masks)
        measured = after = job.measure(masked, "result")
        search += f"; {more - level:,} more zeroed after fine-tuning, to fit as coded"
    sparsity = _sparsity(sites, masks, unit)
    if channel_training is not None:
        training = both_runs(channel_training, training)
    if after.excess(budget):
        if not job.channels_last:  # every scheduler ends within the counted budget: our bug otherwise
            raise AssertionError(f"the {scheduler} scheduler left {after} over the budget {budget}")
        raise BudgetError(
            f"{job.imported.name}: the {scheduler} scheduler's cut, as compiled channels-last, misses the "
            f"budget on {job.board} ({_describe(after.excess(budget))}) though its counted figures meet it "
            "(the count's correction from the deepest cut fell short); try --scheduler global, which "
            "measures every step"
        )
    if channels:
        search = f"{channels}; then {search}"
    if epochs and scheduler != "gates":
        search += f"; zeroed gradually over {epochs} epochs' first half, held through the second"
    return SparseOutcome(keep, masked, after, measured, masks, sparsity, training, scheduler, search)


def normalised_scores(ranking: Ranking) -> dict[tuple[int, int], np.ndarray]:
    """Each site's unit scores divided by their mean: the global order's scores, per site."""
    out = {}
    for s in ranking.sites:
        v = ranking.scores[s.key].astype(np.float64)
        mean = float(v.mean())
        out[s.key] = v / mean if mean > 0 else np.zeros_like(v)
    return out


def _limits(budget: Budget) -> dict[str, float]:
    """The budgets the counted figures answer to (SRAM is the dense twin's: zeros change none)."""
    return {
        r: float(v)
        for r in ("flash", "weights", "macs", "instructions")
        if (v := getattr(budget, r)) is not None
    }


def _dense_figures(dense: Resources) -> dict[str, float]:
    return {
        "flash": dense.flash,
        "weights": dense.weights,
        "macs": dense.macs,
        "instructions": dense.instructions,
    }


def _margins(
    job: _Job, dense: Resources, mod: _tvm.IRModule, sites: tuple[WeightSite, ...]
) -> dict[str, float]:
    """Compiled channels-last, what the measured flash and stored weights exceed the counted ones by at
    the deepest filterlet cut (the sparse kernels' code against the dense ones', alignment; negative
    where the sparse build is the smaller): the counted searches hold to the budget less this.
    Counted, nothing."""
    if not job.channels_last:
        return {}
    masks = narrowest_masks(sites)
    counted = candidate_figures(
        attrs.evolve(job, channels_last=False), dense, mod, sites, masks, "filterlet", ""
    )
    measured = job.measure(apply_masks(mod, masks), "deepest_measured")
    return {
        "flash": float(measured.flash - counted.flash),
        "weights": float(measured.weights - counted.weights),
    }


# Searches of the annealing, the margin grown by the compiled excess after each.
TIGHTEN_TRIES = 4


def _search_limits(budget: Budget, margins: dict[str, float]) -> dict[str, float]:
    return {r: v - margins.get(r, 0.0) for r, v in _limits(budget).items()}


def _anneal(
    job: _Job,
    budget: Budget,
    dense: Resources,
    mod: _tvm.IRModule,
    sites: tuple[WeightSite, ...],
    ranking: Ranking,
) -> tuple[Masks, str]:
    from tvm_mcu.prune_anneal import Figures, anneal, layer

    scores = normalised_scores(ranking)
    layers = [layer(s, scores[s.key]) for s in sites]
    margins = _margins(job, dense, mod, sites)
    # Compiled channels-last, the margin is the deepest cut's: where the annealed cut compiles over
    # the budget, the margin grows by the excess and the search runs again (it takes seconds).
    for attempt in range(TIGHTEN_TRIES):
        figures = Figures(_dense_figures(dense), _search_limits(budget, margins))
        try:
            masks, done = anneal(layers, figures, itemsize=1 if job.int8 else 4, seed=job.seed)
        except ValueError as exc:  # the corrected limits are beyond the deepest cut
            raise BudgetError(
                f"{job.imported.name} cannot meet the budget on {job.board} with --scheduler anneal: as "
                f"compiled, the figures {figures.limits} leave no cut ({exc})"
            ) from exc
        if not job.channels_last:
            break
        over = candidate_figures(job, dense, mod, sites, masks, "filterlet", f"anneal{attempt}").excess(
            budget
        )
        if not over:
            break
        for resource, value, limit in over:
            if resource in margins:
                margins[resource] += value - limit
    search = (
        f"annealing: {done.temperatures} temperatures, {done.moves:,} moves ({done.accepted:,} taken); "
        f"then {done.repaired} filterlets zeroed to fit and {done.filled} kept in the room left"
    )
    return masks, search


def _sites(job: _Job, mod: _tvm.IRModule, unit: str) -> tuple[WeightSite, ...]:
    """The weights pruned at ``unit``: the convolutions with filterlets (filterlet), or every site.

    Compiled channels-last, only those the compiler can store sparse in that unit's format
    (:func:`tvm_mcu.compiler.may_store_sparse` for filterlets; :func:`tvm_mcu.compiler.may_store_elements`
    and the dense layers for elements): zeros elsewhere save no flash and cost accuracy (on the
    Fashion-MNIST CNN at 1/4 of its weights, the global Taylor ranking zeroed 232 of the first
    convolution's 288 filterlets, which the compiler stores dense: 0.52 float accuracy after 2 epochs
    of fine-tuning on 10,000 images, against 0.70 for channel pruning).
    Counted, every site is priced compact (module docstring), so every site is pruned.
    """
    from tvm_mcu.compiler import may_store_elements, may_store_sparse

    sites = weight_sites(mod)
    if unit == "filterlet":
        sites = tuple(s for s in sites if s.filterlets)
    if job.channels_last:
        storable = may_store_sparse if unit == "filterlet" else may_store_elements

        def stored_sparse(s: WeightSite) -> bool:
            if s.op == "dense":
                return unit != "filterlet"
            return s.op == "conv2d" and storable(s.shape[2] * s.shape[3], s.shape[1])

        sites = tuple(s for s in sites if stored_sparse(s))
    return sites


def _hint(
    job: _Job,
    dense: Resources,
    mod: _tvm.IRModule,
    sites: tuple[WeightSite, ...],
    ranking: Ranking,
    budget: Budget,
    figures: Callable[[int], Resources],
) -> int | None:
    """Measured searches: where counting says the answer is, corrected once by a measurement.

    Counting prices each layer in the granularity's format; the compiler stores the least of filterlet
    CSR, element CSR and dense, and keeps some layers dense (a first convolution of one input channel,
    dense layers), so counted flash and stored weights are off by an amount that changes slowly with
    the level. The counted answer is measured, the difference added to every count, and the counted
    answer of that taken as the hint of :func:`least_pruning`.
    """
    if not job.channels_last:
        return None
    counting = attrs.evolve(job, channels_last=False)

    def counted_fits(n: int, flash: int, weights: int) -> bool:
        r = candidate_figures(counting, dense, mod, sites, ranking.masks(n), ranking.unit, "")
        return not attrs.evolve(r, flash=r.flash + flash, weights=r.weights + weights).excess(budget)

    first = least_pruning(lambda n: counted_fits(n, 0, 0), ranking.total)
    if first >= ranking.total:
        return None
    c = candidate_figures(counting, dense, mod, sites, ranking.masks(first), ranking.unit, "")
    m = figures(first)
    return least_pruning(lambda n: counted_fits(n, m.flash - c.flash, m.weights - c.weights), ranking.total)


def _deepest(sites: tuple[WeightSite, ...], unit: str) -> dict[tuple[int, int], np.ndarray]:
    if unit == "filterlet":
        return narrowest_masks(sites)
    return {s.key: np.zeros(s.shape, bool) for s in sites}


def _sparsity(sites: tuple[WeightSite, ...], masks: Masks, unit: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for s in sites:
        label = s.label if s.label not in out else f"{s.label} #{s.binding}"
        out[label] = (kept_units(s, masks.get(s.key), unit), s.units(unit))
    return out


def _dataset(job: _Job, data: str | None, limit: int | None) -> Dataset:
    from tvm_mcu.train import require_torch

    require_torch()
    from tvm_mcu.train.data import load_dataset

    assert data is not None
    return load_dataset(data, job.imported.inputs[0].shape, limit=limit)


def channel_scores(
    mod: _tvm.IRModule, plan: Any, importance: str, data: Dataset | None, seed: int
) -> dict[int, float]:
    """Each prunable unit's importance: the L1 norm of its producing weights (magnitude), or their
    Taylor scores summed (DTMM's filter importance: over the filter's taps and input channels)."""
    if importance == "magnitude":
        return magnitudes(mod, plan)
    producing = [s for s in plan.sites if s.produces]
    element = element_scores(mod, sorted({(s.binding, s.arg) for s in producing}), "taylor", data, seed)
    score: dict[int, float] = {}
    for s in producing:
        e = element[(s.binding, s.arg)]
        per = np.moveaxis(e, s.axis, 0).reshape(e.shape[s.axis], -1).sum(axis=1)
        for pos, node in enumerate(s.nodes):
            u = plan.unit_of[node]
            score[u] = score.get(u, 0.0) + float(per[pos])
    return score


def _channels(
    job: _Job, budget: Budget, importance: str, data: Dataset | None, steps: int
) -> tuple[Keep, _tvm.IRModule, Resources]:
    """Mixed, first stage: the widest channel level (bisection, ``steps`` measured candidates, speculated
    ``job.width`` a round) whose measured SRAM meets the budget and whose flash and MACs filterlets
    could still bring within it."""
    from tvm_mcu.prune import Level, _describe, bisection, keep_channels

    score = channel_scores(job.mod, job.plan, importance, data, job.seed)
    seen: dict[Level, tuple[Keep, _tvm.IRModule, Resources, list[tuple[str, int, int]]]] = {}

    def judge(points: list[Level]) -> list[bool]:
        cuts = []
        for _, level in points:
            keep = keep_channels(job.plan, score, "l1", level)
            pruned = PruneChannels(keep=keep)(job.mod)
            sites = _sites(job, pruned, "filterlet")
            cuts.append((keep, pruned, sites, narrowest_masks(sites)))
        # Channels-last, one compile of the deepest filterlet cut: zeros change no activation (its SRAM
        # is the dense twin's) and the report counts MACs dense (its MACs are the dense twin's).
        figures = job.measure_all(
            [
                (apply_masks(pruned, narrowest) if job.channels_last else pruned, tag)
                for (_, pruned, _, narrowest), (tag, _) in zip(cuts, points, strict=True)
            ]
        )
        for point, (keep, pruned, sites, narrowest), r in zip(points, cuts, figures, strict=True):
            if job.channels_last:
                saving = counted_saving(sites, narrowest, "filterlet", 1 if job.int8 else 4)
                deepest = attrs.evolve(r, macs=r.macs - saving.macs)
            else:
                deepest = candidate_figures(job, r, pruned, sites, narrowest, "filterlet", point[0])
            excess = [e for e in deepest.excess(budget) if e[0] != "sram"] + [
                e for e in r.excess(budget) if e[0] == "sram"
            ]
            logger.info(
                "prune mixed: channels at %.3f: %s; filterlets at their deepest: %s", point[1], r, deepest
            )
            seen[point] = keep, pruned, r, excess
        return [not seen[point][3] for point in points]

    def search() -> Generator[Level, bool, Level | None]:
        full, narrowest = ("channels_full", 1.0), ("channels_narrowest", 0.0)
        if (yield full):
            return full
        if not (yield narrowest):
            return None
        return (yield from bisection(narrowest, steps, "channels"))

    best = speculative.run(search, judge, job.width)
    if best is None:
        raise BudgetError(
            f"{job.imported.name} cannot meet the budget on {job.board} with --granularity mixed: with "
            "every prunable group at one channel and one filterlet per output channel, "
            f"{_describe(seen[('channels_narrowest', 0.0)][3])}"
        )
    keep, pruned, dense, _ = seen[best]
    return keep, pruned, dense


# Mixed with training, DiffPrune's share of the cut: its channels bring the weights (and the flash
# above the code, the MACs) to MIXED_SPLIT times the budget, and filterlets take the rest, about half
# of what the channels leave. Channels shrink activations and keep dense kernels; filterlets lose less
# accuracy per byte at moderate sparsity but not beyond one filterlet per output channel (1/9 of a 3x3
# convolution): so neither alone, and the split leaves the filterlets a moderate cut at every budget.
MIXED_SPLIT = 2.0


def channel_budget(budget: Budget, before: Resources, int8: bool, split: float = MIXED_SPLIT) -> Budget:
    """The budget of mixed's channel stage: SRAM as asked (filterlets shrink no activation); weights,
    MACs and the flash above the code ``split`` times the budget's, none where the original meets that;
    an instructions budget as MACs of the dense kernels (channels keep them)."""
    from tvm_mcu.prune import Budget, dense_per_mac

    code = before.flash - before.weights

    def relax(limit: int | None, full: int, floor: int = 0) -> int | None:
        if limit is None:
            return None
        value = floor + split * (limit - floor) if limit > floor else limit
        return None if value >= full else int(value)

    macs = budget.macs
    if budget.instructions is not None:
        cap = int(budget.instructions / dense_per_mac(int8))
        macs = min(cap, macs or cap)
    return Budget(
        sram=budget.sram,
        flash=relax(budget.flash, before.flash, code),
        macs=relax(macs, before.macs),
        weights=relax(budget.weights, before.weights),
    )


def _channels_diff(
    job: _Job,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: int,
    limit: int | None,
    resources: ResourceModel | None,
    split: float = MIXED_SPLIT,
) -> tuple[Keep, _tvm.IRModule, Resources, Training] | None:
    """Mixed, first stage with training: DiffPrune's gates for half of ``epochs`` (as channel pruning
    gets them) to :func:`channel_budget`; the other half, which channel pruning spends fine-tuning, is
    the filterlet stage's (gradual pruning, then fine-tuning), so both train as long. None when the
    original meets that budget (no channel to cut) or no width
    does (the caller then bisects as :func:`_channels` does, cutting channels only as far as filterlets
    cannot reach)."""
    from tvm_mcu.prune import _diff, _narrowest

    target = channel_budget(budget, before, job.int8, split)
    if not before.excess(target):
        logger.info("prune mixed: the original meets the channel stage's budget %s", target)
        return None
    try:
        _narrowest(job, target)
    except BudgetError as exc:
        logger.info("prune mixed: no width meets the channel stage's budget (%s): bisection instead", exc)
        return None
    logger.info("prune mixed: channels by DiffPrune to %s", target)
    return _diff(
        job, target, before, data, max(1, epochs // 2), limit, "compiler", job.progress, resources, False
    )[:4]


# The joint search's share of the cut when sparsity follows (udc_sparse): channels and bits to this times
# the budget, then zeros the rest. Smaller than MIXED_SPLIT: deep element sparsity costs accuracy fast
# (the demo CNN at 80 % zeros, 4 epochs on 10,000 images: 0.70 by magnitude), and coded, 40-50 % zeros
# already take a third off (int8 per-channel weights: 0.64x of their bytes at 50 %).
UDC_SPLIT = 1.5
# The elements' ranking there: magnitude (on the demo CNN at 80 % zeros: 0.70 against Taylor's 0.43).
UDC_IMPORTANCE = "magnitude"
# The share of the weights the zeros are planned to take at most (:func:`zeros_split`): at 94.5 % zeros
# (what a fixed 1.5x split asked of MobileNetV2-style int4 layers at 1/4 of its stored weights) its
# training collapsed to chance (0.10); the demo CNN at 80 % fell to 0.70 (above), at 40-50 % it holds.
UDC_MAX_ZEROS = 0.5
# Below this split (those zeros taking under 1/11 of the coded bytes) the joint search runs again to the
# budget and nothing is zeroed: MobileNetV2-style at 1/4 of its stored weights, the widths found at 1.5x
# (mostly int2 and int4) lost 2.8 % of their bytes to 50 % zeros; channels to 1.03x the budget at
# those widths, then 49 % of the weights the compiler stores sparse zeroed to take the last 206 B:
# 0.7261 int8 accuracy, where --method udc reached 0.8735 (4 epochs on 15,000 images).
UDC_MIN_SPLIT = 1.1


def zeros_split(job: _Job, found: _tvm.IRModule) -> float:
    """How far above the budget the channels at the joint search's widths may stay for the zeros to take
    the rest (``udc_sparse``): the coded weights' bytes of ``found`` (the search's network, at
    ``job.bits``) over their bytes with ``UDC_MAX_ZEROS`` of its weights zeroed (the same ranking as
    the zeros stage), within 1 and ``UDC_SPLIT``. Coded, a zero costs a bit but a kept value its flag
    and its code, so zeros take far less off int4 and int2 layers than off int8 ones (50 % of the demo
    CNN's weights zeroed, measured: 0.73x of its stored weights at int8, 0.89x at int4, 0.98x at int2)."""
    dense = job.measure(found, "udc_found")
    sites = _sites(job, found, "unstructured")
    if not sites or dense.weights <= 0:
        return 1.0
    keys = [s.key for s in sites]
    ranking = Ranking(
        sites,
        unit_scores(sites, "unstructured", element_scores(found, keys, UDC_IMPORTANCE, None, job.seed)),
        "unstructured",
        UDC_IMPORTANCE,
    )
    cut = ranking.masks(int(UDC_MAX_ZEROS * ranking.total))
    capped = candidate_figures(job, dense, found, sites, cut, "unstructured", "udc_zeros_cap")
    logger.info(
        "prune udc: %.0f %% zeros take the search's network from %s B to %s B of stored weights",
        100 * UDC_MAX_ZEROS,
        f"{dense.weights:,}",
        f"{capped.weights:,}",
    )
    return min(UDC_SPLIT, max(1.0, dense.weights / max(1, capped.weights)))


def udc_sparse(
    job: _Job,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: int,
    limit: int | None,
    steps: int,
    resources: ResourceModel | None,
) -> tuple[SparseOutcome, dict[tuple[int, int], int]]:
    """UDC's joint search with sparsity, for a model deployed with its weights Golomb-Rice coded
    (``job.compress``): a zero weight then costs one bit (zero flags), so element sparsity shrinks flash at
    any bit width. First DiffPrune's channel gates and a bit gate per layer (``--method udc``) for half the
    epochs, to ``UDC_SPLIT`` times the budget (:func:`channel_budget`). Then, as ``--method udc`` trains
    what its search found (``prune._udc``), DiffPrune's channel gates again from the original weights for
    half the epochs, every layer held at the width found and trained quantised so, to what ``UDC_MAX_ZEROS``
    zeros leave for them at those widths (:func:`zeros_split`: int4 and int2 layers take less from zeros
    than int8 ones). Then the weakest weights (``UDC_IMPORTANCE``) zeroed until the compiled, coded model
    meets the budget (the global order, each level measured), gradually over the other half's first half and
    held through its second, trained as quantised at those widths: 1.5x the epochs in all. Without the
    second run the network found trains at its widths for the zeroing half only. On the Fashion-MNIST CNN at
    1/2, 1/4, 1/8 and 1/16 of its stored weights (8 epochs on 60,000 images, int8 accuracy) the second run
    moved it +0.2, -0.1, -0.6, +0.8 points (0.9201, 0.9149, 0.8641, 0.8829); at 1/8 and 1/16 it is still 4.2
    and 1.3 points behind the best width-only method (docs/BENCHMARKS_PRUNING.md), where the search already
    chose int2 layers and the zeros must take a third of the bytes. Where ``UDC_MAX_ZEROS`` zeros would
    take too little at the widths found (:func:`zeros_split` below ``UDC_MIN_SPLIT``) nothing is zeroed:
    the joint search runs again to the budget and its network is trained as ``--method udc`` trains it
    (2x the epochs in all). (The outcome, each weight's bits.)"""
    from tvm_mcu.prune import _joint_search, _resources_for, _search_then_train, _train_at_widths
    from tvm_mcu.prune_bits import weight_shapes

    # Measured channels-last: the blocked kernels read the coded weights.
    job = attrs.evolve(job, channels_last=True)
    target = channel_budget(budget, before, job.int8, UDC_SPLIT)
    keep = {g.gid: tuple(range(g.size)) for g in job.plan.prunable}
    mod, dense, first = job.mod, before, None
    chosen = {k: 8 for k in weight_shapes(job.mod)}
    stage = ""
    if before.excess(target):
        logger.info("prune udc: channels and bits by the joint search to %s", target)
        half = max(1, epochs // 2)
        resources = _resources_for(job, resources)  # built once for every run
        found = _joint_search(job, target, before, data, half, limit, "compiler", job.progress, resources)
        split = zeros_split(attrs.evolve(job, bits=found.bits), found.mod)
        searched = (
            f"channels and bits by the joint search ({half} epochs, {found.after.weights:,} B stored) to "
            f"{UDC_SPLIT:g}x the budget"
        )
        if split < UDC_MIN_SPLIT:
            # Zeros would buy too little at these widths: --method udc's own search and training.
            logger.info(
                "prune udc: zeros take too little at the widths found: the joint search to the budget"
            )
            run = _search_then_train(
                job, budget, before, data, (half, epochs), limit, "compiler", job.progress, resources, True
            )
            search = (
                f"{searched}, at whose widths {UDC_MAX_ZEROS:.0%} zeros would take {1 - 1 / split:.1%} of "
                f"the stored weights (under {1 - 1 / UDC_MIN_SPLIT:.0%}): no zeros; the joint search again "
                f"to the budget ({half} epochs), then trained at its widths from the original weights "
                f"({epochs} epochs)"
            )
            runs = both_runs(found.training, run.training)
            plain = SparseOutcome(run.keep, run.mod, run.after, run.after, {}, {}, runs, search=search)
            return plain, {**chosen, **run.bits}
        run = _train_at_widths(
            job,
            found,
            channel_budget(budget, before, job.int8, split),
            before,
            data,
            half,
            limit,
            "compiler",
            job.progress,
            resources,
            False,
        )
        keep, mod, first = run.keep, run.mod, run.training
        chosen.update(run.bits)
        epochs -= half
        stage = (
            f"{searched}, then channels again at those bits from the original weights ({half} epochs) to "
            f"{split:.2f}x it (what {UDC_MAX_ZEROS:.0%} zeros take at those bits); "
        )
    staged = attrs.evolve(job, mod=mod, bits=chosen)
    dense = staged.measure(mod, "udc_widths")
    outcome = prune_sparse(staged, budget, dense, "unstructured", UDC_IMPORTANCE, data, epochs, limit, steps)
    training = both_runs(first, outcome.training) if first is not None else outcome.training
    outcome = attrs.evolve(outcome, keep=keep, training=training, search=f"{stage}{outcome.search}")
    return outcome, chosen


def _filterlets_reach(job: _Job, budget: Budget, mod: _tvm.IRModule, dense: Resources) -> bool:
    """Whether filterlet pruning of ``mod`` (figures ``dense``) can meet ``budget``: it meets it
    already, or its deepest filterlet cut does."""
    if not dense.excess(budget):
        return True
    sites = _sites(job, mod, "filterlet")
    return bool(sites) and not candidate_figures(
        job, dense, mod, sites, _deepest(sites, "filterlet"), "filterlet", "reach"
    ).excess(budget)


def both_runs(first: Training, second: Training | None) -> Training:
    """Two training runs in a row as one: the first's original accuracy, the second's result."""
    if second is None:
        return first
    return attrs.evolve(
        second,
        epochs=first.epochs + second.epochs,
        accuracy_before=first.accuracy_before,
        seconds_per_epoch=(*first.seconds_per_epoch, *second.seconds_per_epoch),
    )


# Without --scheduler: the gates where they can train (data, and the epochs mixed's two stages need),
# else the global order. Measured on the Fashion-MNIST CNN 32/64/128 (int8 accuracy, 10,000 test
# images): the schedulers' comparison (docs/BENCHMARKS_PRUNING.md) has the gates ahead of the global
# order by 5.0 and 3.0 points at its two budgets; in mixed, at 1/4 to 1/32 of the stored weights (4 epochs),
# gates 0.8909 / 0.8802 / 0.8709 / 0.8448 against global 0.8817 / 0.8651 / 0.8714 / 0.8392.
GATES_EPOCHS = {"filterlet": 2, "mixed": 4}


def default_scheduler(granularity: str, data: str | None, epochs: int) -> str:
    """The scheduler a filterlet cut gets when none is asked for: ``gates`` when they can train (``data``
    and at least GATES_EPOCHS epochs), else ``global``."""
    need = GATES_EPOCHS.get(granularity)
    return "gates" if need is not None and data is not None and epochs >= need else "global"


def check_scheduler(granularity: str, scheduler: str, data: str | None, epochs: int) -> None:
    """BadOptionError for a scheduler the granularity does not take, or gates without training."""
    if scheduler not in SCHEDULERS:
        raise BadOptionError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if scheduler == "global":
        return
    if granularity not in ("filterlet", "mixed"):
        raise BadOptionError(
            f"--scheduler {scheduler} spreads a filterlet cut over the layers (--granularity filterlet or "
            f"mixed); --granularity {granularity} has its own search: drop --scheduler"
        )
    if scheduler == "gates" and (data is None or epochs < 2):
        raise BadOptionError(
            "--scheduler gates trains its gates: it needs --data and --epochs 2 or more (half gating, half "
            "fine-tuning); --scheduler anneal or global needs no training"
        )


def _gates(
    job: _Job,
    budget: Budget,
    dense: Resources,
    sites: tuple[WeightSite, ...],
    ranking: Ranking,
    mod: _tvm.IRModule,
    data: str | None,
    epochs: int,
    limit: int | None,
) -> tuple[Masks, _tvm.IRModule, Training, str]:
    """Filterlet gates for the first half of the epochs, then fine-tuning with the masks held."""
    from tvm_mcu.prune import _fine_tune, trainable
    from tvm_mcu.prune_anneal import layer
    from tvm_mcu.train.bridge import write_back
    from tvm_mcu.train.filterlet_gates import train_gates

    ds = _dataset(job, data, limit)
    scores = normalised_scores(ranking)
    layers = [layer(s, scores[s.key]) for s in sites]
    module = trainable(mod, ds)
    gating = max(1, epochs // 2)
    gates, log = train_gates(
        module,
        layers,
        scores,
        _dense_figures(dense),
        _search_limits(budget, _margins(job, dense, mod, sites)),
        ds,
        epochs=gating,
        itemsize=1 if job.int8 else 4,
        seed=job.seed,
    )
    masks = gates.masks()
    trained = apply_masks(write_back(mod, module), masks)
    tuned, training = _fine_tune(job, trained, data, epochs - gating, limit, masks=masks)
    training = attrs.evolve(
        training, epochs=epochs, seconds_per_epoch=(*log.train.seconds, *training.seconds_per_epoch)
    )
    search = (
        f"gates: {gating} epochs gating ({len(log.history)} cuts), {log.forced} filterlets zeroed after "
        f"training to fit, then {epochs - gating} epochs fine-tuning"
    )
    return masks, tuned, training, search
