"""The int4 section of docs/BENCHMARKS.md: layers whose weights hold values in [-8, 7] with those weights
packed two per byte (PackWeights, ``--weights auto``), and in [-2, 1] four per byte, against the same
layers with them as bytes (``--weights int8``), instructions per MAC on QEMU and flash, bit-exact with the
reference and each other.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tvm_mcu import api

ROOT = Path(__file__).resolve().parent.parent
INT4_HEADING = "## int4 weights packed two per byte (int2: four)"
BOARDS = ("mps2-an386", "mps2-an385")  # Cortex-M4 (DSP: the masked-nibble SMLAD path), Cortex-M3
SEEDS = 3
GOAL = 1.25  # int4 instructions per MAC at most this times int8's, on the M4
# (label, builder name and argument in tests/zoo/qdq_ops.py, the weights' bits)
CASES = (
    ("3x3 conv 32 -> 64, 16x16, padded", "layer", "conv", 4),
    ("dense 256 -> 64", "layer", "dense", 4),
    ("small CNN (tests/e2e/test_int4.py)", "cnn", "", 4),
    ("3x3 conv 32 -> 64, 16x16, padded", "layer", "conv", 2),
    ("dense 256 -> 64", "layer", "dense", 2),
)


def _model(tmp: Path, builder: str, arg: str, bits: int) -> Path:
    sys.path.insert(0, str(ROOT))  # the models are the tests' (tests/zoo/qdq_ops.py)
    from tests.zoo.qdq_ops import int4_cnn, int4_layer

    path = tmp / f"int{bits}_{builder}{'_' + arg if arg else ''}.onnx"
    path.write_bytes((int4_layer(arg, bits) if builder == "layer" else int4_cnn(bits)).SerializeToString())
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
        "values. int2 weights (values in [-2, 1], ONNX INT2) are stored four per byte, two channels' 8",
        "values a word, split the same way at 16384 times their value (`passes/tir/crumb_kernels.py`).",
        "Both builds compute channels-last; instructions per MAC of the layer (its operator call)",
        f"on QEMU, goal at most {GOAL}x int8's on the M4 (packed: the int4 or int2 build); weights B as "
        "stored (the ELF's flash falls by",
        "the same bytes less the nibble kernels' code, inlined in each operator: about 100 B each on the M4,",
        f"300 B on the M3, which unrolls the extraction). {SEEDS} seeded inputs per build: packed = int8 when",
        "the two builds' outputs are identical; reference: tvm-mcu verify's verdict for both builds (match",
        "per operator: a tie the float reference rounds the other way).",
        "",
        "| layer | weights | board | int8 per MAC | packed per MAC | ratio | int8 weights B | packed weights B | flash B int8 -> packed | packed = int8 | reference |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, builder, arg, bits in CASES:
        path = _model(tmp, builder, arg, bits)
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
                f"int{bits}: {label} on {board}: {per8:.3f} -> {per4:.3f} per MAC, {w8:,} -> {w4:,} B",
                flush=True,
            )
            lines.append(
                f"| {label} | int{bits} | {board} | {per8:.3f} | {per4:.3f} | {per4 / per8:.3f}x | {w8:,} | {w4:,} | "
                f"{r8.flash_bytes:,} -> {r4.flash_bytes:,} | "  # type: ignore[attr-defined]
                f"{'yes' if same else 'NO'} | {', '.join(sorted(v8 | v4))} |"
            )
    lines += [
        "",
        "The small CNN's row counts the whole model (its first convolution, over 3 input channels, keeps its",
        "weights as bytes: no blocked kernel reads them; its depthwise one stores them two per byte, unpacked",
        "into a workspace scratch once per call; bias and requantisation constants stay int32). Each build",
        "picks its schedule: the depthwise scratch (144 B) makes in place the smallest for int4 where int8",
        "takes row bands, so its row differs by more than the storage; its 1x1 convolution reads 16 values a",
        "call, where the flush of the scaled sums, a fixed cost per call (about 25 instructions for four",
        "channels: their accumulators are spilled around the loop, which needs 14 registers), weighs more",
        "than over the 3x3 convolution's runs of 96.",
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


def trained_models(lines: list[str], cells: int) -> Iterator[tuple[str, Path, Any, dict[str, np.ndarray]]]:
    """(label, path, Fashion-MNIST dataset, calibration inputs) of each of TRAINED that is present; an
    absent one gets a row of ``lines`` saying so, ``cells`` cells wide."""
    from prune_bench import CALIBRATION_IMAGES

    from tvm_mcu.frontend import load_model
    from tvm_mcu.train.data import load_dataset

    for label, name in TRAINED:
        path = ROOT / "bench" / "models" / name
        if not path.is_file():
            lines.append(f"| {label} | absent: run bench/train_models.py {'|' * (cells - 1)}")
            continue
        model = load_model(path)
        ds = load_dataset("fashion-mnist", model.inputs[0].shape, limit=CALIBRATION_IMAGES)
        yield label, path, ds, {model.inputs[0].name: ds.x_train[:CALIBRATION_IMAGES]}


WEIGHTS_GOAL = 0.55  # weight tensors of the all-int4 model at most this times the int8 model's


def _trained_rows(tmp: Path) -> list[str]:
    """Whole trained models, `tvm-mcu quantize --weights int4` against int8 (calibrated on 256 training
    images): stored weights (all, weight tensors, per-channel constants), flash, instructions (QEMU, one
    input), verify's verdict and onnxruntime's accuracy of each QDQ model on the first test images; then
    the int4 model's depthwise layers with their weights stored two per byte against as bytes."""
    from prune_bench import BOARD, CALIBRATION_IMAGES, ort_outputs

    from tvm_mcu.ptq import quantize_onnx

    lines = [
        "Whole trained models (bench/models) quantised by `tvm-mcu quantize --weights int4` (every",
        "convolution and dense layer int4 per output channel in [-7, 7], depthwise ones included) against the",
        f"default int8, both calibrated on {CALIBRATION_IMAGES} training images, compiled channels-last for {BOARD}:",
        "weights as stored, all of them, the weight tensors alone (goal: the int4 model's at most "
        f"{WEIGHTS_GOAL}x the int8 model's) and the per-channel constants (bias, multiplier and shift,",
        "int32 [C, 3]: 12 B per output channel whatever the weights' width), firmware flash, instructions of",
        f"one inference on QEMU, verify's verdict, and onnxruntime's accuracy of each QDQ model on the first {ACCURACY_IMAGES:,}",
        "test images (post-training quantisation, no retraining: `tvm-mcu prune --weights int4` trains for it;",
        "int4 with `--int8-depthwise` in brackets).",
        "",
        "| model | stored weights B int8 -> int4 | ratio | weight tensors B int8 -> int4 | ratio | constants B | "
        "flash B int8 -> int4 | instructions int8 -> int4 | accuracy int8 -> int4 (int8 depthwise) | verify |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    depthwise_rows: list[str] = []
    for label, path, ds, calib in trained_models(lines, 10):
        runs = {}
        accuracy = {}
        for weights in ("int8", "int4", "int4-dw8"):
            q = tmp / f"{path.stem}_{weights}.onnx"
            quantize_onnx(path, calib, q, weights=weights[:4], int8_depthwise=weights == "int4-dw8")
            got = ort_outputs(q, ds.x_test[:ACCURACY_IMAGES])
            accuracy[weights] = float((np.argmax(got, axis=1) == ds.y_test[:ACCURACY_IMAGES]).mean())
            if weights != "int4-dw8":
                runs[weights] = api.verify(q, BOARD, tmp / f"{path.stem}_{weights}_build", channels_last=True)
        v8, v4 = runs["int8"], runs["int4"]
        r8, r4 = v8.report, v4.report
        w8, w4 = r8.stored_weights_bytes, r4.stored_weights_bytes
        t8, t4 = w8 - r8.stored_constants_bytes, w4 - r4.stored_constants_bytes
        verdicts = ", ".join(sorted({v.report.verdict if v.passed else "MISMATCH" for v in (v8, v4)}))
        a8, a4, a4d = accuracy["int8"], accuracy["int4"], accuracy["int4-dw8"]
        print(
            f"int4: {label}: {w8:,} -> {w4:,} B, tensors {t8:,} -> {t4:,} B, accuracy {a8:.4f} -> {a4:.4f}",
            flush=True,
        )
        lines.append(
            f"| {label} | {w8:,} -> {w4:,} | {w4 / w8:.3f}x | {t8:,} -> {t4:,} | {t4 / t8:.3f}x | "
            f"{r8.stored_constants_bytes:,} -> {r4.stored_constants_bytes:,} | {r8.flash_bytes:,} -> "
            f"{r4.flash_bytes:,} | {r8.instructions:,} -> {r4.instructions:,} | "
            f"{a8:.4f} -> {a4:.4f} ({a4d:.4f}) | {verdicts} |"
        )
        depthwise_rows += _depthwise_rows(label, tmp / f"{path.stem}_int4.onnx", v4, tmp)
    lines += [
        "",
        "The constants do not shrink with the weights: in the MobileNetV2-style model's narrow layers they",
        "are as many bytes as the int4 weights (a 16 -> 64 pointwise one: 512 B of int4 weights beside 768 B",
        "of constants), so all stored weights shrink less than the weight tensors.",
        "",
        *depthwise_rows,
    ]
    return [*lines, ""]


def _depthwise_rows(label: str, q: Path, packed: api.Verification, tmp: Path) -> list[str]:
    """The depthwise layers of the int4 model ``q`` (``packed``: its default build), their weights stored
    two per byte (UnpackInt4Weights) against the same model built ``--weights int8``, same schedule:
    instructions of each operator call on QEMU, the scratch the unpacking takes."""
    plain = api.verify(
        q,
        BOARD_DW,
        tmp / f"{q.stem}_int8_storage",
        channels_last=True,
        weights="int8",
        schedule=packed.report.schedule,
    )
    r4, r8 = packed.report, plain.report
    same = all(np.array_equal(a, b) for a, b in zip(packed.outputs, plain.outputs, strict=True))
    rows8 = {o.name: o for o in r8.ops}
    rows = [o for o in r4.ops if "int4 unpacked per call" in o.weights_format and o.name in rows8]
    if not rows:  # no depthwise convolution
        return []
    lines = [
        f"The int4 {label}'s depthwise layers, weights stored two per byte (`--weights auto`: unpacked into a",
        "workspace scratch of one byte per value once per call) against as bytes (`--weights int8`), same",
        f"schedule ({r4.schedule}), {BOARD_DW}: instructions of the operator call (a chain's for its",
        "layers together), weights and constants B, scratch B of the call (the unpacked weights are part of it);",
        f"outputs identical: {'yes' if same else 'NO'}; SRAM (arena) {r8.arena_bytes:,} -> {r4.arena_bytes:,} B.",
        "",
        "| operator | instructions int8 storage | int4 storage | ratio | weights + constants B | scratch B |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op in rows:
        o8 = rows8[op.name]
        i8, i4 = o8.instructions or 0, op.instructions or 0
        lines.append(
            f"| {op.name} | {i8:,} | {i4:,} | {i4 / max(i8, 1):.3f}x | {o8.weights_bytes:,} -> "
            f"{op.weights_bytes:,} | {o8.scratch_bytes:,} -> {op.scratch_bytes:,} |"
        )
    print(f"int4: {label} depthwise: outputs identical {same}", flush=True)
    return [*lines, ""]


BOARD_DW = "mps2-an386"
