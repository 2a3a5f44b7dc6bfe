"""Constants and records of the post-training quantiser."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs

logger = logging.getLogger(__name__)


# Per-axis DequantizeLinear exists from opset 13, but onnx.reference implements it only from version 19
# ("No implementation for operator 'DequantizeLinear' ... version 13, found 19, 21, 23, 25"), and the
# quantised model must run in the reference: older models are converted to 19 (TVM imports Q/DQ-19).
MIN_QDQ_OPSET = 19
# onnx.reference runs BatchNormalization-9 (opsets 9 to 13) in training mode; 14 and later are correct.
BATCHNORM_FIXED_OPSET = 15
WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127], as TFLite and onnxruntime do
# Symmetric int4 weights use [-7, 7], scale max|w| / 7: TFLite's converter does (kMaxQuantizedValue4bit in
# tensorflow/lite/tools/optimize/quantization_utils.cc), the narrow range as for int8 (ONNX Runtime's
# QInt4 uses [-8, 7] with scale 2 max|w| / 15 instead). Every value lies in [-8, 7]: two per byte.
INT4_QMAX = 7
# INT4 initializers need DequantizeLinear-21; a model with int4 weights is converted to it.
INT4_QDQ_OPSET = 21
# Symmetric int2 weights use [-1, 1] (ternary, scale max|w|): the narrow range as for int4 and int8; only
# given per layer (``weight_bits``, ``tvm-mcu prune --weights int2``), written as INT2 initializers of
# DequantizeLinear-25.
INT2_QMAX = 1
INT2_QDQ_OPSET = 25
# The largest stored magnitude of a symmetric weight of each width.
QMAX = {8: WEIGHT_QMAX, 4: INT4_QMAX, 2: INT2_QMAX}
# --weights: see tvm_mcu.ptq.bits.
WEIGHT_CHOICES = ("int8", "int4", "mixed")
# 24 dB: a noise power 1/250 of the signal's (6 % RMS). On the demo Fashion-MNIST CNN (10,000 test
# images; float 90.05 %, int8 90.08 %) int4 everywhere gives 86.76 %; mixed at 24 dB 89.51 % (the first
# conv int4), at 20 dB 88.97 % (and the classifier), at 18 dB 86.70 %.
DEFAULT_INT4_SQNR_DB = 24.0
INT32_MAX = 2**31 - 1
SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128
_DEFAULT_DOMAINS = ("", "ai.onnx")

# Roles of an op in the quantised graph.
WEIGHTED = "weighted"  # int8 weights per channel, int32 bias, own output range (or the fused activation's)
SAME_SCALE = "same scale"  # output reuses the input's scale and zero point
OWN_RANGE = "own range"  # output gets its own calibrated range
FIXED = "fixed"  # output scale fixed by the op (Softmax)
FUSED = "fused activation"  # Relu/Clip folded into the preceding weighted op
FLOAT = "float"


@attrs.frozen
class TensorQuant:
    """How one tensor of the quantised model is quantised (one scale per tensor, or per channel on axis)."""

    name: str
    kind: str  # "activation", "weight", "bias" or "constant"
    dtype: str  # "int8" or "int32"
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    rule: str = ""
    calibrated_range: tuple[float, float] | None = None


@attrs.frozen
class QuantizeResult:
    """What :func:`quantize_onnx` wrote: the file, the calibration size, the quantised tensors and notes.

    ``quantized_ops`` counts the nodes of the float model that run in int8, fused activations included.
    """

    out_path: Path
    n_calibration_samples: int
    quantized_ops: int
    tensors: tuple[TensorQuant, ...]
    notes: tuple[str, ...] = ()
    weights: str = "int8"  # the --weights choice: "int8", "int4" or "mixed"
    layers: tuple[Any, ...] = ()  # bits.LayerBits per weighted op (int4 and mixed only)

    def tensor(self, name: str) -> TensorQuant:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)
