"""Element-sparse convolution micro-kernels (the unstructured baseline, PatDNN-like): a section of
``tvmmcu_dot.h``.

Weights pruned element by element (zeros anywhere, not whole filterlets) are stored per output channel
as a list of entries, one per non-zero weight (:func:`compress`): its value (int8) and the distance in
the flattened OHWI window ``ry * kw * n + rx * n + c`` from the channel's previous non-zero (uint8; the
first entry's from column 0); a distance of 256 or more is bridged by entries of value 0 and distance
255 (one per 255 columns: rare above 1 % density). Per output channel the index of its first entry
(uint16, ``O + 1`` of them). Stored flash: 2 bytes per entry and per output channel, plus 2.

Why this index (measured, ``bench --only sparse``): an absolute column needs uint16 as soon as the
window holds more than 256 values (a 3x3 window over 29 or more input channels, most layers), 3 bytes
per kept weight; the distance always fits a byte, 2 bytes per kept weight. Either way the kernel must
find where each window row ends (the rows lie ``xsy`` apart in the data, which the format cannot know:
the same weights are read from a whole tensor and from a row band's line buffer), so the absolute
column saves nothing but one addition per entry; a row marker in the stream would save a compare but
cost 2 bytes per channel and row. Values and distances are interleaved so one pointer walks both.

The kernels visit only the entries. ``tvmmcu_esparse4p_*`` computes one output channel at four output
pixels of a row whose windows lie inside (each weight loaded once for the four pixels, the four
accumulators in registers); ``tvmmcu_esparse1p_*`` one pixel whose window may cross the padding (the
taps outside add ``pad`` times their weights). Both need a window's taps of one row contiguous
(``xsx == n``: an undilated NHWC convolution), which SparseElements checks. The products are the dense
kernels' (integers, modulo 2**32), so the results are bit-exact.
"""

from __future__ import annotations

import numpy as np

ELEMENT4P_BLOB = {
    ("int8", "int8"): "tvmmcu_esparse4p_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_esparse4p_blob_u8s8",
}
ELEMENT1P_BLOB = {
    ("int8", "int8"): "tvmmcu_esparse1p_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_esparse1p_blob_u8s8",
}
ELEMENT1P_EDGE = {
    ("int8", "int8"): "tvmmcu_esparse1p_edge_s8s8",
    ("uint8", "int8"): "tvmmcu_esparse1p_edge_u8s8",
}
# One output of a dense layer (its weights [out, in], a row per output): over the row's entries only.
ELEMENT_DOT_BLOB = {
    ("int8", "int8"): "tvmmcu_esparse_dot_blob_s8s8",
    ("uint8", "int8"): "tvmmcu_esparse_dot_blob_u8s8",
}
# The longest distance one entry holds (uint8).
MAX_STEP = 255


def compress(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Element CSR of OHWI ``weights``: (values [E] int8, steps [E] uint8, rows [O + 1] uint16); output
    channel o's entries are ``rows[o]`` to ``rows[o + 1] - 1``, entry k at column ``steps[first] + ...
    + steps[k]`` of the flattened window, entries of value 0 bridging distances over ``MAX_STEP``.
    Raises ValueError when the entries do not fit uint16 row pointers."""
    w = np.asarray(weights).reshape(weights.shape[0], -1)
    values: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    rows = [0]
    for channel in w:
        cols = np.flatnonzero(channel)
        gaps = np.diff(cols, prepend=0)
        # A distance d takes (d - 1) // MAX_STEP bridges of MAX_STEP before its own entry (d = 0: none).
        bridges = np.maximum(gaps - 1, 0) // MAX_STEP
        own = gaps - bridges * MAX_STEP
        count = int(bridges.sum()) + cols.size
        v = np.zeros(count, np.int8)
        s = np.full(count, MAX_STEP, np.uint8)
        at = np.cumsum(bridges + 1) - 1  # each non-zero's entry, after its bridges
        v[at] = channel[cols]
        s[at] = own
        values.append(v)
        steps.append(s)
        rows.append(rows[-1] + count)
    if rows[-1] > np.iinfo(np.uint16).max:
        raise ValueError(f"{rows[-1]} entries: row pointers beyond uint16")
    return (
        np.concatenate(values).astype(np.int8),
        np.concatenate(steps).astype(np.uint8),
        np.array(rows, np.uint16),
    )


def compress_blob(weights: np.ndarray) -> np.ndarray:
    """:func:`compress`'s arrays as one int8 array (what the weight parameter of a convolution stored
    element-sparse holds): the rows (little-endian uint16), then each entry's value and step."""
    values, steps, rows = compress(weights)
    entries = np.stack([values.view(np.uint8), steps], axis=1).reshape(-1)
    return np.concatenate([rows.astype("<u2").view(np.uint8), entries]).view(np.int8)


def blob_bytes(weights: np.ndarray) -> int:
    """The flash of :func:`compress_blob` (2 bytes per entry and per output channel, plus 2)."""
    _, steps, rows = compress(weights)
    return 2 * (steps.size + rows.size)


HEADER_TEXT = """\
#ifndef TVMMCU_ESPARSE_H
#define TVMMCU_ESPARSE_H
/* Element-sparse convolution (passes/tir/sparse_element_kernels.py): the blob holds out_channels + 1
 * row pointers (uint16), then entries of two bytes, a value (int8) and its distance (uint8) from the
 * previous entry of its output channel in the flattened window ry * kw * n + rx * n + c. Channel o's
 * entries are rows[o] .. rows[o + 1] - 1. The window's rows are kw * n contiguous values, xsy bytes
 * apart (xsx == n). */
#define TVMMCU_ESPARSE_ENTRIES                                                                \\
  const uint16_t *rows = (const uint16_t *)(const void *)blob;                                \\
  const uint8_t *e = (const uint8_t *)blob + 2 * (out_channels + 1) + 2 * (int32_t)rows[o];  \\
  const uint8_t *const end = (const uint8_t *)blob + 2 * (out_channels + 1) + 2 * (int32_t)rows[o + 1]

/* acc + a * b modulo 2**32, as one MLA: GCC would otherwise pair two entries' products
 * (SMULBB, MLA, ADD: three instructions for two multiply-accumulates). */
static inline uint32_t tvmmcu_esparse_mla(int32_t a, int32_t b, uint32_t acc) {
#if defined(__thumb2__)
  uint32_t r;
  __asm__("mla %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
  return r;
#else
  return acc + (uint32_t)(a * b);
#endif
}

/* Four output pixels of output channel o, their windows ps bytes apart and wholly inside the input:
 * acc[p] += sum over the entries of value * x[p * ps + offset]. The offset walks the window: each
 * entry adds its distance, and each window row crossed adds xsy - kw * n (row_end: where the current
 * window row ends). Two entries per iteration: one loop test per two. */
static inline int32_t tvmmcu_esparse4p_blob_x8s8(const void *x, int32_t ps, int32_t xsy, int32_t xsx,
                                                 int32_t kw, const int8_t *blob, int32_t out_channels,
                                                 int32_t o, int32_t n, int32_t *acc, int x_unsigned) {
  TVMMCU_ESPARSE_ENTRIES;
  const int32_t jump = xsy - kw * n;
  const uint8_t *q = (const uint8_t *)x;
  const uint8_t *row_end = q + kw * n;
  uint32_t a0 = (uint32_t)acc[0], a1 = (uint32_t)acc[1], a2 = (uint32_t)acc[2], a3 = (uint32_t)acc[3];
  (void)xsx;
#define TVMMCU_ESPARSE_X(off) (x_unsigned ? (int32_t)q[(off)] : (int32_t)(int8_t)q[(off)])
#define TVMMCU_ESPARSE_ENTRY(k)                                    \
  do {                                                             \
    const int32_t w = (int8_t)e[2 * (k)];                          \
    q += e[2 * (k) + 1];                                           \
    while (__builtin_expect(q >= row_end, 0)) {                    \
      q += jump;                                                   \
      row_end += xsy;                                              \
    }                                                              \
    a0 = tvmmcu_esparse_mla(w, TVMMCU_ESPARSE_X(0), a0);           \
    a1 = tvmmcu_esparse_mla(w, TVMMCU_ESPARSE_X(ps), a1);          \
    a2 = tvmmcu_esparse_mla(w, TVMMCU_ESPARSE_X(2 * ps), a2);      \
    a3 = tvmmcu_esparse_mla(w, TVMMCU_ESPARSE_X(3 * ps), a3);      \
  } while (0)
  if ((end - e) & 2) {
    TVMMCU_ESPARSE_ENTRY(0);
    e += 2;
  }
  for (; e != end; e += 4) {
    TVMMCU_ESPARSE_ENTRY(0);
    TVMMCU_ESPARSE_ENTRY(1);
  }
#undef TVMMCU_ESPARSE_ENTRY
#undef TVMMCU_ESPARSE_X
  acc[0] = (int32_t)a0;
  acc[1] = (int32_t)a1;
  acc[2] = (int32_t)a2;
  acc[3] = (int32_t)a3;
  return 0;
}

static inline int32_t tvmmcu_esparse4p_blob_s8s8(const int8_t *x, int32_t ps, int32_t xsy, int32_t xsx,
                                                 int32_t kw, const int8_t *blob, int32_t out_channels,
                                                 int32_t o, int32_t n, int32_t *acc) {
  return tvmmcu_esparse4p_blob_x8s8(x, ps, xsy, xsx, kw, blob, out_channels, o, n, acc, 0);
}

static inline int32_t tvmmcu_esparse4p_blob_u8s8(const uint8_t *x, int32_t ps, int32_t xsy, int32_t xsx,
                                                 int32_t kw, const int8_t *blob, int32_t out_channels,
                                                 int32_t o, int32_t n, int32_t *acc) {
  return tvmmcu_esparse4p_blob_x8s8(x, ps, xsy, xsx, kw, blob, out_channels, o, n, acc, 1);
}

/* One output o of a dense layer, its weights a row of n values per output (the blob of that [O, n]
 * matrix): acc + sum over o's entries of value * x[column]. Two entries per iteration. */
static inline int32_t tvmmcu_esparse_dot_blob_x8s8(const void *x, const int8_t *blob, int32_t out_channels,
                                                   int32_t o, int32_t acc, int x_unsigned) {
  TVMMCU_ESPARSE_ENTRIES;
  const uint8_t *q = (const uint8_t *)x;
  uint32_t a = (uint32_t)acc;
#define TVMMCU_ESPARSE_DOT(k)                                                                  \
  do {                                                                                         \
    q += e[2 * (k) + 1];                                                                       \
    a = tvmmcu_esparse_mla((int8_t)e[2 * (k)], x_unsigned ? (int32_t)*q : (int32_t)(int8_t)*q, a); \
  } while (0)
  if ((end - e) & 2) {
    TVMMCU_ESPARSE_DOT(0);
    e += 2;
  }
  for (; e != end; e += 4) {
    TVMMCU_ESPARSE_DOT(0);
    TVMMCU_ESPARSE_DOT(1);
  }
#undef TVMMCU_ESPARSE_DOT
  return (int32_t)a;
}

static inline int32_t tvmmcu_esparse_dot_blob_s8s8(const int8_t *x, const int8_t *blob, int32_t out_channels,
                                                   int32_t o, int32_t acc) {
  return tvmmcu_esparse_dot_blob_x8s8(x, blob, out_channels, o, acc, 0);
}

static inline int32_t tvmmcu_esparse_dot_blob_u8s8(const uint8_t *x, const int8_t *blob, int32_t out_channels,
                                                   int32_t o, int32_t acc) {
  return tvmmcu_esparse_dot_blob_x8s8(x, blob, out_channels, o, acc, 1);
}

/* One output pixel of output channel o whose window may cross the padding: the taps inside are
 * [y0, y1) x [x0, x1), x at tap (y0, x0); the weights of the taps outside are summed and add pad
 * times their sum. */
static inline int32_t tvmmcu_esparse1p_blob_x8s8(const void *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                 const int8_t *blob, int32_t out_channels, int32_t o,
                                                 int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                 int32_t pad, int32_t acc, int x_unsigned) {
  TVMMCU_ESPARSE_ENTRIES;
  const int32_t seg = kw * n, lo = x0 * n, hi = x1 * n;
  const uint8_t *xu = (const uint8_t *)x;
  int32_t ry = 0, r = 0;
  uint32_t a = (uint32_t)acc, outside = 0;
  (void)xsx;
  for (; e != end; e += 2) {
    const int32_t w = (int8_t)e[0];
    r += e[1];
    while (r >= seg) {
      r -= seg;
      ++ry;
    }
    if (ry >= y0 && ry < y1 && r >= lo && r < hi) {
      const uint8_t *p = xu + (ry - y0) * xsy + (r - lo);
      a += (uint32_t)(w * (x_unsigned ? (int32_t)*p : (int32_t)(int8_t)*p));
    } else {
      outside += (uint32_t)w;
    }
  }
  return (int32_t)(a + outside * (uint32_t)pad);
}

static inline int32_t tvmmcu_esparse1p_blob_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                 const int8_t *blob, int32_t out_channels, int32_t o,
                                                 int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                 int32_t pad, int32_t acc) {
  return tvmmcu_esparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_esparse1p_blob_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, int32_t kw,
                                                 const int8_t *blob, int32_t out_channels, int32_t o,
                                                 int32_t n, int32_t y0, int32_t y1, int32_t x0, int32_t x1,
                                                 int32_t pad, int32_t acc) {
  return tvmmcu_esparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 1);
}

/* The same, never inlined: the border pixels around a row's blocks of four (little flash). */
static __attribute__((noinline, unused)) int32_t
tvmmcu_esparse1p_edge_s8s8(const int8_t *x, int32_t xsy, int32_t xsx, int32_t kw, const int8_t *blob,
                            int32_t out_channels, int32_t o, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                            int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_esparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 0);
}

static __attribute__((noinline, unused)) int32_t
tvmmcu_esparse1p_edge_u8s8(const uint8_t *x, int32_t xsy, int32_t xsx, int32_t kw, const int8_t *blob,
                            int32_t out_channels, int32_t o, int32_t n, int32_t y0, int32_t y1, int32_t x0,
                            int32_t x1, int32_t pad, int32_t acc) {
  return tvmmcu_esparse1p_blob_x8s8(x, xsy, xsx, kw, blob, out_channels, o, n, y0, y1, x0, x1, pad, acc, 1);
}

#endif /* TVMMCU_ESPARSE_H */
"""
