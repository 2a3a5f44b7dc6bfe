"""Filterlet-sparse convolution micro-kernels (DTMM): a section of ``tvmmcu_dot.h``.

A *filterlet* is one output channel's weights at one kernel tap over all its input channels,
``W[o, ry, rx, :]`` of OHWI weights: ``n`` contiguous values, as a tap's input channels are contiguous in
NHWC data. A layer whose pruned filterlets are all zero is stored as CSR over filterlets
(:func:`compress`): the kept filterlets' values back to back, per kept filterlet its tap ``ry * kw + rx``
(uint8: a window has at most 256 taps) and per output channel the index of its first kept filterlet
(int16, ``O + 1`` of them): the kept weights plus 1 byte per kept filterlet and 2 per output channel,
DTMM's format with the narrowest tap index (DTMM stores an int16 offset).

The kernels visit only kept filterlets. ``tvmmcu_sparse4p_*`` computes one output channel at four
output pixels at once (CMSIS-NN's four-column mat-mul, which DTMM's sparse kernel derives from), so each
filterlet's weights are widened once for four pixels and the data once per weight, as the dense
four-channel kernels do the other way round. Its four pixels are consecutive in the flattened output,
anywhere: per block, ``tvmmcu_sparse_stage`` points each tap at the four pixels' data, in the input where
they lie inside one pixel stride apart, and otherwise (a tap on the border, or a block across two rows)
at padding rows where the tap lies outside for all four pixels, else at copies made once per block, a
pixel's tap outside copied from the padding (CMSIS-NN's im2col, for those taps only), so the border keeps
the four-pixel kernel. ``tvmmcu_sparse_setup`` builds the layer's tap offsets and padding rows once.
``tvmmcu_sparse1p_*`` computes one pixel whose window may cross the padding (the taps outside add
``pad`` times their weights): the nests SparseFilterlets takes no blocks from (a channel slice's, or
fewer than four pixels).
"""

from __future__ import annotations

import numpy as np

# C function for (data dtype, weight dtype).
SPARSE1P = {("int8", "int8"): "tvmmcu_sparse1p_s8s8", ("uint8", "int8"): "tvmmcu_sparse1p_u8s8"}
SPARSE1P_BLOB = {
    ("int8", "int8"): "tvmmcu_sparse1p_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_sparse1p_blob_u8s8",
}
SPARSE4P_BLOB = {
    ("int8", "int8"): "tvmmcu_sparse4p_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_sparse4p_blob_u8s8",
}


def filterlets_kept(weights: np.ndarray) -> np.ndarray:
    """``[O, KH * KW]`` bool: which filterlets of OHWI ``weights`` hold a non-zero value."""
    o = weights.shape[0]
    return np.asarray(np.asarray(weights).reshape(o, -1, weights.shape[-1]).any(axis=2))


def compress(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR over the filterlets of OHWI ``weights``, with the narrowest index types that hold every
    window and layer of a microcontroller's CNN: (values [kept * n] of the weights' type, taps [kept]
    uint8 (``ry * kw + rx``: a window of at most 256 taps), rows [O + 1] int16 (output channel o's
    filterlets are ``rows[o]`` to ``rows[o + 1] - 1``)). Raises ValueError when an index does not fit."""
    o, n = weights.shape[0], weights.shape[-1]
    w = np.asarray(weights).reshape(o, -1, n)
    kept = filterlets_kept(weights)
    taps = np.nonzero(kept)[1]
    counts = kept.sum(axis=1)
    rows = np.concatenate([[0], np.cumsum(counts)])
    if rows[-1] > np.iinfo(np.int16).max or w.shape[1] > np.iinfo(np.uint8).max + 1:
        raise ValueError(
            f"{int(rows[-1])} kept filterlets of windows of {w.shape[1]} taps: indices beyond int16 rows "
            "or uint8 taps"
        )
    values = w[kept].reshape(-1)
    return values, taps.astype(np.uint8), rows.astype(np.int16)


def compress_blob(weights: np.ndarray) -> np.ndarray:
    """:func:`compress`'s three arrays as one int8 array (what the weight parameter of a convolution
    stored sparse holds): rows, taps, zeros to the next multiple of 8 bytes, values (int8, or the bytes
    of float32 weights' values, little-endian: ``sparse_float_kernels``)."""
    values, taps, rows = compress(weights)
    head = np.concatenate([rows.astype("<i2").view(np.int8), taps.view(np.int8)])
    gap = (-head.size) % 8
    data = values.astype("<f4").view(np.int8) if values.dtype == np.float32 else values.astype(np.int8)
    return np.concatenate([head, np.zeros(gap, np.int8), data])


HEADER_TEXT = """\
#ifndef TVMMCU_SPARSE_H
#define TVMMCU_SPARSE_H
/* Filterlet-sparse convolution (passes/tir/sparse_kernels.py): output channel o keeps the filterlets
 * rows[o] .. rows[o + 1] - 1 (int16); filterlet f is tap taps[f] = ry * kw + rx (uint8) of the window,
 * with the n values vals[f * n] .. vals[f * n + n - 1] (one per input channel). The window's tap
 * (ry, rx) is at ry * xsy + rx * xsx bytes from its first tap. */

/* A layer's tap offsets and padding rows, for tvmmcu_sparse_stage: built once per layer into state
 * (TVMMCU_SPARSE_STATE_WORDS): state[1 + t] the byte offset ry * xsy + rx * xsx of tap t = ry * kw + rx in
 * a window, state[0] those offsets ORed (their alignment), then 3 * ps + n bytes of pad: four padding rows
 * ps bytes apart, which a tap outside the input for all four pixels of a block reads. */
#define TVMMCU_SPARSE_STATE_WORDS(kk, n, ps) (1 + (kk) + (3 * (ps) + (n) + 3) / 4)
static inline int32_t tvmmcu_sparse_setup(int32_t *state, int32_t kh, int32_t kw, int32_t xsy, int32_t xsx,
                                          int32_t n, int32_t ps, int32_t pad) {
  uint32_t any = 0u;
  for (int32_t ry = 0; ry < kh; ++ry) {
    for (int32_t rx = 0; rx < kw; ++rx) {
      state[1 + ry * kw + rx] = ry * xsy + rx * xsx;
      any |= (uint32_t)(ry * xsy + rx * xsx);
    }
  }
  state[0] = (int32_t)any;
  memset(state + 1 + kh * kw, pad, (size_t)(3 * ps + n));
  return 0;
}

/* The taps of a window inside the input, rows [y0, y1) and columns [x0, x1): bit ry * kw + rx (a
 * window of at most 32 taps). */
static inline int32_t tvmmcu_sparse_inside(int32_t y0, int32_t y1, int32_t x0, int32_t x1, int32_t kw) {
  const uint32_t row = x1 > x0 ? (0xffffffffu >> (32 - (x1 - x0))) << x0 : 0u;
  uint32_t m = 0u;
  for (int32_t ry = y0; ry < y1; ++ry) {
    m |= row << (ry * kw);
  }
  return (int32_t)m;
}

/* The bytes of tvmmcu_sparse_stage's buffer: a pointer per tap (8 bytes each, whatever the pointer
 * size), then four staged pixels ps bytes apart for each of the most taps a block copies (at most kk). */
#define TVMMCU_SPARSE_STAGE_BYTES(kk, copies, ps) (8 * (kk) + 4 * (copies) * (ps))

/* Where tvmmcu_sparse4p_* reads four consecutive output pixels: pixel p's window at x + d_p (tap t at
 * x + d_p + state[1 + t]), bit t of m_p set where that tap lies inside the input. For each tap t, buf's
 * table gets a pointer to the first pixel's data, the others ps, 2 ps, 3 ps bytes after it: in the input
 * where the four pixels' taps lie inside ps bytes apart (a block in one row), at the padding rows where
 * the tap lies outside for all four, else at four copies in buf (a pixel's tap outside copied from the
 * padding row), the copies back to back: once per block for all output channels, and only the taps that
 * need it (a border column's, or those inside of a block across two rows). Returns whether every
 * pointer and ps are word-aligned. */
static __attribute__((noinline, unused)) int32_t
tvmmcu_sparse_stage(void *buf, const void *x, int32_t d0, int32_t d1, int32_t d2, int32_t d3, int32_t m0,
                    int32_t m1, int32_t m2, int32_t m3, const int32_t *state, int32_t kk, int32_t ps,
                    int32_t n) {
  const int32_t d[4] = {d0, d1, d2, d3};
  const uint32_t m[4] = {(uint32_t)m0, (uint32_t)m1, (uint32_t)m2, (uint32_t)m3};
  const uint8_t *const xb = (const uint8_t *)x;
  const uint8_t *const pad = (const uint8_t *)(state + 1 + kk);
  const uint8_t **const table = (const uint8_t **)buf;
  uint8_t *const data = (uint8_t *)buf + 8 * kk;
  const uint32_t spread = (uint32_t)(uintptr_t)x | (uint32_t)d0 | (uint32_t)d1 | (uint32_t)d2 | (uint32_t)d3 |
                          (uint32_t)state[0] | (uint32_t)ps | (uint32_t)n;
  const int words = (spread & 3u) == 0u;
  const uint32_t row = d1 == d0 + ps && d2 == d1 + ps && d3 == d2 + ps ? (uint32_t)(m0 & m1 & m2 & m3) : 0u;
  const uint32_t some = (uint32_t)(m0 | m1 | m2 | m3);
  uint8_t *out = data;
  for (int32_t t = 0; t < kk; ++t) {
    if (((row >> t) & 1u) != 0u) {
      table[t] = xb + (d0 + state[1 + t]);
      continue;
    }
    if (((some >> t) & 1u) == 0u) {
      table[t] = pad;
      continue;
    }
    table[t] = out;
    for (int32_t p = 0; p < 4; ++p, out += ps) {
      const uint8_t *const src = ((m[p] >> t) & 1u) != 0u ? xb + (d[p] + state[1 + t]) : pad;
      int32_t k = 0;
      if (words) { /* 16 bytes per step */
        for (; k + 16 <= n; k += 16) {
          uint32_t v[4];
          memcpy(v, src + k, 16);
          memcpy(out + k, v, 16);
        }
      }
      for (; k + 4 <= n; k += 4) {
        const uint32_t v = tvmmcu_dot_word(src + k);
        memcpy(out + k, &v, 4);
      }
      for (; k < n; ++k) {
        out[k] = src[k];
      }
    }
  }
  return words;
}

/* Four output pixels of one output channel, tap t of the first at table[t] (tvmmcu_sparse_stage's), the
 * others ps bytes apart: acc[p] += sum over the channel's filterlets f and k < n of
 * table[taps[f]][p * ps + k] * vals[f * n + k]; aligned: tvmmcu_sparse_stage's result.
 * With the DSP extension, each 8 values of a filterlet are widened once (SXTB16) for the four pixels
 * (ps constant where inlined: immediate offsets, no register per pixel): 41 instructions per 32
 * multiply-accumulates. */
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__) && !defined(__clang__)
/* TVMMCU_DOT_LDRD with the address as a memory operand of GCC's "Uz" constraint (an LDC/STC address: a
 * base register and an immediate multiple of 4 within 1020, which LDRD takes too): a constant pixel
 * offset folds into the load instead of an addition per pixel. */
#define TVMMCU_SPARSE_LDRD(p, lo, hi) \
  __asm__ volatile("ldrd %0, %1, %2" : "=r"(lo), "=r"(hi) : "Uz"(*(const tvmmcu_dot_8_t *)(p)))
#elif defined(__ARM_FEATURE_DSP)
#define TVMMCU_SPARSE_LDRD(p, lo, hi) TVMMCU_DOT_LDRD(p, lo, hi)
#endif
TVMMCU_DOT_INLINE int32_t tvmmcu_sparse4p_x8s8(const void *table, int32_t ps, int32_t aligned,
                                               const int8_t *vals, const uint8_t *taps, int32_t first,
                                               int32_t last, int32_t n, int32_t *acc, int x_unsigned) {
  const uint8_t *const *const at = (const uint8_t *const *)table;
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const int8_t *w = vals + first * n;
#if defined(__ARM_FEATURE_DSP)
  /* Whole words at word-aligned addresses: one LDRD per pixel and 8 values. The weights of consecutive
   * kept filterlets follow each other: one pointer walks them all. */
  if (aligned != 0 && (((uint32_t)(uintptr_t)w | (uint32_t)n) & 3u) == 0u && (n & 7) == 0 && n > 0) {
    for (int32_t f = first; f < last; ++f) {
      const uint8_t *q = at[taps[f]];
      const int8_t *const end = w + n;
      do {
        uint32_t b0, b1, lo, hi;
        TVMMCU_DOT_LDRD_NEXT(w, b0, b1);
        const uint32_t w0 = tvmmcu_dot_s02(b0), w1 = tvmmcu_dot_s13(b0);
        const uint32_t w2 = tvmmcu_dot_s02(b1), w3 = tvmmcu_dot_s13(b1);
#define TVMMCU_SPARSE_PIXEL(acc, off)                                                   \
  TVMMCU_SPARSE_LDRD(q + (off), lo, hi);                                                \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(lo) : tvmmcu_dot_s02(lo), w0, acc); \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(lo) : tvmmcu_dot_s13(lo), w1, acc); \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(hi) : tvmmcu_dot_s02(hi), w2, acc); \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(hi) : tvmmcu_dot_s13(hi), w3, acc)
        TVMMCU_SPARSE_PIXEL(a0, 0);
        TVMMCU_SPARSE_PIXEL(a1, ps);
        TVMMCU_SPARSE_PIXEL(a2, 2 * ps);
        TVMMCU_SPARSE_PIXEL(a3, 3 * ps);
#undef TVMMCU_SPARSE_PIXEL
        q += 8;
      } while (w != end);
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    return 0;
  }
#endif
  (void)aligned;
  /* Each weight loaded once for the four pixels; products wrap modulo 2**32 as the dense kernels'. */
  for (int32_t f = first; f < last; ++f, w += n) {
    const uint8_t *const q = at[taps[f]];
    const int8_t *const qs = (const int8_t *)q;
    for (int32_t k = 0; k < n; ++k) {
      const int32_t wk = w[k];
#define TVMMCU_SPARSE_TAP(acc, off)                                                               \
  acc = (int32_t)((uint32_t)acc +                                                               \
                  (uint32_t)((x_unsigned ? (int32_t)q[(off) + k] : (int32_t)qs[(off) + k]) * wk))
      TVMMCU_SPARSE_TAP(a0, 0);
      TVMMCU_SPARSE_TAP(a1, ps);
      TVMMCU_SPARSE_TAP(a2, 2 * ps);
      TVMMCU_SPARSE_TAP(a3, 3 * ps);
#undef TVMMCU_SPARSE_TAP
    }
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}

TVMMCU_DOT_INLINE int32_t tvmmcu_sparse4p_s8s8(const void *table, int32_t ps, int32_t aligned,
                                               const int8_t *vals, const uint8_t *taps, int32_t first,
                                               int32_t last, int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_x8s8(table, ps, aligned, vals, taps, first, last, n, acc, 0);
}

TVMMCU_DOT_INLINE int32_t tvmmcu_sparse4p_u8s8(const void *table, int32_t ps, int32_t aligned,
                                               const int8_t *vals, const uint8_t *taps, int32_t first,
                                               int32_t last, int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_x8s8(table, ps, aligned, vals, taps, first, last, n, acc, 1);
}

/* One output pixel of one output channel whose window may cross the padding: the taps inside are
 * [y0, y1) x [x0, x1), x at tap (y0, x0); a filterlet outside adds pad times its weights. */
static inline int32_t tvmmcu_sparse1p_x8s8(const void *x, int32_t xsy, int32_t xsx, int32_t kw,
                                           const int8_t *vals, const uint8_t *taps, int32_t first,
                                           int32_t last, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                                           int32_t x1, int32_t pad, int32_t acc, int x_unsigned) {
  uint32_t a = (uint32_t)acc;
  const int8_t *w = vals + first * n;
  for (int32_t f = first; f < last; ++f, w += n) {
    const int32_t t = taps[f];
    const int32_t ry = t / kw, rx = t % kw;
    if (ry < y0 || ry >= y1 || rx < x0 || rx >= x1) {
      a = (uint32_t)tvmmcu_dot_sum_s8(w, n, pad, (int32_t)a);
      continue;
    }
    const uint8_t *xp = (const uint8_t *)x + (ry - y0) * xsy + (rx - x0) * xsx;
    a = (uint32_t)(x_unsigned ? tvmmcu_dot_u8s8(xp, w, n, (int32_t)a)
                              : tvmmcu_dot_s8s8((const int8_t *)xp, w, n, (int32_t)a));
  }
  return (int32_t)a;
}

static inline int32_t tvmmcu_sparse1p_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                           const int8_t *vals, const uint8_t *taps, int32_t first,
                                           int32_t last, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                                           int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_x8s8(x, xsy, xsx, kw, vals, taps, first, last, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_sparse1p_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                           const int8_t *vals, const uint8_t *taps, int32_t first,
                                           int32_t last, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                                           int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_x8s8(x, xsy, xsx, kw, vals, taps, first, last, n, y0, y1, x0, x1, pad, acc, 1);
}

/* The same over one blob (compress_blob: rows, taps, then the values at the next multiple of 8 bytes),
 * out_channels rows: what a convolution's weight parameter holds when stored sparse. */
#define TVMMCU_SPARSE_BLOB                                                          \
  const int16_t *rows = (const int16_t *)(const void *)blob;                        \
  const uint8_t *taps = (const uint8_t *)(const void *)(rows + out_channels + 1);   \
  const int8_t *vals = blob + ((2 * (out_channels + 1) + rows[out_channels] + 7) & ~7)
static inline int32_t tvmmcu_sparse1p_blob_x8s8(const void *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                const int8_t *blob, int32_t out_channels, int32_t o,
                                                int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                int32_t pad, int32_t acc, int x_unsigned) {
  TVMMCU_SPARSE_BLOB;
  return tvmmcu_sparse1p_x8s8(x, xsy, xsx, kw, vals, taps, rows[o], rows[o + 1], n, y0, y1, x0, x1, pad, acc,
                              x_unsigned);
}

/* Four consecutive pixels of output channel o over the blob, from tvmmcu_sparse_stage's buffer (aligned:
 * its result). The data's type only names the kernel: the pixels are read through the buffer's table. */
TVMMCU_DOT_INLINE int32_t tvmmcu_sparse4p_blob_x8s8(const void *buf, int32_t aligned, int32_t ps,
                                                    const int8_t *blob, int32_t out_channels, int32_t o,
                                                    int32_t n, int32_t *acc, int x_unsigned) {
  TVMMCU_SPARSE_BLOB;
  return tvmmcu_sparse4p_x8s8(buf, ps, aligned, vals, taps, rows[o], rows[o + 1], n, acc, x_unsigned);
}

TVMMCU_DOT_INLINE int32_t tvmmcu_sparse4p_blob_s8s8(const void *buf, int32_t aligned, int32_t ps,
                                                    const int8_t *blob, int32_t out_channels, int32_t o,
                                                    int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_blob_x8s8(buf, aligned, ps, blob, out_channels, o, n, acc, 0);
}

TVMMCU_DOT_INLINE int32_t tvmmcu_sparse4p_blob_u8s8(const void *buf, int32_t aligned, int32_t ps,
                                                    const int8_t *blob, int32_t out_channels, int32_t o,
                                                    int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_blob_x8s8(buf, aligned, ps, blob, out_channels, o, n, acc, 1);
}

static inline int32_t tvmmcu_sparse1p_blob_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                const int8_t *blob, int32_t out_channels, int32_t o,
                                                int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_sparse1p_blob_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                const int8_t *blob, int32_t out_channels, int32_t o,
                                                int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 1);
}

#endif /* TVMMCU_SPARSE_H */
"""
