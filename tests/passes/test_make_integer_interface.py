"""MakeIntegerInterface: a QDQ model's float input/output become the int8 tensors it quantises them to."""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_mcu import _tvm
from tvm_mcu.passes.relax.make_integer_interface import MakeIntegerInterface, io_quantization


def _c(v: object, dtype: str) -> relax.Constant:
    return relax.const(np.array(v, dtype=dtype), dtype)


def _qdq_relu(extra_float_use: bool = False) -> _tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(x, _c(0.1, "float32"), _c(-3, "int8"), out_dtype="int8"))
            d = bb.emit(relax.op.dequantize(q, _c(0.1, "float32"), _c(-3, "int8")))
            r = bb.emit(relax.op.nn.relu(d))
            if extra_float_use:
                r = bb.emit(relax.op.add(r, x))
            q2 = bb.emit(relax.op.quantize(r, _c(0.05, "float32"), _c(-128, "int8"), out_dtype="int8"))
            out = bb.emit_output(relax.op.dequantize(q2, _c(0.05, "float32"), _c(-128, "int8")))
        bb.emit_func_output(out)
    return bb.get()


def test_float_boundary_becomes_int8_and_scales_are_recorded():
    after = MakeIntegerInterface()(_qdq_relu())
    main = after["main"]
    assert [_tvm.tensor_dtype(p.ty) for p in main.params] == ["int8"]
    assert _tvm.tensor_dtype(main.ret_ty) == "int8"
    io = io_quantization(after)
    assert io is not None
    (in_scale, in_zp), (out_scale, out_zp) = io["inputs"][0], io["outputs"][0]
    assert (np.float32(in_scale), in_zp) == (np.float32(0.1), -3)
    assert (np.float32(out_scale), out_zp) == (np.float32(0.05), -128)
    ops = []
    _tvm.structural_walk(main.body, (relax.Call, lambda c: ops.append(_tvm.op_name(c))))
    assert "relax.quantize" in ops  # the inner requantisation stays for LowerQuantizedOps
    assert ops[0] == "relax.dequantize"  # the input quantize is gone


def test_declines_an_input_with_a_float_use():
    after = MakeIntegerInterface()(_qdq_relu(extra_float_use=True))
    assert _tvm.tensor_dtype(after["main"].params[0].ty) == "float32"
    io = io_quantization(after)
    assert io is not None and io["inputs"] == [[]] and io["outputs"][0]


def test_float_model_is_unchanged_and_input_untouched():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    mod = bb.get()
    _tvm.assert_structural_equal(MakeIntegerInterface()(mod), mod)
    before = _qdq_relu()
    snapshot = before.script()
    MakeIntegerInterface()(before)
    assert before.script() == snapshot
    assert io_quantization(before) is None
