"""The float32 filterlet-sparse kernels: bit-identical to the dense float kernels over the same pruned
weights (one channel, four channels per call), on the host and on a core with an FPU (fused
multiply-adds) and one without, and within float rounding of a float64 convolution."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.sparse_kernels import compress, compress_blob, filterlets_kept

H, W, KH, KW, OUT = 6, 9, 3, 3, 8
# Input channels: a multiple of 8 (the kernel's eight-value steps only) and not (its tail).
CHANNELS = (16, 12)
# Strides: 1 (blocks across rows, some in place) and 2 (every block touches the border).
STRIDES = (1, 2)


def _out_shape(stride: int) -> tuple[int, int]:
    return (H + 2 - KH) // stride + 1, (W + 2 - KW) // stride + 1


def _weights(n: int) -> np.ndarray:
    """OHWI float32 weights with about half the filterlets pruned by a mask (pruned negative weights
    are -0.0), one channel keeping none, one all."""
    rng = np.random.default_rng(n)
    w = rng.standard_normal((OUT, KH, KW, n)).astype(np.float32)
    keep = rng.random((OUT, KH, KW)) < 0.5
    keep[1] = False
    keep[2] = True
    return (w * keep[..., None]).astype(np.float32)


def _data(n: int) -> np.ndarray:
    x = np.random.default_rng(100 + n).standard_normal(H * W * n).astype(np.float32)
    x[::7] = 0.0  # a ReLU's zeros
    return x


def _init(o: int) -> str:
    """The accumulators' start: +0.0 for some channels, a non-zero constant for others (a bias)."""
    return "0.0f" if o % 2 == 0 else f"{0.25 * o - 1.0}f"


def _c_array(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[{max(values.size, 1)}] __attribute__((aligned(8))) = {{{body}}};"


def _float_array(name: str, values: np.ndarray) -> str:
    # Exact: each float as its bits.
    bits = ", ".join(f"0x{int(v):08x}u" for v in values.view(np.uint32))
    return f"static const uint32_t {name}[{values.size}] __attribute__((aligned(8))) = {{{bits}}};"


def _window(stride: int) -> list[str]:
    return [
        f"    const int32_t iy = oy * {stride} - 1, ix = ox * {stride} - 1;",
        f"    const int32_t y0 = iy < 0 ? -iy : 0, y1 = {H} - iy < {KH} ? {H} - iy : {KH};",
        f"    const int32_t x0 = ix < 0 ? -ix : 0, x1 = {W} - ix < {KW} ? {W} - ix : {KW};",
    ]


def _source(n: int, stride: int) -> str:
    """Per pixel and channel: the dense one-channel kernel, the dense four-channel kernel, the sparse
    one-pixel kernel; then per block of four pixels and channel the sparse four-pixel kernel."""
    ho, wo = _out_shape(stride)
    ps = 4 * stride * n  # bytes between adjacent windows
    inits = ", ".join(_init(o) for o in range(OUT))
    lines = [
        "#include <string.h>",
        '#include "model.h"',
        '#include "tvmmcu_dot.h"',
        _float_array("dense_bits", _weights(n).reshape(-1)),
        _c_array("int8_t", "blob", compress_blob(_weights(n))),
        f"static const float init[{OUT}] = {{{inits}}};",
        f"static int32_t state[TVMMCU_SPARSE_STATE_WORDS({KH * KW}, {4 * n}, {ps})];",
        f"static uint8_t staged[TVMMCU_SPARSE_STAGE_BYTES({KH * KW}, {KH * KW}, {ps})]"
        " __attribute__((aligned(8)));",
        "int32_t tvmmcu_model_run(const void *input, void *output) {",
        "  const float *x = (const float *)input;",
        "  const float *w = (const float *)(const void *)dense_bits;",
        "  const float *b = (const float *)(const void *)blob;",
        "  float *out = (float *)output;",
        f"  for (int32_t oy = 0; oy < {ho}; ++oy) for (int32_t ox = 0; ox < {wo}; ++ox) {{",
        *_window(stride),
        f"    const float *at = x + ((iy + y0) * {W} + (ix + x0)) * {n};",
        f"    for (int32_t o = 0; o < {OUT}; ++o) {{",
        f"      *out++ = tvmmcu_dot_runs_f32(at, {W * n}, {n}, w + o * {KH * KW * n}, {KW * n}, {n}, 1,",
        f"          {KH}, {KW}, {n}, y0, y1, x0, x1, init[o]);",
        f"      *out++ = tvmmcu_sparse1p_blob_f32(at, {W * n}, {n}, {KW}, b, {OUT}, o, {n}, y0, y1, x0, x1,",
        "          0, init[o]);",
        "    }",
        f"    for (int32_t o = 0; o < {OUT}; o += 4) {{",
        "      float acc[4] = {init[o], init[o + 1], init[o + 2], init[o + 3]};",
        f"      tvmmcu_dot4_runs_f32(at, {W * n}, {n}, w + o * {KH * KW * n}, {KH * KW * n}, {KW * n}, {n},",
        f"          1, {KH}, {KW}, {n}, y0, y1, x0, x1, acc);",
        "      for (int j = 0; j < 4; ++j) *out++ = acc[j];",
        "    }",
        "  }",
        f"  tvmmcu_sparse_setup(state, {KH}, {KW}, {4 * W * n}, {4 * n}, {4 * n}, {ps}, 0);",
        f"  for (int32_t blk = 0; blk < {ho * wo // 4}; ++blk) {{",
        "    int32_t d[4], m[4];",
        "    for (int32_t p = 0; p < 4; ++p) {",
        f"    const int32_t oy = (4 * blk + p) / {wo}, ox = (4 * blk + p) % {wo};",
        *_window(stride),
        f"    d[p] = (iy * {W} + ix) * {4 * n};",
        f"    m[p] = tvmmcu_sparse_inside(y0, y1, x0, x1, {KW});",
        "    }",
        "    const int32_t outside = tvmmcu_sparse_stage_f32(staged, x, d[0], d[1], d[2], d[3], m[0], m[1],",
        f"        m[2], m[3], state, {KH * KW}, {ps}, {4 * n});",
        f"    for (int32_t o = 0; o < {OUT}; ++o) {{",
        "      float acc[4] = {init[o], init[o], init[o], init[o]};",
        f"      tvmmcu_sparse4p_blob_f32(staged, outside, {ps}, b, {OUT}, o, {n}, acc);",
        "      for (int j = 0; j < 4; ++j) *out++ = acc[j];",
        "    }",
        "  }",
        "  return 0;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _outputs(stride: int) -> int:
    ho, wo = _out_shape(stride)
    return ho * wo * 3 * OUT + ho * wo // 4 * 4 * OUT


def _library(directory: Path, n: int, stride: int) -> tuple[Path, int]:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    n_out = 4 * _outputs(stride)
    directory.mkdir(parents=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=4 * H * W * n, outputs=n_out))
    (directory / "model.c").write_text(_source(n, stride))
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory, n_out


def _check(out: np.ndarray, x: np.ndarray, n: int, stride: int) -> None:
    """The sparse kernels' sums bit for bit the dense kernels'; the dense ones near float64's."""
    ho, wo = _out_shape(stride)
    per_pixel = out[: ho * wo * 3 * OUT].reshape(ho * wo, 3 * OUT)
    one = per_pixel[:, : 2 * OUT].reshape(ho * wo, OUT, 2)
    dense, sparse1 = one[..., 0], one[..., 1]
    dense4 = per_pixel[:, 2 * OUT :]
    assert dense.tobytes() == sparse1.tobytes()
    assert dense.tobytes() == dense4.tobytes()
    blocks = ho * wo // 4
    sparse4 = out[ho * wo * 3 * OUT :].reshape(blocks, OUT, 4).transpose(0, 2, 1).reshape(blocks * 4, OUT)
    assert sparse4.tobytes() == dense[: blocks * 4].tobytes()
    w = _weights(n).astype(np.float64)
    padded = np.zeros((H + 2, W + 2, n))
    padded[1:-1, 1:-1] = x.reshape(H, W, n)
    want = np.array(
        [
            np.tensordot(w, padded[y * stride : y * stride + KH, c * stride : c * stride + KW], 3)
            for y in range(ho)
            for c in range(wo)
        ]
    ) + np.array([float(_init(o)[:-1]) for o in range(OUT)])
    np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)


def test_float_blob_holds_the_kept_filterlets_values() -> None:
    w = _weights(16)
    vals, taps, rows = compress(w)
    kept = filterlets_kept(w)
    assert vals.dtype == np.float32 and taps.dtype == np.uint8 and rows.dtype == np.int16
    assert rows[2] - rows[1] == 0 and rows[3] - rows[2] == KH * KW
    blob = compress_blob(w)
    head = 2 * (OUT + 1) + int(kept.sum())
    start = head + (-head) % 8
    # The kept values as float32 bytes after the indices: 1 B per kept filterlet (uint8 taps), 2 B per
    # channel + 2 (int16 rows).
    assert blob.size == start + 4 * 16 * int(kept.sum())
    assert blob[start:].view(np.float32).tobytes() == vals.tobytes()
    assert start - head < 8


@pytest.mark.parametrize("stride", STRIDES, ids=lambda s: f"stride{s}")
@pytest.mark.parametrize("n", CHANNELS, ids=lambda n: f"n{n}")
def test_float_sparse_kernels_match_dense_bits_in_plain_c(n: int, stride: int, tmp_path: Path) -> None:
    lib, n_out = _library(tmp_path / "lib", n, stride)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    x = _data(n)
    out = np.zeros(n_out // 4, np.float32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    _check(out, x, n, stride)


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an385", "mps2-an521"])
@pytest.mark.parametrize("stride", STRIDES, ids=lambda s: f"stride{s}")
@pytest.mark.parametrize("n", CHANNELS, ids=lambda n: f"n{n}")
def test_float_sparse_kernels_match_dense_bits_on_cores(
    board: str, n: int, stride: int, tmp_path: Path
) -> None:
    """With an FPU (M4F, M7: VFMA, GCC contracts both kernels' acc += x * w) and without (M3, the M33
    as built: soft float)."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    lib, n_out = _library(tmp_path / "lib", n, stride)
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    x = _data(n)
    result = run_firmware(fw, x.tobytes(), n_out)
    _check(np.frombuffer(result.output, np.float32), x, n, stride)
