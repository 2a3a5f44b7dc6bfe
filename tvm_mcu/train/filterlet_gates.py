"""DiffPrune at filterlet granularity: a gate per filterlet, trained with budget losses.

``tvm-mcu prune --granularity filterlet|mixed --scheduler gates``: the differentiable counterpart of
DTMM's annealing (:mod:`tvm_mcu.prune_anneal`). Every filterlet ``W[o, :, ky, kx]`` of the pruned
convolutions gets a gate ``theta``; the forward pass multiplies the weight by the hard masks
``theta > 0`` (the network trained is the one deployed) and the backward pass goes through
``sigmoid(theta)`` (straight-through), as :mod:`tvm_mcu.train.diffprune` does for channels. A layer's
kept count is the sum of its masks, and the counted figures (flash with the CSR index bytes, MACs and
the cost model's instructions, :mod:`tvm_mcu.analysis.sparsity`) are differentiable in the counts, so
each budget loss ``LAMBDA * relu(R(k) / B - 1)`` prices a filterlet by what its layer's next filterlet
costs: one of a wide layer at a large map is dear in MACs and instructions, one of a thin layer cheap.
The task loss's gradient is the filterlet's salience; where salience is below price the gate falls.

As in DiffPrune the cut is annealed: every few steps the target moves from the dense figures towards
the budget (cubic, reached after ANNEAL of the gating steps) and the lowest live gates are switched
off until the exact counted figures meet it; then the gates freeze, the room the budget leaves goes
back to the highest gates, and the rest of the epochs fine-tune that structure with the masks held.
Every output channel keeps at least one filterlet (zeroing them all is channel pruning).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from tvm_mcu.analysis.sparsity import Masks
from tvm_mcu.prune_anneal import COLUMN, Anneal, Figures, Layer
from tvm_mcu.schedule import cost
from tvm_mcu.train import require_torch
from tvm_mcu.train.data import Dataset

require_torch()

import torch  # noqa: E402

from tvm_mcu.train.bridge import RelaxModule, Tap  # noqa: E402
from tvm_mcu.train.diffprune import (  # noqa: E402
    ANNEAL,
    DEAD_THETA,
    INIT_THETA,
    LAMBDA,
    PRIOR_WEIGHT,
    train_gated,
)
from tvm_mcu.train.loop import TrainLog  # noqa: E402

PRUNE_EVERY = 25
# The weights' learning rate while the gates train: DiffPrune's for a mild cut (zeros change no
# activation, so the network keeps its shape and most of its trained weights).
GATING_LR = 3e-3


@attrs.frozen
class GatesLog:
    train: TrainLog
    history: tuple[tuple[int, tuple[int, ...]], ...]  # (step, kept filterlets per layer)
    forced: int  # filterlets zeroed after training to meet the budget as counted


class FilterletGates(torch.nn.Module):
    """One gate per filterlet of ``layers``, flat; each unit's layer and output channel."""

    alive: torch.Tensor
    owner: torch.Tensor

    def __init__(self, layers: list[Layer], scores: Mapping[tuple[int, int], np.ndarray]) -> None:
        super().__init__()
        self.layers = layers
        init, owner, channel = [], [], []
        for li, lay in enumerate(layers):
            s = np.asarray(scores[lay.site.key], np.float64).ravel()
            top = s.max() if s.size and s.max() > 0 else 1.0
            init.append(INIT_THETA + PRIOR_WEIGHT * s / top)
            o, taps = lay.site.out_channels, lay.units // lay.site.out_channels
            owner.append(np.full(lay.units, li))
            channel.append(np.repeat(np.arange(o), taps) + sum(x.site.out_channels for x in layers[:li]))
        self.offsets = np.cumsum([0] + [lay.units for lay in layers])
        self.theta = torch.nn.Parameter(torch.from_numpy(np.concatenate(init).astype(np.float32)))
        self.register_buffer("alive", torch.ones(int(self.offsets[-1])))
        self.register_buffer("owner", torch.from_numpy(np.concatenate(owner).astype(np.int64)))
        self.channel = np.concatenate(channel)
        self._mask: torch.Tensor | None = None

    def mask(self) -> torch.Tensor:
        soft = torch.sigmoid(self.theta)
        hard = (self.theta > 0).to(soft.dtype)
        return (hard + soft - soft.detach()) * self.alive

    def begin_step(self) -> torch.Tensor:
        self._mask = self.mask()
        return self._mask

    def counts(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(self.layers), dtype=mask.dtype).index_add(0, self.owner, mask)

    def weight_taps(self) -> dict[str, Tap]:
        out: dict[str, Tap] = {}
        for li, lay in enumerate(self.layers):
            b, a = lay.site.key
            o, _, kh, kw = lay.site.shape
            lo, hi = int(self.offsets[li]), int(self.offsets[li + 1])

            def tap(
                w: torch.Tensor, lo: int = lo, hi: int = hi, shape: tuple[int, ...] = (o, 1, kh, kw)
            ) -> torch.Tensor:
                m = self._mask if self._mask is not None else self.mask()
                return w * m[lo:hi].view(shape)

            out[f"b{b}_{a}"] = tap
        return out

    def on(self) -> np.ndarray:
        """Which filterlets are kept: gate open and alive, and each output channel's highest gate."""
        theta = self.theta.detach().numpy()
        on = (theta > 0) & (self.alive.numpy() > 0)
        for c in np.flatnonzero(np.bincount(self.channel[on], minlength=self.channel.max() + 1) == 0):
            units = np.flatnonzero(self.channel == c)
            on[units[np.argmax(theta[units])]] = True
        return on

    def kept(self, on: np.ndarray) -> list[int]:
        return [int(on[self.offsets[i] : self.offsets[i + 1]].sum()) for i in range(len(self.layers))]

    def masks(self) -> Masks:
        on = self.on()
        out = {}
        for li, lay in enumerate(self.layers):
            o, _, kh, kw = lay.site.shape
            keep = on[self.offsets[li] : self.offsets[li + 1]].reshape(o, 1, kh, kw)
            out[lay.site.key] = np.ascontiguousarray(np.broadcast_to(keep, lay.site.shape))
        return out


class Priced:
    """The counted figures as differentiable functions of the kept counts (the CSR alignment's few
    bytes left out; the exact figures, :class:`~tvm_mcu.prune_anneal.Anneal`'s, decide every cut)."""

    def __init__(self, layers: list[Layer], dense: Mapping[str, float], itemsize: int) -> None:
        sites = [lay.site for lay in layers]
        self.dense = dense
        f = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
        self.o = f([s.out_channels for s in sites])
        self.cin = f([s.shape[1] for s in sites])
        self.pixels = f([s.pixels for s in sites])
        self.d_bytes = f([int(np.prod(s.shape)) * itemsize for s in sites])
        self.d_macs = f([s.pixels * int(np.prod(s.shape)) for s in sites])
        d = cost.conv_layer(itemsize)
        self.d_instr = self.d_macs * d.per_mac + self.pixels * self.o * d.per_output
        self.itemsize = itemsize

    def figures(self, k: torch.Tensor) -> dict[str, torch.Tensor]:
        k = k.to(torch.float64)
        c_bytes = 2 * (self.o + 1 + k) + k * self.cin * self.itemsize
        c_macs = self.pixels * self.cin * k
        sparse = cost.SPARSE["filterlet"]
        c_instr = c_macs * sparse.per_mac + self.pixels * self.o * sparse.per_output
        use = c_bytes < self.d_bytes
        saved = {
            "flash": torch.where(use, self.d_bytes - c_bytes, torch.zeros_like(k)),
            "weights": torch.where(use, self.d_bytes - c_bytes, torch.zeros_like(k)),
            "macs": torch.where(use, self.d_macs - c_macs, torch.zeros_like(k)),
            "instructions": torch.where(use, self.d_instr - c_instr, torch.zeros_like(k)),
        }
        return {r: self.dense[r] - saved[r].sum() for r in saved if r in self.dense}


def remove_to(gates: FilterletGates, exact: Anneal, target: Mapping[str, float]) -> int:
    """Switch off the lowest live gates (never a channel's last) until the exact counted figures meet
    ``target``; how many."""
    on = gates.on()
    kept = gates.kept(on)
    if _over(exact, kept, target) == 0:
        return 0
    theta = gates.theta.detach().numpy()
    per_channel = np.bincount(gates.channel[on], minlength=gates.channel.max() + 1)
    owner = gates.owner.numpy()
    # Layers whose deepest cut saves something towards a target: the others' zeros buy nothing.
    useful = [
        any(exact.saving[i][lay.least][COLUMN[r]] > 0 for r in target) for i, lay in enumerate(gates.layers)
    ]
    removed = 0
    for u in np.flatnonzero(on)[np.argsort(theta[on], kind="stable")]:
        if per_channel[gates.channel[u]] <= 1 or not useful[owner[u]]:
            continue
        gates.alive[int(u)] = 0.0
        per_channel[gates.channel[u]] -= 1
        kept[owner[u]] -= 1
        removed += 1
        if _over(exact, kept, target) == 0:
            break
    return removed


def fill_to(gates: FilterletGates, exact: Anneal, budget: Mapping[str, float]) -> int:
    """Switch gates back on, highest first, while the exact counted figures stay within ``budget``."""
    on = gates.on()
    kept = gates.kept(on)
    theta = gates.theta.detach().numpy()
    owner = gates.owner.numpy()
    added = 0
    for u in np.flatnonzero(~on)[np.argsort(-theta[~on], kind="stable")]:
        kept[owner[u]] += 1
        if _over(exact, kept, budget) > 0:
            kept[owner[u]] -= 1
            continue
        gates.alive[int(u)] = 1.0
        gates.theta.data[int(u)] = max(float(theta[u]), 0.1)
        added += 1
    return added


def _over(exact: Anneal, kept: list[int], limits: Mapping[str, float]) -> float:
    f = exact.figures(kept)
    return sum(max(0.0, f[r] / lim - 1.0) for r, lim in limits.items())


def train_gates(
    module: RelaxModule,
    layers: list[Layer],
    scores: Mapping[tuple[int, int], np.ndarray],
    dense: Mapping[str, float],
    limits: Mapping[str, float],
    data: Dataset,
    *,
    epochs: int,
    itemsize: int,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 128,
) -> tuple[FilterletGates, GatesLog]:
    """Train ``module`` (in place) with filterlet gates and budget losses for ``epochs`` (module
    docstring); the gates, frozen at a cut whose counted figures meet ``limits``."""
    gates = FilterletGates(layers, scores)
    exact = Anneal(layers, Figures(dense, limits), itemsize)
    priced = Priced(layers, dense, itemsize)
    module.weight_taps = gates.weight_taps()
    total = epochs * ((len(data.x_train) + batch_size - 1) // batch_size)
    every = max(1, min(PRUNE_EVERY, total // 20))
    history: list[tuple[int, tuple[int, ...]]] = []
    step_count = 0

    def extra_loss() -> torch.Tensor:
        mask = gates._mask
        assert mask is not None
        fig = priced.figures(gates.counts(mask))
        return sum(
            (LAMBDA * torch.relu(fig[r] / lim - 1.0) for r, lim in limits.items()),
            torch.zeros((), dtype=torch.float64),
        ).to(torch.float32)

    def on_step(epoch: int, step: int) -> None:
        nonlocal step_count
        step_count += 1
        if step_count % every or not gates.theta.requires_grad:
            return
        f = min(1.0, step_count / max(1.0, ANNEAL * total))
        target = {r: dense[r] + (lim - dense[r]) * (1 - (1 - f) ** 3) for r, lim in limits.items()}
        gates.alive[gates.theta.detach() < DEAD_THETA] = 0.0
        remove_to(gates, exact, target)
        if f >= 1.0:
            fill_to(gates, exact, limits)
            gates.theta.requires_grad_(False)
        history.append((step_count, tuple(gates.kept(gates.on()))))

    log = train_gated(
        module,
        gates,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=GATING_LR,
        seed=seed,
        extra_loss=extra_loss,
        on_step=on_step,
        progress=progress,
    )
    gates.theta.requires_grad_(False)
    forced = remove_to(gates, exact, limits)
    fill_to(gates, exact, limits)
    module.weight_taps = {}
    return gates, GatesLog(log, tuple(history), forced)
