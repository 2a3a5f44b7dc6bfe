"""Build the benchmark's MobileNetV2-style model: float ONNX in code, then int8 QDQ by ``tvm-mcu quantize``.

64x64x3 input; a stride-2 3x3 stem (16 channels); five inverted residual blocks with x6 expansion
(expand 1x1 + ReLU, depthwise 3x3 + ReLU, project 1x1; residual Add when shape allows):
16->16 (32x32), 16->24 s2 (16x16), 24->24 (16x16), 24->32 s2 (8x8), 32->32 (8x8); then a 1x1 conv to
128, global average pool and a 10-way classifier. Weights are seeded He-normal with BatchNorm folded in
(random statistics); calibration data are seeded normal images. The weights are untrained: the model is
for memory and speed figures, where only shapes and value ranges matter.

    python bench/mobilenetv2.py OUT_DIR   ->  OUT_DIR/mobilenetv2_64.onnx, OUT_DIR/mobilenetv2_64_int8.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu.ptq import quantize_onnx

SEED = 64
BLOCKS = ((16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1))
EXPANSION = 6


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, group: int = 1, act: bool = True
    ) -> str:
        fan_in = c_in // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (c_out, c_in // group, k, k)).astype(np.float32)
        # BatchNorm folded: a per-channel gain and shift with random statistics.
        w *= self.rng.uniform(0.5, 1.5, (c_out, 1, 1, 1)).astype(np.float32)
        b = self.rng.normal(0, 0.1, c_out).astype(np.float32)
        wn, bn, y = self._name("w"), self._name("b"), self._name("conv")
        self.inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wn, bn],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=group,
            )
        )
        if not act:
            return y
        # ReLU (not ReLU6): TVM 0.27's ONNX importer turns Clip with bound inputs into NaN tests and
        # call_tir max/min that the int8 lowering does not read yet.
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [out]))
        return out

    def block(self, x: str, c_in: int, c_out: int, stride: int) -> str:
        hidden = c_in * EXPANSION
        y = self.conv(x, c_in, hidden, 1)
        y = self.conv(y, hidden, hidden, 3, stride=stride, group=hidden)
        y = self.conv(y, hidden, c_out, 1, act=False)
        if stride == 1 and c_in == c_out:
            out = self._name("add")
            self.nodes.append(helper.make_node("Add", [x, y], [out]))
            return out
        return y


def build_float() -> onnx.ModelProto:
    b = _Builder(SEED)
    y = b.conv("x", 3, 16, 3, stride=2)
    for c_in, c_out, stride in BLOCKS:
        y = b.block(y, c_in, c_out, stride)
    y = b.conv(y, 32, 128, 1)
    pooled = b._name("pool")
    b.nodes.append(helper.make_node("GlobalAveragePool", [y], [pooled]))
    flat = b._name("flat")
    b.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
    w = b.rng.normal(0, np.sqrt(1.0 / 128), (128, 10)).astype(np.float32)
    b.inits += [numpy_helper.from_array(w, "fc_w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    b.nodes.append(helper.make_node("Gemm", [flat, "fc_w", "fc_b"], ["y"]))
    graph = helper.make_graph(
        b.nodes,
        "mobilenetv2_64",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(out_dir: Path) -> tuple[Path, Path]:
    """Write the float and the int8 QDQ model; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path = out_dir / "mobilenetv2_64.onnx"
    onnx.save(build_float(), float_path)
    calibration = {"x": np.random.default_rng(SEED + 1).normal(0, 1, (32, 1, 3, 64, 64)).astype(np.float32)}
    int8_path = out_dir / "mobilenetv2_64_int8.onnx"
    quantize_onnx(float_path, calibration, int8_path)
    return float_path, int8_path


if __name__ == "__main__":
    for p in build(Path(sys.argv[1] if len(sys.argv) > 1 else "out/models")):
        print(p)
