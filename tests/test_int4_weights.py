"""ONNX QDQ models with 4-bit weights (INT4 / UINT4 initializers of opset-21 DequantizeLinear) and 2-bit
weights (INT2 / UINT2, opset 25).

Each model takes and returns int8 tensors; the compiled library runs on the host and its integers must be
within one step of both onnx.reference's and onnxruntime's, as for int8 QDQ models
(``tests/passes/test_lower_quantized_ops_onnx.py``). Blocked quantisation and 4-bit activations are
refused, naming the node.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tests import host
from tvm_mcu.compiler import compile_module
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import load_model

_RANGES = {
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT2: (-2, 1),
    TensorProto.UINT2: (0, 3),
}
_SIGNED = (TensorProto.INT4, TensorProto.INT2)


class _Int4Graph:
    """int8 input -> [Conv / Gemm / MatMul with 4-bit weights, each requantised to int8] -> int8 output."""

    def __init__(self, wtype: int, per_channel: bool, zero_point: int | None, seed: int) -> None:
        self.wtype, self.per_channel, self.zero_point = wtype, per_channel, zero_point
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: np.ndarray, base: str, dtype: int | None = None) -> str:
        name = self.name(base)
        if dtype is None:
            self.inits.append(numpy_helper.from_array(value, name))
        else:
            self.inits.append(helper.make_tensor(name, dtype, value.shape, value.reshape(-1).tolist()))
        return name

    def dq(self, q: str, scale: float, zp: int) -> str:
        out = self.name("dq")
        s, z = self.const(np.float32(scale), "s"), self.const(np.int8(zp), "z")
        self.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [out], name=out))
        return out

    def requantize(self, y: str, scale: float, zp: int) -> str:
        q = self.name("q")
        s, z = self.const(np.float32(scale), "s"), self.const(np.int8(zp), "z")
        self.nodes.append(helper.make_node("QuantizeLinear", [y, s, z], [q], name=q))
        return q

    def weight(self, shape: tuple[int, ...], axis: int) -> tuple[str, np.ndarray]:
        """4-bit weights along ``axis`` (per channel or one scale), their DequantizeLinear; the scales."""
        lo, hi = _RANGES[self.wtype]
        values = self.rng.integers(lo, hi + 1, shape)
        n = shape[axis] if self.per_channel else 1
        scales = self.rng.uniform(0.02, 0.08, n).astype(np.float32)
        zps = np.zeros(n, np.int64)
        if self.zero_point is not None:
            zps[:] = self.zero_point
            zps[::3] = self.rng.integers(lo, hi + 1, zps[::3].shape)  # a few other zero points too
        if not self.per_channel:
            scales, zps = scales.reshape(()), zps.reshape(())
        w = self.const(values, "w", self.wtype)
        inputs = [w, self.const(scales, "ws")]
        if self.zero_point is not None or self.wtype in _SIGNED:
            inputs.append(self.const(zps, "wz", self.wtype))
        out = self.name("wdq")
        attrs = {"axis": axis} if self.per_channel else {}
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out], name=out, **attrs))
        return out, scales

    def op(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def model(self, x_shape: list[int], y: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "int4_weights",
            [helper.make_tensor_value_info("x", TensorProto.INT8, x_shape)],
            [helper.make_empty_tensor_value_info(y)],
            self.inits,
        )
        opset = 21 if self.wtype in (TensorProto.INT4, TensorProto.UINT4) else 25
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        out = next(v for v in m.graph.value_info if v.name == y)
        del m.graph.output[:]
        m.graph.output.append(out)
        onnx.checker.check_model(m, full_check=True)
        return m


def conv_gemm(
    wtype: int, per_channel: bool, zero_point: int | None, dense: str, seed: int
) -> onnx.ModelProto:
    """Conv 3x3 (asymmetric pads, stride 2) + bias + Relu, then Gemm (transB) or MatMul, 4-bit weights."""
    g = _Int4Graph(wtype, per_channel, zero_point, seed)
    x = g.dq("x", 0.05, 3)
    w, ws = g.weight((6, 3, 3, 3), 0)
    bias_scale = (np.float32(0.05) * ws).astype(np.float32)
    b = g.const(g.rng.integers(-300, 300, 6).astype(np.int32), "b")
    bs = g.const(np.broadcast_to(bias_scale, (6,)).copy() if per_channel else bias_scale, "bs")
    bq = g.op("DequantizeLinear", [b, bs], **({"axis": 0} if per_channel else {}))
    y = g.op("Relu", [g.op("Conv", [x, w, bq], pads=[1, 0, 2, 1], strides=[2, 2])])
    y = g.dq(g.requantize(y, 0.06, -128), 0.06, -128)
    y = g.op("Flatten", [y])  # 6 x 5 x 4 = 120
    if dense == "Gemm":
        w2, _ = g.weight((10, 120), 0)
        y = g.op("Gemm", [y, w2], transB=1)
    else:
        w2, _ = g.weight((120, 10), 1)
        y = g.op("MatMul", [y, w2])
    return g.model([1, 3, 8, 8], g.requantize(y, 0.25, 2))


def depthwise(wtype: int, seed: int) -> onnx.ModelProto:
    """Depthwise Conv 3x3 (pads 1) with per-channel 4-bit weights."""
    g = _Int4Graph(wtype, True, None if wtype in _SIGNED else _RANGES[wtype][1] // 2 + 1, seed)
    x = g.dq("x", 0.05, -2)
    w, _ = g.weight((4, 1, 3, 3), 0)
    y = g.op("Conv", [x, w], group=4, pads=[1, 1, 1, 1])
    return g.model([1, 4, 6, 5], g.requantize(y, 0.08, 0))


CASES = {
    "int4-per-channel-conv-gemm": lambda: conv_gemm(TensorProto.INT4, True, None, "Gemm", 1),
    "int4-per-tensor-conv-matmul": lambda: conv_gemm(TensorProto.INT4, False, None, "MatMul", 2),
    "uint4-zero-points-conv-gemm": lambda: conv_gemm(TensorProto.UINT4, True, 8, "Gemm", 3),
    "uint4-per-tensor-zero-point-matmul": lambda: conv_gemm(TensorProto.UINT4, False, 5, "MatMul", 4),
    "int4-depthwise": lambda: depthwise(TensorProto.INT4, 5),
    "int2-per-channel-conv-gemm": lambda: conv_gemm(TensorProto.INT2, True, None, "Gemm", 6),
    "uint2-zero-points-conv-matmul": lambda: conv_gemm(TensorProto.UINT2, True, 2, "MatMul", 7),
    "int2-depthwise": lambda: depthwise(TensorProto.INT2, 8),
}


def _ort(data: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


@pytest.mark.parametrize("name", list(CASES))
def test_int4_weights_compile_and_match_both_onnx_references(name, tmp_path):
    proto = CASES[name]()
    four_bit = [t for t in proto.graph.initializer if t.data_type in _RANGES]
    assert len(four_bit) >= 1, "the model under test must hold 4-bit initializers"
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())
    model = load_model(path)
    assert any("4-bit weight tensor" in note for note in model.notes), model.notes
    compiled = compile_module(
        model.mod, model_name=name.replace("-", "_"), rounding="onnx", in_place=False, partial_execution=False
    )
    assert not re.search(r"\b(float|double)\b", host.operators_source(compiled)), "float code in the kernels"
    lib = host.build_shared(compiled, tmp_path, name.replace("-", "_"))
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, model.inputs[0].shape).astype(np.int8)
    x.reshape(-1)[:2] = (-128, 127)
    got = host.run(lib, compiled, [x])[0].astype(np.int32)
    by_reference = np.asarray(ReferenceEvaluator(proto).run(None, {"x": x})[0]).astype(np.int32)
    by_runtime = _ort(path.read_bytes(), {"x": x}).astype(np.int32)
    assert len(np.unique(got)) > 3, "a constant output proves nothing"
    for oracle, want in (("onnx.reference", by_reference), ("onnxruntime", by_runtime)):
        diff = np.abs(got - want.reshape(got.shape))
        assert int(diff.max()) <= 1, (
            f"{name}: {int((diff > 1).sum())} outputs off by more than one step ({oracle})"
        )


@pytest.mark.parametrize(
    "name",
    [
        "int4-per-channel-conv-gemm",
        "uint4-zero-points-conv-gemm",
        "int2-per-channel-conv-gemm",
        "uint2-zero-points-conv-matmul",
    ],
)
def test_4bit_initializers_become_8bit_holding_the_same_integers(name):
    """The rewrite changes the type that holds a weight (and its zero point), never a value."""
    from tvm_mcu.frontend import onnx_rewrite

    proto = CASES[name]()
    widened, _ = onnx_rewrite.rewrite(proto)
    four_bit = {t.name: t.data_type for t in proto.graph.initializer if t.data_type in _RANGES}
    assert len(four_bit) >= 4  # two weights and their zero points
    after = {t.name: numpy_helper.to_array(t) for t in widened.graph.initializer}
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if init.name in four_bit:
            want = np.int8 if four_bit[init.name] in _SIGNED else np.uint8
            assert after[init.name].dtype == want, (init.name, after[init.name].dtype)
            np.testing.assert_array_equal(after[init.name].astype(np.int64), value.astype(np.int64))
        else:
            assert after[init.name].dtype == value.dtype
            np.testing.assert_array_equal(after[init.name], value)


def _int4_conv(block_size: int = 0, activation_type: int = TensorProto.INT8) -> onnx.ModelProto:
    """float x -> Q (activation_type) -> DQ -> Conv with int4 weights -> y: the two refusals."""
    w = helper.make_tensor("w", TensorProto.INT4, (4, 2, 3, 3), [1, -2, 3] * 24)
    if block_size:
        scale = numpy_helper.from_array(np.full((4, 1, 3, 3), 0.1, np.float32), "ws")
    else:
        scale = numpy_helper.from_array(np.full(4, 0.1, np.float32), "ws")
    zero = helper.make_tensor("xz", activation_type, (), [0])
    xs = numpy_helper.from_array(np.float32(0.05), "xs")
    attrs = {"axis": 1, "block_size": block_size} if block_size else {"axis": 0}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="x_quantize"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"], name="x_dequantize"),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wf"], name="w_dequantize", **attrs),
        helper.make_node("Conv", ["xf", "wf"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "refused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [w, scale, zero, xs],
    )
    opset = 25 if activation_type in (TensorProto.INT2, TensorProto.UINT2) else 21
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"block_size": 2}, r"DequantizeLinear \(node 'w_dequantize'\): block_size=2 \(blocked quantisation"),
        (
            {"activation_type": TensorProto.INT4},
            r"QuantizeLinear \(node 'x_quantize'\) quantises activation 'x' to int4.*int8 or uint8",
        ),
        (
            {"activation_type": TensorProto.UINT4},
            r"QuantizeLinear \(node 'x_quantize'\) quantises activation 'x' to uint4",
        ),
        (
            {"activation_type": TensorProto.INT2},
            r"QuantizeLinear \(node 'x_quantize'\) quantises activation 'x' to int2",
        ),
    ],
    ids=["blocked-weights", "int4-activation", "uint4-activation", "int2-activation"],
)
def test_blocked_weights_and_4bit_activations_are_refused_naming_the_node(kwargs, pattern, tmp_path):
    proto = _int4_conv(**kwargs)
    onnx.checker.check_model(proto, full_check=True)  # a valid model: the refusal is tvm-mcu's
    path = tmp_path / "refused.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsupportedOpError, match=pattern):
        load_model(path)


def test_a_4bit_tensor_read_by_another_operator_is_refused(tmp_path):
    """A 4-bit initializer cast to float (not dequantised): refused by name, not guessed at."""
    w = helper.make_tensor("w", TensorProto.INT4, (4, 2, 3, 3), [1, -2, 3] * 24)
    nodes = [
        helper.make_node("Cast", ["w"], ["wf"], name="cast_weights", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "wf"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "cast.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsupportedOpError, match=r"Cast \(node 'cast_weights'\) reads the int4 tensor 'w'"):
        load_model(path)
