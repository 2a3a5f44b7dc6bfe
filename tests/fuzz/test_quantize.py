"""The int8 variants: each quantiser gives a valid QDQ model from a fuzz model, deterministically, with
int8 or uint8 activations as its variant says; calibration data is seeded.

Fast: no TVM, no emulator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from tvm_mcu.fuzz import random_cnn
from tvm_mcu.fuzz.quantize import CALIBRATION_SAMPLES, FLOAT, calibration_data, quantize

SEED = 4


@pytest.fixture(scope="module")
def float_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("float") / "model.onnx"
    path.write_bytes(random_cnn(SEED).SerializeToString(deterministic=True))
    return path


def _activation_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the zero points of QuantizeLinear nodes (the activations' integer type)."""
    inits = {t.name: t for t in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize(
    ("variant", "activation"),
    [("tvm-mcu", TensorProto.INT8), ("ort-s8", TensorProto.INT8), ("ort-u8", TensorProto.UINT8)],
)
def test_quantisers_give_deterministic_qdq_models(
    float_path: Path, tmp_path: Path, variant: str, activation: int
) -> None:
    a = quantize(float_path, variant, SEED, tmp_path / "a.onnx")
    b = quantize(float_path, variant, SEED, tmp_path / "b.onnx")
    model = onnx.load(str(a))
    onnx.checker.check_model(model, full_check=True)
    assert _activation_types(model) == {activation}
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert weights and any(w.ndim == 4 for w in weights)  # conv weights stored as int8
    assert onnx.load(str(b)).SerializeToString(deterministic=True) == model.SerializeToString(
        deterministic=True
    )


def test_float_variant_is_the_model_itself(float_path: Path, tmp_path: Path) -> None:
    assert quantize(float_path, FLOAT, SEED, tmp_path / "unused.onnx") == float_path
    assert not (tmp_path / "unused.onnx").exists()


def test_calibration_data_is_seeded_and_shaped() -> None:
    model = random_cnn(SEED)
    a, b, c = calibration_data(model, 1), calibration_data(model, 1), calibration_data(model, 2)
    (name, data), *_ = a.items()
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    assert data.shape == (CALIBRATION_SAMPLES, *shape[1:]) and data.dtype == np.float32
    assert np.array_equal(data, b[name]) and not np.array_equal(data, c[name])


def _has_2d_gemm_bias(model: onnx.ModelProto) -> bool:
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return any(
        n.op_type == "Gemm" and len(n.input) > 2 and len(dims.get(n.input[2], ())) == 2
        for n in model.graph.node
    )


@pytest.mark.parametrize("variant", ["ort-s8", "ort-qop-u8"])
def test_onnxruntime_quantises_a_two_dimensional_gemm_bias(tmp_path: Path, variant: str) -> None:
    """onnxruntime 1.32 fails on (1, N) Gemm biases (or, QDQ with its bias adjustment off, writes an
    invalid per-channel DequantizeLinear): the variant hands it the same bias as (N,)."""
    seed = next(s for s in range(100) if _has_2d_gemm_bias(random_cnn(s)))
    path = tmp_path / "model.onnx"
    path.write_bytes(random_cnn(seed).SerializeToString(deterministic=True))
    out = quantize(path, variant, seed, tmp_path / "q.onnx")
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_check_quantized_refuses_scales_that_do_not_fit_their_axis() -> None:
    from onnx import helper

    from tvm_mcu.fuzz.quantize import check_quantized

    def model(bias_shape: tuple[int, ...], axis: int) -> onnx.ModelProto:
        inits = [
            numpy_helper.from_array(np.zeros(bias_shape, np.int32), "b"),
            numpy_helper.from_array(np.ones(4, np.float32), "s"),
            numpy_helper.from_array(np.zeros(4, np.int32), "z"),
        ]
        node = helper.make_node("DequantizeLinear", ["b", "s", "z"], ["y"], name="dq", axis=axis)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return helper.make_model(helper.make_graph([node], "g", [], [y], initializer=inits))

    check_quantized(model((1, 4), 1))
    check_quantized(model((4,), 0))
    with pytest.raises(ValueError, match="4 scales on axis 0 of 'b' \\[1, 4\\]"):
        check_quantized(model((1, 4), 0))


@pytest.mark.parametrize(
    ("variant", "activation", "weight"),
    [("ort-s4", TensorProto.INT8, TensorProto.INT4), ("ort-u4", TensorProto.UINT8, TensorProto.UINT4)],
)
def test_int4_variants_store_convolution_weights_4bit(
    float_path: Path, tmp_path: Path, variant: str, activation: int, weight: int
) -> None:
    """onnxruntime's QInt4 / QUInt4 weights: the packed int4 kernels on models from outside."""
    a = quantize(float_path, variant, SEED, tmp_path / "a.onnx")
    b = quantize(float_path, variant, SEED, tmp_path / "b.onnx")
    model = onnx.load(str(a))
    assert _activation_types(model) == {activation}
    four_bit = [t for t in model.graph.initializer if t.data_type == weight]
    assert any(len(t.dims) == 4 for t in four_bit), "no convolution weight stored 4-bit"
    assert onnx.load(str(b)).SerializeToString(deterministic=True) == model.SerializeToString(
        deterministic=True
    )


def test_the_int2_variant_requantises_the_weights_to_int2(float_path: Path, tmp_path: Path) -> None:
    """ort-s8's weights requantised to int2 (opset 25): the values and scales agree with the int8 ones
    to within a half step of the int2 grid, as onnx.reference dequantises both."""
    from onnx.reference import ReferenceEvaluator

    int8 = onnx.load(str(quantize(float_path, "ort-s8", SEED, tmp_path / "s8.onnx")))
    int2 = onnx.load(str(quantize(float_path, "ort-s2", SEED, tmp_path / "s2.onnx")))
    assert next(o.version for o in int2.opset_import if o.domain in ("", "ai.onnx")) == 25
    crumbs = [t for t in int2.graph.initializer if t.data_type == TensorProto.INT2]
    assert any(len(t.dims) == 4 for t in crumbs), "no convolution weight stored int2"
    before = {t.name: numpy_helper.to_array(t).astype(np.int64) for t in int8.graph.initializer}
    for t in crumbs:
        values = numpy_helper.to_array(t).astype(np.int64)
        assert values.min() >= -2 and values.max() <= 1
        if len(t.dims) >= 2:
            want = np.clip(np.rint(before[t.name] / 64), -2, 1)
            np.testing.assert_array_equal(values, want)
    x = {int2.graph.input[0].name: calibration_data(random_cnn(SEED), SEED)[int2.graph.input[0].name][:1]}
    assert ReferenceEvaluator(int2).run(None, x)[0].size > 0  # a valid model onnx.reference runs
