"""Small, seeded int8 (integer-only) TFLite models, written without TensorFlow.

Quantisation follows the TFLite int8 spec, as the TFLite converter writes it:

- activations: int8, one scale and zero point per tensor; every model's inputs and outputs are int8 (no
  QUANTIZE or DEQUANTIZE ops);
- weights: int8, symmetric (zero point 0), one scale per output channel along ``quantized_dimension``
  (0 for CONV_2D's OHWI filter, 3 for DEPTHWISE_CONV_2D's 1HWC filter); FULLY_CONNECTED uses one scale;
- biases: int32, zero point 0, ``scale[c] = input_scale * weight_scale[c]``;
- ops whose output must keep the input's parameters (pools, RESHAPE, CONCATENATION) get them; SOFTMAX
  outputs scale 1/256 and zero point -128.

Weights are seeded random integers; scales are picked so that outputs use the int8 range without
saturating much. :class:`Int8Writer` extends :class:`~tests.zoo.tflite_models.TFLiteWriter`.
Every model runs in the tflite-micro interpreter (``runtime.Interpreter.from_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from .tflite_models import AF, BO, SAME, VALID, TFLiteWriter

_UNIFORM_INT8_STD = 74.0  # standard deviation of integers drawn uniformly from [-128, 127]
_SOFTMAX_SCALE, _SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128


def quantization(scales: Sequence[float] | np.ndarray, zero_points: Sequence[int], axis: int = 0) -> Any:
    """A ``QuantizationParametersT``: float32 ``scales``, ``zero_points``, quantised dimension ``axis``."""
    q = fb.QuantizationParametersT()
    q.scale = [float(np.float32(s)) for s in scales]
    q.zeroPoint = [int(z) for z in zero_points]
    q.quantizedDimension = axis
    return q


def conv_options(stride: int = 1, padding: int = SAME, act: int = AF.NONE) -> Any:
    o = fb.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH, o.fusedActivationFunction = padding, stride, stride, act
    o.dilationWFactor = o.dilationHFactor = 1
    return o


def fc_options(act: int = AF.NONE) -> Any:
    o = fb.FullyConnectedOptionsT()
    o.fusedActivationFunction, o.keepNumDims = act, False
    return o


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + stride - 1) // stride if padding == SAME else (size - kernel + stride) // stride


class Int8Writer(TFLiteWriter):
    """A :class:`TFLiteWriter` whose activations are int8 with per-tensor quantisation.

    Besides the tensors it tracks ``spread[t]``, a rough root-mean-square of the real values of
    activation ``t``, used only to pick plausible output scales for the next layers.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.spread: dict[int, float] = {}

    # ------------------------------------------------------------------------------------- tensors
    def add_tensor(
        self, name: str, shape: Sequence[int], ttype: int, quant: Any, data: np.ndarray | None
    ) -> int:
        """Add a tensor of schema type ``ttype`` with quantisation ``quant``: an activation if ``data`` is
        None, else a constant holding ``data``."""
        t = fb.TensorT()
        t.name, t.shape, t.type, t.quantization = name, list(shape), ttype, quant
        if data is None:
            t.buffer = 0
        else:
            assert data.shape == tuple(shape), (name, data.shape, shape)
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: Sequence[int], scale: float, zero_point: int) -> int:
        """A graph input: int8, per-tensor ``scale``/``zero_point``; assumes uniformly spread integers."""
        t = self.add_tensor(name, shape, fb.TensorType.INT8, quantization([scale], [zero_point]), None)
        self.spread[t] = scale * math.hypot(_UNIFORM_INT8_STD, zero_point)
        return t

    def weights(
        self,
        name: str,
        shape: Sequence[int],
        axis: int | None,
        fan_in: int,
        keep: float = 1.0,
        density: float = 1.0,
    ) -> tuple[int, np.ndarray]:
        """Random symmetric int8 weights, one scale per channel along ``axis`` (None: one scale);
        ``keep`` < 1: of OHWI weights, each filterlet ``W[o, ry, rx, :]`` kept with that probability
        (the others all zero, as filterlet pruning leaves them); ``density`` < 1: each single weight
        kept with that probability (zeros anywhere, as element-wise pruning leaves them).

        Returns (tensor index, float32 scales)."""
        data = self.rng.integers(-127, 128, size=tuple(shape), dtype=np.int8)
        if keep < 1.0:
            data = (data * (self.rng.random(tuple(shape)[:3]) < keep)[..., None]).astype(np.int8)
        if density < 1.0:
            data = (data * (self.rng.random(tuple(shape)) < density)).astype(np.int8)
        channels = 1 if axis is None else shape[axis]
        # Real weight std about 1/sqrt(fan_in), varied per channel so the multipliers differ.
        scales = (self.rng.uniform(0.6, 1.4, channels) / (_UNIFORM_INT8_STD * math.sqrt(fan_in))).astype(
            np.float32
        )
        quant = quantization(scales, [0] * channels, 0 if axis is None else axis)
        return self.add_tensor(name, shape, fb.TensorType.INT8, quant, data), scales

    def bias(
        self, name: str, input_scale: float, weight_scales: np.ndarray, channels: int, spread: float
    ) -> int:
        """int32 bias with ``scale[c] = input_scale * weight_scale[c]`` (broadcast), zero point 0."""
        scales = (np.float64(np.float32(input_scale)) * np.broadcast_to(weight_scales, (channels,))).astype(
            np.float32
        )
        real = self.rng.normal(0.0, 0.3 * spread, channels)
        data = np.round(real / scales.astype(np.float64)).astype(np.int32)
        return self.add_tensor(
            name, (channels,), fb.TensorType.INT32, quantization(scales, [0] * channels), data
        )

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(self.tensors[t].shape)

    def params(self, t: int) -> tuple[float, int]:
        """The (scale, zero_point) of per-tensor quantised tensor ``t``."""
        q = self.tensors[t].quantization
        return float(q.scale[0]), int(q.zeroPoint[0])

    def qop(
        self,
        code: int,
        inputs: list[int],
        out_name: str,
        out_shape: Sequence[int],
        scale: float,
        zero_point: int,
        options: Any = None,
    ) -> int:
        """Append an operator with one new int8 output tensor quantised with ``scale``/``zero_point``."""
        out = self.op(code, inputs, out_name, tuple(out_shape), options)
        t = self.tensors[out]
        t.type, t.quantization = fb.TensorType.INT8, quantization([scale], [zero_point])
        return out

    # --------------------------------------------------------------------------- output parameters
    def _output_params(self, spread: float, act: int) -> tuple[float, int]:
        """Scale and zero point covering about +-3 spreads (or [0, 3 spreads] after a RELU)."""
        if act in (AF.RELU, AF.RELU6):
            return 3.0 * spread / 255.0, -128
        return 3.0 * spread / 128.0, int(self.rng.integers(-12, 13))

    # ------------------------------------------------------------------------------------ layers
    def conv2d(
        self,
        name: str,
        x: int,
        out_channels: int,
        kernel: tuple[int, int],
        stride: int = 1,
        padding: int = SAME,
        act: int = AF.NONE,
        out_params: tuple[float, int] | None = None,
        keep: float = 1.0,
        density: float = 1.0,
    ) -> int:
        n, h, w, cin = self.shape(x)
        s_in, _ = self.params(x)
        fan_in = kernel[0] * kernel[1] * cin
        wt, ws = self.weights(f"{name}_w", (out_channels, *kernel, cin), 0, fan_in, keep, density)
        spread = self.spread[x]  # weights have real std 1/sqrt(fan_in): the output keeps the input's spread
        b = self.bias(f"{name}_b", s_in, ws, out_channels, spread)
        o = conv_options(stride, padding, act)
        oh, ow = _out_size(h, kernel[0], stride, padding), _out_size(w, kernel[1], stride, padding)
        scale, zp = out_params or self._output_params(spread, act)
        y = self.qop(BO.CONV_2D, [x, wt, b], name, (n, oh, ow, out_channels), scale, zp, o)
        self.spread[y] = spread
        return y

    def depthwise(
        self,
        name: str,
        x: int,
        kernel: tuple[int, int],
        multiplier: int = 1,
        stride: int = 1,
        padding: int = SAME,
        act: int = AF.NONE,
    ) -> int:
        n, h, w, cin = self.shape(x)
        s_in, _ = self.params(x)
        cout = cin * multiplier
        wt, ws = self.weights(f"{name}_w", (1, *kernel, cout), 3, kernel[0] * kernel[1])
        spread = self.spread[x]
        b = self.bias(f"{name}_b", s_in, ws, cout, spread)
        o = fb.DepthwiseConv2DOptionsT()
        o.padding, o.strideW, o.strideH, o.depthMultiplier = padding, stride, stride, multiplier
        o.fusedActivationFunction = act
        o.dilationWFactor = o.dilationHFactor = 1
        oh, ow = _out_size(h, kernel[0], stride, padding), _out_size(w, kernel[1], stride, padding)
        scale, zp = self._output_params(spread, act)
        y = self.qop(BO.DEPTHWISE_CONV_2D, [x, wt, b], name, (n, oh, ow, cout), scale, zp, o)
        self.spread[y] = spread
        return y

    def fully_connected(self, name: str, x: int, units: int, act: int = AF.NONE) -> int:
        """FULLY_CONNECTED with per-tensor weights (one scale, zero point 0) and an int32 bias."""
        batch, fan_in = self.shape(x)
        s_in, _ = self.params(x)
        wt, ws = self.weights(f"{name}_w", (units, fan_in), None, fan_in)
        spread = self.spread[x]
        b = self.bias(f"{name}_b", s_in, ws, units, spread)
        o = fc_options(act)
        scale, zp = self._output_params(spread, act)
        y = self.qop(BO.FULLY_CONNECTED, [x, wt, b], name, (batch, units), scale, zp, o)
        self.spread[y] = spread
        return y

    def pool(
        self,
        code: int,
        name: str,
        x: int,
        kernel: Sequence[int],
        stride: int,
        padding: int,
        act: int = AF.NONE,
    ) -> int:
        """AVERAGE_POOL_2D or MAX_POOL_2D; the output keeps the input's scale and zero point."""
        n, h, w, c = self.shape(x)
        o = fb.Pool2DOptionsT()
        o.padding, o.strideW, o.strideH = padding, stride, stride
        o.filterHeight, o.filterWidth, o.fusedActivationFunction = kernel[0], kernel[1], act
        oh, ow = _out_size(h, kernel[0], stride, padding), _out_size(w, kernel[1], stride, padding)
        y = self.qop(code, [x], name, (n, oh, ow, c), *self.params(x), o)
        self.spread[y] = self.spread[x]
        return y

    def add(self, name: str, a: int, b: int, scale: float, zero_point: int, act: int = AF.NONE) -> int:
        o = fb.AddOptionsT()
        o.fusedActivationFunction = act
        y = self.qop(BO.ADD, [a, b], name, self.shape(a), scale, zero_point, o)
        self.spread[y] = math.hypot(self.spread[a], self.spread[b])
        return y

    def reshape(self, name: str, x: int, shape: Sequence[int]) -> int:
        o = fb.ReshapeOptionsT()
        o.newShape = list(shape)
        y = self.qop(
            BO.RESHAPE, [x, self.int32(f"{name}_shape", list(shape))], name, shape, *self.params(x), o
        )
        self.spread[y] = self.spread[x]
        return y

    def softmax(self, name: str, x: int, beta: float = 1.0) -> int:
        o = fb.SoftmaxOptionsT()
        o.beta = beta
        y = self.qop(BO.SOFTMAX, [x], name, self.shape(x), _SOFTMAX_SCALE, _SOFTMAX_ZERO_POINT, o)
        self.spread[y] = 0.3
        return y

    def mean_hw(self, name: str, x: int, scale: float, zero_point: int) -> int:
        """MEAN over axes 1 and 2 with keep_dims (global average pooling with a rescale)."""
        n, _, _, c = self.shape(x)
        o = fb.ReducerOptionsT()
        o.keepDims = True
        y = self.qop(
            BO.MEAN, [x, self.int32(f"{name}_axes", [1, 2])], name, (n, 1, 1, c), scale, zero_point, o
        )
        self.spread[y] = self.spread[x]
        return y

    def concat(self, name: str, xs: Sequence[int], axis: int, scale: float, zero_point: int) -> int:
        o = fb.ConcatenationOptionsT()
        o.axis, o.fusedActivationFunction = axis, AF.NONE
        shape = list(self.shape(xs[0]))
        shape[axis] = sum(self.shape(x)[axis] for x in xs)
        y = self.qop(BO.CONCATENATION, list(xs), name, shape, scale, zero_point, o)
        self.spread[y] = max(self.spread[x] for x in xs)
        return y


# ------------------------------------------------------------------------------- single-op models
def conv_same_relu() -> bytes:
    """CONV_2D 3x3, SAME, stride 1, fused RELU, per-channel weights."""
    w = Int8Writer(seed=101)
    x = w.activation("input", (1, 9, 8, 3), 0.04, -7)
    y = w.conv2d("conv", x, 8, (3, 3), 1, SAME, AF.RELU)
    return w.finish([x], [y], "conv_same_relu")


def conv_valid_stride2() -> bytes:
    """CONV_2D 3x3, VALID, stride 2, no activation, input zero point 5."""
    w = Int8Writer(seed=102)
    x = w.activation("input", (1, 11, 10, 4), 0.03, 5)
    y = w.conv2d("conv", x, 6, (3, 3), 2, VALID, AF.NONE)
    return w.finish([x], [y], "conv_valid_stride2")


def conv_relu6() -> bytes:
    """CONV_2D 3x3 SAME + RELU6, with an output scale whose 6.0 falls inside the int8 range (clamp at 72)."""
    w = Int8Writer(seed=103)
    x = w.activation("input", (1, 8, 8, 3), 0.05, 0)
    y = w.conv2d("conv", x, 8, (3, 3), 1, SAME, AF.RELU6, out_params=(0.03, -128))
    return w.finish([x], [y], "conv_relu6")


def depthwise_mult1() -> bytes:
    """DEPTHWISE_CONV_2D 3x3, SAME, stride 1, depth multiplier 1."""
    w = Int8Writer(seed=104)
    x = w.activation("input", (1, 8, 7, 6), 0.05, -3)
    y = w.depthwise("depthwise", x, (3, 3), 1, 1, SAME, AF.NONE)
    return w.finish([x], [y], "depthwise_mult1")


def depthwise_mult2() -> bytes:
    """DEPTHWISE_CONV_2D 3x3, SAME, stride 2, depth multiplier 2, fused RELU."""
    w = Int8Writer(seed=105)
    x = w.activation("input", (1, 9, 9, 4), 0.02, 9)
    y = w.depthwise("depthwise", x, (3, 3), 2, 2, SAME, AF.RELU)
    return w.finish([x], [y], "depthwise_mult2")


def fully_connected() -> bytes:
    """FULLY_CONNECTED 48 -> 16, per-tensor weights, int32 bias, input zero point -17."""
    w = Int8Writer(seed=106)
    x = w.activation("input", (2, 48), 0.06, -17)
    y = w.fully_connected("fc", x, 16)
    return w.finish([x], [y], "fully_connected")


def avgpool_same() -> bytes:
    """AVERAGE_POOL_2D 3x3, SAME, stride 2: border windows hold 4 or 6 elements, not 9."""
    w = Int8Writer(seed=107)
    x = w.activation("input", (1, 7, 8, 5), 0.05, 3)
    y = w.pool(BO.AVERAGE_POOL_2D, "avgpool", x, (3, 3), 2, SAME)
    return w.finish([x], [y], "avgpool_same")


def avgpool_global() -> bytes:
    """AVERAGE_POOL_2D over the whole 5x6 plane (30 elements: an even count, ties are possible)."""
    w = Int8Writer(seed=108)
    x = w.activation("input", (1, 5, 6, 7), 0.05, -2)
    y = w.pool(BO.AVERAGE_POOL_2D, "avgpool", x, (5, 6), 1, VALID)
    return w.finish([x], [y], "avgpool_global")


def maxpool() -> bytes:
    """MAX_POOL_2D 3x3, SAME, stride 2, fused RELU (the clamp at the zero point is visible)."""
    w = Int8Writer(seed=109)
    x = w.activation("input", (1, 9, 8, 4), 0.05, 10)
    y = w.pool(BO.MAX_POOL_2D, "maxpool", x, (3, 3), 2, SAME, AF.RELU)
    return w.finish([x], [y], "maxpool")


def add_rescale() -> bytes:
    """ADD of two int8 inputs with different scales and zero points into a third scale (0.16, -10)."""
    w = Int8Writer(seed=110)
    a = w.activation("input_a", (1, 6, 6, 4), 0.05, -3)
    b = w.activation("input_b", (1, 6, 6, 4), 0.11, 7)
    y = w.add("add", a, b, 0.16, -10)
    return w.finish([a, b], [y], "add_rescale")


def add_rescale_relu() -> bytes:
    """As :func:`add_rescale`, with a fused RELU (clamped below at the output zero point)."""
    w = Int8Writer(seed=111)
    a = w.activation("input_a", (1, 6, 6, 4), 0.07, 11)
    b = w.activation("input_b", (1, 6, 6, 4), 0.023, -30)
    y = w.add("add", a, b, 0.06, -20, AF.RELU)
    return w.finish([a, b], [y], "add_rescale_relu")


def softmax() -> bytes:
    """SOFTMAX, beta 1, on 3 rows of 10; input scale 0.09, zero point 12; output 1/256, -128."""
    w = Int8Writer(seed=112)
    x = w.activation("input", (3, 10), 0.09, 12)
    y = w.softmax("softmax", x)
    return w.finish([x], [y], "softmax")


def reshape() -> bytes:
    """RESHAPE [1, 4, 4, 8] -> [1, 128]; parameters pass through."""
    w = Int8Writer(seed=113)
    x = w.activation("input", (1, 4, 4, 8), 0.05, 4)
    y = w.reshape("flat", x, (1, 128))
    return w.finish([x], [y], "reshape")


def mean_hw() -> bytes:
    """MEAN over H and W (axes 1, 2) with keep_dims, input (0.05, 3) -> output (0.021, -7)."""
    w = Int8Writer(seed=114)
    x = w.activation("input", (1, 6, 5, 8), 0.05, 3)
    y = w.mean_hw("mean", x, 0.021, -7)
    return w.finish([x], [y], "mean_hw")


def concat_same_params() -> bytes:
    """CONCATENATION on channels; both inputs share the output's scale and zero point."""
    w = Int8Writer(seed=115)
    a = w.activation("input_a", (1, 5, 5, 3), 0.05, -4)
    b = w.activation("input_b", (1, 5, 5, 2), 0.05, -4)
    y = w.concat("concat", [a, b], 3, 0.05, -4)
    return w.finish([a, b], [y], "concat_same_params")


# -------------------------------------------------------------------------------- multi-op models
def ds_cnn_block() -> bytes:
    """A DS-CNN keyword-spotting block: conv 10x4/2 + RELU, depthwise 3x3 + RELU, pointwise + RELU,
    global AVERAGE_POOL_2D, RESHAPE, FULLY_CONNECTED, SOFTMAX; input [1, 20, 10, 1]."""
    w = Int8Writer(seed=121)
    x = w.activation("input", (1, 20, 10, 1), 0.1, 6)
    c = w.conv2d("conv", x, 16, (10, 4), 2, SAME, AF.RELU)
    d = w.depthwise("depthwise", c, (3, 3), 1, 1, SAME, AF.RELU)
    p = w.conv2d("pointwise", d, 16, (1, 1), 1, SAME, AF.RELU)
    g = w.pool(BO.AVERAGE_POOL_2D, "avgpool", p, w.shape(p)[1:3], 1, VALID)
    r = w.reshape("flat", g, (1, 16))
    f = w.fully_connected("fc", r, 12)
    y = w.softmax("softmax", f)
    return w.finish([x], [y], "ds_cnn_block")


def ds_cnn_two_blocks() -> bytes:
    """KWS's shape in small: conv 10x4/2, then two depthwise 3x3 + pointwise blocks (a pointwise
    convolution feeding a depthwise one: the channel-slice chain KWS's partial execution runs), global
    AVERAGE_POOL_2D, FULLY_CONNECTED; input [1, 20, 10, 1]."""
    w = Int8Writer(seed=124)
    x = w.activation("input", (1, 20, 10, 1), 0.1, 6)
    y = w.conv2d("conv", x, 16, (10, 4), 2, SAME, AF.RELU)
    for i in (1, 2):
        y = w.depthwise(f"depthwise{i}", y, (3, 3), 1, 1, SAME, AF.RELU)
        y = w.conv2d(f"pointwise{i}", y, 16, (1, 1), 1, SAME, AF.RELU)
    g = w.pool(BO.AVERAGE_POOL_2D, "avgpool", y, w.shape(y)[1:3], 1, VALID)
    f = w.fully_connected("fc", w.reshape("flat", g, (1, 16)), 12)
    return w.finish([x], [f], "ds_cnn_two_blocks")


def sparse_conv_block() -> bytes:
    """Two 3x3 convolutions whose weights keep 40 % and 55 % of their filterlets (pruned elsewhere:
    stored sparse), 14 and 16 channels, global AVERAGE_POOL_2D, FULLY_CONNECTED; input [1, 9, 11, 16]."""
    w = Int8Writer(seed=125)
    x = w.activation("input", (1, 9, 11, 16), 0.05, -3)
    y = w.conv2d("conv1", x, 14, (3, 3), 1, SAME, AF.RELU, keep=0.4)
    y = w.conv2d("conv2", y, 16, (3, 3), 2, SAME, AF.RELU, keep=0.55)
    g = w.pool(BO.AVERAGE_POOL_2D, "avgpool", y, w.shape(y)[1:3], 1, VALID)
    f = w.fully_connected("fc", w.reshape("flat", g, (1, 16)), 10)
    return w.finish([x], [f], "sparse_conv_block")


def element_sparse_conv_block() -> bytes:
    """A 3x3 convolution keeping 40 % of its filterlets, then a strided one keeping 25 % of its single
    weights (pruned element-wise elsewhere: element CSR, a 288-value window), 32 and 16 channels,
    global AVERAGE_POOL_2D, FULLY_CONNECTED; input [1, 9, 11, 16]."""
    w = Int8Writer(seed=126)
    x = w.activation("input", (1, 9, 11, 16), 0.05, -3)
    y = w.conv2d("conv1", x, 32, (3, 3), 1, SAME, AF.RELU, keep=0.4)
    y = w.conv2d("conv2", y, 16, (3, 3), 2, SAME, AF.RELU, density=0.25)
    g = w.pool(BO.AVERAGE_POOL_2D, "avgpool", y, w.shape(y)[1:3], 1, VALID)
    f = w.fully_connected("fc", w.reshape("flat", g, (1, 16)), 10)
    return w.finish([x], [f], "element_sparse_conv_block")


def resnet_block() -> bytes:
    """conv 3x3 + RELU, conv 3x3, residual ADD (rescaled) with fused RELU, AVERAGE_POOL_2D 4x4/4,
    RESHAPE, FULLY_CONNECTED, SOFTMAX; input [1, 16, 16, 3]."""
    w = Int8Writer(seed=122)
    x = w.activation("input", (1, 16, 16, 3), 0.05, -1)
    c1 = w.conv2d("conv1", x, 8, (3, 3), 1, SAME, AF.RELU)
    c2 = w.conv2d("conv2", c1, 8, (3, 3), 1, SAME, AF.NONE)
    s1, _ = w.params(c1)
    s = w.add("residual", c1, c2, 1.3 * s1, -128, AF.RELU)
    p = w.pool(BO.AVERAGE_POOL_2D, "avgpool", s, (4, 4), 4, VALID)
    r = w.reshape("flat", p, (1, 128))
    f = w.fully_connected("fc", r, 10)
    y = w.softmax("softmax", f)
    return w.finish([x], [y], "resnet_block")


def autoencoder() -> bytes:
    """FULLY_CONNECTED 64-32-8-32-64, RELU on the hidden layers; int8 in and out."""
    w = Int8Writer(seed=123)
    x = w.activation("input", (1, 64), 0.04, 0)
    h = x
    for i, units in enumerate((32, 8, 32)):
        h = w.fully_connected(f"fc{i + 1}", h, units, AF.RELU)
    y = w.fully_connected("fc4", h, 64)
    return w.finish([x], [y], "autoencoder")


SINGLE_OP_MODELS: tuple[Callable[[], bytes], ...] = (
    conv_same_relu,
    conv_valid_stride2,
    conv_relu6,
    depthwise_mult1,
    depthwise_mult2,
    fully_connected,
    avgpool_same,
    avgpool_global,
    maxpool,
    add_rescale,
    add_rescale_relu,
    softmax,
    reshape,
    mean_hw,
    concat_same_params,
)
MULTI_OP_MODELS: tuple[Callable[[], bytes], ...] = (
    ds_cnn_block,
    ds_cnn_two_blocks,
    sparse_conv_block,
    element_sparse_conv_block,
    resnet_block,
    autoencoder,
)

TFLITE_INT8_MODELS: dict[str, Callable[[], bytes]] = {
    f.__name__: f for f in SINGLE_OP_MODELS + MULTI_OP_MODELS
}
"""Model name -> builder returning the .tflite flatbuffer (bytes)."""


# ------------------------------------------------------------------------------- int4 weights
def pack_int4(values: np.ndarray) -> np.ndarray:
    """int4 ``values`` two a byte, the first in the low nibble (TFLite's PackInt8IntoDenseInt4)."""
    nibbles = (np.asarray(values, np.int8).reshape(-1).astype(np.uint8) & 0x0F).astype(np.uint8)
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def with_int4_weights(data: bytes, *, packed: bool = True) -> bytes:
    """The model with the int8 filter of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED requantised
    to int4: ``q4 = clip(round(q / 16), -7, 7)`` with 16 times the scale (the int32 bias likewise, its
    scale staying input scale x weight scale), stored as INT4 (``packed``) or as INT8 tensors of the same
    values (the int8 model that means the same)."""
    import flatbuffers

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    graph = model.subgraphs[0]
    weighted = (BO.CONV_2D, BO.DEPTHWISE_CONV_2D, BO.FULLY_CONNECTED)
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode not in weighted:
            continue
        t = graph.tensors[op.inputs[1]]
        q = np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), np.int8).astype(np.float64)
        q4 = np.clip(np.rint(q / 16.0), -7, 7).astype(np.int8)
        t.quantization.scale = [float(np.float32(s * 16.0)) for s in t.quantization.scale]
        model.buffers[t.buffer].data = pack_int4(q4) if packed else q4.view(np.uint8)
        t.type = fb.TensorType.INT4 if packed else fb.TensorType.INT8
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = graph.tensors[op.inputs[2]]
            values = np.frombuffer(bytes(bytearray(model.buffers[b.buffer].data)), np.int32)
            model.buffers[b.buffer].data = np.rint(values / 16.0).astype(np.int32).view(np.uint8)
            b.quantization.scale = [float(np.float32(s * 16.0)) for s in b.quantization.scale]
    builder = flatbuffers.Builder(len(data) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
