"""The blocked four-channel micro-kernels over int4 weights packed two per byte: a section of
``tvmmcu_dot.h``.

PackWeights (``passes/tir/pack_weights.py``) stores the weights of the blocked kernels
(``tvmmcu_dot4b_*``) whose every value lies in [-8, 7] as nibbles: each 8 values of a channel, which the
blocked layout keeps together, are one 32-bit word, value ``r`` in nibble ``NIBBLE_AT[r]`` (bits
``4 q .. 4 q + 3`` of the little-endian word). The order swaps values 2, 3 with 4, 5 so that, with the
mask ``M = 0xF000F000``, ``(W << 12) & M``, ``(W << 8) & M``, ``(W << 4) & M`` and ``W & M`` are the
weight pairs (0, 2), (1, 3), (4, 6), (5, 7) times 4096 as signed halfwords: the pairs SMLAD multiplies
with the data's SXTB16 halves. Each is one AND with a shifted register operand; no instruction widens a
weight. The products are 4096 times the true ones: a local accumulator takes at most
``NIBBLE_CHUNK`` values (4096 * 255 * 8 * 256 < 2**31, exact), then adds ``t >> 12`` (exact: ``t`` is a
multiple of 4096) to the channel's accumulator, which wraps modulo 2**32 as the C loop does. Without the
DSP extension, plain C loops read the nibbles.
"""

from __future__ import annotations

import numpy as np

# Where value r of a channel's 8 values sits among the 8 nibbles of its word (an involution).
NIBBLE_AT = np.array([0, 1, 4, 5, 2, 3, 6, 7])
# Values of a channel summed at 4096 times their products before the exact flush (see the docstring).
NIBBLE_CHUNK = 256

HEADER_TEXT = """\
/* Four output channels over int4 weights packed two per byte (PackWeights): the blocked layout of
 * tvmmcu_dot4b_run with each 8 values of a channel one 32-bit word of nibbles, value r in nibble
 * tvmmcu_dot_nibble_at[r] (bits 4q..4q+3 of the little-endian word). With the DSP extension, ANDs of the
 * word shifted by 12, 8, 4 and 0 with 0xF000F000 give the weight pairs (0, 2), (1, 3), (4, 6), (5, 7)
 * times 4096 as signed halfwords, the pairs SMLAD multiplies with the data's SXTB16 halves; at most
 * TVMMCU_DOT_NIBBLE_CHUNK values of products scaled so are summed (4096 * 255 * 8 * 256 < 2**31) before
 * the sum, a multiple of 4096, is shifted back exactly. Half the flash of int8 weights, about their
 * instructions. */
#ifndef TVMMCU_DOT_NIBBLE_H
#define TVMMCU_DOT_NIBBLE_H

static const uint8_t tvmmcu_dot_nibble_at[8] = {0, 1, 4, 5, 2, 3, 6, 7};
#define TVMMCU_DOT_NIBBLE_CHUNK 256

/* Signed nibble q (0 to 7) of the word w: its bits 4q..4q+3 sign-extended (SBFX where the compiler
 * knows q). */
#define TVMMCU_DOT_NIBBLE(w, q) ((int32_t)((((w) >> (4 * (q))) & 15u) ^ 8u) - 8)

#if defined(__ARM_FEATURE_DSP)
/* One word at p, stepping p past it (post-indexed); volatile as TVMMCU_DOT_LDRD_NEXT. */
typedef struct {
  uint8_t b[4];
} tvmmcu_dot_4_t;
#define TVMMCU_DOT_LDR_NEXT(p, w) \\
  __asm__ volatile("ldr %0, [%1], #4" : "=r"(w), "+r"(p) : "m"(*(const tvmmcu_dot_4_t *)(p)))
/* 0xF000F000 where GCC cannot see it: kept in a register, each shift folds into its AND's operand
 * (AND rd, rM, rW, LSL #n) instead of a shift and an AND with an immediate. */
static inline uint32_t tvmmcu_dot_nibble_mask(void) {
  uint32_t m;
  __asm__("" : "=r"(m) : "0"(0xF000F000u));
  return m;
}
/* One channel's 8 products from the nibble word at p, at 4096 times their value. */
#define TVMMCU_DOT_NIB8(acc)                              \\
  TVMMCU_DOT_LDR_NEXT(p, b0);                             \\
  acc = tvmmcu_dot_smlad(v0, (b0 << 12) & mask, acc);     \\
  acc = tvmmcu_dot_smlad(v1, (b0 << 8) & mask, acc);      \\
  acc = tvmmcu_dot_smlad(v2, (b0 << 4) & mask, acc);      \\
  acc = tvmmcu_dot_smlad(v3, b0 & mask, acc)
#endif

/* a[j] + sum over k < n of x[k] * (value k of channel j in the packed words at wq); n a multiple of 8. */
static inline __attribute__((always_inline)) void tvmmcu_dot4q_run(const void *x, const uint8_t *wq,
                                                                   int32_t n, int32_t *a, int x_unsigned) {
#if defined(__ARM_FEATURE_DSP)
  const uint8_t *xu = (const uint8_t *)x;
  const uint8_t *const last = xu + n;
  const void *p = wq;
  const uint32_t mask = tvmmcu_dot_nibble_mask();
  uint32_t lo, hi, b0;
  while (xu != last) {
    const uint8_t *const end = last - xu > TVMMCU_DOT_NIBBLE_CHUNK ? xu + TVMMCU_DOT_NIBBLE_CHUNK : last;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    TVMMCU_DOT_BLOCKED_LOOP(TVMMCU_DOT_NIB8)
    a[0] = (int32_t)((uint32_t)a[0] + (uint32_t)(a0 >> 12));
    a[1] = (int32_t)((uint32_t)a[1] + (uint32_t)(a1 >> 12));
    a[2] = (int32_t)((uint32_t)a[2] + (uint32_t)(a2 >> 12));
    a[3] = (int32_t)((uint32_t)a[3] + (uint32_t)(a3 >> 12));
  }
#else
  const int8_t *xs = (const int8_t *)x;
  const uint8_t *xu = (const uint8_t *)x;
  int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  /* A block of 8 values at a time: each channel's word loaded once, a nibble extracted per value (one
   * SBFX on Armv7-M). */
  for (int32_t k = 0; k < n; k += 8, wq += 16) {
    const uint32_t w0 = tvmmcu_dot_word(wq), w1 = tvmmcu_dot_word(wq + 4);
    const uint32_t w2 = tvmmcu_dot_word(wq + 8), w3 = tvmmcu_dot_word(wq + 12);
#pragma GCC unroll 8
    for (int32_t r = 0; r < 8; ++r) {
      const int32_t v = x_unsigned ? (int32_t)xu[k + r] : (int32_t)xs[k + r];
      const int32_t q = tvmmcu_dot_nibble_at[r];
      a0 = (int32_t)((uint32_t)a0 + (uint32_t)(v * TVMMCU_DOT_NIBBLE(w0, q)));
      a1 = (int32_t)((uint32_t)a1 + (uint32_t)(v * TVMMCU_DOT_NIBBLE(w1, q)));
      a2 = (int32_t)((uint32_t)a2 + (uint32_t)(v * TVMMCU_DOT_NIBBLE(w2, q)));
      a3 = (int32_t)((uint32_t)a3 + (uint32_t)(v * TVMMCU_DOT_NIBBLE(w3, q)));
    }
  }
  a[0] = a0;
  a[1] = a1;
  a[2] = a2;
  a[3] = a3;
#endif
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4q_s8s4(const int8_t *x, const void *wq, int32_t n, int32_t *acc) {
  tvmmcu_dot4q_run(x, (const uint8_t *)wq, n, acc, 0);
  return 0;
}

TVMMCU_DOT_INLINE int32_t tvmmcu_dot4q_u8s4(const uint8_t *x, const void *wq, int32_t n, int32_t *acc) {
  tvmmcu_dot4q_run(x, (const uint8_t *)wq, n, acc, 1);
  return 0;
}

/* The packed weights' padding taps: acc[j] + value * (the n weights of channel j), n a multiple of 8.
 * With the DSP extension, SMLAD against (1, 1) sums each pair of masked weights at 4096 times their
 * value; a sum of at most 4096 values fits (4096 * 8 * 4096 < 2**31) before it is shifted back. */
static inline int32_t tvmmcu_dot4q_sum_s4(const void *wq, int32_t n, int32_t value, int32_t *acc) {
  const uint8_t *w = (const uint8_t *)wq;
  int32_t s[4] = {0, 0, 0, 0};
#if defined(__ARM_FEATURE_DSP)
  const uint32_t mask = tvmmcu_dot_nibble_mask();
  const uint32_t ones = 0x00010001u;
  const void *p = w;
  uint32_t b0;
/* Channel acc's 8 weights from the nibble word at p, summed at 4096 times their value. */
#define TVMMCU_DOT_NIBSUM8(acc)                           \
  TVMMCU_DOT_LDR_NEXT(p, b0);                             \
  acc = tvmmcu_dot_smlad((b0 << 12) & mask, ones, acc);   \
  acc = tvmmcu_dot_smlad((b0 << 8) & mask, ones, acc);    \
  acc = tvmmcu_dot_smlad((b0 << 4) & mask, ones, acc);    \
  acc = tvmmcu_dot_smlad(b0 & mask, ones, acc)
  for (int32_t k = 0; k < n;) {
    const int32_t stop = n - k > 4096 ? k + 4096 : n;
    int32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
    for (; k < stop; k += 8) {
      TVMMCU_DOT_NIBSUM8(t0);
      TVMMCU_DOT_NIBSUM8(t1);
      TVMMCU_DOT_NIBSUM8(t2);
      TVMMCU_DOT_NIBSUM8(t3);
    }
    s[0] += t0 >> 12;
    s[1] += t1 >> 12;
    s[2] += t2 >> 12;
    s[3] += t3 >> 12;
  }
#undef TVMMCU_DOT_NIBSUM8
#else
  for (int32_t k = 0; k < n; k += 8, w += 16) {
    for (int32_t j = 0; j < 4; ++j) {
      const uint32_t word = tvmmcu_dot_word(w + 4 * j);
      for (int32_t q = 0; q < 8; ++q) {
        s[j] += TVMMCU_DOT_NIBBLE(word, q);
      }
    }
  }
#endif
  for (int32_t j = 0; j < 4; ++j) {
    acc[j] = (int32_t)((uint32_t)acc[j] + (uint32_t)s[j] * (uint32_t)value);
  }
  return 0;
}

/* Four output channels over a window of runs of packed weights (tvmmcu_dot4b_runs_x8s8's window, two
 * values per byte). */
TVMMCU_DOT_RUNS4(tvmmcu_dot4q_runs_x8s4, uint8_t, 2, tvmmcu_dot4q_run, tvmmcu_dot4q_sum_s4)

static inline int32_t tvmmcu_dot4q_runs_s8s4(const int8_t *x, int32_t xsy, int32_t xsx, const void *wq,
                                             int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                             int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4q_runs_x8s4(x, xsy, xsx, wq, kh, kw, n, y0, y1, x0, x1, pad, acc, 0);
}

static inline int32_t tvmmcu_dot4q_runs_u8s4(const uint8_t *x, int32_t xsy, int32_t xsx, const void *wq,
                                             int32_t kh, int32_t kw, int32_t n, int32_t y0, int32_t y1,
                                             int32_t x0, int32_t x1, int32_t pad, int32_t *acc) {
  return tvmmcu_dot4q_runs_x8s4(x, xsy, xsx, wq, kh, kw, n, y0, y1, x0, x1, pad, acc, 1);
}

/* n int8 values (a multiple of 8) into dst from int4 weights stored flat two per byte (UnpackInt4Weights:
 * a weight no blocked kernel reads, unpacked into a scratch once per operator call): each 8 values one
 * word, value r < 4 in the low nibble of byte r and value r + 4 in its high nibble. Four values at once
 * in the bytes of a word: ((q ^ 8) + 0x78) ^ 0x80 is the nibble q sign-extended to a byte (no carry
 * leaves a byte: (q ^ 8) + 0x78 <= 0x87). */
static inline int32_t tvmmcu_dot_unpack4(const void *src, int32_t n, int8_t *dst) {
  const uint8_t *s = (const uint8_t *)src;
  for (int32_t k = 0; k < n; k += 8, s += 4) {
    const uint32_t w = tvmmcu_dot_word(s);
    const uint32_t lo = (((w & 0x0F0F0F0Fu) ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
    const uint32_t hi = ((((w >> 4) & 0x0F0F0F0Fu) ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
    memcpy(dst + k, &lo, 4);
    memcpy(dst + k + 4, &hi, 4);
  }
  return 0;
}

#endif /* TVMMCU_DOT_NIBBLE_H */
"""
