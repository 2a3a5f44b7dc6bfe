"""SplitBorders: an output loop split where its windows' tap clamps change, constant in the interior."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import SplitBorders


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), C: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((24,), "int8", data=X)
        W_1 = T.decl_buffer((9,), "int8", data=W)
        C_1 = T.decl_buffer((6,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        # A 1x3 depthwise window along 6 pixels padded by one on each side (UseDotKernels' clamps).
        for x in range(6):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[x * 4 - 4 + T.min(T.max(0, 1 - x), 3) * 4]),
                0,
                4,
                T.address_of(W_1[0]),
                0,
                3,
                1,
                3,
                0,
                1,
                T.min(T.max(0, 1 - x), 3),
                T.max(T.min(3, 7 - x), T.min(T.max(0, 1 - x), 3)),
                -7,
                acc[0],
            )
            C_1[x] = acc[0]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), C: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.borders_split": True})
        X_1 = T.decl_buffer((24,), "int8", data=X)
        W_1 = T.decl_buffer((9,), "int8", data=W)
        C_1 = T.decl_buffer((6,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        # The left border (taps 1, 2 inside), the interior (all three), the right border (taps 0, 1).
        for x in range(1):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[x * 4 - 4 + T.Mul(1, 4)]),
                0,
                4,
                T.address_of(W_1[0]),
                0,
                3,
                1,
                3,
                0,
                1,
                1,
                3,
                -7,
                acc[0],
            )
            C_1[x] = acc[0]
        for x in range(1, 5):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[x * 4 - 4 + T.Mul(0, 4)]),
                0,
                4,
                T.address_of(W_1[0]),
                0,
                3,
                1,
                3,
                0,
                1,
                0,
                3,
                -7,
                acc[0],
            )
            C_1[x] = acc[0]
        for x in range(5, 6):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[x * 4 - 4 + T.Mul(0, 4)]),
                0,
                4,
                T.address_of(W_1[0]),
                0,
                3,
                1,
                3,
                0,
                1,
                0,
                2,
                -7,
                acc[0],
            )
            C_1[x] = acc[0]


def test_the_interior_calls_the_kernel_with_constant_taps() -> None:
    _tvm.assert_structural_equal(SplitBorders()(Before), Expected)


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        C: T.handle("int32", "global"),
        n: T.int32,
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((40,), "int8", data=W)
        C_1 = T.decl_buffer((8,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        # A window of 4 x 5 taps (more than WINDOW_UNROLL_TAPS): one general call, not nine copies.
        for x in range(6):
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[x + T.min(T.max(0, 1 - x), 5)]),
                8,
                1,
                T.address_of(W_1[0]),
                5,
                1,
                4,
                5,
                0,
                4,
                T.min(T.max(0, 1 - x), 5),
                T.max(T.min(5, 7 - x), T.min(T.max(0, 1 - x), 5)),
                -7,
                acc[0],
            )
            C_1[x] = acc[0]
        # A loop of unknown extent.
        for x in range(n):
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_s8s8",
                T.address_of(X_1[T.max(0, 1 - x)]),
                T.address_of(W_1[0]),
                3,
                acc[0],
            )
        # No clamp (a pointwise convolution's pixels).
        for x in range(6):
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[x * 8]), T.address_of(W_1[0]), 8, acc[0]
            )
            C_1[x] = acc[0]


def test_declines_large_windows_unknown_loops_and_no_clamps() -> None:
    after = SplitBorders()(Declined)
    _tvm.assert_structural_equal(after["f"].body, Declined["f"].body)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(SplitBorders(), Before)
