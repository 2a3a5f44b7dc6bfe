"""TFLite's (gemmlowp's) fixed-point helpers for the integer kernels.

They are ``static inline`` C functions in a header the generated library ships
(:data:`HEADER_NAME`, text :data:`HEADER_TEXT`); TIR calls them through ``call_extern``. As calls they
stay opaque to TVM's arithmetic analysers, which would otherwise substitute the long let-chains of these
computations into each other (exponential time), and the C compiler inlines them.
For TVM's own backends (``tvm.compile``), which lack the header, the TIR pass InlineFixedPoint
replaces the calls with the same arithmetic, late in TVM's TIR pipeline.

Every function is exactly TFLite's arithmetic, including the rounding and C's truncating division.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import tirx

Expr = Any  # a TIR PrimExpr

HEADER_NAME = "tvmmcu_fixed_point.h"
# Functions of the header, so codegen can tell whether a library needs it.
HELPER_PREFIX = "tvmmcu_fp_"

HEADER_TEXT = """\
/* TFLite's fixed-point arithmetic (gemmlowp), as used by TFLite Micro's int8 reference kernels.
 * Rounding matches TFLite bit for bit: SaturatingRoundingDoublingHighMul rounds ties up (C truncating
 * division of the nudged product), RoundingDivideByPOT rounds ties away from zero. */
#ifndef TVMMCU_FIXED_POINT_H
#define TVMMCU_FIXED_POINT_H

#include <stdint.h>

/* SaturatingRoundingDoublingHighMul: the high 32 bits of 2*a*b. */
static inline int32_t tvmmcu_fp_srdhm(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) {
    return INT32_MAX;
  }
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* x saturated to int8 (s8) or uint8 (u8): one SSAT/USAT on Armv7-M and Armv8-M mainline. */
static inline int32_t tvmmcu_fp_sat_s8(int32_t x) {
#if defined(__ARM_FEATURE_SAT)
  int32_t r;
  __asm__("ssat %0, #8, %1" : "=r"(r) : "r"(x));
  return r;
#else
  return x < -128 ? -128 : (x > 127 ? 127 : x);
#endif
}

static inline int32_t tvmmcu_fp_sat_u8(int32_t x) {
#if defined(__ARM_FEATURE_SAT)
  int32_t r;
  __asm__("usat %0, #8, %1" : "=r"(r) : "r"(x));
  return r;
#else
  return x < 0 ? 0 : (x > 255 ? 255 : x);
#endif
}

/* RoundingDivideByPOT: x / 2**exponent, ties away from zero (exponent in 0..31). */
static inline int32_t tvmmcu_fp_rdbpot(int32_t x, int32_t exponent) {
  int32_t mask = (int32_t)((((uint32_t)1) << exponent) - 1u);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier: x * multiplier * 2**(shift - 31), TFLite's double rounding. */
static inline int32_t tvmmcu_fp_mbqm(int32_t x, int32_t multiplier, int32_t shift) {
  int32_t left = shift > 0 ? shift : 0;
  int32_t right = shift > 0 ? 0 : -shift;
  int32_t shifted = (int32_t)((uint32_t)x << left);
  return tvmmcu_fp_rdbpot(tvmmcu_fp_srdhm(shifted, multiplier), right);
}

/* tvmmcu_fp_mbqm for |x| * 2**(max(shift, 0) + 1) < 2**31, which the compiler proves for a layer from
 * its weights, bias and input range before it calls this: SaturatingRoundingDoublingHighMul(x', m) is
 * then floor((2x' * m + 2**31) / 2**32), one rounded high multiply (SMMULR with the DSP extension), and
 * RoundingDivideByPOT is (h + 2**(r-1) - (h < 0)) >> r (ties away from zero). Equal to tvmmcu_fp_mbqm
 * for every such x. */
static inline int32_t tvmmcu_fp_mbqm_bounded(int32_t x, int32_t multiplier, int32_t shift) {
  int32_t left = shift > 0 ? shift : 0;
  int32_t right = shift > 0 ? 0 : -shift;
  int32_t doubled = (int32_t)((uint32_t)x << (left + 1));
#if defined(__ARM_FEATURE_DSP)
  int32_t high;
  __asm__("smmulr %0, %1, %2" : "=r"(high) : "r"(doubled), "r"(multiplier));
#else
  int32_t high = (int32_t)(((int64_t)doubled * multiplier + ((int64_t)1 << 31)) >> 32);
#endif
  int32_t half = (int32_t)((1u << right) >> 1);
  return (high + half - ((high < 0) & (right != 0))) >> right;
}

/* tvmmcu_fp_mbqm_bounded where the shift is a right shift of r >= 1 bits, passed as rm1 = r - 1 =
 * -shift - 1 (0..30), which the compiler checks for every channel of the layer: no left shift to
 * decode, and RoundingDivideByPOT (h + 2**(r-1) - (h < 0)) >> r is ((h' >> (r-1)) + 1) >> 1 with
 * h' = h - (h < 0) = h + (h >> 31) (floor((floor(a / m) + 1) / 2) = floor((a + m) / 2m)): four
 * instructions after the multiply. Equal to tvmmcu_fp_mbqm for every such x. */
static inline int32_t tvmmcu_fp_mbqm_right(int32_t x, int32_t multiplier, int32_t rm1) {
  int32_t doubled = (int32_t)((uint32_t)x << 1);
#if defined(__ARM_FEATURE_DSP)
  int32_t high;
  __asm__("smmulr %0, %1, %2" : "=r"(high) : "r"(doubled), "r"(multiplier));
#else
  int32_t high = (int32_t)(((int64_t)doubled * multiplier + ((int64_t)1 << 31)) >> 32);
#endif
  return (((high + (high >> 31)) >> rm1) + 1) >> 1;
}

/* value / 2**total rounded half to even (ONNX QuantizeLinear's rounding), saturated to int32. */
static inline int32_t tvmmcu_fp_round_even(int64_t value, int32_t total) {
  int64_t q = value;
  if (total > 0) {
    q = value >> total; /* floor */
    int64_t remainder = value - q * ((int64_t)1 << total);
    int64_t half = (int64_t)1 << (total - 1);
    if (remainder > half || (remainder == half && (q & 1) != 0)) {
      q += 1;
    }
  }
  return q > INT32_MAX ? INT32_MAX : (q < INT32_MIN ? INT32_MIN : (int32_t)q);
}

/* tvmmcu_fp_round_even out of line: tvmmcu_fp_mbqm_even's uncommon case (a scale of 1/2 or more), called
 * from every requantisation site without a copy at each. */
#if defined(__GNUC__)
__attribute__((noinline, unused))
#endif
static int32_t tvmmcu_fp_round_even_call(int64_t value, int32_t total) {
  return tvmmcu_fp_round_even(value, total);
}

/* x * multiplier * 2**(shift - 31) with one rounding, half to even: the ONNX (float) semantics of a
 * requantisation, exact up to the multiplier's 31-bit precision. */
static inline int32_t tvmmcu_fp_mbqm_even(int32_t x, int32_t multiplier, int32_t shift) {
  const int64_t value = (int64_t)x * multiplier;
  const int32_t total = 31 - shift;
  if (total >= 32 && total <= 63) {
    /* The common case (a scale below 1/2) in 32-bit steps: floor(value / 2**total) is the high word
     * shifted right by t, and adding 2**(total - 1) - 1 plus that floor's lowest bit before the floor
     * rounds half to even (|value| <= 2**62: the sum does not overflow, the result fits int32). */
    const int32_t t = total - 32;
    const int32_t q = (int32_t)(value >> 32) >> t;
    const uint64_t bias = ((uint64_t)((uint32_t)1 << t) << 31) - 1u + (uint32_t)(q & 1);
    return (int32_t)((int64_t)((uint64_t)value + bias) >> 32) >> t;
  }
#if defined(__GNUC__)
  if (__builtin_constant_p(total) && total >= 1 && total <= 31) {
    /* A scale of 1/2 or more known when compiling (a concatenation's or an addition's rescale): inline,
     * the same bias before the floor in 64 bits (|value| <= 2**62: no overflow), then saturated. */
    const int64_t floor = value >> total;
    const int64_t q = (value + ((((int64_t)1) << (total - 1)) - 1 + (floor & 1))) >> total;
    return q > INT32_MAX ? INT32_MAX : (q < INT32_MIN ? INT32_MIN : (int32_t)q);
  }
#endif
  return tvmmcu_fp_round_even_call(value, total);
}

/* numerator / denominator (denominator > 0) rounded half to even. */
static inline int32_t tvmmcu_fp_div_round_even(int64_t numerator, int64_t denominator) {
  int64_t q = numerator / denominator;
  int64_t r = numerator - q * denominator;
  if (r < 0) { /* floor */
    q -= 1;
    r += denominator;
  }
  if (2 * r > denominator || (2 * r == denominator && (q & 1) != 0)) {
    q += 1;
  }
  return q > INT32_MAX ? INT32_MAX : (q < INT32_MIN ? INT32_MIN : (int32_t)q);
}

/* SaturatingRoundingMultiplyByPOT for a positive exponent: a saturating left shift. */
static inline int32_t tvmmcu_fp_saturating_lshift(int32_t x, int32_t exponent) {
  int32_t threshold = (int32_t)((((uint32_t)1) << (31 - exponent)) - 1u);
  if (x > threshold) {
    return INT32_MAX;
  }
  if (x < -threshold) {
    return INT32_MIN;
  }
  return (int32_t)((uint32_t)x << exponent);
}

/* Leading zero bits of x (32 for 0). */
static inline int32_t tvmmcu_fp_clz(int32_t x) {
  return x == 0 ? 32 : __builtin_clz((uint32_t)x);
}

/* one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) for a Q0.31 a in [0, 1), Newton-Raphson in Q2.29. */
static inline int32_t tvmmcu_fp_one_over_one_plus_x(int32_t a) {
  int64_t sum = (int64_t)a + INT32_MAX; /* RoundingHalfSum(a, One) */
  int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
  int32_t x = 1515870810 + tvmmcu_fp_srdhm(half_denominator, -1010580540); /* 48/17 - 32/17 * d */
  for (int i = 0; i < 3; i++) {
    int32_t one_minus_dx = (1 << 29) - tvmmcu_fp_srdhm(half_denominator, x);
    x = x + tvmmcu_fp_saturating_lshift(tvmmcu_fp_srdhm(x, one_minus_dx), 2);
  }
  return tvmmcu_fp_saturating_lshift(x, 1); /* Q2.29 read as Q1.30, rescaled to Q0.31 */
}

/* GetReciprocal(x, 12 integer bits): the Q0.31 scale of 1/x; *bits_over_unit gets the exponent. */
static inline int32_t tvmmcu_fp_reciprocal_scale(int32_t x) {
  int32_t headroom_plus_one = tvmmcu_fp_clz(x);
  int32_t shifted_minus_one = (int32_t)(((uint32_t)x << headroom_plus_one) - ((uint32_t)1 << 31));
  return tvmmcu_fp_one_over_one_plus_x(shifted_minus_one);
}

static inline int32_t tvmmcu_fp_reciprocal_bits(int32_t x) {
  return 12 - tvmmcu_fp_clz(x);
}

#endif /* TVMMCU_FIXED_POINT_H */
"""


def _call(name: str, *args: Any) -> Expr:
    return tirx.call_extern("int32", HELPER_PREFIX + name, *args)


def i32(e: Any) -> Expr:
    """``e`` as an int32 expression (TE tensor elements included)."""
    return e.astype("int32")


def srdhm(a: Expr, b: Expr | int) -> Expr:
    return _call("srdhm", i32(a), b if not isinstance(b, int) else tirx.const(b, "int32"))


def saturate(x: Expr, dtype: str) -> Expr | None:
    """``x`` (int32) saturated to the range of ``dtype`` (int8 or uint8: one SSAT/USAT), or None for
    other types."""
    name = {"int8": "sat_s8", "uint8": "sat_u8"}.get(dtype)
    return None if name is None else _call(name, i32(x))


def rdbpot(x: Expr, exponent: Expr | int) -> Expr:
    if isinstance(exponent, int):
        if exponent == 0:
            return x
        exponent = tirx.const(exponent, "int32")
    return _call("rdbpot", i32(x), exponent)


# Rounding modes of a requantisation: TFLite's double rounding (bit-exact with TFLite Micro) for TFLite
# models; one rounding, half to even, for ONNX QDQ models (QuantizeLinear's float semantics).
TFLITE = "tflite"
ONNX = "onnx"


def multiply_by_quantized_multiplier(
    x: Expr,
    multiplier: Expr | int,
    shift: Expr | int,
    rounding: str = TFLITE,
    *,
    bounded: bool = False,
    right: bool = False,
) -> Expr:
    """``x * multiplier * 2**(shift - 31)``, rounded as ``rounding`` says (TFLite's
    ``MultiplyByQuantizedMultiplier``, or one half-to-even rounding). ``bounded``: the caller proved
    ``|x| * 2**(max(shift, 0) + 1) < 2**31`` (:func:`fits_bounded`), so TFLite's rounding takes the short
    exact path. ``right`` (with ``bounded``): ``shift`` holds ``-shift - 1``, for a right shift of 1 to
    31 bits (:func:`right_shifts`), the shortest path."""
    m = tirx.const(multiplier, "int32") if isinstance(multiplier, int) else i32(multiplier)
    s = tirx.const(shift, "int32") if isinstance(shift, int) else i32(shift)
    if right and (rounding != TFLITE or not bounded):
        raise ValueError("the right-shift requantisation is TFLite's short path only")
    if rounding != TFLITE:
        return _call("mbqm_even", i32(x), m, s)
    if bounded and right:
        return _call("mbqm_right", i32(x), m, s)
    return _call("mbqm_bounded" if bounded else "mbqm", i32(x), m, s)


def right_shifts(shift: np.ndarray) -> bool:
    """Whether every shift is a right shift of 1 to 31 bits (``mbqm_right`` takes ``-shift - 1``)."""
    s = np.asarray(shift, np.int64)
    return bool(s.size and np.all((s <= -1) & (s >= -31)))


def fits_bounded(largest: np.ndarray, shift: np.ndarray) -> bool:
    """Whether values of magnitude at most ``largest`` (per channel) may take the short path of
    :func:`multiply_by_quantized_multiplier` with these shifts."""
    left = np.maximum(np.asarray(shift, np.int64), 0) + 1
    return bool(np.all(np.asarray(largest, np.int64) << left < 2**31))


def largest_product(largest: int, multiplier: int, shift: int) -> int:
    """A bound on ``|multiply_by_quantized_multiplier(x, multiplier, shift)|`` for ``|x| <= largest``
    (each of its two roundings moves the value by at most one)."""
    return -(-(largest * multiplier << max(shift, 0)) // (1 << (31 + max(-shift, 0)))) + 2


def div_round_even(numerator: Expr, denominator: Expr) -> Expr:
    """``numerator / denominator`` (int64, denominator > 0), rounded half to even."""
    return _call("div_round_even", numerator.astype("int64"), denominator.astype("int64"))


def round_even(value: Expr, total_shift: int) -> Expr:
    """``value / 2**total_shift`` (int64 value), rounded half to even."""
    return _call("round_even", value.astype("int64"), tirx.const(total_shift, "int32"))


def reciprocal_scale(x: Expr) -> Expr:
    return _call("reciprocal_scale", i32(x))


def reciprocal_bits(x: Expr) -> Expr:
    return _call("reciprocal_bits", i32(x))
