"""Constants and records of the post-training quantiser."""

from __future__ import annotations

import logging
from pathlib import Path

import attrs

logger = logging.getLogger(__name__)


# Per-axis DequantizeLinear exists from opset 13, but onnx.reference implements it only from version 19
# ("No implementation for operator 'DequantizeLinear' ... version 13, found 19, 21, 23, 25"), and the
# quantised model must run in the reference: older models are converted to 19 (TVM imports Q/DQ-19).
MIN_QDQ_OPSET = 19
# onnx.reference runs BatchNormalization-9 (opsets 9 to 13) in training mode; 14 and later are correct.
BATCHNORM_FIXED_OPSET = 15
WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127], as TFLite and onnxruntime do
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

    def tensor(self, name: str) -> TensorQuant:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)
