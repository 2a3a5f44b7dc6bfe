"""Build MobileNetV1-style benchmark models of any depth: float ONNX in code, then int8 QDQ by ``tvm-mcu quantize``.

A stride-2 3x3 stem (32 x width channels), then ``blocks`` depthwise-separable blocks (depthwise 3x3 +
ReLU, pointwise 1x1 + ReLU), global average pool, flatten and a classifier (Gemm). With 13 blocks it is
MobileNetV1's layout: stride 2 at blocks 1, 3, 5 and 11 (0-based), the channels doubling at the first
block and at each stride-2 block (64 ... 1024 x width). Other depths spread those four stride-2 blocks
over the depth in the same proportions, so every depth from 5 blocks on ends at the same resolution and
channels.
Width 0.25 at 96x96 with 2 classes is MLPerf Tiny's Visual Wake Words MobileNetV1 (about 7.5 M MACs).
Weights are seeded He-normal with BatchNorm folded in (random statistics); calibration data are seeded
normal images. The weights are untrained: the models are for memory, speed and compile-time figures.

    python bench/mobilenetv1.py OUT_DIR [BLOCKS [SIZE]]
        ->  OUT_DIR/mobilenetv1_<BLOCKS>b_<SIZE>.onnx, OUT_DIR/mobilenetv1_<BLOCKS>b_<SIZE>_int8.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/mobilenetv2.py
from mobilenetv2 import _Builder  # noqa: E402

from tvm_mcu.ptq import quantize_onnx  # noqa: E402

SEED = 96
WIDTH = 0.25
CLASSES = 2
# MobileNetV1's 13 blocks: the stride-2 ones (0-based).
V1_BLOCKS = 13
V1_STRIDE2 = (1, 3, 5, 11)
CALIBRATION_SAMPLES = 16


def stride2_blocks(blocks: int) -> tuple[int, ...]:
    """The stride-2 blocks of a ``blocks``-deep network: MobileNetV1's, scaled to the depth; never the
    first block (it widens the stem's output), each after the one before (4 blocks keep only 3)."""
    if blocks < 2:
        raise ValueError(f"a MobileNetV1-style network needs at least 2 blocks, got {blocks}")
    out: list[int] = []
    for p in V1_STRIDE2:
        at = max(round(p * blocks / V1_BLOCKS), 1, out[-1] + 1 if out else 1)
        if at < blocks:
            out.append(at)
    return tuple(out)


def layout(blocks: int, width: float = WIDTH) -> list[tuple[int, int, int]]:
    """``(c_in, c_out, stride)`` of each depthwise-separable block."""
    down = stride2_blocks(blocks)
    c = max(8, int(32 * width))
    out = []
    for i in range(blocks):
        stride = 2 if i in down else 1
        c_out = 2 * c if (i == 0 or stride == 2) else c
        out.append((c, c_out, stride))
        c = c_out
    return out


def name(blocks: int, size: int) -> str:
    return f"mobilenetv1_{blocks}b_{size}"


def build_float(blocks: int, size: int = 96, *, width: float = WIDTH, seed: int = SEED) -> onnx.ModelProto:
    b = _Builder(seed)
    stem = max(8, int(32 * width))
    y = b.conv("x", 3, stem, 3, stride=2)
    c = stem
    for c_in, c_out, stride in layout(blocks, width):
        y = b.conv(y, c_in, c_in, 3, stride=stride, group=c_in)
        y = b.conv(y, c_in, c_out, 1)
        c = c_out
    pooled = b._name("pool")
    b.nodes.append(helper.make_node("GlobalAveragePool", [y], [pooled]))
    flat = b._name("flat")
    b.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
    w = b.rng.normal(0, np.sqrt(1.0 / c), (c, CLASSES)).astype(np.float32)
    b.inits += [
        numpy_helper.from_array(w, "fc_w"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b"),
    ]
    b.nodes.append(helper.make_node("Gemm", [flat, "fc_w", "fc_b"], ["y"]))
    graph = helper.make_graph(
        b.nodes,
        name(blocks, size),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(out_dir: Path, blocks: int = V1_BLOCKS, size: int = 96) -> tuple[Path, Path]:
    """Write the float and the int8 QDQ model; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path = out_dir / f"{name(blocks, size)}.onnx"
    onnx.save(build_float(blocks, size), float_path)
    rng = np.random.default_rng(SEED + 1)
    calibration = {"x": rng.normal(0, 1, (CALIBRATION_SAMPLES, 1, 3, size, size)).astype(np.float32)}
    int8_path = out_dir / f"{name(blocks, size)}_int8.onnx"
    quantize_onnx(float_path, calibration, int8_path)
    return float_path, int8_path


if __name__ == "__main__":
    args = sys.argv[1:]
    where = Path(args[0] if args else "out/models")
    depth = int(args[1]) if len(args) > 1 else V1_BLOCKS
    side = int(args[2]) if len(args) > 2 else 96
    for p in build(where, depth, side):
        print(p)
