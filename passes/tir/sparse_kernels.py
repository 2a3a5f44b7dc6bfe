"""Filterlet-sparse convolution micro-kernels (DTMM): a section of ``tvmmcu_dot.h``.

A *filterlet* is one output channel's weights at one kernel tap over all its input channels,
``W[o, ry, rx, :]`` of OHWI weights: ``n`` contiguous values, as a tap's input channels are contiguous in
NHWC data. A layer whose pruned filterlets are all zero is stored as CSR over filterlets
(:func:`compress`): the kept filterlets' values back to back, per kept filterlet its tap ``ry * kw + rx``
(int16) and per output channel the index of its first kept filterlet (int16, ``O + 1`` of them): the
kept weights plus 2 bytes per kept filterlet and per output channel, DTMM's format.

The kernels visit only kept filterlets. ``tvmmcu_sparse4p_*`` computes one output channel at four
output pixels of a row at once (CMSIS-NN's four-column mat-mul, which DTMM's sparse kernel derives
from, without its im2col buffer: the four windows lie inside the input and are read where they are),
so each filterlet's weights are widened once for four pixels and the data once per weight, as the dense
four-channel kernels do the other way round; ``tvmmcu_sparse1p_*`` one pixel whose window may cross
the padding (the taps outside add ``pad`` times their weights).
"""

from __future__ import annotations

import numpy as np

# C function for (data dtype, weight dtype).
SPARSE4P = {("int8", "int8"): "tvmmcu_sparse4p_s8s8", ("uint8", "int8"): "tvmmcu_sparse4p_u8s8"}
SPARSE1P = {("int8", "int8"): "tvmmcu_sparse1p_s8s8", ("uint8", "int8"): "tvmmcu_sparse1p_u8s8"}
SPARSE1P_BLOB = {
    ("int8", "int8"): "tvmmcu_sparse1p_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_sparse1p_blob_u8s8",
}
SPARSE1P_EDGE = {
    ("int8", "int8"): "tvmmcu_sparse1p_edge_s8s8",
    ("uint8", "int8"): "tvmmcu_sparse1p_edge_u8s8",
}
SPARSE4P_BLOB = {
    ("int8", "int8"): "tvmmcu_sparse4p_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_sparse4p_blob_u8s8",
}
# Output pixels per call of the four-pixel kernel.
PIXELS = 4


def filterlets_kept(weights: np.ndarray) -> np.ndarray:
    """``[O, KH * KW]`` bool: which filterlets of OHWI ``weights`` hold a non-zero value."""
    o = weights.shape[0]
    return np.asarray(np.asarray(weights).reshape(o, -1, weights.shape[-1]).any(axis=2))


def compress(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR over the filterlets of OHWI ``weights``: (values [kept * n] of the weights' type, taps
    [kept] int16 (``ry * kw + rx``), rows [O + 1] int16 (output channel o's filterlets are
    ``rows[o]`` to ``rows[o + 1] - 1``)). Raises ValueError when an index does not fit int16."""
    o, n = weights.shape[0], weights.shape[-1]
    w = np.asarray(weights).reshape(o, -1, n)
    kept = filterlets_kept(weights)
    taps = np.nonzero(kept)[1]
    counts = kept.sum(axis=1)
    rows = np.concatenate([[0], np.cumsum(counts)])
    if rows[-1] > np.iinfo(np.int16).max or w.shape[1] > np.iinfo(np.int16).max:
        raise ValueError(f"{int(rows[-1])} kept filterlets of {w.shape[1]} taps: indices beyond int16")
    values = w[kept].reshape(-1)
    return values, taps.astype(np.int16), rows.astype(np.int16)


def compress_blob(weights: np.ndarray) -> np.ndarray:
    """:func:`compress`'s three arrays as one int8 array (what the weight parameter of a convolution
    stored sparse holds): rows, taps, zeros to the next multiple of 8 bytes, values."""
    values, taps, rows = compress(weights)
    head = np.concatenate([rows, taps]).astype("<i2").view(np.int8)
    gap = (-head.size) % 8
    return np.concatenate([head, np.zeros(gap, np.int8), values.astype(np.int8)])


HEADER_TEXT = """\
#ifndef TVMMCU_SPARSE_H
#define TVMMCU_SPARSE_H
/* Filterlet-sparse convolution (passes/tir/sparse_kernels.py): output channel o keeps the filterlets
 * rows[o] .. rows[o + 1] - 1; filterlet f is tap taps[f] = ry * kw + rx of the window with the n values
 * vals[f * n] .. vals[f * n + n - 1] (one per input channel). The window's tap (ry, rx) is at
 * ry * xsy + rx * xsx bytes from its first tap. */

/* Tap t's byte offset in the window: from the table at, or (without one) from the window's strides,
 * kw a constant where the call is inlined (a multiply, no division). */
#define TVMMCU_SPARSE_AT(t) (at != 0 ? (int32_t)at[(t)] : ((t) / kw) * xsy + ((t) % kw) * xsx)

/* Four output pixels of one output channel, their windows ps bytes apart and wholly inside the input:
 * acc[p] += sum over the channel's filterlets f and k < n of x[p * ps + at[taps[f]] + k] * vals[f * n + k],
 * at[t] the byte offset of tap t in the window (ry * xsy + rx * xsx, a table of the layer's kh * kw taps,
 * computed at compile time: no division per filterlet).
 * With the DSP extension, each 8 values of a filterlet are widened once (SXTB16) for the four pixels:
 * the dense four-channel kernels' 43 instructions per 32 multiply-accumulates. */
static inline int32_t tvmmcu_sparse4p_x8s8(const void *x, int32_t ps, const int16_t *at, const int8_t *vals,
                                           const int16_t *taps, int32_t first, int32_t last, int32_t n,
                                           int32_t *acc, int x_unsigned, int32_t xsy, int32_t xsx,
                                           int32_t kw) {
  int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
  const int8_t *w = vals + first * n;
#if defined(__ARM_FEATURE_DSP)
  /* Whole words at word-aligned addresses: one LDRD per pixel and 8 values. */
  const int aligned =
      ((((uint32_t)(uintptr_t)x) | (uint32_t)ps | (uint32_t)(uintptr_t)w | (uint32_t)n) & 3u) == 0u;
  if (aligned && (n & 7) == 0 && n > 0) {
    /* The common case (input channels a multiple of 8): the weights of consecutive kept filterlets
     * follow each other, so one pointer walks them all; nothing per filterlet but its data pointer. */
    for (int32_t f = first; f < last; ++f) {
      const uint8_t *q = (const uint8_t *)x + TVMMCU_SPARSE_AT(taps[f]);
      const uint8_t *const end = q + n;
      do {
        uint32_t b0, b1, lo, hi;
        TVMMCU_DOT_LDRD_NEXT(w, b0, b1);
        const uint32_t w0 = tvmmcu_dot_s02(b0), w1 = tvmmcu_dot_s13(b0);
        const uint32_t w2 = tvmmcu_dot_s02(b1), w3 = tvmmcu_dot_s13(b1);
#define TVMMCU_SPARSE_PIXEL(acc, off)                                                   \
  TVMMCU_DOT_LDRD(q + (off), lo, hi);                                                   \
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
      } while (q != end);
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    return 0;
  }
#endif
  for (int32_t f = first; f < last; ++f) {
    const uint8_t *xp = (const uint8_t *)x + TVMMCU_SPARSE_AT(taps[f]);
    int32_t k = 0;
#if defined(__ARM_FEATURE_DSP)
    if (aligned) {
      const int8_t *wp = w;
      for (; k + 8 <= n; k += 8) {
        uint32_t b0, b1, lo, hi;
        TVMMCU_DOT_LDRD_NEXT(wp, b0, b1);
        const uint32_t w0 = tvmmcu_dot_s02(b0), w1 = tvmmcu_dot_s13(b0);
        const uint32_t w2 = tvmmcu_dot_s02(b1), w3 = tvmmcu_dot_s13(b1);
        const uint8_t *q = xp + k;
#define TVMMCU_SPARSE_PIXEL(acc, at)                                                    \
  TVMMCU_DOT_LDRD(q + (at), lo, hi);                                                    \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(lo) : tvmmcu_dot_s02(lo), w0, acc); \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(lo) : tvmmcu_dot_s13(lo), w1, acc); \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(hi) : tvmmcu_dot_s02(hi), w2, acc); \
  acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(hi) : tvmmcu_dot_s13(hi), w3, acc)
        TVMMCU_SPARSE_PIXEL(a0, 0);
        TVMMCU_SPARSE_PIXEL(a1, ps);
        TVMMCU_SPARSE_PIXEL(a2, 2 * ps);
        TVMMCU_SPARSE_PIXEL(a3, 3 * ps);
#undef TVMMCU_SPARSE_PIXEL
      }
    } else {
      for (; k + 8 <= n; k += 8) {
        const uint32_t b0 = tvmmcu_dot_word(w + k), b1 = tvmmcu_dot_word(w + k + 4);
        const uint32_t w0 = tvmmcu_dot_s02(b0), w1 = tvmmcu_dot_s13(b0);
        const uint32_t w2 = tvmmcu_dot_s02(b1), w3 = tvmmcu_dot_s13(b1);
#define TVMMCU_SPARSE_PIXEL(acc, at)                                                          \
  do {                                                                                          \
    const uint32_t lo = tvmmcu_dot_word(xp + (at) + k), hi = tvmmcu_dot_word(xp + (at) + k + 4); \
    acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(lo) : tvmmcu_dot_s02(lo), w0, acc);       \
    acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(lo) : tvmmcu_dot_s13(lo), w1, acc);       \
    acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u02(hi) : tvmmcu_dot_s02(hi), w2, acc);       \
    acc = tvmmcu_dot_smlad(x_unsigned ? tvmmcu_dot_u13(hi) : tvmmcu_dot_s13(hi), w3, acc);       \
  } while (0)
        TVMMCU_SPARSE_PIXEL(a0, 0);
        TVMMCU_SPARSE_PIXEL(a1, ps);
        TVMMCU_SPARSE_PIXEL(a2, 2 * ps);
        TVMMCU_SPARSE_PIXEL(a3, 3 * ps);
#undef TVMMCU_SPARSE_PIXEL
      }
    }
#endif
    for (; k < n; ++k) {
      const int32_t wk = w[k];
      const int8_t *xs = (const int8_t *)xp;
#define TVMMCU_SPARSE_TAP(acc, at)                                                         \
  acc = (int32_t)((uint32_t)acc +                                                        \
                  (uint32_t)((x_unsigned ? (int32_t)xp[(at) + k] : (int32_t)xs[(at) + k]) * wk))
      TVMMCU_SPARSE_TAP(a0, 0);
      TVMMCU_SPARSE_TAP(a1, ps);
      TVMMCU_SPARSE_TAP(a2, 2 * ps);
      TVMMCU_SPARSE_TAP(a3, 3 * ps);
#undef TVMMCU_SPARSE_TAP
    }
    w += n;
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return 0;
}

static inline int32_t tvmmcu_sparse4p_s8s8(const int8_t *x, int32_t ps, const int16_t *at, const int8_t *vals,
                                           const int16_t *taps, int32_t first, int32_t last, int32_t n,
                                           int32_t *acc) {
  return tvmmcu_sparse4p_x8s8(x, ps, at, vals, taps, first, last, n, acc, 0, 0, 0, 1);
}

static inline int32_t tvmmcu_sparse4p_u8s8(const uint8_t *x, int32_t ps, const int16_t *at,
                                           const int8_t *vals, const int16_t *taps, int32_t first,
                                           int32_t last, int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_x8s8(x, ps, at, vals, taps, first, last, n, acc, 1, 0, 0, 1);
}

/* One output pixel of one output channel whose window may cross the padding: the taps inside are
 * [y0, y1) x [x0, x1), x at tap (y0, x0); a filterlet outside adds pad times its weights. */
static inline int32_t tvmmcu_sparse1p_x8s8(const void *x, int32_t xsy, int32_t xsx, int32_t kw,
                                           const int8_t *vals, const int16_t *taps, int32_t first,
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
                                           const int8_t *vals, const int16_t *taps, int32_t first,
                                           int32_t last, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                                           int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_x8s8(x, xsy, xsx, kw, vals, taps, first, last, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_sparse1p_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                           const int8_t *vals, const int16_t *taps, int32_t first,
                                           int32_t last, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                                           int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_x8s8(x, xsy, xsx, kw, vals, taps, first, last, n, y0, y1, x0, x1, pad, acc, 1);
}

/* The same over one blob (compress_blob: rows, taps, then the values at the next multiple of 8 bytes),
 * out_channels rows: what a convolution's weight parameter holds when stored sparse. */
#define TVMMCU_SPARSE_BLOB                                                          \
  const int16_t *rows = (const int16_t *)(const void *)blob;                        \
  const int16_t *taps = rows + out_channels + 1;                                    \
  const int8_t *vals = blob + ((2 * (out_channels + 1 + rows[out_channels]) + 7) & ~7)
static inline int32_t tvmmcu_sparse1p_blob_x8s8(const void *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                const int8_t *blob, int32_t out_channels, int32_t o,
                                                int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                int32_t pad, int32_t acc, int x_unsigned) {
  TVMMCU_SPARSE_BLOB;
  return tvmmcu_sparse1p_x8s8(x, xsy, xsx, kw, vals, taps, rows[o], rows[o + 1], n, y0, y1, x0, x1, pad, acc,
                              x_unsigned);
}

/* The same, never inlined: the border pixels around a row's blocks of four (SparseFilterlets' copies of
 * the loop), where a call costs little and a copy of the kernel much flash. */
static __attribute__((noinline, unused)) int32_t
tvmmcu_sparse1p_edge_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, int32_t kw, const int8_t *blob,
                           int32_t out_channels, int32_t o, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                           int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 0);
}

static __attribute__((noinline, unused)) int32_t
tvmmcu_sparse1p_edge_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, int32_t kw, const int8_t *blob,
                           int32_t out_channels, int32_t o, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                           int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_sparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 1);
}

/* Four pixels ps bytes apart, their windows wholly inside, of output channel o, over the blob. */
static inline int32_t tvmmcu_sparse4p_blob_x8s8(const void *x, int32_t ps, int32_t xsy, int32_t xsx,
                                                int32_t kw, const int8_t *blob, int32_t out_channels,
                                                int32_t o, int32_t n, int32_t *acc, int x_unsigned) {
  TVMMCU_SPARSE_BLOB;
  return tvmmcu_sparse4p_x8s8(x, ps, 0, vals, taps, rows[o], rows[o + 1], n, acc, x_unsigned, xsy, xsx, kw);
}

static inline int32_t tvmmcu_sparse4p_blob_s8s8(const int8_t *x, int32_t ps, int32_t xsy, int32_t xsx,
                                                int32_t kw, const int8_t *blob, int32_t out_channels,
                                                int32_t o, int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_blob_x8s8(x, ps, xsy, xsx, kw, blob, out_channels, o, n, acc, 0);
}

static inline int32_t tvmmcu_sparse4p_blob_u8s8(const uint8_t *x, int32_t ps, int32_t xsy, int32_t xsx,
                                                int32_t kw, const int8_t *blob, int32_t out_channels,
                                                int32_t o, int32_t n, int32_t *acc) {
  return tvmmcu_sparse4p_blob_x8s8(x, ps, xsy, xsx, kw, blob, out_channels, o, n, acc, 1);
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
