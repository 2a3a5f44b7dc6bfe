"""Emit one integer operator for a quantised float computation (a :class:`Pending` and its ``quantize``).

Each emitter is a plain function ``(bb, pending, out, rounding) -> integer Relax expr``, ``out`` the
:class:`QType` the ``quantize`` asks for (scale, zero point, int8 or uint8); the table ``EMITTERS``
maps the Pending kind to it. An emitter that cannot produce an exact integer operator raises
:class:`NotInteger` with the reason, which the pass reports with the op's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tvm_mcu._tvm import relax
from tvm_mcu.passes.relax.integer import fixed_point, kernels, params
from tvm_mcu.passes.relax.integer.values import QUANTIZED_DTYPES, Pending, QConst, QTensor, QType


class NotInteger(Exception):
    """This computation has no exact integer lowering; the message says why."""


def _const(arr: np.ndarray) -> Any:
    return relax.const(arr, str(arr.dtype))


def _requant_params(bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> Any:
    """One int32 constant [C, 3] of each output channel's bias, multiplier and shift side by side: the
    kernel reads one pointer for the three (one argument instead of three, fewer registers held across
    the loops: the operators' stack frames and the driver's shrink; the same bytes of flash)."""
    return _const(np.stack([bias, multiplier, shift], axis=1).astype(np.int32))


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values]


def _act_range(p: Pending, out: QType) -> tuple[int, int]:
    lo, hi = p.act if p.act is not None else (None, None)
    return params.activation_range(out.zero_point, out.scale, lo, hi, out.dtype)


def _folded_bias(
    p: Pending, x: QTensor, w_int: np.ndarray, w_scale: np.ndarray, o_axis: int, out: QType
) -> tuple[np.ndarray, int]:
    """The int32 bias with ``- zp_in * sum(weights)`` folded in, per output channel, and the pre-shift of
    the accumulator it is in units of (see :func:`_bias_precision`)."""
    n_out = w_int.shape[o_axis]
    sums = np.moveaxis(w_int.astype(np.int64), o_axis, 0).reshape(n_out, -1)
    pre_shift = 0
    p_bias = p.bias
    if isinstance(p_bias, QConst) and not _in_accumulator_units(p_bias, x, w_scale):
        # An integer bias in other units (Gemm's alpha scaled the product, not the bias): its value.
        p_bias = p_bias.real().reshape(-1)
    if p_bias is None:
        bias = np.zeros(n_out, dtype=np.int64)
    elif isinstance(p_bias, QConst):
        bias = p_bias.values.astype(np.int64).reshape(-1)
        if bias.size == 1:
            bias = np.full(n_out, bias[0], dtype=np.int64)
    else:  # a float bias: quantise it with the accumulator's scale, as TFLite's converter does
        real = np.asarray(p_bias, dtype=np.float64).reshape(-1)
        if real.size == 1:
            real = np.full(n_out, real[0])
        pre_shift = _bias_precision(x, w_scale, np.abs(sums).sum(axis=1), real, out)
        acc_scale = np.float64(np.float32(x.scale)) * w_scale.astype(np.float64) / (1 << pre_shift)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(acc_scale != 0, real / np.where(acc_scale != 0, acc_scale, 1.0), 0.0)
        if not np.all(np.isfinite(ratio)) or np.any(np.abs(ratio) >= 2**31):
            raise NotInteger("the bias does not fit the accumulator's int32 range")
        bias = np.array([params.round_half_away(v) for v in ratio], dtype=np.int64)
    if bias.size != n_out:
        raise NotInteger(f"the bias has {bias.size} values for {n_out} output channels")
    folded = bias - (np.int64(x.zero_point) * sums.sum(axis=1) << pre_shift)
    if np.any(np.abs(folded) >= 2**31):
        raise NotInteger("the folded bias overflows int32")
    return folded.astype(np.int32), pre_shift


def _in_accumulator_units(bias: QConst, x: QTensor, w_scale: np.ndarray) -> bool:
    """Whether an integer bias counts units of the accumulator, ``s_in * s_w`` per output channel (as
    TFLite and ONNX Runtime quantise it), with zero point 0: then its integers add to the sum as they are."""
    if np.any(bias.zero_points != 0):
        return False
    scales = bias.scales.astype(np.float32).reshape(-1)
    unit = (np.float32(x.scale) * w_scale.astype(np.float32)).astype(np.float32)
    if scales.size == 1:
        scales = np.full(unit.shape, scales[0], dtype=np.float32)
    return scales.shape == unit.shape and bool(np.allclose(scales, unit, rtol=1e-6, atol=0.0))


# A float bias rounded to the accumulator's grid may be off by half a unit of it; a unit at most this
# fraction of an output step keeps that error far below the step.
BIAS_GRID_STEPS = 1 / 64


def _bias_precision(
    x: QTensor, w_scale: np.ndarray, abs_weight_sums: np.ndarray, real_bias: np.ndarray, out: QType
) -> int:
    """How far to shift the accumulator up so that a float bias (ONNX semantics: added unrounded) rounds
    to a grid finer than :data:`BIAS_GRID_STEPS` of an output step.

    A convolution's accumulator unit ``s_in * s_w`` is normally far below the output step; a per-channel
    affine op lowered as a depthwise 1x1 convolution (a standalone batch norm) has a unit of the order
    of the step itself, and rounding its bias there would miss by whole steps.
    """
    unit = float(np.max(np.abs(np.float64(np.float32(x.scale)) * w_scale.astype(np.float64)), initial=0.0))
    target = BIAS_GRID_STEPS * float(np.float32(out.scale))
    if unit <= target or unit == 0.0:
        return 0
    needed = int(np.ceil(np.log2(unit / target)))
    span = max(abs(x.qtype.qmin - x.zero_point), abs(x.qtype.qmax - x.zero_point))
    largest = (
        float(np.max(abs_weight_sums, initial=0)) * span
        + float(np.max(np.abs(real_bias), initial=0)) / unit
        + 1
    )
    room = int(np.floor(np.log2((2**31 - 1) / largest))) - 1 if largest > 0 else 30
    if room < 1:
        raise NotInteger("the float bias cannot be held exactly enough in the int32 accumulator")
    return min(needed, room, 30)


def _weights(w: Any, o_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights with their zero points taken out, and the scale per output channel.

    A weight zero point (uint8 weights, asymmetric int8 weights) is subtracted at compile time: the
    kernel then needs no weight offset. The differences stay int8 when they fit (uint8 weights with zero
    point 128 do), else int16 (exact, twice the flash).
    """
    if not isinstance(w, QConst):
        raise NotInteger("the weights are not a quantised constant")
    if w.values.dtype not in (np.int8, np.uint8):
        raise NotInteger(f"the weights are {w.values.dtype}, not int8 or uint8")
    scale = w.per_axis_scale(o_axis)
    if scale is None:
        raise NotInteger("the weight scales are not per output channel")
    values = w.values
    if np.any(w.zero_points != 0) or values.dtype != np.int8:
        centred = values.astype(np.int32) - w.zero_points.astype(np.int32)
        values = centred.astype(np.int8 if centred.min() >= -128 and centred.max() <= 127 else np.int16)
    return values, scale


def _bounded(
    x: QTensor, w_int: np.ndarray, o_axis: int, bias: np.ndarray, pre_shift: int, shift: np.ndarray
) -> bool:
    """Whether every biased accumulator of the layer takes the short requantisation: its magnitude,
    at most ``max|x| * sum|w| * 2**pre_shift + |bias|`` per output channel (padding holds the zero
    point, an input value too), fits ``fixed_point.fits_bounded``."""
    largest_x = 255 if x.dtype == "uint8" else 128
    n_out = w_int.shape[o_axis]
    weights = np.abs(np.moveaxis(w_int.astype(np.int64), o_axis, 0).reshape(n_out, -1)).sum(axis=1)
    largest = (largest_x * weights << pre_shift) + np.abs(bias.astype(np.int64))
    return fixed_point.fits_bounded(largest, shift)


def _multipliers(x: QTensor, w_scale: np.ndarray, out_scale: float) -> tuple[np.ndarray, np.ndarray]:
    return params.quantize_multipliers(params.effective_scale(x.scale, w_scale, out_scale))


def _reduction_contiguous(
    w: np.ndarray, kernel_layout: str, data_layout: str, groups: int
) -> tuple[np.ndarray, str]:
    """The weights of an NHWC convolution laid out OHWI at compile time (same values, same flash): each
    output channel's taps then run along the input channels contiguously, as they do in the input, so
    the innermost reduction is a dot product of two contiguous vectors (UseDotKernels). Other layouts
    and grouped convolutions keep theirs."""
    if data_layout != "NHWC" or groups != 1 or sorted(kernel_layout) != sorted("OHWI"):
        return w, kernel_layout
    perm = [kernel_layout.index(axis) for axis in "OHWI"]
    return np.ascontiguousarray(w.transpose(perm)), "OHWI"


def emit_conv2d(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    x, w = p.inputs
    a = p.call.attrs
    if str(a.out_layout) != str(a.data_layout):
        raise NotInteger("conv2d output layout differs from its input layout")
    kernel_layout = str(a.kernel_layout)
    o_axis = kernel_layout.index("O")
    w_int, w_scale = _weights(w, o_axis)
    bias, pre_shift = _folded_bias(p, x, w_int, w_scale, o_axis, out)
    m, shift = _multipliers(x, w_scale / np.float32(1 << pre_shift), out.scale)
    act_min, act_max = _act_range(p, out)
    bounded = _bounded(x, w_int, o_axis, bias, pre_shift, shift)
    right_shift = bounded and rounding == fixed_point.TFLITE and fixed_point.right_shifts(shift)
    w_int, kernel_layout = _reduction_contiguous(w_int, kernel_layout, str(a.data_layout), int(a.groups))
    return bb.call_te(
        kernels.conv2d_int8,
        x.var,
        _const(w_int),
        _requant_params(bias, m, -shift - 1 if right_shift else shift),
        strides=_ints(a.strides),
        padding=_ints(a.padding),
        dilation=_ints(a.dilation),
        groups=int(a.groups),
        data_layout=str(a.data_layout),
        kernel_layout=kernel_layout,
        zp_in=x.zero_point,
        zp_out=out.zero_point,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        out_dtype=out.dtype,
        pre_shift=pre_shift,
        bounded=bounded,
        right_shift=right_shift,
        primfunc_name_hint="conv2d_int8",
    )


def emit_dense(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    x, w = p.inputs
    x_shape = [int(d) for d in x.var.ty.shape]
    if len(x_shape) != 2 or w.values.ndim != 2:
        raise NotInteger("matmul is integer only for a 2-D input and a 2-D constant weight")
    # Relax matmul computes x[N, K] @ w[K, M]; the kernel takes the weight as [M, K] (TFLite's layout).
    w_mk = w.transformed(lambda a: np.ascontiguousarray(a.T))
    w_int, w_scale = _weights(w_mk, 0)
    bias, pre_shift = _folded_bias(p, x, w_int, w_scale, 0, out)
    m, shift = _multipliers(x, w_scale / np.float32(1 << pre_shift), out.scale)
    act_min, act_max = _act_range(p, out)
    bounded = _bounded(x, w_int, 0, bias, pre_shift, shift)
    right_shift = bounded and rounding == fixed_point.TFLITE and fixed_point.right_shifts(shift)
    return bb.call_te(
        kernels.dense_int8,
        x.var,
        _const(w_int),
        _requant_params(bias, m, -shift - 1 if right_shift else shift),
        zp_out=out.zero_point,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        out_dtype=out.dtype,
        pre_shift=pre_shift,
        bounded=bounded,
        right_shift=right_shift,
        primfunc_name_hint="dense_int8",
    )


def _emit_add(bb: Any, p: Pending, out: QType, rounding: str, subtract: bool) -> Any:
    a, b = p.inputs
    if not isinstance(a, QTensor) or not isinstance(b, QTensor):
        raise NotInteger("add of a quantised tensor and a constant is not supported")
    kernel, prm = kernels.add_int8, params.add_params(a.scale, b.scale, out.scale)
    if rounding == fixed_point.ONNX:
        even = params.add_params_even(a.scale, b.scale, out.scale)
        if even is not None:  # else exponents too far apart: TFLite's add, within a step
            kernel, prm = kernels.add_int8_even, even
    return _binary_call(bb, kernel, p, out, "sub_int8" if subtract else "add_int8", subtract=subtract, **prm)


def _binary_call(bb: Any, kernel: Any, p: Pending, out: QType, name: str, **extra: Any) -> Any:
    """An integer kernel of two quantised tensors (broadcast to the call's shape) into ``out``."""
    a, b = p.inputs
    act_min, act_max = _act_range(p, out)
    return bb.call_te(
        kernel,
        a.var,
        b.var,
        out_shape=[int(d) for d in p.call.ty.shape],
        zp_a=a.zero_point,
        zp_b=b.zero_point,
        zp_out=out.zero_point,
        act_min=act_min,
        act_max=act_max,
        out_dtype=out.dtype,
        primfunc_name_hint=name,
        **extra,
    )


def emit_add(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    return _emit_add(bb, p, out, rounding, subtract=False)


def emit_subtract(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    return _emit_add(bb, p, out, rounding, subtract=True)


def emit_multiply(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    a, b = p.inputs
    real = (
        np.float64(np.float32(a.scale)) * np.float64(np.float32(b.scale)) / np.float64(np.float32(out.scale))
    )
    m, shift = params.quantize_multiplier(float(real))
    return _binary_call(
        bb, kernels.mul_int8, p, out, "mul_int8", multiplier=m, shift=shift, rounding=rounding
    )


def requantize(
    bb: Any,
    x: QTensor,
    out: QType,
    act: tuple[int, int] | None = None,
    rounding: str = "tflite",
) -> Any:
    """``x`` moved to ``out`` (scale, zero point, type), clamped to ``act`` (default: the whole type);
    the same variable when nothing changes."""
    act = act if act is not None else (out.qmin, out.qmax)
    if (
        np.float32(x.scale) == np.float32(out.scale)
        and x.zero_point == out.zero_point
        and x.dtype == out.dtype
    ):
        return x.var if act == (out.qmin, out.qmax) else relax.op.clip(x.var, act[0], act[1])
    m, shift = params.quantize_multiplier(
        float(np.float64(np.float32(x.scale)) / np.float64(np.float32(out.scale)))
    )
    return bb.call_te(
        kernels.requantize_int8,
        x.var,
        zp_in=x.zero_point,
        zp_out=out.zero_point,
        multiplier=m,
        shift=shift,
        act_min=act[0],
        act_max=act[1],
        rounding=rounding,
        out_dtype=out.dtype,
        primfunc_name_hint="requantize_int8",
    )


def avg_pool_int8(
    bb: Any,
    source: Any,
    call: Any,
    act: tuple[int, int],
    requant: tuple[int, int, int, int] | None = None,
    out_dtype: str = "int8",
) -> Any:
    a = call.attrs
    if bool(a.ceil_mode) and requant is None:
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
        out_dtype=out_dtype,
        primfunc_name_hint="avg_pool2d_int8",
    )


def emit_avg_pool(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    (x,) = p.inputs
    m, shift = params.quantize_multiplier(
        float(np.float64(np.float32(x.scale)) / np.float64(np.float32(out.scale)))
    )
    if rounding == fixed_point.ONNX and 31 - shift <= 56:
        # One rounding (half to even) of sum * s_in / (count * s_out): the float semantics.
        act_min, act_max = _act_range(p, out)
        return avg_pool_int8(
            bb,
            x.var,
            p.call,
            (act_min, act_max),
            requant=(x.zero_point, out.zero_point, m, shift),
            out_dtype=out.dtype,
        )
    if bool(p.call.attrs.count_include_pad) and any(int(v) for v in p.call.attrs.padding):
        # The raw-sum average below would count padding as 0 rather than the zero point.
        raise NotInteger("average pooling with count_include_pad and an extreme input/output scale ratio")
    pooled = bb.emit(avg_pool_int8(bb, x.var, p.call, (x.qtype.qmin, x.qtype.qmax), out_dtype=x.dtype))
    return requantize(bb, QTensor(pooled, x.scale, x.zero_point, x.dtype), out, _act_range(p, out), rounding)


def emit_max_pool(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
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
    return requantize(bb, QTensor(pooled, x.scale, x.zero_point, x.dtype), out, _act_range(p, out), rounding)


def emit_reduce_max(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    """max / min over axes (GlobalMaxPool, ReduceMax): the same reduction on the integers (monotone),
    then a requantisation."""
    (x,) = p.inputs
    a = p.call.attrs
    op = relax.op.max if p.kind == "reduce_max" else relax.op.min
    axes = None if a.axis is None else _ints(a.axis)
    reduced = bb.emit(op(x.var, axis=axes, keepdims=bool(a.keepdims)))
    return requantize(bb, QTensor(reduced, x.scale, x.zero_point, x.dtype), out, _act_range(p, out), rounding)


def emit_softmax(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    (x,) = p.inputs
    axis = int(p.call.attrs.axis)
    m_in, shift_in, diff_min = params.softmax_params(1.0, x.scale)
    table = params.softmax_exp_table(m_in, shift_in, diff_min)
    tflite_convention = (
        out.zero_point == -128 and out.dtype == "int8" and np.float32(out.scale) == np.float32(1 / 256)
    )
    if rounding == fixed_point.TFLITE:
        if not tflite_convention:
            raise NotInteger(
                "int8 softmax needs the output scale 1/256 and zero point -128 (TFLite's convention)"
            )
        return bb.call_te(
            kernels.softmax_int8,
            x.var,
            _const(table),
            diff_min=diff_min,
            axis=axis,
            primfunc_name_hint="softmax_int8",
        )
    m, shift = params.quantize_multiplier(2.0**-24 / float(np.float32(out.scale)))
    act_min, act_max = _act_range(p, out)
    return bb.call_te(
        kernels.softmax_int8,
        x.var,
        _const(table),
        diff_min=diff_min,
        axis=axis,
        requant=(m, shift, out.zero_point, act_min, act_max),
        out_dtype=out.dtype,
        primfunc_name_hint="softmax_int8",
    )


def emit_concat(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    parts = [
        bb.emit(requantize(bb, x, out, rounding=rounding)) if isinstance(x, QTensor) else None
        for x in p.inputs
    ]
    if any(v is None for v in parts):
        raise NotInteger("concat of a constant")
    return relax.op.concat(parts, axis=int(p.call.attrs.axis))


def emit_mean(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    """Mean over any axes, TFLite Micro's ``QuantizedMeanOrSum`` arithmetic."""
    (x,) = p.inputs
    shape = [int(d) for d in x.var.ty.shape]
    axes = sorted({int(a) % len(shape) for a in p.call.attrs.axis})
    count = int(np.prod([shape[a] for a in axes]))
    if rounding == fixed_point.ONNX:  # one rounding of sum * s_in / (count * s_out)
        m, shift = params.quantize_multiplier(
            float(np.float64(np.float32(x.scale)) / (count * np.float64(np.float32(out.scale))))
        )
    else:
        m, shift = params.mean_params(x.scale, out.scale, count)
    act_min, act_max = _act_range(p, out)
    return bb.call_te(
        kernels.mean_int8,
        x.var,
        axes=axes,
        out_shape=[int(d) for d in p.call.ty.shape],
        zp_in=x.zero_point,
        zp_out=out.zero_point,
        multiplier=m,
        shift=shift,
        act_min=act_min,
        act_max=act_max,
        rounding=rounding,
        out_dtype=out.dtype,
        primfunc_name_hint="mean_int8",
    )


def emit_clamp(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    """relu / clip of a quantised tensor: requantised to the output and clamped to the activation range."""
    (x,) = p.inputs
    return requantize(bb, x, out, _act_range(p, out), rounding)


def emit_pad(bb: Any, p: Pending, out: QType, rounding: str) -> Any:
    """Pad (constant, reflect, edge) of a quantised tensor: requantised to the output, then padded with the
    constant quantised as QuantizeLinear would (the same integers as quantising the padded floats)."""
    (x,) = p.inputs
    a = p.call.attrs
    moved = bb.emit(requantize(bb, x, out, _act_range(p, out), rounding))
    mode = str(a.pad_mode)
    value = 0
    if mode == "constant":
        real = np.float32(float(a.pad_value))
        lo, hi = _act_range(p, out)
        value = int(np.clip(np.rint(real / np.float32(out.scale)) + out.zero_point, lo, hi))
    return relax.op.nn.pad(moved, _ints(a.pad_width), mode, float(value))


def requantize_to(bb: Any, x: QTensor, dtype: str) -> QTensor:
    """``x`` as the other 8-bit type, same real values: zero point moved by 128 (exact)."""
    shift = QUANTIZED_DTYPES[dtype][0] - QUANTIZED_DTYPES[x.dtype][0]
    moved = bb.emit(requantize(bb, x, QType(x.scale, x.zero_point + shift, dtype)))
    return QTensor(moved, x.scale, x.zero_point + shift, dtype)


EMITTERS: dict[str, Callable[[Any, Pending, QType, str], Any]] = {
    "clamp": emit_clamp,
    "conv2d": emit_conv2d,
    "dense": emit_dense,
    "add": emit_add,
    "subtract": emit_subtract,
    "multiply": emit_multiply,
    "avg_pool2d": emit_avg_pool,
    "max_pool2d": emit_max_pool,
    "reduce_max": emit_reduce_max,
    "reduce_min": emit_reduce_max,
    "softmax": emit_softmax,
    "concat": emit_concat,
    "mean": emit_mean,
    "pad": emit_pad,
}
