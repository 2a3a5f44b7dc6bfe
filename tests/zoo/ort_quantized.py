"""Float CNNs as users bring them, quantised by ONNX Runtime's own ``quantize_static``.

The float models are written with ``onnx.helper`` (seeded weights): a MobileNetV2-style network with
Clip(0, 6) and BatchNormalization left unfolded (ONNX Runtime quantises BN as an operator of its own),
a ResNet with a residual add, a concat and a softmax head, an odd-shaped CNN (asymmetric strides, pads
and kernels, ceil_mode, LeakyRelu, Sigmoid), and tvm-mcu's demo model. :func:`ort_quantize` runs
``onnxruntime.quantization.quantize_static`` on seeded calibration data: QDQ or QOperator format,
per-channel int8 weights, int8 (QInt8) or uint8 (QUInt8, ORT's default) activations.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from .onnx_models import OPSET_BATCHNORM, _Graph, _rename_output


def mobilenetv2_clip() -> onnx.ModelProto:
    g = _Graph("mobilenetv2_clip", seed=21, opset=OPSET_BATCHNORM)
    y = g.relu6(g.conv("x", 3, 16, 3, strides=[2, 2], pads=[1, 1, 1, 1]))

    def block(x: str, c_in: int, c_out: int, stride: int) -> str:
        hidden = c_in * 4
        y = g.relu6(g.batch_norm(g.conv(x, c_in, hidden, 1, bias=False), hidden))
        y = g.conv(
            y, hidden, hidden, 3, group=hidden, strides=[stride, stride], pads=[1, 1, 1, 1], bias=False
        )
        y = g.relu6(g.batch_norm(y, hidden))
        y = g.batch_norm(g.conv(y, hidden, c_out, 1, bias=False), c_out)
        return g.op("Add", [x, y]) if stride == 1 and c_in == c_out else y

    for c_in, c_out, stride in ((16, 16, 1), (16, 24, 2), (24, 24, 1)):
        y = block(y, c_in, c_out, stride)
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    y = g.op("Gemm", [y, g.weight("fc", (10, 24)), g.weight("fcb", (10,))], transB=1)
    _rename_output(g, y, "logits")
    return g.model([("x", [1, 3, 32, 32])], [("logits", [1, 10])])


def resnet_concat_softmax() -> onnx.ModelProto:
    g = _Graph("resnet_concat_softmax", seed=22, opset=OPSET_BATCHNORM)
    x = g.op("Relu", [g.conv("x", 3, 8, 3, pads=[1, 1, 1, 1])])
    a = g.conv(g.op("Relu", [g.conv(x, 8, 8, 3, pads=[1, 1, 1, 1])]), 8, 8, 3, pads=[1, 1, 1, 1])
    x = g.op("Relu", [g.op("Add", [a, x])])
    x = g.op("Relu", [g.op("Concat", [g.conv(x, 8, 6, 1), g.conv(x, 8, 6, 3, pads=[1, 1, 1, 1])], axis=1)])
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    y = g.op("Gemm", [y, g.weight("fc", (10, 12)), g.weight("fcb", (10,))], transB=1)
    y = g.op("Softmax", [y], axis=1)
    _rename_output(g, y, "probs")
    return g.model([("x", [1, 3, 16, 16])], [("probs", [1, 10])])


def odd_cnn() -> onnx.ModelProto:
    g = _Graph("odd_cnn", seed=23)
    y = g.op("Relu", [g.conv("x", 2, 5, 3, strides=[2, 1], pads=[1, 0, 2, 1])])
    y = g.op("AveragePool", [y], kernel_shape=[3, 2], strides=[1, 2], pads=[1, 0, 1, 1])
    y = g.op("LeakyRelu", [g.conv(y, 5, 7, 1)], alpha=0.2)
    y = g.op("MaxPool", [y], kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1)
    y = g.op("Sigmoid", [g.conv(y, 7, 3, 3, pads=[1, 1, 1, 1])])
    y = g.op("Flatten", [y])
    _rename_output(g, y, "y")
    # 13x11 -> conv s(2,1) -> 7x10 -> avg s(1,2) -> 7x5 -> maxpool ceil -> 4x2 -> conv: 3 x 4x2 = 24
    return g.model([("x", [1, 2, 13, 11])], [("y", [1, 24])])


def demo_model() -> onnx.ModelProto:
    data = importlib.resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"
    return onnx.load_from_string(data.read_bytes())


FLOAT_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mobilenetv2_clip": mobilenetv2_clip,
    "resnet_concat_softmax": resnet_concat_softmax,
    "odd_cnn": odd_cnn,
    "demo": demo_model,
}


WEIGHT_TYPES = {"int8": "QInt8", "int4": "QInt4", "uint4": "QUInt4"}


def ort_quantize(
    float_model: onnx.ModelProto,
    out: Path,
    *,
    activations: str,
    fmt: str = "QDQ",
    seed: int = 0,
    weights: str = "int8",
) -> Path:
    """Quantise with ONNX Runtime's quantize_static: per-channel ``weights`` "int8" (QInt8), "int4"
    (QInt4) or "uint4" (QUInt4, zero point 8), ``activations`` "int8" (QInt8) or "uint8" (QUInt8),
    ``fmt`` "QDQ" or "QOperator", calibrated on 16 seeded normal samples. Below opset 21, ONNX Runtime
    writes the Q/DQ of a model with 4-bit weights in its ``com.microsoft`` domain."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    spec = float_model.graph.input[0]
    shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    samples = [{spec.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(16)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.stem + "_float.onnx")
    src.write_bytes(onnx.shape_inference.infer_shapes(float_model).SerializeToString())
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
        per_channel=True,
        activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
        weight_type=getattr(QuantType, WEIGHT_TYPES[weights]),
    )
    return out
