"""The Golomb-Rice weight codec (CompressWeights' storage): the encoder against the reference decoder, and
the C decoder (``tvmmcu_rice_decode``) built for the host against both: zero chunks, the extremes -128 and
127, escapes, raw chunks, zero flags (pruned weights), both offset widths."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tvm_mcu.passes.tir import rice_kernels
from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.rice_kernels import (
    FLAGS,
    MAX_K,
    RAW,
    decode,
    decode_chunk,
    encode,
    encode_chunk,
    encoded_bytes,
)


def _chunks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sparse = np.zeros(64, np.int8)
    sparse[::9] = [127, -128, 100, -100, 3, -3, 1, 0]  # escapes among zeros: still smaller
    return {
        "zeros": np.zeros(64, np.int8),
        "extremes": np.array([-128, 127] * 32, np.int8),  # every value an escape: raw
        "uniform": rng.integers(-128, 128, 64).astype(np.int8),  # raw
        "normal": np.clip(np.rint(rng.normal(0, 6, 256)), -128, 127).astype(np.int8),
        "escapes": sparse,
        "int4": rng.integers(-8, 8, 64).astype(np.int8),
        # 70 % zeros among trained-like values: zero flags, the others with their own k.
        "pruned": np.where(
            rng.random(256) < 0.7, 0, np.clip(np.rint(rng.normal(0, 40, 256)), -128, 127)
        ).astype(np.int8),
    }


@pytest.mark.parametrize("name", list(_chunks()), ids=list(_chunks()))
def test_chunks_round_trip(name: str) -> None:
    values = _chunks()[name]
    data = encode_chunk(values)
    assert np.array_equal(decode_chunk(data + bytes(4), values.size), values)
    raw = data[0] == RAW
    assert raw == (name in ("extremes", "uniform")), (name, data[0])
    assert len(data) <= 1 + values.size
    if name == "zeros":
        assert len(data) == 1 + values.size // 8  # one bit a zero, k = 0
    if name in ("escapes", "pruned"):
        assert not raw and data[0] & FLAGS, data[0]  # zero flags: a zero costs one bit
    if name == "pruned":
        plain = min(_plain_bits(values, k) for k in range(MAX_K + 1))
        assert len(data) < 0.75 * (1 + (plain + 7) // 8) and data[0] & MAX_K >= 3, (len(data), plain)
    if name in ("zeros", "normal", "int4"):
        assert not data[0] & FLAGS


def _plain_bits(values: np.ndarray, k: int) -> int:
    z = rice_kernels.zigzag(values) >> k
    return int(np.where(z < rice_kernels.ESCAPE, z + 1 + k, 2 * rice_kernels.ESCAPE).sum())


def test_blob_round_trip_and_size() -> None:
    values = np.concatenate(list(_chunks().values())[:4] + [_chunks()["escapes"]] * 4)
    blob = encode(values, 64)
    assert blob[0] == 2 and blob.size == encoded_bytes(values, 64)
    assert np.array_equal(decode(blob, 64, values.size // 64), values)


def test_a_large_blob_takes_wide_offsets() -> None:
    values = np.random.default_rng(1).integers(-128, 128, 70000 // 64 * 64).astype(np.int8)
    blob = encode(values, 64)
    assert blob[0] == 4 and blob.size == encoded_bytes(values, 64) > 0xFFFF
    assert np.array_equal(decode(blob, 64, values.size // 64)[-128:], values[-128:])


def test_chunks_that_do_not_split_are_refused() -> None:
    with pytest.raises(ValueError, match="chunks of 48"):
        encode(np.zeros(100, np.int8), 48)


def test_the_c_decoder_matches(tmp_path: Path) -> None:
    """Every chunk of a blob decoded by the C decoder, twice in a row (the second a no-op: the scratch
    holds it) and after a reset, equals the values."""
    values = np.concatenate([*_chunks().values(), np.zeros(64 * 3 - 256 % 64, np.int8)])
    values = values[: values.size // 64 * 64]
    chunks = values.size // 64
    gcc = shutil.which("gcc")
    assert gcc is not None, "make setup installs gcc (the host C compiler)"
    (tmp_path / "dot.h").write_text(HEADER_TEXT)
    (tmp_path / "t.c").write_text(
        '#include <stdint.h>\n#include <string.h>\n#include "dot.h"\n'
        "void run(const int8_t *blob, int32_t chunks, int8_t *scratch, int8_t *out) {\n"
        "  tvmmcu_rice_reset(scratch);\n"
        "  for (int32_t j = 0; j < chunks; ++j) {\n"
        "    tvmmcu_rice_decode(blob, j, 64, scratch);\n"
        "    tvmmcu_rice_decode(blob, j, 64, scratch);\n"
        "    memcpy(out + 64 * j, scratch + 8, 64);\n"
        "  }\n}\n"
    )
    lib = tmp_path / "t.so"
    subprocess.run(
        [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(lib)]
        + [str(tmp_path / "t.c")],
        check=True,
    )
    fn = ctypes.CDLL(str(lib)).run
    blob = encode(values, 64).view(np.int8)
    scratch = np.zeros(8 + 64 + 8, np.int8)
    out = np.zeros(values.size, np.int8)
    ptr = ctypes.POINTER(ctypes.c_int8)
    fn(blob.ctypes.data_as(ptr), ctypes.c_int32(chunks), scratch.ctypes.data_as(ptr), out.ctypes.data_as(ptr))
    assert np.array_equal(out, values)
    assert rice_kernels.SCRATCH_TAG_BYTES == 8
