"""TFLite models with int4 weights (TensorType INT4, two a byte): read as int8 of the same values for TVM,
run as written by the tflite-micro interpreter, and bit-exact with it on the board."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from tests.zoo.tflite_int8 import TFLITE_INT8_MODELS, pack_int4, with_int4_weights
from tvm_mcu import api
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.frontend.tflite_rewrite import unpack_int4
from tvm_mcu.reference import _tflm_reference, reference_outputs

# CONV_2D (per-channel), FULLY_CONNECTED (per-tensor), DEPTHWISE_CONV_2D then CONV_2D 1x1.
MODELS = ("conv_same_relu", "fully_connected", "ds_cnn_block")


def _types(data: bytes) -> list[int]:
    graph = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0)).subgraphs[0]
    return [t.type for t in graph.tensors]


@pytest.mark.parametrize("count", [1, 6, 7])
def test_unpack_int4_reads_the_low_nibble_first_and_sign_extends(count):
    values = np.array([-8, 7, -1, 0, 3, -5, 6][:count], np.int8)
    packed = pack_int4(values)
    assert len(packed) == (count + 1) // 2
    if count >= 2:
        assert packed[0] == 0x78  # -8 -> 0x8 low, 7 -> 0x7 high
    np.testing.assert_array_equal(unpack_int4(packed, count), values)


@pytest.mark.parametrize("name", MODELS)
def test_tflite_micro_reads_our_packing(name):
    """The interpreter runs the INT4 file exactly as the INT8 file of the same values: the nibble order
    the frontend assumes is the interpreter's."""
    int8 = TFLITE_INT8_MODELS[name]()
    packed, same_values = with_int4_weights(int8), with_int4_weights(int8, packed=False)
    assert fb.TensorType.INT4 in _types(packed) and fb.TensorType.INT4 not in _types(same_values)
    shape = tuple(fb.Model.GetRootAs(int8, 0).Subgraphs(0).Tensors(0).ShapeAsNumpy())
    x = np.random.default_rng(0).integers(-128, 128, shape).astype(np.int8)
    a, b = _tflm_reference(packed, [x], 1)[0], _tflm_reference(same_values, [x], 1)[0]
    assert np.array_equal(a, b) and len(np.unique(a)) > 3


@pytest.mark.emulator
@pytest.mark.parametrize("name", MODELS)
def test_int4_tflite_is_bit_exact_with_tflite_micro(name, tmp_path):
    path = tmp_path / f"{name}_int4.tflite"
    path.write_bytes(with_int4_weights(TFLITE_INT8_MODELS[name]()))
    model = load_model(path)
    assert any("int4 weight tensor" in note for note in model.notes), model.notes
    assert fb.TensorType.INT4 in _types(model.data), "the reference must run the int4 file as written"
    compiled = api.compile_model(path, "mps2-an386", tmp_path / "out")
    for seed in (0, 1):
        inputs = random_inputs(model, seed)
        got = api.run_compiled(compiled.out_dir, inputs).outputs[0]
        want = np.asarray(reference_outputs(model, inputs)[0]).reshape(got.shape)
        assert np.array_equal(got, want), f"{name} seed {seed}: {int((got != want).sum())} outputs differ"
        assert len(np.unique(got)) > 1, "a constant output proves nothing"


def test_int4_activation_is_refused_naming_the_tensor(tmp_path):
    data = with_int4_weights(TFLITE_INT8_MODELS["conv_same_relu"]())
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    graph = model.subgraphs[0]
    graph.tensors[graph.outputs[0]].type = fb.TensorType.INT4
    import flatbuffers

    builder = flatbuffers.Builder(len(data) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "int4_activation.tflite"
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(UnsupportedOpError, match=r"tensor 'conv' is an int4 activation.*activations int8"):
        load_model(path)
