"""The blocked four-channel micro-kernels over int2 weights packed four per byte: a section of
``tvmmcu_dot.h``.

PackWeights (``passes/tir/pack_weights.py``) stores the weights of the blocked kernels
(``tvmmcu_dot4b_*``) whose every value lies in [-2, 1] (an ONNX model's INT2 initializers) as 2-bit
crumbs: each block of the blocked layout (four channels' 8 values) is two 32-bit words, channels 0 and 1
in the first, 2 and 3 in the second. In a word, crumb ``q`` is bits ``2 q .. 2 q + 1`` (little-endian);
value ``r`` of the word's first channel sits in crumb ``CRUMB_AT[r]``, of its second in
``CRUMB_AT[r] - 1``. With the mask ``M = 0xC000C000``, ``(W << s) & M`` for ``s = 0, 4, 8, 12`` is the
first channel's weight pair (0, 2), (1, 3), (4, 6), (5, 7) times 16384 as signed halfwords, the pairs
SMLAD multiplies with the data's SXTB16 halves, and ``s = 2, 6, 10, 14`` the second channel's: one AND
with a shifted register operand per pair and one word load per two channels; no instruction widens a
weight. As with the nibbles (``nibble_kernels``) a local accumulator takes at most ``CRUMB_CHUNK`` values
(16384 * 2 * 255 * 256 < 2**31, exact), then adds ``t >> 14`` (exact: ``t`` is a multiple of 16384) to
the channel's accumulator, which wraps modulo 2**32 as the C loop does. Without the DSP extension, plain
C loops read the crumbs.
"""

from __future__ import annotations

import numpy as np

# Where value r of a block's 8 values of the word's first channel sits among the word's 16 crumbs; the
# second channel's value r sits one crumb lower.
CRUMB_AT = np.array([7, 5, 15, 13, 3, 1, 11, 9])
# Values of a channel summed at 16384 times their products before the exact flush (see the docstring).
CRUMB_CHUNK = 256

HEADER_TEXT = """\
/* Four output channels over int2 weights packed four per byte (PackWeights): the blocked layout of
 * tvmmcu_dot4b_run with each block (four channels' 8 values) two 32-bit words of crumbs, channels 0 and
 * 1 in the first, 2 and 3 in the second; value r of a word's first channel in crumb
 * tvmmcu_dot_crumb_at[r] (bits 2q..2q+1 of the little-endian word), of its second one crumb lower. With
 * the DSP extension, ANDs of the word shifted by 0, 4, 8, 12 (first channel) and 2, 6, 10, 14 (second)
 * with 0xC000C000 give the weight pairs (0, 2), (1, 3), (4, 6), (5, 7) times 16384 as signed halfwords,
 * the pairs SMLAD multiplies with the data's SXTB16 halves; at most TVMMCU_DOT_CRUMB_CHUNK values of
 * products scaled so are summed (16384 * 2 * 255 * 256 < 2**31) before the sum, a multiple of 16384, is
 * shifted back exactly. A quarter of the flash of int8 weights. */
#ifndef TVMMCU_DOT_CRUMB_H
#define TVMMCU_DOT_CRUMB_H

static const uint8_t tvmmcu_dot_crumb_at[8] = {7, 5, 15, 13, 3, 1, 11, 9};
#define TVMMCU_DOT_CRUMB_CHUNK 256

/* Signed crumb q (0 to 15) of the word w: its bits 2q..2q+1 sign-extended. */
#define TVMMCU_DOT_CRUMB(w, q) ((int32_t)((((w) >> (2 * (q))) & 3u) ^ 2u) - 2)

#if defined(__ARM_FEATURE_DSP)
/* 0xC000C000 where GCC cannot see it (as tvmmcu_dot_nibble_mask): each shift folds into its AND. */
static inline uint32_t tvmmcu_dot_crumb_mask(void) {
  uint32_t m;
  __asm__("" : "=r"(m) : "0"(0xC000C000u));
  return m;
}
/* Two channels' 8 products each from the crumb word at p, at 16384 times their value. */
#define TVMMCU_DOT_CRUMB16(acc_a, acc_b)                    \\
  TVMMCU_DOT_LDR_NEXT(p, b0);                               \\
  acc_a = tvmmcu_dot_smlad(v0, b0 & mask, acc_a);           \\
  acc_b = tvmmcu_dot_smlad(v0, (b0 << 2) & mask, acc_b);    \\
  acc_a = tvmmcu_dot_smlad(v1, (b0 << 4) & mask, acc_a);    \\
  acc_b = tvmmcu_dot_smlad(v1, (b0 << 6) & mask, acc_b);    \\
  acc_a = tvmmcu_dot_smlad(v2, (b0 << 8) & mask, acc_a);    \\
  acc_b = tvmmcu_dot_smlad(v2, (b0 << 10) & mask, acc_b);   \\
  acc_a = tvmmcu_dot_smlad(v3, (b0 << 12) & mask, acc_a);   \\
  acc_b = tvmmcu_dot_smlad(v3, (b0 << 14) & mask, acc_b)
#endif

/* a[j] + sum over k < n of x[k] * (value k of channel j in the packed words at wc); n a multiple of 8. */
static inline __attribute__((always_inline)) void tvmmcu_dot4c_run(const void *x, const uint8_t *wc,
                                                                   int32_t n, int32_t *a, int x_unsigned) {
#if defined(__ARM_FEATURE_DSP)
  const uint8_t *xu = (const uint8_t *)x;
  const uint8_t *const last = xu + n;
  const void *p = wc;
  const uint32_t mask = tvmmcu_dot_crumb_mask();
  uint32_t lo, hi, b0;
  while (xu != last) {
    const uint8_t *const end = last - xu > TVMMCU_DOT_CRUMB_CHUNK ? xu + TVMMCU_DOT_CRUMB_CHUNK : last;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    TVMMCU_DOT_BLOCKED_LOOP_OF(TVMMCU_DOT_STEP8_PAIRS, TVMMCU_DOT_CRUMB16)
    a[0] = (int32_t)((uint32_t)a[0] + (uint32_t)(a0 >> 14));
    a[1] = (int32_t)((uint32_t)a[1] + (uint32_t)(a1 >> 14));
    a[2] = (int32_t)((uint32_t)a[2] + (uint32_t)(a2 >> 14));
    a[3] = (int32_t)((uint32_t)a[3] + (uint32_t)(a3 >> 14));
  }
#else
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  /* A block of 8 values at a time: its two words loaded once, a crumb extracted per value and channel. */
  for (int32_t k = 0; k < n; k += 8, wc += 8) {
    const uint32_t w01 = tvmmcu_dot_word(wc), w23 = tvmmcu_dot_word(wc + 4);
#pragma GCC unroll 8
    for (int32_t r = 0; r < 8; ++r) {
      const int32_t v = x_unsigned ? (int32_t)xu[k + r] : (int32_t)xs[k + r];
      const int32_t q = tvmmcu_dot_crumb_at[r];
      a0 = (int32_t)((uint32_t)a0 + (uint32_t)(v * TVMMCU_DOT_CRUMB(w01, q)));
      a1 = (int32_t)((uint32_t)a1 + (uint32_t)(v * TVMMCU_DOT_CRUMB(w01, q - 1)));
      a2 = (int32_t)((uint32_t)a2 + (uint32_t)(v * TVMMCU_DOT_CRUMB(w23, q)));
      a3 = (int32_t)((uint32_t)a3 + (uint32_t)(v * TVMMCU_DOT_CRUMB(w23, q - 1)));
    }
  }
  a[0] = a0;
  a[1] = a1;
  a[2] = a2;
  a[3] = a3;
#endif
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4c_s8s2(const int8_t *x, const void *wc, int32_t n, int32_t *acc) {
  tvmmcu_dot4c_run(x, (const uint8_t *)wc, n, acc, 0);
  return 0;
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4c_u8s2(const uint8_t *x, const void *wc, int32_t n, int32_t *acc) {
  tvmmcu_dot4c_run(x, (const uint8_t *)wc, n, acc, 1);
  return 0;
}

/* The packed weights' padding taps: acc[j] + value * (the n weights of channel j), n a multiple of 8.
 * With the DSP extension, SMLAD against (1, 1) sums each pair of masked weights at 16384 times their
 * value; a sum of at most 4096 values fits (4096 * 2 * 16384 < 2**31) before it is shifted back. */
static inline int32_t tvmmcu_dot4c_sum_s2(const void *wc, int32_t n, int32_t value, int32_t *acc) {
  const uint8_t *w = (const uint8_t *)wc;
  int32_t s[4] = {0, 0, 0, 0};
#if defined(__ARM_FEATURE_DSP)
  const uint32_t mask = tvmmcu_dot_crumb_mask();
  const uint32_t ones = 0x00010001u;
  const void *p = w;
  uint32_t b0;
/* Two channels' 8 weights each from the crumb word at p, summed at 16384 times their value. */
#define TVMMCU_DOT_CRUMBSUM16(acc_a, acc_b)                 \\
  TVMMCU_DOT_LDR_NEXT(p, b0);                               \\
  acc_a = tvmmcu_dot_smlad(b0 & mask, ones, acc_a);         \\
  acc_b = tvmmcu_dot_smlad((b0 << 2) & mask, ones, acc_b);  \\
  acc_a = tvmmcu_dot_smlad((b0 << 4) & mask, ones, acc_a);  \\
  acc_b = tvmmcu_dot_smlad((b0 << 6) & mask, ones, acc_b);  \\
  acc_a = tvmmcu_dot_smlad((b0 << 8) & mask, ones, acc_a);  \\
  acc_b = tvmmcu_dot_smlad((b0 << 10) & mask, ones, acc_b); \\
  acc_a = tvmmcu_dot_smlad((b0 << 12) & mask, ones, acc_a); \\
  acc_b = tvmmcu_dot_smlad((b0 << 14) & mask, ones, acc_b)
  for (int32_t k = 0; k < n;) {
    const int32_t stop = n - k > 4096 ? k + 4096 : n;
    int32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (; k < stop; k += 8) {
      TVMMCU_DOT_CRUMBSUM16(t0, t1);
      TVMMCU_DOT_CRUMBSUM16(t2, t3);
    }
    s[0] += t0 >> 14;
    s[1] += t1 >> 14;
    s[2] += t2 >> 14;
    s[3] += t3 >> 14;
  }
#undef TVMMCU_DOT_CRUMBSUM16
#else
  for (int32_t k = 0; k < n; k += 8, w += 8) {
    for (int32_t j = 0; j < 4; j += 2) {
      const uint32_t word = tvmmcu_dot_word(w + 2 * j);
      for (int32_t r = 0; r < 8; ++r) {
        s[j] += TVMMCU_DOT_CRUMB(word, tvmmcu_dot_crumb_at[r]);
        s[j + 1] += TVMMCU_DOT_CRUMB(word, tvmmcu_dot_crumb_at[r] - 1);
      }
    }
  }
#endif
  for (int32_t j = 0; j < 4; ++j) {
    acc[j] = (int32_t)((uint32_t)acc[j] + (uint32_t)s[j] * (uint32_t)value);
  }
  return 0;
}

/* Four output channels over a window of runs of packed weights (tvmmcu_dot4b_runs_x8s8's window, four
 * values per byte). */
TVMMCU_DOT_RUNS4(tvmmcu_dot4c_runs_x8s2, uint8_t, 4, tvmmcu_dot4c_run, tvmmcu_dot4c_sum_s2)

static inline int32_t tvmmcu_dot4c_runs_s8s2(const int8_t *x, int32_t xsy, int32_t xsx, const void *wc,
                                             int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                             int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4c_runs_x8s2(x, xsy, xsx, wc, kh, kw, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot4c_runs_u8s2(const uint8_t *x, int32_t xsy, int32_t xsx, const void *wc,
                                             int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                             int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4c_runs_x8s2(x, xsy, xsx, wc, kh, kw, n, y0, y1, x0, x1, pad, acc, 1);
}

#endif /* TVMMCU_DOT_CRUMB_H */
"""
