"""The int4 section of docs/BENCHMARKS.md: layers whose weights hold values in [-8, 7] with those weights
packed two per byte (PackWeights, ``--weights auto``) against the same layers with them as bytes
(``--weights int8``), instructions per MAC on QEMU and flash, bit-exact with the reference and each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tvm_mcu import api

ROOT = Path(__file__).resolve().parent.parent
INT4_HEADING = "## int4 weights packed two per byte"
BOARDS = ("mps2-an386", "mps2-an385")  # Cortex-M4 (DSP: the masked-nibble SMLAD path), Cortex-M3
SEEDS = 3
GOAL = 1.25  # int4 instructions per MAC at most this times int8's, on the M4
# (label, builder name and argument in tests/zoo/qdq_ops.py)
CASES = (
    ("3x3 conv 32 -> 64, 16x16, padded", "layer", "conv"),
    ("dense 256 -> 64", "layer", "dense"),
    ("small CNN (tests/e2e/test_int4.py)", "cnn", ""),
)


def _model(tmp: Path, builder: str, arg: str) -> Path:
    sys.path.insert(0, str(ROOT))  # the models are the tests' (tests/zoo/qdq_ops.py)
    from tests.zoo.qdq_ops import int4_cnn, int4_layer

    path = tmp / f"int4_{builder}{'_' + arg if arg else ''}.onnx"
    path.write_bytes((int4_layer(arg) if builder == "layer" else int4_cnn()).SerializeToString())
    return path


def _run(path: Path, board: str, out: Path, weights: str) -> tuple[object, list[list[np.ndarray]], set[str]]:
    """Verify ``SEEDS`` seeded inputs with ``weights`` (channels-last either way): the last report, every
    run's outputs, and the verdicts against the reference (``api.verify``'s: "match", or "match per
    operator" where the float reference rounds a tie the other way)."""
    report: object = None
    outputs, verdicts = [], set()
    for seed in range(SEEDS):
        v = api.verify(path, board, out / str(seed), seed=seed, weights=weights, channels_last=True)
        outputs.append(v.outputs)
        verdicts.add(v.report.verdict if v.passed else "MISMATCH")
        report = v.report
    return report, outputs, verdicts


def int4_section(tmp: Path) -> list[str]:
    lines = [
        "",
        INT4_HEADING,
        "",
        "An int8 QDQ model whose convolution and dense weights hold values in [-8, 7] (ONNX INT4",
        "initialisers as imported) stores the weights the blocked kernels read two per byte by default",
        "(`--weights auto`; `--weights int8` keeps them as bytes): each 8 values of a channel one word of",
        "nibbles, which the Cortex-M4 kernels split with one AND of a shifted register per pair of weights",
        "(no SXTB16 on them) into SMLAD operands at 4096 times their value, summed exactly over up to 256",
        "values. Both builds compute channels-last; instructions per MAC of the layer (its operator call)",
        f"on QEMU, goal at most {GOAL}x int8's on the M4; weights B as stored (the ELF's flash falls by",
        "the same bytes less the nibble kernels' code, inlined in each operator: about 100 B each on the M4,",
        f"300 B on the M3, which unrolls the extraction). {SEEDS} seeded inputs per build: int4 = int8 when",
        "the two builds' outputs are identical; reference: tvm-mcu verify's verdict for both builds (match",
        "per operator: a tie the float reference rounds the other way).",
        "",
        "| layer | board | int8 per MAC | int4 per MAC | ratio | int8 weights B | int4 weights B | flash B int8 -> int4 | int4 = int8 | reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, builder, arg in CASES:
        path = _model(tmp, builder, arg)
        for board in BOARDS:
            runs = {w: _run(path, board, tmp / f"{path.stem}_{w}_{board}", w) for w in ("int8", "auto")}
            (r8, out8, v8), (r4, out4, v4) = runs["int8"], runs["auto"]
            same = all(
                np.array_equal(a, b)
                for o8, o4 in zip(out8, out4, strict=True)
                for a, b in zip(o8, o4, strict=True)
            )
            if builder == "layer":
                op8 = max(r8.ops, key=lambda o: o.macs)  # type: ignore[attr-defined]
                op4 = max(r4.ops, key=lambda o: o.macs)  # type: ignore[attr-defined]
                per8, per4 = float(op8.instructions) / op8.macs, float(op4.instructions) / op4.macs
                w8, w4 = op8.weights_bytes, op4.weights_bytes
            else:
                per8 = float(r8.instructions) / r8.macs  # type: ignore[attr-defined]
                per4 = float(r4.instructions) / r4.macs  # type: ignore[attr-defined]
                w8, w4 = r8.stored_weights_bytes, r4.stored_weights_bytes  # type: ignore[attr-defined]
            print(
                f"int4: {label} on {board}: {per8:.3f} -> {per4:.3f} per MAC, {w8:,} -> {w4:,} B", flush=True
            )
            lines.append(
                f"| {label} | {board} | {per8:.3f} | {per4:.3f} | {per4 / per8:.3f}x | {w8:,} | {w4:,} | "
                f"{r8.flash_bytes:,} -> {r4.flash_bytes:,} | "  # type: ignore[attr-defined]
                f"{'yes' if same else 'NO'} | {', '.join(sorted(v8 | v4))} |"
            )
    lines += [
        "",
        "The small CNN's row counts the whole model (its first convolution, over 3 input channels, and its",
        "depthwise one keep their weights as bytes: no blocked kernel reads them; bias and requantisation",
        "constants too); its 1x1 convolution reads 16 values a call, where the flush of the scaled sums, a",
        "fixed cost per call (about 25 instructions for four channels: their accumulators are spilled around",
        "the loop, which needs 14 registers), weighs more than over the 3x3 convolution's runs of 96.",
        "Without the DSP extension (M3) the kernels load each channel's word once per 8 values and extract",
        "a nibble per value (SBFX).",
        "",
        *_trained_rows(tmp),
    ]
    return lines


# The trained models of the pruning benchmarks (bench/models), quantised whole by `tvm-mcu quantize`.
TRAINED = (
    ("Fashion-MNIST CNN 32/64/128", "fashion_cnn_wide.onnx"),
    ("MobileNetV2-style (Fashion-MNIST)", "mobilenetv2_fashion.onnx"),
)
ACCURACY_IMAGES = 2000
WEIGHTS_GOAL = 0.55  # stored weights of the all-int4 model at most this times the int8 model's


def _trained_rows(tmp: Path) -> list[str]:
    """Whole trained models, `tvm-mcu quantize --weights int4` against int8 (calibrated on 256 training
    images): stored weights, flash, instructions (QEMU, one input), verify's verdict and onnxruntime's
    accuracy of each QDQ model on the first test images."""
    from prune_bench import BOARD, CALIBRATION_IMAGES, ort_outputs

    from tvm_mcu.frontend import load_model
    from tvm_mcu.ptq import quantize_onnx
    from tvm_mcu.train.data import load_dataset

    lines = [
        "Whole trained models (bench/models) quantised by `tvm-mcu quantize --weights int4` (every",
        "convolution and dense layer int4 per output channel in [-7, 7], depthwise ones int8) against the",
        f"default int8, both calibrated on {CALIBRATION_IMAGES} training images, compiled channels-last for {BOARD}:",
        "weights as stored (goal: the int4 model's at most "
        f"{WEIGHTS_GOAL}x the int8 model's), firmware flash, instructions of one inference on QEMU,",
        f"verify's verdict, and onnxruntime's accuracy of each QDQ model on the first {ACCURACY_IMAGES:,} test",
        "images (post-training quantisation, no retraining: `tvm-mcu prune --weights int4` trains for it).",
        "",
        "| model | int8 weights B | int4 weights B | ratio | flash B int8 -> int4 | instructions int8 -> int4 | "
        "accuracy int8 -> int4 | verify |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, name in TRAINED:
        path = ROOT / "bench" / "models" / name
        if not path.is_file():
            lines.append(f"| {label} | absent: run bench/train_models.py |||||||")
            continue
        model = load_model(path)
        ds = load_dataset("fashion-mnist", model.inputs[0].shape, limit=CALIBRATION_IMAGES)
        calib = {model.inputs[0].name: ds.x_train[:CALIBRATION_IMAGES]}
        runs = {}
        for weights in ("int8", "int4"):
            q = tmp / f"{path.stem}_{weights}.onnx"
            quantize_onnx(path, calib, q, weights=weights)
            v = api.verify(q, BOARD, tmp / f"{path.stem}_{weights}_build", channels_last=True)
            got = ort_outputs(q, ds.x_test[:ACCURACY_IMAGES])
            acc = float((np.argmax(got, axis=1) == ds.y_test[:ACCURACY_IMAGES]).mean())
            runs[weights] = (v, acc)
        (v8, a8), (v4, a4) = runs["int8"], runs["int4"]
        w8, w4 = v8.report.stored_weights_bytes, v4.report.stored_weights_bytes
        verdicts = ", ".join(sorted({v.report.verdict if v.passed else "MISMATCH" for v in (v8, v4)}))
        print(f"int4: {label}: {w8:,} -> {w4:,} B, accuracy {a8:.4f} -> {a4:.4f}", flush=True)
        lines.append(
            f"| {label} | {w8:,} | {w4:,} | {w4 / w8:.3f}x | {v8.report.flash_bytes:,} -> "
            f"{v4.report.flash_bytes:,} | {v8.report.instructions:,} -> {v4.report.instructions:,} | "
            f"{a8:.4f} -> {a4:.4f} | {verdicts} |"
        )
    lines += [
        "",
        "Stored weights count each layer's per-channel constants too (bias, multiplier and shift, 12 B per",
        "output channel as int32, whatever the weights' width) and the depthwise weights, which stay a byte",
        "each (no blocked kernel reads them): in the MobileNetV2-style model's narrow pointwise layers these",
        "are most of the bytes (a 16 -> 64 one: 512 B of int4 weights beside 768 B of constants), so its",
        "int4 model keeps 0.7x of the int8 model's stored weights; the weight tensors alone halve.",
    ]
    return [*lines, ""]
