"""Sparse pruning's training side: first-order Taylor importance, and masks held through fine-tuning.

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
            p = _parameter(module, key)
            if tuple(mask.shape) != tuple(p.shape):
                raise BadOptionError(
                    f"mask of shape {mask.shape} for the weight of binding {key[0]} of shape {tuple(p.shape)}"
                )
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
