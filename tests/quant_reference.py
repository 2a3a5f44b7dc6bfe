"""Numpy references for the int8 kernels of the TFLite Micro interpreter (its *reference* kernels).

Written from the TFLite int8 quantisation semantics, not copied from the TFLite sources; every function
is checked bit-exact against ``tflite_micro``'s interpreter by ``tests/test_quant_reference.py``. Two
details were settled against the interpreter rather than from memory: MEAN folds 1/count into its
multiplier (:func:`mean_params`, confirmed in TFLM's ``reduce.h``), and FULLY_CONNECTED's multiplier
behaves as a double product (:func:`fully_connected_multiplier`).

Conventions:

- Integer arithmetic is done on int64 numpy arrays holding int32 values; where the C++ kernel would wrap
  an int32 we wrap too (``_wrap_int32``), and C's truncating integer division is ``_trunc_div``.
- Scales are passed as Python floats, as the model stores them (float32); every function first rounds
  them to float32, then widens to float64 exactly where the kernel does.
- ``activation`` is a fused-activation name: "NONE", "RELU", "RELU6" or "RELU_N1_TO_1";
  ``padding`` is "SAME" or "VALID"; tensors are NHWC.
- TFLM multiplies by a quantised multiplier with *double rounding* (see
  :func:`multiply_by_quantized_multiplier`); the single-rounding variant is here only to show the
  difference.

:func:`read_graph` reads the tensors (quantisation, constant data) and operators of a flatbuffer, and
:func:`apply_operator` runs one operator of it through the matching per-op function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT8_MIN, INT8_MAX = -128, 127

# --------------------------------------------------------------------------------- integer helpers


def _i64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def _wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32, as an int32 C++ accumulator would do."""
    return ((_i64(x) + 2**31) & (2**32 - 1)) - 2**31


def _trunc_div(a: Any, b: Any) -> np.ndarray:
    """C/C++ integer division (rounds toward zero); ``b`` > 0."""
    a, b = _i64(a), _i64(b)
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def _round_half_away(v: float) -> int:
    """``std::round``: round half away from zero (exact for the doubles used here)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _f32(v: float) -> float:
    """``v`` rounded to float32, returned as the (exactly representable) double."""
    return float(np.float32(v))


# ------------------------------------------------------------------------------ multiplier set-up


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: ``real = multiplier * 2**(shift - 31)``, multiplier in [2**30, 2**31).

    ``frexp`` splits the double into a fraction in [0.5, 1) and an exponent (``shift``); the fraction times
    2**31 is rounded half away from zero. If that rounds up to exactly 2**31 it is halved and ``shift``
    incremented. Below 2**-31 (shift < -31) the multiplier flushes to (0, 0); 0.0 gives (0, 0).
    """
    if real_multiplier == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real_multiplier)
    q = _round_half_away(fraction * 2**31)
    if q == 2**31:
        q //= 2
        shift += 1
    if q > INT32_MAX:
        raise ValueError(f"multiplier {real_multiplier} does not fit")
    if shift < -31:
        return 0, 0
    return q, shift


def quantize_multiplier_smaller_than_one_exp(real_multiplier: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplierSmallerThanOneExp``: for 0 < real < 1; returns (multiplier, shift <= 0)."""
    if not 0.0 < real_multiplier < 1.0:
        raise ValueError(f"multiplier {real_multiplier} not in (0, 1)")
    q, shift = quantize_multiplier(real_multiplier)
    assert shift <= 0
    return q, shift


def quantize_multiplier_greater_than_one(real_multiplier: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplierGreaterThanOne``: for real > 1; returns (multiplier, left shift >= 0)."""
    if not real_multiplier > 1.0:
        raise ValueError(f"multiplier {real_multiplier} not > 1")
    q, shift = quantize_multiplier(real_multiplier)
    assert shift >= 0
    return q, shift


def per_channel_multipliers(
    input_scale: float, weight_scales: Sequence[float] | np.ndarray, output_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Conv/depthwise multipliers (TFLite ``PopulateConvolutionQuantizationParams``).

    Per channel ``c``: ``double(s_in) * double(s_w[c]) / double(s_out)`` from the float32 scales (product
    taken in double), then :func:`quantize_multiplier`. Returns int64 arrays (multipliers, shifts).
    """
    s_in, s_out = _f32(input_scale), _f32(output_scale)
    pairs = [quantize_multiplier(s_in * float(s) / s_out) for s in np.asarray(weight_scales, np.float32)]
    return _i64([m for m, _ in pairs]), _i64([s for _, s in pairs])


def fully_connected_multiplier(
    input_scale: float, weight_scale: float, output_scale: float
) -> tuple[int, int]:
    """FULLY_CONNECTED (per-tensor weights) multiplier: ``double(s_in) * double(s_w) / double(s_out)``, then
    :func:`quantize_multiplier`.

    The product is taken in double, as for conv. (TFLite's ``GetQuantizedConvolutionMultipler`` reads as
    a float32 product, but the tflite-micro wheel behaves as double: probe models where the two give
    different multipliers always follow the double product.)
    """
    return quantize_multiplier(_f32(input_scale) * _f32(weight_scale) / _f32(output_scale))


# ------------------------------------------------------------------------------ fixed-point core


def saturating_rounding_doubling_high_mul(a: Any, b: Any) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: the high 32 bits of ``2*a*b``, rounded.

    ``(a*b + nudge) / 2**31`` with C truncating division, ``nudge = 2**30`` if ``a*b >= 0`` else
    ``1 - 2**30``: ties round *up* (toward +inf: 0.5 -> 1, -0.5 -> 0, -1.5 -> -1), not away from zero;
    the one overflow case ``a == b == INT32_MIN`` gives INT32_MAX.
    """
    a, b = _i64(a), _i64(b)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    result = _trunc_div(ab + nudge, 1 << 31)
    return np.where((a == b) & (a == INT32_MIN), INT32_MAX, result)


def rounding_divide_by_pot(x: Any, exponent: Any) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` (0 <= exponent <= 31), ties away from zero.

    Arithmetic shift right, plus one when the discarded bits exceed half (``mask >> 1``), where for
    negative ``x`` the threshold is one higher so that exact halves go down (away from zero).
    """
    x, exponent = _i64(x), _i64(exponent)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def saturating_rounding_multiply_by_pot(x: Any, exponent: int) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT<exponent>``: a saturating left shift for exponent > 0,
    :func:`rounding_divide_by_pot` for exponent < 0."""
    x = _i64(x)
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    if exponent == 0:
        return x
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def multiply_by_quantized_multiplier(x: Any, multiplier: Any, shift: Any) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier``, the double-rounding form that TFLM uses.

    ``RoundingDivideByPOT(SRDHM(x * 2**max(shift, 0), multiplier), max(-shift, 0))``: the doubling high
    multiply rounds once to an integer (ties up), the right shift rounds again (ties away from zero).
    ``multiplier``/``shift`` may be per-channel arrays broadcasting against ``x``.
    """
    shift = _i64(shift)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(_wrap_int32(_i64(x) << left), multiplier), right
    )


def multiply_by_quantized_multiplier_single_rounding(x: Any, multiplier: Any, shift: Any) -> np.ndarray:
    """The ``TFLITE_SINGLE_ROUNDING`` variant: ``(x * multiplier + 2**(30 - shift)) >> (31 - shift)``,
    saturated to int32 (one round, ties up). The tflite-micro interpreter does *not* use it; it is here to
    show the difference."""
    total = 31 - _i64(shift)
    result = (_i64(x) * _i64(multiplier) + (np.int64(1) << (total - 1))) >> total
    return np.clip(result, INT32_MIN, INT32_MAX)


def multiply_by_quantized_multiplier_greater_than_one(x: Any, multiplier: int, left_shift: int) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplierGreaterThanOne``: ``SRDHM(x * 2**left_shift, multiplier)``."""
    return saturating_rounding_doubling_high_mul(_wrap_int32(_i64(x) << left_shift), multiplier)


def activation_range(activation: str, output_scale: float, output_zero_point: int) -> tuple[int, int]:
    """TFLite ``CalculateActivationRangeQuantized`` for an int8 output.

    ``quantize(f) = zero_point + round(f / scale)`` with the division in *float32* and ``std::round``
    (half away from zero); RELU gives [max(-128, q(0)), 127], RELU6 [max(-128, q(0)), min(127, q(6))],
    RELU_N1_TO_1 [max(-128, q(-1)), min(127, q(1))], NONE [-128, 127].
    """
    scale = np.float32(output_scale)

    def quantize(f: float) -> int:
        return output_zero_point + _round_half_away(float(np.float32(f) / scale))

    if activation == "NONE":
        return INT8_MIN, INT8_MAX
    if activation == "RELU":
        return max(INT8_MIN, quantize(0.0)), INT8_MAX
    if activation == "RELU6":
        return max(INT8_MIN, quantize(0.0)), min(INT8_MAX, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(INT8_MIN, quantize(-1.0)), min(INT8_MAX, quantize(1.0))
    raise ValueError(f"unsupported fused activation {activation}")


def _requantize(
    acc: np.ndarray, multiplier: Any, shift: Any, zero_point: int, lo: int, hi: int
) -> np.ndarray:
    """Shared conv/FC epilogue: double-rounding multiply, add the output zero point, clamp, to int8."""
    out = multiply_by_quantized_multiplier(_wrap_int32(acc), multiplier, shift) + zero_point
    return np.clip(out, lo, hi).astype(np.int8)


# ------------------------------------------------------------------------------------ windowing


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def compute_padding(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """TFLite ``ComputeOutSize`` and ``ComputePaddingWithOffset``: (output size, padding before).

    SAME: out = ceil(size / stride); VALID: out = (size - effective_kernel + stride) // stride. The total
    padding ``(out - 1) * stride + effective_kernel - size`` (>= 0) is split with the odd element *after*;
    kernels skip out-of-bounds taps rather than read padding.
    """
    effective = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = (size + stride - 1) // stride
    elif padding == "VALID":
        out = (size + stride - effective) // stride
    else:
        raise ValueError(f"unknown padding {padding}")
    return out, max((out - 1) * stride + effective - size, 0) // 2


def _taps(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: str,
    fill: int,
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The (oh, ow) input slice under each kernel tap (row-major over the kernel); out of bounds: ``fill``."""
    _, h, w, _ = x.shape
    oh, pad_top = compute_padding(h, kernel[0], stride[0], dilation[0], padding)
    ow, pad_left = compute_padding(w, kernel[1], stride[1], dilation[1], padding)
    bottom = max((oh - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1 - h - pad_top, 0)
    right = max((ow - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1 - w - pad_left, 0)
    xp = np.pad(x, ((0, 0), (pad_top, bottom), (pad_left, right), (0, 0)), constant_values=fill)
    taps = []
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilation[0], kx * dilation[1]
            taps.append(
                xp[
                    :,
                    y0 : y0 + (oh - 1) * stride[0] + 1 : stride[0],
                    x0 : x0 + (ow - 1) * stride[1] + 1 : stride[1],
                ]
            )
    return taps, (oh, ow)


# ------------------------------------------------------------------------------------------ ops


def conv2d(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray | None,
    *,
    input_scale: float,
    input_zero_point: int,
    weight_scales: Sequence[float] | np.ndarray,
    output_scale: float,
    output_zero_point: int,
    stride: int | Sequence[int] = 1,
    padding: str = "SAME",
    dilation: int | Sequence[int] = 1,
    activation: str = "NONE",
) -> np.ndarray:
    """CONV_2D int8 per-channel (TFLM ``reference_integer_ops::ConvPerChannel``).

    ``x`` [N, H, W, Cin] int8, ``weights`` [O, KH, KW, Cin] int8 symmetric, ``bias`` [O] int32 or None,
    ``weight_scales`` one per output channel (or one, broadcast). int32 accumulator
    ``sum(w * (x - zp_in))`` over in-bounds taps (padding contributes 0), plus bias, then
    :func:`multiply_by_quantized_multiplier` with :func:`per_channel_multipliers`, plus ``zp_out``,
    clamped to :func:`activation_range`.
    """
    weights = _i64(weights)
    out_channels = weights.shape[0]
    scales = np.broadcast_to(np.asarray(weight_scales, np.float32), (out_channels,))
    multiplier, shift = per_channel_multipliers(input_scale, scales, output_scale)
    taps, (oh, ow) = _taps(
        _i64(x) - input_zero_point, weights.shape[1:3], _pair(stride), _pair(dilation), padding, 0
    )
    acc = np.zeros((x.shape[0], oh, ow, out_channels), np.int64)
    kw = weights.shape[2]
    for i, tap in enumerate(taps):
        acc += tap @ weights[:, i // kw, i % kw, :].T
    if bias is not None:
        acc = _wrap_int32(acc) + _i64(bias)
    return _requantize(
        acc,
        multiplier,
        shift,
        output_zero_point,
        *activation_range(activation, output_scale, output_zero_point),
    )


def depthwise_conv2d(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray | None,
    *,
    input_scale: float,
    input_zero_point: int,
    weight_scales: Sequence[float] | np.ndarray,
    output_scale: float,
    output_zero_point: int,
    depth_multiplier: int = 1,
    stride: int | Sequence[int] = 1,
    padding: str = "SAME",
    dilation: int | Sequence[int] = 1,
    activation: str = "NONE",
) -> np.ndarray:
    """DEPTHWISE_CONV_2D int8 per-channel (TFLM ``reference_integer_ops::DepthwiseConvPerChannel``).

    ``weights`` [1, KH, KW, Cin * M]; output channel ``c * M + m`` reads input channel ``c``. Same
    accumulation, multipliers (per output channel) and rounding as :func:`conv2d`.
    """
    weights = _i64(weights)
    out_channels = weights.shape[3]
    assert out_channels == x.shape[3] * depth_multiplier, (weights.shape, x.shape, depth_multiplier)
    scales = np.broadcast_to(np.asarray(weight_scales, np.float32), (out_channels,))
    multiplier, shift = per_channel_multipliers(input_scale, scales, output_scale)
    xs = np.repeat(_i64(x) - input_zero_point, depth_multiplier, axis=3)
    taps, (oh, ow) = _taps(xs, weights.shape[1:3], _pair(stride), _pair(dilation), padding, 0)
    acc = np.zeros((x.shape[0], oh, ow, out_channels), np.int64)
    kw = weights.shape[2]
    for i, tap in enumerate(taps):
        acc += tap * weights[0, i // kw, i % kw, :]
    if bias is not None:
        acc = _wrap_int32(acc) + _i64(bias)
    return _requantize(
        acc,
        multiplier,
        shift,
        output_zero_point,
        *activation_range(activation, output_scale, output_zero_point),
    )


def fully_connected(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray | None,
    *,
    input_scale: float,
    input_zero_point: int,
    weight_scale: float,
    output_scale: float,
    output_zero_point: int,
    weight_zero_point: int = 0,
    activation: str = "NONE",
) -> np.ndarray:
    """FULLY_CONNECTED int8, per-tensor weights (TFLM ``reference_integer_ops::FullyConnected``).

    ``x`` [..., I] (flattened to rows of I), ``weights`` [O, I]:
    ``acc = sum((w - zp_w) * (x - zp_in)) + bias``, then :func:`multiply_by_quantized_multiplier` with
    :func:`fully_connected_multiplier`, plus ``zp_out``, clamped to :func:`activation_range`.
    Output [rows, O].
    """
    weights = _i64(weights)
    rows = (_i64(x) - input_zero_point).reshape(-1, weights.shape[1])
    acc = rows @ (weights - weight_zero_point).T
    if bias is not None:
        acc = _wrap_int32(acc) + _i64(bias)
    multiplier, shift = fully_connected_multiplier(input_scale, weight_scale, output_scale)
    return _requantize(
        acc,
        multiplier,
        shift,
        output_zero_point,
        *activation_range(activation, output_scale, output_zero_point),
    )


def average_pool2d(
    x: np.ndarray,
    *,
    filter_size: int | Sequence[int],
    stride: int | Sequence[int],
    padding: str,
    scale: float,
    zero_point: int,
    activation: str = "NONE",
) -> np.ndarray:
    """AVERAGE_POOL_2D int8 (TFLM ``reference_integer_ops::AveragePool``); input and output share
    ``scale``/``zero_point`` (used only for the activation range).

    Per window: the int32 sum of the in-bounds elements and their count ``n`` (border windows of SAME
    padding hold fewer); ``avg = (sum + n/2) / n`` if ``sum > 0`` else ``(sum - n/2) / n``, with C
    truncating division and ``n/2`` floored: round half away from zero. Then clamp to the activation range.
    """
    xs = _i64(x)
    taps, _ = _taps(xs, _pair(filter_size), _pair(stride), (1, 1), padding, 0)
    ones, _ = _taps(np.ones_like(xs[..., :1]), _pair(filter_size), _pair(stride), (1, 1), padding, 0)
    total, count = sum(taps), sum(ones)
    half = count // 2
    avg = np.where(total > 0, _trunc_div(total + half, count), _trunc_div(total - half, count))
    return np.clip(avg, *activation_range(activation, scale, zero_point)).astype(np.int8)


def max_pool2d(
    x: np.ndarray,
    *,
    filter_size: int | Sequence[int],
    stride: int | Sequence[int],
    padding: str,
    scale: float,
    zero_point: int,
    activation: str = "NONE",
) -> np.ndarray:
    """MAX_POOL_2D int8 (TFLM ``reference_integer_ops::MaxPool``): the maximum over the in-bounds
    elements, clamped to the activation range (input and output share ``scale``/``zero_point``)."""
    taps, _ = _taps(_i64(x), _pair(filter_size), _pair(stride), (1, 1), padding, INT32_MIN)
    return np.clip(np.maximum.reduce(taps), *activation_range(activation, scale, zero_point)).astype(np.int8)


def add_params(
    input1_scale: float, input2_scale: float, output_scale: float
) -> tuple[int, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """ADD int8 set-up (TFLM ``CalculateOpDataAdd``): left_shift, then (multiplier, shift) of each input and
    of the output.

    ``left_shift = 20``; ``twice_max = 2 * double(max(s1, s2))``; input multipliers ``s_i / twice_max``
    (<= 0.5) and output multiplier ``twice_max / (2**20 * s_out)``, each through
    :func:`quantize_multiplier_smaller_than_one_exp`.
    """
    left_shift = 20
    s1, s2, s_out = _f32(input1_scale), _f32(input2_scale), _f32(output_scale)
    twice_max = 2.0 * max(s1, s2)
    return (
        left_shift,
        quantize_multiplier_smaller_than_one_exp(s1 / twice_max),
        quantize_multiplier_smaller_than_one_exp(s2 / twice_max),
        quantize_multiplier_smaller_than_one_exp(twice_max / ((1 << left_shift) * s_out)),
    )


def add(
    x1: np.ndarray,
    x2: np.ndarray,
    *,
    input1_scale: float,
    input1_zero_point: int,
    input2_scale: float,
    input2_zero_point: int,
    output_scale: float,
    output_zero_point: int,
    activation: str = "NONE",
) -> np.ndarray:
    """ADD int8 (TFLM ``reference_integer_ops::Add``; numpy broadcasting for broadcast shapes).

    Each input: ``(x - zp) * 2**20``, then ``RoundingDivideByPOT(SRDHM(., m_i), -shift_i)``; the int32 sum
    goes through the same with the output multiplier, plus ``zp_out``, clamped to the activation range.
    Multipliers from :func:`add_params`.
    """
    left_shift, (m1, sh1), (m2, sh2), (mo, sho) = add_params(input1_scale, input2_scale, output_scale)
    a = multiply_by_quantized_multiplier(_wrap_int32((_i64(x1) - input1_zero_point) << left_shift), m1, sh1)
    b = multiply_by_quantized_multiplier(_wrap_int32((_i64(x2) - input2_zero_point) << left_shift), m2, sh2)
    out = multiply_by_quantized_multiplier(_wrap_int32(a + b), mo, sho) + output_zero_point
    return np.clip(out, *activation_range(activation, output_scale, output_zero_point)).astype(np.int8)


# -------------------------------------------------------------------------------------- softmax

SOFTMAX_SCALED_DIFF_INTEGER_BITS = 5
SOFTMAX_ACCUMULATION_INTEGER_BITS = 12
# exp(-2**k) for k = -2..4 in Q0.31, the barrel-shifter constants of gemmlowp's exp_on_negative_values.
_EXP_BARREL = (
    (-2, 1672461947),
    (-1, 1302514674),
    (0, 790015084),
    (1, 290630308),
    (2, 39332535),
    (3, 720401),
    (4, 242),
)
_EXP_MINUS_ONE_EIGHTH = 1895147668  # exp(-1/8) in Q0.31
_ONE_THIRD = 715827883  # 1/3 in Q0.31
_48_OVER_17, _MINUS_32_OVER_17 = 1515870810, -1010580540  # in Q2.29


def softmax_params(beta: float, input_scale: float) -> tuple[int, int, int]:
    """Softmax int8 set-up (TFLite ``PreprocessSoftmaxScaling`` + ``CalculateInputRadius``, 5 integer bits).

    ``real = min(double(beta) * double(s_in) * 2**26, 2**31 - 1)`` -> (multiplier, left_shift) via
    :func:`quantize_multiplier_greater_than_one`; ``diff_min = -floor(31 * 2**26 / 2**left_shift)``.
    Returns (multiplier, left_shift, diff_min).
    """
    bits = SOFTMAX_SCALED_DIFF_INTEGER_BITS
    real = min(_f32(beta) * _f32(input_scale) * float(1 << (31 - bits)), float(2**31 - 1))
    multiplier, left_shift = quantize_multiplier_greater_than_one(real)
    radius = math.floor(1.0 * ((1 << bits) - 1) * float(1 << (31 - bits)) / float(1 << left_shift))
    return multiplier, left_shift, -radius


def exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    """gemmlowp: exp(a) for Q0.31 ``a`` in [-1/4, 0): 4th-order Taylor series around -1/8 in Q0.31.

    ``x = a + 1/8``; ``exp(-1/8) * (1 + x + x2/2 + x3/6 + x4/24)`` with every product an SRDHM and the
    divisions by 4 and 2 :func:`rounding_divide_by_pot`.
    """
    srdhm = saturating_rounding_doubling_high_mul
    x = _i64(a) + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(srdhm(x4_over_4 + x3, _ONE_THIRD) + x2, 1)
    return _EXP_MINUS_ONE_EIGHTH + srdhm(_EXP_MINUS_ONE_EIGHTH, x + poly)


def exp_on_negative_values(a: np.ndarray, integer_bits: int = SOFTMAX_SCALED_DIFF_INTEGER_BITS) -> np.ndarray:
    """gemmlowp ``exp_on_negative_values``: exp of a Q(integer_bits) value <= 0, result in Q0.31.

    ``a mod 1/4 - 1/4`` goes through the Taylor polynomial; each set bit k of the remainder (weights
    1/4 .. 16) multiplies by the constant exp(-2**k) (SRDHM); ``a == 0`` gives INT32_MAX (1.0).
    """
    a = _i64(a)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, integer_bits)
    )
    remainder = a_mod_quarter_minus_one_quarter - a
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = (remainder & (1 << (fractional_bits + exponent))) != 0
            result = np.where(bit, saturating_rounding_doubling_high_mul(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    """gemmlowp: 1 / (1 + a) for Q0.31 ``a`` in [0, 1), in Q0.31.

    ``d = RoundingHalfSum(a, 1)`` (= (1 + a) / 2, (sum +- 1) / 2 truncated); three Newton-Raphson steps
    on ``x`` in Q2.29 from ``48/17 - 32/17 * d``: ``x += Rescale<2>(x * (1 - d * x))``; the result is
    ``x / 2`` read as Q1.30 and saturating-shifted to Q0.31.
    """
    srdhm = saturating_rounding_doubling_high_mul
    total = _i64(a) + INT32_MAX
    half_denominator = _trunc_div(total + np.where(total >= 0, 1, -1), 2)  # RoundingHalfSum(a, 1.0)
    x = _48_OVER_17 + srdhm(half_denominator, _MINUS_32_OVER_17)
    for _ in range(3):
        one_minus = (1 << 29) - srdhm(half_denominator, x)
        x = x + saturating_rounding_multiply_by_pot(srdhm(x, one_minus), 2)
    return saturating_rounding_multiply_by_pot(x, 1)


def get_reciprocal(x: np.ndarray, integer_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``GetReciprocal``: for ``x`` > 0 in Q(integer_bits), (scale in Q0.31, num_bits_over_unit)
    with ``1/x = scale * 2**-num_bits_over_unit``.

    ``clz`` = leading zeros of ``x`` as uint32; ``num_bits_over_unit = integer_bits - clz``;
    ``scale = one_over_one_plus_x((x << clz) - 2**31)``.
    """
    x = _i64(x)
    bit_length = np.zeros_like(x)
    for k in range(32):
        bit_length += x >= (np.int64(1) << k)
    clz = 32 - bit_length
    return one_over_one_plus_x_for_x_in_0_1((x << clz) - (1 << 31)), integer_bits - clz


def softmax(x: np.ndarray, *, input_scale: float, beta: float = 1.0) -> np.ndarray:
    """SOFTMAX int8 -> int8 over the last axis (TFLM ``reference_ops::Softmax``, gemmlowp fixed point).

    The output is fixed at scale 1/256, zero point -128. Per row: ``diff = x - max``; entries with
    ``diff < diff_min`` output -128 and are left out of the sum. Else ``diff * 2**left_shift`` SRDHM
    ``multiplier`` (Q5.26) -> :func:`exp_on_negative_values` (Q0.31); the exps are summed in Q12.19
    (each :func:`rounding_divide_by_pot` by 2**12); :func:`get_reciprocal` of the sum gives (scale, n);
    ``out = RoundingDivideByPOT(SRDHM(scale, exp), n + 31 - 8) - 128``, clamped to [-128, 127].
    """
    multiplier, left_shift, diff_min = softmax_params(beta, input_scale)
    xs = _i64(x)
    diff = xs - xs.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    rescaled = multiply_by_quantized_multiplier_greater_than_one(
        np.where(valid, diff, 0), multiplier, left_shift
    )
    exps = exp_on_negative_values(rescaled)
    sum_of_exps = np.where(valid, rounding_divide_by_pot(exps, SOFTMAX_ACCUMULATION_INTEGER_BITS), 0).sum(
        axis=-1, keepdims=True
    )
    scale, bits_over_unit = get_reciprocal(sum_of_exps, SOFTMAX_ACCUMULATION_INTEGER_BITS)
    unsat = rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(scale, exps), bits_over_unit + 31 - 8
    )
    return np.where(valid, np.clip(unsat - 128, INT8_MIN, INT8_MAX), INT8_MIN).astype(np.int8)


# ------------------------------------------------------------------------------- data movement


def mean_params(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """MEAN int8 set-up (TFLM ``QuantizedMeanOrSum`` with compute_sum false): (multiplier, shift).

    ``(m, s) = quantize_multiplier(double(s_in) / double(s_out))``; the 1/count factor is folded into the
    multiplier with ``k = min(floor(log2(count)), 32, 31 + s)``: ``m' = (m << k) // count`` (int64, so
    ``m'`` is truncated and no longer normalised) and ``s' = s - k``.
    """
    multiplier, shift = quantize_multiplier(_f32(input_scale) / _f32(output_scale))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << k) // count, shift - k


def mean(
    x: np.ndarray,
    *,
    axes: Sequence[int],
    keep_dims: bool,
    input_scale: float,
    input_zero_point: int,
    output_scale: float,
    output_zero_point: int,
) -> np.ndarray:
    """MEAN int8 over ``axes`` (TFLM ``reference_ops::QuantizedMeanOrSum``, compute_sum false).

    Per output: ``acc = sum(x) - zp_in * count`` (int32), then one :func:`multiply_by_quantized_multiplier`
    (double rounding) with the count-folded multiplier of :func:`mean_params`, plus ``zp_out``, clamped to
    int8. The SRDHM result is in units of ``2**s'`` output steps (1/4 for the zoo's mean_hw), and rounding
    that coarse value again is sometimes one off a correctly rounded mean (TFLM has the same results).
    """
    axes = tuple(sorted({int(a) % x.ndim for a in axes}))
    count = int(np.prod([x.shape[a] for a in axes]))
    multiplier, shift = mean_params(input_scale, output_scale, count)
    acc = _wrap_int32(_i64(x).sum(axis=axes, keepdims=keep_dims) - input_zero_point * count)
    out = multiply_by_quantized_multiplier(acc, multiplier, shift) + output_zero_point
    return np.clip(out, INT8_MIN, INT8_MAX).astype(np.int8)


def concatenation(xs: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """CONCATENATION int8 when every input shares the output's scale and zero point: a plain copy."""
    return np.concatenate([np.asarray(x, np.int8) for x in xs], axis=axis)


def reshape(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """RESHAPE: the same bytes (and quantisation) under a new shape."""
    return np.asarray(x, np.int8).reshape(tuple(shape))


# ------------------------------------------------------------------------------ model reading

_OPCODE_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
_ACTIVATION_NAMES = {v: k for k, v in vars(fb.ActivationFunctionType).items() if not k.startswith("_")}
_PADDING_NAMES = {fb.Padding.SAME: "SAME", fb.Padding.VALID: "VALID"}
_DTYPES: dict[int, np.dtype] = {
    fb.TensorType.INT8: np.dtype(np.int8),
    fb.TensorType.INT32: np.dtype(np.int32),
    fb.TensorType.INT64: np.dtype(np.int64),
    fb.TensorType.FLOAT32: np.dtype(np.float32),
}


@dataclass(frozen=True)
class QuantTensor:
    """One tensor of a model: shape, type, quantisation (float32 scales, zero points, axis), constant data."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int
    data: np.ndarray | None

    @property
    def scale(self) -> float:
        """The per-tensor scale (first of ``scales``)."""
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0])


@dataclass(frozen=True)
class QuantOperator:
    """One operator: builtin name ("CONV_2D", ...), its options object (schema object API) and tensors."""

    index: int
    opcode: str
    options: Any
    inputs: tuple[QuantTensor, ...]
    outputs: tuple[QuantTensor, ...]

    @property
    def activation(self) -> str:
        """The fused activation's name, "NONE" when the options have none."""
        return _ACTIVATION_NAMES[getattr(self.options, "fusedActivationFunction", 0)]


@dataclass(frozen=True)
class QuantGraph:
    """The first subgraph: all tensors, the operators in execution order, graph input/output tensor ids."""

    tensors: tuple[QuantTensor, ...]
    operators: tuple[QuantOperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_graph(model: bytes) -> QuantGraph:
    """Parse a .tflite flatbuffer (e.g. from ``tests.zoo.tflite_int8``) into a :class:`QuantGraph`."""
    m = fb.ModelT.InitFromPackedBuf(model, 0)
    sg = m.subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tensors):
        dtype = _DTYPES[t.type]
        q = t.quantization
        has_q = q is not None and q.scale is not None and len(q.scale) > 0
        scales = np.asarray(q.scale if has_q else [0.0], np.float32)
        zero_points = np.asarray(q.zeroPoint if has_q else [0], np.int64)
        shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
        buf = m.buffers[t.buffer].data if t.buffer < len(m.buffers) else None
        data = None
        if buf is not None and len(buf) > 0:
            data = np.frombuffer(np.asarray(buf, np.uint8).tobytes(), dtype).reshape(shape)
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        tensors.append(
            QuantTensor(
                i, name, shape, dtype, scales, zero_points, int(q.quantizedDimension if q else 0), data
            )
        )
    operators = []
    for i, o in enumerate(sg.operators):
        code = m.operatorCodes[o.opcodeIndex]
        opcode = _OPCODE_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]
        ins = tuple(tensors[j] for j in o.inputs if j >= 0)
        outs = tuple(tensors[j] for j in o.outputs)
        operators.append(QuantOperator(i, opcode, o.builtinOptions, ins, outs))
    return QuantGraph(tuple(tensors), tuple(operators), tuple(sg.inputs), tuple(sg.outputs))


def constant_data(tensor: QuantTensor) -> np.ndarray:
    """The data of a constant tensor (weights, bias, shape, axes); raises for an activation."""
    if tensor.data is None:
        raise ValueError(f"tensor {tensor.name} is not a constant")
    return tensor.data


def _conv_like(op: QuantOperator, x: np.ndarray, depthwise: bool) -> np.ndarray:
    o, (_, w, *rest), out = op.options, op.inputs, op.outputs[0]
    bias = constant_data(rest[0]) if rest else None
    kwargs: dict[str, Any] = {
        "input_scale": op.inputs[0].scale,
        "input_zero_point": op.inputs[0].zero_point,
        "weight_scales": w.scales,
        "output_scale": out.scale,
        "output_zero_point": out.zero_point,
        "stride": (o.strideH, o.strideW),
        "padding": _PADDING_NAMES[o.padding],
        "dilation": (o.dilationHFactor, o.dilationWFactor),
        "activation": op.activation,
    }
    if depthwise:
        return depthwise_conv2d(
            x, constant_data(w), bias, depth_multiplier=w.shape[3] // x.shape[3], **kwargs
        )
    return conv2d(x, constant_data(w), bias, **kwargs)


def _pool(op: QuantOperator, x: np.ndarray, fn: Callable[..., np.ndarray]) -> np.ndarray:
    o = op.options
    return fn(
        x,
        filter_size=(o.filterHeight, o.filterWidth),
        stride=(o.strideH, o.strideW),
        padding=_PADDING_NAMES[o.padding],
        scale=op.outputs[0].scale,
        zero_point=op.outputs[0].zero_point,
        activation=op.activation,
    )


def apply_operator(op: QuantOperator, activations: Sequence[np.ndarray]) -> np.ndarray:
    """Run ``op`` on its non-constant inputs (in input order) with the per-op function above; returns the
    int8 output, shaped as the model's output tensor."""
    ins, out = op.inputs, op.outputs[0]
    x = activations[0]
    if op.opcode == "CONV_2D":
        y = _conv_like(op, x, depthwise=False)
    elif op.opcode == "DEPTHWISE_CONV_2D":
        y = _conv_like(op, x, depthwise=True)
    elif op.opcode == "FULLY_CONNECTED":
        w = ins[1]
        y = fully_connected(
            x,
            constant_data(w),
            constant_data(ins[2]) if len(ins) > 2 else None,
            input_scale=ins[0].scale,
            input_zero_point=ins[0].zero_point,
            weight_scale=w.scale,
            weight_zero_point=w.zero_point,
            output_scale=out.scale,
            output_zero_point=out.zero_point,
            activation=op.activation,
        )
    elif op.opcode == "AVERAGE_POOL_2D":
        y = _pool(op, x, average_pool2d)
    elif op.opcode == "MAX_POOL_2D":
        y = _pool(op, x, max_pool2d)
    elif op.opcode == "ADD":
        y = add(
            x,
            activations[1],
            input1_scale=ins[0].scale,
            input1_zero_point=ins[0].zero_point,
            input2_scale=ins[1].scale,
            input2_zero_point=ins[1].zero_point,
            output_scale=out.scale,
            output_zero_point=out.zero_point,
            activation=op.activation,
        )
    elif op.opcode == "SOFTMAX":
        y = softmax(x, input_scale=ins[0].scale, beta=op.options.beta)
    elif op.opcode == "MEAN":
        y = mean(
            x,
            axes=constant_data(ins[1]).ravel().tolist(),
            keep_dims=bool(op.options.keepDims),
            input_scale=ins[0].scale,
            input_zero_point=ins[0].zero_point,
            output_scale=out.scale,
            output_zero_point=out.zero_point,
        )
    elif op.opcode == "CONCATENATION":
        y = concatenation(activations, op.options.axis % x.ndim)
    elif op.opcode == "RESHAPE":
        y = reshape(x, out.shape)
    else:
        raise NotImplementedError(f"no int8 reference for {op.opcode}")
    return y.reshape(out.shape)
