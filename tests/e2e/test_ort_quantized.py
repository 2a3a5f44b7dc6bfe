"""Models quantised by ONNX Runtime's own quantize_static compile integer-only and match onnxruntime.

The way most ONNX users make an int8 model: QDQ format, per-channel weights, int8 or (ORT's default)
uint8 activations, and ORT's QOperator format. On the FPU-less Cortex-M3 (mps2-an385) the firmware
must link no floating-point routine; the outputs must be within one quantisation step of onnxruntime
(or, where later layers amplify a rounding tie, every operator within a step: see tvm_mcu.qdq_check);
a uint8 model keeps its uint8 interface. With 4-bit weights (QInt4, QUInt4 with zero point 8) ONNX Runtime
writes its ``com.microsoft`` Q/DQ below opset 21: both oracles must run the file as written.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.zoo.ort_quantized import FLOAT_MODELS, ort_quantize
from tvm_mcu import api, reference
from tvm_mcu.frontend import load_model

CASES = [(name, act, "QDQ") for name in FLOAT_MODELS for act in ("int8", "uint8")] + [
    ("mobilenetv2_clip", "uint8", "QOperator"),
    ("resnet_concat_softmax", "int8", "QOperator"),
]


@pytest.mark.emulator
@pytest.mark.parametrize(("name", "act", "fmt"), CASES, ids=[f"{n}-{a}-{f}" for n, a, f in CASES])
def test_ort_quantized_model_is_integer_only_and_matches_onnxruntime(name, act, fmt, tmp_path):
    path = ort_quantize(FLOAT_MODELS[name](), tmp_path / f"{name}_{act}_{fmt}.onnx", activations=act, fmt=fmt)
    v = api.verify(path, "mps2-an385", tmp_path / "out", seed=3)
    r = v.report
    assert v.passed, (
        f"{name}: {r.verdict}, max error {r.max_abs_error} (tolerance {r.tolerance}); {r.reference_notes}"
    )
    assert r.reference == "onnxruntime"
    assert r.float_ops == () and r.float_routines == (), (r.float_ops, r.float_routines)
    assert [io.dtype for io in (*r.inputs, *r.outputs)] == [act] * (len(r.inputs) + len(r.outputs))
    assert all(io.scale is not None for io in (*r.inputs, *r.outputs))
    # The outputs are integers the caller dequantises: they must not be constant (a dead network).
    assert len(np.unique(v.outputs[0])) > 1


INT4_CASES = [("demo", "int8", "int4"), ("resnet_concat_softmax", "uint8", "uint4")]


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("name", "act", "weights"), INT4_CASES, ids=[f"{n}-{a}-{w}" for n, a, w in INT4_CASES]
)
def test_ort_4bit_weight_model_matches_both_oracles(name, act, weights, tmp_path):
    import onnx

    path = ort_quantize(
        FLOAT_MODELS[name](), tmp_path / f"{name}_{weights}.onnx", activations=act, weights=weights
    )
    proto = onnx.load(path)
    four_bit = [
        t for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    ]
    assert four_bit and all(t.dims[0] > 1 for t in four_bit)
    assert {n.domain for n in proto.graph.node if n.op_type == "DequantizeLinear"} == {"com.microsoft"}
    model = load_model(path)
    inputs = api.model_inputs(model, input_path=None, seed=3)
    runtime = reference.run_oracle(reference.ONNXRUNTIME, model, inputs)
    evaluator = reference.run_oracle(reference.ONNX_REFERENCE, model, inputs)
    assert runtime.ran and evaluator.ran, (runtime.error, evaluator.error)
    np.testing.assert_allclose(evaluator.outputs[0], runtime.outputs[0], atol=1e-6)
    v = api.verify(path, "mps2-an385", tmp_path / "out", seed=3)
    r = v.report
    assert v.passed, f"{name}: {r.verdict}, max error {r.max_abs_error} (tolerance {r.tolerance})"
    assert r.reference == "onnxruntime"
    assert r.float_ops == () and r.float_routines == (), (r.float_ops, r.float_routines)
    assert [io.dtype for io in (*r.inputs, *r.outputs)] == [act] * (len(r.inputs) + len(r.outputs))
    assert len(np.unique(v.outputs[0])) > 1
    # The 4-bit weights are stored two per byte: QUInt4's too, whose zero point 8 the lowering takes out.
    assert r.int4_weight_ops, f"{name}: no layer's weights were packed"
