"""LowerQuantizedOps: fake-quantised graphs become integer operators, bit-exact with TFLite's kernels."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from tests import host, quant_reference
from tests.zoo import tflite_int8, write_model
from tvm_mcu import _tvm
from tvm_mcu.compiler import compile_module
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import load_model
from tvm_mcu.passes.relax.lower_quantized_ops import ATTR_FLOAT_OPS, LowerQuantizedOps

RNG_SEEDS = (0, 1, 2)


def _const(a: np.ndarray) -> relax.Constant:
    return relax.const(a, str(a.dtype))


def _qdq_conv(activation: str = "relu") -> tuple[_tvm.IRModule, dict[str, np.ndarray]]:
    """dequantize(x) -> conv2d(dequantize(w)) + dequantize(b) -> activation -> quantize, NHWC."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (3, 3, 4, 6)).astype(np.int8)  # HWIO
    w_scale = (rng.random(6) * 0.01 + 0.005).astype(np.float32)
    b = rng.integers(-500, 500, 6).astype(np.int32)
    x_scale, x_zp, y_scale, y_zp = np.float32(0.05), 3, np.float32(0.08), -10
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, 4), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(relax.op.dequantize(x, _const(np.array(x_scale)), _const(np.int32(x_zp))))
            wf = bb.emit(
                relax.op.dequantize(_const(w), _const(w_scale), _const(np.zeros(6, np.int32)), axis=3)
            )
            bf = bb.emit(
                relax.op.dequantize(_const(b), _const(x_scale * w_scale), _const(np.zeros(6, np.int32)))
            )
            acc = bb.emit(
                relax.op.nn.conv2d(
                    xf, wf, padding=1, data_layout="NHWC", kernel_layout="HWIO", out_layout="NHWC"
                )
            )
            acc = bb.emit(relax.op.add(acc, bf))
            if activation == "relu":
                acc = bb.emit(relax.op.nn.relu(acc))
            elif activation == "tanh":
                acc = bb.emit(relax.op.tanh(acc))
            y = bb.emit(
                relax.op.quantize(acc, _const(np.array(y_scale)), _const(np.int32(y_zp)), out_dtype="int8")
            )
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), {"w": w, "w_scale": w_scale, "b": b}


def _calls(func: relax.Function) -> list[str]:
    names: list[str] = []

    def visit(call: relax.Call) -> None:
        op = _tvm.op_name(call)
        if op == "relax.call_tir":
            names.append("call_tir:" + call.args[0].name_hint)
        elif op is not None:
            names.append(op)

    _tvm.structural_walk(func.body, (relax.Call, visit))
    return names


def test_conv_bias_relu_becomes_one_integer_operator():
    mod, data = _qdq_conv()
    after = LowerQuantizedOps()(mod)
    calls = _calls(after["main"])
    assert calls == ["call_tir:conv2d_int8"], calls
    assert _tvm.tensor_dtype(after["main"].ret_ty) == "int8"
    # the weights stay int8, laid out OHWI (each output channel's taps contiguous along the input
    # channels); the bias has the input zero point folded in: b - zp * sum(w[..., c]), and sits
    # beside each channel's multiplier and shift in one [C, 3] int32 constant
    call = next(b.value for blk in after["main"].body.blocks for b in blk.bindings)
    consts = [_tvm.const_value(a) for a in call.args[1].fields[1:]]
    assert len(consts) == 2
    assert consts[0].dtype == np.int8 and np.array_equal(consts[0], data["w"].transpose(3, 0, 1, 2))
    expected_bias = data["b"].astype(np.int64) - 3 * data["w"].astype(np.int64).sum(axis=(0, 1, 2))
    assert consts[1].dtype == np.int32 and consts[1].shape == (len(expected_bias), 3)
    assert np.array_equal(consts[1][:, 0], expected_bias.astype(np.int32))
    assert (consts[1][:, 1] >= 1 << 30).all()  # Q31 multipliers in [0.5, 1)


def test_float_module_is_unchanged():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    mod = bb.get()
    _tvm.assert_structural_equal(LowerQuantizedOps()(mod), mod)


def test_input_untouched_and_idempotent():
    mod, _ = _qdq_conv()
    snapshot = mod.script()
    once = LowerQuantizedOps()(mod)
    assert mod.script() == snapshot
    twice = LowerQuantizedOps()(once)
    assert _calls(twice["main"]) == _calls(once["main"])


def test_refuses_an_op_without_integer_lowering_naming_it():
    mod, _ = _qdq_conv(activation="tanh")
    with pytest.raises(UnsupportedOpError, match=r"relax\.tanh .*no integer lowering.*--allow-float"):
        LowerQuantizedOps()(mod)


def test_allow_float_runs_the_op_in_float_and_lists_it():
    mod, _ = _qdq_conv(activation="tanh")
    after = LowerQuantizedOps(allow_float=True)(mod)
    listed = [str(s) for s in after["main"].attrs[ATTR_FLOAT_OPS]]
    assert any("relax.tanh" in s for s in listed), listed
    assert "relax.dequantize" in _calls(after["main"])


SINGLE_OPS = [f.__name__ for f in tflite_int8.SINGLE_OP_MODELS]


def _extreme_and_random_inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    if seed == 0:
        return np.full(shape, -128, np.int8)
    if seed == 1:
        return np.full(shape, 127, np.int8)
    return np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)


@pytest.mark.parametrize("name", SINGLE_OPS, ids=SINGLE_OPS)
def test_single_op_is_bit_exact_with_numpy_reference_of_tflite_kernel(name, tmp_path):
    path = write_model(f"int8_{name}", tmp_path)
    model = load_model(path)
    compiled = compile_module(model.mod, model_name=name)
    lib = host.build_shared(compiled, tmp_path, name)
    graph = quant_reference.read_graph(path.read_bytes())
    (op,) = graph.operators
    for seed in (*RNG_SEEDS, 7, 11):
        inputs = [_extreme_and_random_inputs(spec.shape, seed + k) for k, spec in enumerate(model.inputs)]
        got = host.run(lib, compiled, inputs)[0]
        want = quant_reference.apply_operator(op, inputs)
        assert got.dtype == np.int8
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32).reshape(got.shape))
        assert int(diff.max(initial=0)) == 0, f"{name} seed {seed}: {int((diff > 0).sum())} outputs differ"


# The integer operator each single-op TFLite model must lower to (and nothing else that computes).
EXPECTED_KERNEL = {
    "conv_same_relu": "conv2d_int8",
    "conv_valid_stride2": "conv2d_int8",
    "conv_relu6": "conv2d_int8",
    "depthwise_mult1": "conv2d_int8",
    "depthwise_mult2": "conv2d_int8",
    "fully_connected": "dense_int8",
    "avgpool_same": "avg_pool2d_int8",
    "avgpool_global": "avg_pool2d_int8",
    "maxpool": "relax.nn.max_pool2d",
    "add_rescale": "add_int8",
    "add_rescale_relu": "add_int8",
    "softmax": "softmax_int8",
    "reshape": "relax.reshape",
    "mean_hw": "mean_int8",
    "concat_same_params": "relax.concat",
}


@pytest.mark.parametrize("name", SINGLE_OPS, ids=SINGLE_OPS)
def test_single_op_lowers_to_its_integer_operator(name, tmp_path):
    model = load_model(write_model(f"int8_{name}", tmp_path))
    after = LowerQuantizedOps()(model.mod)
    calls = [c.removeprefix("call_tir:") for c in _calls(after["main"])]
    assert EXPECTED_KERNEL[name] in calls, calls
    assert not {"relax.quantize", "relax.dequantize", "relax.nn.conv2d", "relax.matmul"} & set(calls), calls
    main = after["main"]
    float_vars = [
        b.var
        for blk in main.body.blocks
        for b in blk.bindings
        if isinstance(b.var.ty, _tvm.TensorType) and _tvm.tensor_dtype(b.var.ty).startswith("float")
    ]
    assert float_vars == [], f"float tensors left: {[_tvm.var_name(v) for v in float_vars]}"


def test_a_pool_of_whole_windows_divides_in_32_bits(tmp_path):
    """A window count known when compiling keeps TFLite's division int32: a 64-bit one is a library call
    (__aeabi_ldivmod, about 1 kB of flash on a Cortex-M)."""
    model = load_model(write_model("int8_avgpool_global", tmp_path))
    ops = host.operators_source(compile_module(model.mod, model_name="pool"))
    assert "pool_sum" in ops
    assert "/ 30)" in ops, ops  # the 6 x 5 window's count, an int32 constant
    assert "/ (int64_t)" not in ops, ops
