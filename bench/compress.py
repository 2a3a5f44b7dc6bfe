"""The compressed-weights section of docs/BENCHMARKS.md: weights stored Golomb-Rice coded (CompressWeights,
``--compress-weights all``) against the same build without (``off``): stored bytes and the layer's
instructions on QEMU (instructions, not cycles), bit-exact with each other and the reference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tvm_mcu import api

ROOT = Path(__file__).resolve().parent.parent
COMPRESS_HEADING = "## Compressed weights (Golomb-Rice, decoded per block of channels)"
BOARD = "mps2-an386"  # Cortex-M4
SIGMA = 10.0  # the layers' int8 weights: normal, about 6 bits a value (trained weights are near this)


PRUNED = 0.6  # the pruned layers' share of zero weights (element by element, as magnitude pruning leaves)


def _layer(tmp: Path, kind: str, zeros: float = 0.0) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.zoo.qdq_ops import _Q

    g = _Q("int8", 32)
    if kind == "conv":
        x = g.input([1, 32, 16, 16], 0.05, 3)
        y = g.op("Conv", [x, g.weight((64, 32, 3, 3), sigma=SIGMA, zeros=zeros)], pads=[1, 1, 1, 1])
    else:
        x = g.input([1, 256], 0.05, 3)
        y = g.op("Gemm", [x, g.weight((64, 256), sigma=SIGMA, zeros=zeros)], transB=1)
    path = tmp / f"compress_{kind}_{zeros:g}.onnx"
    path.write_bytes(g.model(y, 2.0, 1).SerializeToString())
    return path


def _pair(path: Path, out: Path, **kw: object) -> tuple[object, object, bool]:
    runs = [
        api.verify(path, BOARD, out / c, seed=0, channels_last=True, compress=c, **kw)  # type: ignore[arg-type]
        for c in ("off", "all")
    ]
    same = all(np.array_equal(a, b) for a, b in zip(runs[0].outputs, runs[1].outputs, strict=True))
    return runs[0], runs[1], same and all(v.passed for v in runs)


def compress_section(tmp: Path) -> list[str]:
    lines = [
        "",
        COMPRESS_HEADING,
        "",
        "`--compress-weights all` stores each weight the blocked kernels read as one Golomb-Rice chunk per",
        "block of four output channels (zigzag values, the best k per chunk, quotients of 8 or more escaped",
        "to 8 raw bits; where it is shorter, a one-bit flag per value with zeros coded by the flag alone; a",
        "chunk that does not shrink stored raw), decoded by `tvmmcu_rice_decode` (CLZ)",
        "into a scratch buffer in the workspace first in the loop over blocks of channels, which",
        "CompressWeights moves outside the loops over output pixels where the iterations are independent:",
        "each chunk decoded once per visit of the operator. Layers: int8 weights rounded from a normal",
        f"distribution of spread {SIGMA:g} (about 6 bits a value), and the same with {PRUNED:.0%} of them",
        f"zero (pruned element by element; both builds of those dense but for the code: `--dense`), {BOARD},",
        "channels-last, layer by layer;",
        "instructions of the layer's operator call on QEMU. Bit-exact: the compressed build's outputs equal",
        "the plain build's and the reference's.",
        "",
        "| layer | weights B raw -> stored | ratio | decode calls | instructions plain -> compressed | "
        "extra per decoded byte | bit-exact |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    layers = [
        (f"{name}{f', {zeros:.0%} zeros' if zeros else ''}", kind, zeros)
        for zeros in (0.0, PRUNED)
        for name, kind in (("3x3 conv 32 -> 64, 16x16, padded", "conv"), ("dense 256 -> 64", "dense"))
    ]
    for label, kind, zeros in layers:
        # Pruned: both builds dense besides the code (sparse formats off), so the column is the decoding's.
        extra = {"sparse": False} if zeros else {}
        plain, coded, ok = _pair(
            _layer(tmp, kind, zeros), tmp / f"{kind}_{zeros:g}", schedule="layer by layer", **extra
        )
        op0 = max(plain.report.ops, key=lambda o: o.macs)  # type: ignore[attr-defined]
        op1 = max(coded.report.ops, key=lambda o: o.macs)  # type: ignore[attr-defined]
        (row,) = coded.report.compressed_weights  # type: ignore[attr-defined]
        # 64 output channels: 16 chunks of raw / 16 bytes.
        per_byte = (op1.instructions - op0.instructions) / max(
            1, (row.decode_calls or 0) * row.raw_bytes // 16
        )
        print(
            f"compress: {label}: {row.raw_bytes} -> {row.stored_bytes}, {op0.instructions} -> {op1.instructions}"
        )
        lines.append(
            f"| {label} | {row.raw_bytes:,} -> {row.stored_bytes:,} | {row.ratio:.3f}x | {row.decode_calls:,} | "
            f"{op0.instructions:,} -> {op1.instructions:,} ({op1.instructions / op0.instructions:.2f}x) | "
            f"{per_byte:.1f} | {'yes' if ok else 'NO'} |"
        )
    lines += [*NOTE.splitlines(), "", *_trained_rows(tmp), ""]
    return lines


NOTE = """
CompressWeights moves the convolutions' loop over blocks of channels outside the loops over output
pixels, so each chunk is decoded once per operator call (16 decode calls for the 3x3 layer, 4,096
before the move: 16 blocks x 256 pixels): the layer costs its plain instructions plus about 33 per
decoded byte, 1.09x here (21.9x before). A dense layer reads each weight once, so its decode (about 31
per byte) dominates it whatever the loop order. The loop does not move for an operator in place (its
output overwrites its input pixel by pixel: each pixel decodes every chunk) and moves only outside one
row's pixels in a row band (each chunk decoded once per output row); the cost model prices that, so a
compressed model's schedule can differ from its plain build's: without an SRAM budget the trained models
below run layer by layer (more SRAM, fewer instructions) where their plain builds take row bands or
in-place steps; `--sram-budget` still picks those when it needs them. The ratio is the honest one of
Rice on int8 weights (0.70x here, 0.93x / 0.995x of the trained models' stored bytes: their weights
are near 7-8 bits of entropy). Pruned weights code their zeros in one bit each (the zero flags: plain
Rice would spend k + 1 bits on a zero, k set by the other values), so element pruning and compression
together shrink the weights as neither does alone.
"""


def _trained_rows(tmp: Path) -> list[str]:
    from int4 import trained_models
    from prune_bench import CALIBRATION_IMAGES

    from tvm_mcu.ptq import quantize_onnx

    lines = [
        "Whole trained models (bench/models) quantised by tvm-mcu's quantiser (int8, and int4 with",
        f"`--weights int4`), calibrated on {CALIBRATION_IMAGES} training images, {BOARD}, channels-last, the",
        "compiler's schedule: stored weights (every weight array of model.c, per-channel constants included)",
        "plain -> compressed, instructions of one inference, the schedule the compiler chose for each (the",
        "cost model prices the decoding: a row band decodes every chunk once per output row).",
        "",
        "| model | weights | stored B plain -> compressed | ratio | layers coded | schedule plain -> compressed "
        "| arena B plain -> compressed | instructions plain -> compressed | bit-exact |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for label, path, _, calib in trained_models(lines, 8):
        for weights in ("int8", "int4"):
            q = tmp / f"{path.stem}_{weights}.onnx"
            quantize_onnx(path, calib, q, weights=weights)
            plain, coded, ok = _pair(q, tmp / f"{path.stem}_{weights}_build")
            s0 = plain.report.stored_weights_bytes  # type: ignore[attr-defined]
            s1 = coded.report.stored_weights_bytes  # type: ignore[attr-defined]
            n = len(coded.report.compressed_weights)  # type: ignore[attr-defined]
            i0, i1 = plain.report.instructions, coded.report.instructions  # type: ignore[attr-defined]
            print(f"compress: {label} {weights}: {s0} -> {s1} B, {i0} -> {i1}", flush=True)
            r0, r1 = plain.report, coded.report  # type: ignore[attr-defined]
            lines.append(
                f"| {label} | {weights} | {s0:,} -> {s1:,} | {s1 / s0:.3f}x | {n} | {r0.schedule} -> "
                f"{r1.schedule} | {r0.arena_bytes:,} -> {r1.arena_bytes:,} | {i0:,} -> {i1:,} "
                f"({i1 / i0:.2f}x) | {'yes' if ok else 'NO'} |"
            )
    return lines
