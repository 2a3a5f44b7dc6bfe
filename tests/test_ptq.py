"""Post-training quantisation to QDQ ONNX: the demo model keeps its accuracy, the layout follows the int8
conventions (per-channel int8 weights, int32 biases, fused activations), output is deterministic, and bad
calibration data fails with one clear error.

Fast (no TVM, no emulator): everything runs in ``onnx.reference``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tvm_mcu.errors import BadOptionError, UnsupportedOpError
from tvm_mcu.ptq import QuantizeResult, evaluate_accuracy, quantize_onnx

DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo"))
MODEL, CALIBRATION, SAMPLES = DEMO / "fashion_cnn.onnx", DEMO / "calibration.npz", DEMO / "samples.npz"
# Quantised logits stay within this absolute error of the float ones on the 16 demo samples: about 9
# steps of the output scale (~0.11), for logits up to ~18 in magnitude. Measured: 0.79.
DEMO_LOGIT_ATOL = 1.0


def _outputs(path: Path, name: str, xs: np.ndarray) -> np.ndarray:
    """The first output of the model at ``path`` for each sample of ``xs`` (run with batch 1)."""
    evaluator = ReferenceEvaluator(str(path))
    outs = []
    for x in xs:
        result = evaluator.run(None, {name: x[None]})
        assert isinstance(result, list)
        outs.append(np.asarray(result[0]))
    return np.stack(outs)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if name in n.output)


@pytest.fixture(scope="module")
def demo_q(tmp_path_factory: pytest.TempPathFactory) -> tuple[QuantizeResult, onnx.ModelProto]:
    out = tmp_path_factory.mktemp("ptq") / "fashion_cnn_int8.onnx"
    result = quantize_onnx(MODEL, CALIBRATION, out)
    return result, onnx.load(str(out))


def test_calibration_file_is_the_first_200_training_images() -> None:
    data = np.load(CALIBRATION)
    assert data.files == ["input"]
    x = data["input"]
    assert x.shape == (200, 1, 28, 28) and x.dtype == np.float32
    # Normalised pixels: (0 / 255 - 0.286) / 0.353 is the background value, 1 / 0.353 - 0.81 the maximum.
    assert np.isclose(x.min(), -0.286 / 0.353) and x.max() <= (1 - 0.286) / 0.353 + 1e-6
    assert CALIBRATION.stat().st_size < 700_000


def test_demo_quantises_to_a_valid_qdq_model(demo_q: tuple[QuantizeResult, onnx.ModelProto]) -> None:
    result, model = demo_q
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain == "")
    assert opset >= 13
    assert result.n_calibration_samples == 200
    assert result.quantized_ops == 11  # every node of the float model
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    # Input and output stay float with their names; the first node quantises the input, the last
    # dequantises the logits.
    assert model.graph.node[0].op_type == "QuantizeLinear" and model.graph.node[0].input[0] == "input"
    assert model.graph.node[-1].op_type == "DequantizeLinear" and model.graph.node[-1].output[0] == "logits"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # Every compute op reads a dequantised tensor, except the Relu fused with the Conv before it.
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            source = _producer(model, node.input[0]).op_type
            assert source == ("Conv" if node.name == "/10/Relu" else "DequantizeLinear"), node.name


def test_demo_accuracy_and_outputs_stay_close_to_float(
    demo_q: tuple[QuantizeResult, onnx.ModelProto],
) -> None:
    result, _ = demo_q
    samples = np.load(SAMPLES)
    x, y = samples["x"], samples["y"]
    float_acc = evaluate_accuracy(MODEL, x, y)
    int8_acc = evaluate_accuracy(result.out_path, x, y)
    assert abs(int8_acc - float_acc) * len(y) <= 1, (float_acc, int8_acc)
    diff = float(np.max(np.abs(_outputs(result.out_path, "input", x) - _outputs(MODEL, "input", x))))
    assert diff <= DEMO_LOGIT_ATOL, f"max |int8 - float| logit difference {diff:.3f}"


def test_demo_weights_are_int8_per_channel_and_biases_int32(
    demo_q: tuple[QuantizeResult, onnx.ModelProto],
) -> None:
    result, model = demo_q
    inits = _inits(model)
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        x_dq, w_dq, b_dq = (_producer(model, name) for name in node.input)
        w_q, w_scale, w_zp = (inits[name] for name in w_dq.input)
        assert w_q.dtype == np.int8 and np.abs(w_q.astype(int)).max() == 127
        assert w_scale.shape == (w_q.shape[0],) and w_zp.dtype == np.int8 and not w_zp.any()
        assert helper.get_attribute_value(w_dq.attribute[0]) == 0  # axis 0: OIHW, and Gemm with transB=1
        b_q, b_scale, b_zp = (inits[name] for name in b_dq.input)
        assert b_q.dtype == np.int32 and b_zp.dtype == np.int32 and not b_zp.any()
        s_in = inits[x_dq.input[1]]
        np.testing.assert_array_equal(b_scale, (s_in.astype(np.float64) * w_scale).astype(np.float32))
    weights = [t for t in result.tensors if t.kind == "weight"]
    assert len(weights) == 4 and all(t.axis == 0 and set(t.zero_point) == {0} for t in weights)


def test_demo_layout_fuses_relu_and_shares_scales(demo_q: tuple[QuantizeResult, onnx.ModelProto]) -> None:
    result, model = demo_q
    # conv3 -> relu is fused: no Q/DQ between them, one pair after the Relu with its [0, max] range.
    relu = next(
        n for n in model.graph.node if n.op_type == "Relu" and _producer(model, n.input[0]).op_type == "Conv"
    )
    fused = result.tensor(relu.output[0])
    assert fused.zero_point == (-128,) and "fused" in fused.rule
    # MaxPool and Flatten reuse their input's scale and zero point initializers.
    for node in (n for n in model.graph.node if n.op_type in ("MaxPool", "Flatten")):
        q_out = next(
            n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0]
        )
        assert q_out.input[1:] == _producer(model, node.input[0]).input[1:]
    # Activations: asymmetric int8 from the calibrated range widened to include 0.
    first = result.tensor("input")
    lo, hi = first.calibrated_range or (0.0, 0.0)
    assert first.scale[0] == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert first.zero_point[0] == round(-128 - lo / first.scale[0])


def test_quantisation_is_deterministic(
    demo_q: tuple[QuantizeResult, onnx.ModelProto], tmp_path: Path
) -> None:
    result, _ = demo_q
    again = quantize_onnx(MODEL, CALIBRATION, tmp_path / "again.onnx")
    assert again.out_path.read_bytes() == result.out_path.read_bytes()
    assert again.tensors == result.tensors


def test_per_tensor_weights(tmp_path: Path) -> None:
    out = tmp_path / "per_tensor.onnx"
    result = quantize_onnx(MODEL, CALIBRATION, out, per_channel=False, max_samples=8)
    model = onnx.load(str(out))
    assert result.n_calibration_samples == 8
    assert "calibrated on the first 8 of 200 samples" in result.notes
    for t in (t for t in result.tensors if t.kind in ("weight", "bias")):
        assert len(t.scale) == 1 and t.axis is None
    assert not any(
        a.name == "axis" for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
    )


# ------------------------------------------------------------------------------------------- residual model
def _residual_model(rng: np.random.Generator) -> onnx.ModelProto:
    """1x3x12x12: conv+BN+relu, a residual Add (one branch shifted by a constant Add), a Concat with a
    float-only Exp branch, max-pool, GAP, MatMul+Relu (axis 1), Gemm transB=0 alpha 0.5, Softmax."""

    def init(name: str, *shape: int, scale: float = 0.3) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", 8, 3, 3, 3), init("b1", 8),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"), init("beta", 8),
        init("mean", 8), numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "var"),
        init("w2", 8, 8, 3, 3, scale=0.1), init("b2", 8), init("shift", 1, 8, 1, 1),
        init("w3", 4, 8, 1, 1), init("mm", 12, 6), init("fc", 6, 5), init("fc_b", 5),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"]),
        helper.make_node("Relu", ["bn1"], ["a"]),
        helper.make_node("Conv", ["a", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "shift"], ["c2s"]),
        helper.make_node("Add", ["a", "c2s"], ["res"]),
        helper.make_node("Relu", ["res"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["c3"]),
        helper.make_node("Exp", ["c3"], ["t"]),
        helper.make_node("Concat", ["r", "t"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "mm"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "fc", "fc_b"], ["logits"], alpha=0.5),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def residual(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, QuantizeResult]:
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("residual")
    path = base / "residual.onnx"
    onnx.save(_residual_model(rng), str(path))
    xs = rng.standard_normal((32, 3, 12, 12)).astype(np.float32)
    return path, xs, quantize_onnx(path, {"x": xs}, base / "residual_int8.onnx")


def test_residual_add_and_concat_quantise_and_run(residual: tuple[Path, np.ndarray, QuantizeResult]) -> None:
    path, xs, result = residual
    model = onnx.load(str(result.out_path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert "folded 1 BatchNormalization node(s) into the preceding Conv" in result.notes
    assert any("Exp" in note and "stays float" in note for note in result.notes)
    assert result.quantized_ops == 15  # all but BatchNormalization (folded away) and Exp
    # Add and Concat read the DQ of each input's own quantised tensor (the constant shift included).
    for node in (n for n in model.graph.node if n.op_type in ("Add", "Concat")):
        assert all(_producer(model, i).op_type == "DequantizeLinear" for i in node.input)
    assert result.tensor("shift").kind == "constant"
    # The float-only Exp reads a DQ and its result is quantised again before Concat.
    exp = next(n for n in model.graph.node if n.op_type == "Exp")
    assert _producer(model, exp.input[0]).op_type == "DequantizeLinear"
    assert result.tensor("t").rule == "calibrated"
    # Weight axes: MatMul B is (K, N) -> axis 1; Gemm with transB=0 -> axis 1; Softmax output fixed.
    assert result.tensor("mm").axis == 1 and result.tensor("fc").axis == 1
    assert result.tensor("probs").scale == (1 / 256,) and result.tensor("probs").zero_point == (-128,)
    assert "fused" in result.tensor("hr").rule
    # Probabilities quantised with scale 1/256: a few steps of error through the whole network.
    np.testing.assert_allclose(_outputs(result.out_path, "x", xs[:8]), _outputs(path, "x", xs[:8]), atol=0.05)


def test_positional_calibration_arrays_give_the_same_model(
    residual: tuple[Path, np.ndarray, QuantizeResult], tmp_path: Path
) -> None:
    path, xs, result = residual
    calib = tmp_path / "calib.npz"
    np.savez(calib, xs[:, None])  # arr_0, with the batch axis of 1 kept
    again = quantize_onnx(path, calib, tmp_path / "again.onnx")
    assert again.out_path.read_bytes() == result.out_path.read_bytes()


# ------------------------------------------------------------------------------------------- declines
def _out(name: str, size: int = 6, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [1, 4, size, size])


def _conv_then(
    tmp_path: Path, tail: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto]
) -> QuantizeResult:
    """x (1x2x6x6) -> Conv 'c' (1x4x6x6) -> ``tail``, quantised with 8 seeded samples."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0.0), ("four", 4.0))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *tail],
        "decline",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        outputs,
        initializer=[w, *consts],
    )
    path = tmp_path / "decline.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    calib = {"x": rng.standard_normal((8, 2, 6, 6)).astype(np.float32)}
    result = quantize_onnx(path, calib, tmp_path / "decline_int8.onnx")
    onnx.checker.check_model(onnx.load(str(result.out_path)), full_check=True)
    return result


def test_no_fusion_when_the_conv_output_is_also_a_graph_output(tmp_path: Path) -> None:
    result = _conv_then(tmp_path, [helper.make_node("Relu", ["c"], ["y"])], [_out("c"), _out("y")])
    assert result.tensor("c").rule == "calibrated"
    assert result.tensor("y").rule == "calibrated"  # own range, not fused


def test_no_fusion_for_clip_other_than_0_6(tmp_path: Path) -> None:
    result = _conv_then(tmp_path, [helper.make_node("Clip", ["c", "zero", "four"], ["y"])], [_out("y")])
    assert result.tensor("c").rule == "calibrated" and result.tensor("y").rule == "calibrated"


def test_maxpool_with_indices_stays_float(tmp_path: Path) -> None:
    tail = [helper.make_node("MaxPool", ["c"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2])]
    result = _conv_then(tmp_path, tail, [_out("y", 3), _out("idx", 3, TensorProto.INT64)])
    assert "MaxPool node 'y' stays float: its Indices output is used" in result.notes
    assert result.quantized_ops == 1 and result.tensor("c").rule == "calibrated"


# ------------------------------------------------------------------------------------------- errors
def _bad_calibration(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    good = np.zeros((4, 1, 28, 28), np.float32)
    if kind == "wrong shape":
        np.savez(path, input=np.zeros((4, 28, 28), np.float32))
    elif kind == "missing input":
        np.savez(path, image=good)
    elif kind == "not an npz":
        path.write_text("pixel values, one per line\n")
    elif kind == "npy":
        np.save(tmp_path / "calib.npy", good)
        path = tmp_path / "calib.npy"
    elif kind == "integer pixels":
        np.savez(path, input=good.astype(np.uint8))
    elif kind == "no samples":
        np.savez(path, input=good[:0])
    elif kind == "missing file":
        path = tmp_path / "nowhere.npz"
    return path


BAD_CALIBRATION = {
    "wrong shape": r"'input' has shape \(4, 28, 28\); expected \(N, 1, 28, 28\)",
    "missing input": r"has arrays \['image'\] but the model's inputs are \['input'\]",
    "not an npz": r"not a readable \.npz archive",
    "npy": r"single \.npy array, not an \.npz archive",
    "integer pixels": r"is uint8 but input 'input' is float32",
    "no samples": r"no samples",
    "missing file": r"does not exist",
}


@pytest.mark.parametrize("kind", list(BAD_CALIBRATION), ids=list(BAD_CALIBRATION))
def test_bad_calibration_is_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(BadOptionError, match=BAD_CALIBRATION[kind]):
        quantize_onnx(MODEL, _bad_calibration(kind, tmp_path), tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_bad_max_samples_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadOptionError, match="max_samples must be a positive integer, got 0"):
        quantize_onnx(MODEL, CALIBRATION, tmp_path / "out.onnx", max_samples=0)


def test_model_without_quantisable_op_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Exp", ["x"], ["y"])],
        "exp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "exp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    calib = {"x": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}
    with pytest.raises(UnsupportedOpError, match="no operator that can be quantised .it has Exp."):
        quantize_onnx(path, calib, tmp_path / "out.onnx")


def test_evaluate_accuracy_refuses_mismatched_labels() -> None:
    samples = np.load(SAMPLES)
    with pytest.raises(BadOptionError, match=r"labels must be integers of shape \(16,\)"):
        evaluate_accuracy(MODEL, samples["x"], samples["y"][:3])
