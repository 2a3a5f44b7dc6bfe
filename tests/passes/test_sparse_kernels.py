"""The filterlet-sparse kernels (CSR over filterlets) against a dense numpy convolution."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.sparse_kernels import compress, compress_blob, filterlets_kept
from tvm_mcu.passes.tir.sparse_pixel_blocks import stage_copies

H, W, KH, KW, OUT = 6, 9, 3, 3, 5
PAD = {"s8": -9, "u8": 200}
# Input channels: a multiple of 8 (the SIMD steps only) and not (a scalar tail).
CHANNELS = (16, 20)
# Strides: 1 (4 of 9 columns, blocks across rows) and 2 (a 3x5 output: every block touches the border).
STRIDES = (1, 2)


def _out_shape(stride: int) -> tuple[int, int]:
    """Output rows and columns of the 3x3 window, padding 1 on each side."""
    return (H + 2 - KH) // stride + 1, (W + 2 - KW) // stride + 1


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
    return f"static const {ctype} {name}[{max(values.size, 1)}] __attribute__((aligned(8))) = {{{body}}};"


def _window(stride: int) -> list[str]:
    """C declaring, for output pixel (oy, ox), its window's first tap offset d (padding included) and the
    taps inside [y0, y1) x [x0, x1)."""
    return [
        f"    const int32_t iy = oy * {stride} - 1, ix = ox * {stride} - 1;",
        f"    const int32_t y0 = iy < 0 ? -iy : 0, y1 = {H} - iy < {KH} ? {H} - iy : {KH};",
        f"    const int32_t x0 = ix < 0 ? -ix : 0, x1 = {W} - ix < {KW} ? {W} - ix : {KW};",
    ]


# Bytes after the stage buffer that no stage call may write (the compiler's bound on its copies).
CANARY = 16


def _copies(n: int, stride: int) -> int:
    """The compiler's bound on the taps a block copies (``stage_copies``), for this layer."""
    ho, wo = _out_shape(stride)

    def inside(o: int, size: int, k: int) -> tuple[int, int]:
        i = o * stride - 1
        return (-i if i < 0 else 0, size - i if size - i < k else k)

    rows = [inside(oy, H, KH) for oy in range(ho)]
    cols = [inside(ox, W, KW) for ox in range(wo)]
    return stage_copies(rows, cols, KW, [stride * W * n, stride * n])


def _source(n: int, stride: int) -> str:
    vals, taps, rows = compress(_weights(n))
    ho, wo = _out_shape(stride)
    ps = stride * n
    lines = [
        '#include "model.h"',
        '#include "tvmmcu_dot.h"',
        _c_array("int8_t", "vals", vals),
        _c_array("uint8_t", "taps", taps),
        _c_array("int16_t", "rows", rows),
        _c_array("int8_t", "blob", compress_blob(_weights(n))),
        f"static int32_t state[TVMMCU_SPARSE_STATE_WORDS({KH * KW}, {n}, {ps})];",
        f"#define STAGED TVMMCU_SPARSE_STAGE_BYTES({KH * KW}, {_copies(n, stride)}, {ps})",
        f"static uint8_t staged[STAGED + {CANARY}] __attribute__((aligned(8)));",
        "int32_t tvmmcu_model_run(const void *input, void *output) {",
        "  const int8_t *xs = (const int8_t *)input;",
        "  const uint8_t *xu = (const uint8_t *)input;",
        "  int32_t *out = (int32_t *)output;",
        f"  memset(staged + STAGED, 0xa5, {CANARY});",
    ]
    for kind, x in (("s8", "xs"), ("u8", "xu")):
        pad = PAD[kind]
        # Every pixel, one at a time, padded windows included.
        lines += [
            f"  for (int32_t oy = 0; oy < {ho}; ++oy) for (int32_t ox = 0; ox < {wo}; ++ox)",
            f"  for (int32_t o = 0; o < {OUT}; ++o) {{",
            *_window(stride),
            f"    const int32_t at = ((iy + y0) * {W} + (ix + x0)) * {n};",
            f"    *out++ = tvmmcu_sparse1p_{kind}s8({x} + at, {W * n}, {n}, {KW}, vals, taps, rows[o],",
            f"        rows[o + 1], {n}, y0, y1, x0, x1, {pad}, 7 * o - 3);",
            "  }",
            # Four consecutive pixels of the flattened output at once, wherever they lie.
            f"  tvmmcu_sparse_setup(state, {KH}, {KW}, {W * n}, {n}, {n}, {ps}, {pad});",
            f"  for (int32_t b = 0; b < {ho * wo // 4}; ++b) {{",
            "    int32_t d[4], m[4];",
            "    for (int32_t p = 0; p < 4; ++p) {",
            f"    const int32_t oy = (4 * b + p) / {wo}, ox = (4 * b + p) % {wo};",
            *_window(stride),
            f"    d[p] = (iy * {W} + ix) * {n};",
            f"    m[p] = tvmmcu_sparse_inside(y0, y1, x0, x1, {KW});",
            "    }",
            f"    const int32_t aligned = tvmmcu_sparse_stage(staged, {x}, d[0], d[1], d[2], d[3],",
            f"        m[0], m[1], m[2], m[3], state, {KH * KW}, {ps}, {n});",
            f"    for (int32_t o = 0; o < {OUT}; ++o) {{",
            "      int32_t acc[4] = {7 * o - 3, 7 * o - 3, 7 * o - 3, 7 * o - 3};",
            f"      tvmmcu_sparse4p_blob_{kind}s8(staged, aligned, {ps}, blob, {OUT}, o, {n}, acc);",
            "      for (int j = 0; j < 4; ++j) *out++ = acc[j];",
            "    }",
            "  }",
        ]
    # 1: no stage call wrote past the bytes the compiler would give it.
    lines += [
        "  int32_t intact = 1;",
        f"  for (int k = 0; k < {CANARY}; ++k) intact &= staged[STAGED + k] == 0xa5;",
        "  *out++ = intact;",
        "  return 0;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _conv(x: np.ndarray, n: int, stride: int, kind: str) -> np.ndarray:
    """[HO, WO, OUT] int64: the padded convolution plus the initial accumulators 7 * o - 3."""
    w = _weights(n).astype(np.int64)
    data = (x.view(np.uint8) if kind == "u8" else x).astype(np.int64).reshape(H, W, n)
    padded = np.full((H + 2, W + 2, n), PAD[kind], np.int64)
    padded[1:-1, 1:-1] = data
    ho, wo = _out_shape(stride)
    conv = np.zeros((ho, wo, OUT), np.int64)
    for y in range(ho):
        for xx in range(wo):
            window = padded[y * stride : y * stride + KH, xx * stride : xx * stride + KW]
            conv[y, xx] = np.tensordot(w, window, axes=([1, 2, 3], [0, 1, 2])) + 7 * np.arange(OUT) - 3
    return conv


def _staged_blocks(stride: int) -> int:
    """Blocks of four pixels with a tap staged: their windows are not all inside the input one pixel
    stride apart (a tap outside for one of them, or two rows)."""
    ho, wo = _out_shape(stride)
    staged = 0
    for b in range(ho * wo // 4):
        pixels = [divmod(4 * b + p, wo) for p in range(4)]
        inside = all(
            y * stride >= 1 and y * stride + 1 < H and x * stride >= 1 and x * stride + 1 < W
            for y, x in pixels
        )
        staged += int(not (inside and len({y for y, _ in pixels}) == 1))
    return staged


def _expected(x: np.ndarray, n: int, stride: int) -> np.ndarray:
    out: list[int] = []
    for kind in ("s8", "u8"):
        conv = _conv(x, n, stride, kind)
        out += list(conv.reshape(-1))
        flat = conv.reshape(-1, OUT)
        for b in range(flat.shape[0] // 4):
            for o in range(OUT):
                out += list(flat[4 * b : 4 * b + 4, o])
    out.append(1)  # the canary after the stage buffer intact
    return np.array(out, np.int64).astype(np.int32)


def _outputs(stride: int) -> int:
    ho, wo = _out_shape(stride)
    return 2 * (ho * wo * OUT + ho * wo // 4 * 4 * OUT) + 1


def _data(n: int) -> np.ndarray:
    x = np.random.default_rng(100 + n).integers(-128, 128, H * W * n).astype(np.int8)
    x[:6] = -128
    return x


def _library(directory: Path, n: int, stride: int) -> tuple[Path, int]:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    n_out = 4 * _outputs(stride)
    directory.mkdir(parents=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=H * W * n, outputs=n_out))
    (directory / "model.c").write_text(_source(n, stride))
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory, n_out


def test_compressed_layout_holds_the_kept_filterlets_and_their_indices() -> None:
    w = _weights(16)
    vals, taps, rows = compress(w)
    kept = filterlets_kept(w)
    assert rows.dtype == np.int16 and taps.dtype == np.uint8 and vals.dtype == np.int8
    assert list(np.diff(rows)) == list(kept.sum(axis=1))
    assert rows[2] - rows[1] == 0 and rows[3] - rows[2] == KH * KW  # none kept, all kept
    # Within the flash DTMM's format promises (the kept weights + 2 B per kept filterlet and per
    # channel + 2): the narrowest tap index, 1 B per kept filterlet.
    assert vals.nbytes + taps.nbytes + rows.nbytes == kept.sum() * 16 + kept.sum() + 2 * (OUT + 1)
    dense = np.zeros_like(w).reshape(OUT, -1, 16)
    for o in range(OUT):
        for f in range(rows[o], rows[o + 1]):
            dense[o, taps[f]] = vals[f * 16 : (f + 1) * 16]
    np.testing.assert_array_equal(dense.reshape(w.shape), w)


@pytest.mark.parametrize("stride", STRIDES, ids=lambda s: f"stride{s}")
def test_the_blocks_cover_both_paths(stride: int) -> None:
    """Some blocks read wholly in place, some with taps staged (border, across rows); with stride 2 every
    block touches the border."""
    ho, wo = _out_shape(stride)
    staged = _staged_blocks(stride)
    assert 0 < staged <= ho * wo // 4
    assert (staged < ho * wo // 4) == (stride == 1)


@pytest.mark.parametrize("stride", STRIDES, ids=lambda s: f"stride{s}")
@pytest.mark.parametrize("n", CHANNELS, ids=lambda n: f"n{n}")
def test_sparse_kernels_are_exact_in_plain_c(n: int, stride: int, tmp_path: Path) -> None:
    lib, n_out = _library(tmp_path / "lib", n, stride)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    x = _data(n)
    out = np.zeros(n_out // 4, np.int32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    np.testing.assert_array_equal(out, _expected(x, n, stride))


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an385", "mps2-an521"])
@pytest.mark.parametrize("stride", STRIDES, ids=lambda s: f"stride{s}")
@pytest.mark.parametrize("n", CHANNELS, ids=lambda n: f"n{n}")
def test_sparse_kernels_are_exact_on_every_core(board: str, n: int, stride: int, tmp_path: Path) -> None:
    """The SMLAD path (M4, M7) and the portable one (M3, the M33 built without DSP) against numpy."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    lib, n_out = _library(tmp_path / "lib", n, stride)
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    x = _data(n)
    result = run_firmware(fw, x.tobytes(), n_out)
    np.testing.assert_array_equal(np.frombuffer(result.output, np.int32), _expected(x, n, stride))
