"""Filterlet-sparse float32 convolution micro-kernels: a section of ``tvmmcu_dot.h``.

The float twin of :mod:`~tvm_mcu.passes.tir.sparse_kernels`: the same CSR over filterlets
(:func:`~tvm_mcu.passes.tir.sparse_kernels.compress_blob` over float32 OHWI weights: int16 row pointers
and uint8 taps, then the kept filterlets' float32 values from the next multiple of 8 bytes) and the same
layer set-up (``tvmmcu_sparse_setup``, which counts bytes: the strides, the run and the pixel stride
times 4, padding rows of zero bits, ``0.0f``) and block staging (``tvmmcu_sparse_stage_f32``:
``tvmmcu_sparse_stage``, which also returns the taps outside for all four pixels).

Bit-identical to the dense float kernels (``tvmmcu_dot_runs_f32``, ``tvmmcu_dot4_runs_f32``) over the
same weights: each output channel's accumulator adds its kept filterlets in tap order, each filterlet's
products in input-channel order, which is the dense kernels' order with the pruned filterlets left out.
A pruned filterlet's products are ``x * (+-0.0)``, which add exactly nothing to an accumulator that
started at ``+0.0`` or any non-zero value (an accumulator of adds from ``+0.0`` is never ``-0.0`` under
round-to-nearest), for finite data and weights; the same C expression ``acc += x * w`` is contracted to a
fused multiply-add (GCC's ``-ffp-contract=fast``) in both kernels or in neither (soft float).
``tvmmcu_sparse1p_blob_f32`` leaves the padding's taps out as the dense kernel does.
``tvmmcu_sparse4p_blob_f32`` skips the taps outside at all four pixels (``tvmmcu_sparse_stage_f32``
returns them) and reads a tap outside at some of them as the staged row of ``0.0f``, adding ``+-0.0``:
nothing, unless the accumulator is ``-0.0``, so SparseFilterlets takes it only for an accumulator that
starts at a constant other than ``-0.0``.
"""

from __future__ import annotations

from tvm_mcu.passes.tir.float_kernels import FLOAT

SPARSE1P_BLOB_F32 = {FLOAT: "tvmmcu_sparse1p_blob_f32"}
SPARSE4P_BLOB_F32 = {FLOAT: "tvmmcu_sparse4p_blob_f32"}
# Stages a block of four pixels for the float four-pixel kernel; returns the taps it skips.
STAGE_F32 = "tvmmcu_sparse_stage_f32"

HEADER_TEXT = """\
#ifndef TVMMCU_SPARSE_F32_H
#define TVMMCU_SPARSE_F32_H
/* Float32 filterlet CSR (passes/tir/sparse_float_kernels.py): the blob of the int8 format with float32
 * values. Each channel adds its kept filterlets' products in tap order, each in input-channel order: the
 * dense float kernels' order without the pruned (zero) filterlets, so the sums are bit-identical. */
#define TVMMCU_SPARSE_F32_BLOB                                                                     \\
  const int16_t *rows = (const int16_t *)(const void *)blob;                                       \\
  const uint8_t *taps = (const uint8_t *)(const void *)(rows + out_channels + 1);                  \\
  const float *vals = (const float *)(const void *)((const uint8_t *)(const void *)blob +          \\
                                                    ((2 * (out_channels + 1) + rows[out_channels] + 7) & ~7))

/* One output pixel of output channel o whose window may cross the padding: the taps inside are
 * [y0, y1) x [x0, x1), x at tap (y0, x0); a kept filterlet outside is left out (zero padding), as the
 * dense kernel leaves it out. pad: the padding's value, 0 (its bits: 0.0f). */
static inline float tvmmcu_sparse1p_blob_f32(const float *x, int32_t xsy, int32_t xsx, int32_t kw,
                                             const float *blob, int32_t out_channels, int32_t o, int32_t n,
                                             int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t pad,
                                             float acc) {
  TVMMCU_SPARSE_F32_BLOB;
  (void)pad;
  const int32_t last = rows[o + 1];
  const float *w = vals + rows[o] * n;
  for (int32_t f = rows[o]; f < last; ++f, w += n) {
    const int32_t t = taps[f];
    const int32_t ry = t / kw, rx = t % kw;
    if (ry < y0 || ry >= y1 || rx < x0 || rx >= x1) {
      continue;
    }
    const float *const xp = x + (ry - y0) * xsy + (rx - x0) * xsx;
    int32_t k = 0;
    for (; k + 4 <= n; k += 4) { /* in order: one accumulator */
      acc += xp[k] * w[k];
      acc += xp[k + 1] * w[k + 1];
      acc += xp[k + 2] * w[k + 2];
      acc += xp[k + 3] * w[k + 3];
    }
    for (; k < n; ++k) {
      acc += xp[k] * w[k];
    }
  }
  return acc;
}

/* tvmmcu_sparse_stage for float data (the offsets d_p, ps and n in bytes, as there; floats are
 * word-aligned: the stage copies words): the same table of a pointer per tap, in place, at the padding
 * rows where the tap lies outside for all four pixels, else staged. Returns the mask of the taps outside
 * for all four (bit t), which tvmmcu_sparse4p_blob_f32 skips: the dense kernel adds nothing for a padding
 * tap either. */
static inline int32_t tvmmcu_sparse_stage_f32(void *buf, const void *x, int32_t d0, int32_t d1, int32_t d2,
                                              int32_t d3, int32_t m0, int32_t m1, int32_t m2, int32_t m3,
                                              const int32_t *state, int32_t kk, int32_t ps, int32_t n) {
  (void)tvmmcu_sparse_stage(buf, x, d0, d1, d2, d3, m0, m1, m2, m3, state, kk, ps, n);
  const uint32_t taps = kk >= 32 ? 0xffffffffu : (1u << kk) - 1u;
  return (int32_t)(~((uint32_t)m0 | (uint32_t)m1 | (uint32_t)m2 | (uint32_t)m3) & taps);
}

/* Four consecutive output pixels of output channel o from tvmmcu_sparse_stage_f32's buffer (tap t of the
 * first pixel at table[t], the others ps bytes apart; a tap outside at some of the four reads the padding
 * row of 0.0f there) and its mask of taps outside at all four (skipped): acc[p] += the kept filterlets'
 * products. Each weight is loaded once for the four pixels: 5 loads and 4 multiply-accumulates per
 * weight, as the dense four-channel kernel's per value; eight weights a step. */
static inline __attribute__((always_inline)) int32_t
tvmmcu_sparse4p_blob_f32(const void *buf, int32_t outside, int32_t ps, const float *blob,
                         int32_t out_channels, int32_t o, int32_t n, float *acc) {
  TVMMCU_SPARSE_F32_BLOB;
  const uint8_t *const *const at = (const uint8_t *const *)buf;
  float a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const int32_t last = rows[o + 1];
  const float *w = vals + rows[o] * n;
  for (int32_t f = rows[o]; f < last; ++f, w += n) {
    const int32_t t = taps[f];
    if ((((uint32_t)outside >> t) & 1u) != 0u) {
      continue;
    }
    const uint8_t *const q = at[t];
    const float *const q0 = (const float *)(const void *)q;
    const float *const q1 = (const float *)(const void *)(q + ps);
    const float *const q2 = (const float *)(const void *)(q + 2 * ps);
    const float *const q3 = (const float *)(const void *)(q + 3 * ps);
    int32_t k = 0;
#define TVMMCU_SPARSE_F32_TAP(k)  \\
  do {                            \\
    const float wk = w[k];        \\
    a0 += q0[k] * wk;             \\
    a1 += q1[k] * wk;             \\
    a2 += q2[k] * wk;             \\
    a3 += q3[k] * wk;             \\
  } while (0)
    for (; k + 8 <= n; k += 8) {
      TVMMCU_SPARSE_F32_TAP(k);
      TVMMCU_SPARSE_F32_TAP(k + 1);
      TVMMCU_SPARSE_F32_TAP(k + 2);
      TVMMCU_SPARSE_F32_TAP(k + 3);
      TVMMCU_SPARSE_F32_TAP(k + 4);
      TVMMCU_SPARSE_F32_TAP(k + 5);
      TVMMCU_SPARSE_F32_TAP(k + 6);
      TVMMCU_SPARSE_F32_TAP(k + 7);
    }
    for (; k < n; ++k) {
      TVMMCU_SPARSE_F32_TAP(k);
    }
#undef TVMMCU_SPARSE_F32_TAP
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}

#endif /* TVMMCU_SPARSE_F32_H */
"""
