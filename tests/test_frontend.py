"""The model frontend: every zoo model imports with the right interface; bad models fail with one clear error.

Fast (no C compiler, no emulator). Errors are TvmMcuError subclasses whose messages name what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as tflite_schema

from tests.zoo import FLOAT_MODELS as ALL_MODELS
from tests.zoo import ONNX_MODELS, TFLITE_MODELS, write_model
from tests.zoo.tflite_models import BO, TFLiteWriter
from tvm_mcu.errors import ModelError, UnsupportedOpError
from tvm_mcu.frontend import TensorSpec, load_model, support

_TFLITE_DTYPES = {tflite_schema.TensorType.FLOAT32: "float32", tflite_schema.TensorType.INT32: "int32"}


def _onnx_interface(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as the ONNX file declares them (its graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        dims = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT
        return TensorSpec(vi.name, dims, "float32")

    ins = tuple(spec(vi) for vi in model.graph.input if vi.name not in inits)
    return ins, tuple(spec(vi) for vi in model.graph.output)


def _tflite_interface(data: bytes) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as the flatbuffer declares them, read with tflite-micro's schema (not `tflite`)."""
    sg = tflite_schema.ModelT.InitFromPackedBuf(data, 0).subgraphs[0]

    def spec(k: int) -> TensorSpec:
        t = sg.tensors[k]
        return TensorSpec(t.name.decode(), tuple(int(d) for d in t.shape), _TFLITE_DTYPES[t.type])

    return tuple(spec(k) for k in sg.inputs), tuple(spec(k) for k in sg.outputs)


def _expected_interface(name: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if name in ONNX_MODELS:
        return _onnx_interface(ONNX_MODELS[name]())
    return _tflite_interface(TFLITE_MODELS[name]())


@pytest.mark.parametrize("name", ALL_MODELS, ids=ALL_MODELS)
def test_zoo_model_imports_with_its_interface(name: str, tmp_path: Path) -> None:
    path = write_model(name, tmp_path)
    model = load_model(path)
    want_in, want_out = _expected_interface(name)
    assert model.name == name
    assert model.path == path
    assert model.format == ("onnx" if name in ONNX_MODELS else "tflite")
    assert model.inputs == want_in
    assert model.outputs == want_out
    assert len(model.mod["main"].params) == len(want_in)


def test_zoo_models_are_deterministic() -> None:
    for name, build in ONNX_MODELS.items():
        assert build().SerializeToString() == build().SerializeToString(), name
    for name, build in TFLITE_MODELS.items():
        assert build() == build(), name


# ----------------------------------------------------------------------------------------- helpers
def _onnx_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    initializers: tuple[onnx.TensorProto, ...] = (),
    opset: int = 13,
    extra_opsets: tuple[tuple[str, int], ...] = (),
    check: bool = True,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, np.float32), name)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# ----------------------------------------------------------------------------------------- unsupported ops
def test_every_unsupported_onnx_op_is_named_with_its_node(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    h = 2  # LSTM hidden size
    consts = (
        _const("lstm_w", rng.standard_normal((1, 4 * h, 3))),
        _const("lstm_r", rng.standard_normal((1, 4 * h, h))),
        _const("boxes", rng.uniform(0, 1, (1, 6, 4))),
        _const("scores", rng.uniform(0, 1, (1, 1, 6))),
    )
    selected = helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])
    model = _onnx_model(
        [
            helper.make_node("Relu", ["seq"], ["r"], name="stem_relu"),
            helper.make_node("LSTM", ["r", "lstm_w", "lstm_r"], ["y"], name="encoder_lstm", hidden_size=h),
            helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"], name="box_nms"),
        ],
        [_float("seq", [2, 1, 3])],
        [_float("y", [2, 1, 1, h]), selected],
        initializers=consts,
    )
    with pytest.raises(UnsupportedOpError, match=r"the ONNX model has 2 operator\(s\)") as info:
        load_model(_save(model, tmp_path / "lstm_nms.onnx"))
    msg = str(info.value)
    assert "LSTM (node 'encoder_lstm'): no lowering for this operator" in msg
    assert "NonMaxSuppression (node 'box_nms'): no lowering for this operator" in msg
    assert "stem_relu" not in msg  # a supported node is not a problem
    supported = msg.split("Supported ONNX operators:")[1]
    assert all(op in supported for op in support.ONNX_RULES)


def test_unnamed_unsupported_node_is_named_by_its_index_and_output(tmp_path: Path) -> None:
    model = _onnx_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["hardmax_out"])],
        [_float("x", [1, 4])],
        [_float("hardmax_out", [1, 4])],
    )
    with pytest.raises(UnsupportedOpError, match=r"Hardmax \(node '#1\b[^)]*hardmax_out"):
        load_model(_save(model, tmp_path / "hardmax.onnx"))


@pytest.mark.parametrize(
    ("node", "n_outputs", "reason"),
    [
        (
            helper.make_node("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2, 2]),
            2,
            "the Indices output of MaxPool is not supported",
        ),
        (
            helper.make_node("MaxPool", ["x"], ["y"], name="mp_col", kernel_shape=[2, 2], storage_order=1),
            1,
            "storage_order=1 is not supported",
        ),
    ],
    ids=["maxpool_indices", "maxpool_storage_order"],
)
def test_declined_onnx_attributes_give_the_rule_reason(
    node: onnx.NodeProto, n_outputs: int, reason: str, tmp_path: Path
) -> None:
    outputs = [_float("y", [1, 2, 7, 7])]
    if n_outputs == 2:
        outputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 2, 7, 7]))
    model = _onnx_model([node], [_float("x", [1, 2, 8, 8])], outputs)
    with pytest.raises(UnsupportedOpError, match=rf"MaxPool \(node '{node.name}'\): {reason}"):
        load_model(_save(model, tmp_path / "declined.onnx"))


def test_conv3d_is_declined(tmp_path: Path) -> None:
    w = _const("w", np.ones((2, 2, 3, 3, 3)))
    model = _onnx_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d", kernel_shape=[3, 3, 3])],
        [_float("x", [1, 2, 5, 5, 5])],
        [_float("y", [1, 2, 3, 3, 3])],
        initializers=(w,),
    )
    with pytest.raises(UnsupportedOpError, match=r"Conv \(node 'conv3d'\): 3-D kernels are not supported"):
        load_model(_save(model, tmp_path / "conv3d.onnx"))


def test_custom_domain_op_is_refused(tmp_path: Path) -> None:
    model = _onnx_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("FancyGelu", ["r"], ["y"], name="fancy", domain="com.example"),
        ],
        [_float("x", [1, 4])],
        [_float("y", [1, 4])],
        extra_opsets=(("com.example", 1),),
        check=False,  # the checker cannot know the schema of a custom op
    )
    match = r"com\.example\.FancyGelu \(node 'fancy'\): custom operator domain"
    with pytest.raises(UnsupportedOpError, match=match):
        load_model(_save(model, tmp_path / "custom.onnx"))


def test_unsupported_tflite_ops_are_all_named(tmp_path: Path) -> None:
    w = TFLiteWriter(seed=0)
    x = w.tensor("input", (1, 10))
    rev_opts, cum_opts = tflite_schema.ReverseV2OptionsT(), tflite_schema.CumsumOptionsT()
    h = w.op(BO.REVERSE_V2, [x, w.int32("rev_axis", [1])], "reversed", (1, 10), rev_opts)
    # CUMSUM's code (128) does not fit the deprecated int8 opcode field: the extended field must be read.
    y = w.op(BO.CUMSUM, [h, w.int32("cum_axis", [1])], "running_sum", (1, 10), cum_opts)
    path = tmp_path / "cumsum.tflite"
    path.write_bytes(w.finish([x], [y], "unsupported"))
    with pytest.raises(UnsupportedOpError, match=r"the TFLite model has 2 operator\(s\)") as info:
        load_model(path)
    msg = str(info.value)
    assert "REVERSE_V2 (node 'reversed'): no lowering for this operator" in msg
    assert "CUMSUM (node 'running_sum'): no lowering for this operator" in msg
    assert all(op in msg.split("Supported TFLite operators:")[1] for op in support.TFLITE_RULES)


# ------------------------------------------------------------------------------- model-level refusals
def test_old_opset_is_converted_and_noted(tmp_path: Path) -> None:
    model = _onnx_model(
        [helper.make_node("Relu", ["x"], ["y"])], [_float("x", [1, 4])], [_float("y", [1, 4])], opset=9
    )
    imported = load_model(_save(model, tmp_path / "old.onnx"))
    assert imported.inputs == (TensorSpec("x", (1, 4), "float32"),)
    assert any("converted from ONNX opset 9" in note for note in imported.notes)


def test_old_opset_that_cannot_be_converted_is_refused_naming_it(tmp_path: Path) -> None:
    # BatchNormalization spatial=0 (opset 7 and older) has no equivalent in later opsets.
    stats = tuple(_const(n, np.ones((2, 3, 3))) for n in "sbmv")
    model = _onnx_model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0)],
        [_float("x", [1, 2, 3, 3])],
        [_float("y", [1, 2, 3, 3])],
        initializers=stats,
        opset=7,
    )
    match = r"old\.onnx uses ONNX opset 7; tvm-mcu compiles opset 11 and newer, and onnx\.version_converter"
    with pytest.raises(UnsupportedOpError, match=match):
        load_model(_save(model, tmp_path / "old.onnx"))


def test_dynamic_non_batch_dimension_is_refused(tmp_path: Path) -> None:
    model = _onnx_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_float("x", ["N", 3, "H", 8])],
        [_float("y", ["N", 3, "H", 8])],
    )
    with pytest.raises(ModelError, match=r"input 'x' has a dynamic dimension 2 \('H'\)"):
        load_model(_save(model, tmp_path / "dynamic.onnx"))


def test_a_declared_shape_the_operators_contradict_is_the_models_fault(tmp_path: Path) -> None:
    """A graph output declared 8x8 behind a valid 3x3 conv of an 8x8 input (6x6): refused naming the
    node and both shapes, before TVM's importer (whose result would disagree with the declaration)."""
    model = _onnx_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")],
        [_float("x", [1, 3, 8, 8])],
        [_float("y", [1, 4, 8, 8])],
        initializers=(_const("w", np.ones((4, 3, 3, 3))),),
        check=False,
    )
    with pytest.raises(ModelError, match=r"declared shape contradicts .*conv1.*\(6\) vs \(8\)"):
        load_model(_save(model, tmp_path / "wrong_shape.onnx"))


def _tflite_sigmoid(tmp_path: Path, *, shape: list[int], signature: list[int] | None) -> Path:
    """A one-op TFLite model whose input and output declare ``shape`` (and ``shape_signature``)."""
    w = TFLiteWriter(seed=0)
    x = w.tensor("input", (1, 1, 8, 3))
    y = w.op(BO.LOGISTIC, [x], "y", (1, 1, 8, 3))
    for t in (x, y):
        w.tensors[t].shape, w.tensors[t].shapeSignature = shape, signature
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(w.finish([x], [y], "dynamic"))
    return path


@pytest.mark.parametrize(
    ("shape", "signature"),
    [([1, 1, 8, 3], [1, -1, 8, 3]), ([1, -1, 8, 3], None)],
    ids=["shape_signature", "shape"],
)
def test_tflite_dynamic_non_batch_dimension_is_refused(
    shape: list[int], signature: list[int] | None, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match=r"'input'.* dynamic dimension 1"):
        load_model(_tflite_sigmoid(tmp_path, shape=shape, signature=signature))


def test_tflite_dynamic_batch_dimension_is_fixed_to_one(tmp_path: Path) -> None:
    imported = load_model(_tflite_sigmoid(tmp_path, shape=[1, 1, 8, 3], signature=[-1, 1, 8, 3]))
    assert imported.inputs == (TensorSpec("input", (1, 1, 8, 3), "float32"),)


def test_symbolic_batch_dimension_is_fixed_to_one(tmp_path: Path) -> None:
    model = _onnx_model(
        [helper.make_node("Relu", ["x"], ["y"])], [_float("x", ["N", 3, 8])], [_float("y", ["N", 3, 8])]
    )
    imported = load_model(_save(model, tmp_path / "batch.onnx"))
    assert imported.inputs == (TensorSpec("x", (1, 3, 8), "float32"),)
    assert imported.outputs == (TensorSpec("y", (1, 3, 8), "float32"),)


# ----------------------------------------------------------------------------------------- unreadable files
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist"):
        load_model(tmp_path / "nowhere.onnx")


def test_random_bytes_named_onnx(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(ModelError, match=r"garbage\.onnx is not a readable ONNX model"):
        load_model(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9], ids=["10pct", "50pct", "90pct"])
def test_truncated_tflite(fraction: float, tmp_path: Path) -> None:
    data = TFLITE_MODELS["tfl_conv_dw_residual_fc"]()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelError, match=r"cut\.tflite is not a readable TFLite model"):
        load_model(path)


def test_truncated_onnx(tmp_path: Path) -> None:
    data = ONNX_MODELS["gemm_head"]().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut\.onnx is not a readable ONNX model"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"], ids=["onnx", "tflite"])
def test_empty_file(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.\w+ is not a readable (ONNX|TFLite) model"):
        load_model(path)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = write_model("gemm_head", tmp_path).rename(tmp_path / "model.bin")
    expected = r"unknown model format \(expected a \.onnx, \.tflite or \.pt2 file\)"
    with pytest.raises(ModelError, match=expected):
        load_model(path)
