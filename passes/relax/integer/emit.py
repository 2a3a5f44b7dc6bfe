"""Emit one integer operator for a quantised float computation (a :class:`Pending` and its ``quantize``).

Each emitter is a plain function ``(bb, pending, out_scale, out_zp) -> int8 Relax expr``; the table
``EMITTERS`` maps the Pending kind to it. An emitter that cannot produce an exact integer operator raises
:class:`NotInteger` with the reason, which the pass reports with the op's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tvm_mcu._tvm import relax
from tvm_mcu.passes.relax.integer import fixed_point, kernels, params
from tvm_mcu.passes.relax.integer.values import Pending, QConst, QTensor


class NotInteger(Exception):
    """This computation has no exact integer lowering; the message says why."""


def _const(arr: np.ndarray) -> Any:
    return relax.const(arr, str(arr.dtype))


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values]


def _act_range(p: Pending, out_scale: float, out_zp: int) -> tuple[int, int]:
    lo, hi = p.act if p.act is not None else (None, None)
    return params.activation_range(out_zp, out_scale, lo, hi)


def _folded_bias(p: Pending, x: QTensor, w_int: np.ndarray, w_scale: np.ndarray, o_axis: int) -> np.ndarray:
    """The int32 bias with ``- zp_in * sum(weights)`` folded in, per output channel."""
    n_out = w_int.shape[o_axis]
    if p.bias is None:
        bias = np.zeros(n_out, dtype=np.int64)
    elif isinstance(p.bias, QConst):
        if np.any(p.bias.zero_points != 0):
            raise NotInteger("the bias has a nonzero zero point")
        bias = p.bias.values.astype(np.int64).reshape(-1)
        if bias.size == 1:
            bias = np.full(n_out, bias[0], dtype=np.int64)
    else:  # a float bias: quantise it with the accumulator's scale, as TFLite's converter does
        real = np.asarray(p.bias, dtype=np.float64).reshape(-1)
        acc_scale = np.float64(np.float32(x.scale)) * w_scale.astype(np.float64)
        bias = np.array([params.round_half_away(v) for v in real / acc_scale], dtype=np.int64)
    if bias.size != n_out:
        raise NotInteger(f"the bias has {bias.size} values for {n_out} output channels")
    sums = np.moveaxis(w_int.astype(np.int64), o_axis, 0).reshape(n_out, -1).sum(axis=1)
    folded = bias - np.int64(x.zero_point) * sums
    if np.any(np.abs(folded) >= 2**31):
        raise NotInteger("the folded bias overflows int32")
    return folded.astype(np.int32)


def _weights(w: Any, o_axis: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(w, QConst):
        raise NotInteger("the weights are not a quantised constant")
    if w.values.dtype != np.int8:
        raise NotInteger(f"the weights are {w.values.dtype}, not int8")
    if np.any(w.zero_points != 0):
        raise NotInteger("the weights are asymmetric (nonzero zero point)")
    scale = w.per_axis_scale(o_axis)
    if scale is None:
        raise NotInteger("the weight scales are not per output channel")
    return w.values, scale


def _multipliers(x: QTensor, w_scale: np.ndarray, out_scale: float) -> tuple[np.ndarray, np.ndarray]:
    return params.quantize_multipliers(params.effective_scale(x.scale, w_scale, out_scale))


def emit_conv2d(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    x, w = p.inputs
    a = p.call.attrs
    if str(a.out_layout) != str(a.data_layout):
        raise NotInteger("conv2d output layout differs from its input layout")
    kernel_layout = str(a.kernel_layout)
    o_axis = kernel_layout.index("O")
    w_int, w_scale = _weights(w, o_axis)
    bias = _folded_bias(p, x, w_int, w_scale, o_axis)
    m, shift = _multipliers(x, w_scale, out_scale)
    act_min, act_max = _act_range(p, out_scale, out_zp)
    return bb.call_te(
        kernels.conv2d_int8,
        x.var,
        _const(w_int),
        _const(bias),
        _const(m),
        _const(shift),
        strides=_ints(a.strides),
        padding=_ints(a.padding),
        dilation=_ints(a.dilation),
        groups=int(a.groups),
        data_layout=str(a.data_layout),
        kernel_layout=kernel_layout,
        zp_in=x.zero_point,
        zp_out=out_zp,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        primfunc_name_hint="conv2d_int8",
    )


def emit_dense(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    x, w = p.inputs
    x_shape = [int(d) for d in x.var.ty.shape]
    if len(x_shape) != 2 or w.values.ndim != 2:
        raise NotInteger("matmul is integer only for a 2-D input and a 2-D constant weight")
    # Relax matmul computes x[N, K] @ w[K, M]; the kernel takes the weight as [M, K] (TFLite's layout).
    w_mk = w.transformed(lambda a: np.ascontiguousarray(a.T))
    w_int, w_scale = _weights(w_mk, 0)
    bias = _folded_bias(p, x, w_int, w_scale, 0)
    m, shift = _multipliers(x, w_scale, out_scale)
    act_min, act_max = _act_range(p, out_scale, out_zp)
    return bb.call_te(
        kernels.dense_int8,
        x.var,
        _const(w_int),
        _const(bias),
        _const(m),
        _const(shift),
        zp_out=out_zp,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        primfunc_name_hint="dense_int8",
    )


def emit_add(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    a, b = p.inputs
    if not isinstance(a, QTensor) or not isinstance(b, QTensor):
        raise NotInteger("add of a quantised tensor and a constant is not supported")
    act_min, act_max = _act_range(p, out_scale, out_zp)
    kernel, prm = kernels.add_int8, params.add_params(a.scale, b.scale, out_scale)
    if rounding == fixed_point.ONNX:
        even = params.add_params_even(a.scale, b.scale, out_scale)
        if even is not None:  # else exponents too far apart: TFLite's add, within a step
            kernel, prm = kernels.add_int8_even, even
    return bb.call_te(
        kernel,
        a.var,
        b.var,
        out_shape=[int(d) for d in p.call.ty.shape],
        zp_a=a.zero_point,
        zp_b=b.zero_point,
        zp_out=out_zp,
        act_min=act_min,
        act_max=act_max,
        primfunc_name_hint="add_int8",
        **prm,
    )


def requantize(
    bb: Any,
    x: QTensor,
    out_scale: float,
    out_zp: int,
    act: tuple[int, int] = (-128, 127),
    rounding: str = "tflite",
) -> Any:
    """``x`` moved to (out_scale, out_zp); the same variable when nothing changes."""
    if np.float32(x.scale) == np.float32(out_scale) and x.zero_point == out_zp:
        return x.var if act == (-128, 127) else relax.op.clip(x.var, act[0], act[1])
    m, shift = params.quantize_multiplier(
        float(np.float64(np.float32(x.scale)) / np.float64(np.float32(out_scale)))
    )
    return bb.call_te(
        kernels.requantize_int8,
        x.var,
        zp_in=x.zero_point,
        zp_out=out_zp,
        multiplier=m,
        shift=shift,
        act_min=act[0],
        act_max=act[1],
        rounding=rounding,
        primfunc_name_hint="requantize_int8",
    )


def avg_pool_int8(
    bb: Any, source: Any, call: Any, act: tuple[int, int], requant: tuple[int, int, int, int] | None = None
) -> Any:
    a = call.attrs
    if bool(a.ceil_mode):
        raise NotInteger("average pooling with ceil_mode")
    if any(int(d) != 1 for d in a.dilation):
        raise NotInteger("dilated average pooling")
    return bb.call_te(
        kernels.avg_pool2d_int8,
        source,
        pool_size=_ints(a.pool_size),
        strides=_ints(a.strides),
        padding=_ints(a.padding),
        layout=str(a.layout),
        out_shape=[int(d) for d in call.ty.shape],
        count_include_pad=bool(a.count_include_pad),
        act_min=act[0],
        act_max=act[1],
        requant=requant,
        primfunc_name_hint="avg_pool2d_int8",
    )


def emit_avg_pool(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    (x,) = p.inputs
    m, shift = params.quantize_multiplier(
        float(np.float64(np.float32(x.scale)) / np.float64(np.float32(out_scale)))
    )
    if rounding == fixed_point.ONNX and 31 - shift <= 56:
        # One rounding (half to even) of sum * s_in / (count * s_out): the float semantics.
        act_min, act_max = _act_range(p, out_scale, out_zp)
        return avg_pool_int8(bb, x.var, p.call, (act_min, act_max), requant=(x.zero_point, out_zp, m, shift))
    pooled = bb.emit(avg_pool_int8(bb, x.var, p.call, (-128, 127)))
    return requantize(
        bb, QTensor(pooled, x.scale, x.zero_point), out_scale, out_zp, _act_range(p, out_scale, out_zp)
    )


def emit_max_pool(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    (x,) = p.inputs
    a = p.call.attrs
    pooled = bb.emit(
        relax.op.nn.max_pool2d(
            x.var,
            pool_size=_ints(a.pool_size),
            strides=_ints(a.strides),
            padding=_ints(a.padding),
            dilation=_ints(a.dilation),
            ceil_mode=bool(a.ceil_mode),
            layout=str(a.layout),
        )
    )
    return requantize(
        bb, QTensor(pooled, x.scale, x.zero_point), out_scale, out_zp, _act_range(p, out_scale, out_zp)
    )


def emit_softmax(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    (x,) = p.inputs
    rank = len(p.call.ty.shape)
    axis = int(p.call.attrs.axis)
    if axis not in (-1, rank - 1):
        raise NotInteger("softmax is integer only along the last axis")
    if out_zp != -128 or np.float32(out_scale) != np.float32(1.0 / 256.0):
        raise NotInteger(
            "int8 softmax needs the output scale 1/256 and zero point -128 (TFLite's convention)"
        )
    m, shift, diff_min = params.softmax_params(1.0, x.scale)
    table = params.softmax_exp_table(m, shift, diff_min)
    return bb.call_te(
        kernels.softmax_int8, x.var, _const(table), diff_min=diff_min, primfunc_name_hint="softmax_int8"
    )


def emit_concat(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    parts = [
        bb.emit(requantize(bb, x, out_scale, out_zp, rounding=rounding)) if isinstance(x, QTensor) else None
        for x in p.inputs
    ]
    if any(v is None for v in parts):
        raise NotInteger("concat of a constant")
    return relax.op.concat(parts, axis=int(p.call.attrs.axis))


def emit_mean(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    """Mean over any axes, TFLite Micro's ``QuantizedMeanOrSum`` arithmetic."""
    (x,) = p.inputs
    shape = [int(d) for d in x.var.ty.shape]
    axes = sorted({int(a) % len(shape) for a in p.call.attrs.axis})
    count = int(np.prod([shape[a] for a in axes]))
    if rounding == fixed_point.ONNX:  # one rounding of sum * s_in / (count * s_out)
        m, shift = params.quantize_multiplier(
            float(np.float64(np.float32(x.scale)) / (count * np.float64(np.float32(out_scale))))
        )
    else:
        m, shift = params.mean_params(x.scale, out_scale, count)
    act_min, act_max = _act_range(p, out_scale, out_zp)
    return bb.call_te(
        kernels.mean_int8,
        x.var,
        axes=axes,
        out_shape=[int(d) for d in p.call.ty.shape],
        zp_in=x.zero_point,
        zp_out=out_zp,
        multiplier=m,
        shift=shift,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        primfunc_name_hint="mean_int8",
    )


def emit_clamp(bb: Any, p: Pending, out_scale: float, out_zp: int, rounding: str) -> Any:
    """relu / clip of a quantised tensor: requantised to the output and clamped to the activation range."""
    (x,) = p.inputs
    return requantize(bb, x, out_scale, out_zp, _act_range(p, out_scale, out_zp), rounding)


EMITTERS: dict[str, Callable[[Any, Pending, float, int, str], Any]] = {
    "clamp": emit_clamp,
    "conv2d": emit_conv2d,
    "dense": emit_dense,
    "add": emit_add,
    "avg_pool2d": emit_avg_pool,
    "max_pool2d": emit_max_pool,
    "softmax": emit_softmax,
    "concat": emit_concat,
    "mean": emit_mean,
}
