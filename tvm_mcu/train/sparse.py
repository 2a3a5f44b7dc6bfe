"""Sparse pruning's training side: first-order Taylor importance, masks held through fine-tuning, and
masks applied gradually while the model trains.

Weights are addressed by their site (binding index, argument index), the names
:class:`~tvm_mcu.train.bridge.RelaxModule` gives its parameters (``b{binding}_{arg}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from tvm_mcu.errors import BadOptionError
from tvm_mcu.train import require_torch

require_torch()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tvm_mcu.train.bridge import RelaxModule  # noqa: E402
from tvm_mcu.train.loop import _first  # noqa: E402

# Gradients for Taylor importance: this many batches of this many training samples (seeded order).
TAYLOR_BATCHES = 8
TAYLOR_BATCH_SIZE = 64

Key = tuple[int, int]


def _parameter(module: RelaxModule, key: Key) -> torch.nn.Parameter:
    params = dict(module.named_parameters())
    name = f"b{key[0]}_{key[1]}"
    if name not in params:
        raise BadOptionError(f"the torch module has no parameter for the weight of binding {key[0]}")
    return params[name]


def _shaped_parameter(module: RelaxModule, key: Key, array: np.ndarray, what: str) -> torch.nn.Parameter:
    """The weight at ``key``, when ``array`` (its ``what``: mask, ranks) has its shape."""
    p = _parameter(module, key)
    if tuple(array.shape) != tuple(p.shape):
        raise BadOptionError(
            f"{what} of shape {array.shape} for the weight of binding {key[0]} of shape {tuple(p.shape)}"
        )
    return p


def taylor_scores(
    module: RelaxModule,
    keys: Iterable[Key],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batches: int = TAYLOR_BATCHES,
    batch_size: int = TAYLOR_BATCH_SIZE,
    seed: int = 0,
) -> dict[Key, np.ndarray]:
    """First-order Taylor importance of every weight at ``keys``: ``|w * g|`` elementwise.

    ``g`` is the gradient of the cross-entropy with respect to ``w``, summed over ``batches`` batches of
    ``(x, y)`` taken in a seeded order: the change of the loss when ``w`` goes to zero, to first order
    (Molchanov et al. 2019; DTMM sums it over a filterlet). The gradient is accumulated before the
    absolute value, so a weight whose effect cancels over the data scores low. ``module``'s weights are
    not changed; its gradients are cleared afterwards.
    """
    if len(x) == 0 or len(x) != len(y):
        raise BadOptionError(f"Taylor importance needs labelled samples (got {len(x)} and {len(y)})")
    params = {k: _parameter(module, k) for k in keys}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    was_training = module.training
    module.eval()
    module.zero_grad(set_to_none=True)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y))
    for b in range(batches):
        idx = order[(b * batch_size) % len(x) :][:batch_size]
        if len(idx) == 0:
            break
        loss = F.cross_entropy(_first(module(x_all[idx])), y_all[idx], reduction="sum")
        loss.backward()
    scores = {}
    for k, p in params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        scores[k] = (p.detach() * g).abs().numpy().astype(np.float64)
    module.zero_grad(set_to_none=True)
    module.train(was_training)
    return scores


class MaskHold:
    """Keeps pruned weights at exactly zero while a module trains.

    On construction the masked weights are zeroed and a gradient hook zeroes their gradients (so Adam's
    moments for them stay zero and so do its updates); called after every optimiser step (``train``'s
    ``on_step``) it multiplies the weights by their masks again, so that no optimiser (weight decay,
    momentum left from before) can move a pruned weight off zero. ``remove()`` drops the hooks.
    """

    def __init__(self, module: RelaxModule, masks: Mapping[Key, np.ndarray]) -> None:
        self._held: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for key, mask in masks.items():
            p = _shaped_parameter(module, key, mask, "mask")
            pruned = torch.from_numpy(~np.asarray(mask, dtype=bool))
            self._held.append((p, pruned))
            self._hooks.append(p.register_hook(lambda g, pruned=pruned: g.masked_fill(pruned, 0.0)))
        self.apply()

    def apply(self) -> None:
        # masked_fill, not a multiply: a negative weight times 0 is -0.0, and the written model should
        # hold plain zeros.
        with torch.no_grad():
            for p, pruned in self._held:
                p.masked_fill_(pruned, 0.0)

    def __call__(self, epoch: int, step: int) -> None:
        self.apply()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


# Gradual pruning: the masks grow this many times over the pruning phase (Zhu & Gupta 2017 prune
# every ~100-1000 steps; the Fashion-MNIST runs have about 470 steps an epoch, so about one update
# every 30 steps over two epochs).
GRADUAL_UPDATES = 32


class GradualMasks:
    """Applies final masks step by step while a module trains (gradual pruning, Zhu & Gupta 2017).

    ``ranks``: per weight, an integer array of its shape: -1 where the element is kept, else the rank
    of its unit in the order it is pruned (0 first; every element of a unit, such as a filterlet, has
    the unit's rank, so units go whole). Over the first ``steps`` optimiser steps the pruned fraction of
    each weight's units follows the cubic schedule ``1 - (1 - t/steps)**3`` in GRADUAL_UPDATES steps:
    most units go early, while the network still has the capacity to adapt, and few at the end; from
    step ``steps`` on every unit of the final masks is pruned and held as :class:`MaskHold` holds it
    (gradients and weights of pruned elements kept at exactly zero). The final masks are exactly
    ``ranks < 0``: the schedule changes when a unit goes, never which units go.
    """

    def __init__(self, module: RelaxModule, ranks: Mapping[Key, np.ndarray], steps: int) -> None:
        if steps < 1:
            raise BadOptionError(f"gradual pruning needs at least one step (got {steps})")
        self.steps = steps
        self._done = -1
        self._held: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor, int]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for key, rank in ranks.items():
            p = _shaped_parameter(module, key, rank, "ranks")
            r = torch.from_numpy(np.array(rank, dtype=np.int64))
            pruned = torch.zeros(p.shape, dtype=torch.bool)
            self._held.append((p, r, pruned, int(rank.max()) + 1))
            self._hooks.append(p.register_hook(lambda g, pruned=pruned: g.masked_fill(pruned, 0.0)))

    def fraction(self, step: int) -> float:
        """The fraction of each weight's pruned units gone after optimiser step ``step`` (from 0)."""
        done = min(self.steps, step + 1)
        t = (done * GRADUAL_UPDATES // self.steps) / GRADUAL_UPDATES if done < self.steps else 1.0
        return 1.0 - (1.0 - t) ** 3

    def apply(self, step: int) -> None:
        f = self.fraction(step)
        with torch.no_grad():
            for p, rank, pruned, units in self._held:
                m = units if f >= 1.0 else round(units * f)
                pruned.copy_((rank >= 0) & (rank < m))
                p.masked_fill_(pruned, 0.0)
        self._done = step

    def __call__(self, epoch: int, step: int) -> None:
        # train() numbers steps within an epoch: count them here.
        self.apply(self._done + 1)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
