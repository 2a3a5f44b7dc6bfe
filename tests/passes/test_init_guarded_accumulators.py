"""InitGuardedAccumulators: an accumulator that only guarded code initialises gets its value where it is
allocated (GCC's -Wmaybe-uninitialized), and nothing else changes."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import InitGuardedAccumulators


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("int32", "global"), C: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        A_1 = T.decl_buffer((12,), "int32", data=A)
        C_1 = T.decl_buffer((4,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        wide = T.alloc_buffer((2,), "int32")
        # Slices of 2 channels over 3: the second slice's second channel is past the end.
        for s, c in T.grid(2, 2):
            if s * 2 + c < 3:
                acc[0] = 0
            for k in range(4):
                if s * 2 + c < 3:
                    acc[0] = acc[0] + A_1[(s * 2 + c) * 4 + k]
            if s * 2 + c < 3:
                C_1[s * 2 + c] = acc[0]
        # Not one element: left as it is.
        for c in range(2):
            if c < 1:
                wide[c] = 0
            C_1[3] = wide[0]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("int32", "global"), C: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.guarded_accumulators_initialised": True})
        A_1 = T.decl_buffer((12,), "int32", data=A)
        C_1 = T.decl_buffer((4,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        acc[0] = 0
        wide = T.alloc_buffer((2,), "int32")
        for s, c in T.grid(2, 2):
            if s * 2 + c < 3:
                acc[0] = 0
            for k in range(4):
                if s * 2 + c < 3:
                    acc[0] = acc[0] + A_1[(s * 2 + c) * 4 + k]
            if s * 2 + c < 3:
                C_1[s * 2 + c] = acc[0]
        for c in range(2):
            if c < 1:
                wide[c] = 0
            C_1[3] = wide[0]


def test_the_accumulator_gets_its_init_at_its_allocation() -> None:
    _tvm.assert_structural_equal(InitGuardedAccumulators()(Before), Expected)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(InitGuardedAccumulators(), Before)
