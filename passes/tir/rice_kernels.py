"""Golomb-Rice coded weight chunks (CompressWeights): the encoder, a reference decoder and the C decoder, a
section of ``tvmmcu_dot.h``.

A compressed weight is one blob of independent chunks, one per block of four output channels (what one
blocked kernel call reads: ``4 * S`` values of the :func:`~tvm_mcu.passes.tir.block_weights.block`-ed
layout, S the channel stride), decoded at run time into a small scratch buffer:

``blob = [w, 0, 0, 0] ++ offsets ++ chunks ++ [0, 0, 0, 0]``

- ``w``: the width in bytes of an offset, 2 (uint16, when the blob is below 64 KiB) or 4 (uint32);
  ``offsets[j]``: the byte where chunk ``j`` starts, from the blob's start, little-endian.
- a chunk: one header byte, ``0x80`` (raw: the ``4 S`` int8 values follow as they are), ``k`` (0 to 7) or
  ``0x40 | k`` (zero flags), then a bit stream, most significant bit of each byte first, coding each value
  ``v`` by its zigzag ``z = (v << 1) ^ (v >> 7)`` (0 to 255). Plain: ``z`` split into the quotient
  ``q = z >> k`` and the ``k`` low bits: ``q < ESCAPE``: ``q`` one bits, a zero bit, the ``k`` bits; else
  ``ESCAPE`` one bits and ``z`` in 8 bits. Zero flags: a zero bit for ``v = 0``; else a one bit, then
  ``z - 1`` coded as plain. The mode and ``k`` are the ones giving the chunk the fewest bits (plain
  first, then the smallest ``k``); a chunk that would not shrink is stored raw.
- the 4 zero bytes at the end: the decoder reads up to 4 bytes past its chunk's last bit.

What it reaches (measured on the bench's trained models, int8 per-channel weights): within about 2 % of
the weights' empirical entropy, about 0.92 of their bytes (Fashion-MNIST CNN) and about 1.0 (a
MobileNetV2-style network: nothing saved); weights with many zeros (pruned element by element) code each
zero in one bit (zero flags: the other values keep a ``k`` of their own size) and compress far more;
weights whose values fit int4 about 0.4 of their bytes.
Lossless: a decoded chunk is the exact blocked int8 values.
"""

from __future__ import annotations

import numpy as np

ESCAPE = 8  # a quotient of at least this is coded as ESCAPE one bits and the zigzag value in 8 bits
MAX_K = 7
RAW = 0x80  # the header of a chunk stored as it is
FLAGS = 0x40  # in the header of a chunk whose values each start with a zero flag
PAD_BYTES = 4  # zero bytes after the last chunk (the decoder's look-ahead)
HEADER_BYTES = 4  # the offset width and 3 bytes keeping the table aligned
# Bytes at the start of the scratch buffer before the decoded values: the index of the chunk it holds
# (int32), and padding keeping the values 8-byte aligned as a weight constant is.
SCRATCH_TAG_BYTES = 8


def zigzag(values: np.ndarray) -> np.ndarray:
    """int8 -> 0..255: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    v = values.astype(np.int32)
    return ((v << 1) ^ (v >> 7)).astype(np.int32) & 0xFF


def _bits(z: np.ndarray, k: int) -> int:
    q = z >> k
    return int(np.where(q < ESCAPE, q + 1 + k, 2 * ESCAPE).sum())


def _flagged_bits(z: np.ndarray, k: int) -> int:
    nonzero = z[z > 0]
    return int(z.size + _bits(nonzero - 1, k))


def best_k(values: np.ndarray) -> tuple[int, int]:
    """(header, bits) of the coding of ``values`` (int8) in the fewest bits: ``k`` (plain) or
    ``FLAGS | k`` (zero flags), plain before flagged and the smaller k first among equals."""
    z = zigzag(values)
    costs = [_bits(z, k) for k in range(MAX_K + 1)] + [_flagged_bits(z, k) for k in range(MAX_K + 1)]
    best = int(np.argmin(costs))
    return (best if best <= MAX_K else FLAGS | (best - MAX_K - 1)), costs[best]


def _rice(z: int, k: int) -> tuple[int, int]:
    """(code, bits) of ``z`` (0 to 255) in plain Rice with ``k``."""
    q = z >> k
    if q < ESCAPE:
        return (((1 << q) - 1) << (k + 1)) | (z & ((1 << k) - 1)), q + 1 + k
    return (((1 << ESCAPE) - 1) << 8) | z, 2 * ESCAPE


def encode_chunk(values: np.ndarray) -> bytes:
    """One chunk (header byte and bit stream, or raw) of int8 ``values``."""
    values = np.ascontiguousarray(values, dtype=np.int8).reshape(-1)
    head, bits = best_k(values)
    if (bits + 7) // 8 >= values.size:
        return bytes([RAW]) + values.tobytes()
    k, flagged = head & MAX_K, bool(head & FLAGS)
    out = bytearray([head])
    acc, held = 0, 0
    for z in zigzag(values).tolist():
        if not flagged:
            code, n = _rice(z, k)
        elif z == 0:
            code, n = 0, 1
        else:
            code, n = _rice(z - 1, k)
            code, n = code | (1 << n), n + 1
        acc, held = (acc << n) | code, held + n
        while held >= 8:
            held -= 8
            out.append((acc >> held) & 0xFF)
        acc &= (1 << held) - 1
    if held:
        out.append((acc << (8 - held)) & 0xFF)
    return bytes(out)


def _number(bits: np.ndarray) -> int:
    out = 0
    for b in bits.tolist():
        out = (out << 1) | b
    return out


def decode_chunk(data: bytes, n: int) -> np.ndarray:
    """The ``n`` int8 values of the chunk starting at ``data[0]`` (the reference for the C decoder)."""
    if data[0] & RAW:
        return np.frombuffer(bytes(data[1 : 1 + n]), dtype=np.int8).copy()
    k, flagged = data[0] & MAX_K, bool(data[0] & FLAGS)
    bits = np.unpackbits(np.frombuffer(bytes(data[1:]), dtype=np.uint8))
    at = 0
    out = np.empty(n, dtype=np.int8)
    for i in range(n):
        if flagged:
            at += 1
            if not bits[at - 1]:
                out[i] = 0
                continue
        q = 0
        while q < ESCAPE and bits[at]:
            q, at = q + 1, at + 1
        if q < ESCAPE:
            at += 1  # the zero ending the quotient
            z = (q << k) | _number(bits[at : at + k])
            at += k
        else:
            z = _number(bits[at : at + 8])
            at += 8
        z += int(flagged)
        out[i] = np.int8(np.int32((z >> 1) ^ -(z & 1)))
    return out


def encode(blocked: np.ndarray, chunk: int) -> np.ndarray:
    """The blob (uint8) of int8 ``blocked`` weights (already in the kernels' layout) in chunks of
    ``chunk`` values."""
    flat = np.ascontiguousarray(blocked, dtype=np.int8).reshape(-1)
    if chunk <= 0 or flat.size % chunk:
        raise ValueError(f"rice encode: {flat.size} values do not split into chunks of {chunk}")
    chunks = [encode_chunk(flat[j : j + chunk]) for j in range(0, flat.size, chunk)]
    body = sum(len(c) for c in chunks)
    width = 2
    if HEADER_BYTES + width * len(chunks) + body + PAD_BYTES > 0xFFFF:
        width = 4
    at = HEADER_BYTES + width * len(chunks)
    offsets = []
    for c in chunks:
        offsets.append(at)
        at += len(c)
    table = np.array(offsets, dtype="<u2" if width == 2 else "<u4").tobytes()
    blob = bytes([width, 0, 0, 0]) + table + b"".join(chunks) + bytes(PAD_BYTES)
    return np.frombuffer(blob, dtype=np.uint8).copy()


def decode(blob: np.ndarray, chunk: int, chunks: int) -> np.ndarray:
    """The ``chunks * chunk`` int8 values of a blob (:func:`encode`'s inverse)."""
    data = bytes(np.asarray(blob, dtype=np.uint8))
    width = data[0]
    table = np.frombuffer(
        data[HEADER_BYTES : HEADER_BYTES + width * chunks], dtype="<u2" if width == 2 else "<u4"
    )
    return (
        np.concatenate([decode_chunk(data[int(o) :], chunk) for o in table])
        if chunks
        else np.empty(0, np.int8)
    )


def encoded_bytes(values: np.ndarray, chunk: int) -> int:
    """The blob's bytes for int8 ``values`` in chunks of ``chunk`` values, without building it: the
    chunk sizes depend only on each chunk's values, not their order (the blocked layout permutes values
    inside a chunk)."""
    flat = np.ascontiguousarray(values, dtype=np.int8).reshape(-1)
    if chunk <= 0 or flat.size % chunk:
        raise ValueError(f"rice encode: {flat.size} values do not split into chunks of {chunk}")
    body = 0
    for j in range(0, flat.size, chunk):
        _, bits = best_k(flat[j : j + chunk])
        body += 1 + min((bits + 7) // 8, chunk)
    chunks = flat.size // chunk
    total = HEADER_BYTES + 2 * chunks + body + PAD_BYTES
    return total if total <= 0xFFFF else total + 2 * chunks


HEADER_TEXT = """\
/* Golomb-Rice coded weight chunks (CompressWeights): chunk j of a blob decoded into a scratch buffer
 * before the blocked kernels read it. The blob: byte 0 the width w (2 or 4) of the offsets that follow
 * from byte 4, offset j the start of chunk j; a chunk: a header byte, 0x80 (raw values follow), k (0 to
 * 7) or 0x40 | k (zero flags), then per value, most significant bit first, its zigzag z's quotient
 * z >> k in unary (ones ended by a zero) and its k low bits, or, for a quotient of 8 or more, 8 ones and
 * z in 8 bits; with zero flags, a zero bit for a zero value, else a one bit and z - 1 so coded. The
 * scratch: the index of the chunk it holds (int32) at byte 0, the n values from byte 8. */
#ifndef TVMMCU_DOT_RICE_H
#define TVMMCU_DOT_RICE_H

#if defined(__GNUC__)
#define TVMMCU_RICE_CLZ(x) ((uint32_t)__builtin_clz(x))
/* One copy of the decoder: a call per chunk costs little, its two loops inlined at every call site
 * would cost flash. */
#define TVMMCU_RICE_NOINLINE __attribute__((noinline, unused))
#else
static inline uint32_t tvmmcu_rice_clz(uint32_t x) {
  uint32_t n = 0;
  while (!(x & 0x80000000u)) {
    x <<= 1;
    ++n;
  }
  return n;
}
#define TVMMCU_RICE_CLZ(x) tvmmcu_rice_clz(x)
#define TVMMCU_RICE_NOINLINE
#endif

/* At least 25 bits held: a value takes at most 17 (its zero flag, 8 ones and 8 bits). */
#define TVMMCU_RICE_FILL()                                                                              \
  while (held_bits <= 24) {                                                                            \
    bits |= (uint32_t)*p++ << (24 - held_bits);                                                        \
    held_bits += 8;                                                                                    \
  }

/* One value: the quotient's leading ones (at most 8: bit 23 forced to a zero of ~bits), then k bits or
 * the escaped 8; z plus `plus` (1 after a zero flag) unzigzagged into out[i]. */
#define TVMMCU_RICE_VALUE(plus)                                                                         \
  do {                                                                                                 \
    const uint32_t q = TVMMCU_RICE_CLZ(~bits | 0x00800000u);                                           \
    uint32_t z, used;                                                                                  \
    if (q < 8u) {                                                                                      \
      z = (q << k) | (((bits << q) << 1) >> 1 >> (31u - k));                                           \
      used = q + 1u + k;                                                                               \
    } else {                                                                                           \
      z = (bits << 8) >> 24;                                                                           \
      used = 16u;                                                                                      \
    }                                                                                                  \
    bits <<= used;                                                                                     \
    held_bits -= (int32_t)used;                                                                        \
    z += (plus);                                                                                       \
    out[i] = (int8_t)(int32_t)((z >> 1) ^ (0u - (z & 1u)));                                            \
  } while (0)

/* The scratch holds no chunk: at the start of each operator call (its workspace held other data). */
static inline int32_t tvmmcu_rice_reset(int8_t *scratch) {
  *(int32_t *)(void *)scratch = -1;
  return 0;
}

/* Chunk `chunk` (n values) of `blob` into scratch + 8, unless the scratch holds it already. */
static TVMMCU_RICE_NOINLINE int32_t tvmmcu_rice_decode(const int8_t *blob, int32_t chunk, int32_t n,
                                                      int8_t *scratch) {
  int32_t *const held = (int32_t *)(void *)scratch;
  if (*held == chunk) {
    return 0;
  }
  *held = chunk;
  const uint8_t *const b = (const uint8_t *)blob;
  const uint32_t at = b[0] == 2 ? (uint32_t)((const uint16_t *)(const void *)(b + 4))[chunk]
                                : ((const uint32_t *)(const void *)(b + 4))[chunk];
  const uint8_t *p = b + at;
  const uint32_t head = *p++;
  int8_t *const out = scratch + 8;
  if (head & 0x80u) {
    for (int32_t i = 0; i < n; ++i) {
      out[i] = (int8_t)p[i];
    }
    return 0;
  }
  const uint32_t k = head & 7u;
  uint32_t bits = 0; /* the next bits of the stream, the first at bit 31 */
  int32_t held_bits = 0;
  if (head & 0x40u) {
    /* Zero flags: a zero bit is a zero value; a one bit, then z - 1 coded as below. */
    for (int32_t i = 0; i < n; ++i) {
      TVMMCU_RICE_FILL();
      const uint32_t nonzero = bits >> 31;
      bits <<= 1;
      held_bits -= 1;
      if (!nonzero) {
        out[i] = 0;
        continue;
      }
      TVMMCU_RICE_VALUE(1u);
    }
    return 0;
  }
  for (int32_t i = 0; i < n; ++i) {
    TVMMCU_RICE_FILL();
    TVMMCU_RICE_VALUE(0u);
  }
  return 0;
}

#endif /* TVMMCU_DOT_RICE_H */
"""
