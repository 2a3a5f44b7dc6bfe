"""The integer dot-product micro-kernels the generated library ships, and the TIR calls to them.

They are ``static inline`` C functions in a header of the library (:data:`HEADER_NAME`, text
:data:`HEADER_TEXT`), like the fixed-point helpers; :class:`~tvm_mcu.passes.tir.use_dot_kernels.
UseDotKernels` replaces a convolution's or dense layer's innermost reduction loop with a call.

On a core with the DSP extension (``__ARM_FEATURE_DSP``: Cortex-M4, M7, M33 built with DSP) each word
of four int8 values is split by SXTB16 into two pairs of int16 (bytes 0 and 2; with ROR 8, bytes 1 and
3) and SMLAD adds both pairs' products to the accumulator: two multiply-accumulates per instruction,
four per pair of 32-bit loads. Elsewhere (Cortex-M3, the M33 of mps2-an521 built ``+nodsp``, the host
the tests run on) the same functions are plain C loops. Both are exact: the products and the sum are
the C loop's, wrapping modulo 2**32 like it. Loads go through ``memcpy`` of 4 bytes, which GCC emits as
one LDR: Armv7-M and Armv8-M mainline allow an unaligned LDR, so a slice of any channel offset works.
"""

from __future__ import annotations

from tvm_mcu.passes.tir.crumb_kernels import HEADER_TEXT as CRUMB_HEADER_TEXT
from tvm_mcu.passes.tir.float_kernels import HEADER_TEXT as FLOAT_HEADER_TEXT
from tvm_mcu.passes.tir.nibble_kernels import HEADER_TEXT as NIBBLE_HEADER_TEXT
from tvm_mcu.passes.tir.rice_kernels import HEADER_TEXT as RICE_HEADER_TEXT
from tvm_mcu.passes.tir.sparse_element_kernels import HEADER_TEXT as ELEMENT_HEADER_TEXT
from tvm_mcu.passes.tir.sparse_float_kernels import HEADER_TEXT as SPARSE_F32_HEADER_TEXT
from tvm_mcu.passes.tir.sparse_kernels import HEADER_TEXT as SPARSE_HEADER_TEXT

HEADER_NAME = "tvmmcu_dot.h"
# Functions of the header, so codegen can tell whether a library needs it.
HELPER_PREFIX = "tvmmcu_dot"
# The prefixes of every function the header defines (the sparse and Rice sections' too): a library calling
# any of them includes it.
HEADER_PREFIXES = (HELPER_PREFIX, "tvmmcu_sparse", "tvmmcu_esparse", "tvmmcu_rice")

# C function for (data dtype, weight dtype): acc + sum over k < n of x[k] * w[k].
DOT = {("int8", "int8"): "tvmmcu_dot_s8s8", ("uint8", "int8"): "tvmmcu_dot_u8s8"}
# acc + value * sum over k < n of w[k]: the taps of a window that lie in the padding.
SUM = {"int8": "tvmmcu_dot_sum_s8"}
# Four output channels at once, their weights ws apart, the data read once for all four:
# acc[j] += sum over k < n of x[k] * w[j * ws + k] (j < 4).
DOT4 = {("int8", "int8"): "tvmmcu_dot4_s8s8", ("uint8", "int8"): "tvmmcu_dot4_u8s8"}
SUM4 = {"int8": "tvmmcu_dot4_sum_s8"}
# Window kernels with at most this many taps are unrolled where their taps inside are known (the
# header's TVMMCU_DOT_WIN_UNROLL); SplitBorders makes them known only for such windows.
WINDOW_UNROLL_TAPS = 16
# C function for (data dtype, weight dtype): a 2-D window of strided taps, the padding's clipped off.
WINDOW = {("int8", "int8"): "tvmmcu_dot_win_s8s8", ("uint8", "int8"): "tvmmcu_dot_win_u8s8"}
# Four output channels with blocked weights (BlockWeights): every 8 values of the reduction, the four
# channels' 8 weights in turn; the stride argument gone.
DOT4B = {("int8", "int8"): "tvmmcu_dot4b_s8s8", ("uint8", "int8"): "tvmmcu_dot4b_u8s8"}
SUM4B = {"int8": "tvmmcu_dot4b_sum_s8"}
# A window of taps, each a run of n contiguous values (a convolution's input channels), in one call.
RUNS = {("int8", "int8"): "tvmmcu_dot_runs_s8s8", ("uint8", "int8"): "tvmmcu_dot_runs_u8s8"}
RUNS4 = {("int8", "int8"): "tvmmcu_dot4_runs_s8s8", ("uint8", "int8"): "tvmmcu_dot4_runs_u8s8"}
RUNS4B = {("int8", "int8"): "tvmmcu_dot4b_runs_s8s8", ("uint8", "int8"): "tvmmcu_dot4b_runs_u8s8"}
# The blocked kernels over weights pre-widened to halfwords (WidenWeights, ``--weights int16``).
DOT4H = {("int8", "int8"): "tvmmcu_dot4h_s8s16", ("uint8", "int8"): "tvmmcu_dot4h_u8s16"}
SUM4H = {"int8": "tvmmcu_dot4h_sum_s16"}
RUNS4H = {("int8", "int8"): "tvmmcu_dot4h_runs_s8s16", ("uint8", "int8"): "tvmmcu_dot4h_runs_u8s16"}
# The blocked kernels over int4 weights packed two per byte (PackWeights; nibble_kernels.py).
DOT4Q = {("int8", "int8"): "tvmmcu_dot4q_s8s4", ("uint8", "int8"): "tvmmcu_dot4q_u8s4"}
SUM4Q = {"int8": "tvmmcu_dot4q_sum_s4"}
RUNS4Q = {("int8", "int8"): "tvmmcu_dot4q_runs_s8s4", ("uint8", "int8"): "tvmmcu_dot4q_runs_u8s4"}
# The blocked kernels over int2 weights packed four per byte (PackWeights; crumb_kernels.py).
DOT4C = {("int8", "int8"): "tvmmcu_dot4c_s8s2", ("uint8", "int8"): "tvmmcu_dot4c_u8s2"}
SUM4C = {"int8": "tvmmcu_dot4c_sum_s2"}
RUNS4C = {("int8", "int8"): "tvmmcu_dot4c_runs_s8s2", ("uint8", "int8"): "tvmmcu_dot4c_runs_u8s2"}
# A copy of contiguous bytes (an in-place kernel's staged output written back), a word at a time.
COPY = "tvmmcu_dot_copy8"
# The same from contiguous bytes to every stride-th byte (a depthwise plane written back).
SCATTER = "tvmmcu_dot_scatter8"
# A window's taps copied once, the padding value where a tap lies outside (StageWindows).
STAGE = "tvmmcu_dot_stage8"
# The reduction's values per block of the blocked layout.
BLOCK_VALUES = 8
# Four output channels' windows, their weights ws apart (the argument after the weight pointer).
WINDOW4 = {("int8", "int8"): "tvmmcu_dot4_win_s8s8", ("uint8", "int8"): "tvmmcu_dot4_win_u8s8"}

HEADER_TEXT = """\
/* Integer dot products for the convolution and dense kernels: acc + sum of x[k] * w[k] for k < n.
 * With the DSP extension, SXTB16/UXTB16 widen a word of four 8-bit values to two pairs of 16-bit
 * values and SMLAD adds both products of a pair at once; without it, a plain loop. Both wrap modulo
 * 2**32 exactly as the C loop they replace. Loads of 4 bytes may be unaligned (LDR allows it on
 * Armv7-M and Armv8-M mainline). */
#ifndef TVMMCU_DOT_H
#define TVMMCU_DOT_H

#include <stdint.h>
#include <string.h>

/* Kernels called with constant sizes from several operators: GCC may specialise a copy for each set of
 * constants (IPA-CP cloning, on at -O3 only), as it would inline them, without copying the caller. */
#if defined(__GNUC__) && !defined(__clang__)
#define TVMMCU_DOT_CLONE __attribute__((optimize("ipa-cp-clone")))
#else
#define TVMMCU_DOT_CLONE
#endif

static inline uint32_t tvmmcu_dot_word(const void *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

#if defined(__ARM_FEATURE_DSP)
/* Bytes 0 and 2 of x, sign- (s) or zero-extended (u) to two halfwords; rotated by 8: bytes 1 and 3. */
#define TVMMCU_DOT_EXTEND(name, instruction)                    \
  static inline uint32_t name(uint32_t x) {                     \
    uint32_t r;                                                 \
    __asm__(instruction : "=r"(r) : "r"(x));                    \
    return r;                                                   \
  }
TVMMCU_DOT_EXTEND(tvmmcu_dot_s02, "sxtb16 %0, %1")
TVMMCU_DOT_EXTEND(tvmmcu_dot_s13, "sxtb16 %0, %1, ror #8")
TVMMCU_DOT_EXTEND(tvmmcu_dot_u02, "uxtb16 %0, %1")
TVMMCU_DOT_EXTEND(tvmmcu_dot_u13, "uxtb16 %0, %1, ror #8")
/* Two words at p, which is word-aligned, in one LDRD. volatile keeps the loads in program order (GCC
 * otherwise hoists every channel's loads and runs out of registers); the "m" operand tells it which
 * bytes are read. */
typedef struct {
  uint8_t b[8];
} tvmmcu_dot_8_t;
#define TVMMCU_DOT_LDRD(p, lo, hi) \
  __asm__ volatile("ldrd %0, %1, [%2]" : "=r"(lo), "=r"(hi) : "r"(p), "m"(*(const tvmmcu_dot_8_t *)(p)))
/* The same, stepping p past the two words (post-indexed). */
#define TVMMCU_DOT_LDRD_NEXT(p, lo, hi)                                  \
  __asm__ volatile("ldrd %0, %1, [%2], #8"                                \
                   : "=r"(lo), "=r"(hi), "+r"(p)                          \
                   : "m"(*(const tvmmcu_dot_8_t *)(p)))
/* acc + a.lo * b.lo + a.hi * b.hi (signed halfwords), modulo 2**32. */
static inline int32_t tvmmcu_dot_smlad(uint32_t a, uint32_t b, int32_t acc) {
  int32_t r;
  __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
  return r;
}
#endif

/* The two kernels in one body: x holds int8 (x_unsigned = 0) or uint8 values; each caller passes a
 * constant, so the compiler keeps only its half. */
static inline int32_t tvmmcu_dot_x8s8(const void *x, const int8_t *w, int32_t n, int32_t acc,
                                      int x_unsigned) {
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  int32_t k = 0;
#if defined(__ARM_FEATURE_DSP)
  for (; k + 4 <= n; k += 4) {
    const uint32_t a = tvmmcu_dot_word(xu + k);
    const uint32_t b = tvmmcu_dot_word(w + k);
    acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(a) : tvmmcu_dot_s02(a), tvmmcu_dot_s02(b), acc);
    acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(a) : tvmmcu_dot_s13(a), tvmmcu_dot_s13(b), acc);
  }
#endif
  for (; k < n; ++k) {
    const int32_t v = x_unsigned ? (int32_t)xu[k] : (int32_t)xs[k];
    acc = (int32_t)((uint32_t)acc + (uint32_t)(v * (int32_t)w[k]));
  }
  return acc;
}

static inline int32_t tvmmcu_dot_s8s8(const int8_t *x, const int8_t *w, int32_t n, int32_t acc) {
  return tvmmcu_dot_x8s8(x, w, n, acc, 0);
}

static inline int32_t tvmmcu_dot_u8s8(const uint8_t *x, const int8_t *w, int32_t n, int32_t acc) {
  return tvmmcu_dot_x8s8(x, w, n, acc, 1);
}

/* Four output channels: acc[j] + sum of x[k] * w[j * ws + k]. Each word of x is widened once for the
 * four channels' weights: 25 instructions per 16 multiply-accumulates with the DSP extension. */
static inline int32_t tvmmcu_dot4_x8s8(const void *x, const int8_t *w, int32_t ws, int32_t n, int32_t *acc,
                                       int x_unsigned) {
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  const int8_t *w0 = w;
  const int8_t *w1 = w + ws;
  const int8_t *w2 = w1 + ws;
  const int8_t *w3 = w2 + ws;
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  int32_t k = 0;
#if defined(__ARM_FEATURE_DSP)
  if ((((uint32_t)(uintptr_t)x | (uint32_t)(uintptr_t)w | (uint32_t)ws) & 3u) == 0u) {
    /* All four rows word-aligned: eight values a step, two words per LDRD (47 instructions per 32
     * multiply-accumulates). */
    for (; k + 8 <= n; k += 8) {
      uint32_t lo, hi, b0, b1;
      TVMMCU_DOT_LDRD(xu + k, lo, hi);
      const uint32_t v0 = x_unsigned ? tvmmcu_dot_u02(lo) : tvmmcu_dot_s02(lo);
      const uint32_t v1 = x_unsigned ? tvmmcu_dot_u13(lo) : tvmmcu_dot_s13(lo);
      const uint32_t v2 = x_unsigned ? tvmmcu_dot_u02(hi) : tvmmcu_dot_s02(hi);
      const uint32_t v3 = x_unsigned ? tvmmcu_dot_u13(hi) : tvmmcu_dot_s13(hi);
#define TVMMCU_DOT_ROW8(a, row)                      \
  TVMMCU_DOT_LDRD((row) + k, b0, b1);                \
  a = tvmmcu_dot_smlad(v0, tvmmcu_dot_s02(b0), a); \
  a = tvmmcu_dot_smlad(v1, tvmmcu_dot_s13(b0), a); \
  a = tvmmcu_dot_smlad(v2, tvmmcu_dot_s02(b1), a); \
  a = tvmmcu_dot_smlad(v3, tvmmcu_dot_s13(b1), a)
      TVMMCU_DOT_ROW8(a0, w0);
      TVMMCU_DOT_ROW8(a1, w1);
      TVMMCU_DOT_ROW8(a2, w2);
      TVMMCU_DOT_ROW8(a3, w3);
#undef TVMMCU_DOT_ROW8
    }
  }
  for (; k + 4 <= n; k += 4) {
    const uint32_t v = tvmmcu_dot_word(xu + k);
    const uint32_t v02 = x_unsigned ? tvmmcu_dot_u02(v) : tvmmcu_dot_s02(v);
    const uint32_t v13 = x_unsigned ? tvmmcu_dot_u13(v) : tvmmcu_dot_s13(v);
    uint32_t b = tvmmcu_dot_word(w0 + k);
    a0 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a0);
    a0 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a0);
    b = tvmmcu_dot_word(w1 + k);
    a1 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a1);
    a1 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a1);
    b = tvmmcu_dot_word(w2 + k);
    a2 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a2);
    a2 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a2);
    b = tvmmcu_dot_word(w3 + k);
    a3 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a3);
    a3 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a3);
  }
#endif
  for (; k < n; ++k) {
    const int32_t v = x_unsigned ? (int32_t)xu[k] : (int32_t)xs[k];
    a0 = (int32_t)((uint32_t)a0 + (uint32_t)(v * (int32_t)w0[k]));
    a1 = (int32_t)((uint32_t)a1 + (uint32_t)(v * (int32_t)w1[k]));
    a2 = (int32_t)((uint32_t)a2 + (uint32_t)(v * (int32_t)w2[k]));
    a3 = (int32_t)((uint32_t)a3 + (uint32_t)(v * (int32_t)w3[k]));
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}

static inline int32_t tvmmcu_dot4_s8s8(const int8_t *x, const int8_t *w, int32_t ws, int32_t n,
                                       int32_t *acc) {
  return tvmmcu_dot4_x8s8(x, w, ws, n, acc, 0);
}

static inline int32_t tvmmcu_dot4_u8s8(const uint8_t *x, const int8_t *w, int32_t ws, int32_t n,
                                       int32_t *acc) {
  return tvmmcu_dot4_x8s8(x, w, ws, n, acc, 1);
}

/* A window of kh x kw taps, strided: tap (ry, rx) of the weights is w[ry * wsy + rx * wsx]; the taps
 * [y0, y1) x [x0, x1) lie inside the input, x pointing at tap (y0, x0); the others hold the padding
 * value pad. A depthwise convolution's window (channels between taps), or a row too short for a dot
 * product. The general form, for taps inside not known when compiling: the taps inside, then pad
 * times the weights of the others (all minus those inside). */
static inline int32_t tvmmcu_dot_win_any(
    const void *x, int32_t xsy, int32_t xsx, const int8_t *w, int32_t wsy, int32_t wsx, int32_t kh,
    int32_t kw, int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad, int32_t acc, int x_unsigned) {
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  uint32_t sum = (uint32_t)acc;
  uint32_t all = 0;
  uint32_t inside = 0;
#pragma GCC unroll 64
  for (int32_t ry = 0; ry < kh; ++ry) {
#pragma GCC unroll 64
    for (int32_t rx = 0; rx < kw; ++rx) {
      all += (uint32_t)(int32_t)w[ry * wsy + rx * wsx];
    }
  }
  for (int32_t ry = y0; ry < y1; ++ry) {
    for (int32_t rx = x0; rx < x1; ++rx) {
      const int32_t at = (ry - y0) * xsy + (rx - x0) * xsx;
      const int32_t v = x_unsigned ? (int32_t)xu[at] : (int32_t)xs[at];
      const int32_t wv = w[ry * wsy + rx * wsx];
      sum += (uint32_t)(v * wv);
      inside += (uint32_t)wv;
    }
  }
  return (int32_t)(sum + (all - inside) * (uint32_t)pad);
}

/* Window kernels of at most this many taps are unrolled wherever their taps inside are constants
 * (SplitBorders makes them so; passes/tir/dot_kernels.py WINDOW_UNROLL_TAPS). */
#define TVMMCU_DOT_WIN_UNROLL 16

/* The window kernel. Where the compiler knows (after inlining, from constant arguments) that every tap
 * lies inside the input, or which taps do in a small window, the taps are unrolled with constant
 * offsets and the padding's folded in. Elsewhere (a large window at an unknown position) every tap of
 * a window wholly inside is unrolled once, and the others take the general form. */
static inline int32_t tvmmcu_dot_win_x8s8(const void *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                          int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t y0,
                                          int32_t y1, int32_t x0, int32_t x1, int32_t pad, int32_t acc,
                                          int x_unsigned) {
  const int whole = y0 == 0 && x0 == 0 && y1 == kh && x1 == kw;
  const int known = __builtin_constant_p(y0) && __builtin_constant_p(y1) && __builtin_constant_p(x0) &&
                    __builtin_constant_p(x1) && __builtin_constant_p(kh) && __builtin_constant_p(kw);
  if ((__builtin_constant_p(whole) && whole) || (known && kh * kw <= TVMMCU_DOT_WIN_UNROLL)) {
    const int8_t *xs = (const int8_t *)x;
    const uint8_t *xu = (const uint8_t *)x;
    uint32_t sum = (uint32_t)acc;
    uint32_t padded = 0;
#pragma GCC unroll 64
    for (int32_t ry = 0; ry < kh; ++ry) {
#pragma GCC unroll 64
      for (int32_t rx = 0; rx < kw; ++rx) {
        const int32_t wv = w[ry * wsy + rx * wsx];
        if (ry >= y0 && ry < y1 && rx >= x0 && rx < x1) {
          const int32_t at = (ry - y0) * xsy + (rx - x0) * xsx;
          const int32_t v = x_unsigned ? (int32_t)xu[at] : (int32_t)xs[at];
          sum += (uint32_t)(v * wv);
        } else {
          padded += (uint32_t)wv;
        }
      }
    }
    return (int32_t)(sum + padded * (uint32_t)pad);
  }
  if (!known && whole) {
    const int8_t *xs = (const int8_t *)x;
    const uint8_t *xu = (const uint8_t *)x;
    uint32_t sum = (uint32_t)acc;
#pragma GCC unroll 64
    for (int32_t ry = 0; ry < kh; ++ry) {
#pragma GCC unroll 64
      for (int32_t rx = 0; rx < kw; ++rx) {
        const int32_t at = ry * xsy + rx * xsx;
        const int32_t v = x_unsigned ? (int32_t)xu[at] : (int32_t)xs[at];
        sum += (uint32_t)(v * (int32_t)w[ry * wsy + rx * wsx]);
      }
    }
    return (int32_t)sum;
  }
  return tvmmcu_dot_win_any(x, xsy, xsx, w, wsy, wsx, kh, kw, y0, y1, x0, x1, pad, acc, x_unsigned);
}

static inline int32_t tvmmcu_dot_win_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                          int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t y0,
                                          int32_t y1, int32_t x0, int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_dot_win_x8s8(x, xsy, xsx, w, wsy, wsx, kh, kw, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot_win_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                          int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t y0,
                                          int32_t y1, int32_t x0, int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_dot_win_x8s8(x, xsy, xsx, w, wsy, wsx, kh, kw, y0, y1, x0, x1, pad, acc, 1);
}

/* acc[j] + sum over k < n of x[k] * w[j * ws + k] for a short contiguous run (a row of a window): one
 * word of data widened for the four channels' words, the last n mod 4 values one by one. Inlined. */
static inline void tvmmcu_dot4_run_x8s8(const void *x, const int8_t *w, int32_t ws, int32_t n, uint32_t *a,
                                        int x_unsigned) {
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  int32_t k = 0;
#if defined(__ARM_FEATURE_DSP)
  for (; k + 4 <= n; k += 4) {
    const uint32_t v = tvmmcu_dot_word(xu + k);
    const uint32_t v02 = x_unsigned ? tvmmcu_dot_u02(v) : tvmmcu_dot_s02(v);
    const uint32_t v13 = x_unsigned ? tvmmcu_dot_u13(v) : tvmmcu_dot_s13(v);
#pragma GCC unroll 4
    for (int32_t j = 0; j < 4; ++j) {
      const uint32_t b = tvmmcu_dot_word(w + j * ws + k);
      a[j] = (uint32_t)tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), (int32_t)a[j]);
      a[j] = (uint32_t)tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), (int32_t)a[j]);
    }
  }
#endif
  for (; k < n; ++k) {
    const int32_t v = x_unsigned ? (int32_t)xu[k] : (int32_t)xs[k];
#pragma GCC unroll 4
    for (int32_t j = 0; j < 4; ++j) {
      a[j] += (uint32_t)(v * (int32_t)w[j * ws + k]);
    }
  }
}

/* Four output channels of a window (tvmmcu_dot_win_x8s8), their weights ws apart: the data read once
 * for the four. Taps contiguous along x (xsx = wsx = 1, as the input channels of a convolution are) go
 * through word loads, and a window whose inside rows follow each other in both the data and the
 * weights (a whole row of taps per row: x0 = 0, x1 = kw = xsy = wsy) is one run. The padding adds pad
 * times the weights of the taps outside. */
#if defined(__ARM_FEATURE_DSP)
/* tvmmcu_dot4_win_x8s8 for rows of kw >= 4 contiguous taps (a convolution over one input channel, KWS's
 * first layer; a kernel row of an RGB input's taps): each word of a row's data is loaded whole where it
 * lies inside, is the padding value four times where it lies outside, and is put together byte by byte
 * at a border, so every row is one word per 4 taps against the four channels' weight words, the last
 * kw mod 4 taps one by one: no separate padding sums. */
static inline int32_t tvmmcu_dot4_win_rows_x8s8(const void *x, int32_t xsy, const int8_t *w, int32_t ws,
                                                int32_t wsy, int32_t kh, int32_t kw, int32_t y0,
                                                int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                                int32_t *acc, int x_unsigned) {
  const uint8_t *xu = (const uint8_t *)x;
  const uint32_t padword = 0x01010101u * (uint32_t)(uint8_t)pad;
  const int full = x0 == 0 && x1 == kw;
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
/* One tap of the four channels, a scalar value: the last kw mod 4 taps of a row. */
#define TVMMCU_DOT_TAP4(v, wt)                                                                      \
  do {                                                                                              \
    a0 = (int32_t)((uint32_t)a0 + (uint32_t)((v) * (int32_t)(wt)[0]));                              \
    a1 = (int32_t)((uint32_t)a1 + (uint32_t)((v) * (int32_t)(wt)[ws]));                             \
    a2 = (int32_t)((uint32_t)a2 + (uint32_t)((v) * (int32_t)(wt)[2 * ws]));                         \
    a3 = (int32_t)((uint32_t)a3 + (uint32_t)((v) * (int32_t)(wt)[3 * ws]));                         \
  } while (0)
#define TVMMCU_DOT_ROW4(v, wt)                                                    \
  do {                                                                            \
    const uint32_t v02 = x_unsigned ? tvmmcu_dot_u02(v) : tvmmcu_dot_s02(v);   \
    const uint32_t v13 = x_unsigned ? tvmmcu_dot_u13(v) : tvmmcu_dot_s13(v);   \
    uint32_t b = tvmmcu_dot_word(wt);                                             \
    a0 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a0);                          \
    a0 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a0);                          \
    b = tvmmcu_dot_word((wt) + ws);                                               \
    a1 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a1);                          \
    a1 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a1);                          \
    b = tvmmcu_dot_word((wt) + 2 * ws);                                           \
    a2 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a2);                          \
    a2 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a2);                          \
    b = tvmmcu_dot_word((wt) + 3 * ws);                                           \
    a3 = tvmmcu_dot_smlad(v02, tvmmcu_dot_s02(b), a3);                          \
    a3 = tvmmcu_dot_smlad(v13, tvmmcu_dot_s13(b), a3);                          \
  } while (0)
  /* Rows above and below the input: the padding value against every weight. */
  for (int32_t ry = 0; ry < kh; ++ry) {
    if (ry == y0) {
      ry = y1 - 1 < y0 ? y0 : y1 - 1; /* skip the rows inside */
      if (y1 > y0) {
        continue;
      }
    }
    for (int32_t c = 0; c + 4 <= kw; c += 4) {
      TVMMCU_DOT_ROW4(padword, w + ry * wsy + c);
    }
    for (int32_t c = kw & ~3; c < kw; ++c) {
      TVMMCU_DOT_TAP4(pad, w + ry * wsy + c);
    }
  }
  /* Rows inside: whole words where the row lies inside, put together at a left or right border. */
  if (full) {
    for (int32_t ry = y0; ry < y1; ++ry) {
      const uint8_t *row = xu + (ry - y0) * xsy;
      const int8_t *wrow = w + ry * wsy;
      for (int32_t c = 0; c + 4 <= kw; c += 4) {
        const uint32_t v = tvmmcu_dot_word(row + c);
        TVMMCU_DOT_ROW4(v, wrow + c);
      }
      for (int32_t c = kw & ~3; c < kw; ++c) {
        const int32_t v = x_unsigned ? (int32_t)row[c] : (int32_t)(int8_t)row[c];
        TVMMCU_DOT_TAP4(v, wrow + c);
      }
    }
    y1 = y0; /* done */
  }
  for (int32_t ry = y0; ry < y1; ++ry) {
    const uint8_t *row = xu + (ry - y0) * xsy - x0; /* column c of the row at row[c] */
    const int8_t *wrow = w + ry * wsy;
    for (int32_t c = kw & ~3; c < kw; ++c) {
      const int inside = c >= x0 && c < x1;
      const int32_t v = !inside ? pad : (x_unsigned ? (int32_t)row[c] : (int32_t)(int8_t)row[c]);
      TVMMCU_DOT_TAP4(v, wrow + c);
    }
    for (int32_t c = 0; c + 4 <= kw; c += 4) {
      uint32_t v;
      if (c >= x0 && c + 4 <= x1) {
        v = tvmmcu_dot_word(row + c);
      } else if (c + 4 <= x0 || c >= x1) {
        v = padword;
      } else {
        /* A border word: its 1 to 3 inside bytes loaded (no byte outside the row read) into the
         * padding word. */
        const int32_t lo = c > x0 ? c : x0;
        const int32_t k = (c + 4 < x1 ? c + 4 : x1) - lo;
        const uint32_t at = 8u * (uint32_t)(lo - c);
        const uint8_t *p = row + lo;
        uint32_t d = p[0];
        if (k >= 2) {
          uint16_t h;
          memcpy(&h, p + k - 2, 2);
          d = k == 2 ? (uint32_t)h : d | ((uint32_t)h << 8);
        }
        const uint32_t mask = ((1u << (8u * (uint32_t)k)) - 1u) << at;
        v = (padword & ~mask) | (d << at);
      }
      TVMMCU_DOT_ROW4(v, wrow + c);
    }
  }
#undef TVMMCU_DOT_ROW4
#undef TVMMCU_DOT_TAP4
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}
#endif

static inline int32_t tvmmcu_dot4_win_x8s8(const void *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                           int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                           int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                           int32_t *acc, int x_unsigned) {
#if defined(__ARM_FEATURE_DSP)
  if (xsx == 1 && wsx == 1 && kw >= 4) {
    return tvmmcu_dot4_win_rows_x8s8(x, xsy, w, ws, wsy, kh, kw, y0, y1, x0, x1, pad, acc, x_unsigned);
  }
#endif
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  uint32_t a[4] = {(uint32_t)acc[0], (uint32_t)acc[1], (uint32_t)acc[2], (uint32_t)acc[3]};
  if (pad != 0 && !(y0 == 0 && x0 == 0 && y1 == kh && x1 == kw)) {
    /* The weights of the taps outside: whole rows above and below, the columns left and right. */
    int32_t out[4] = {0, 0, 0, 0};
    for (int32_t ry = 0; ry < kh; ++ry) {
      const int inside = ry >= y0 && ry < y1;
#pragma GCC unroll 16
      for (int32_t rx = 0; rx < kw; ++rx) {
        if (!inside || rx < x0 || rx >= x1) {
#pragma GCC unroll 4
          for (int32_t j = 0; j < 4; ++j) {
            out[j] += w[j * ws + ry * wsy + rx * wsx];
          }
        }
      }
    }
#pragma GCC unroll 4
    for (int32_t j = 0; j < 4; ++j) {
      a[j] += (uint32_t)pad * (uint32_t)out[j];
    }
  }
  if (xsx == 1 && wsx == 1 && x0 == 0 && x1 == kw && xsy == kw && wsy == kw) {
    tvmmcu_dot4_run_x8s8(x, w + y0 * kw, ws, (y1 - y0) * kw, a, x_unsigned);
  } else if (xsx == 1 && wsx == 1) {
    for (int32_t ry = y0; ry < y1; ++ry) {
      tvmmcu_dot4_run_x8s8(xu + (ry - y0) * xsy, w + ry * wsy + x0, ws, x1 - x0, a, x_unsigned);
    }
  } else {
    for (int32_t ry = y0; ry < y1; ++ry) {
      for (int32_t rx = x0; rx < x1; ++rx) {
        const int32_t at = (ry - y0) * xsy + (rx - x0) * xsx;
        const int32_t v = x_unsigned ? (int32_t)xu[at] : (int32_t)xs[at];
#pragma GCC unroll 4
        for (int32_t j = 0; j < 4; ++j) {
          a[j] += (uint32_t)(v * (int32_t)w[j * ws + ry * wsy + rx * wsx]);
        }
      }
    }
  }
  acc[0] = (int32_t)a[0];
  acc[1] = (int32_t)a[1];
  acc[2] = (int32_t)a[2];
  acc[3] = (int32_t)a[3];
  return 0;
}

static inline int32_t tvmmcu_dot4_win_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                           int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                           int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                           int32_t *acc) {
  return tvmmcu_dot4_win_x8s8(x, xsy, xsx, w, ws, wsy, wsx, kh, kw, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot4_win_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                           int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                           int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                           int32_t *acc) {
  return tvmmcu_dot4_win_x8s8(x, xsy, xsx, w, ws, wsy, wsx, kh, kw, y0, y1, x0, x1, pad, acc, 1);
}

/* acc + value * (w[0] + ... + w[n - 1]): a window's taps in the padding, which hold the zero point. */
static inline int32_t tvmmcu_dot_sum_s8(const int8_t *w, int32_t n, int32_t value, int32_t acc) {
  int32_t sum = 0;
  for (int32_t k = 0; k < n; ++k) {
    sum += w[k];
  }
  return (int32_t)((uint32_t)acc + (uint32_t)sum * (uint32_t)value);
}

/* Four output channels' padding taps: acc[j] + value * (w[j * ws] + ... + w[j * ws + n - 1]). */
static inline int32_t tvmmcu_dot4_sum_s8(const int8_t *w, int32_t ws, int32_t n, int32_t value,
                                         int32_t *acc) {
  for (int32_t j = 0; j < 4; ++j) {
    acc[j] = tvmmcu_dot_sum_s8(w + j * ws, n, value, acc[j]);
  }
  return 0;
}

/* The blocked kernels' loop, for int8 weights (tvmmcu_dot4b_run) and halfwords (tvmmcu_dot4h_run): 8
 * values of the data a step (LDRD where word-aligned), widened once, then BLOCK8 adds one channel's 8
 * products from the weight pointer p; AT(k) is where value k of channel 0 sits in a block of 32. */
#if defined(__ARM_FEATURE_DSP)
#define TVMMCU_DOT_WIDEN8                                                        \
  const uint32_t v0 = x_unsigned ? tvmmcu_dot_u02(lo) : tvmmcu_dot_s02(lo);   \
  const uint32_t v1 = x_unsigned ? tvmmcu_dot_u13(lo) : tvmmcu_dot_s13(lo);   \
  const uint32_t v2 = x_unsigned ? tvmmcu_dot_u02(hi) : tvmmcu_dot_s02(hi);   \
  const uint32_t v3 = x_unsigned ? tvmmcu_dot_u13(hi) : tvmmcu_dot_s13(hi)
#define TVMMCU_DOT_STEP8(BLOCK8) \
  TVMMCU_DOT_WIDEN8;             \
  BLOCK8(a0);                    \
  BLOCK8(a1);                    \
  BLOCK8(a2);                    \
  BLOCK8(a3)
/* The same with PAIR adding two channels' products from one weight word (crumb_kernels.py). */
#define TVMMCU_DOT_STEP8_PAIRS(PAIR) \
  TVMMCU_DOT_WIDEN8;                 \
  PAIR(a0, a1);                      \
  PAIR(a2, a3)
#define TVMMCU_DOT_BLOCKED_LOOP_OF(STEP, BLOCK)         \
  if ((((uint32_t)(uintptr_t)x) & 3u) == 0u) {         \
    while (xu != end) {                                 \
      TVMMCU_DOT_LDRD_NEXT(xu, lo, hi);                 \
      STEP(BLOCK);                                      \
    }                                                   \
  } else {                                              \
    while (xu != end) {                                 \
      lo = tvmmcu_dot_word(xu);                         \
      hi = tvmmcu_dot_word(xu + 4);                     \
      xu += 8;                                          \
      STEP(BLOCK);                                      \
    }                                                   \
  }
#define TVMMCU_DOT_BLOCKED_LOOP(BLOCK8) TVMMCU_DOT_BLOCKED_LOOP_OF(TVMMCU_DOT_STEP8, BLOCK8)
#endif
#define TVMMCU_DOT_BLOCKED_RUN(name, WT, BLOCK8, AT)                                               \
  static inline __attribute__((always_inline)) void name(const void *x, const WT *wb, int32_t n,     \
                                                         int32_t *a, int x_unsigned) {              \
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];                                            \
    TVMMCU_DOT_BLOCKED_BODY(BLOCK8, AT)                                                             \
    a[0] = a0;                                                                                      \
    a[1] = a1;                                                                                      \
    a[2] = a2;                                                                                      \
    a[3] = a3;                                                                                      \
  }
#if defined(__ARM_FEATURE_DSP)
#define TVMMCU_DOT_BLOCKED_BODY(BLOCK8, AT)         \
  const uint8_t *xu = (const uint8_t *)x;           \
  const uint8_t *const end = xu + n;                \
  const void *p = wb;                               \
  uint32_t lo, hi, b0, b1;                          \
  TVMMCU_DOT_BLOCKED_LOOP(BLOCK8)
#else
#define TVMMCU_DOT_BLOCKED_BODY(BLOCK8, AT)                                  \
  const int8_t *xs = (const int8_t *)x;                                      \
  const uint8_t *xu = (const uint8_t *)x;                                    \
  for (int32_t k = 0; k < n; ++k) {                                          \
    const int32_t v = x_unsigned ? (int32_t)xu[k] : (int32_t)xs[k];          \
    const int32_t at = (k >> 3) * 32 + AT(k & 7);                            \
    a0 = (int32_t)((uint32_t)a0 + (uint32_t)(v * (int32_t)wb[at]));          \
    a1 = (int32_t)((uint32_t)a1 + (uint32_t)(v * (int32_t)wb[at + 8]));      \
    a2 = (int32_t)((uint32_t)a2 + (uint32_t)(v * (int32_t)wb[at + 16]));     \
    a3 = (int32_t)((uint32_t)a3 + (uint32_t)(v * (int32_t)wb[at + 24]));     \
  }
#endif

/* Four output channels whose weights are blocked (passes/tir/block_weights.py): for every 8 values of
 * the reduction, the four channels' 8 weights one after another (32 bytes). a[j] + sum over k < n of
 * x[k] * wb[(k / 8) * 32 + j * 8 + k % 8]; n a multiple of 8, wb word-aligned. One pointer walks the
 * four channels' weights, two words per LDRD: 43 instructions per 32 multiply-accumulates with the DSP
 * extension. */
#define TVMMCU_DOT_BYTE8(acc)                            \
  TVMMCU_DOT_LDRD_NEXT(p, b0, b1);                       \
  acc = tvmmcu_dot_smlad(v0, tvmmcu_dot_s02(b0), acc); \
  acc = tvmmcu_dot_smlad(v1, tvmmcu_dot_s13(b0), acc); \
  acc = tvmmcu_dot_smlad(v2, tvmmcu_dot_s02(b1), acc); \
  acc = tvmmcu_dot_smlad(v3, tvmmcu_dot_s13(b1), acc)
#define TVMMCU_DOT_BYTE_AT(i) (i)
TVMMCU_DOT_BLOCKED_RUN(tvmmcu_dot4b_run, int8_t, TVMMCU_DOT_BYTE8, TVMMCU_DOT_BYTE_AT)

/* Always inlined: the operator's accumulators then stay in registers between the call and its
 * requantisation (measured: fewer instructions on every MLPerf Tiny model, a few hundred bytes more). */
#define TVMMCU_DOT_INLINE static inline __attribute__((always_inline))
TVMMCU_DOT_INLINE int32_t tvmmcu_dot4b_x8s8(const void *x, const int8_t *wb, int32_t n, int32_t *acc,
                                            int x_unsigned) {
  tvmmcu_dot4b_run(x, wb, n, acc, x_unsigned);
  return 0;
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4b_s8s8(const int8_t *x, const int8_t *wb, int32_t n, int32_t *acc) {
  return tvmmcu_dot4b_x8s8(x, wb, n, acc, 0);
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4b_u8s8(const uint8_t *x, const int8_t *wb, int32_t n, int32_t *acc) {
  return tvmmcu_dot4b_x8s8(x, wb, n, acc, 1);
}

/* The blocked weights' padding taps: acc[j] + value * (the n weights of channel j from wb), n a
 * multiple of 8. With the DSP extension SMLAD multiplies the widened weights by value in both halves
 * (value is an int8 or uint8 zero point: it fits a halfword). */
static inline int32_t tvmmcu_dot4b_sum_s8(const int8_t *wb, int32_t n, int32_t value, int32_t *acc) {
#if defined(__ARM_FEATURE_DSP)
  const uint32_t pair = ((uint32_t)(uint16_t)(int16_t)value << 16) | (uint32_t)(uint16_t)(int16_t)value;
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const int8_t *p = wb;
  uint32_t b0, b1;
#define TVMMCU_DOT_PAD8(a)                                \
  TVMMCU_DOT_LDRD_NEXT(p, b0, b1);                        \
  a = tvmmcu_dot_smlad(tvmmcu_dot_s02(b0), pair, a);  \
  a = tvmmcu_dot_smlad(tvmmcu_dot_s13(b0), pair, a);  \
  a = tvmmcu_dot_smlad(tvmmcu_dot_s02(b1), pair, a);  \
  a = tvmmcu_dot_smlad(tvmmcu_dot_s13(b1), pair, a)
  for (int32_t k = 0; k < n; k += 8) {
    TVMMCU_DOT_PAD8(a0);
    TVMMCU_DOT_PAD8(a1);
    TVMMCU_DOT_PAD8(a2);
    TVMMCU_DOT_PAD8(a3);
  }
#undef TVMMCU_DOT_PAD8
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
#else
  int32_t s[4] = {0, 0, 0, 0};
  for (int32_t k = 0; k < n; ++k) {
    const int8_t *w = wb + (k >> 3) * 32 + (k & 7);
    s[0] += w[0];
    s[1] += w[8];
    s[2] += w[16];
    s[3] += w[24];
  }
  for (int32_t j = 0; j < 4; ++j) {
    acc[j] = (int32_t)((uint32_t)acc[j] + (uint32_t)s[j] * (uint32_t)value);
  }
#endif
  return 0;
}

/* A window of kh x kw taps, each a run of n contiguous values (a convolution's input channels): tap
 * (ry, rx) reads x at (ry - y0) * xsy + (rx - x0) * xsx (the taps [y0, y1) x [x0, x1) inside the input,
 * x pointing at tap (y0, x0)) and the weights at w + ry * wsy + rx * wsx; the taps outside hold pad.
 * One call for the whole window: the accumulator stays in registers across its taps. */
static inline int32_t tvmmcu_dot_runs_x8s8(const void *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                           int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t n,
                                           int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                           int32_t acc, int x_unsigned) {
  const uint8_t *xu = (const uint8_t *)x;
  for (int32_t ry = 0; ry < kh; ++ry) {
    for (int32_t rx = 0; rx < kw; ++rx) {
      const int8_t *wt = w + ry * wsy + rx * wsx;
      if (ry >= y0 && ry < y1 && rx >= x0 && rx < x1) {
        acc = tvmmcu_dot_x8s8(xu + (ry - y0) * xsy + (rx - x0) * xsx, wt, n, acc, x_unsigned);
      } else {
        acc = tvmmcu_dot_sum_s8(wt, n, pad, acc);
      }
    }
  }
  return acc;
}

static inline int32_t tvmmcu_dot_runs_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                           int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t n,
                                           int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                           int32_t acc) {
  return tvmmcu_dot_runs_x8s8(x, xsy, xsx, w, wsy, wsx, kh, kw, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot_runs_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                           int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t n,
                                           int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                           int32_t acc) {
  return tvmmcu_dot_runs_x8s8(x, xsy, xsx, w, wsy, wsx, kh, kw, n, y0, y1, x0, x1, pad, acc, 1);
}

/* Four output channels of tvmmcu_dot_runs, their weights ws apart. */
static inline int32_t tvmmcu_dot4_runs_x8s8(const void *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                            int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                            int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                            int32_t pad, int32_t *acc, int x_unsigned) {
  const uint8_t *xu = (const uint8_t *)x;
  for (int32_t ry = 0; ry < kh; ++ry) {
    for (int32_t rx = 0; rx < kw; ++rx) {
      const int8_t *wt = w + ry * wsy + rx * wsx;
      if (ry >= y0 && ry < y1 && rx >= x0 && rx < x1) {
        tvmmcu_dot4_x8s8(xu + (ry - y0) * xsy + (rx - x0) * xsx, wt, ws, n, acc, x_unsigned);
      } else {
        tvmmcu_dot4_sum_s8(wt, ws, n, pad, acc);
      }
    }
  }
  return 0;
}

static inline int32_t tvmmcu_dot4_runs_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                            int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                            int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                            int32_t pad, int32_t *acc) {
  return tvmmcu_dot4_runs_x8s8(x, xsy, xsx, w, ws, wsy, wsx, kh, kw, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot4_runs_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, const int8_t *w,
                                            int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                            int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                            int32_t pad, int32_t *acc) {
  return tvmmcu_dot4_runs_x8s8(x, xsy, xsx, w, ws, wsy, wsx, kh, kw, n, y0, y1, x0, x1, pad, acc, 1);
}

/* Four output channels of tvmmcu_dot_runs with blocked weights (BlockWeights), the taps one after
 * another (tap t's weights at wb + 4 * n * t; n a multiple of 8): the accumulators stay in registers
 * across the window, and a row of taps inside whose data follow each other (xsx = n) is one run. */
/* Four output channels over a window of runs of blocked weights: each tap a run of n values; the taps
 * of a row follow each other in the data when xsx = n. The padding taps are summed a run of weights at
 * a time. One body for every weight width: WT the weights' type, PER values per WT (2: nibbles), RUN
 * and SUM the blocked run and padding kernels (tvmmcu_dot4b_runs_x8s8 over int8 weights,
 * tvmmcu_dot4h_runs_x8s16 over halfwords, tvmmcu_dot4q_runs_x8s4 over packed int4). */
#define TVMMCU_DOT_RUNS4(name, WT, PER, RUN, SUM)                                                         \
  static inline TVMMCU_DOT_CLONE int32_t name(const void *x, int32_t xsy, int32_t xsx, const void *w,      \
                                              int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,   \
                                              int32_t x0, int32_t x1, int32_t pad, int32_t *acc,           \
                                              int x_unsigned) {                                            \
    const uint8_t *xu = (const uint8_t *)x;                                                                \
    const WT *wb = (const WT *)w;                                                                          \
    const int32_t tap = 4 * (n / PER); /* WTs per tap of the four channels */                              \
    int32_t a[4] = {acc[0], acc[1], acc[2], acc[3]};                                                       \
    if (pad != 0 && !(y0 == 0 && x0 == 0 && y1 == kh && x1 == kw)) {                                       \
      for (int32_t ry = 0; ry < kh; ++ry) {                                                                \
        const WT *wrow = wb + tap * ry * kw;                                                               \
        if (ry < y0 || ry >= y1) {                                                                         \
          SUM(wrow, kw * n, pad, a);                                                                       \
          continue;                                                                                        \
        }                                                                                                  \
        if (x0 > 0) {                                                                                      \
          SUM(wrow, x0 * n, pad, a);                                                                       \
        }                                                                                                  \
        if (x1 < kw) {                                                                                     \
          SUM(wrow + tap * x1, (kw - x1) * n, pad, a);                                                     \
        }                                                                                                  \
      }                                                                                                    \
    }                                                                                                      \
    for (int32_t ry = y0; ry < y1; ++ry) {                                                                 \
      const uint8_t *row = xu + (ry - y0) * xsy;                                                           \
      const WT *wrow = wb + tap * (ry * kw + x0);                                                          \
      if (xsx == n) {                                                                                      \
        RUN(row, wrow, (x1 - x0) * n, a, x_unsigned);                                                      \
      } else {                                                                                             \
        for (int32_t rx = x0; rx < x1; ++rx) {                                                             \
          RUN(row + (rx - x0) * xsx, wrow + tap * (rx - x0), n, a, x_unsigned);                            \
        }                                                                                                  \
      }                                                                                                    \
    }                                                                                                      \
    acc[0] = a[0];                                                                                         \
    acc[1] = a[1];                                                                                         \
    acc[2] = a[2];                                                                                         \
    acc[3] = a[3];                                                                                         \
    return 0;                                                                                              \
  }
TVMMCU_DOT_RUNS4(tvmmcu_dot4b_runs_x8s8, int8_t, 1, tvmmcu_dot4b_run, tvmmcu_dot4b_sum_s8)

static inline int32_t tvmmcu_dot4b_runs_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, const int8_t *wb,
                                             int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                             int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4b_runs_x8s8(x, xsy, xsx, wb, kh, kw, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot4b_runs_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, const int8_t *wb,
                                             int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                             int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4b_runs_x8s8(x, xsy, xsx, wb, kh, kw, n, y0, y1, x0, x1, pad, acc, 1);
}

/* Weights pre-widened to halfwords (--weights int16, WidenWeights): the blocked layout of
 * tvmmcu_dot4b_run with each 8 values of a channel stored as int16 in the order SMLAD pairs them with
 * the data's SXTB16 halves: w0 w2 w1 w3 w4 w6 w5 w7 (16 bytes). Twice the flash, no widening of the
 * weights: 31 instructions per 32 multiply-accumulates with the DSP extension (43 from int8). */
static const uint8_t tvmmcu_dot_half_at[8] = {0, 2, 1, 3, 4, 6, 5, 7};
#define TVMMCU_DOT_HALF8(acc)                \
  TVMMCU_DOT_LDRD_NEXT(p, b0, b1);           \
  acc = tvmmcu_dot_smlad(v0, b0, acc);       \
  acc = tvmmcu_dot_smlad(v1, b1, acc);       \
  TVMMCU_DOT_LDRD_NEXT(p, b0, b1);           \
  acc = tvmmcu_dot_smlad(v2, b0, acc);       \
  acc = tvmmcu_dot_smlad(v3, b1, acc)
#define TVMMCU_DOT_HALF_AT(i) (tvmmcu_dot_half_at[i])
TVMMCU_DOT_BLOCKED_RUN(tvmmcu_dot4h_run, int16_t, TVMMCU_DOT_HALF8, TVMMCU_DOT_HALF_AT)

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4h_s8s16(const int8_t *x, const void *wh, int32_t n, int32_t *acc) {
  tvmmcu_dot4h_run(x, (const int16_t *)wh, n, acc, 0);
  return 0;
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4h_u8s16(const uint8_t *x, const void *wh, int32_t n, int32_t *acc) {
  tvmmcu_dot4h_run(x, (const int16_t *)wh, n, acc, 1);
  return 0;
}

/* The halfword weights' padding taps: acc[j] + value * (the n weights of channel j), n a multiple
 * of 8. */
static inline int32_t tvmmcu_dot4h_sum_s16(const void *wh, int32_t n, int32_t value, int32_t *acc) {
#if defined(__ARM_FEATURE_DSP)
  /* SMLAD multiplies two weights by value (an 8-bit zero point: it fits a halfword) at once. */
  const uint32_t pair = ((uint32_t)(uint16_t)(int16_t)value << 16) | (uint32_t)(uint16_t)(int16_t)value;
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const int16_t *p = (const int16_t *)wh;
  uint32_t c0, c1;
#define TVMMCU_DOT_HALFPAD8(a)                \
  TVMMCU_DOT_LDRD_NEXT(p, c0, c1);            \
  a = tvmmcu_dot_smlad(c0, pair, a);          \
  a = tvmmcu_dot_smlad(c1, pair, a);          \
  TVMMCU_DOT_LDRD_NEXT(p, c0, c1);            \
  a = tvmmcu_dot_smlad(c0, pair, a);          \
  a = tvmmcu_dot_smlad(c1, pair, a)
  for (int32_t k = 0; k < n; k += 8) {
    TVMMCU_DOT_HALFPAD8(a0);
    TVMMCU_DOT_HALFPAD8(a1);
    TVMMCU_DOT_HALFPAD8(a2);
    TVMMCU_DOT_HALFPAD8(a3);
  }
#undef TVMMCU_DOT_HALFPAD8
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
#else
  const int16_t *w = (const int16_t *)wh;
  int32_t s[4] = {0, 0, 0, 0};
  for (int32_t k = 0; k < n; k += 8) {
    for (int32_t j = 0; j < 4; ++j) {
      for (int32_t i = 0; i < 8; ++i) {
        s[j] += w[(k >> 3) * 32 + j * 8 + i];
      }
    }
  }
  for (int32_t j = 0; j < 4; ++j) {
    acc[j] = (int32_t)((uint32_t)acc[j] + (uint32_t)s[j] * (uint32_t)value);
  }
#endif
  return 0;
}

TVMMCU_DOT_RUNS4(tvmmcu_dot4h_runs_x8s16, int16_t, 1, tvmmcu_dot4h_run, tvmmcu_dot4h_sum_s16)

static inline int32_t tvmmcu_dot4h_runs_s8s16(const int8_t *x, int32_t xsy, int32_t xsx, const void *wh,
                                              int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                              int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4h_runs_x8s16(x, xsy, xsx, wh, kh, kw, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot4h_runs_u8s16(const uint8_t *x, int32_t xsy, int32_t xsx, const void *wh,
                                              int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                              int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4h_runs_x8s16(x, xsy, xsx, wh, kh, kw, n, y0, y1, x0, x1, pad, acc, 1);
}

/* n bytes from src to every stride-th byte of dst (a depthwise convolution's staged channel plane
 * written back between the other channels): a word of src at a time. */
static inline int32_t tvmmcu_dot_scatter8(void *dst, int32_t stride, const void *src, int32_t n) {
  uint8_t *d = (uint8_t *)dst;
  const uint8_t *s = (const uint8_t *)src;
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const uint32_t v = tvmmcu_dot_word(s + k);
    d[0] = (uint8_t)v;
    d[stride] = (uint8_t)(v >> 8);
    d[2 * stride] = (uint8_t)(v >> 16);
    d[3 * stride] = (uint8_t)(v >> 24);
    d += 4 * stride;
  }
  for (; k < n; ++k) {
    *d = s[k];
    d += stride;
  }
  return 0;
}

/* A window of kh x kw one-byte taps copied to dst row after row, the padding value pad where a tap
 * lies outside: the taps [y0, y1) x [x0, x1) are inside, x at tap (y0, x0), its rows xsy and its
 * columns xsx bytes apart (tvmmcu_dot4_win_x8s8's window). One output pixel's window staged once for
 * every block of output channels, which then read kh * kw contiguous bytes. */
static inline int32_t tvmmcu_dot_stage8(void *dst, const void *x, int32_t xsy, int32_t xsx, int32_t kh,
                                        int32_t kw, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                        int32_t pad) {
  uint8_t *d = (uint8_t *)dst;
  const uint8_t *s = (const uint8_t *)x;
  if (y0 != 0 || x0 != 0 || y1 != kh || x1 != kw) {
    const uint32_t padword = 0x01010101u * (uint32_t)(uint8_t)pad;
    const int32_t n = kh * kw;
    int32_t k = 0;
    for (; k + 4 <= n; k += 4) {
      memcpy(d + k, &padword, 4);
    }
    for (; k < n; ++k) {
      d[k] = (uint8_t)pad;
    }
  }
  for (int32_t ry = y0; ry < y1; ++ry) {
    const uint8_t *row = s + (ry - y0) * xsy;
    uint8_t *out = d + ry * kw + x0;
    for (int32_t rx = 0; rx < x1 - x0; ++rx) {
      out[rx] = row[rx * xsx];
    }
  }
  return 0;
}

/* n bytes from src to dst (they do not overlap: a staged output copied back), a word at a time. */
static inline int32_t tvmmcu_dot_copy8(void *dst, const void *src, int32_t n) {
  uint8_t *d = (uint8_t *)dst;
  const uint8_t *s = (const uint8_t *)src;
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const uint32_t v = tvmmcu_dot_word(s + k);
    memcpy(d + k, &v, 4);
  }
  for (; k < n; ++k) {
    d[k] = s[k];
  }
  return 0;
}

#endif
"""

# The packed int4 and int2 kernels (they use the blocked kernels' macros), the float32 kernels, the
# filterlet-sparse and the element-sparse ones, the Golomb-Rice weight decoder: sections of the same
# header, each with its own include guard.
HEADER_TEXT += (
    NIBBLE_HEADER_TEXT
    + CRUMB_HEADER_TEXT
    + FLOAT_HEADER_TEXT
    + SPARSE_HEADER_TEXT
    + SPARSE_F32_HEADER_TEXT
    + ELEMENT_HEADER_TEXT
    + RICE_HEADER_TEXT
)

# In one translation unit GCC propagates the arena's and the weights' sizes into the kernels and warns
# about paths no call takes: a window kernel's whole-window path when the padding makes every window
# partial (an input smaller than the kernel: -Warray-bounds), a dot product's scalar tail after its
# word steps have covered the whole length (-Waggressive-loop-optimizations; fuzz: a 60-input dense
# layer). The kernels' reads lie inside by construction (the taps [y0, y1) x [x0, x1), k < n). Only
# those two warnings, only in this header.
_QUIET = """\
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
"""
_LOUD = """\
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
"""
HEADER_TEXT = _QUIET + HEADER_TEXT + _LOUD
