"""Compile-time quantisation parameters, computed exactly as TFLite / TFLite Micro compute them.

TFLite derives every integer parameter from float32 scales promoted to double; the rounding is
``std::round`` (half away from zero). Reproducing these to the bit is what makes the generated kernels
bit-exact with TFLite Micro.
"""

from __future__ import annotations

import math

import numpy as np


def round_half_away(x: float) -> int:
    """``std::round``: halves go away from zero (Python's round() goes to even)."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: ``real ~= m * 2**(shift - 31)`` with ``m`` in [2**30, 2**31).

    Returns ``(m, shift)``; ``shift`` > 0 is a left shift, < 0 a right shift.
    """
    if real == 0.0:
        return 0, 0
    frac, shift = math.frexp(real)
    q = round_half_away(frac * (1 << 31))
    assert q <= (1 << 31)
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return q, shift


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``quantize_multiplier``: int32 multipliers and int32 shifts."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


def effective_scale(input_scale: float, weight_scale: np.ndarray | float, output_scale: float) -> np.ndarray:
    """``double(s_in) * double(s_w) / double(s_out)`` from float32 scales, as TFLite's conv/FC prepare."""
    s_in = np.float64(np.float32(input_scale))
    s_w = np.asarray(weight_scale, dtype=np.float32).astype(np.float64)
    s_out = np.float64(np.float32(output_scale))
    return np.atleast_1d(s_in * s_w / s_out)


def activation_range(
    zero_point: int, scale: float, lo: float | None, hi: float | None, dtype: str = "int8"
) -> tuple[int, int]:
    """TFLite ``CalculateActivationRangeQuantized``: clamp bounds in the integer domain (int8 or uint8)
    for a float range."""
    tmin, tmax = (0, 255) if dtype == "uint8" else (-128, 127)
    qmin, qmax = tmin, tmax
    # TFLite divides in float32.
    s = np.float32(scale)
    # Bounds far outside the type's range (an unbounded side given as the largest float) clamp nothing.
    if lo is not None and abs(float(lo)) < 1e30:
        qmin = max(qmin, zero_point + round_half_away(float(np.float32(lo) / s)))
    if hi is not None and abs(float(hi)) < 1e30:
        qmax = min(qmax, zero_point + round_half_away(float(np.float32(hi) / s)))
    # A range outside the type saturates to its end (as QuantizeLinear of the clamped floats would).
    qmin, qmax = min(max(qmin, tmin), tmax), min(max(qmax, tmin), tmax)
    return qmin, max(qmin, qmax)


def add_params(s1: float, s2: float, s_out: float, left_shift: int = 20) -> dict[str, int]:
    """TFLite's int8 ADD parameters (``CalculateOpDataAdd``): inputs rescaled to twice the larger scale."""
    a, b, o = (float(np.float32(v)) for v in (s1, s2, s_out))
    twice_max = 2.0 * max(a, b)
    m1, sh1 = quantize_multiplier(a / twice_max)
    m2, sh2 = quantize_multiplier(b / twice_max)
    mo, sho = quantize_multiplier(twice_max / ((1 << left_shift) * o))
    return {"left_shift": left_shift, "m1": m1, "s1": sh1, "m2": m2, "s2": sh2, "mo": mo, "so": sho}


def add_params_even(s1: float, s2: float, s_out: float) -> dict[str, int] | None:
    """ONNX-semantics add: ``(a' * s1 + b' * s2) / s_out`` with one rounding. The two ratios are 31-bit
    multipliers aligned to a common exponent; None when their exponents are too far apart to align
    exactly in int64 (the caller falls back to TFLite's add)."""
    r1 = float(np.float64(np.float32(s1)) / np.float64(np.float32(s_out)))
    r2 = float(np.float64(np.float32(s2)) / np.float64(np.float32(s_out)))
    (ma, sa), (mb, sb) = quantize_multiplier(r1), quantize_multiplier(r2)
    lo = min(sa, sb)
    la, lb = sa - lo, sb - lo
    if max(la, lb) > 20 or 31 - lo > 62:
        return None
    return {"ma": ma, "la": la, "mb": mb, "lb": lb, "total_shift": 31 - lo}


# Softmax (TFLite's int8 kernel): the input difference to the row maximum is rescaled to a fixed-point
# number with this many integer bits before the exponential.
SOFTMAX_DIFF_INTEGER_BITS = 5


def softmax_params(beta: float, input_scale: float) -> tuple[int, int, int]:
    """``PreprocessSoftmaxScaling`` and ``CalculateInputRadius``: (multiplier, left_shift, diff_min)."""
    ib = SOFTMAX_DIFF_INTEGER_BITS
    real = min(float(beta) * float(np.float32(input_scale)) * (1 << (31 - ib)), float((1 << 31) - 1))
    m, shift = quantize_multiplier(real)
    assert shift >= 0, "softmax input multiplier must be >= 1"
    max_input_rescaled = 1.0 * ((1 << ib) - 1) * (1 << (31 - ib)) / (1 << shift)
    diff_min = -int(math.floor(max_input_rescaled))
    return m, shift, diff_min


# ----------------------------------------------------------------------------------- compile-time fixed point
# Python-int versions of gemmlowp's helpers, to tabulate softmax's exponential at compile time (its int8
# input difference to the row maximum takes only 256 values).
def _srdhm(a: int, b: int) -> int:
    ab = a * b
    nudged = ab + ((1 << 30) if ab >= 0 else (1 - (1 << 30)))
    return int(nudged / (1 << 31)) if nudged < 0 else nudged >> 31  # truncating division


def _rdbpot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def _exp_on_interval(a: int) -> int:
    x = a + (1 << 28)
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    poly = _rdbpot(_srdhm(_rdbpot(x4, 2) + x3, 715827883) + x2, 1)
    return 1895147668 + _srdhm(1895147668, x + poly)


def _exp_on_negative_values(a: int, integer_bits: int) -> int:
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    amq = (a & (one_quarter - 1)) - one_quarter
    shifted = max(-(1 << 31), min((1 << 31) - 1, amq << integer_bits))
    result = _exp_on_interval(shifted)
    remainder = amq - a
    for exponent, multiplier in (
        (-2, 1672461947),
        (-1, 1302514674),
        (0, 790015084),
        (1, 290630308),
        (2, 39332535),
        (3, 720401),
        (4, 242),
    ):
        if integer_bits > exponent and remainder & (1 << (fractional_bits + exponent)):
            result = _srdhm(result, multiplier)
    return (1 << 31) - 1 if a == 0 else result


def softmax_exp_table(multiplier: int, left_shift: int, diff_min: int) -> np.ndarray:
    """exp of the rescaled difference ``-d`` to the row maximum, d = 0..255, in Q0.31.

    Entries with ``-d < diff_min`` are 0 (TFLite leaves those terms out).
    """
    table = np.zeros(256, dtype=np.int32)
    for d in range(256):
        if -d >= diff_min:
            rescaled = _srdhm(-d * (1 << left_shift), multiplier)
            table[d] = _exp_on_negative_values(rescaled, SOFTMAX_DIFF_INTEGER_BITS)
    return table


def mean_params(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """TFLite Micro's int8 MEAN: the requantisation of ``sum(x) - zp * count``, with 1/count folded in.

    ``(m, s) = QuantizeMultiplier(s_in / s_out)``; then ``k = min(floor(log2 count), 32, 31 + s)`` and the
    multiplier becomes ``(m << k) // count`` (truncated) with shift ``s - k``.
    """
    m, s = quantize_multiplier(
        float(np.float64(np.float32(input_scale)) / np.float64(np.float32(output_scale)))
    )
    k = min(count.bit_length() - 1, 32, 31 + s)
    return (m << k) // count, s - k
