"""Small, seeded float32 ONNX CNNs built with ``onnx.helper``: the operator coverage of the ONNX frontend.

Every builder returns a checked ``onnx.ModelProto`` (opset 13, IR version 8) whose weights come from
``np.random.default_rng(seed)``, so the same call always gives the same bytes. Shapes are small enough
that each model compiles in about a second.

Models with BatchNormalization use opset 14, except ``conv_bn_swish``, which keeps opset 13 on purpose:
``onnx.reference`` (1.23) evaluates the opset 9-13 BatchNormalization with its training-mode formula
(the schema's default momentum makes it skip the inference path; onnx/onnx PR #8442), so that model
checks that the project's reference does not inherit the mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
# BatchNormalization-14 is where onnx.reference computes inference mode correctly (see the docstring).
OPSET_BATCHNORM = 14
IR_VERSION = 8


class _Graph:
    """Collects nodes and seeded initializers; ``model()`` wraps them into a checked ModelProto."""

    def __init__(self, name: str, seed: int, opset: int = OPSET) -> None:
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self._fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, base: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        return self.const(base, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def node(self, op: str, inputs: list[str], n_outputs: int = 1, **attrs: object) -> list[str]:
        base = op.lower()
        name = self._fresh(base)
        outputs = [f"{name}_out{k}" if n_outputs > 1 else f"{name}_out" for k in range(n_outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs

    def op(self, op: str, inputs: list[str], **attrs: object) -> str:
        return self.node(op, inputs, **attrs)[0]

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, *, group: int = 1, bias: bool = True, **attrs: object
    ) -> str:
        w = self.weight("w", (c_out, c_in // group, k, k))
        inputs = [x, w, self.weight("b", (c_out,), 0.1)] if bias else [x, w]
        return self.op("Conv", inputs, kernel_shape=[k, k], group=group, **attrs)

    def batch_norm(self, x: str, c: int) -> str:
        scale = self.const("bn_scale", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        shift = self.const("bn_shift", (self.rng.standard_normal(c) * 0.1).astype(np.float32))
        mean = self.const("bn_mean", (self.rng.standard_normal(c) * 0.1).astype(np.float32))
        var = self.const("bn_var", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def relu6(self, x: str) -> str:
        lo = self.const("clip_min", np.array(0.0, np.float32))
        hi = self.const("clip_max", np.array(6.0, np.float32))
        return self.op("Clip", [x, lo, hi])

    def model(
        self,
        inputs: list[tuple[str, list[int]]],
        outputs: list[tuple[str, list[int]]],
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            ir_version=IR_VERSION,
            producer_name="tvm-mcu-tests",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _rename_output(g: _Graph, tensor: str, name: str) -> str:
    """Give a graph output a readable name by renaming the producing node's output."""
    for node in g.nodes:
        for k, out in enumerate(node.output):
            if out == tensor:
                node.output[k] = name
        for k, inp in enumerate(node.input):
            if inp == tensor:
                node.input[k] = name
    return name


def conv_stride_dilation() -> onnx.ModelProto:
    """Conv with stride 2, then a dilated conv with asymmetric pads; Relu and LeakyRelu."""
    g = _Graph("conv_stride_dilation", seed=1)
    y = g.conv("x", 3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    y = g.op("Relu", [y])
    y = g.conv(y, 8, 8, 3, dilations=[2, 2], pads=[2, 0, 1, 2])
    y = g.op("LeakyRelu", [y], alpha=0.1)
    _rename_output(g, y, "y")
    # 12x12 -> stride 2 -> 6x6 -> dilation 2 (effective 5x5); pads top 2 / bottom 1, left 0 / right 2 -> 5x4
    return g.model([("x", [1, 3, 12, 12])], [("y", [1, 8, 5, 4])])


def conv_grouped_depthwise() -> onnx.ModelProto:
    """Grouped conv (groups=2) + BatchNorm + Clip as Relu6, depthwise conv, pointwise conv without bias."""
    g = _Graph("conv_grouped_depthwise", seed=2, opset=OPSET_BATCHNORM)
    y = g.conv("x", 4, 8, 3, group=2, pads=[1, 1, 1, 1])
    y = g.batch_norm(y, 8)
    y = g.relu6(y)
    y = g.conv(y, 8, 8, 3, group=8, pads=[1, 1, 1, 1])
    y = g.op("Relu", [y])
    y = g.conv(y, 8, 6, 1, bias=False)
    _rename_output(g, y, "y")
    return g.model([("x", [1, 4, 12, 12])], [("y", [1, 6, 12, 12])])


def conv_bn_swish() -> onnx.ModelProto:
    """Conv + BatchNorm, then x * Sigmoid(x) (Mul of two activations), then a standalone BatchNorm.

    Opset 13 on purpose: the reference must evaluate BatchNormalization-9 in inference mode.
    """
    g = _Graph("conv_bn_swish", seed=3, opset=OPSET)
    y = g.conv("x", 3, 8, 3, pads=[0, 0, 0, 0])
    y = g.batch_norm(y, 8)
    y = g.op("Mul", [y, g.op("Sigmoid", [y])])
    y = g.batch_norm(y, 8)  # not after a conv: decomposed, not folded
    _rename_output(g, y, "y")
    return g.model([("x", [1, 3, 12, 12])], [("y", [1, 8, 10, 10])])


def pools_ceil_and_count_include_pad() -> onnx.ModelProto:
    """MaxPool with padding and ceil_mode; AveragePool with pads, count_include_pad 0 and 1; Concat."""
    g = _Graph("pools_ceil_and_count_include_pad", seed=4)
    x = g.conv("x", 4, 4, 1)
    # 12 + 2 - 3 = 11 is odd: ceil_mode gives 7 windows, floor would give 6.
    a = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    # 2x2 windows over one padded row/column: the first and last windows are half padding.
    b0 = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    b1 = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    y = g.op("Concat", [a, b0, b1], axis=1)
    _rename_output(g, y, "y")
    return g.model([("x", [1, 4, 12, 12])], [("y", [1, 12, 7, 7])])


def two_outputs() -> onnx.ModelProto:
    """Two outputs, one of which (a feature map) also feeds the classifier head that gives the other.

    The feature map is 1620 bytes, so the second output's slot starts after 4 bytes of alignment padding.
    """
    g = _Graph("two_outputs", seed=12)
    f = g.op("Relu", [g.conv("x", 3, 5, 3, pads=[1, 1, 1, 1])])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [f])])
    y = g.op("Gemm", [y, g.weight("fc_w", (4, 5)), g.weight("fc_b", (4,))], transB=1)
    _rename_output(g, f, "features")
    _rename_output(g, y, "logits")
    return g.model([("x", [1, 3, 9, 9])], [("features", [1, 5, 9, 9]), ("logits", [1, 4])])


def gemm_head() -> onnx.ModelProto:
    """Classifier head: GlobalAveragePool, Flatten, Gemm (transB=1, alpha/beta), Relu, Gemm, Softmax."""
    g = _Graph("gemm_head", seed=5)
    y = g.op("GlobalAveragePool", ["x"])
    y = g.op("Flatten", [y], axis=1)
    y = g.op("Gemm", [y, g.weight("fc1_w", (16, 8)), g.weight("fc1_b", (16,))], transB=1, alpha=0.5, beta=2.0)
    y = g.op("Relu", [y])
    y = g.op("Gemm", [y, g.weight("fc2_w", (16, 10)), g.weight("fc2_b", (1, 10))])
    y = g.op("Softmax", [y], axis=1)
    _rename_output(g, y, "probs")
    return g.model([("x", [1, 8, 6, 6])], [("probs", [1, 10])])


def matmul_attention() -> onnx.ModelProto:
    """Reshape NCHW to tokens, Transpose, MatMul by a weight, broadcast bias Add, Softmax on the last axis."""
    g = _Graph("matmul_attention", seed=6)
    y = g.op("Reshape", ["x", g.const("shape", np.array([1, 4, 64], np.int64))])
    y = g.op("Transpose", [y], perm=[0, 2, 1])
    y = g.op("MatMul", [y, g.weight("w", (4, 16))])
    y = g.op("Add", [y, g.weight("bias", (16,))])
    y = g.op("Softmax", [y], axis=-1)
    _rename_output(g, y, "y")
    return g.model([("x", [1, 4, 8, 8])], [("y", [1, 64, 16])])


def two_inputs() -> onnx.ModelProto:
    """Two inputs: Add, Concat of both on the channel axis, conv, Mul by the second input's conv."""
    g = _Graph("two_inputs", seed=7)
    s = g.op("Add", ["a", "b"])
    c = g.op("Concat", [s, "b"], axis=1)
    y = g.conv(c, 6, 4, 3, pads=[1, 1, 1, 1])
    z = g.conv("b", 3, 4, 1)
    y = g.op("Mul", [y, z])
    _rename_output(g, y, "y")
    return g.model([("a", [1, 3, 10, 10]), ("b", [1, 3, 10, 10])], [("y", [1, 4, 10, 10])])


def resnet_block() -> onnx.ModelProto:
    """A ResNet-ish stage: identity residual block, then a stride-2 block with a 1x1 projection shortcut."""
    g = _Graph("resnet_block", seed=8, opset=OPSET_BATCHNORM)
    x = g.op("Relu", [g.batch_norm(g.conv("x", 3, 8, 3, pads=[1, 1, 1, 1]), 8)])
    y = g.op("Relu", [g.batch_norm(g.conv(x, 8, 8, 3, pads=[1, 1, 1, 1]), 8)])
    y = g.batch_norm(g.conv(y, 8, 8, 3, pads=[1, 1, 1, 1]), 8)
    x = g.op("Relu", [g.op("Add", [y, x])])
    y = g.op("Relu", [g.batch_norm(g.conv(x, 8, 16, 3, strides=[2, 2], pads=[1, 1, 1, 1]), 16)])
    y = g.batch_norm(g.conv(y, 16, 16, 3, pads=[1, 1, 1, 1]), 16)
    shortcut = g.batch_norm(g.conv(x, 8, 16, 1, strides=[2, 2]), 16)
    x = g.op("Relu", [g.op("Add", [y, shortcut])])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    y = g.op("Gemm", [y, g.weight("fc_w", (10, 16)), g.weight("fc_b", (10,))], transB=1)
    _rename_output(g, y, "logits")
    return g.model([("x", [1, 3, 16, 16])], [("logits", [1, 10])])


def inception_concat() -> onnx.ModelProto:
    """An Inception-ish block: four branches (1x1; 1x1->3x3; MaxPool->1x1; AveragePool->1x1), Concat, Relu."""
    g = _Graph("inception_concat", seed=9)
    b1 = g.conv("x", 8, 4, 1)
    b2 = g.conv(g.op("Relu", [g.conv("x", 8, 4, 1)]), 4, 6, 3, pads=[1, 1, 1, 1])
    b3 = g.conv(g.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), 8, 2, 1)
    avg = g.op("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    b4 = g.conv(avg, 8, 2, 1)
    y = g.op("Relu", [g.op("Concat", [b1, b2, b3, b4], axis=1)])
    _rename_output(g, y, "y")
    return g.model([("x", [1, 8, 12, 12])], [("y", [1, 14, 12, 12])])


def pad_reshape_flatten() -> onnx.ModelProto:
    """Pads of every mode tvm-mcu reads: constant (asymmetric, nonzero value), edge and reflect; valid
    conv, Reshape, Transpose, Flatten."""
    g = _Graph("pad_reshape_flatten", seed=10)
    pads = g.const("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))  # N C H W begins, then ends
    y = g.op("Pad", ["x", pads, g.const("pad_value", np.array(0.5, np.float32))], mode="constant")
    y = g.op("Pad", [y, g.const("edge_pads", np.array([0, 0, 0, 1, 0, 0, 1, 0], np.int64))], mode="edge")
    y = g.conv(y, 3, 4, 3)  # 8x8 padded to 11x11, then 12x12 -> 10x10
    y = g.op(
        "Pad", [y, g.const("reflect_pads", np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64))], mode="reflect"
    )
    y = g.op("Reshape", [y, g.const("shape", np.array([1, 4, 11, 12], np.int64))])
    y = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    y = g.op("Flatten", [y], axis=1)
    _rename_output(g, y, "y")
    return g.model([("x", [1, 3, 8, 8])], [("y", [1, 528])])


def mobilenet_block() -> onnx.ModelProto:
    """MobileNetV2 inverted residual: expand 1x1, Relu6 (Clip), depthwise 3x3, project 1x1, residual Add."""
    g = _Graph("mobilenet_block", seed=11, opset=OPSET_BATCHNORM)
    y = g.relu6(g.batch_norm(g.conv("x", 8, 16, 1, bias=False), 16))
    y = g.relu6(g.batch_norm(g.conv(y, 16, 16, 3, group=16, pads=[1, 1, 1, 1], bias=False), 16))
    y = g.batch_norm(g.conv(y, 16, 8, 1, bias=False), 8)
    y = g.op("Add", ["x", y])
    _rename_output(g, y, "y")
    return g.model([("x", [1, 8, 16, 16])], [("y", [1, 8, 16, 16])])


def conv_flatten_fc() -> onnx.ModelProto:
    """Two convs and a max pool, then Flatten straight into a fully connected layer (each channel is a
    block of 9 features of the Gemm), Relu, and a second Gemm."""
    g = _Graph("conv_flatten_fc", seed=13)
    y = g.op("Relu", [g.conv("x", 2, 6, 3, pads=[1, 1, 1, 1])])
    y = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Relu", [g.conv(y, 6, 4, 3, pads=[1, 1, 1, 1])])
    y = g.op("Flatten", [y], axis=1)
    y = g.op("Relu", [g.op("Gemm", [y, g.weight("fc1_w", (12, 36)), g.weight("fc1_b", (12,))], transB=1)])
    y = g.op("Gemm", [y, g.weight("fc2_w", (12, 5)), g.weight("fc2_b", (5,))])
    _rename_output(g, y, "logits")
    return g.model([("x", [1, 2, 6, 6])], [("logits", [1, 5])])


def concat_into_conv() -> onnx.ModelProto:
    """Two conv branches concatenated into a 1x1 conv: pruning a branch slices the consumer's input
    channels at the branch's offset in the concat."""
    g = _Graph("concat_into_conv", seed=14)
    x = g.op("Relu", [g.conv("x", 3, 6, 3, pads=[1, 1, 1, 1])])
    a = g.op("Relu", [g.conv(x, 6, 5, 1)])
    b = g.op("Relu", [g.conv(x, 6, 4, 3, pads=[1, 1, 1, 1])])
    y = g.conv(g.op("Concat", [a, b], axis=1), 9, 3, 1)
    _rename_output(g, y, "y")
    return g.model([("x", [1, 3, 8, 8])], [("y", [1, 3, 8, 8])])


ONNX_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    f.__name__: f
    for f in (
        conv_stride_dilation,
        conv_grouped_depthwise,
        conv_bn_swish,
        pools_ceil_and_count_include_pad,
        gemm_head,
        matmul_attention,
        two_inputs,
        two_outputs,
        resnet_block,
        inception_concat,
        pad_reshape_flatten,
        mobilenet_block,
        conv_flatten_fc,
        concat_into_conv,
    )
}
