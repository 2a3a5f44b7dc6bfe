"""The graph under construction for the random CNN generator: its tensors, nodes and initializers, the seeded
generator that draws them, and the size limits every step respects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import attrs
import numpy as np
import onnx
from onnx import helper, numpy_helper

T = TypeVar("T")

OPSETS = tuple(range(13, 22))
# 12 KiB of float32 per activation tensor: a few live at once still fit lm3s6965evb's 64 KiB.
MAX_ELEMENTS = 3072
# 48 KiB of float32 weights in all (lm3s6965evb has 256 KiB of flash).
MAX_PARAMS = 12288


@attrs.frozen
class Tensor:
    """A value of the graph under construction; batch 1 is always its first dimension."""

    name: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


class Builder:
    """Nodes, initializers and inputs of one model, with the seeded generator that draws them."""

    def __init__(self, rng: np.random.Generator, opset: int) -> None:
        self.rng = rng
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[Tensor] = []
        self.values: list[Tensor] = []  # node outputs, in order: candidates for skips and extra outputs
        self.params = 0
        self._count = 0

    # ------------------------------------------------------------------------------- drawing
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        p = None if weights is None else np.asarray(weights) / np.sum(weights)
        return options[int(self.rng.choice(len(options), p=p))]

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    # ------------------------------------------------------------------------------- emitting
    def _fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self._fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, gain: float = 2.0) -> str:
        """He-scaled normal weights (variance ``gain / fan_in``)."""
        self.params += int(np.prod(shape))
        w = self.rng.standard_normal(shape) * np.sqrt(gain / max(fan_in, 1))
        return self.const("w", w.astype(np.float32))

    def small(self, shape: tuple[int, ...], scale: float = 0.1) -> str:
        self.params += int(np.prod(shape))
        return self.const("b", (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def scalar(self, base: str, value: float) -> str:
        return self.const(base, np.array(value, dtype=np.float32))

    def input(self, shape: tuple[int, ...]) -> Tensor:
        t = Tensor("input" if not self.inputs else f"input_{len(self.inputs) + 1}", shape)
        self.inputs.append(t)
        return t

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attributes: Any) -> Tensor:
        name = self._fresh(op.lower())
        out = Tensor(f"{name}_out", tuple(int(d) for d in shape))
        self.nodes.append(helper.make_node(op, inputs, [out.name], name=name, **attributes))
        self.values.append(out)
        return out

    def room(self) -> int:
        return MAX_PARAMS - self.params

    def mark(self) -> tuple[int, int, int, int, int]:
        return len(self.nodes), len(self.inits), len(self.inputs), len(self.values), self.params

    def rollback(self, mark: tuple[int, int, int, int, int]) -> None:
        """Forget what a step emitted before it found it did not fit (no dead nodes stay behind)."""
        nodes, inits, inputs, values, self.params = mark
        del self.nodes[nodes:], self.inits[inits:], self.inputs[inputs:], self.values[values:]
