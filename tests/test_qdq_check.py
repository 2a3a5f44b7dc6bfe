"""tvm_mcu.qdq_check: a QDQ model checked operator by operator against onnxruntime, and composed.

Verify accepts a QDQ model whose outputs are more than a step off only when every quantised operator,
fed onnxruntime's integers, is within a step of onnxruntime, and the firmware computes exactly what
those operators compute run one after another. These tests break each half on purpose.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.zoo.ort_quantized import FLOAT_MODELS, ort_quantize
from tests.zoo.qdq_ops import QDQ_OPS
from tvm_mcu import api, qdq_check
from tvm_mcu.frontend import load_model
from tvm_mcu.passes.relax.integer import emit
from tvm_mcu.passes.relax.integer.values import QType


def _feeds(model_path, seed=3):
    model = load_model(model_path)
    inputs = api.model_inputs(model, input_path=None, seed=seed)
    return model, inputs, {s.name: x for s, x in zip(model.inputs, inputs, strict=True)}


@pytest.fixture(scope="module")
def odd_u8(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qdq_check")
    return ort_quantize(FLOAT_MODELS["odd_cnn"](), directory / "odd_u8.onnx", activations="uint8")


def test_every_operator_of_an_ort_model_is_within_a_step_and_named(odd_u8, tmp_path):
    model, _, feeds = _feeds(odd_u8)
    segments = qdq_check.check_segments(model.data, feeds, workdir=tmp_path)
    labels = [s.label for s in segments.checks]
    assert any(label.startswith("Conv") for label in labels) and any("AveragePool" in la for la in labels)
    assert all(s.steps <= 1 and not s.skipped for s in segments.checks), segments.checks
    # Every output is a quantised tensor tvm-mcu's own operators computed.
    assert all(name in segments.own for name in segments.outputs)


def test_an_operator_computed_wrongly_is_named_with_its_steps(tmp_path, monkeypatch):
    path = tmp_path / "avgpool.onnx"
    path.write_bytes(QDQ_OPS["avgpool_exclude_pad"]("int8").SerializeToString())
    real = emit.EMITTERS["avg_pool2d"]

    def off_by_three(bb, p, out, rounding):
        return real(bb, p, QType(out.scale, out.zero_point + 3, out.dtype), rounding)

    monkeypatch.setitem(emit.EMITTERS, "avg_pool2d", off_by_three)
    proto = onnx.load(path)
    feeds = {
        proto.graph.input[0].name: np.random.default_rng(0).integers(-128, 128, (1, 3, 7, 6)).astype(np.int8)
    }
    (check,) = qdq_check.check_segments(path.read_bytes(), feeds, workdir=tmp_path / "w").checks
    assert check.label.startswith("AveragePool") and check.steps == 3


def _verdict(model, inputs, outputs, tmp_path):
    rows = tuple(
        api.IoRow(o.name, o.shape, "uint8", scale=s, zero_point=z)
        for o, (s, z) in zip(model.outputs, _output_params(model), strict=True)
    )
    checked = api.check_against_references(model, inputs, rows, outputs)
    return api._per_operator(model, inputs, checked, tmp_path / "per_op", rows, outputs)


def _output_params(model):
    proto = onnx.load_from_string(model.data)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    by_output = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    params = []
    for o in proto.graph.output:
        dq = by_output[o.name]
        params.append((float(inits[dq.input[1]]), int(inits[dq.input[2]])))
    return params


def test_amplified_rounding_is_accepted_and_a_composition_fault_is_not(odd_u8, tmp_path):
    # Seed 0: a rounding tie in the average pool, amplified by the sigmoid, puts the output two steps
    # off onnxruntime (every operator alone is within one).
    model, inputs, feeds = _feeds(odd_u8, seed=0)
    segments = qdq_check.check_segments(model.data, feeds, workdir=tmp_path / "s")
    composed = [segments.own[name].copy() for name in segments.outputs]
    accepted = _verdict(model, inputs, composed, tmp_path / "a")
    assert accepted.comparison.error > accepted.comparison.tolerance  # really more than a step off
    assert accepted.comparison.passed and accepted.comparison.per_operator, accepted.notes
    assert "amplified by later layers" in accepted.notes[-1]
    # A firmware one step away from its own operators' composition (a memory-plan fault, say): refused.
    faulty = [c.copy() for c in composed]
    flat = faulty[0].reshape(-1)
    flat[1] = flat[1] + 1 if flat[1] < 255 else flat[1] - 1
    refused = _verdict(model, inputs, faulty, tmp_path / "b")
    assert not refused.comparison.passed and "composes them" in refused.notes[-1]
