"""``tvm-mcu quantize --weights int4 | mixed``: int4 weights as INT4 initializers, the per-layer SQNR rule,
determinism, the accuracy on Fashion-MNIST, and the file compiled and verified on the board."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from tvm_mcu import api
from tvm_mcu.cli import main
from tvm_mcu.errors import BadOptionError
from tvm_mcu.ptq import QuantizeResult, quantize_onnx
from tvm_mcu.ptq.calibrate import _calibration_feeds

DEMO = Path(__file__).resolve().parents[1] / "tvm_mcu" / "data" / "demo"
MODEL, CALIBRATION = DEMO / "fashion_cnn.onnx", DEMO / "calibration.npz"
SAMPLES = 64


def _quantize(out: Path, weights: str, **kwargs: float) -> QuantizeResult:
    return quantize_onnx(MODEL, CALIBRATION, out, weights=weights, max_samples=SAMPLES, **kwargs)


@pytest.fixture(scope="module")
def int4(tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    return _quantize(tmp_path_factory.mktemp("int4") / "int4.onnx", "int4")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    return _quantize(tmp_path_factory.mktemp("mixed") / "mixed.onnx", "mixed")


def _weight_dqs(model: onnx.ModelProto) -> dict[str, tuple[onnx.TensorProto, onnx.TensorProto]]:
    """Weight name (the float model's) -> (data, zero point) initializers of its DequantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            data = inits[node.input[0]]
            if data.data_type != TensorProto.INT32:
                out[node.input[0].removesuffix("_quantized")] = (data, inits[node.input[2]])
    return out


def test_int4_weights_are_int4_initializers_per_channel_in_minus7_7(int4: QuantizeResult) -> None:
    model = onnx.load(str(int4.out_path))
    assert [o.version for o in model.opset_import if o.domain == ""] == [21]
    weights = _weight_dqs(model)
    assert len(weights) == 4 and [layer.bits for layer in int4.layers] == [4, 4, 4, 4]
    for name, (data, zero) in weights.items():
        assert data.data_type == zero.data_type == TensorProto.INT4, name
        q = numpy_helper.to_array(data).astype(np.int64)
        assert q.min() >= -7 and q.max() <= 7, name
        # Symmetric per output channel, scale max|w| / 7: every channel reaches +-7.
        per_channel = np.abs(q.reshape(q.shape[0], -1) if name != "13.weight" else q).max(axis=1)
        assert np.all(per_channel == 7), name
        assert not numpy_helper.to_array(zero).any()
        assert int4.tensor(name).dtype == "int4" and len(int4.tensor(name).scale) == q.shape[0]
    assert all(t.dtype == "int8" for t in int4.tensors if t.kind == "activation")


def test_int4_and_mixed_are_deterministic(
    int4: QuantizeResult, mixed: QuantizeResult, tmp_path: Path
) -> None:
    for first, weights in ((int4, "int4"), (mixed, "mixed")):
        again = _quantize(tmp_path / f"{weights}.onnx", weights)
        assert again.out_path.read_bytes() == first.out_path.read_bytes(), weights
        assert again.layers == first.layers


def test_mixed_follows_the_sqnr_rule(mixed: QuantizeResult, int4: QuantizeResult, tmp_path: Path) -> None:
    assert [layer.sqnr_int4_db for layer in mixed.layers] == [layer.sqnr_int4_db for layer in int4.layers]
    for layer in mixed.layers:
        assert layer.bits == (4 if layer.sqnr_int4_db >= 24.0 else 8), layer
        # Four bits fewer: about 24 dB less (6 dB a bit).
        assert 15.0 < layer.sqnr_int8_db - layer.sqnr_int4_db < 35.0, layer
    assert {layer.bits for layer in mixed.layers} == {4, 8}, "the demo's threshold must split its layers"
    # The threshold is the rule: below every layer's SQNR it is --weights int4, byte for byte.
    everywhere = _quantize(tmp_path / "all.onnx", "mixed", int4_sqnr_db=-100.0)
    assert everywhere.out_path.read_bytes() == int4.out_path.read_bytes()
    nowhere = _quantize(tmp_path / "none.onnx", "mixed", int4_sqnr_db=100.0)
    kinds = {d.data_type for d, _ in _weight_dqs(onnx.load(str(nowhere.out_path))).values()}
    assert kinds == {TensorProto.INT8}


def test_the_sqnr_is_the_float_model_with_that_layers_int4_weights(int4: QuantizeResult) -> None:
    """Recomputed independently: the float model with the first conv's weights read back from the int4
    file, its conv output against the float one over the calibration samples."""
    written = onnx.load(str(int4.out_path))
    data, _ = _weight_dqs(written)["onnx::Conv_36"]
    scale = int4.tensor("onnx::Conv_36").scale
    w4 = (numpy_helper.to_array(data).astype(np.float32) * np.float32(scale)[:, None, None, None]).astype(
        np.float32
    )
    float_model = onnx.load(str(MODEL))
    conv = next(n for n in float_model.graph.node if n.input[1] == "onnx::Conv_36")
    float_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(conv.output[0]))
    changed = onnx.ModelProto()
    changed.CopyFrom(float_model)
    for t in changed.graph.initializer:
        if t.name == "onnx::Conv_36":
            t.CopyFrom(numpy_helper.from_array(w4, t.name))
    runs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (float_model, changed)
    ]
    signal = noise = 0.0
    for feed in _calibration_feeds(CALIBRATION, float_model, SAMPLES, []):
        y, y4 = (np.asarray(s.run([conv.output[0]], feed)[0], np.float64) for s in runs)
        signal += float(np.sum(y * y))
        noise += float(np.sum((y - y4) ** 2))
    assert int4.layers[0].weight == "onnx::Conv_36"
    assert int4.layers[0].sqnr_int4_db == pytest.approx(10 * np.log10(signal / noise), abs=0.01)


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return float(
        np.mean([np.argmax(session.run(None, {name: x[i : i + 1]})[0]) == y[i] for i in range(len(y))])
    )


def test_fashion_mnist_accuracy_int8_mixed_int4(
    int4: QuantizeResult, mixed: QuantizeResult, tmp_path: Path
) -> None:
    """On 2,000 test images: mixed stays within a point of int8 and is better than int4 everywhere."""
    from tvm_mcu.train.data import load_dataset

    data = load_dataset("fashion-mnist", (1, 1, 28, 28))
    x, y = data.x_test[:2000], data.y_test[:2000]
    int8 = _quantize(tmp_path / "int8.onnx", "int8")
    acc = {
        name: _accuracy(r.out_path, x, y) for name, r in (("int8", int8), ("mixed", mixed), ("int4", int4))
    }
    assert acc["int8"] > 0.85, acc
    assert acc["mixed"] >= acc["int8"] - 0.01, acc
    assert acc["int4"] < acc["mixed"], acc


def test_bad_weights_choice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadOptionError, match="weights must be one of int8, int4, mixed, got 'int2'"):
        _quantize(tmp_path / "x.onnx", "int2")


def test_cli_prints_the_choice_per_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mixed.onnx"
    args = ["quantize", str(MODEL), "--calibration", str(CALIBRATION), "-o", str(out), "--weights", "mixed"]
    assert main([*args, "--int4-sqnr", "20"]) == 0
    text = capsys.readouterr().out
    assert "weights mixed: per layer" in text
    assert "/0/Conv" in text and "int4 SQNR" in text and ">= 20 dB" in text and "< 20 dB" in text
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [layer["bits"] for layer in report["layers"]] == [4, 8, 8, 8]
    assert report["weights"] == "mixed" and report["int4_sqnr_db"] == 24.0


@pytest.mark.emulator
def test_int4_model_compiles_and_verifies_on_the_board(int4: QuantizeResult, tmp_path: Path) -> None:
    v = api.verify(int4.out_path, "mps2-an385", tmp_path / "out", seed=1)
    r = v.report
    assert v.passed, (r.verdict, r.max_abs_error, r.tolerance, r.reference_notes)
    assert r.reference == "onnxruntime" and r.float_routines == ()
    assert len(np.unique(v.outputs[0])) > 1


@pytest.mark.parametrize("int8_depthwise", [False, True], ids=["depthwise-int4", "depthwise-int8"])
def test_depthwise_weights_are_int4_unless_kept_int8(int8_depthwise: bool, tmp_path: Path) -> None:
    """A MobileNetV2 block (expand 1x1, depthwise 3x3, project 1x1): ``--weights int4`` makes the
    depthwise weights int4 like the others; ``int8_depthwise`` keeps them int8 and says why."""
    from tests.zoo.onnx_models import mobilenet_block

    src = tmp_path / "block.onnx"
    src.write_bytes(mobilenet_block().SerializeToString())
    calib = {"x": np.random.default_rng(0).standard_normal((8, 1, 8, 16, 16)).astype(np.float32)}
    result = quantize_onnx(src, calib, tmp_path / "q.onnx", weights="int4", int8_depthwise=int8_depthwise)
    assert [layer.op for layer in result.layers] == ["Conv"] * 3
    bits = [layer.bits for layer in result.layers]
    assert bits == ([4, 8, 4] if int8_depthwise else [4, 4, 4]), result.layers
    if int8_depthwise:
        assert "depthwise" in result.layers[1].reason


def test_int8_depthwise_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(BadOptionError, match="int8_depthwise"):
        _quantize(tmp_path / "q.onnx", "int4", int8_depthwise="yes")  # type: ignore[arg-type]
