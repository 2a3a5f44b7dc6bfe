"""SparseElements: the runs calls over weights stored element-sparse visit only their kept weights."""

from __future__ import annotations

from typing import Any

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tests.passes.test_use_dot_kernels import RunsExpected
from tvm_mcu import _tvm
from tvm_mcu._tvm import structural_map, tirx, tvm
from tvm_mcu.passes.tir import SparseElements, SparseFilterlets
from tvm_mcu.passes.tir.each_function import extern_name
from tvm_mcu.passes.tir.sparse_elements import ATTR_SPARSE, ATTR_WANTED


def _wanted(mod: tvm.IRModule, wanted: dict[int, int]) -> tvm.IRModule:
    return tvm.IRModule({"f": mod["f"].with_attr(ATTR_WANTED, wanted)})


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.dot_kernels": True,
                "tvmmcu.sparse_element_weights": {1: 4},
                "tvmmcu.elements_done": True,
                "tvmmcu.sparse_elements": {1: 4},
            }
        )
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((36,), "int32", data=Y)
        for yy, xx, ff in T.grid(3, 3, 4):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            # The parameter holds the element CSR blob; channel ff's entries, the same window.
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_esparse1p_blob_s8s8",
                T.address_of(
                    X_1[
                        24 * (yy - 1)
                        + 8 * (xx - 1)
                        + T.min(T.max(0, 1 - yy), 3) * 24
                        + T.min(T.max(0, 1 - xx), 3) * 8
                    ]
                ),
                24,
                8,
                3,
                T.address_of(W_1[0]),
                4,
                ff,
                8,
                T.min(T.max(0, 1 - yy), 3),
                T.max(T.min(3, 4 - yy), T.min(T.max(0, 1 - yy), 3)),
                T.min(T.max(0, 1 - xx), 3),
                T.max(T.min(3, 4 - xx), T.min(T.max(0, 1 - xx), 3)),
                -3,
                acc[0],
            )
            Y_1[yy * 12 + xx * 4 + ff] = acc[0]


def test_runs_over_element_sparse_weights_visit_the_kept_weights() -> None:
    _tvm.assert_structural_equal(SparseElements()(_wanted(RunsExpected, {1: 4})), Expected)


def test_functions_without_element_sparse_weights_are_unchanged() -> None:
    after = SparseElements()(RunsExpected)
    _tvm.assert_structural_equal(after["f"].body, RunsExpected["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def test_weights_marked_for_filterlets_are_not_its_own() -> None:
    """SparseFilterlets' mark is not SparseElements': that pass rewrites them, this one leaves them."""
    from tvm_mcu.passes.tir.sparse_filterlets import ATTR_WANTED as FILTERLETS_WANTED

    marked = tvm.IRModule({"f": RunsExpected["f"].with_attr(FILTERLETS_WANTED, {1: 4})})
    after = SparseElements()(SparseFilterlets()(marked))
    assert ATTR_SPARSE not in after["f"].attrs
    assert "tvmmcu_sparse4p_blob_s8s8" in after.script() and "esparse" not in after.script()


def _dilated(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with its runs call's taps 16 bytes apart in x (a dilated convolution's): not contiguous."""

    def widen(call: Any) -> Any:
        if extern_name(call) != "tvmmcu_dot_runs_s8s8":
            return call
        args = list(call.args[1:])
        args[2] = tirx.IntImm("int32", 16)
        return tirx.call_extern(str(call.ty), "tvmmcu_dot_runs_s8s8", *args)

    return tvm.IRModule({"f": mod["f"].with_body(structural_map(mod["f"].body, (tvm.ir.Call, widen)))})


def test_taps_not_contiguous_stay_dense() -> None:
    """The element format walks a window row as one run of kw * n values: a dilated window declines."""
    before = _wanted(_dilated(RunsExpected), {1: 4})
    after = SparseElements()(before)
    _tvm.assert_structural_equal(after["f"].body, before["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def test_a_parameter_read_otherwise_stays_dense() -> None:
    after = SparseElements()(_wanted(RunsExpected, {2: 4}))
    _tvm.assert_structural_equal(after["f"].body, RunsExpected["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(SparseElements(), _wanted(RunsExpected, {1: 4}))


@I.ir_module
class DenseBefore:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {"global_symbol": "f", "tvmmcu.dot_kernels": True, "tvmmcu.sparse_element_weights": {1: 6}}
        )
        X_1 = T.decl_buffer((40,), "int8", data=X)
        W_1 = T.decl_buffer((240,), "int8", data=W)
        Y_1 = T.decl_buffer((6,), "int32", data=Y)
        for j in range(6):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[0]), T.address_of(W_1[j * 40]), 40, acc[0]
            )
            Y_1[j] = acc[0]


@I.ir_module
class DenseExpected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.dot_kernels": True,
                "tvmmcu.sparse_element_weights": {1: 6},
                "tvmmcu.elements_done": True,
                "tvmmcu.sparse_elements": {1: 6},
            }
        )
        X_1 = T.decl_buffer((40,), "int8", data=X)
        W_1 = T.decl_buffer((240,), "int8", data=W)
        Y_1 = T.decl_buffer((6,), "int32", data=Y)
        for j in range(6):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            # The [6, 40] weights hold the element CSR blob; output j's row entries.
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_esparse_dot_blob_s8s8",
                T.address_of(X_1[0]),
                T.address_of(W_1[0]),
                6,
                j,
                acc[0],
            )
            Y_1[j] = acc[0]


def test_a_dense_layers_rows_visit_their_kept_weights() -> None:
    _tvm.assert_structural_equal(SparseElements()(DenseBefore), DenseExpected)


def test_a_dense_read_that_is_not_whole_rows_stays_dense() -> None:
    """Marked for 4 output channels, the 240 weights would be rows of 60, not the calls' 40."""
    before = tvm.IRModule({"f": DenseBefore["f"].with_attr(ATTR_WANTED, {1: 4})})
    after = SparseElements()(before)
    _tvm.assert_structural_equal(after["f"].body, before["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs
