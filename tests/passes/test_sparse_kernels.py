"""The filterlet-sparse kernels (CSR over filterlets) against a dense numpy convolution."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.sparse_kernels import compress, filterlets_kept

H, W, KH, KW, OUT = 6, 9, 3, 3, 5
PAD = {"s8": -9, "u8": 200}
# Input channels: a multiple of 8 (the SIMD steps only) and not (a scalar tail).
CHANNELS = (16, 20)


def _weights(n: int) -> np.ndarray:
    """OHWI int8 weights with about half the filterlets zero (one channel keeps none, one all)."""
    rng = np.random.default_rng(n)
    w = rng.integers(-128, 128, (OUT, KH, KW, n)).astype(np.int8)
    w[0, 0, 0, :4] = -128  # the largest products
    keep = rng.random((OUT, KH, KW)) < 0.5
    keep[1] = False
    keep[2] = True
    return (w * keep[..., None]).astype(np.int8)


def _c_array(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[{max(values.size, 1)}] = {{{body}}};"


def _source(n: int) -> str:
    vals, taps, rows = compress(_weights(n))
    lines = [
        '#include "model.h"',
        '#include "tvmmcu_dot.h"',
        _c_array("int8_t", "vals", vals),
        _c_array("int16_t", "taps", taps),
        _c_array("int16_t", "rows", rows),
        _c_array("int16_t", "at", np.array([(t // KW) * W * n + (t % KW) * n for t in range(KH * KW)])),
        "int32_t tvmmcu_model_run(const void *input, void *output) {",
        "  const int8_t *xs = (const int8_t *)input;",
        "  const uint8_t *xu = (const uint8_t *)input;",
        "  int32_t *out = (int32_t *)output;",
    ]
    for kind, x in (("s8", "xs"), ("u8", "xu")):
        pad = PAD[kind]
        # Every pixel, one at a time, padded windows included (pad 1 on each side).
        lines += [
            f"  for (int32_t y = 0; y < {H}; ++y) for (int32_t x = 0; x < {W}; ++x)",
            f"  for (int32_t o = 0; o < {OUT}; ++o) {{",
            "    const int32_t y0 = y == 0 ? 1 : 0, y1 = y == " + str(H - 1) + " ? 2 : 3;",
            "    const int32_t x0 = x == 0 ? 1 : 0, x1 = x == " + str(W - 1) + " ? 2 : 3;",
            f"    const int32_t at = ((y - 1 + y0) * {W} + (x - 1 + x0)) * {n};",
            f"    *out++ = tvmmcu_sparse1p_{kind}s8({x} + at, {W * n}, {n}, {KW}, vals, taps, rows[o],",
            f"        rows[o + 1], {n}, y0, y1, x0, x1, {pad}, 7 * o - 3);",
            "  }",
            # Four interior pixels at once: rows 1 .. H-2, columns 1 .. 4.
            f"  for (int32_t y = 1; y < {H - 1}; ++y) for (int32_t o = 0; o < {OUT}; ++o) {{",
            "    int32_t acc[4] = {7 * o - 3, 7 * o - 3, 7 * o - 3, 7 * o - 3};",
            f"    tvmmcu_sparse4p_{kind}s8({x} + (y - 1) * {W * n}, {n}, at, vals, taps, rows[o],",
            f"        rows[o + 1], {n}, acc);",
            "    for (int j = 0; j < 4; ++j) *out++ = acc[j];",
            "  }",
        ]
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


def _expected(x: np.ndarray, n: int) -> np.ndarray:
    w = _weights(n).astype(np.int64)
    out: list[int] = []
    for kind in ("s8", "u8"):
        data = (x.view(np.uint8) if kind == "u8" else x).astype(np.int64).reshape(H, W, n)
        padded = np.full((H + 2, W + 2, n), PAD[kind], np.int64)
        padded[1:-1, 1:-1] = data
        conv = np.zeros((H, W, OUT), np.int64)
        for y in range(H):
            for xx in range(W):
                window = padded[y : y + KH, xx : xx + KW]
                conv[y, xx] = np.tensordot(w, window, axes=([1, 2, 3], [0, 1, 2])) + 7 * np.arange(OUT) - 3
        out += list(conv.reshape(-1))
        for y in range(1, H - 1):
            for o in range(OUT):
                out += list(conv[y, 1:5, o])
    return np.array(out, np.int64).astype(np.int32)


def _data(n: int) -> np.ndarray:
    x = np.random.default_rng(100 + n).integers(-128, 128, H * W * n).astype(np.int8)
    x[:6] = -128
    return x


def _library(directory: Path, n: int) -> tuple[Path, int]:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    n_out = 4 * 2 * (H * W * OUT + (H - 2) * OUT * 4)
    directory.mkdir(parents=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=H * W * n, outputs=n_out))
    (directory / "model.c").write_text(_source(n))
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory, n_out


def test_compressed_layout_holds_the_kept_filterlets_and_their_indices() -> None:
    w = _weights(16)
    vals, taps, rows = compress(w)
    kept = filterlets_kept(w)
    assert rows.dtype == np.int16 and taps.dtype == np.int16 and vals.dtype == np.int8
    assert list(np.diff(rows)) == list(kept.sum(axis=1))
    assert rows[2] - rows[1] == 0 and rows[3] - rows[2] == KH * KW  # none kept, all kept
    # The flash DTMM's format promises: the kept weights + 2 B per kept filterlet and per channel + 2.
    assert vals.nbytes + taps.nbytes + rows.nbytes == kept.sum() * 16 + 2 * kept.sum() + 2 * (OUT + 1)
    dense = np.zeros_like(w).reshape(OUT, -1, 16)
    for o in range(OUT):
        for f in range(rows[o], rows[o + 1]):
            dense[o, taps[f]] = vals[f * 16 : (f + 1) * 16]
    np.testing.assert_array_equal(dense.reshape(w.shape), w)


@pytest.mark.parametrize("n", CHANNELS)
def test_sparse_kernels_are_exact_in_plain_c(n: int, tmp_path: Path) -> None:
    lib, n_out = _library(tmp_path / "lib", n)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    x = _data(n)
    out = np.zeros(n_out // 4, np.int32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    np.testing.assert_array_equal(out, _expected(x, n))


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an385", "mps2-an521"])
@pytest.mark.parametrize("n", CHANNELS)
def test_sparse_kernels_are_exact_on_every_core(board: str, n: int, tmp_path: Path) -> None:
    """The SMLAD path (M4, M7) and the portable one (M3, the M33 built without DSP) against numpy."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    lib, n_out = _library(tmp_path / "lib", n)
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    x = _data(n)
    result = run_firmware(fw, x.tobytes(), n_out)
    np.testing.assert_array_equal(np.frombuffer(result.output, np.int32), _expected(x, n))
