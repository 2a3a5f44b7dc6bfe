"""Post-training static quantisation: a float ONNX model plus calibration data -> a standard QDQ ONNX model.

The float model is run sample by sample in onnxruntime (``onnx.reference`` where onnxruntime cannot run
it; every intermediate tensor made a graph output on a copy) to find the range of every activation; then
a QDQ model is written
with the conventions of TFLite's int8 scheme and onnxruntime's QDQ format:

- weights (Conv: axis 0 of OIHW; Gemm: axis 0 when ``transB=1``, else 1; MatMul with a constant B: axis 1)
  are int8 initializers, symmetric per output channel (zero point 0, scale ``max|w| / 127``), each
  followed by a ``DequantizeLinear`` with ``axis``; ``per_channel=False`` gives one scale per tensor;
- biases are int32 initializers with scale ``s_input * s_weight[c]`` and zero point 0, then
  ``DequantizeLinear`` (axis 0);
- activations are int8, asymmetric per tensor: the calibrated range is widened to include 0, scale
  ``(max - min) / 255``, zero point ``round(-128 - min / scale)``; every activation a quantised op reads
  gets a ``QuantizeLinear -> DequantizeLinear`` pair, the graph inputs included (they stay float: the first
  node is a ``QuantizeLinear``) and so do the graph outputs (the model's outputs stay float and keep their
  names);
- Conv/Gemm/MatMul followed by Relu or Clip(0, 6) are fused: one Q/DQ pair after the activation, whose
  calibrated range sets the scale;
- MaxPool, Reshape, Flatten, Transpose, Squeeze and Unsqueeze reuse their input's scale and zero point
  (the very same initializers); AveragePool, GlobalAveragePool, a standalone Relu or Clip, Add and Concat
  get their own calibrated output range (each input of Add/Concat is the DQ of its own quantised tensor);
  Softmax output has the fixed scale 1/256 and zero point -128 (TFLite's convention);
- any other op stays float (DQ before it, Q after it where a quantised op reads its result) and is named in
  the result's notes. A model with no quantisable op is refused.

BatchNormalization that follows a Conv is folded into the Conv's weights and bias first (the quantised
model has none); one that cannot be folded stays float. The output has opset ``max(19, model's)``: per-axis
DequantizeLinear needs 13, but ``onnx.reference`` (onnx 1.23) implements DequantizeLinear from version 19
only, so older models are converted with ``onnx.version_converter`` first (which also avoids its
BatchNormalization-9 training-mode bug). The output passes ``onnx.checker.check_model(full_check=True)``,
runs in ``onnx.reference.ReferenceEvaluator`` and is byte-identical for the same inputs.

Calibration data is an ``.npz`` file (or a dict) holding one array per model input, keyed by the input
name or saved positionally (``arr_0``, ``arr_1``... in input order), each with a leading sample axis: shape
``(N, *input_shape[1:])`` or ``(N, *input_shape)`` (batch 1). At most ``max_samples`` samples are used.

The demo's ``tvm_mcu/data/demo/calibration.npz`` holds the first 200 images of the Fashion-MNIST *training*
set (``train-images-idx3-ubyte.gz``), normalised as the demo model expects,
``x = (pixel / 255 - 0.2860) / 0.3530`` in float32, under the key ``input`` with shape ``(200, 1, 28, 28)``
(the model input ``(1, 1, 28, 28)`` without its batch axis), saved with ``np.savez``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from tvm_mcu.errors import BadOptionError, UnsupportedOpError
from tvm_mcu.outputs import output_file
from tvm_mcu.ptq import bits
from tvm_mcu.ptq.bits import LayerBits
from tvm_mcu.ptq.calibrate import _calibrate, _calibration_feeds, _input_specs, _samples
from tvm_mcu.ptq.common import (
    BATCHNORM_FIXED_OPSET,
    DEFAULT_INT4_SQNR_DB,
    FLOAT,
    INT2_QDQ_OPSET,
    INT4_QDQ_OPSET,
    WEIGHT_CHOICES,
    WEIGHTED,
    QuantizeResult,
    TensorQuant,
)
from tvm_mcu.ptq.plan import _RULES, _Graph, _plan
from tvm_mcu.ptq.prepare import _convert, _load, _prepare, opset_of
from tvm_mcu.ptq.write import _write_qdq, activation_params, weight_scales

logger = logging.getLogger(__name__)


def quantize_onnx(
    model_path: Path,
    calibration: Path | Mapping[str, np.ndarray],
    out_path: Path,
    *,
    per_channel: bool = True,
    max_samples: int = 256,
    weights: str = "int8",
    int4_sqnr_db: float = DEFAULT_INT4_SQNR_DB,
    weight_bits: Mapping[str, int] | None = None,
    int8_depthwise: bool = False,
) -> QuantizeResult:
    """Quantise the float ONNX model at ``model_path`` with ``calibration`` data into QDQ at ``out_path``.

    ``weights``: "int8" (every weight), "int4" (every Conv/Gemm/MatMul weight, written as INT4
    initializers of opset-21 DequantizeLinear) or "mixed" (int4 for the layers whose int4 output SQNR on
    the calibration data is at least ``int4_sqnr_db``, or, given ``weight_bits``, 2, 4 or 8 per weight
    initializer name as it says: int2 as INT2 initializers of opset-25 DequantizeLinear, ternary): see
    :mod:`tvm_mcu.ptq.bits`. ``int8_depthwise``: depthwise
    convolutions stay int8 with "int4" and "mixed". Activations are int8 in every case.

    Raises :class:`BadOptionError` for unusable calibration data or options, :class:`ModelError` for a
    model that cannot be read or run, :class:`UnsupportedOpError` when no op can be quantised.
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise BadOptionError(f"max_samples must be a positive integer, got {max_samples!r}")
    if not isinstance(per_channel, bool):
        raise BadOptionError(f"per_channel must be True or False, got {per_channel!r}")
    if weights not in WEIGHT_CHOICES:
        raise BadOptionError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if not isinstance(int8_depthwise, bool):
        raise BadOptionError(f"int8_depthwise must be True or False, got {int8_depthwise!r}")
    out_path = output_file(Path(out_path))
    notes: list[str] = []
    model = _prepare(_load(Path(model_path)), notes)
    # int2 weights (only given per layer) need DequantizeLinear-25, int4 ones 21.
    two = weight_bits is not None and any(b == 2 for b in weight_bits.values())
    needed = INT2_QDQ_OPSET if two else INT4_QDQ_OPSET
    if weights != "int8" and opset_of(model) < needed:
        notes.append(
            f"converted from ONNX opset {opset_of(model)} to {needed} (int{2 if two else 4} weights need "
            f"DequantizeLinear-{needed})"
        )
        model = _convert(model, needed)
    feeds = _calibration_feeds(calibration, model, max_samples, notes)
    ranges, dtypes = _calibrate(model, feeds)
    graph = _Graph.of(model, dtypes)
    roles = _plan(graph, notes)
    if not any(role != FLOAT for role, _ in roles):
        ops = sorted({n.op_type for n in graph.nodes})
        raise UnsupportedOpError(
            f"{model_path} has no operator that can be quantised (it has {', '.join(ops)}); "
            f"quantisable operators are {', '.join(sorted(_RULES))}"
        )
    layers = bits.choose(
        model,
        graph,
        roles,
        ranges,
        feeds,
        weights=weights,
        per_channel=per_channel,
        int4_sqnr_db=int4_sqnr_db,
        given=weight_bits,
        int8_depthwise=int8_depthwise,
    )
    for layer in layers:
        logger.info("%s '%s': int%d weights (%s)", layer.op, layer.node, layer.bits, layer.reason)
    # choose() returns one record per weighted op, in graph order (none for int8).
    weighted = [graph.nodes[i].output[0] for i, (role, _) in enumerate(roles) if role == WEIGHTED]
    weight_bits = {out: layer.bits for out, layer in zip(weighted, layers, strict=False)}
    qmodel, tensors = _write_qdq(
        model, graph, roles, ranges, per_channel=per_channel, weight_bits=weight_bits
    )
    onnx.checker.check_model(qmodel, full_check=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(qmodel.SerializeToString(deterministic=True))
    n_quantized = sum(role != FLOAT for role, _ in roles)
    logger.info("quantised %d of %d ops of %s into %s", n_quantized, len(roles), model_path, out_path)
    return QuantizeResult(out_path, len(feeds), n_quantized, tensors, tuple(notes), weights, layers)


def evaluate_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX model at ``model_path`` on samples ``x`` (leading axis) with labels ``y``.

    The model runs sample by sample in ``onnx.reference.ReferenceEvaluator``; its first output is the
    class scores.
    """
    from onnx.reference import ReferenceEvaluator

    model = _load(Path(model_path))
    specs = _input_specs(model)
    if len(specs) != 1:
        raise BadOptionError(f"evaluate_accuracy needs a model with one input; {model_path} has {len(specs)}")
    samples = _samples(specs[0], np.asarray(x), "the samples")
    y = np.asarray(y)
    if y.shape != (len(samples),) or not np.issubdtype(y.dtype, np.integer):
        raise BadOptionError(
            f"the labels must be integers of shape ({len(samples)},) to match the samples; "
            f"got {y.dtype} {y.shape}"
        )
    if opset_of(model) < 14 and any(n.op_type == "BatchNormalization" for n in model.graph.node):
        model = _convert(model, BATCHNORM_FIXED_OPSET)
    evaluator = ReferenceEvaluator(model)
    correct = 0
    for sample, label in zip(samples, y, strict=True):
        outputs = evaluator.run(None, {specs[0].name: sample})
        assert isinstance(outputs, list)  # run(None, ...) returns the outputs as a list
        scores = np.asarray(outputs[0])
        correct += int(int(np.argmax(scores.reshape(-1))) == int(label))
    return correct / len(samples) if samples else 0.0


__all__ = [
    "DEFAULT_INT4_SQNR_DB",
    "WEIGHT_CHOICES",
    "LayerBits",
    "QuantizeResult",
    "TensorQuant",
    "activation_params",
    "evaluate_accuracy",
    "opset_of",
    "quantize_onnx",
    "weight_scales",
]
