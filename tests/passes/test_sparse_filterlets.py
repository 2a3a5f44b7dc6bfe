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
        # The layer's tap offsets and four padding rows 8 bytes apart (3 * 8 + 8 bytes); a pointer per
        # tap, then four staged pixels 8 bytes apart for each of the 7 taps a block copies at most (the
        # first block: 8 taps inside for some pixel, of which tap (1, 1) for all four, ps apart).
        sparse_state = T.alloc_buffer((18,), "int32")
        sparse_windows = T.alloc_buffer((296,), "uint8")
        T.call_extern("int32", "tvmmcu_sparse_setup", T.address_of(sparse_state[0]), 3, 3, 24, 8, 8, 8, -3)
        # The 3x3 output's pixels 0-3 and 4-7 (blocks across rows, their windows ps bytes apart).
        for pb in range(2):
            aligned: T.let[T.int32] = T.call_extern(
                "int32",
                "tvmmcu_sparse_stage",
                T.address_of(sparse_windows[0]),
                T.address_of(X_1[0]),
                pb * 4 // 3 * 24 + pb % 3 * 8 - 32,
                pb * 32 - 24,
                pb * 32 - 16,
                pb * 4 // 3 * 24 + pb % 3 * 8 - 8,
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - pb * 4 // 3), 3),
                    T.min(T.max(4 - pb * 4 // 3, T.max(0, 1 - pb * 4 // 3)), 3),
                    T.max(0, 1 - pb % 3),
                    T.min(3, 4 - pb % 3),
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - (pb * 4 + 1) // 3), 3),
                    T.min(T.max(4 - (pb * 4 + 1) // 3, T.max(0, 1 - (pb * 4 + 1) // 3)), 3),
                    T.max(0, 1 - (pb * 4 + 1) % 3),
                    T.min(3, 4 - (pb * 4 + 1) % 3),
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - (pb * 4 + 2) // 3), 3),
                    T.min(T.max(4 - (pb * 4 + 2) // 3, T.max(0, 1 - (pb * 4 + 2) // 3)), 3),
                    T.max(0, 1 - (pb * 4 + 2) % 3),
                    T.min(3, 4 - (pb * 4 + 2) % 3),
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 0 - pb * 4 // 3), 3),
                    T.min(T.max(3 - pb * 4 // 3, T.max(0, 0 - pb * 4 // 3)), 3),
                    T.max(0, 1 - pb % 3),
                    T.min(3, 4 - pb % 3),
                    3,
                ),
                T.address_of(sparse_state[0]),
                9,
                8,
                8,
            )
            for ff in range(4):
                acc4 = T.alloc_buffer((4,), "int32")
                acc4[0] = 0
                acc4[1] = 0
                acc4[2] = 0
                acc4[3] = 0
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse4p_blob_s8s8",
                    T.address_of(sparse_windows[0]),
                    aligned,
                    8,
                    T.address_of(W_1[0]),
                    4,
                    ff,
                    8,
                    T.address_of(acc4[0]),
                )
                for p in T.unroll(4):
                    Y_1[(pb * 4 + p) // 3 * 12 + (pb * 4 + p) % 3 * 4 + ff] = acc4[p]
        # The last four pixels (5-8) again, only pixel 8 stored.
        aligned: T.let[T.int32] = T.call_extern(
            "int32",
            "tvmmcu_sparse_stage",
            T.address_of(sparse_windows[0]),
            T.address_of(X_1[0]),
            8,
            16,
            24,
            32,
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 3, 0, 2, 3),
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 2, 1, 3, 3),
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 2, 0, 3, 3),
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 2, 0, 2, 3),
            T.address_of(sparse_state[0]),
            9,
            8,
            8,
        )
        for ff in range(4):
            acc4 = T.alloc_buffer((4,), "int32")
            acc4[0] = 0
            acc4[1] = 0
            acc4[2] = 0
            acc4[3] = 0
            T.call_extern(
                "int32",
                "tvmmcu_sparse4p_blob_s8s8",
                T.address_of(sparse_windows[0]),
                aligned,
                8,
                T.address_of(W_1[0]),
                4,
                ff,
                8,
                T.address_of(acc4[0]),
            )
            for p in T.unroll(3, 4):
                Y_1[(p + 5) // 3 * 12 + (p + 2) % 3 * 4 + ff] = acc4[p]


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


@I.ir_module
class OneRowOfThree:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((12,), "int32", data=Y)
        for yy, xx, ff in T.grid(1, 3, 4):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_runs_s8s8",
                T.address_of(X_1[24 * (yy - 1) + 8 * (xx - 1) + T.min(T.max(0, 1 - xx), 3) * 8 + 24]),
                24,
                8,
                T.address_of(W_1[ff * 72]),
                24,
                8,
                3,
                3,
                8,
                1,
                3,
                T.min(T.max(0, 1 - xx), 3),
                T.max(T.min(3, 4 - xx), T.min(T.max(0, 1 - xx), 3)),
                -3,
                acc[0],
            )
            Y_1[xx * 4 + ff] = acc[0]


def test_fewer_than_four_pixels_stay_one_at_a_time() -> None:
    """Declines the blocks (not the sparse calls) when the output has no block of four pixels."""
    after = SparseFilterlets()(_wanted(OneRowOfThree, {1: 4}))
    script = after.script()
    assert "tvmmcu_sparse1p_blob_s8s8" in script
    assert "tvmmcu_sparse4p" not in script and "tvmmcu_sparse_stage" not in script
    assert dict(after["f"].attrs[ATTR_SPARSE]) == {1: 4}


@I.ir_module
class RowBand:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((144,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((48,), "int32", data=Y)
        for r in range(2):
            for xx, ff in T.grid(6, 4):
                acc = T.alloc_buffer((1,), "int32")
                acc[0] = 0
                acc[0] = T.call_extern(
                    "int32",
                    "tvmmcu_dot_runs_s8s8",
                    T.address_of(
                        X_1[8 * (xx - 1) + T.min(T.max(0, 1 - r), 3) * 48 + T.min(T.max(0, 1 - xx), 3) * 8]
                    ),
                    48,
                    8,
                    T.address_of(W_1[ff * 72]),
                    24,
                    8,
                    3,
                    3,
                    8,
                    T.min(T.max(0, 1 - r), 3),
                    T.max(T.min(3, 4 - r), T.min(T.max(0, 1 - r), 3)),
                    T.min(T.max(0, 1 - xx), 3),
                    T.max(T.min(3, 7 - xx), T.min(T.max(0, 1 - xx), 3)),
                    -3,
                    acc[0],
                )
                Y_1[r * 24 + xx * 4 + ff] = acc[0]
            Y_1[47] = 0


@I.ir_module
class RowBandExpected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.dot_kernels": True,
                "tvmmcu.filterlets_done": True,
                "tvmmcu.sparse_filterlets": {1: 4},
                "tvmmcu.sparse_weights": {1: 4},
            }
        )
        X_1 = T.decl_buffer((144,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((48,), "int32", data=Y)
        for r in range(2):
            # Set up per row (a row band's step): offsets, four padding rows; the 3 taps of a border
            # column a block copies at most (ps = 8 bytes).
            sparse_state = T.alloc_buffer((18,), "int32")
            sparse_windows = T.alloc_buffer((168,), "uint8")
            T.call_extern(
                "int32", "tvmmcu_sparse_setup", T.address_of(sparse_state[0]), 3, 3, 48, 8, 8, 8, -3
            )
            for pb in range(1):
                aligned: T.let[T.int32] = T.call_extern(
                    "int32",
                    "tvmmcu_sparse_stage",
                    T.address_of(sparse_windows[0]),
                    T.address_of(X_1[0]),
                    pb * 32 - 8,
                    pb * 32,
                    pb * 32 + 8,
                    pb * 32 + 16,
                    T.call_extern(
                        "int32",
                        "tvmmcu_sparse_inside",
                        T.min(T.max(0, 1 - r), 3),
                        T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                        T.min(T.max(0, 1 - pb * 4), 3),
                        T.min(T.max(7 - pb * 4, T.max(0, 1 - pb * 4)), 3),
                        3,
                    ),
                    T.call_extern(
                        "int32",
                        "tvmmcu_sparse_inside",
                        T.min(T.max(0, 1 - r), 3),
                        T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                        T.min(T.max(0, pb * -4), 3),
                        T.min(T.max(6 - pb * 4, T.max(0, pb * -4)), 3),
                        3,
                    ),
                    T.call_extern(
                        "int32",
                        "tvmmcu_sparse_inside",
                        T.min(T.max(0, 1 - r), 3),
                        T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                        T.min(T.max(0, 0 - pb * 4 - 1), 3),
                        T.min(T.max(5 - pb * 4, T.max(0, 0 - pb * 4 - 1)), 3),
                        3,
                    ),
                    T.call_extern(
                        "int32",
                        "tvmmcu_sparse_inside",
                        T.min(T.max(0, 1 - r), 3),
                        T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                        T.min(T.max(0, 0 - pb * 4 - 2), 3),
                        T.min(T.max(4 - pb * 4, T.max(0, 0 - pb * 4 - 2)), 3),
                        3,
                    ),
                    T.address_of(sparse_state[0]),
                    9,
                    8,
                    8,
                )
                for ff in range(4):
                    acc4 = T.alloc_buffer((4,), "int32")
                    acc4[0] = 0
                    acc4[1] = 0
                    acc4[2] = 0
                    acc4[3] = 0
                    T.call_extern(
                        "int32",
                        "tvmmcu_sparse4p_blob_s8s8",
                        T.address_of(sparse_windows[0]),
                        aligned,
                        8,
                        T.address_of(W_1[0]),
                        4,
                        ff,
                        8,
                        T.address_of(acc4[0]),
                    )
                    for p in T.unroll(4):
                        Y_1[r * 24 + (pb * 4 + p) * 4 + ff] = acc4[p]
            # The row's last four pixels (2-5), pixels 4 and 5 stored.
            aligned: T.let[T.int32] = T.call_extern(
                "int32",
                "tvmmcu_sparse_stage",
                T.address_of(sparse_windows[0]),
                T.address_of(X_1[0]),
                8,
                16,
                24,
                32,
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - r), 3),
                    T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                    0,
                    3,
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - r), 3),
                    T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                    0,
                    3,
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - r), 3),
                    T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                    0,
                    3,
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - r), 3),
                    T.min(T.max(4 - r, T.max(0, 1 - r)), 3),
                    0,
                    2,
                    3,
                ),
                T.address_of(sparse_state[0]),
                9,
                8,
                8,
            )
            for ff in range(4):
                acc4 = T.alloc_buffer((4,), "int32")
                acc4[0] = 0
                acc4[1] = 0
                acc4[2] = 0
                acc4[3] = 0
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse4p_blob_s8s8",
                    T.address_of(sparse_windows[0]),
                    aligned,
                    8,
                    T.address_of(W_1[0]),
                    4,
                    ff,
                    8,
                    T.address_of(acc4[0]),
                )
                for p in T.unroll(2, 4):
                    Y_1[r * 24 + (2 + p) * 4 + ff] = acc4[p]
            Y_1[47] = 0


def test_a_row_band_step_takes_four_pixels_of_its_row_per_call() -> None:
    """A ``for xx: for o`` nest inside a row loop with other work (a row band's step, its rows' taps set
    outside): blocks of four pixels of the row, the row's last four again for the two left over."""
    _tvm.assert_structural_equal(SparseFilterlets()(_wanted(RowBand, {1: 4})), RowBandExpected)
