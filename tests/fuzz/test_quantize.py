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
