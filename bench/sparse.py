"""The filterlet-sparse kernels' section of docs/BENCHMARKS.md: a 3x3 convolution's interior pixels run
by the dense blocked kernel and by the sparse one at several fractions of filterlets kept, QEMU counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvm_mcu.passes.tir.block_weights import block
from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.sparse_kernels import compress
from tvm_mcu.targets import build_firmware, load_board, run_firmware

SPARSE_HEADING = "## Filterlet-sparse kernels"
BOARD = "mps2-an386"
H, W, K, OUT = 6, 10, 3, 16  # input rows and columns, kernel, output channels
COLUMNS = (1, 9)  # the interior output columns measured: two blocks of four pixels
CHANNELS = (16, 32, 64)
KEPT = (1.0, 0.5, 0.25, 0.125)
MODEL_H = """\
#ifndef MODEL_H
#define MODEL_H
#include <stdint.h>
#define TVMMCU_INPUT_BYTES {inputs}
#define TVMMCU_OUTPUT_BYTES 4
int32_t tvmmcu_model_run(const void *input, void *output);
#endif
"""


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[{max(values.size, 1)}] __attribute__((aligned(8))) = {{{body}}};"


def _instructions(tmp: Path, n: int, keep: float, sparse: bool) -> tuple[int, float]:
    """QEMU instructions of the interior pixels of rows 1 to H-2, and the fraction of filterlets kept."""
    rng = np.random.default_rng(0)
    mask = rng.random((OUT, K, K)) < keep
    w = (rng.integers(-128, 128, (OUT, K, K, n)) * mask[..., None]).astype(np.int8)
    vals, taps, rows = compress(w)
    offsets = np.array([(t // K) * W * n + (t % K) * n for t in range(K * K)])
    lo, hi = COLUMNS
    if sparse:
        loop = [
            f"for (int y = 1; y < {H - 1}; ++y) for (int c = {lo}; c < {hi}; c += 4) for (int o = 0; o < {OUT}; ++o) {{",
            "  int32_t acc[4] = {0, 0, 0, 0};",
            f"  tvmmcu_sparse4p_s8s8(x + ((y - 1) * {W} + c - 1) * {n}, {n}, at, vals, taps, rows[o], rows[o + 1],",
            f"                       {n}, acc);",
            "  s += acc[0] + acc[1] + acc[2] + acc[3];",
            "}",
        ]
    else:
        loop = [
            f"for (int y = 1; y < {H - 1}; ++y) for (int c = {lo}; c < {hi}; ++c) for (int b = 0; b < {OUT // 4}; ++b) {{",
            "  int32_t acc[4] = {0, 0, 0, 0};",
            f"  tvmmcu_dot4b_runs_s8s8(x + ((y - 1) * {W} + c - 1) * {n}, {W * n}, {n}, wb + b * {4 * K * K * n}, {K},",
            f"                         {K}, {n}, 0, {K}, 0, {K}, -3, acc);",
            "  s += acc[0] + acc[1] + acc[2] + acc[3];",
            "}",
        ]
    source = [
        '#include "model.h"',
        '#include "tvmmcu_dot.h"',
        _array("int8_t", "vals", vals),
        _array("int16_t", "taps", taps),
        _array("int16_t", "rows", rows),
        _array("int16_t", "at", offsets),
        _array("int8_t", "wb", block(w, K * K * n).reshape(-1)),
        "int32_t tvmmcu_model_run(const void *input, void *output) {",
        "const int8_t *x = (const int8_t *)input;",
        "int32_t s = 0;",
        *loop,
        "*(int32_t *)output = s;",
        "return 0;",
        "}",
    ]
    d = tmp / f"sparse_{n}_{keep}_{int(sparse)}"
    d.mkdir(parents=True)
    (d / "model.h").write_text(MODEL_H.format(inputs=H * W * n))
    (d / "model.c").write_text("\n".join(source) + "\n")
    (d / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    fw = build_firmware(d, load_board(BOARD), d / "fw")
    x = np.random.default_rng(1).integers(-128, 128, H * W * n).astype(np.int8)
    return run_firmware(fw, x.tobytes(), 4).instructions, float(mask.mean())


def sparse_section(tmp: Path) -> list[str]:
    outputs = (H - 2) * (COLUMNS[1] - COLUMNS[0]) * OUT
    lines = [
        "",
        SPARSE_HEADING,
        "",
        f"A 3x3 convolution over n input channels into {OUT} output channels, the interior pixels of a",
        f"{H}x{W} input ({outputs} outputs), on {BOARD} (QEMU instructions, not cycles): the dense blocked",
        "kernel (`tvmmcu_dot4b_runs_s8s8`: four output channels per pass over a pixel's window) against the",
        "filterlet-sparse one (`tvmmcu_sparse4p_s8s8`: one output channel at four pixels, visiting its kept",
        "filterlets; CSR with 2 B of index per kept filterlet and per channel) with a fraction s of the",
        "filterlets kept at random. *Per kept MAC* is the sparse count over s x the dense one; *slope* fits",
        "sparse = slope x s x dense + per-output cost over the fractions (the issue's goal: slope <= 1.15).",
        "Not yet reached from the compiler: the kernels are tested against numpy on every core.",
        "",
        "| n | dense | dense per MAC | s | sparse | per kept MAC | slope | per-output cost |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in CHANNELS:
        dense, _ = _instructions(tmp, n, 1.0, sparse=False)
        macs = outputs * K * K * n
        points = [
            (s, count) for s, count in (_swap(_instructions(tmp, n, keep, sparse=True)) for keep in KEPT)
        ]
        fractions = np.array([s for s, _ in points])
        counts = np.array([c for _, c in points], float)
        slope, per_output = np.linalg.lstsq(
            np.stack([fractions * dense, np.full_like(fractions, outputs)], axis=1), counts, rcond=None
        )[0]
        print(f"sparse: n={n}: slope {slope:.3f}, {per_output:.1f} per output", flush=True)
        for s, count in points:
            lines.append(
                f"| {n} | {dense:,} | {dense / macs:.2f} | {s:.3f} | {int(count):,} | {count / (s * dense):.3f} | "
                f"{slope:.3f} | {per_output:.1f} |"
            )
    return [*lines, ""]


def _swap(pair: tuple[int, float]) -> tuple[float, int]:
    count, fraction = pair
    return fraction, count
