"""The float32 micro-kernels the generated library ships, and the TIR calls to them.

A section of the integer kernels' header (:data:`~tvm_mcu.passes.tir.dot_kernels.HEADER_NAME`, with its
own include guard), ``static inline`` C that GCC inlines into each operator: with an FPU (Cortex-M4F,
M7, M33 built with ``-mfpu``) each multiply-accumulate is one VFMA (or VMLA) and each value one VLDR,
without (Cortex-M3) the same C calls the soft-float library. Plain C, no ``-ffast-math``: each channel
adds its products in the order of the loop it replaces, the padding's taps left out (zero padding adds
nothing). GCC contracts ``acc + x * w`` to a fused multiply-add where the target has one (its default
``-ffp-contract=fast`` for GNU C), as it does for TVM's own loops; ISO C on the host does not.

:class:`~tvm_mcu.passes.tir.use_dot_kernels.UseDotKernels` replaces a float32 reduction loop with a call,
:class:`~tvm_mcu.passes.tir.block_output_channels.BlockOutputChannels` makes it four output channels per
call. Float weights keep the layout TVM gives them (HWIO: the output channels contiguous, so the four
channels' weights of a tap are neighbours and one pointer with constant offsets reaches them); the
kernels take the weights' stride along the reduction instead of needing it contiguous.
"""

from __future__ import annotations

FLOAT = ("float32", "float32")

# C function for (data dtype, weight dtype): acc + sum over k < n of x[k] * w[k * wk] (the data
# contiguous along the reduction, the weights wk apart).
DOT_F32 = {FLOAT: "tvmmcu_dot_f32"}
# Four output channels, their weights ws apart: acc[j] += sum over k < n of x[k] * w[j * ws + k * wk].
DOT4_F32 = {FLOAT: "tvmmcu_dot4_f32"}
# A 2-D window of strided taps, only the taps [y0, y1) x [x0, x1) inside the input visited (the
# integer window kernel's arguments without the padding value, which is zero).
WINDOW_F32 = {FLOAT: "tvmmcu_dot_win_f32"}
# Four output channels' windows, their weights ws apart (the argument after the weight pointer).
WINDOW4_F32 = {FLOAT: "tvmmcu_dot4_win_f32"}
# A window of taps, each a run of n values contiguous in the data and wc apart in the weights (an NHWC
# convolution's input channels), the taps inside only.
RUNS_F32 = {FLOAT: "tvmmcu_dot_runs_f32"}
RUNS4_F32 = {FLOAT: "tvmmcu_dot4_runs_f32"}
# n floats from contiguous src to every stride-th float of dst (stride 1: a copy).
SCATTER_F32 = "tvmmcu_dot_scatter_f32"

HEADER_TEXT = """\

/* Float32 dot products for the convolution and dense kernels of a float model: acc + sum of x * w over
 * the taps inside the input (zero padding adds nothing: its taps are left out). Plain C: VLDR and
 * VFMA with an FPU, the soft-float library without. Each channel adds its products in the order of the
 * loop it replaces. Always inlined: the sizes and strides are constants there, the accumulators stay
 * in registers, and four channels' weights are reached from one pointer by constant offsets. */
#ifndef TVMMCU_DOT_F32_H
#define TVMMCU_DOT_F32_H

#include <stdint.h>

#define TVMMCU_F32_INLINE static inline __attribute__((always_inline))
/* Window kernels of at most this many taps are unrolled where their taps inside are constants
 * (SplitBorders makes them so; passes/tir/dot_kernels.py WINDOW_UNROLL_TAPS). */
#define TVMMCU_F32_WIN_UNROLL 16
/* Whether the window's size and taps inside are compile-time constants (after inlining). */
#define TVMMCU_F32_KNOWN(kh, kw, y0, y1, x0, x1)                                               \\
  (__builtin_constant_p(kh) && __builtin_constant_p(kw) && __builtin_constant_p(y0) &&         \\
   __builtin_constant_p(y1) && __builtin_constant_p(x0) && __builtin_constant_p(x1) &&         \\
   (kh) * (kw) <= TVMMCU_F32_WIN_UNROLL)
/* One value v against the four channels' weights at p (ws apart). */
#define TVMMCU_F32_TAP4(v, p)          \\
  do {                                 \\
    const float v_ = (v);              \\
    const float *const p_ = (p);       \\
    a0 += v_ * p_[0];                  \\
    a1 += v_ * p_[ws];                 \\
    a2 += v_ * p_[2 * ws];             \\
    a3 += v_ * p_[3 * ws];             \\
  } while (0)

/* acc + sum over k < n of x[k] * w[k * wk]. A plain loop: one channel is the rare case (the channels
 * past the last block of four), kept small. */
TVMMCU_F32_INLINE float tvmmcu_dot_f32(const float *x, const float *w, int32_t wk, int32_t n, float acc) {
  for (int32_t k = 0; k < n; ++k) {
    acc += x[k] * w[k * wk];
  }
  return acc;
}

/* Four output channels: acc[j] + sum over k < n of x[k] * w[j * ws + k * wk]. Each value of x is
 * loaded once for the four channels: 9 instructions per 4 multiply-accumulates with an FPU. */
TVMMCU_F32_INLINE int32_t tvmmcu_dot4_f32(const float *x, const float *w, int32_t ws, int32_t wk, int32_t n,
                                          float *acc) {
  float a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    TVMMCU_F32_TAP4(x[k], w + k * wk);
    TVMMCU_F32_TAP4(x[k + 1], w + (k + 1) * wk);
    TVMMCU_F32_TAP4(x[k + 2], w + (k + 2) * wk);
    TVMMCU_F32_TAP4(x[k + 3], w + (k + 3) * wk);
  }
  for (; k < n; ++k) {
    TVMMCU_F32_TAP4(x[k], w + k * wk);
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}

/* A window of kh x kw taps, strided: tap (ry, rx) of the weights is w[ry * wsy + rx * wsx]; the taps
 * [y0, y1) x [x0, x1) lie inside the input, x pointing at tap (y0, x0); the others are zero padding and
 * left out. Unrolled where the taps inside are constants (SplitBorders' pieces), and for a small
 * window wholly inside. */
TVMMCU_F32_INLINE float tvmmcu_dot_win_f32(const float *x, int32_t xsy, int32_t xsx, const float *w,
                                           int32_t wsy, int32_t wsx, int32_t kh, int32_t kw, int32_t y0,
                                           int32_t y1, int32_t x0, int32_t x1, float acc) {
  if (TVMMCU_F32_KNOWN(kh, kw, y0, y1, x0, x1)) {
#pragma GCC unroll 16
    for (int32_t ry = 0; ry < kh; ++ry) {
#pragma GCC unroll 16
      for (int32_t rx = 0; rx < kw; ++rx) {
        if (ry >= y0 && ry < y1 && rx >= x0 && rx < x1) {
          acc += x[(ry - y0) * xsy + (rx - x0) * xsx] * w[ry * wsy + rx * wsx];
        }
      }
    }
    return acc;
  }
  if (__builtin_constant_p(kh) && __builtin_constant_p(kw) && kh * kw <= TVMMCU_F32_WIN_UNROLL && y0 == 0 &&
      x0 == 0 && y1 == kh && x1 == kw) {
    /* A small window wholly inside, its position known at run time only (a window per input channel
     * of an NCHW convolution, not split): every tap unrolled once. */
#pragma GCC unroll 16
    for (int32_t ry = 0; ry < kh; ++ry) {
#pragma GCC unroll 16
      for (int32_t rx = 0; rx < kw; ++rx) {
        acc += x[ry * xsy + rx * xsx] * w[ry * wsy + rx * wsx];
      }
    }
    return acc;
  }
  for (int32_t ry = y0; ry < y1; ++ry) {
    const float *xr = x + (ry - y0) * xsy;
    const float *wr = w + ry * wsy + x0 * wsx;
    for (int32_t rx = 0; rx < x1 - x0; ++rx) {
      acc += xr[rx * xsx] * wr[rx * wsx];
    }
  }
  return acc;
}

/* Four output channels of tvmmcu_dot_win_f32, their weights ws apart: each tap's value loaded once for
 * the four. Rows whose taps all lie inside (x0 = 0, x1 = kw, a constant) are unrolled. */
TVMMCU_F32_INLINE int32_t tvmmcu_dot4_win_f32(const float *x, int32_t xsy, int32_t xsx, const float *w,
                                              int32_t ws, int32_t wsy, int32_t wsx, int32_t kh, int32_t kw,
                                              int32_t y0, int32_t y1, int32_t x0, int32_t x1, float *acc) {
  float a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  if (TVMMCU_F32_KNOWN(kh, kw, y0, y1, x0, x1)) {
#pragma GCC unroll 16
    for (int32_t ry = 0; ry < kh; ++ry) {
#pragma GCC unroll 16
      for (int32_t rx = 0; rx < kw; ++rx) {
        if (ry >= y0 && ry < y1 && rx >= x0 && rx < x1) {
          TVMMCU_F32_TAP4(x[(ry - y0) * xsy + (rx - x0) * xsx], w + ry * wsy + rx * wsx);
        }
      }
    }
  } else if (__builtin_constant_p(kw) && kw <= TVMMCU_F32_WIN_UNROLL && x0 == 0 && x1 == kw) {
    for (int32_t ry = y0; ry < y1; ++ry) {
      const float *xr = x + (ry - y0) * xsy;
      const float *wr = w + ry * wsy;
#pragma GCC unroll 16
      for (int32_t rx = 0; rx < kw; ++rx) {
        TVMMCU_F32_TAP4(xr[rx * xsx], wr + rx * wsx);
      }
    }
  } else {
    for (int32_t ry = y0; ry < y1; ++ry) {
      const float *xr = x + (ry - y0) * xsy;
      const float *wr = w + ry * wsy + x0 * wsx;
      for (int32_t rx = 0; rx < x1 - x0; ++rx) {
        TVMMCU_F32_TAP4(xr[rx * xsx], wr + rx * wsx);
      }
    }
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}

/* A window of kh x kw taps, each a run of n values (a convolution's input channels): tap (ry, rx) reads
 * x at (ry - y0) * xsy + (rx - x0) * xsx + c (the taps [y0, y1) x [x0, x1) inside the input, x pointing
 * at tap (y0, x0)) and the weights at w + ry * wsy + rx * wsx + c * wc, c < n; the others are zero
 * padding and left out. */
TVMMCU_F32_INLINE float tvmmcu_dot_runs_f32(const float *x, int32_t xsy, int32_t xsx, const float *w,
                                            int32_t wsy, int32_t wsx, int32_t wc, int32_t kh, int32_t kw,
                                            int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                            float acc) {
  (void)kh;
  (void)kw;
  for (int32_t ry = y0; ry < y1; ++ry) {
    for (int32_t rx = x0; rx < x1; ++rx) {
      acc = tvmmcu_dot_f32(x + (ry - y0) * xsy + (rx - x0) * xsx, w + ry * wsy + rx * wsx, wc, n, acc);
    }
  }
  return acc;
}

/* Four output channels of tvmmcu_dot_runs_f32, their weights ws apart. */
TVMMCU_F32_INLINE int32_t tvmmcu_dot4_runs_f32(const float *x, int32_t xsy, int32_t xsx, const float *w,
                                               int32_t ws, int32_t wsy, int32_t wsx, int32_t wc, int32_t kh,
                                               int32_t kw, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                                               int32_t x1, float *acc) {
  (void)kh;
  (void)kw;
  for (int32_t ry = y0; ry < y1; ++ry) {
    for (int32_t rx = x0; rx < x1; ++rx) {
      tvmmcu_dot4_f32(x + (ry - y0) * xsy + (rx - x0) * xsx, w + ry * wsy + rx * wsx, ws, wc, n, acc);
    }
  }
  return 0;
}

/* n floats from src to every stride-th float of dst (they do not overlap: a staged output written
 * back; stride 1 is a copy), four a step. */
TVMMCU_F32_INLINE int32_t tvmmcu_dot_scatter_f32(float *dst, int32_t stride, const float *src, int32_t n) {
  int32_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const float v0 = src[k], v1 = src[k + 1], v2 = src[k + 2], v3 = src[k + 3];
    dst[0] = v0;
    dst[stride] = v1;
    dst[2 * stride] = v2;
    dst[3 * stride] = v3;
    dst += 4 * stride;
  }
  for (; k < n; ++k) {
    *dst = src[k];
    dst += stride;
  }
  return 0;
}

#undef TVMMCU_F32_TAP4
#undef TVMMCU_F32_KNOWN

#endif
"""
