"""What the QDQ -> integer lowering knows about each value of the imported (fake-quantised) graph."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np


@attrs.frozen
class QTensor:
    """A float value that is exactly ``dequantize(var, scale, zero_point)`` of an int8 tensor ``var``."""

    var: Any  # the int8 Relax variable of the new function
    scale: float
    zero_point: int


@attrs.frozen
class QConst:
    """A dequantised constant: integer ``values`` with a scale and zero point for every element."""

    values: np.ndarray = attrs.field(eq=False)
    scales: np.ndarray = attrs.field(eq=False)  # float32, same shape as values
    zero_points: np.ndarray = attrs.field(eq=False)  # int, same shape as values

    def transformed(self, fn: Any) -> QConst:
        return QConst(fn(self.values), fn(self.scales), fn(self.zero_points))

    def per_axis_scale(self, axis: int) -> np.ndarray | None:
        """The scale of each slice along ``axis`` when it is constant within the slice, else None."""
        moved = np.moveaxis(self.scales, axis, 0).reshape(self.scales.shape[axis], -1)
        if not np.all(moved == moved[:, :1]):
            return None
        return moved[:, 0].astype(np.float32)


@attrs.frozen
class Pending:
    """A float computation on quantised inputs, waiting for the ``quantize`` that fixes its output scale.

    ``kind`` names the integer operator it becomes; ``inputs`` are QTensors (and QConsts); ``attrs`` are
    the Relax call's attributes; ``bias`` a QConst or float array; ``act`` the float clamp (lo, hi) of a
    following relu / clip.
    """

    kind: str
    inputs: tuple[Any, ...]
    call: Any = attrs.field(eq=False)  # the original Relax call (attributes, shapes)
    bias: Any = None
    act: tuple[float | None, float | None] | None = None


@attrs.frozen
class IntAccumulate:
    """TFLite's int8 average pool as imported: ``avg_pool2d(astype(x, int32))``, awaiting ``astype(int8)``."""

    source: Any  # the int8 variable (new function)
    call: Any = attrs.field(eq=False)  # the avg_pool2d call, or None for the bare astype
