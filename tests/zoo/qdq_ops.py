"""One quantised operator per model, written by hand with ``onnx.helper`` the way ONNX Runtime's
quantiser writes them: integer inputs, ``DequantizeLinear``, the float operator(s), ``QuantizeLinear``.

Inputs and output are the integer tensors themselves (int8 or uint8), so onnxruntime's integers and
the compiled kernel's can be compared directly. Every builder takes the activation type and returns a
checked ``onnx.ModelProto`` (opset 17 unless the op needs newer); weights are seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


class _Q:
    """A graph under construction: integer inputs, nodes, initializers."""

    def __init__(self, dtype: str, seed: int) -> None:
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: Any, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def zp(self, value: int) -> np.ndarray:
        return np.asarray(value if self.dtype == "int8" else value + 128, dtype=self.dtype)

    def input(self, shape: list[int], scale: float, zp: int) -> str:
        """An integer graph input, dequantised: returns the float tensor."""
        x = self.name("x")
        self.inputs.append(helper.make_tensor_value_info(x, _ELEM[self.dtype], shape))
        return self.dq(x, scale, zp)

    def dq(self, q: str, scale: float, zp: int) -> str:
        out = self.name("dq")
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [q, self.const(np.float32(scale), "s"), self.const(self.zp(zp), "z")],
                [out],
            )
        )
        return out

    def weight(
        self, shape: tuple[int, ...], axis: int = 0, bits: int = 8, sigma: float = 0.0, zeros: float = 0.0
    ) -> str:
        """A per-channel int8 weight along ``axis``, dequantised; ``bits=4``: its values in [-8, 7] (an
        ONNX INT4 initialiser as imported), ``bits=2``: in [-2, 1] (INT2). ``sigma``: int8 values rounded
        from a normal distribution of that spread (as trained weights), instead of uniform; ``zeros``:
        that fraction of them zero (as pruned weights)."""
        lo, hi = {8: (-127, 127), 4: (-8, 7), 2: (-2, 1)}[bits]
        w = self.rng.integers(lo, hi + 1, shape).astype(np.int8)
        if sigma:
            w = np.clip(np.rint(self.rng.normal(0.0, sigma, shape)), -127, 127).astype(np.int8)
            w[0].flat[0], w[-1].flat[-1] = -127, 127  # the extremes
        if zeros:
            w[self.rng.random(shape) < zeros] = 0
        scales = self.rng.uniform(0.002, 0.02, shape[axis]).astype(np.float32)
        out = self.name("wdq")
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [
                    self.const(w, "w"),
                    self.const(scales, "ws"),
                    self.const(np.zeros(shape[axis], np.int8), "wz"),
                ],
                [out],
                axis=axis,
            )
        )
        return out

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def quantized(self, y: str, scale: float, zp: int) -> str:
        """``y`` through a QuantizeLinear / DequantizeLinear pair."""
        q = self.name("q")
        self.nodes.append(
            helper.make_node(
                "QuantizeLinear", [y, self.const(np.float32(scale), "s"), self.const(self.zp(zp), "z")], [q]
            )
        )
        return self.dq(q, scale, zp)

    def model(self, y: str, scale: float, zp: int, opset: int = OPSET) -> onnx.ModelProto:
        q = self.name("y")
        self.nodes.append(
            helper.make_node(
                "QuantizeLinear", [y, self.const(np.float32(scale), "s"), self.const(self.zp(zp), "z")], [q]
            )
        )
        graph = helper.make_graph(
            self.nodes, "qdq_op", self.inputs, [helper.make_empty_tensor_value_info(q)], self.inits
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        out = next(v for v in m.graph.value_info if v.name == q)
        del m.graph.output[:]
        m.graph.output.append(out)
        onnx.checker.check_model(m, full_check=True)
        return m


def _unary(op: str, out_scale: float, out_zp: int, **attrs: Any) -> Callable[[str], onnx.ModelProto]:
    def build(dtype: str) -> onnx.ModelProto:
        g = _Q(dtype, 1)
        x = g.input([1, 4, 5, 6], 0.04, 3)
        return g.model(g.op(op, [x], **attrs), out_scale, out_zp)

    return build


def clip(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 2)
    x = g.input([1, 4, 5, 6], 0.04, -5)
    return g.model(g.op("Clip", [x, g.const(np.float32(-0.5)), g.const(np.float32(1.2))]), 0.01, -60)


def prelu_per_channel(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 3)
    x = g.input([1, 4, 5, 6], 0.04, 10)
    slope = g.const(np.array([0.1, -0.2, 0.5, 1.5], np.float32).reshape(4, 1, 1))
    return g.model(g.op("PRelu", [x, slope]), 0.03, 0)


def mul_const_per_channel(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 4)
    x = g.input([1, 3, 4, 4], 0.05, 0)
    k = g.const(np.array([0.5, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1))
    return g.model(g.op("Add", [g.op("Mul", [x, k]), g.const(np.float32(0.25))]), 0.08, 2)


def softmax_last(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 5)
    x = g.input([1, 10], 0.1, 0)
    return g.model(g.op("Softmax", [x], axis=-1), 1 / 255, -128)


def softmax_channels(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 6)
    x = g.input([1, 5, 3, 3], 0.07, -20)
    return g.model(g.op("Softmax", [x], axis=1), 1 / 256, -128)


def batchnorm(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 7)
    x = g.input([1, 4, 5, 5], 0.05, -3)
    gamma = g.const(np.array([1.3, -0.7, 0.4, 2.5], np.float32))
    beta = g.const(np.array([0.1, 0.2, -0.3, 0.0], np.float32))
    mean = g.const(np.array([0.05, -0.1, 0.2, 0.0], np.float32))
    var = g.const(np.array([0.9, 1.1, 0.5, 2.0], np.float32))
    return g.model(g.op("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5), 0.04, 0)


def _binary(op: str, out_scale: float) -> Callable[[str], onnx.ModelProto]:
    def build(dtype: str) -> onnx.ModelProto:
        g = _Q(dtype, 8)
        a = g.input([1, 3, 4, 4], 0.05, 2)
        b = g.input([1, 3, 4, 4], 0.03, -7)
        return g.model(g.op(op, [a, b]), out_scale, 1)

    return build


def concat(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 9)
    a = g.input([1, 2, 4, 4], 0.05, 2)
    b = g.input([1, 3, 4, 4], 0.02, -7)
    return g.model(g.op("Concat", [a, b], axis=1), 0.04, 0)


def avgpool_ceil_include_pad(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 10)
    x = g.input([1, 3, 7, 6], 0.05, 1)
    y = g.op(
        "AveragePool",
        [x],
        kernel_shape=[3, 2],
        strides=[2, 2],
        pads=[1, 0, 1, 1],
        ceil_mode=1,
        count_include_pad=1,
    )
    return g.model(y, 0.05, 1)


def avgpool_exclude_pad(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 11)
    x = g.input([1, 3, 7, 6], 0.05, 1)
    y = g.op("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    return g.model(y, 0.03, -4)


def maxpool_ceil(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 12)
    x = g.input([1, 3, 7, 6], 0.05, 1)
    y = g.op("MaxPool", [x], kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1)
    return g.model(y, 0.05, 1)


def global_pools(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 13)
    x = g.input([1, 4, 5, 5], 0.05, 1)
    # Each pool quantised on its own (as ONNX Runtime writes them), then added.
    top = g.quantized(g.op("GlobalMaxPool", [x]), 0.05, 1)
    mean = g.quantized(g.op("GlobalAveragePool", [x]), 0.02, -3)
    return g.model(g.op("Add", [top, mean]), 0.06, 0)


def pad_constant(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 14)
    x = g.input([1, 2, 4, 5], 0.05, 1)
    pads = g.const(np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64))
    return g.model(g.op("Pad", [x, pads, g.const(np.float32(0.3))], mode="constant"), 0.05, 1)


def gemm_alpha_bias(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 15)
    x = g.input([1, 12], 0.05, 1)
    w = g.weight((6, 12), axis=0)
    b = g.const((g.rng.standard_normal(6) * 0.3).astype(np.float32))
    return g.model(g.op("Gemm", [x, w, b], transB=1, alpha=0.75), 0.05, 0)


def conv_bn_relu(dtype: str) -> onnx.ModelProto:
    """Conv, BatchNormalization and Relu with no quantisation between them (folded into the conv)."""
    g = _Q(dtype, 16)
    x = g.input([1, 3, 6, 6], 0.05, 1)
    y = g.op("Conv", [x, g.weight((4, 3, 3, 3))], pads=[1, 1, 1, 1])
    gamma = g.const(np.array([1.3, -0.7, 0.4, 2.5], np.float32))
    beta = g.const(np.array([0.1, 0.2, -0.3, 0.0], np.float32))
    mean = g.const(np.array([0.05, -0.1, 0.2, 0.0], np.float32))
    var = g.const(np.array([0.9, 1.1, 0.5, 2.0], np.float32))
    y = g.op("Relu", [g.op("BatchNormalization", [y, gamma, beta, mean, var])])
    return g.model(y, 0.02, -128)


def conv_uint8_weights(dtype: str) -> onnx.ModelProto:
    """A conv whose weights are uint8 with a zero point of 100 (not 128: the centred weights need int16)."""
    g = _Q(dtype, 17)
    x = g.input([1, 3, 5, 5], 0.05, 1)
    w = g.rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    wdq = g.name("wdq")
    g.nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [g.const(w, "w"), g.const(np.float32(0.01), "ws"), g.const(np.uint8(100), "wz")],
            [wdq],
        )
    )
    return g.model(g.op("Conv", [x, wdq], pads=[1, 1, 1, 1]), 0.3, 0)


def reshape_transpose(dtype: str) -> onnx.ModelProto:
    g = _Q(dtype, 18)
    x = g.input([1, 4, 3, 2], 0.05, 1)
    y = g.op("Reshape", [x, g.const(np.array([1, 4, 6], np.int64))])
    y = g.op("Transpose", [y], perm=[0, 2, 1])
    return g.model(y, 0.05, 1)


def conv_all_padding(dtype: str) -> onnx.ModelProto:
    """A dilated conv on a 1x1 input whose every window lies in the padding (found by the fuzzer): the
    kernel never reads its input, and the library must still build warning-free."""
    g = _Q(dtype, 19)
    x = g.input([1, 4, 1, 1], 0.02, -12)
    y = g.op("Conv", [x, g.weight((3, 4, 3, 3))], dilations=[2, 1], pads=[3, 1, 3, 1], strides=[2, 2])
    return g.model(y, 0.001, -24)


def conv_larger_than_input(dtype: str) -> onnx.ModelProto:
    """A 5x5 conv, padding 2, on a 3x3 input: every window is partial (found by the fuzzer: in one
    translation unit GCC warned about the window kernel's dead whole-window path)."""
    g = _Q(dtype, 23)
    x = g.input([1, 1, 3, 3], 0.02, 7)
    y = g.op("MaxPool", [x], kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[1, 1])  # into the arena
    y = g.quantized(y, 0.02, 7)
    y = g.op("Conv", [y, g.weight((1, 1, 5, 5))], pads=[2, 2, 2, 2])
    return g.model(y, 0.01, -9)


QDQ_OPS: dict[str, Callable[[str], onnx.ModelProto]] = {
    "sigmoid": _unary("Sigmoid", 1 / 256, -128),
    "tanh": _unary("Tanh", 1 / 128, 0),
    "leaky_relu": _unary("LeakyRelu", 0.03, -20, alpha=0.1),
    "hard_sigmoid": _unary("HardSigmoid", 1 / 255, -128, alpha=0.2, beta=0.5),
    "hard_swish": _unary("HardSwish", 0.04, -30),
    "elu": _unary("Elu", 0.03, -40, alpha=1.0),
    "relu": _unary("Relu", 0.04, -128),
    "clip": clip,
    "prelu_per_channel": prelu_per_channel,
    "mul_add_const_per_channel": mul_const_per_channel,
    "softmax_last": softmax_last,
    "softmax_channels": softmax_channels,
    "batchnorm": batchnorm,
    "add": _binary("Add", 0.07),
    "sub": _binary("Sub", 0.07),
    "mul": _binary("Mul", 0.01),
    "concat": concat,
    "avgpool_ceil_include_pad": avgpool_ceil_include_pad,
    "avgpool_exclude_pad": avgpool_exclude_pad,
    "maxpool_ceil": maxpool_ceil,
    "global_max_and_average": global_pools,
    "pad_constant": pad_constant,
    "gemm_alpha_bias": gemm_alpha_bias,
    "conv_bn_relu": conv_bn_relu,
    "conv_uint8_weights": conv_uint8_weights,
    "reshape_transpose": reshape_transpose,
    "conv_all_padding": conv_all_padding,
    "conv_larger_than_input": conv_larger_than_input,
}


def int4_cnn(bits: int = 4) -> onnx.ModelProto:
    """An int8 QDQ CNN whose convolution and dense weights hold values in [-8, 7] (``bits=8``: the same
    model with int8 weights; ``bits=2``: in [-2, 1]): a 3x3 convolution over 3 input channels (too few
    for the blocked kernels: its weights stay bytes), a padded 3x3 one over 8 (the padding summed), a
    depthwise one, a 1x1 one, max pooling and a dense layer: every kind of schedule (in place, channel
    slices, row bands)."""
    g = _Q("int8", 31)
    x = g.input([1, 3, 8, 8], 0.05, 3)
    y = g.op("Conv", [x, g.weight((8, 3, 3, 3), bits=bits)], pads=[1, 1, 1, 1])
    y = g.quantized(g.op("Relu", [y]), 0.04, -128)
    y = g.quantized(g.op("Conv", [y, g.weight((16, 8, 3, 3), bits=bits)], pads=[1, 1, 1, 1]), 0.05, 5)
    y = g.op("Conv", [y, g.weight((16, 1, 3, 3), bits=bits)], pads=[1, 1, 1, 1], group=16)
    y = g.quantized(y, 0.05, 2)
    y = g.quantized(g.op("Conv", [y, g.weight((16, 16, 1, 1), bits=bits)]), 0.05, -3)
    y = g.quantized(g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]), 0.05, -3)
    y = g.op("Flatten", [y])
    b = g.const((g.rng.standard_normal(12) * 0.3).astype(np.float32))
    return g.model(g.op("Gemm", [y, g.weight((12, 256), bits=bits), b], transB=1), 0.1, 2)


def compress_cnn(zeros: float = 0.0, dense_sigma: float = 10.0) -> onnx.ModelProto:
    """An int8 QDQ CNN whose weights are spread as trained ones (normal, sigma 10: about 6 bits a value;
    ``zeros``: that fraction zero, as pruned ones) for CompressWeights: int4_cnn's layers (a first 3x3
    convolution over 3 channels, too few for the blocked kernels; a padded 3x3 over 8; a depthwise; a 1x1;
    max pooling; a dense layer), every kind of schedule. ``dense_sigma``: the dense layer's spread (40:
    about 7.4 bits a value, which its code barely shrinks)."""
    g = _Q("int8", 37)
    x = g.input([1, 3, 8, 8], 0.05, 3)
    y = g.op("Conv", [x, g.weight((8, 3, 3, 3), sigma=10, zeros=zeros)], pads=[1, 1, 1, 1])
    y = g.quantized(g.op("Relu", [y]), 0.04, -128)
    y = g.op("Conv", [y, g.weight((16, 8, 3, 3), sigma=10, zeros=zeros)], pads=[1, 1, 1, 1])
    y = g.quantized(y, 0.3, 5)
    y = g.op("Conv", [y, g.weight((16, 1, 3, 3), sigma=10, zeros=zeros)], pads=[1, 1, 1, 1], group=16)
    y = g.quantized(y, 0.3, 2)
    y = g.quantized(g.op("Conv", [y, g.weight((16, 16, 1, 1), sigma=10, zeros=zeros)]), 0.3, -3)
    y = g.quantized(g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]), 0.3, -3)
    y = g.op("Flatten", [y])
    b = g.const((g.rng.standard_normal(12) * 0.3).astype(np.float32))
    w = g.weight((12, 256), sigma=dense_sigma, zeros=zeros)
    return g.model(g.op("Gemm", [y, w, b], transB=1), 1.0, 2)


def int4_layer(kind: str, bits: int = 4) -> onnx.ModelProto:
    """One layer with weights in [-8, 7] (``bits=8``: int8 weights) for the benchmark: "conv", a padded
    3x3 convolution 32 -> 64 channels at 16x16; "dense", a dense layer 256 -> 64."""
    g = _Q("int8", 32)
    if kind == "conv":
        x = g.input([1, 32, 16, 16], 0.05, 3)
        y = g.op("Conv", [x, g.weight((64, 32, 3, 3), bits=bits)], pads=[1, 1, 1, 1])
    else:
        x = g.input([1, 256], 0.05, 3)
        y = g.op("Gemm", [x, g.weight((64, 256), bits=bits)], transB=1)
    return g.model(y, 0.5 if bits == 8 else 0.05, 1)
