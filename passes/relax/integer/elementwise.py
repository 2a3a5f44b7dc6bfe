"""Element-wise float functions of one quantised tensor, as lookup tables computed at compile time.

A QDQ model's ``DequantizeLinear -> Sigmoid (or Tanh, HardSwish, LeakyRelu, ...) -> QuantizeLinear``
means: each 8-bit input value, dequantised, goes through a float function, and the result is
quantised. The input takes only 256 values, so the whole computation is a table of 256 output
integers, evaluated here in float32 exactly as the model states it (DequantizeLinear's
``(q - zero_point) * scale``, the op in float32, QuantizeLinear's round half to even and saturation).
The generated code is one load per element. When a constant of the function varies along an axis (a
per-channel PRelu slope), there is one table per channel.

``NUMPY_RULES`` is the float32 semantics of each Relax op these functions are made of.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tvm_mcu.passes.relax.integer.values import QUANTIZED_DTYPES, Elementwise, QType

F32 = np.float32
Rule = Callable[[Sequence[Any], Any, int], np.ndarray]

# Per-channel tables: at most this many bytes of them per operator (then the op is refused).
MAX_TABLE_BYTES = 16 * 1024


class TableError(Exception):
    """The function cannot be tabulated exactly (NaN results, tables too large); the message says why."""


def _f(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=F32)


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Rule:
    return lambda args, attrs, rank: _f(fn(_f(args[0])))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Rule:
    return lambda args, attrs, rank: np.asarray(fn(_f(args[0]), _f(args[1])))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return _f(F32(1) / (F32(1) + np.exp(-x)))


def _erf(x: np.ndarray) -> np.ndarray:
    return _f(np.vectorize(math.erf, otypes=[np.float64])(x))


def _gelu(args: Sequence[Any], attrs: Any, rank: int) -> np.ndarray:
    x = _f(args[0])
    return _f(F32(0.5) * x * (F32(1) + _erf(x * F32(1 / math.sqrt(2)))))


def _clip(args: Sequence[Any], attrs: Any, rank: int) -> np.ndarray:
    return _f(np.minimum(np.maximum(_f(args[0]), F32(args[1])), F32(args[2])))


def _leakyrelu(args: Sequence[Any], attrs: Any, rank: int) -> np.ndarray:
    x = _f(args[0])
    return _f(np.where(x > 0, x, x * F32(float(attrs.alpha))))


def _prelu(args: Sequence[Any], attrs: Any, rank: int) -> np.ndarray:
    x, alpha = _f(args[0]), _f(args[1])
    axis = int(attrs.axis) % rank
    # alpha holds one slope per element of ``axis``: align it with that axis of the tensor.
    alpha = alpha.reshape(alpha.shape + (1,) * (rank - 1 - axis)) if alpha.ndim == 1 else alpha
    return _f(np.where(x < 0, x * alpha, x))


def _where(args: Sequence[Any], attrs: Any, rank: int) -> np.ndarray:
    return np.where(np.asarray(args[0], dtype=bool), args[1], args[2])


NUMPY_RULES: dict[str, Rule] = {
    "relax.nn.relu": _unary(lambda x: np.maximum(x, F32(0))),
    "relax.clip": _clip,
    "relax.nn.leakyrelu": _leakyrelu,
    "relax.nn.prelu": _prelu,
    "relax.sigmoid": _unary(_sigmoid),
    "relax.tanh": _unary(np.tanh),
    "relax.exp": _unary(np.exp),
    "relax.log": _unary(np.log),
    "relax.sqrt": _unary(np.sqrt),
    "relax.abs": _unary(np.abs),
    "relax.negative": _unary(np.negative),
    "relax.erf": _unary(_erf),
    "relax.nn.gelu": _gelu,
    "relax.nn.silu": _unary(lambda x: x * _sigmoid(x)),
    "relax.add": _binary(np.add),
    "relax.subtract": _binary(np.subtract),
    "relax.multiply": _binary(np.multiply),
    "relax.divide": _binary(np.divide),
    "relax.maximum": _binary(np.maximum),
    "relax.minimum": _binary(np.minimum),
    "relax.power": _binary(np.power),
    "relax.greater": _binary(np.greater),
    "relax.greater_equal": _binary(np.greater_equal),
    "relax.less": _binary(np.less),
    "relax.less_equal": _binary(np.less_equal),
    "relax.equal": _binary(np.equal),
    "relax.not_equal": _binary(np.not_equal),
    "relax.isnan": lambda args, attrs, rank: np.isnan(_f(args[0])),
    "relax.where": _where,
}

# Ops that only clamp (relu, clip): the lowering keeps the cheaper requantise-and-clamp for them.
CLAMPS = frozenset({"relax.nn.relu", "relax.clip"})


def compose(op: str, call: Any, args: Sequence[Any], rank: int) -> Callable[[np.ndarray], np.ndarray]:
    """The function ``x -> op(args)`` where each arg is a constant array/number or a function of x."""
    rule = NUMPY_RULES[op]

    def fn(x: np.ndarray) -> np.ndarray:
        values = [a(x) if callable(a) else a for a in args]
        with np.errstate(all="ignore"):
            return rule(values, call.attrs, rank)

    return fn


def lookup_table(ew: Elementwise, out: QType) -> tuple[np.ndarray, int | None]:
    """The table of ``quantize(fn(dequantize(q)))`` over every value q of the source's type, and the
    tensor axis it varies along (None for one table of 256 entries; else shape (channels, 256))."""
    src = ew.source
    lo, hi = QUANTIZED_DTYPES[src.dtype]
    rank = len(src.var.ty.shape)
    q = np.arange(lo, hi + 1, dtype=np.int32)
    x = ((q - np.int32(src.zero_point)).astype(F32) * F32(src.scale)).astype(F32)
    grid = x.reshape((-1,) + (1,) * rank)
    with np.errstate(all="ignore"):
        y = np.asarray(ew.fn(grid), dtype=F32)
    y = np.broadcast_to(y, np.broadcast_shapes(y.shape, grid.shape))
    if np.isnan(y).any():
        raise TableError("the function gives NaN for some input values (QuantizeLinear of NaN is undefined)")
    with np.errstate(all="ignore"):
        quantised = np.rint(y / F32(out.scale)) + F32(out.zero_point)
    table = np.clip(quantised, out.qmin, out.qmax).astype(out.dtype)
    varying = [a for a in range(1, table.ndim) if table.shape[a] > 1]
    if not varying:
        return table.reshape(-1), None
    if len(varying) > 1:
        raise TableError("its constants vary along more than one axis")
    axis = varying[0]
    per_channel = np.moveaxis(table, axis, 0).reshape(table.shape[axis], -1)
    if per_channel.nbytes > MAX_TABLE_BYTES:
        raise TableError(
            f"it needs one table per channel ({per_channel.shape[0]} x 256 B, more than "
            f"{MAX_TABLE_BYTES // 1024} KiB of flash)"
        )
    return np.ascontiguousarray(per_channel), axis - 1
