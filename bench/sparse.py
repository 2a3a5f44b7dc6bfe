"""The filterlet-sparse kernels' section of docs/BENCHMARKS.md: a 3x3 convolution's interior pixels run
by the dense blocked kernel and by the sparse one at several fractions of filterlets kept, QEMU counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvm_mcu.passes.tir.block_weights import block
from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT
from tvm_mcu.passes.tir.sparse_element_kernels import compress_blob as element_blob
from tvm_mcu.passes.tir.sparse_kernels import compress, compress_blob
from tvm_mcu.targets import build_firmware, load_board, run_firmware

SPARSE_HEADING = "## Filterlet-sparse kernels"
BOARD = "mps2-an386"
H, W, K, OUT = 6, 10, 3, 16  # input rows and columns, kernel, output channels
COLUMNS = (1, 9)  # the interior output columns measured: two blocks of four pixels
CHANNELS = (16, 32, 64)
KEPT = (1.0, 0.5, 0.25, 0.125)
ELEMENT_KEPT = (0.5, 0.25, 0.125, 0.05)
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


def _instructions(tmp: Path, n: int, keep: float, sparse: bool | str) -> tuple[int, float]:
    """QEMU instructions of the interior pixels of rows 1 to H-2, and the fraction of filterlets kept
    (``sparse="elements"``: of single weights kept, run by the element-sparse kernel)."""
    elements = sparse == "elements"
    w, fraction = _weights(n, keep, elements)
    vals, taps, rows = compress(w)
    offsets = np.array([(t // K) * W * n + (t % K) * n for t in range(K * K)])
    lo, hi = COLUMNS
    if elements:
        loop = [
            f"for (int y = 1; y < {H - 1}; ++y) for (int c = {lo}; c < {hi}; c += 4) for (int o = 0; o < {OUT}; ++o) {{",
            "  int32_t acc[4] = {0, 0, 0, 0};",
            f"  tvmmcu_esparse4p_blob_s8s8(x + ((y - 1) * {W} + c - 1) * {n}, {n}, {W * n}, {n}, {K}, eblob, {OUT}, o,",
            f"                             {n}, acc);",
            "  s += acc[0] + acc[1] + acc[2] + acc[3];",
            "}",
        ]
    elif sparse:
        # Per block of four pixels, a pointer per tap (tvmmcu_sparse_stage's table for a block inside).
        loop = [
            f"for (int y = 1; y < {H - 1}; ++y) for (int c = {lo}; c < {hi}; c += 4) {{",
            f"  const int8_t *table[{K * K}];",
            f"  for (int t = 0; t < {K * K}; ++t) table[t] = x + ((y - 1) * {W} + c - 1) * {n} + at[t];",
            f"  for (int o = 0; o < {OUT}; ++o) {{",
            "    int32_t acc[4] = {0, 0, 0, 0};",
            f"    tvmmcu_sparse4p_s8s8(table, {n}, 1, vals, taps, rows[o], rows[o + 1], {n}, acc);",
            "    s += acc[0] + acc[1] + acc[2] + acc[3];",
            "  }",
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
        _array("uint8_t", "taps", taps),
        _array("int16_t", "rows", rows),
        _array("int32_t", "at", offsets),
        _array("int8_t", "wb", block(w, K * K * n).reshape(-1)),
        _array("int8_t", "eblob", element_blob(w)),
        "int32_t tvmmcu_model_run(const void *input, void *output) {",
        "const int8_t *x = (const int8_t *)input;",
        "int32_t s = 0;",
        *loop,
        "*(int32_t *)output = s;",
        "return 0;",
        "}",
    ]
    d = tmp / f"sparse_{n}_{keep}_{sparse}"
    d.mkdir(parents=True, exist_ok=True)  # the element rows re-measure the filterlet kernel
    (d / "model.h").write_text(MODEL_H.format(inputs=H * W * n))
    (d / "model.c").write_text("\n".join(source) + "\n")
    (d / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    fw = build_firmware(d, load_board(BOARD), d / "fw")
    x = np.random.default_rng(1).integers(-128, 128, H * W * n).astype(np.int8)
    return run_firmware(fw, x.tobytes(), 4).instructions, fraction


def _weights(n: int, keep: float, elements: bool) -> tuple[np.ndarray, float]:
    """OHWI weights with filterlets (``elements``: single weights) kept at random with probability
    ``keep``, and the fraction kept."""
    rng = np.random.default_rng(0)
    if not elements:
        mask = rng.random((OUT, K, K)) < keep
        return (rng.integers(-128, 128, (OUT, K, K, n)) * mask[..., None]).astype(np.int8), float(mask.mean())
    mask = rng.random((OUT, K, K, n)) < keep
    w = rng.integers(1, 128, (OUT, K, K, n)) * rng.choice([-1, 1], (OUT, K, K, n)) * mask
    return w.astype(np.int8), float(mask.mean())


def element_rows(tmp: Path) -> list[str]:
    """The element-sparse kernel against the filterlet-sparse one on the same layer: instructions per
    kept MAC at the same fraction of weights kept, and each format's flash."""
    outputs = (H - 2) * (COLUMNS[1] - COLUMNS[0]) * OUT
    lines = [
        "",
        "The element-sparse kernel (`tvmmcu_esparse4p_blob_s8s8`: the unstructured baseline, single weights",
        "kept at random, one output channel at four pixels; 2 B per kept weight and per channel) against",
        "the filterlet-sparse one on the same layer, filterlets (s) or single weights (f) each kept with",
        "probability p. *Per kept MAC*: instructions over the fraction kept x the layer's MACs. *Flash*:",
        f"the stored weights (dense: {OUT} x 9 x n B). At about the same flash (p for filterlets, p / 2 for",
        "single weights: 2 B per kept weight) the element format keeps half as many weights; its kernel",
        "takes RATIOS the filterlet kernel's instructions per kept MAC.",
        "",
        "| n | p | s | filterlet | per kept MAC | flash | f | element | per kept MAC | flash | element / filterlet |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for n in CHANNELS:
        macs = outputs * K * K * n
        for keep in ELEMENT_KEPT:
            filterlet, fs = _instructions(tmp, n, keep, sparse=True)
            element, es = _instructions(tmp, n, keep, sparse="elements")
            fw, ew = _weights(n, keep, False)[0], _weights(n, keep, True)[0]
            per_f, per_e = filterlet / (fs * macs), element / (es * macs)
            ratios.append(per_e / per_f)
            print(
                f"sparse: n={n} f={keep}: filterlet {per_f:.2f}, element {per_e:.2f} per kept MAC", flush=True
            )
            lines.append(
                f"| {n} | {keep} | {fs:.3f} | {filterlet:,} | {per_f:.2f} | {compress_blob(fw).size:,} | {es:.3f} | "
                f"{element:,} | {per_e:.2f} | {element_blob(ew).size:,} | {per_e / per_f:.2f} |"
            )
    lines = [line.replace("RATIOS", f"{min(ratios):.1f}-{max(ratios):.1f}x") for line in lines]
    return [*lines, ""]


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
        "The compiler reaches these kernels for any convolution whose weights are mostly zero filterlets",
        "(the next table measures whole layers of real networks, border pixels included).",
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
    from sparse_layers import sparse_layers_section

    return [*lines, *element_rows(tmp), "", *sparse_layers_section(tmp)]


def _swap(pair: tuple[int, float]) -> tuple[float, int]:
    count, fraction = pair
    return fraction, count


def fuzz_elements(tmp: Path, seeds: range, boards: tuple[str, ...] = ("mps2-an386", "mps2-an385")) -> int:
    """The element-sparse kernels' fuzz beyond the tests (tests/passes/test_sparse_element_kernels.py's
    cases for more seeds) on each board against numpy; prints each difference, returns their count."""
    from tests.passes.test_sparse_element_kernels import _fuzz, expected, library

    failed = 0
    for seed in seeds:
        case = _fuzz(seed)
        x = case.data()
        for board in boards:
            fw = build_firmware(
                library(tmp / f"fuzz_{seed}_{board}", case), load_board(board), tmp / f"fw_{seed}_{board}"
            )
            out = np.frombuffer(run_firmware(fw, x.tobytes(), 4 * case.outputs()).output, np.int32)
            if fw.warnings or not np.array_equal(out, expected(case, x)):
                failed += 1
                print(f"element fuzz: seed {seed} on {board} differs or warns: {case}", flush=True)
    print(f"element fuzz: seeds {seeds.start}-{seeds.stop - 1} on {', '.join(boards)}: {failed} failures")
    return failed


if __name__ == "__main__":  # python bench/sparse.py [N]: the element kernels' fuzz over N seeds from 100
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(
            1
            if fuzz_elements(Path(tmp), range(100, 100 + int(sys.argv[1] if len(sys.argv) > 1 else 40)))
            else 0
        )
