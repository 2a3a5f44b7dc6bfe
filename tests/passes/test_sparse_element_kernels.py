"""The element-sparse kernels (CSR over single weights) against a dense numpy convolution: every pixel
through the padded one-pixel kernel, the interior four at a time; fixed cases and a seeded fuzz sample
of densities, channel counts and kernel sizes (more seeds: ``bench/sparse.py``'s fuzz)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import attrs
import numpy as np
import pytest

from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.sparse_element_kernels import MAX_STEP, blob_bytes, compress, compress_blob

PAD = {"s8": -9, "u8": 200}


@attrs.frozen
class Case:
    """A stride-``stride`` convolution of an ``h`` x ``w`` x ``n`` input padded by half the kernel."""

    h: int
    w: int
    kh: int
    kw: int
    n: int
    out: int
    density: float
    seed: int
    stride: int = 1

    @property
    def pads(self) -> tuple[int, int]:
        return self.kh // 2, self.kw // 2

    def weights(self) -> np.ndarray:
        """OHWI int8 weights, each kept with probability ``density`` (one channel keeps none, one its
        first and last weights only: a distance bridged when the window holds more than 256)."""
        rng = np.random.default_rng(self.seed)
        w = rng.integers(-128, 128, (self.out, self.kh, self.kw, self.n)).astype(np.int8)
        w[0, 0, 0, :2] = -128  # the largest products
        w = w * (rng.random(w.shape) < self.density)
        if self.out > 1:
            w[1] = 0
        if self.out > 2:
            w[2] = 0
            w[2, 0, 0, 0], w[2, -1, -1, -1] = 5, -7
        return w.astype(np.int8)

    def data(self) -> np.ndarray:
        x = np.random.default_rng(100 + self.seed).integers(-128, 128, self.h * self.w * self.n)
        x[:6] = -128
        return x.astype(np.int8)

    def blocks(self) -> list[tuple[int, int]]:
        """(row, column) of the input's first tap of each block of four stride-apart windows inside."""
        span = 3 * self.stride + self.kw
        return [(y, c) for y in range(self.h - self.kh + 1) for c in range(0, self.w - span + 1, 3)]

    def outputs(self) -> int:
        return 2 * (self.h * self.w * self.out + len(self.blocks()) * self.out * 4)


FIXED = (
    Case(6, 9, 3, 3, 16, 5, 0.3, 1),
    Case(6, 9, 3, 3, 20, 5, 0.5, 2),
    Case(5, 8, 1, 3, 8, 3, 0.7, 3),
    Case(7, 8, 3, 3, 40, 4, 0.004, 4),  # a window of 360 values: distances bridged
    Case(6, 11, 3, 3, 12, 3, 0.4, 5, stride=2),
)


def _fuzz(seed: int) -> Case:
    rng = np.random.default_rng(seed)
    kh, kw = (int(v) for v in rng.integers(1, 6, 2))
    return Case(
        int(rng.integers(kh, 9)),
        int(rng.integers(kw + 4, 13)),
        kh,
        kw,
        int(rng.integers(8, 72)),
        int(rng.integers(1, 9)),
        float(rng.choice([0.01, 0.05, 0.1, 0.25, 0.5, 0.8])),
        seed,
        int(rng.integers(1, 3)),
    )


FUZZ_SEEDS = (10, 11, 12, 13)
CASES = {**{f"fixed{k}": c for k, c in enumerate(FIXED)}, **{f"fuzz{s}": _fuzz(s) for s in FUZZ_SEEDS}}


def _c_array(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[{max(values.size, 1)}] __attribute__((aligned(8))) = {{{body}}};"


def source(case: Case) -> str:
    """``model.c``: every pixel through ``tvmmcu_esparse1p_*``, then each block of four through
    ``tvmmcu_esparse4p_*``, signed then unsigned data; int32 outputs."""
    c = case
    n, pt, pl = c.n, *c.pads
    blob = compress_blob(c.weights())
    lines = [
        '#include "model.h"',
        '#include "tvmmcu_dot.h"',
        _c_array("int8_t", "blob", blob),
        "int32_t tvmmcu_model_run(const void *input, void *output) {",
        "  const int8_t *xs = (const int8_t *)input;",
        "  const uint8_t *xu = (const uint8_t *)input;",
        "  int32_t *out = (int32_t *)output;",
    ]
    for kind, x in (("s8", "xs"), ("u8", "xu")):
        lines += [
            f"  for (int32_t y = 0; y < {c.h}; ++y) for (int32_t x = 0; x < {c.w}; ++x)",
            f"  for (int32_t o = 0; o < {c.out}; ++o) {{",
            f"    const int32_t y0 = y < {pt} ? {pt} - y : 0;",
            f"    const int32_t y1 = y + {c.kh - pt} > {c.h} ? {c.h + pt} - y : {c.kh};",
            f"    const int32_t x0 = x < {pl} ? {pl} - x : 0;",
            f"    const int32_t x1 = x + {c.kw - pl} > {c.w} ? {c.w + pl} - x : {c.kw};",
            f"    const int32_t at = ((y - {pt} + y0) * {c.w} + (x - {pl} + x0)) * {n};",
            f"    *out++ = tvmmcu_esparse1p_blob_{kind}s8({x} + at, {c.w * n}, {n}, {c.kw}, blob,",
            f"        {c.out}, o, {n}, y0, y1, x0, x1, {PAD[kind]}, 7 * o - 3);",
            "  }",
        ]
        for y, col in c.blocks():
            lines += [
                f"  for (int32_t o = 0; o < {c.out}; ++o) {{",
                "    int32_t acc[4] = {7 * o - 3, 7 * o - 3, 7 * o - 3, 7 * o - 3};",
                f"    tvmmcu_esparse4p_blob_{kind}s8({x} + {(y * c.w + col) * n}, {c.stride * n},",
                f"        {c.w * n}, {n}, {c.kw}, blob, {c.out}, o, {n}, acc);",
                "    for (int j = 0; j < 4; ++j) *out++ = acc[j];",
                "  }",
            ]
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


def expected(case: Case, x: np.ndarray) -> np.ndarray:
    c = case
    w = c.weights().astype(np.int64)
    pt, pl = c.pads
    bias = 7 * np.arange(c.out) - 3
    out: list[int] = []
    for kind in ("s8", "u8"):
        data = (x.view(np.uint8) if kind == "u8" else x).astype(np.int64).reshape(c.h, c.w, c.n)
        padded = np.full((c.h + c.kh, c.w + c.kw, c.n), PAD[kind], np.int64)
        padded[pt : pt + c.h, pl : pl + c.w] = data
        for y in range(c.h):
            for xx in range(c.w):
                window = padded[y : y + c.kh, xx : xx + c.kw]
                out += list(np.tensordot(w, window, axes=([1, 2, 3], [0, 1, 2])) + bias)
        for y, col in c.blocks():
            for o in range(c.out):
                for p in range(4):
                    at = col + p * c.stride
                    out.append(int((w[o] * data[y : y + c.kh, at : at + c.kw]).sum() + bias[o]))
    return np.array(out, np.int64).astype(np.int32)


def library(directory: Path, case: Case) -> Path:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    directory.mkdir(parents=True)
    sizes = {"inputs": case.h * case.w * case.n, "outputs": 4 * case.outputs()}
    (directory / "model.h").write_text(MODEL_H.format(**sizes))
    (directory / "model.c").write_text(source(case))
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory


def test_compressed_layout_holds_every_non_zero_and_its_column() -> None:
    w = FIXED[3].weights()
    values, steps, rows = compress(w)
    assert values.dtype == np.int8 and steps.dtype == np.uint8 and rows.dtype == np.uint16
    flat = w.reshape(w.shape[0], -1)
    dense = np.zeros_like(flat)
    for o in range(w.shape[0]):
        cols = np.cumsum(steps[rows[o] : rows[o + 1]].astype(np.int64))
        dense[o, cols] = values[rows[o] : rows[o + 1]]
    np.testing.assert_array_equal(dense, flat)
    bridges = int((values == 0).sum())
    assert bridges > 0 and (steps[values == 0] == MAX_STEP).all()  # a 360-value window
    # The flash: kept values + one index byte each (+ 2 B per bridge) + 2 B per row pointer.
    kept = int(np.count_nonzero(w))
    assert compress_blob(w).nbytes == blob_bytes(w) == kept + kept + 2 * bridges + 2 * (w.shape[0] + 1)
    assert rows[2] - rows[1] == 0  # channel 1 keeps nothing


def test_compress_refuses_more_entries_than_uint16_row_pointers_hold() -> None:
    with pytest.raises(ValueError, match="beyond uint16"):
        compress(np.ones((2, 3, 3, 4000), np.int8))


@pytest.mark.parametrize("name", list(CASES))
def test_element_kernels_are_exact_in_plain_c(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    lib = library(tmp_path / "lib", case)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    x = case.data()
    out = np.zeros(case.outputs(), np.int32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    np.testing.assert_array_equal(out, expected(case, x))


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385"])
@pytest.mark.parametrize("name", list(CASES))
def test_element_kernels_are_exact_on_the_m4_and_m3(board: str, name: str, tmp_path: Path) -> None:
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    case = CASES[name]
    fw = build_firmware(library(tmp_path / "lib", case), load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    x = case.data()
    result = run_firmware(fw, x.tobytes(), 4 * case.outputs())
    np.testing.assert_array_equal(np.frombuffer(result.output, np.int32), expected(case, x))
