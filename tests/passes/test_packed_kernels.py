"""The packed int4 kernels (``tvmmcu_dot4q_*``) and int2 kernels (``tvmmcu_dot4c_*``) against numpy on
PackWeights' layouts: the portable C on the host, SMLAD on masked nibbles and crumbs (Cortex-M4) and the
portable C (Cortex-M3) on the emulator, with the largest products long enough to cross the exact flush of
the scaled sums."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tvm_mcu.passes.tir.crumb_kernels import CRUMB_AT
from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.nibble_kernels import NIBBLE_CHUNK
from tvm_mcu.passes.tir.pack_weights import pack, pack2

VALUES = 528  # per channel: two flushes of NIBBLE_CHUNK values and a part
DATA = 3 * VALUES + 8  # bytes of data: all -128, all 0xFF (-1 and 255), then random
LENGTHS = (0, 8, 16, 40, NIBBLE_CHUNK, NIBBLE_CHUNK + 8, VALUES)
# (kh, kw, n, (xsy, xsx), taps inside (y0, y1, x0, x1)): windows of runs of n values, the taps one after
# another in the weights; xsx = n makes a row of taps inside one run.
RUNS = [
    (3, 3, 16, (60, 16), (0, 3, 0, 3)),
    (3, 3, 16, (60, 16), (1, 3, 0, 2)),
    (3, 3, 16, (60, 20), (0, 2, 1, 3)),
    (2, 2, 8, (40, 8), (0, 0, 0, 0)),  # all padding
    (1, 3, 168, (600, 168), (0, 1, 0, 3)),  # one run of 504 values: across two flushes
]
PAD = {"s8": -9, "u8": 200}
# The weight width -> (its kernels' prefix and weight suffix, the packing, the range of its values).
KINDS = {"int4": ("tvmmcu_dot4q", "s4", pack, -8, 7), "int2": ("tvmmcu_dot4c", "s2", pack2, -2, 1)}


def _weights(kind: str) -> np.ndarray:
    """Four channels of VALUES values: all the smallest, all the largest, then random in the range."""
    _, _, _, lo, hi = KINDS[kind]
    rng = np.random.default_rng(4)
    w = rng.integers(lo, hi + 1, (4, VALUES)).astype(np.int8)
    w[0], w[1] = lo, hi
    return w


def _data() -> np.ndarray:
    x = np.random.default_rng(5).integers(-128, 128, DATA).astype(np.int8)
    x[:VALUES], x[VALUES : 2 * VALUES] = -128, -1
    return x


def _calls(kind: str) -> tuple[str, list[tuple[str, int, int, int]]]:
    """The C calls and, per output, what numpy computes: (kind, case, data offset, n or window)."""
    k4, ws = KINDS[kind][:2]
    lines: list[str] = []
    expected: list[tuple[str, int, int, int]] = []
    for n in LENGTHS:
        for base in (0, VALUES, 2 * VALUES + 1):  # -128s, 0xFFs, random data one byte off alignment
            at = f"x + {base}"
            lines += [
                f"{{ int32_t acc[4] = {{{n}, -{n}, {base}, -7}};",
                f"  {k4}_s8{ws}({at}, wq, {n}, acc); for (int j = 0; j < 4; ++j) *out++ = acc[j];",
                f"  {k4}_u8{ws}((const uint8_t *)({at}), wq, {n}, acc);",
                "  for (int j = 0; j < 4; ++j) *out++ = acc[j];",
                f"  {k4}_sum_{ws}(wq, {n}, {-128 if base else 255}, acc);",
                "  for (int j = 0; j < 4; ++j) *out++ = acc[j]; }",
            ]
            expected.append(("dot", n, base, 0))
    for k, (kh, kw, n, (xsy, xsx), (y0, y1, x0, x1)) in enumerate(RUNS):
        for sign, pad in PAD.items():
            cast = "(const uint8_t *)" if sign == "u8" else ""
            lines += [
                "{ int32_t acc[4] = {5, -6, 7, -8};",
                f"  {k4}_runs_{sign}{ws}({cast}(x + {2 * VALUES}), {xsy}, {xsx}, wq, {kh}, {kw}, {n}, "
                f"{y0}, {y1}, {x0}, {x1}, {pad}, acc);",
                "  for (int j = 0; j < 4; ++j) *out++ = acc[j]; }",
            ]
            expected.append(("runs", k, 2 * VALUES, 1 if sign == "u8" else 0))
    return "\n    ".join(lines), expected


def _expected(x: np.ndarray, w: np.ndarray, cases: list[tuple[str, int, int, int]]) -> np.ndarray:
    s = x.astype(np.int64)
    u = x.view(np.uint8).astype(np.int64)
    wl = w.astype(np.int64)
    out: list[int] = []
    for kind, a, base, b in cases:
        if kind == "dot":
            n = a
            acc = [n + s[base : base + n] @ wl[0, :n], -n + s[base : base + n] @ wl[1, :n]]
            acc += [base + s[base : base + n] @ wl[2, :n], -7 + s[base : base + n] @ wl[3, :n]]
            out += acc
            acc = [v + u[base : base + n] @ wl[j, :n] for j, v in enumerate(acc)]
            out += acc
            value = -128 if base else 255
            out += [v + value * int(wl[j, :n].sum()) for j, v in enumerate(acc)]
            continue
        kh, kw, n, (xsy, xsx), (y0, y1, x0, x1) = RUNS[a]
        values, pad = (u, PAD["u8"]) if b else (s, PAD["s8"])
        for j, acc0 in enumerate((5, -6, 7, -8)):
            total = acc0
            for ry in range(kh):
                for rx in range(kw):
                    t = (ry * kw + rx) * n
                    if y0 <= ry < y1 and x0 <= rx < x1:
                        at = base + (ry - y0) * xsy + (rx - x0) * xsx
                        total += int(values[at : at + n] @ wl[j, t : t + n])
                    else:
                        total += pad * int(wl[j, t : t + n].sum())
            out.append(total)
    return np.array(out, np.int64).astype(np.int32)


def _library(directory: Path, kind: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """model.c calling the kernels, its input (the data, then the packed weights) and the expected
    outputs."""
    from tests.targets.test_firmware_on_emulator import MODEL_H

    x, w = _data(), _weights(kind)
    packed = KINDS[kind][2](w, VALUES)
    calls, cases = _calls(kind)
    expected = _expected(x, w, cases)
    source = (
        '#include "model.h"\n#include "tvmmcu_dot.h"\n\n'
        "int32_t tvmmcu_model_run(const void *input, void *output) {\n"
        "    const int8_t *x = (const int8_t *)input;\n"
        f"    const void *wq = x + {DATA};\n"
        "    int32_t *out = (int32_t *)output;\n"
        f"    {calls}\n"
        "    return 0;\n}\n"
    )
    directory.mkdir(parents=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=DATA + packed.size, outputs=4 * expected.size))
    (directory / "model.c").write_text(source)
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory, np.concatenate([x.view(np.uint8), packed]), expected


def test_the_packed_layout_is_half_the_bytes_in_nibble_order() -> None:
    w = _weights("int4")
    packed = pack(w, VALUES)
    assert packed.dtype == np.uint8 and packed.size == w.size // 2
    # Block 0, channel 2: byte 0 = w0 | w1 << 4, byte 1 = w4 | w5 << 4, byte 2 = w2 | w3 << 4, ...
    word = packed[8:12].astype(np.int64)
    nibbles = np.array([(word[q // 2] >> (4 * (q % 2))) & 15 for q in range(8)])
    values = np.where(nibbles >= 8, nibbles - 16, nibbles)
    assert list(values) == list(w[2, [0, 1, 4, 5, 2, 3, 6, 7]])


def test_the_crumb_layout_is_a_quarter_of_the_bytes_two_channels_a_word() -> None:
    w = _weights("int2")
    packed = pack2(w, VALUES)
    assert packed.dtype == np.uint8 and packed.size == w.size // 4
    # Block 1 (values 8..15): word 0 holds channels 0 and 1, word 1 channels 2 and 3; value r of the
    # first channel in crumb CRUMB_AT[r], of the second one crumb lower.
    words = packed[8:16].view("<u4").astype(np.int64)
    for j in range(4):
        crumbs = [(int(words[j // 2]) >> (2 * (q - j % 2))) & 3 for q in CRUMB_AT]
        values = [c - 4 if c >= 2 else c for c in crumbs]
        assert values == list(w[j, 8:16]), j


@pytest.mark.parametrize(("packer", "value", "pattern"), [(pack, 8, r"\[-8, 7\]"), (pack2, 2, r"\[-2, 1\]")])
def test_pack_refuses_values_beyond_the_width(packer: Any, value: int, pattern: str) -> None:
    w = _weights("int2")
    w[3, 5] = value
    with pytest.raises(ValueError, match=pattern):
        packer(w, VALUES)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_kernels_are_exact_in_plain_c(kind: str, tmp_path: Path) -> None:
    """The portable path (the host, as on Cortex-M3) against numpy."""
    lib, data, expected = _library(tmp_path / "lib", kind)
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    out = np.zeros(expected.size, np.int32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(data.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.emulator
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385"])
def test_the_kernels_are_exact_on_the_board(board: str, kind: str, tmp_path: Path) -> None:
    """SMLAD on the masked nibbles or crumbs (M4, DSP) and the plain loop (M3) against numpy."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    lib, data, expected = _library(tmp_path / "lib", kind)
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    result = run_firmware(fw, data.tobytes(), 4 * expected.size)
    np.testing.assert_array_equal(np.frombuffer(result.output, np.int32), expected)
