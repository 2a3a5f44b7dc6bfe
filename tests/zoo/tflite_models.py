"""Small, seeded float32 TFLite CNNs (NHWC), written without TensorFlow.

The writer uses the flatbuffer object API (``ModelT``, ``SubGraphT``, ``TensorT``, ``OperatorT``) of the
TFLite schema module that ``tflite-micro`` bundles; ``ModelT.Pack`` does the flatbuffer bookkeeping.
Every model runs in the tflite-micro interpreter, the oracle for TFLite models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
_TYPES = {np.dtype(np.float32): fb.TensorType.FLOAT32, np.dtype(np.int32): fb.TensorType.INT32}
BO = fb.BuiltinOperator
AF = fb.ActivationFunctionType
SAME, VALID = fb.Padding.SAME, fb.Padding.VALID


class TFLiteWriter:
    """One subgraph under construction: tensors, constant buffers and operators, in execution order."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [fb.BufferT()]  # buffer 0: the empty sentinel for activations
        self.operators: list[Any] = []
        self.opcodes: list[int] = []

    def tensor(self, name: str, shape: tuple[int, ...], data: np.ndarray | None = None) -> int:
        """Add an activation (``data`` None) or a constant tensor; returns its index."""
        t = fb.TensorT()
        t.name, t.shape = name, list(shape)
        if data is None:
            t.type, t.buffer = fb.TensorType.FLOAT32, 0
        else:
            data = np.ascontiguousarray(data)
            assert data.shape == tuple(shape), (name, data.shape, shape)
            t.type = _TYPES[data.dtype]
            buf = fb.BufferT()
            buf.data = np.frombuffer(data.tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.3) -> int:
        return self.tensor(name, shape, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def int32(self, name: str, values: list[int] | list[list[int]]) -> int:
        arr = np.asarray(values, np.int32)
        return self.tensor(name, arr.shape, arr)

    def op(
        self, code: int, inputs: list[int], out_name: str, out_shape: tuple[int, ...], options: Any = None
    ) -> int:
        """Append an operator with one new float32 output tensor; returns the output's index."""
        out = self.tensor(out_name, out_shape)
        o = fb.OperatorT()
        if code not in self.opcodes:
            self.opcodes.append(code)
        o.opcodeIndex, o.inputs, o.outputs = self.opcodes.index(code), list(inputs), [out]
        if options is not None:
            o.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__.removesuffix("T"))
            o.builtinOptions = options
        self.operators.append(o)
        return out

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        codes = []
        for code in self.opcodes:
            c = fb.OperatorCodeT()
            # Codes below 127 go in both fields: readers of old schemas only look at the deprecated one.
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            codes.append(c)
        sg = fb.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = (
            self.tensors,
            inputs,
            outputs,
            self.operators,
            "main",
        )
        model = fb.ModelT()
        model.version, model.operatorCodes, model.subgraphs = SCHEMA_VERSION, codes, [sg]
        model.buffers, model.description = self.buffers, description
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


# ----------------------------------------------------------------------------------------- options
def _conv(stride: int, act: int, padding: int = SAME) -> Any:
    o = fb.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.fusedActivationFunction = padding, stride, stride, act
    o.dilationWFactor = o.dilationHFactor = 1
    return o


def _depthwise(multiplier: int, act: int) -> Any:
    o = fb.DepthwiseConv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.depthMultiplier = SAME, 1, 1, multiplier
    o.fusedActivationFunction = act
    o.dilationWFactor = o.dilationHFactor = 1
    return o


def _pool(k: int, stride: int, padding: int) -> Any:
    o = fb.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = padding, stride, stride, k, k
    o.fusedActivationFunction = AF.NONE
    return o


def _fc() -> Any:
    o = fb.FullyConnectedOptionsT()
    o.fusedActivationFunction = AF.NONE
    return o


def _act_only(cls: Any) -> Any:
    o = cls()
    o.fusedActivationFunction = AF.NONE
    return o


# ----------------------------------------------------------------------------------------- models
def conv_dw_residual_fc() -> bytes:
    """CONV_2D + RELU, DEPTHWISE_CONV_2D, residual ADD, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED, SOFTMAX."""
    w = TFLiteWriter(seed=21)
    x = w.tensor("input", (1, 8, 8, 3))
    c1 = w.op(
        BO.CONV_2D,
        [x, w.weight("conv_w", (8, 3, 3, 3)), w.weight("conv_b", (8,), 0.1)],
        "conv_relu",
        (1, 8, 8, 8),
        _conv(1, AF.RELU),
    )
    dw = w.op(
        BO.DEPTHWISE_CONV_2D,
        [c1, w.weight("dw_w", (1, 3, 3, 8)), w.weight("dw_b", (8,), 0.1)],
        "depthwise",
        (1, 8, 8, 8),
        _depthwise(1, AF.NONE),
    )
    s = w.op(BO.ADD, [c1, dw], "residual", (1, 8, 8, 8), _act_only(fb.AddOptionsT))
    p = w.op(BO.MAX_POOL_2D, [s], "maxpool", (1, 4, 4, 8), _pool(2, 2, VALID))
    shape = fb.ReshapeOptionsT()
    shape.newShape = [1, 128]
    r = w.op(BO.RESHAPE, [p, w.int32("new_shape", [1, 128])], "flat", (1, 128), shape)
    fc = w.op(
        BO.FULLY_CONNECTED,
        [r, w.weight("fc_w", (10, 128), 0.1), w.weight("fc_b", (10,), 0.1)],
        "logits",
        (1, 10),
        _fc(),
    )
    sm = fb.SoftmaxOptionsT()
    sm.beta = 1.0
    y = w.op(BO.SOFTMAX, [fc], "probs", (1, 10), sm)
    return w.finish([x], [y], "conv_dw_residual_fc")


def conv_relu6_pool_mean() -> bytes:
    """CONV_2D stride 2 + fused RELU6, AVERAGE_POOL_2D (SAME), MEAN over H and W, FULLY_CONNECTED."""
    w = TFLiteWriter(seed=22)
    x = w.tensor("input", (1, 12, 12, 3))
    c = w.op(
        BO.CONV_2D,
        [x, w.weight("conv_w", (8, 3, 3, 3), 1.0), w.weight("conv_b", (8,), 0.5)],
        "conv_relu6",
        (1, 6, 6, 8),
        _conv(2, AF.RELU6),
    )
    p = w.op(BO.AVERAGE_POOL_2D, [c], "avgpool", (1, 6, 6, 8), _pool(3, 1, SAME))
    red = fb.ReducerOptionsT()
    red.keepDims = False
    m = w.op(BO.MEAN, [p, w.int32("axes", [1, 2])], "mean", (1, 8), red)
    fc_in = [m, w.weight("fc_w", (4, 8)), w.weight("fc_b", (4,), 0.1)]
    y = w.op(BO.FULLY_CONNECTED, fc_in, "logits", (1, 4), _fc())
    return w.finish([x], [y], "conv_relu6_pool_mean")


def concat_pad_logistic_mul() -> bytes:
    """Two inputs: CONCATENATION on channels, asymmetric PAD, LOGISTIC, MUL (swish), MUL by a constant."""
    w = TFLiteWriter(seed=23)
    a = w.tensor("input_a", (1, 5, 5, 3))  # 300 bytes: input_b's slot starts after 4 bytes of padding
    b = w.tensor("input_b", (1, 5, 5, 2))
    cat = fb.ConcatenationOptionsT()
    cat.axis, cat.fusedActivationFunction = 3, AF.NONE
    c = w.op(BO.CONCATENATION, [a, b], "concat", (1, 5, 5, 5), cat)
    pads = w.int32("paddings", [[0, 0], [1, 2], [2, 0], [0, 0]])
    p = w.op(BO.PAD, [c, pads], "pad", (1, 8, 7, 5), fb.PadOptionsT())
    s = w.op(BO.LOGISTIC, [p], "sigmoid", (1, 8, 7, 5))
    m = w.op(BO.MUL, [p, s], "swish", (1, 8, 7, 5), _act_only(fb.MulOptionsT))
    y = w.op(BO.MUL, [m, w.weight("scale", (5,), 1.0)], "scaled", (1, 8, 7, 5), _act_only(fb.MulOptionsT))
    return w.finish([a, b], [y], "concat_pad_logistic_mul")


TFLITE_MODELS: dict[str, Callable[[], bytes]] = {
    f"tfl_{f.__name__}": f for f in (conv_dw_residual_fc, conv_relu6_pool_mean, concat_pad_logistic_mul)
}
