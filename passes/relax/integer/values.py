"""What the QDQ -> integer lowering knows about each value of the imported (fake-quantised) graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

# The integer types a quantised activation may have, with their ranges.
QUANTIZED_DTYPES = {"int8": (-128, 127), "uint8": (0, 255)}


@attrs.frozen
class QType:
    """How an integer tensor stands for real values: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    @property
    def qmin(self) -> int:
        return QUANTIZED_DTYPES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return QUANTIZED_DTYPES[self.dtype][1]


@attrs.frozen
class QTensor:
    """A float value that is exactly ``dequantize(var, scale, zero_point)`` of an int8/uint8 tensor."""

    var: Any  # the integer Relax variable of the new function
    scale: float
    zero_point: int
    dtype: str = "int8"

    @property
    def qtype(self) -> QType:
        return QType(self.scale, self.zero_point, self.dtype)


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

    def real(self) -> np.ndarray:
        """The float32 values the constant stands for, as DequantizeLinear computes them."""
        return ((self.values.astype(np.int64) - self.zero_points) * self.scales.astype(np.float32)).astype(
            np.float32
        )


@attrs.frozen
class Pending:
    """A float computation on quantised inputs, waiting for the ``quantize`` that fixes its output scale.

    ``kind`` names the integer operator it becomes; ``inputs`` are QTensors (and QConsts); ``attrs`` are
    the Relax call's attributes; ``bias`` a QConst or float array; ``act`` the float clamp (lo, hi) of a
    following relu / clip; ``post`` data-movement calls (reshape, transpose...) applied to its result
    before the quantize: they commute with the requantisation, so they run on the integer result.
    """

    kind: str
    inputs: tuple[Any, ...]
    call: Any = attrs.field(eq=False)  # the original Relax call (attributes, shapes)
    bias: Any = None
    act: tuple[float | None, float | None] | None = None
    post: tuple[Any, ...] = attrs.field(default=(), eq=False)


@attrs.frozen
class IntAccumulate:
    """TFLite's int8 average pool as imported: ``avg_pool2d(astype(x, int32))``, awaiting ``astype(int8)``."""

    source: Any  # the int8 variable (new function)
    call: Any = attrs.field(eq=False)  # the avg_pool2d call, or None for the bare astype


@attrs.frozen
class Elementwise:
    """An element-wise float function of one quantised tensor (and constants), awaiting its quantize.

    ``fn`` maps float32 values of ``source`` to float32 results; it broadcasts, so constants that vary
    along an axis (a per-channel slope) give results that vary along that axis too. ``ops`` are the
    Relax ops composed, for messages.
    """

    source: QTensor
    fn: Callable[[np.ndarray], np.ndarray] = attrs.field(eq=False)
    ops: tuple[str, ...]
    call: Any = attrs.field(eq=False)  # the last op's call (its result shape)


@attrs.frozen
class QTuple:
    """A tuple of lowered values (graph outputs, concat operands) that is not a Relax value yet."""

    fields: tuple[Any, ...]


@attrs.frozen
class Unusable:
    """A value with no integer form (a training-mode output of batch_norm); an error only if used."""

    reason: str


# The values that stand for quantised data and are not Relax expressions.
LOWERED = (QTensor, QConst, Pending, IntAccumulate, Elementwise, QTuple, Unusable)
