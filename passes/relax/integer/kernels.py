"""Whole integer operators as TE compute definitions (one PrimFunc each through ``BlockBuilder.call_te``).

Each kernel does what TFLite Micro's reference kernel does, bit for bit: int8 x int8 products summed in
int32, the bias (with the input zero point folded in at compile time), TFLite's requantisation and the
activation clamp. Padding is written with the input's zero point, so padded taps contribute nothing, as
TFLite's bounds test does; ScheduleForMcu later inlines the padding and the epilogue into the loops.

Parameters that differ per output channel (multiplier, shift, bias) are int32 tensors indexed by the
channel; scalars are compile-time constants in the expressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The TE module is imported lazily by TVM's BlockBuilder; kernels receive te.Tensor arguments.
from tvm import te, topi  # noqa: E402  (kept after the project imports: TVM resolves both the same way)

from tvm_mcu._tvm import tirx
from tvm_mcu.passes.relax.integer.fixed_point import (
    Lets,
    c32,
    count_leading_zeros,
    half_sum_with_one,
    multiply_by_quantized_multiplier,
    newton_step,
    rdbpot,
    saturating_left_shift,
    select,
    srdhm,
)

TeTensor = Any


def _clamp_to_int8(value: Any, act_min: int, act_max: int) -> Any:
    return tirx.max(tirx.min(value, c32(act_max)), c32(act_min)).astype("int8")


def _requantize(
    acc: Any, multiplier: Any, shift: Any, zp_out: int, act_min: int, act_max: int, any_left_shift: bool
) -> Any:
    lets = Lets()
    scaled = multiply_by_quantized_multiplier(lets, acc, multiplier, shift, any_left_shift=any_left_shift)
    return lets.wrap(_clamp_to_int8(scaled + c32(zp_out), act_min, act_max))


def conv2d_int8(
    data: TeTensor,
    weight: TeTensor,
    bias: TeTensor,
    multiplier: TeTensor,
    shift: TeTensor,
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
    any_left_shift: bool,
) -> TeTensor:
    """Integer conv2d (regular, grouped, depthwise): TFLite's ``ConvPerChannel`` / ``DepthwiseConv``.

    ``padding`` is (top, left, bottom, right). ``bias`` already holds ``bias - zp_in * sum(weights)``
    per output channel, so the products need no input offset.
    """
    top, left, bottom, right = (int(p) for p in padding)
    h_axis, w_axis = data_layout.index("H"), data_layout.index("W")
    before = [0, 0, 0, 0]
    after = [0, 0, 0, 0]
    before[h_axis], before[w_axis], after[h_axis], after[w_axis] = top, left, bottom, right
    padded = data
    if any(before) or any(after):
        padded = topi.nn.pad(data, before, after, pad_value=tirx.const(zp_in, "int8"), name="pad_temp")
    acc = topi.nn.conv(
        padded, weight, strides, 0, dilation, groups, data_layout, kernel_layout, out_dtype="int32"
    )
    c_axis = data_layout.index("C")

    def epilogue(*idx: Any) -> Any:
        c = idx[c_axis]
        return _requantize(
            acc(*idx) + bias[c], multiplier[c], shift[c], zp_out, act_min, act_max, any_left_shift
        )

    return te.compute(acc.shape, epilogue, name="requantize")


def dense_int8(
    data: TeTensor,
    weight: TeTensor,
    bias: TeTensor,
    multiplier: TeTensor,
    shift: TeTensor,
    *,
    zp_out: int,
    act_min: int,
    act_max: int,
    any_left_shift: bool,
) -> TeTensor:
    """Integer fully connected, TFLite's ``FullyConnected``: ``data`` [N, K], ``weight`` [M, K]."""
    n, k_dim = data.shape
    m = weight.shape[0]
    k = te.reduce_axis((0, k_dim), name="k")
    acc = te.compute(
        (n, m),
        lambda i, j: te.sum(data[i, k].astype("int32") * weight[j, k].astype("int32"), axis=k),
        name="dense",
    )
    return te.compute(
        (n, m),
        lambda i, j: _requantize(
            acc[i, j] + bias[j], multiplier[j], shift[j], zp_out, act_min, act_max, any_left_shift
        ),
        name="requantize",
    )


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
) -> TeTensor:
    """Integer elementwise add with rescaling, TFLite's int8 ``Add`` (both inputs moved to a common scale)."""

    def f(*idx: Any) -> Any:
        lets = Lets()
        va = a(*_broadcast_index(a.shape, idx)).astype("int32") - c32(zp_a)
        vb = b(*_broadcast_index(b.shape, idx)).astype("int32") - c32(zp_b)
        sa = lets(
            multiply_by_quantized_multiplier(lets, va * c32(1 << left_shift), m1, s1, any_left_shift=False)
        )
        sb = lets(
            multiply_by_quantized_multiplier(lets, vb * c32(1 << left_shift), m2, s2, any_left_shift=False)
        )
        raw = lets(multiply_by_quantized_multiplier(lets, sa + sb, mo, so, any_left_shift=False), "raw")
        return lets.wrap(_clamp_to_int8(raw + c32(zp_out), act_min, act_max))

    return te.compute(list(out_shape), f, name="add_int8")


def requantize_int8(
    data: TeTensor, *, zp_in: int, zp_out: int, multiplier: int, shift: int, act_min: int, act_max: int
) -> TeTensor:
    """Move int8 values to another scale and zero point (TFLite's ``Requantize``)."""

    def f(*idx: Any) -> Any:
        lets = Lets()
        v = data(*idx).astype("int32") - c32(zp_in)
        scaled = lets(multiply_by_quantized_multiplier(lets, v, multiplier, shift, any_left_shift=True), "r")
        return lets.wrap(_clamp_to_int8(scaled + c32(zp_out), act_min, act_max))

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
) -> TeTensor:
    """Integer average pool, TFLite's int8 ``AveragePool``: the sum of the in-bounds taps divided by their
    count, rounded half away from zero (same scale in and out)."""
    kh, kw = (int(v) for v in pool_size)
    sh, sw = (int(v) for v in strides)
    top, left = int(padding[0]), int(padding[1])
    h_axis, w_axis = layout.index("H"), layout.index("W")
    height, width = int(data.shape[h_axis]), int(data.shape[w_axis])
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")

    def tap(idx: Sequence[Any], dh: Any, dw: Any) -> tuple[Any, list[Any]]:
        h = idx[h_axis] * sh - top + dh
        w = idx[w_axis] * sw - left + dw
        src = list(idx)
        src[h_axis], src[w_axis] = h, w
        inside = tirx.all(h >= 0, h < height, w >= 0, w < width)
        return inside, src

    def window_sum(*idx: Any) -> Any:
        inside, src = tap(idx, rh, rw)
        return te.sum(tirx.if_then_else(inside, data(*src).astype("int32"), c32(0)), axis=[rh, rw])

    total = te.compute(list(out_shape), window_sum, name="pool_sum")

    def average(*idx: Any) -> Any:
        if count_include_pad:
            count = c32(kh * kw)
        else:
            h0 = idx[h_axis] * sh - top
            w0 = idx[w_axis] * sw - left
            rows = tirx.min(h0 + kh, height) - tirx.max(h0, 0)
            cols = tirx.min(w0 + kw, width) - tirx.max(w0, 0)
            count = rows * cols
        lets = Lets()
        s = lets(total(*idx), "sum")
        n = lets(count, "count")
        half = lets(tirx.truncdiv(n, c32(2)), "half")
        avg = select(s > c32(0), tirx.truncdiv(s + half, n), tirx.truncdiv(s - half, n))
        return lets.wrap(_clamp_to_int8(avg, act_min, act_max))

    return te.compute(list(out_shape), average, name="avg_pool_int8")


def _newton_stage(prev: TeTensor, half_den: TeTensor) -> Any:
    def f(*r: Any) -> Any:
        lets = Lets()
        return lets.wrap(newton_step(lets, prev(*r), half_den(*r)))

    return f


# Blocks carrying this annotation are kept as their own loop nest by ScheduleForMcu: inlining them would
# recompute long fixed-point chains per element (and TVM's analysers are exponential in their depth).
KEEP = {"tvmmcu_keep": 1}


def softmax_int8(data: TeTensor, exp_table: TeTensor, *, diff_min: int) -> TeTensor:
    """Integer softmax along the last axis, TFLite's int8 ``Softmax`` (gemmlowp fixed point).

    ``exp_table[d]`` is exp of the rescaled difference ``-d`` to the row maximum (Q0.31), tabulated at
    compile time from the same fixed-point arithmetic (the int8 difference takes 256 values). At run
    time: the row maximum, the sum of the exps in Q12.19, its reciprocal (count leading zeros, then
    three Newton-Raphson steps), and each output ``RDBPOT(SRDHM(reciprocal, exp), bits + 23) - 128``.
    """
    shape = list(data.shape)
    rows, depth = shape[:-1], int(shape[-1])
    accumulation_bits = 12
    k = te.reduce_axis((0, depth), name="k")
    row_max = te.compute(rows, lambda *r: te.max(data(*r, k).astype("int32"), axis=k), name="row_max")

    def diff_of(idx: Sequence[Any], r: Sequence[Any]) -> Any:
        return data(*idx).astype("int32") - row_max(*r)

    k2 = te.reduce_axis((0, depth), name="k2")

    def term(*r: Any) -> Any:
        lets = Lets()
        diff = lets(diff_of((*r, k2), r), "diff")
        # The table index must not use a let-bound variable: TE derives the block's read regions from it.
        value = rdbpot(lets, exp_table[c32(0) - diff_of((*r, k2), r)], accumulation_bits)
        return lets.wrap(select(diff >= c32(diff_min), value, c32(0)))

    total = te.compute(rows, lambda *r: te.sum(term(*r), axis=k2), name="sum_of_exps")

    def headroom(*r: Any) -> Any:
        lets = Lets()
        return lets.wrap(count_leading_zeros(lets, total(*r)))

    clz = te.compute(rows, headroom, name="headroom_plus_one", attrs=KEEP)

    def half_denominator(*r: Any) -> Any:
        # GetReciprocal: the sum shifted to [1, 2) minus one, as Q0.31; then RoundingHalfSum(x, One).
        shifted = (
            (total(*r).astype("uint32") << clz(*r).astype("uint32")) - tirx.const(1 << 31, "uint32")
        ).astype("int32")
        lets = Lets()
        return lets.wrap(half_sum_with_one(lets, shifted))

    half_den = te.compute(rows, half_denominator, name="half_denominator", attrs=KEEP)
    x = te.compute(
        rows,
        lambda *r: (lambda lets: lets.wrap(c32(1515870810) + srdhm(lets, half_den(*r), -1010580540)))(Lets()),
        name="reciprocal_0",
        attrs=KEEP,
    )
    for step in range(3):
        x = te.compute(rows, _newton_stage(x, half_den), name=f"reciprocal_{step + 1}", attrs=KEEP)

    def output(*idx: Any) -> Any:
        r = idx[:-1]
        lets = Lets()
        diff = lets(diff_of(idx, r), "diff")
        scale = lets(saturating_left_shift(lets, x(*r), 1), "reciprocal")
        bits = c32(accumulation_bits) - clz(*r)
        exp = exp_table[c32(0) - diff_of(idx, r)]
        unsat = rdbpot(lets, lets(srdhm(lets, scale, exp), "p"), bits + c32(31 - 8))
        value = _clamp_to_int8(lets(unsat, "unsat") + c32(-128), -128, 127)
        return lets.wrap(select(diff >= c32(diff_min), value, tirx.const(-128, "int8")))

    return te.compute(shape, output, name="softmax_int8")
