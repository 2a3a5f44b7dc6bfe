"""ONNX rewrites before import: explicit SAME pads, ONNX Runtime's QOperator format read as QDQ, and
refusals of what the format has beyond that; errors name the user's ONNX node."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu import api
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import load_model
from tvm_mcu.frontend.onnx_rewrite import rewrite, same_pads


def _model(nodes, inputs, outputs, inits=(), opset=13, domains=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    m = helper.make_model(graph, opset_imports=imports)
    m.ir_version = 8
    return m


def _ort_shape(m: onnx.ModelProto, x: np.ndarray) -> tuple[int, ...]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(session.run(None, {"x": x})[0].shape)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize(
    ("op", "size", "kernel", "stride"), [("MaxPool", 7, 3, 2), ("Conv", 6, 5, 3), ("AveragePool", 1, 3, 2)]
)
def test_auto_pad_becomes_the_pads_onnxruntime_computes(mode, op, size, kernel, stride):
    attrs = {"auto_pad": mode, "strides": [stride, stride]}
    inits = []
    inputs = ["x"]
    if op == "Conv":
        inits.append(numpy_helper.from_array(np.ones((2, 2, kernel, kernel), np.float32), "w"))
        inputs.append("w")
    else:
        attrs["kernel_shape"] = [kernel, kernel]
    m = _model(
        [helper.make_node(op, inputs, ["y"], **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, size, size + 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    out, notes = rewrite(m)
    node = out.graph.node[0]
    assert not any(a.name == "auto_pad" for a in node.attribute) and notes
    x = np.random.default_rng(0).standard_normal((1, 2, size, size + 1)).astype(np.float32)
    assert _ort_shape(out, x) == _ort_shape(m, x)


@pytest.mark.emulator
def test_auto_pad_behind_onnx_runtimes_contrib_qdq_gets_its_pads(tmp_path):
    """Fuzz seed 5157, reduced: ONNX's shape inference knows no shape past a com.microsoft Q/DQ, so
    the pads are made explicit after those become the standard operators; before, TVM's importer padded
    this MaxPool (SAME_LOWER, 2x2, stride (3, 2) on a 1x1 input) by -1 and the lowering crashed."""
    ms = "com.microsoft"
    inits = [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(-3), "z")]
    m = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], domain=ms),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], domain=ms),
            helper.make_node(
                "MaxPool", ["xd"], ["p"], auto_pad="SAME_LOWER", kernel_shape=[2, 2], strides=[3, 2]
            ),
            helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"], domain=ms),
            helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"], domain=ms),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])],
        inits,
        domains=(ms,),
    )
    out, _ = rewrite(m)
    pool = next(n for n in out.graph.node if n.op_type == "MaxPool")
    assert [(a.name, list(a.ints)) for a in pool.attribute if a.name == "pads"] == [("pads", [1, 1, 0, 0])]
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    checked = api.verify(path, "mps2-an386", tmp_path / "v")
    assert checked.passed and checked.report.verified


def test_same_pads_put_the_odd_pixel_where_onnx_says():
    assert same_pads(7, 3, 2, 1, upper=True) == (1, 1)
    assert same_pads(6, 3, 2, 1, upper=True) == (0, 1)
    assert same_pads(6, 3, 2, 1, upper=False) == (1, 0)
    assert same_pads(1, 5, 3, 1, upper=True) == (2, 2)


def _qlinear_conv(domain_ops: list[onnx.NodeProto] = ()) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.float32(0.05), "xs"),
        numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8), "w"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        numpy_helper.from_array(np.float32(0.1), "ys"),
        numpy_helper.from_array(np.uint8(100), "yz"),
        numpy_helper.from_array(rng.integers(-100, 100, 4).astype(np.int32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node(
            "QLinearConv",
            ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
            ["yq"],
            pads=[1, 1, 1, 1],
            name="qconv",
        ),
        *domain_ops,
        helper.make_node("DequantizeLinear", ["yq" if not domain_ops else "zq", "ys", "yz"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
        inits,
        domains=("com.microsoft",) if domain_ops else (),
    )


def test_qlinear_conv_is_read_as_the_qdq_it_means():
    out, notes = rewrite(_qlinear_conv())
    ops = [n.op_type for n in out.graph.node]
    assert "QLinearConv" not in ops and ops.count("Conv") == 1 and ops.count("DequantizeLinear") >= 3
    assert any("QOperator" in n for n in notes)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert conv.name == "qconv (QLinearConv)"
    x = {"x": np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(_qlinear_conv().SerializeToString(), options).run(None, x)[0]
    got = ort.InferenceSession(out.SerializeToString(), options).run(None, x)[0]
    # QLinearConv requantises in float32; the QDQ form's float conv rounds the same value: one step.
    assert np.abs(got - want).max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    ("node", "pattern"),
    [
        (
            helper.make_node("ConvInteger", ["x8", "w8"], ["c"], name="dyn"),
            r"ConvInteger \(node 'dyn'\): dynamic quantisation",
        ),
        (
            helper.make_node(
                "QLinearReduceMean",
                ["yq", "ys", "yz", "ys", "yz"],
                ["zq"],
                domain="com.microsoft",
                name="qmean",
            ),
            r"com\.microsoft\.QLinearReduceMean \(node 'qmean'\): an ONNX Runtime contrib operator",
        ),
    ],
    ids=["dynamic-quantisation", "unread-contrib-op"],
)
def test_the_rest_of_the_format_is_refused_by_name(tmp_path, node, pattern):
    if node.op_type == "ConvInteger":
        m = _model(
            [node],
            [helper.make_tensor_value_info("x8", TensorProto.UINT8, [1, 2, 5, 5])],
            [helper.make_tensor_value_info("c", TensorProto.INT32, None)],
            [numpy_helper.from_array(np.ones((4, 2, 3, 3), np.uint8), "w8")],
        )
    else:
        m = _qlinear_conv([node])
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    with pytest.raises(UnsupportedOpError, match=pattern):
        load_model(path)


def test_an_int8_refusal_names_the_onnx_node(tmp_path):
    """A ConvTranspose between QDQ pairs has no integer lowering: the message names the user's node."""
    from tvm_mcu.compiler import compile_module

    inits = [
        numpy_helper.from_array(np.float32(0.05), "s"),
        numpy_helper.from_array(np.int8(0), "z"),
        numpy_helper.from_array(np.ones((2, 2, 3, 3), np.int8), "w"),
        numpy_helper.from_array(np.float32(0.01), "ws"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"]),
        helper.make_node("ConvTranspose", ["d", "wd"], ["t"], name="upsample_1"),
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"]),
        helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["y"]),
    ]
    m = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
        inits,
    )
    path = tmp_path / "deconv_q.onnx"
    onnx.save(m, path)
    model = load_model(path)
    with pytest.raises(UnsupportedOpError) as info:
        compile_module(model.mod, model_name="deconv_q", rounding="onnx")
    message = str(info.value)
    assert "ConvTranspose 'upsample_1'" in message and "--allow-float" in message
    assert "lv" not in message.split("--allow-float")[0] and "\n" not in message
