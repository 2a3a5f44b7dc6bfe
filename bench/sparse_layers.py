"""The per-layer section of the filterlet-sparse figures in docs/BENCHMARKS.md: real networks' 3x3
convolutions with a fraction of their filterlets kept, compiled dense and sparse, measured layer by
layer on QEMU (instructions, not cycles) against the issue's bounds.

The networks: the Fashion-MNIST CNN 32/64/128 trained in the repo (``bench/models``), and a ResNet-8
shaped network (MLPerf Tiny's, 32x32x3, 16/32/64 channels) written by PyTorch with seeded weights (the
instruction counts depend on shapes and on which filterlets are zero, not on the values). Each 3x3
convolution with at least 8 input channels keeps the fraction ``s`` of its filterlets with the largest
L2 norms (every output channel keeps at least one), as a filterlet pruner leaves it; the model is
quantised (tvm-mcu's PTQ keeps the zeros) and compiled channels-last, layer by layer, once with
``sparse=False``; and the same pruned float model compiled as it is (float32 weights stored as filterlet
CSR of float values, run by the float sparse kernel; its outputs bit-identical to the dense build's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tvm_mcu import api
from tvm_mcu.ptq import quantize_onnx

LAYERS_HEADING = "### Sparse layers of real networks"
BOARD = "mps2-an386"
KEPT = (0.5, 0.25, 0.125)
PRECISIONS = ("int8", "float32")  # the quantised model and the float one it was quantised from
SLACK = 1.15  # the bound: sparse <= s * SLACK * dense + PER_OUTPUT * outputs
# Instructions per output value that do not scale with the filterlets kept: the requantising epilogue,
# the call per block of four pixels and channel, the staging of the border taps. One constant for the
# table; the section prints the fixed cost each layer measures (_fixed_costs), all below it.
PER_OUTPUT = 32
SINGLE = 0.0  # keep: each output channel's largest filterlet only (the fixed cost's measurement)
ROOT = Path(__file__).resolve().parent


def _resnet8_onnx(path: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.a = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            self.b = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(torch.relu(self.a(x)))
            return torch.relu(y + (self.skip(x) if self.skip is not None else x))

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        input_names=["input"],
        output_names=["y"],
        dynamo=False,
    )
    return path


def _keep_filterlets(model: onnx.ModelProto, keep: float) -> onnx.ModelProto:
    """A copy whose eligible 3x3 convolutions keep the fraction ``keep`` of their filterlets (largest L2;
    ``SINGLE``: each output channel's largest only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {n.input[1] for n in out.graph.node if n.op_type == "Conv"}
    groups = {
        n.input[1]: next((a.i for a in n.attribute if a.name == "group"), 1)
        for n in out.graph.node
        if n.op_type == "Conv"
    }
    for init in out.graph.initializer:
        w = numpy_helper.to_array(init)
        if init.name not in weights or w.ndim != 4 or groups[init.name] != 1:
            continue
        o, c, kh, kw = w.shape
        if kh * kw == 1 or c < 8:
            continue
        norms = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1)).reshape(o, -1)  # [O, taps]
        n_keep = 0 if keep == SINGLE else max(int(round(keep * norms.size)), o)
        order = np.argsort(-norms, axis=None, kind="stable")
        mask = np.zeros(norms.size, bool)
        mask[order[:n_keep]] = True
        mask = mask.reshape(o, -1)
        mask[np.arange(o), norms.argmax(axis=1)] = True  # every output channel keeps one
        pruned = w * mask.reshape(o, 1, kh, kw)
        init.CopyFrom(numpy_helper.from_array(pruned.astype(w.dtype), init.name))
    return out


def _layers(report: Any) -> dict[str, Any]:
    return {op.name: op for op in report.ops if op.filterlets is not None and op.macs}


def _builds(
    tmp: Path,
    label: str,
    float_model: onnx.ModelProto,
    calibration: dict[str, np.ndarray],
    keep: float,
    precision: str = "int8",
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The network keeping ``keep`` of its filterlets, quantised (``precision`` "int8") or not
    ("float32"), compiled dense and sparse, run on QEMU: (dense layers, sparse layers, the sparse arena
    minus the dense one) by layer name; raises RuntimeError when their outputs differ (not bitwise
    equal: float included)."""
    work = tmp / f"{label}_{keep}_{precision}"
    work.mkdir(parents=True, exist_ok=True)
    pruned = work / "float.onnx"
    pruned.write_bytes(_keep_filterlets(float_model, keep).SerializeToString())
    qdq = quantize_onnx(pruned, calibration, work / "qdq.onnx").out_path if precision == "int8" else pruned
    shape = [d.dim_value for d in float_model.graph.input[0].type.tensor_type.shape.dim]
    x = [np.random.default_rng(0).standard_normal(shape).astype(np.float32)]
    runs, outputs = {}, {}
    for name, sparse in (("dense", False), ("sparse", True)):
        api.compile_model(
            qdq, BOARD, work / name, schedule="layer by layer", sparse=sparse, channels_last=True
        )
        outcome = api.run_compiled(work / name, x)
        runs[name], outputs[name] = outcome.report, outcome.outputs
    if not all(a.tobytes() == b.tobytes() for a, b in zip(outputs["dense"], outputs["sparse"], strict=True)):
        raise RuntimeError(
            f"{label} {precision} keeping {keep}: the sparse build's output differs from the dense one's"
        )
    sparse = {k: op for k, op in _layers(runs["sparse"]).items() if "filterlet CSR" in op.weights_format}
    return _layers(runs["dense"]), sparse, runs["sparse"].arena_bytes - runs["dense"].arena_bytes


def _outputs(op: Any, precision: str) -> int:
    """The output values of a layer's step (int8: a byte each, float32: four)."""
    return int(op.output_bytes) // (4 if precision == "float32" else 1)


def _fixed_costs(
    tmp: Path, label: str, float_model: onnx.ModelProto, calibration: dict[str, np.ndarray], precision: str
) -> dict[tuple[str, str, str], float]:
    """Per layer, the instructions per output of its sparse step when each output channel keeps one
    filterlet, beyond that filterlet's share of the dense step (kept / filterlets x dense): the fixed
    cost per output the bound's PER_OUTPUT must cover."""
    dense, sparse, _ = _builds(tmp, label, float_model, calibration, SINGLE, precision)
    return {
        (label, precision, name): (
            op.instructions - op.filterlets_kept / op.filterlets * dense[name].instructions
        )
        / _outputs(op, precision)
        for name, op in sparse.items()
    }


def _measure(
    tmp: Path, label: str, float_model: onnx.ModelProto, calibration: dict[str, np.ndarray], precision: str
) -> list[list[str]]:
    """The table's rows for one network at one precision."""
    rows: list[list[str]] = []
    for keep in KEPT:
        dense, sparse, extra_sram = _builds(tmp, label, float_model, calibration, keep, precision)
        for name, op in sparse.items():
            d = dense[name]
            s = op.filterlets_kept / op.filterlets
            outputs = _outputs(op, precision)
            bound = s * SLACK * d.instructions + PER_OUTPUT * outputs
            kept_bytes = op.weights_bytes - op.index_bytes
            channels = op.filterlets // 9  # the eligible convolutions are all 3x3
            index_bound = 2 * op.filterlets_kept + 2 * channels
            rows.append(
                [
                    label,
                    precision,
                    name,
                    f"{keep:g}",
                    f"{op.filterlets_kept}/{op.filterlets} ({s:.3f})",
                    f"{d.instructions:,}",
                    f"{op.instructions:,}",
                    f"{op.instructions / d.instructions / s:.3f}",
                    f"{bound:,.0f}",
                    "yes" if op.instructions <= bound else "**no**",
                    f"{extra_sram:+,}",
                    f"{d.weights_bytes:,}",
                    f"{op.weights_bytes:,} = {kept_bytes:,} + {op.index_bytes:,}",
                    f"{kept_bytes + index_bound:,}",
                    # CSR's row pointers are O + 1; the values start 8-byte aligned (up to 7 B of padding).
                    "yes" if op.weights_bytes <= kept_bytes + index_bound + 2 + 7 else "**no**",
                ]
            )
    return rows


def sparse_layers_section(tmp: Path) -> list[str]:
    calibration_file = ROOT.parent / "tvm_mcu" / "data" / "demo" / "calibration.npz"
    with np.load(calibration_file) as f:
        fashion = {"input": f["input"][:64]}
    rng = np.random.default_rng(1)
    cifar = {"input": rng.standard_normal((32, 3, 32, 32)).astype(np.float32)}
    networks = [
        ("Fashion-MNIST CNN 32/64/128", onnx.load(str(ROOT / "models" / "fashion_cnn_wide.onnx")), fashion),
        ("ResNet-8 shape (seeded)", onnx.load(str(_resnet8_onnx(tmp / "resnet8.onnx"))), cifar),
    ]
    rows = [
        row
        for precision in PRECISIONS
        for label, model, data in networks
        for row in _measure(tmp, label, model, data, precision)
    ]
    fixed = {
        k: v
        for precision in PRECISIONS
        for label, model, data in networks
        for k, v in _fixed_costs(tmp, label, model, data, precision).items()
    }
    worst_fixed = max(fixed, key=lambda k: fixed[k])
    if fixed[worst_fixed] > PER_OUTPUT:
        raise RuntimeError(
            f"{worst_fixed}: {fixed[worst_fixed]:.1f} fixed instructions per output > {PER_OUTPUT}"
        )
    header = [
        "network",
        "data",
        "layer",
        "s asked",
        "filterlets kept",
        "dense instructions",
        "sparse instructions",
        "sparse / (s x dense)",
        f"bound s x {SLACK} x dense + {PER_OUTPUT}/output",
        "within",
        "arena B vs dense",
        "dense weights B",
        "sparse B = values + index",
        "bound: kept + 2/filterlet + 2/channel",
        "within",
    ]
    worst = {p: max(float(r[7]) for r in rows if r[1] == p) for p in PRECISIONS}
    return [
        LAYERS_HEADING,
        "",
        __doc__.split("\n\n", 1)[1].replace("\n", " ").strip() if __doc__ else "",
        f"Board {BOARD}; each layer's step measured on QEMU in the same run as the whole network (the dense and "
        "sparse builds' outputs are identical, byte for byte, float32 included: the float sparse kernel adds "
        "each channel's kept products in the dense kernel's order). The largest sparse / (s x dense) is "
        + ", ".join(f"{worst[p]:.3f} ({p})" for p in PRECISIONS)
        + ". *Fixed cost per output*: each layer compiled once more with every output channel "
        "keeping one filterlet (its largest), its sparse step's instructions beyond that filterlet's share "
        "of the dense step (kept / filterlets x dense), per output value: at most "
        f"{fixed[worst_fixed]:.1f} ({worst_fixed[2]} of {worst_fixed[0]}, {worst_fixed[1]}; "
        + ", ".join(f"{k[0].split()[0]} {k[1]} {k[2]} {v:.1f}" for k, v in fixed.items())
        + "). It is the epilogue (int8: the requantisation; float32: bias and activation), the call per block "
        "of four pixels and output channel, the block's tap pointers and the staging of the taps that cross "
        "the border or two rows (once per block for all channels; float32: four bytes a value, the taps "
        "outside at all four pixels neither staged nor visited), and for float32 the products of the taps "
        "outside at some of a block's pixels (zeros staged; the dense kernel leaves them out). The bound's "
        f"fixed part is one constant for the table, F = {PER_OUTPUT} per output value, above every layer's "
        "measured one. *arena B vs dense*: the sparse build's arena minus the dense one's (the layer's tap "
        "offsets and four padding rows, and the stage buffer: 8 B per tap and 4 x the most taps a block copies "
        "x the input bytes between two adjacent windows; 0 where a larger buffer sets the peak). *sparse B*: "
        "the layer's weights as stored, "
        "bias included (int32 or float32, dense).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
