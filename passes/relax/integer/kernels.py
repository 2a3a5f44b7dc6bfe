"""Whole integer operators as TE compute definitions (one PrimFunc each through ``BlockBuilder.call_te``).

Each kernel does what TFLite Micro's reference kernel does, bit for bit: int8 x int8 products summed in
int32, the bias (with the input zero point folded in at compile time), TFLite's requantisation and the
activation clamp. Padding is written with the input's zero point, so padded taps contribute nothing, as
TFLite's bounds test does; ScheduleForMcu later inlines the padding and the epilogue into the loops.

Parameters that differ per output channel (bias, multiplier, shift) are one int32 tensor [C, 3] indexed
by the channel; scalars are compile-time constants in the expressions. The fixed-point arithmetic is in
``fixed_point`` (C helpers called through ``call_extern``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tvm_mcu._tvm import te, tirx, topi
from tvm_mcu.passes.relax.integer.fixed_point import (
    div_round_even,
    fits_bounded,
    i32,
    largest_product,
    multiply_by_quantized_multiplier,
    rdbpot,
    reciprocal_bits,
    reciprocal_scale,
    round_even,
    saturate,
    srdhm,
)

TeTensor = Any


def c32(v: int) -> Any:
    return tirx.const(v, "int32")


def _clamp(value: Any, act_min: int, act_max: int, dtype: str = "int8") -> Any:
    """Saturate an int32 value to the activation range (within ``dtype``'s) and narrow it: one
    saturating instruction to ``dtype``'s range, then the bounds of the activation it leaves."""
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255)}.get(str(dtype), (1, 0))
    sat = saturate(value, str(dtype))
    if sat is None or not lo <= act_min <= act_max <= hi:
        return tirx.max(tirx.min(value, c32(act_max)), c32(act_min)).astype(dtype)
    if act_max < hi:
        sat = tirx.min(sat, c32(act_max))
    if act_min > lo:
        sat = tirx.max(sat, c32(act_min))
    return sat.astype(dtype)


def _requantize(
    acc: Any,
    multiplier: Any,
    shift: Any,
    zp_out: int,
    act_min: int,
    act_max: int,
    rounding: str,
    out_dtype: str = "int8",
    bounded: bool = False,
    right_shift: bool = False,
) -> Any:
    scaled = multiply_by_quantized_multiplier(
        acc, multiplier, shift, rounding, bounded=bounded, right=right_shift
    )
    return _clamp(scaled + c32(zp_out), act_min, act_max, out_dtype)


def conv2d_int8(
    data: TeTensor,
    weight: TeTensor,
    requant: TeTensor,
    *,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    data_layout: str,
    kernel_layout: str,
    zp_in: int,
    zp_out: int,
    act_min: int,
    act_max: int,
    rounding: str,
    out_dtype: str = "int8",
    pre_shift: int = 0,
    bounded: bool = False,
    right_shift: bool = False,
) -> TeTensor:
    """Integer conv2d (regular, grouped, depthwise): TFLite's ``ConvPerChannel`` / ``DepthwiseConv``.

    ``padding`` is (top, left, bottom, right). ``requant`` [C, 3] holds each output channel's bias,
    multiplier and shift; the bias already is ``bias - zp_in * sum(weights)``, so the products need
    no input offset. ``data`` is int8 or uint8 (its zero
    point pads it); ``weight`` int8, or int16 when a weight zero point was subtracted at compile time.
    ``pre_shift``: the accumulator is scaled by ``2**pre_shift`` before the bias is added, for a float
    bias finer than the accumulator's unit (see ``emit._bias_precision``). ``bounded``: every biased
    accumulator is small enough for the short requantisation (``fixed_point.fits_bounded``);
    ``right_shift``: besides, ``shift`` holds ``-shift - 1``, every channel's a right shift
    (``fixed_point.right_shifts``).
    """
    top, left, bottom, right = (int(p) for p in padding)
    h_axis, w_axis = data_layout.index("H"), data_layout.index("W")
    before = [0, 0, 0, 0]
    after = [0, 0, 0, 0]
    before[h_axis], before[w_axis], after[h_axis], after[w_axis] = top, left, bottom, right
    padded = data
    if any(before) or any(after):
        padded = topi.nn.pad(data, before, after, pad_value=tirx.const(zp_in, data.dtype), name="pad_temp")
    acc = topi.nn.conv(
        padded, weight, strides, 0, dilation, groups, data_layout, kernel_layout, out_dtype="int32"
    )
    c_axis = data_layout.index("C")

    def epilogue(*idx: Any) -> Any:
        c = idx[c_axis]
        return _requantize(
            _scaled_acc(acc(*idx), pre_shift) + requant[c, 0],
            requant[c, 1],
            requant[c, 2],
            zp_out,
            act_min,
            act_max,
            rounding,
            out_dtype,
            bounded,
            right_shift,
        )

    return te.compute(acc.shape, epilogue, name="requantize")


def dense_int8(
    data: TeTensor,
    weight: TeTensor,
    requant: TeTensor,
    *,
    zp_out: int,
    act_min: int,
    act_max: int,
    rounding: str,
    out_dtype: str = "int8",
    pre_shift: int = 0,
    bounded: bool = False,
    right_shift: bool = False,
) -> TeTensor:
    """Integer fully connected, TFLite's ``FullyConnected``: ``data`` [N, K], ``weight`` [M, K]
    (``bounded`` and ``right_shift`` as for :func:`conv2d_int8`)."""
    n, k_dim = data.shape
    m = weight.shape[0]
    k = te.reduce_axis((0, k_dim), name="k")
    acc = te.compute((n, m), lambda i, j: te.sum(i32(data[i, k]) * i32(weight[j, k]), axis=k), name="dense")
    return te.compute(
        (n, m),
        lambda i, j: _requantize(
            _scaled_acc(acc[i, j], pre_shift) + requant[j, 0],
            requant[j, 1],
            requant[j, 2],
            zp_out,
            act_min,
            act_max,
            rounding,
            out_dtype,
            bounded,
            right_shift,
        ),
        name="requantize",
    )


def _scaled_acc(acc: Any, pre_shift: int) -> Any:
    return acc if pre_shift == 0 else acc * c32(1 << pre_shift)


def _broadcast_index(shape: Sequence[Any], out_idx: Sequence[Any]) -> list[Any]:
    """numpy broadcasting: map an output index to an index of a tensor of ``shape``."""
    offset = len(out_idx) - len(shape)
    return [0 if int(d) == 1 else out_idx[offset + i] for i, d in enumerate(shape)]


def add_int8(
    a: TeTensor,
    b: TeTensor,
    *,
    out_shape: Sequence[int],
    zp_a: int,
    zp_b: int,
    zp_out: int,
    left_shift: int,
    m1: int,
    s1: int,
    m2: int,
    s2: int,
    mo: int,
    so: int,
    act_min: int,
    act_max: int,
    subtract: bool = False,
    out_dtype: str = "int8",
) -> TeTensor:
    """Integer elementwise add with rescaling, TFLite's int8 ``Add`` (both inputs moved to a common scale);
    with ``subtract``, TFLite's int8 ``Sub`` (the second scaled input subtracted)."""

    # The short requantisations wherever the magnitudes allow them (as they do for int8 inputs and a
    # left shift of 20, TFLite's): every multiplier and shift is a constant here.
    largest_a = _largest_value(a.dtype, zp_a) << left_shift
    largest_b = _largest_value(b.dtype, zp_b) << left_shift
    bounded_a = fits_bounded(largest_a, s1)
    bounded_b = fits_bounded(largest_b, s2)
    largest_sum = largest_product(largest_a, m1, s1) + largest_product(largest_b, m2, s2)
    bounded_out = bounded_a and bounded_b and fits_bounded(largest_sum, so)

    def scaled(v: Any, m: int, s: int, bounded: bool) -> Any:
        # The input with the larger scale has multiplier 2**30 (one half) and shift 0: v * 2**left_shift
        # times one half, an exact shift (the product is even, so neither rounding moves it).
        if m == 1 << 30 and s <= 0 and left_shift - 1 + s >= 0:
            return v * c32(1 << (left_shift - 1 + s))
        return multiply_by_quantized_multiplier(v * c32(1 << left_shift), m, s, bounded=bounded)

    def f(*idx: Any) -> Any:
        va = i32(a(*_broadcast_index(a.shape, idx))) - c32(zp_a)
        vb = i32(b(*_broadcast_index(b.shape, idx))) - c32(zp_b)
        sa = scaled(va, m1, s1, bounded_a)
        sb = scaled(vb, m2, s2, bounded_b)
        raw = multiply_by_quantized_multiplier(sa - sb if subtract else sa + sb, mo, so, bounded=bounded_out)
        return _clamp(raw + c32(zp_out), act_min, act_max, out_dtype)

    return te.compute(list(out_shape), f, name="add_int8")


def _largest_value(dtype: str, zero_point: int) -> int:
    """The largest magnitude of an int8/uint8 value minus its zero point."""
    lo, hi = (0, 255) if str(dtype) == "uint8" else (-128, 127)
    return max(hi - zero_point, zero_point - lo)


def add_int8_even(
    a: TeTensor,
    b: TeTensor,
    *,
    out_shape: Sequence[int],
    zp_a: int,
    zp_b: int,
    zp_out: int,
    ma: int,
    la: int,
    mb: int,
    lb: int,
    total_shift: int,
    act_min: int,
    act_max: int,
    subtract: bool = False,
    out_dtype: str = "int8",
) -> TeTensor:
    """Integer add (or, with ``subtract``, sub) with one half-to-even rounding (ONNX semantics):
    ``(a'*ma << la) +- (b'*mb << lb)`` over ``2**total_shift``, the scale ratios as 31-bit multipliers
    aligned to a common exponent."""
    sign = -1 if subtract else 1

    def f(*idx: Any) -> Any:
        va = (i32(a(*_broadcast_index(a.shape, idx))) - c32(zp_a)).astype("int64")
        vb = (i32(b(*_broadcast_index(b.shape, idx))) - c32(zp_b)).astype("int64")
        total = va * tirx.const(ma << la, "int64") + vb * tirx.const(sign * (mb << lb), "int64")
        return _clamp(round_even(total, total_shift) + c32(zp_out), act_min, act_max, out_dtype)

    return te.compute(list(out_shape), f, name="add_int8")


def requantize_int8(
    data: TeTensor,
    *,
    zp_in: int,
    zp_out: int,
    multiplier: int,
    shift: int,
    act_min: int,
    act_max: int,
    rounding: str,
    out_dtype: str = "int8",
) -> TeTensor:
    """Move int8/uint8 values to another scale, zero point and type (TFLite's ``Requantize``)."""

    def f(*idx: Any) -> Any:
        scaled = multiply_by_quantized_multiplier(i32(data(*idx)) - c32(zp_in), multiplier, shift, rounding)
        return _clamp(scaled + c32(zp_out), act_min, act_max, out_dtype)

    return te.compute(data.shape, f, name="requantize")


def avg_pool2d_int8(
    data: TeTensor,
    *,
    pool_size: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[int],
    layout: str,
    out_shape: Sequence[int],
    count_include_pad: bool,
    act_min: int,
    act_max: int,
    requant: tuple[int, int, int, int] | None = None,
    out_dtype: str = "int8",
) -> TeTensor:
    """Integer average pool, TFLite's int8 ``AveragePool``: the sum of the in-bounds taps divided by their
    count, rounded half away from zero (same scale in and out).

    With ``requant`` = (zp_in, zp_out, multiplier, shift) the output is instead the ONNX semantics
    ``(sum - zp_in * count) * s_in / (count * s_out)`` rounded once, half to even, plus ``zp_out``:
    ``s_in / s_out = multiplier * 2**(shift - 31)`` and the exact division by ``count * 2**(31 - shift)``.
    """
    kh, kw = (int(v) for v in pool_size)
    sh, sw = (int(v) for v in strides)
    top, left = int(padding[0]), int(padding[1])
    h_axis, w_axis = layout.index("H"), layout.index("W")
    height, width = int(data.shape[h_axis]), int(data.shape[w_axis])
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")

    def window_sum(*idx: Any) -> Any:
        h = idx[h_axis] * sh - top + rh
        w = idx[w_axis] * sw - left + rw
        src = list(idx)
        src[h_axis], src[w_axis] = h, w
        inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
        return te.sum(tirx.if_then_else(inside, i32(data(*src)), c32(0)), axis=[rh, rw])

    total = te.compute(list(out_shape), window_sum, name="pool_sum")

    bottom, right = (int(padding[2]), int(padding[3])) if len(padding) == 4 else (top, left)

    out_h, out_w = int(out_shape[h_axis]), int(out_shape[w_axis])
    # Every window wholly inside the input: the count is a constant and TFLite's division stays int32
    # (an index-derived count turns int64 under Relax's index rewriting: a 64-bit division, a library
    # call and 1 kB of flash on a Cortex-M).
    whole = top == 0 and left == 0 and (out_h - 1) * sh + kh <= height and (out_w - 1) * sw + kw <= width

    def average(*idx: Any) -> Any:
        h0 = idx[h_axis] * sh - top
        w0 = idx[w_axis] * sw - left
        inside = (tirx.min(h0 + kh, height) - tirx.max(h0, 0)) * (tirx.min(w0 + kw, width) - tirx.max(w0, 0))
        # The divisor: the taps inside the input, or with count_include_pad the window within the padded
        # input (a ceil_mode window past the padding counts less).
        count = (
            (tirx.min(h0 + kh, height + bottom) - h0) * (tirx.min(w0 + kw, width + right) - w0)
            if count_include_pad
            else inside
        )
        if requant is not None:
            # Padding stands for real 0: the sum of (x - zp_in) runs over the taps inside the input.
            zp_in, zp_out, multiplier, shift = requant
            centred = (total(*idx) - inside * c32(zp_in)).astype("int64") * tirx.const(multiplier, "int64")
            denominator = count.astype("int64") * tirx.const(1 << (31 - shift), "int64")
            return _clamp(div_round_even(centred, denominator) + c32(zp_out), act_min, act_max, out_dtype)
        s = total(*idx)
        if whole:
            count = c32(kh * kw)
        half = tirx.truncdiv(count, c32(2))
        avg = tirx.Select(s > c32(0), tirx.truncdiv(s + half, count), tirx.truncdiv(s - half, count))
        return _clamp(avg, act_min, act_max, out_dtype)

    return te.compute(list(out_shape), average, name="avg_pool_int8")


def mean_int8(
    data: TeTensor,
    *,
    axes: Sequence[int],
    out_shape: Sequence[int],
    zp_in: int,
    zp_out: int,
    multiplier: int,
    shift: int,
    act_min: int,
    act_max: int,
    rounding: str,
    out_dtype: str = "int8",
) -> TeTensor:
    """Integer mean, TFLite Micro's ``QuantizedMeanOrSum``: ``sum(x) - zp_in * count``, one requantisation
    with the count folded into the multiplier (``params.mean_params``), plus ``zp_out``."""
    shape = [int(d) for d in data.shape]
    reduce_axes = [te.reduce_axis((0, shape[a]), name=f"r{a}") for a in axes]
    count = 1
    for a in axes:
        count *= shape[a]
    keep = len(out_shape) == len(shape)

    def total(*idx: Any) -> Any:
        src: list[Any] = []
        it = iter(idx)
        for a in range(len(shape)):
            if a in axes:
                src.append(reduce_axes[axes.index(a)])
                if keep:
                    next(it)
            else:
                src.append(next(it))
        return te.sum(i32(data(*src)), axis=reduce_axes)

    sums = te.compute(list(out_shape), total, name="mean_sum")
    return te.compute(
        list(out_shape),
        lambda *idx: _requantize(
            sums(*idx) - c32(zp_in * count), multiplier, shift, zp_out, act_min, act_max, rounding, out_dtype
        ),
        name="mean_int8",
    )


def softmax_int8(
    data: TeTensor,
    exp_table: TeTensor,
    *,
    diff_min: int,
    axis: int = -1,
    requant: tuple[int, int, int, int, int] | None = None,
    out_dtype: str = "int8",
) -> TeTensor:
    """Integer softmax along ``axis``, TFLite's int8 ``Softmax`` (gemmlowp fixed point).

    ``exp_table[d]`` is exp of the rescaled difference ``-d`` to the row maximum (Q0.31), tabulated at
    compile time from the same fixed-point arithmetic (the 8-bit difference takes 256 values). At run
    time: the row maximum, the sum of the exps in Q12.19, its reciprocal (count leading zeros, then
    three Newton-Raphson steps), and each output ``RDBPOT(SRDHM(reciprocal, exp), bits + 23) - 128``
    (TFLite's output scale 1/256, zero point -128). Differences below ``diff_min`` contribute nothing
    and give -128, as in TFLite.

    With ``requant`` = (multiplier, shift, zero point, act_min, act_max), any output scale instead: the
    probability is taken to 24 fractional bits, ``RDBPOT(SRDHM(reciprocal, exp), bits + 7)``, then
    requantised once, half to even, by ``multiplier * 2**(shift - 31)`` (``2**-24 / s_out``).
    """
    shape = list(data.shape)
    rank = len(shape)
    axis = axis % rank
    depth = int(shape[axis])

    def row(idx: Sequence[Any]) -> list[Any]:
        return [v for a, v in enumerate(idx) if a != axis]

    def at(r: Sequence[Any], k: Any) -> list[Any]:
        out = list(r)
        out.insert(axis, k)
        return out

    rows = row(shape)
    k = te.reduce_axis((0, depth), name="k")
    row_max = te.compute(rows, lambda *r: te.max(i32(data(*at(r, k))), axis=k), name="row_max")

    def exp_of(idx: Sequence[Any], r: Sequence[Any]) -> tuple[Any, Any]:
        diff = i32(data(*idx)) - row_max(*r)
        return diff, exp_table[c32(0) - diff]

    k2 = te.reduce_axis((0, depth), name="k2")

    def term(*r: Any) -> Any:
        diff, exp = exp_of(at(r, k2), r)
        return tirx.Select(diff >= c32(diff_min), rdbpot(exp, 12), c32(0))

    total = te.compute(rows, lambda *r: te.sum(term(*r), axis=k2), name="sum_of_exps")
    scale = te.compute(rows, lambda *r: reciprocal_scale(total(*r)), name="reciprocal")
    bits = te.compute(rows, lambda *r: reciprocal_bits(total(*r)), name="reciprocal_bits")

    def output(*idx: Any) -> Any:
        r = row(idx)
        diff, exp = exp_of(idx, r)
        if requant is None:
            unsat = rdbpot(srdhm(scale(*r), exp), bits(*r) + c32(31 - 8))
            value = _clamp(unsat + c32(-128), -128, 127)
            return tirx.Select(diff >= c32(diff_min), value, tirx.const(-128, "int8"))
        multiplier, shift, zp_out, act_min, act_max = requant
        p24 = rdbpot(srdhm(scale(*r), exp), bits(*r) + c32(31 - 24))
        p24 = tirx.Select(diff >= c32(diff_min), p24, c32(0))
        scaled = multiply_by_quantized_multiplier(p24, multiplier, shift, "onnx")
        return _clamp(scaled + c32(zp_out), act_min, act_max, out_dtype)

    return te.compute(shape, output, name="softmax_int8")


def lookup_int8(data: TeTensor, table: TeTensor, *, offset: int, channel_axis: int | None = None) -> TeTensor:
    """An element-wise function of an int8/uint8 tensor by table: ``table[x + offset]`` (or, per channel,
    ``table[c, x + offset]``), the table computed at compile time (TFLite's int8 LOGISTIC/TANH are
    such tables in TFLite)."""

    def f(*idx: Any) -> Any:
        slot = i32(data(*idx)) + c32(offset)
        return table[idx[channel_axis], slot] if channel_axis is not None else table[slot]

    return te.compute(data.shape, f, name="lookup")


def mul_int8(
    a: TeTensor,
    b: TeTensor,
    *,
    out_shape: Sequence[int],
    zp_a: int,
    zp_b: int,
    zp_out: int,
    multiplier: int,
    shift: int,
    act_min: int,
    act_max: int,
    rounding: str,
    out_dtype: str = "int8",
) -> TeTensor:
    """Integer elementwise multiply, TFLite's int8 ``Mul``: ``(a - zp_a) * (b - zp_b)`` in int32 (at most
    255 * 255), requantised by ``s_a * s_b / s_out``."""

    def f(*idx: Any) -> Any:
        va = i32(a(*_broadcast_index(a.shape, idx))) - c32(zp_a)
        vb = i32(b(*_broadcast_index(b.shape, idx))) - c32(zp_b)
        return _requantize(va * vb, multiplier, shift, zp_out, act_min, act_max, rounding, out_dtype)

    return te.compute(list(out_shape), f, name="mul_int8")
