"""Fine-tuning on CPU: Adam on cross-entropy, with the pruning code's hooks (extra losses, per-step calls)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

from tvm_mcu.errors import BadOptionError
from tvm_mcu.train import require_torch
from tvm_mcu.train.data import Dataset

require_torch()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DEFAULT_LR = 1e-3
# Knowledge distillation from a teacher's logits: weight of the KL term and softening temperature.
DISTILL_ALPHA = 0.7
DISTILL_T = 4.0
_BAR_WIDTH = 30


@attrs.frozen
class TrainLog:
    """What one training run did: mean training loss (task loss plus extra loss) and wall time per epoch."""

    loss: tuple[float, ...]
    seconds: tuple[float, ...]
    samples_per_epoch: int

    @property
    def images_per_second(self) -> float:
        total = sum(self.seconds)
        return self.samples_per_epoch * len(self.seconds) / total if total > 0 else 0.0


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def train(
    module: torch.nn.Module,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    progress: bool = True,
    cosine: bool = True,
    extra_params: Sequence[torch.nn.Parameter] = (),
    extra_lr: float | None = None,
    teacher: np.ndarray | None = None,
) -> TrainLog:
    """Train ``module``'s parameters in place with Adam on the cross-entropy of its first output.

    ``cosine``: the learning rate decays from ``lr`` to 0 along a half cosine over the run (otherwise
    it stays constant). ``extra_params`` are trained too, at ``extra_lr`` (constant; the pruning
    gates). ``extra_loss()`` is added to the task loss at every step (the pruning budget losses);
    ``on_step(epoch, step)`` is called after every optimiser step (epochs and steps count from 0).
    ``teacher``: logits of a teacher (the unpruned model) for every training sample; the task loss is
    then the knowledge-distillation mix of cross-entropy and the KL divergence to the teacher's
    softened outputs (DISTILL_ALPHA, DISTILL_T; Hinton et al.).
    The sample order comes from ``seed`` and ``torch.manual_seed(seed)`` is set first, so a run is
    deterministic for a seed (same machine, same thread count). With ``progress``, a text progress bar
    goes to stderr when it is a terminal, and one line per epoch always.
    """
    if epochs < 1 or batch_size < 1 or len(data.x_train) == 0:
        raise BadOptionError(
            f"training needs epochs >= 1, batch_size >= 1 and data (got {epochs}, {batch_size}, "
            f"{len(data.x_train)} samples)"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params, "lr": lr}]
    if extra_params:
        groups.append({"params": list(extra_params), "lr": extra_lr if extra_lr is not None else lr})
    optimiser = torch.optim.Adam(groups)
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    n = len(x_all)
    if teacher is not None and len(teacher) != n:
        raise BadOptionError(f"teacher logits for {len(teacher)} samples, training data has {n}")
    soft = None if teacher is None else torch.from_numpy(np.asarray(teacher, np.float32))
    steps = (n + batch_size - 1) // batch_size
    bar = progress and sys.stderr.isatty()
    losses, seconds = [], []
    was_training = module.training
    module.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        total, start = 0.0, time.perf_counter()
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            logits = _first(module(x_all[idx]))
            loss = F.cross_entropy(logits, y_all[idx])
            if soft is not None:
                loss = (1 - DISTILL_ALPHA) * loss + DISTILL_ALPHA * distill_loss(logits, soft[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            if cosine:
                done = (epoch * steps + step) / (epochs * steps)
                optimiser.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            if on_step is not None:
                on_step(epoch, step)
            if bar:
                done = (step + 1) * _BAR_WIDTH // steps
                sys.stderr.write(
                    f"\repoch {epoch + 1}/{epochs} [{'#' * done}{'.' * (_BAR_WIDTH - done)}] "
                    f"{step + 1}/{steps} loss {total / min(n, (step + 1) * batch_size):.4f}"
                )
        seconds.append(time.perf_counter() - start)
        losses.append(total / n)
        if progress:
            sys.stderr.write(
                f"{chr(13) if bar else ''}epoch {epoch + 1}/{epochs}  loss {losses[-1]:.4f}  "
                f"{seconds[-1]:.1f} s  {n / seconds[-1]:.0f} images/s{' ' * 20 if bar else ''}\n"
            )
    module.train(was_training)
    return TrainLog(tuple(losses), tuple(seconds), n)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, t: float = DISTILL_T) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(logits / T)), batch mean."""
    return F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


def predict(module: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """``module``'s first output (logits) for every sample of ``x``."""
    module.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(_first(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))).numpy())
    return np.concatenate(out).astype(np.float32)


def evaluate(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``module``'s first output on ``x`` against labels ``y``."""
    if len(x) != len(y) or len(x) == 0:
        raise BadOptionError(f"evaluate needs as many labels as samples, at least one ({len(x)}, {len(y)})")
    return float(np.mean(predict(module, x, batch_size).argmax(1) == np.asarray(y)))
