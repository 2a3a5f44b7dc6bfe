"""The int8 variants of a fuzz model: tvm-mcu's own PTQ and onnxruntime's ``quantize_static``.

A variant names how the float model becomes the model the compiler sees:

- ``float``: the float model itself;
- ``tvm-mcu``: ``tvm_mcu.ptq.quantize_onnx`` (what ``tvm-mcu quantize`` runs): QDQ, int8 activations;
- ``ort-s8`` / ``ort-u8``: onnxruntime's ``quantize_static``, QDQ format, int8 weights per channel,
  int8 (QInt8) or uint8 (QUInt8) activations;
- ``ort-s4`` / ``ort-u4``: ``quantize_static``, QDQ, int4 (QInt4) or uint4 (QUInt4, zero point 8)
  weights per channel, int8 or uint8 activations: the packed int4 kernels on models from outside
  (onnxruntime makes Conv and Gemm weights int4, MatMul's stay 8-bit; below opset 21 it writes
  ``com.microsoft`` Q/DQ);
- ``ort-s2``: ``ort-s8``'s model with every Conv/Gemm/MatMul weight requantised to int2 (``INT2``
  initializers, values in [-2, 1], 64 times the scale; the model converted to opset 25): no quantiser
  writes int2, so this one exercises the crumb kernels on random models (accuracy is not the point:
  the oracle runs the same int2 model);
- ``ort-qop-u8``: ``quantize_static`` in QOperator format (QLinearConv, QLinearMatMul...), uint8
  activations: an optional variant, another import dialect;
- ``prune``: the float model through ``tvm-mcu prune`` (L1 norms, no training, float figures) to 80 % of
  its compiled SRAM; the pruned model is the one verified (``run.execute``).

Calibration data is seeded (``np.random.default_rng([seed, 1])``), standard normal like the inputs that
``verify`` draws, so the calibrated ranges suit the inputs the model is checked with. Whatever a quantiser
raises propagates: the runner classifies it as "quantizer failed", not as a compiler failure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

FLOAT = "float"
TVM_MCU = "tvm-mcu"
ORT_S8 = "ort-s8"
ORT_U8 = "ort-u8"
ORT_QOP_U8 = "ort-qop-u8"
ORT_S4 = "ort-s4"
ORT_U4 = "ort-u4"
ORT_S2 = "ort-s2"
PRUNE = "prune"
VARIANTS = (FLOAT, TVM_MCU, ORT_S8, ORT_U8, ORT_QOP_U8, ORT_S4, ORT_U4, ORT_S2, PRUNE)
# Variants with int8 (or uint8) activations (run.int8_variants_for: which ones a seed takes).
INT8_VARIANTS = (TVM_MCU, ORT_S8, ORT_U8, ORT_QOP_U8, ORT_S4, ORT_U4, ORT_S2)
_ORT = {
    # variant: (activation type, weight type) names of onnxruntime.quantization.QuantType
    ORT_S8: ("QInt8", "QInt8"),
    ORT_U8: ("QUInt8", "QInt8"),
    ORT_QOP_U8: ("QUInt8", "QInt8"),
    ORT_S4: ("QInt8", "QInt4"),
    ORT_U4: ("QUInt8", "QUInt4"),
}
# Enough samples to calibrate ranges that cover most of a standard-normal input's outputs, few enough
# that calibration takes well under a second on these small models.
CALIBRATION_SAMPLES = 16


def input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The static shape of every graph input that is not an initializer."""
    inits = {t.name for t in model.graph.initializer}
    return {
        i.name: tuple(int(d.dim_value) for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
        if i.name not in inits
    }


def calibration_data(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """``CALIBRATION_SAMPLES`` seeded standard-normal samples per input, shape ``(N, *shape[1:])``."""
    rng = np.random.default_rng([seed, 1])
    return {
        name: rng.standard_normal((CALIBRATION_SAMPLES, *shape[1:])).astype(np.float32)
        for name, shape in input_shapes(model).items()
    }


def quantize(float_path: Path, variant: str, seed: int, out_path: Path) -> Path:
    """Write the ``variant`` of the float model at ``float_path`` to ``out_path`` (the float model itself
    for ``float``) and return the path the compiler should read."""
    if variant in (FLOAT, PRUNE):
        return Path(float_path)
    model = onnx.load(str(float_path))
    calibration = calibration_data(model, seed)
    if variant == TVM_MCU:
        from tvm_mcu.ptq import quantize_onnx

        quantize_onnx(Path(float_path), calibration, Path(out_path))
        return Path(out_path)
    if variant in _ORT:
        _ort_quantize(Path(float_path), calibration, Path(out_path), variant)
        return Path(out_path)
    if variant == ORT_S2:
        _ort_quantize(Path(float_path), calibration, Path(out_path), ORT_S8)
        onnx.save(to_int2(onnx.load(str(out_path))), str(out_path))
        return Path(out_path)
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def _ort_quantize(float_path: Path, calibration: dict[str, np.ndarray], out_path: Path, variant: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        """One feed per calibration sample (batch 1), in order."""

        def __init__(self) -> None:
            self._samples = iter(
                [{k: v[n : n + 1] for k, v in calibration.items()} for n in range(CALIBRATION_SAMPLES)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._samples, None)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # quantize_static logs advice (pre-processing, opset upgrades) at WARNING on every call.
    ort_logger = logging.getLogger("root")
    level = ort_logger.level
    ort_logger.setLevel(logging.ERROR)
    try:
        quantize_static(
            _flat_gemm_biases(onnx.load(str(float_path))),
            out_path,
            _Reader(),
            quant_format=QuantFormat.QOperator if variant == ORT_QOP_U8 else QuantFormat.QDQ,
            per_channel=True,
            activation_type=getattr(QuantType, _ORT[variant][0]),
            weight_type=getattr(QuantType, _ORT[variant][1]),
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        ort_logger.setLevel(level)
    check_quantized(onnx.load(str(out_path)))


# int8 weight values divided by this are int2's (then clipped to [-2, 1]); the scale is multiplied by it.
INT2_STEP = 64
INT2_OPSET = 25


def to_int2(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ, int8 weights) with the int8 weight of every DequantizeLinear that feeds a Conv, Gemm
    or MatMul requantised to int2: ``clip(round(q / INT2_STEP), -2, 1)``, its scales times INT2_STEP, an
    INT2 zero point of 0 (the int8 one must be 0); the model converted to opset 25 first (int2 types).
    ValueError when there is no such weight."""
    from onnx import TensorProto, helper, numpy_helper, version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    out = version_converter.convert_version(model, INT2_OPSET) if opset < INT2_OPSET else model
    dense = ("Conv", "Gemm", "MatMul")
    consumers = {n for node in out.graph.node if node.op_type in dense for n in node.input}
    inits = {t.name: k for k, t in enumerate(out.graph.initializer)}
    done = 0
    for node in out.graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] not in consumers:
            continue
        q = out.graph.initializer[inits[node.input[0]]] if node.input[0] in inits else None
        if q is None or q.data_type != TensorProto.INT8 or len(q.dims) < 2:
            continue
        values = numpy_helper.to_array(q).astype(np.int64)
        crumbs = np.clip(np.rint(values / INT2_STEP), -2, 1).astype(np.int64)
        out.graph.initializer[inits[q.name]].CopyFrom(
            helper.make_tensor(q.name, TensorProto.INT2, values.shape, crumbs.reshape(-1).tolist())
        )
        scale = out.graph.initializer[inits[node.input[1]]]
        scaled = (numpy_helper.to_array(scale).astype(np.float32) * INT2_STEP).astype(np.float32)
        out.graph.initializer[inits[scale.name]].CopyFrom(numpy_helper.from_array(scaled, scale.name))
        if len(node.input) > 2 and node.input[2]:
            zp = out.graph.initializer[inits[node.input[2]]]
            if np.any(numpy_helper.to_array(zp)):
                raise ValueError(f"weight '{q.name}' has a non-zero zero point")
            out.graph.initializer[inits[zp.name]].CopyFrom(
                helper.make_tensor(zp.name, TensorProto.INT2, list(zp.dims), [0] * int(np.prod(zp.dims)))
            )
        done += 1
    if not done:
        raise ValueError("no int8 Conv/Gemm/MatMul weight to requantise to int2")
    return out


def _flat_gemm_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every (1, N) Gemm bias initializer stored as (N,) (the same Gemm).

    onnxruntime 1.32's quantiser treats a Gemm bias as 1-D: with a (1, N) bias (valid ONNX, which the
    generator draws) its QDQ weight-scale adjustment raises "truth value of an array ... is ambiguous",
    QOperator's does too, and with that adjustment disabled it writes a per-channel DequantizeLinear
    of the (1, N) bias on axis 0 with N scales (invalid). Flattening the bias keeps the dense heads in
    the onnxruntime variants; the tvm-mcu variant still gets the (1, N) form.
    """
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    biases = {n.input[2] for n in out.graph.node if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]}
    for k, t in enumerate(out.graph.initializer):
        if t.name in biases and len(t.dims) == 2 and t.dims[0] == 1:
            out.graph.initializer[k].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(t).reshape(-1), t.name)
            )
    return out


def check_quantized(model: onnx.ModelProto) -> None:
    """Raise ValueError when a per-axis QuantizeLinear / DequantizeLinear of a constant has as many scales
    as its axis has elements: ``onnx.checker`` does not look, and the model would be invalid."""
    from onnx import helper

    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[0] not in dims:
            continue
        scales = dims.get(node.input[1], ())
        if len(scales) != 1 or scales[0] == 1:
            continue  # per tensor
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        shape = dims[node.input[0]]
        if shape[axis] != scales[0]:
            raise ValueError(
                f"the quantiser wrote {node.op_type} '{node.name}' with {scales[0]} scales on axis {axis} "
                f"of '{node.input[0]}' {list(shape)}"
            )
