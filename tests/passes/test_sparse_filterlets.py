"""SparseFilterlets: the runs calls over weights stored sparse visit only their kept filterlets."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tests.passes.test_use_dot_kernels import RunsExpected
from tvm_mcu import _tvm
from tvm_mcu._tvm import tvm
from tvm_mcu.passes.tir import SparseFilterlets
from tvm_mcu.passes.tir.sparse_filterlets import ATTR_SPARSE, ATTR_WANTED


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
                "tvmmcu.sparse_weights": {1: 4},
                "tvmmcu.filterlets_done": True,
                "tvmmcu.sparse_filterlets": {1: 4},
            }
        )
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((36,), "int32", data=Y)
        for yy, xx, ff in T.grid(3, 3, 4):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            # The parameter holds the CSR blob; channel ff's filterlets, the same window.
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_sparse1p_blob_s8s8",
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


def test_runs_over_sparse_weights_visit_the_kept_filterlets() -> None:
    _tvm.assert_structural_equal(SparseFilterlets()(_wanted(RunsExpected, {1: 4})), Expected)


def test_functions_without_sparse_weights_are_unchanged() -> None:
    after = SparseFilterlets()(RunsExpected)
    _tvm.assert_structural_equal(after["f"].body, RunsExpected["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def test_a_parameter_read_otherwise_stays_dense() -> None:
    """All or nothing: the output buffer (position 2) is read by no runs call, so nothing is marked."""
    after = SparseFilterlets()(_wanted(RunsExpected, {2: 4}))
    _tvm.assert_structural_equal(after["f"].body, RunsExpected["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(SparseFilterlets(), _wanted(RunsExpected, {1: 4}))
