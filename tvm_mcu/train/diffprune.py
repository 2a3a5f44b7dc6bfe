"""DiffPrune: differentiable, budgeted channel pruning while the model trains.

Every unit (one channel class of a prunable group) gets a gate parameter ``theta``. The forward pass
multiplies each tensor of the group by the unit's hard mask ``theta > 0`` (so the network being trained
is exactly the network that would be deployed), and the backward pass goes through ``sigmoid(theta)``
(straight-through): a unit's gradient is the task loss's salience of its channel. The kept count of a
group is the sum of its masks, fed to the :class:`~tvm_mcu.resource_model.ResourceModel` of the compiled
model, so each budget loss ``lambda_r * relu(R_r(k) / B_r - 1)`` prices every unit by what its group
costs on the board: a channel of a tensor at the SRAM peak is expensive, one off the peak is free for
SRAM. ``lambda_r`` rises while its budget is missed and falls once it is met (dual ascent), so units
whose salience is below their price are switched off, and the others come back on.

Pruning is iterative: every ``PRUNE_EVERY`` steps, units that have stayed off for a while (``theta``
below ``DEAD_THETA``) are removed for good. When the pruning epochs end, units are removed by lowest
gate until the model predicts every budget met; the caller then cuts the channels (PruneChannels) and
fine-tunes the smaller network.

Gates are compared across groups (the lowest goes first), and a group whose every gate the budget
pushes down would lose all but one channel. Each group therefore keeps a floor, its strongest
``floor`` units on whatever their gates (``min_width``): no layer is cut to far below what uniform
scaling to the budget would leave it. Only when the budget cannot be met above the floors do removals
go below them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import numpy as np

from tvm_mcu.analysis.channels import ChannelPlan
from tvm_mcu.resource_model import ResourceModel
from tvm_mcu.train import require_torch
from tvm_mcu.train.data import Dataset

require_torch()

import torch  # noqa: E402

from tvm_mcu.train.bits import BitGates  # noqa: E402
from tvm_mcu.train.bridge import RelaxModule  # noqa: E402
from tvm_mcu.train.loop import TrainLog, train  # noqa: E402

INIT_THETA = 0.5
PRIOR_WEIGHT = 1.0
GATE_LR = 0.02
DEAD_THETA = -1.0
FILL_THETA = 0.1  # the gate of a unit switched back on by fill_to
LAMBDA = 0.1
PRUNE_EVERY = 25
ANNEAL = 0.5
# The weights' learning rate while pruning (constant, as the network keeps changing shape under it),
# by how hard the budget cuts (``prune_lr``). Measured with BatchNorm folded into the weights (before
# training put it back, ``RelaxModule.renormalise``; not measured again since), which makes Adam's
# default 1e-3 far too slow: demo CNN, 12k samples, 1 epoch, 70 % SRAM: 0.51 test accuracy at 1e-3,
# 0.75 at 3e-3, 0.76 at 1e-2. A mild cut keeps most of the trained weights, which a high rate only
# shakes; a hard cut leaves a different network that has to relearn. Fashion-MNIST CNN 32/64/128, 16
# epochs, float accuracy (seeds 0-2 where given): SRAM 1/2, 0.9134/0.9159/0.9114 at 1e-2,
# 0.9221/0.9198/0.9186 at 3e-3; SRAM 1/4, 0.8955 at 1e-2, 0.8956 at 3e-3, 0.9002/0.8992/0.8992 at
# 5.5e-3 (this rule); SRAM 1/8, 0.8343 at 1e-2, 0.8263 at 3e-3.
PRUNE_LR_MILD = 3e-3  # at a cut to 1/2 of the full figures or less deep
PRUNE_LR_HARD = 1e-2  # at a cut to 1/8 or deeper; log-linear between
RESOURCES = ("sram", "flash", "weights", "macs")
# A group keeps at least this fraction of the width uniform scaling to the budget would leave it
# (sqrt(cut): weights and MACs fall with about the square of the width). MobileNetV2-style on
# Fashion-MNIST, weights cut to 1/8, 2 epochs on 15,000 images: without a floor the gates of the
# classifier's input fell to 2 of 96 and an expansion to 1 of 128 (accuracy 0.30).
FLOOR_OF_UNIFORM = 0.25


def min_width(cut: float) -> float:
    """The fraction of a group's units it keeps at least when the deepest cut of the budget is ``cut``."""
    return FLOOR_OF_UNIFORM * math.sqrt(min(max(cut, 0.0), 1.0))


def prune_lr(cut: float) -> float:
    """The weights' learning rate while pruning to ``cut`` (the smallest ratio of a limit to its figure)."""
    if not cut > 0:
        raise ValueError(f"the cut must be a positive ratio, got {cut}")
    t = math.log2(0.5 / min(max(cut, 1 / 8), 1 / 2)) / 2  # 0 at 1/2, 1 at 1/8
    return PRUNE_LR_MILD * (PRUNE_LR_HARD / PRUNE_LR_MILD) ** t


@attrs.frozen
class DiffPruneLog:
    keep: dict[int, tuple[int, ...]]
    train: TrainLog
    # (step, predicted sram, flash, macs, kept channels per group) every PRUNE_EVERY steps.
    history: tuple[tuple[int, float, float, float, tuple[int, ...]], ...]
    forced: int  # units removed after training to meet the budget by the model
    lr: float  # the weights' learning rate while pruning


class Gates(torch.nn.Module):
    """One gate per unit of the groups ``gids`` (the resource model's); taps for the bridge; kept counts."""

    alive: torch.Tensor  # 1 while a unit may still be kept, 0 once removed
    owner: torch.Tensor  # the group (index in the resource model) of each unit
    held: torch.Tensor  # 1 for the units each group's floor keeps on (``hold_floors``)

    def __init__(
        self,
        plan: ChannelPlan,
        gids: tuple[int, ...],
        prior: dict[int, float] | None = None,
        floor: float = 0.0,
        quantum: int = 1,
    ) -> None:
        super().__init__()
        # Kept counts are multiples of ``quantum`` (or the whole group): ``keep`` rounds up.
        self.quantum = max(1, int(quantum))
        by_gid = {g.gid: g for g in plan.groups}
        self.groups = [by_gid[gid] for gid in gids]
        self.index: dict[int, int] = {}  # unit -> gate index
        owner: list[int] = []
        for gi, g in enumerate(self.groups):
            for u in g.units:
                self.index[u] = len(owner)
                owner.append(gi)
        n = len(owner)
        # Initial gates: INIT_THETA plus the unit's prior (its weights' L1 norm relative to the largest
        # of its group), so that training starts from magnitude order and moves it by salience and price.
        init = np.full(n, INIT_THETA, np.float32)
        if prior:
            for g in self.groups:
                s = np.array([prior.get(u, 0.0) for u in g.units])
                rel = s / s.max() if s.max() > 0 else np.ones_like(s)
                for u, r in zip(g.units, rel, strict=True):
                    init[self.index[u]] += PRIOR_WEIGHT * float(r)
        self.theta = torch.nn.Parameter(torch.from_numpy(init))
        self.register_buffer("alive", torch.ones(n))
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.long))
        # Units kept on whatever their gate: each group's strongest ``floors[g]`` (``hold_floors``).
        self.register_buffer("held", torch.zeros(n))
        self.floors = [max(1, math.ceil(floor * len(g.units))) for g in self.groups]
        self.plan = plan
        self._mask: torch.Tensor | None = None
        self.hold_floors()

    def hold_floors(self) -> None:
        """Hold each group's ``floor`` strongest units (highest gates among those not removed) on, and
        bring back removed ones where a group has fewer left: the gates of a whole group may all fall
        when its channels are expensive, and the group would collapse to one channel."""
        theta = self.theta.detach()
        self.held.zero_()
        for gi, g in enumerate(self.groups):
            idx = [self.index[u] for u in g.units]
            order = sorted(idx, key=lambda i: (-float(self.alive[i]), -float(theta[i]), i))
            for i in order[: self.floors[gi]]:
                self.held[i] = 1.0
                self.alive[i] = 1.0

    def lower_floors(self, groups: set[int]) -> None:
        """Let ``groups`` (indices) go below their floors: the budget cannot be met above them."""
        for gi in groups:
            self.floors[gi] = 1
        self.hold_floors()

    def mask(self) -> torch.Tensor:
        """Hard masks forward, sigmoid gradients backward; removed units are 0 both ways."""
        soft = torch.sigmoid(self.theta)
        hard = ((self.theta > 0).to(soft.dtype) + self.held).clamp(max=1.0)
        return (hard + soft - soft.detach()) * self.alive

    def counts(self, mask: torch.Tensor) -> torch.Tensor:
        k = torch.zeros(len(self.groups), dtype=mask.dtype)
        return k.index_add(0, self.owner, mask)

    def begin_step(self) -> torch.Tensor:
        self._mask = self.mask()
        return self._mask

    def taps(self, readers: Mapping[int, tuple[int, ...]] | None = None) -> dict[int, Callable[[Any], Any]]:
        """Binding index -> multiply its value by the masks of its channels.

        Without ``readers``, every tensor of the gated groups is masked. With ``readers`` (binding ->
        the bindings reading it, -1 for the output: ``RelaxModule.readers()``), a tensor whose every
        reader carries all its gated channels on to its own value (a per-channel step of the group:
        bias, activation, pooling, depthwise, residual add, concat) is left alone: the mask comes
        where the channels are mixed or leave the model, so the forward pass is the same pruned
        network with fewer masking passes (MobileNetV2-style: 12 masks instead of 51, and a gated epoch
        no slower than a plain one instead of 1.4x).
        """
        out: dict[int, Callable[[Any], Any]] = {}
        n = len(self.index)
        infos, unit_of = self.plan.infos, self.plan.unit_of
        for binding, info in sorted(infos.items()):
            gate = [self.index.get(unit_of[node], n) for node in info.nodes]
            if all(g == n for g in gate):
                continue
            if readers is not None:
                gated = {unit_of[node] for node, g in zip(info.nodes, gate, strict=True) if g < n}
                rs = readers.get(binding, ())
                if rs and all(r in infos and gated <= {unit_of[node] for node in infos[r].nodes} for r in rs):
                    continue
            out[binding] = _Tap(self, torch.tensor(gate, dtype=torch.long), info.axis)
        return out

    def keep(self) -> dict[int, tuple[int, ...]]:
        theta = self.theta.detach()
        on = (((theta > 0) | (self.held > 0)) & (self.alive > 0)).numpy()
        keep = {}
        for g in self.groups:
            kept = tuple(c for c, u in enumerate(g.units) if on[self.index[u]])
            if not kept:  # never remove a whole group: keep its strongest unit
                kept = (int(np.argmax([float(theta[self.index[u]]) for u in g.units])),)
            want = min(len(g.units), -(-len(kept) // self.quantum) * self.quantum)
            if want > len(kept):  # up to a multiple of the quantum: the next highest gates
                rest = sorted(
                    (c for c, u in enumerate(g.units) if c not in kept),
                    key=lambda c: (-float(theta[self.index[g.units[c]]]), c),
                )
                kept = tuple(sorted((*kept, *rest[: want - len(kept)])))
            keep[g.gid] = kept
        return keep

    def input_masks(
        self, keys: list[tuple[int, int]], out_axis: Mapping[tuple[int, int], int]
    ) -> dict[tuple[int, int], tuple[int, Callable[[], torch.Tensor]]]:
        """Per constant weight (binding, argument) of ``keys`` whose input-channel axis the plan
        indexes by gated channels: (that axis, a function giving its channels' masks this step)."""
        n = len(self.index)
        out: dict[tuple[int, int], tuple[int, Callable[[], torch.Tensor]]] = {}
        wanted = set(keys)
        for site in self.plan.sites:
            key = (site.binding, site.arg)
            if key not in wanted or site.axis == out_axis[key]:
                continue
            gate = torch.tensor([self.index.get(self.plan.unit_of[node], n) for node in site.nodes])
            if bool((gate == n).all()):
                continue

            def mask(gate: torch.Tensor = gate) -> torch.Tensor:
                m = self._mask if self._mask is not None else self.mask()
                return torch.cat([m, m.new_ones(1)])[gate]

            out[key] = (site.axis, mask)
        return out

    def hard_counts(self) -> np.ndarray:
        keep = self.keep()
        return np.array([len(keep[g.gid]) for g in self.groups], float)


class _Tap:
    def __init__(self, gates: Gates, gate: torch.Tensor, axis: int) -> None:
        self.gates, self.gate, self.axis = gates, gate, axis

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.gates._mask if self.gates._mask is not None else self.gates.mask()
        full = torch.cat([m, m.new_ones(1)])[self.gate]
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return x * full.view(shape)


def _violations(model: ResourceModel, k: Any, budget: dict[str, float]) -> dict[str, Any]:
    fns = {"sram": model.sram, "flash": model.flash, "weights": model.stored, "macs": model.macs}
    return {r: fns[r](k) / limit - 1.0 for r, limit in budget.items()}


def remove_to(gates: Gates, model: ResourceModel, budget: dict[str, float]) -> int:
    """Remove units by lowest gate until the model predicts every budget met; how many were removed.

    Units held by their group's floor (``Gates.hold_floors``) stay; when the budget cannot be met
    above the floors, the floors of the groups that could still narrow are lowered to one channel.
    With bit gates in the model (``resource_model.BitsModel`` over :class:`BitGates`), a missed flash
    or stored-weights budget may instead put the int8 layer with the lowest gate to int4, when its gate
    is below the lowest channel's: the gates of both kinds rank salience against price on one scale."""
    removed = 0
    bits = getattr(model, "bitwidths", None)
    packed: frozenset[tuple[int, int]] = getattr(model, "packed", frozenset())
    while True:
        k = gates.hard_counts()
        over = [r for r, v in _violations(model, k, budget).items() if v > 0]
        if not over:
            return removed
        # Width flips that lower the flash and the stored weights: an int8 layer to int4 (ranked by its
        # gate), an int4 layer that may go int2 to int2 (by its second gate).
        flips: list[tuple[float, int, int]] = []  # (gate, 1 or 2, layer)
        if isinstance(bits, BitGates) and not bits.fixed and {"flash", "weights"} & set(over):
            on8, on4 = bits.theta.detach(), bits.theta2.detach()
            for i, key in enumerate(bits.keys):
                if key in packed and float(on8[i]) > 0:
                    flips.append((float(on8[i]), 1, i))
                elif key in packed and key in bits.two_bit and float(on4[i]) > 0:
                    flips.append((float(on4[i]), 2, i))
        # Groups whose narrowing lowers a missed resource and that keep more than one channel (quantum).
        q = gates.quantum
        useful = {gi for r in over for gi, d in enumerate(model.pressure(k, r, q)) if d > 0 and k[gi] > q}
        if not useful and not flips:
            return removed
        theta = gates.theta.detach()
        live = ((theta > 0) | (gates.held > 0)) & (gates.alive > 0) & (gates.held == 0)
        cands = [i for i in range(len(theta)) if live[i] and int(gates.owner[i]) in useful]
        if not cands and not flips and useful:
            gates.lower_floors(useful)
            theta = gates.theta.detach()
            live = ((theta > 0) | (gates.held > 0)) & (gates.alive > 0) & (gates.held == 0)
            cands = [i for i in range(len(theta)) if live[i] and int(gates.owner[i]) in useful]
        if not cands and not flips:
            return removed
        if flips:
            assert isinstance(bits, BitGates)
            gate, which, flip = min(flips)
            if not cands or gate < min(float(theta[i]) for i in cands):
                (bits.theta if which == 1 else bits.theta2).data[flip] = -FILL_THETA
                removed += 1
                continue
        worst = min(cands, key=lambda i: float(theta[i]))
        gates.alive[worst] = 0.0
        removed += 1


def fill_to(gates: Gates, model: ResourceModel, budget: dict[str, float]) -> int:
    """Switch units back on while the model predicts every budget still met; how many.

    Gates that drifted below 0 while the structure was still moving leave the network narrower than
    the budget allows; this spends what is left. The units of a group cost the same, so each round
    tries the highest off gate of every group, highest first, and takes the first that fits (the
    model is not monotone in the counts: a candidate switch can make room for a unit that did not fit).
    """
    added = 0
    while True:
        theta = gates.theta.detach()
        on = ((theta > 0) | (gates.held > 0)) & (gates.alive > 0)
        best: dict[int, int] = {}
        for i in range(len(theta)):
            g = int(gates.owner[i])
            if not on[i] and (g not in best or float(theta[i]) > float(theta[best[g]])):
                best[g] = i
        for i in sorted(best.values(), key=lambda i: (-float(theta[i]), i)):
            was = (float(gates.theta.data[i]), float(gates.alive[i]))
            gates.theta.data[i] = max(was[0], FILL_THETA)
            gates.alive[i] = 1.0
            if not any(v > 0 for v in _violations(model, gates.hard_counts(), budget).values()):
                added += 1
                break
            gates.theta.data[i], gates.alive[i] = was
        else:
            return added


def diffprune(
    module: RelaxModule,
    plan: ChannelPlan,
    model: ResourceModel,
    data: Dataset,
    budget: dict[str, float],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    prior: dict[int, float] | None = None,
    teacher: np.ndarray | None = None,
    bits: BitGates | None = None,
    quantum: int = 1,
) -> tuple[Gates, DiffPruneLog]:
    """Train ``module`` (in place) with gates and budget losses for ``epochs``; the gates and a log.

    ``budget``: resource -> limit, for any of "sram", "flash", "weights" (stored), "macs" (the model's
    units: bytes, MACs).
    ``prior``: unit -> importance to start the gates from (e.g. ``channels.magnitudes``).
    ``teacher``: the unpruned model's logits per training sample, to distill from (``loop.train``).
    ``lr``: the weights' learning rate; by default ``prune_lr`` of the deepest cut of the budget.
    Every PRUNE_EVERY steps (more often in short runs) the target moves from the full model's figures
    towards ``budget`` (cubic, reached after ANNEAL of the steps) and the lowest gates are switched off
    until the model predicts the target met. Once the target is the budget, the gates freeze and any
    room the budget leaves goes back to the highest gates (``fill_to``); the rest of the epochs train
    that structure.

    ``bits`` (UDC's joint search of width and bitwidth): gates choosing int8, int4 or int2 for each layer's
    weights, trained alongside the channel gates; ``model`` must price them
    (``resource_model.with_bits`` over ``bits``). They freeze with the channel gates, after the int4
    layers with the highest gates go back to int8 while the budget holds (``fill_bits``); the weights
    are trained as quantised at their bits. ``quantum``: every group keeps a multiple of it (or all):
    the cut rounds each count up to one, and the budget is met at the rounded counts.
    """
    full = model.figures(model.full)
    start = {r: float(getattr(full, r)) for r in budget}
    cut = min((budget[r] / start[r] for r in budget), default=1.0)
    gates = Gates(plan, model.groups, prior, floor=min_width(cut), quantum=quantum)
    module.taps = gates.taps(module.readers())
    if bits is not None:
        bits.attach(module, gates.input_masks(bits.keys, bits.axis))
    if lr is None:
        lr = prune_lr(cut)
    total = epochs * ((len(data.x_train) + batch_size - 1) // batch_size)
    history: list[tuple[int, float, float, float, tuple[int, ...]]] = []
    step_count = 0
    # At least about 20 pruning iterations however short the run.
    every = max(1, min(PRUNE_EVERY, total // 20))

    def extra_loss() -> torch.Tensor:
        mask = gates._mask
        assert mask is not None
        k = gates.counts(mask)
        return sum((LAMBDA * torch.relu(v) for v in _violations(model, k, budget).values()), torch.zeros(()))

    def on_step(epoch: int, step: int) -> None:
        nonlocal step_count
        step_count += 1
        if step_count % every:
            return
        if not gates.theta.requires_grad:
            return  # the structure is final: the rest of the run trains it
        f = min(1.0, step_count / max(1.0, ANNEAL * total))
        target = {r: start[r] + (budget[r] - start[r]) * (1 - (1 - f) ** 3) for r in budget}
        gates.hold_floors()
        gates.alive[(gates.theta.detach() < DEAD_THETA) & (gates.held == 0)] = 0.0
        remove_to(gates, model, target)
        if f >= 1.0:
            # Target reached: freeze the gates. Left to train, they random-walk below 0 one by one and
            # the network ends far narrower than the budget (wide CNN, 16 pruning epochs: 1 of 32
            # channels left in the first conv, 14 % of the SRAM budget unused).
            if bits is not None:
                fill_bits(bits, model, gates, budget)
                bits.freeze()
            fill_to(gates, model, budget)
            gates.theta.requires_grad_(False)
        k = gates.hard_counts()
        fig = model.figures(k)
        history.append((step_count, fig.sram, fig.flash, fig.macs, tuple(int(x) for x in k)))

    log = train_gated(
        module,
        gates if bits is None else (gates, bits),
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        extra_loss=extra_loss,
        on_step=on_step,
        progress=progress,
        teacher=teacher,
    )
    gates.theta.requires_grad_(True)
    forced = remove_to(gates, model, budget)
    if bits is not None:
        fill_bits(bits, model, gates, budget)
        bits.theta.requires_grad_(not bits.fixed)
        bits.theta2.requires_grad_(not bits.fixed and bool(bits.two_bit))
        bits.begin_step()
    fill_to(gates, model, budget)
    gates.alive[(gates.theta.detach() <= 0) & (gates.held == 0)] = 0.0
    gates.begin_step()
    return gates, DiffPruneLog(gates.keep(), log, tuple(history), forced, lr)


def fill_bits(bits: BitGates, model: ResourceModel, gates: Gates, budget: dict[str, float]) -> int:
    """Put int2 layers back to int4, then int4 layers back to int8, highest gate first, while the model
    predicts every budget met at the channel gates' counts; how many (none when the widths are fixed)."""
    added = 0
    if bits.fixed:
        return 0
    k = gates.hard_counts()
    for theta, only in ((bits.theta2.data, bits.two_bit), (bits.theta.data, None)):
        for i in sorted(range(len(theta)), key=lambda i: (-float(theta[i]), i)):
            if float(theta[i]) > 0 or (only is not None and bits.keys[i] not in only):
                continue
            if only is not None and float(bits.theta.data[i]) > 0:
                continue  # int8: its low width does not count
            was = float(theta[i])
            theta[i] = FILL_THETA
            if any(v > 0 for v in _violations(model, k, budget).values()):
                theta[i] = was
            else:
                added += 1
    return added


class Gating(Protocol):
    """Gates as the training loop drives them: their parameters, and fresh masks for a forward pass."""

    theta: torch.nn.Parameter

    def begin_step(self) -> torch.Tensor: ...


def train_gated(
    module: RelaxModule,
    gates: Gating | tuple[Gating, ...],
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    extra_loss: Callable[[], torch.Tensor],
    on_step: Callable[[int, int], None],
    progress: bool,
    teacher: np.ndarray | None = None,
) -> TrainLog:
    """Train ``module`` under ``gates`` (channel or filterlet): fresh masks every forward pass, the gates
    at GATE_LR, the weights' rate constant (the structure changes until the end of the annealing;
    fine-tuning decays)."""
    every = gates if isinstance(gates, tuple) else (gates,)
    return train(
        _Masked(module, every),
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        extra_loss=extra_loss,
        on_step=on_step,
        progress=progress,
        extra_params=[
            p for g in every for p in (g.parameters_to_train() if isinstance(g, BitGates) else [g.theta])
        ],
        extra_lr=GATE_LR,
        teacher=teacher,
        cosine=False,
    )


class _Masked(torch.nn.Module):
    """The bridge module with fresh masks for every forward pass (the gates are trained separately)."""

    def __init__(self, module: RelaxModule, gates: tuple[Gating, ...]) -> None:
        super().__init__()
        self.inner = module
        self._gates = list(gates)  # not submodules: their parameters go to their own optimiser group

    def forward(self, *inputs: torch.Tensor) -> Any:
        if self.training:
            for g in self._gates:
                g.begin_step()
        return self.inner(*inputs)
