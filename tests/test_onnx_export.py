"""The Relax -> ONNX writer: every zoo model written back from its inference form computes what the original
does, reads back into the same bytes, and anything without a rule is refused by name.

Numerics: the written model under ``onnx.reference`` equals the original model under the project's
reference (``onnx.reference`` too) within rtol 1e-5, atol 1e-6; the only difference is the float32
rounding of the BatchNorm folding done by ``inference_passes``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from tests.zoo import ONNX_MODELS, write_model
from tvm_mcu import _tvm, pipeline
from tvm_mcu._tvm import relax
from tvm_mcu.errors import BadOptionError, UnsupportedOpError
from tvm_mcu.frontend import ImportedModel, load_model, onnx_export, random_inputs
from tvm_mcu.frontend.onnx_export import export_onnx
from tvm_mcu.reference import reference_outputs

DEMO = Path(__file__).resolve().parents[1] / "tvm_mcu" / "data" / "demo" / "fashion_cnn.onnx"
MODELS = (*ONNX_MODELS, "fashion_cnn")
RTOL, ATOL = 1e-5, 1e-6


def _export(model: ImportedModel, **kwargs: Any) -> onnx.ModelProto:
    return export_onnx(
        pipeline.run(pipeline.inference_passes(), model.mod),
        input_names=[s.name for s in model.inputs],
        output_names=[s.name for s in model.outputs],
        model_name=model.name,
        **kwargs,
    )


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], tuple[ImportedModel, onnx.ModelProto]]:
    """The imported original and its written inference form, per model name (computed once)."""
    directory = tmp_path_factory.mktemp("onnx_export")
    cache: dict[str, tuple[ImportedModel, onnx.ModelProto]] = {}

    def get(name: str) -> tuple[ImportedModel, onnx.ModelProto]:
        if name not in cache:
            model = load_model(DEMO if name == "fashion_cnn" else write_model(name, directory))
            cache[name] = (model, _export(model))
        return cache[name]

    return get


def _run(proto: onnx.ModelProto, model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    feeds = {spec.name: x for spec, x in zip(model.inputs, inputs, strict=True)}
    return [np.asarray(y) for y in ReferenceEvaluator(proto).run(None, feeds)]


@pytest.mark.parametrize("name", MODELS, ids=MODELS)
def test_written_model_computes_the_original(name: str, exported: Callable[..., Any]) -> None:
    model, proto = exported(name)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [s.name for s in model.inputs]
    assert [o.name for o in proto.graph.output] == [s.name for s in model.outputs]
    assert proto.producer_name == "tvm-mcu" and proto.opset_import[0].version == 13
    inputs = random_inputs(model, seed=0)
    want = reference_outputs(model, inputs)
    got = _run(proto, model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", MODELS, ids=MODELS)
def test_written_model_reads_back_into_the_same_bytes(
    name: str, exported: Callable[..., Any], tmp_path: Path
) -> None:
    model, proto = exported(name)
    data = proto.SerializeToString()
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    again = load_model(path)
    assert again.inputs == model.inputs and again.outputs == model.outputs
    assert _export(again).SerializeToString() == data
    assert _export(model).SerializeToString() == data  # and writing the same module twice


def test_opset_17_is_written_and_computes_the_original(exported: Callable[..., Any]) -> None:
    model, _ = exported("gemm_head")  # ReduceMean, Softmax, MatMul: the opset-sensitive ops
    proto = _export(model, opset=17)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    inputs = random_inputs(model, seed=0)
    np.testing.assert_allclose(
        _run(proto, model, inputs)[0], reference_outputs(model, inputs)[0], rtol=RTOL, atol=ATOL
    )


# ------------------------------------------------------------------------------- hand-built modules
def _module(build: Callable[[Any, Any], Any], shape: tuple[int, ...] = (1, 3, 6, 6)) -> _tvm.IRModule:
    """``main(x)`` whose dataflow block is whatever ``build(bb, x)`` emits; it returns the output expr."""
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _ops_outside_the_zoo(bb: Any, x: Any) -> Any:
    clipped = bb.emit(relax.op.clip(x, -0.5, 0.5))
    alias = bb.emit(clipped)  # lv1 = lv
    pooled = bb.emit(relax.op.nn.adaptive_avg_pool2d(alias, (1, 1)))
    mean = bb.emit(relax.op.mean(alias))  # axis=None: over everything
    reversed_ = bb.emit(relax.op.permute_dims(alias))  # axes=None: reverse
    item = bb.emit(relax.TupleGetItem(bb.emit(relax.Tuple([alias, x])), 0))
    lowered = bb.emit(relax.op.maximum(relax.const(np.full((3, 1, 1), 0.25, np.float32)), x))
    return relax.Tuple([pooled, mean, reversed_, alias, item, x, pooled, lowered])


def test_ops_outside_the_zoo_tuple_results_and_aliases() -> None:
    """clip, 1x1 adaptive pooling, full mean, reversing transpose, an alias, a tuple item, the input
    itself, a result returned twice and a maximum with a broadcast (not scalar) constant."""
    proto = export_onnx(_module(_ops_outside_the_zoo))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == [f"output_{k}" for k in range(8)]
    assert [i.name for i in proto.graph.input] == ["x"]
    writes = {n.output[0]: n.op_type for n in proto.graph.node}
    assert writes["output_3"] == "Clip"  # the alias's call writes straight into the output
    assert [writes[f"output_{k}"] for k in (4, 5, 6)] == ["Identity"] * 3  # tuple item, input, repeat
    assert writes["output_0"] == "GlobalAveragePool" and writes["output_7"] == "Max"
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    c = np.clip(x, -0.5, 0.5)
    pooled = c.mean((2, 3), keepdims=True)
    want = [pooled, c.mean(), c.transpose(), c, c, x, pooled, np.maximum(np.float32(0.25), x)]
    got = ReferenceEvaluator(proto).run(None, {"x": x})
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def test_single_result_is_named_output() -> None:
    proto = export_onnx(_module(lambda bb, x: bb.emit(relax.op.nn.relu(x))))
    assert [o.name for o in proto.graph.output] == ["output"]
    assert [n.op_type for n in proto.graph.node] == ["Relu"]


def test_results_returned_as_a_tuple_expression() -> None:
    """``return (lv, lv1)`` without a ``gv`` binding: both results are written."""
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit_output(relax.op.nn.relu(x))
            b = bb.emit_output(relax.op.sigmoid(a))
        bb.emit_func_output(relax.Tuple([a, b]))
    proto = export_onnx(bb.get(), output_names=["r", "s"])
    onnx.checker.check_model(proto, full_check=True)
    x_ = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    r, s = ReferenceEvaluator(proto).run(None, {"x": x_})
    np.testing.assert_allclose(r, np.maximum(x_, 0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-np.maximum(x_, 0))), rtol=RTOL, atol=ATOL)


def _conv_nhwc(bb: Any, x: Any) -> Any:
    w = relax.const(np.zeros((3, 3, 3, 4), np.float32))
    return bb.emit(relax.op.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="HWIO"))


def _conv_out_dtype(bb: Any, x: Any) -> Any:
    w = relax.const(np.zeros((4, 3, 3, 3), np.float32))
    return bb.emit(relax.op.nn.conv2d(x, w, out_dtype="float16"))


REFUSED = {
    "conv2d-transpose-refused": (
        lambda bb, x: bb.emit(
            relax.op.nn.conv2d_transpose(x, relax.const(np.zeros((3, 3, 3, 3), np.float32)))
        ),
        r"relax\.nn\.conv2d_transpose \(binding 'lv'\).*transposed convolution has no ONNX rule",
    ),
    "conv2d-nhwc": (_conv_nhwc, r"relax\.nn\.conv2d \(binding 'lv'\).*layouts NHWC/HWIO/NHWC"),
    "conv2d-out-dtype": (_conv_out_dtype, r"relax\.nn\.conv2d .*out_dtype=float16"),
    "avg-pool-dilation": (
        lambda bb, x: bb.emit(relax.op.nn.avg_pool2d(x, (2, 2), dilation=(2, 2))),
        r"relax\.nn\.avg_pool2d .*dilation \[2, 2\]",
    ),
    "pad-reflect": (
        lambda bb, x: bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], "circular")),
        r"relax\.nn\.pad .*pad_mode='circular'",
    ),
    "adaptive-pool-2x2": (
        lambda bb, x: bb.emit(relax.op.nn.adaptive_avg_pool2d(x, (2, 2))),
        r"relax\.nn\.adaptive_avg_pool2d .*output_size \[2, 2\]",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=REFUSED)
def test_refuses_what_has_no_rule(case: str) -> None:
    build, message = REFUSED[case]
    with pytest.raises(UnsupportedOpError, match=f"cannot write {message}"):
        export_onnx(_module(build, (1, 6, 6, 3) if case == "conv2d-nhwc" else (1, 3, 6, 6)))


def test_an_attribute_the_rule_does_not_read_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that forgets an attribute (here softmax's axis) must not write the op without it."""

    def forgetful(w: Any, call: Any, attrs: Any, out: str) -> None:
        w.node("Softmax", [w.tensor(call.args[0])], out)

    monkeypatch.setitem(onnx_export._RULES, "relax.nn.softmax", forgetful)
    with pytest.raises(UnsupportedOpError, match=r"relax\.nn\.softmax .*no rule for attribute\(s\) axis"):
        export_onnx(_module(lambda bb, x: bb.emit(relax.op.nn.softmax(x, axis=1))))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opset": 18}, "opset 18"),
        ({"input_names": ["a", "b"]}, "2 input names given for a model with 1 inputs"),
        ({"output_names": ["x"]}, r"\['x'\] are both an input and an output"),
    ],
    ids=["opset-18", "input-count", "output-named-like-input"],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BadOptionError, match=message):
        export_onnx(_module(lambda bb, x: bb.emit(relax.op.nn.relu(x))), **kwargs)
