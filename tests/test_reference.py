"""The reference oracles: onnxruntime first, onnx.reference beside it; a fallback when one cannot run a
model, and a disagreement between them said rather than blamed on the firmware."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu import api
from tvm_mcu.errors import VerificationError
from tvm_mcu.frontend import load_model
from tvm_mcu.reference import ONNX_REFERENCE, ONNXRUNTIME, run_oracle
from tvm_mcu.report import IoRow


def _write(tmp_path, nodes, inputs, outputs, inits=(), opset=13, name="m"):
    g = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, path)
    return path


def _dq13(tmp_path):
    """DequantizeLinear-13, which onnx.reference (1.23) does not implement."""
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(3), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    return _write(tmp_path, nodes, io, out, inits, name="dq13")


def _softmax11(tmp_path):
    """Softmax-11 on a 4-D tensor (axis 1: over the flattened C, H, W), which onnx.reference gets wrong."""
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1)]
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])]
    return _write(tmp_path, nodes, io, out, opset=11, name="softmax11")


def _rows(model):
    return tuple(IoRow(o.name, o.shape, o.dtype) for o in model.outputs)


def test_an_oracle_that_cannot_run_a_model_gives_its_reason(tmp_path):
    model = load_model(_dq13(tmp_path))
    x = [np.array([[0.3, -0.2, 1.0, 5.0]], np.float32)]
    ref = run_oracle(ONNX_REFERENCE, model, x)
    assert ref.outputs is None and "DequantizeLinear" in (ref.error or "")
    ort = run_oracle(ONNXRUNTIME, model, x)
    assert ort.outputs is not None and ort.error is None
    np.testing.assert_allclose(
        ort.outputs[0], np.maximum(np.rint(x[0] / np.float32(0.1)) * np.float32(0.1), 0), atol=1e-6
    )


def test_disagreeing_references_are_said_not_blamed_on_the_firmware(tmp_path):
    model = load_model(_softmax11(tmp_path))
    x = [np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)]
    ort = run_oracle(ONNXRUNTIME, model, x).outputs
    ref = run_oracle(ONNX_REFERENCE, model, x).outputs
    assert ort is not None and ref is not None
    assert np.abs(ort[0] - ref[0]).max() > 1e-3  # the two oracles really differ on this model
    # A firmware that agrees with onnxruntime: a plain match.
    checked = api.check_against_references(model, x, _rows(model), [ort[0]])
    assert checked.comparison.passed and checked.reference == ONNXRUNTIME and checked.notes == ()
    # One that agrees with onnx.reference only: not blamed, and the disagreement is said.
    checked = api.check_against_references(model, x, _rows(model), [ref[0]])
    assert checked.comparison.passed and checked.reference == ONNX_REFERENCE
    assert "the references disagree" in checked.notes[0] and "onnxruntime differs" in checked.notes[0]
    # One that matches neither: a mismatch against the preferred oracle.
    checked = api.check_against_references(model, x, _rows(model), [ort[0] + 0.1])
    assert not checked.comparison.passed and checked.reference == ONNXRUNTIME


def test_no_oracle_at_all_is_a_clear_error(tmp_path, monkeypatch):
    from tvm_mcu import reference

    model = load_model(_softmax11(tmp_path))
    monkeypatch.setattr(
        reference, "_onnxruntime", lambda m, x: (_ for _ in ()).throw(RuntimeError("no kernel"))
    )
    monkeypatch.setattr(
        reference, "_onnx_reference", lambda m, x: (_ for _ in ()).throw(NotImplementedError("nope"))
    )
    with pytest.raises(
        VerificationError, match=r"no reference interpreter can run softmax11: onnxruntime could not run"
    ):
        api.check_against_references(
            model, [np.zeros((1, 2, 3, 3), np.float32)], _rows(model), [np.zeros((1, 2, 3, 3))]
        )


@pytest.mark.emulator
def test_verify_falls_back_and_says_which_reference_it_used(tmp_path, monkeypatch):
    from tvm_mcu import reference

    path = _softmax11(tmp_path)
    monkeypatch.setattr(
        reference, "_onnxruntime", lambda m, x: (_ for _ in ()).throw(RuntimeError("no kernel"))
    )
    v = api.verify(path, "mps2-an386", tmp_path / "out")
    # onnx.reference is wrong on this model and onnxruntime could not run: the firmware differs from
    # the only oracle left, and the report says why the preferred one was not used.
    assert v.report.reference == ONNX_REFERENCE
    assert any(
        "onnxruntime could not run the model (RuntimeError: no kernel)" in n for n in v.report.reference_notes
    )


def _maxpool_ceil(tmp_path):
    """MaxPool 2x2, stride 1, ceil_mode, one column of end padding, on 11x11: 10x11 out, as ONNX's shape
    inference and onnxruntime have it; onnx.reference (1.23) gives 10x12 (fuzz seed 3148)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1, pads=[0, 0, 0, 1])]
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 11, 11])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 10, 11])]
    return _write(tmp_path, nodes, io, out, name="maxpool_ceil")


def test_an_oracle_giving_other_shapes_is_passed_over_not_raised(tmp_path, monkeypatch):
    """The shape of one oracle's output differing from the firmware's is that oracle's word against the
    others': verify goes on to the next oracle (the fuzzer's seed 3148, a QDQ model onnxruntime checked
    within a step per operator, was reported wrong on onnx.reference's shape)."""
    from tvm_mcu import reference

    model = load_model(_maxpool_ceil(tmp_path))
    x = [np.random.default_rng(0).standard_normal((1, 1, 11, 11)).astype(np.float32)]
    ort = run_oracle(ONNXRUNTIME, model, x).outputs
    ref = run_oracle(ONNX_REFERENCE, model, x).outputs
    assert ort is not None and ref is not None
    assert ort[0].shape == (1, 1, 10, 11) and ref[0].shape == (1, 1, 10, 12)
    checked = api.check_against_references(model, x, _rows(model), [ort[0]])
    assert checked.comparison.passed and checked.reference == ONNXRUNTIME
    # Off by 0.1 from onnxruntime: its mismatch, and onnx.reference's shape said, not raised.
    checked = api.check_against_references(model, x, _rows(model), [ort[0] + 0.1])
    assert not checked.comparison.passed and checked.reference == ONNXRUNTIME
    assert any("onnx.reference's outputs differ from the firmware's in shape" in n for n in checked.notes)
    # With onnx.reference the only oracle that runs, its other shape is the error.
    monkeypatch.setattr(
        reference, "_onnxruntime", lambda m, x: (_ for _ in ()).throw(RuntimeError("no kernel"))
    )
    with pytest.raises(VerificationError, match=r"the reference has shape \[1, 1, 10, 12\]"):
        api.check_against_references(model, x, _rows(model), [ort[0]])
