"""HoistReductionInit: an accumulator is initialised before its reduction loops, not behind a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import tirx as T

from tests import host
from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm, pipeline
from tvm_mcu.passes.tir import HoistReductionInit
from tvm_mcu.passes.tir.row_bands import split_rows


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("float32", "global"), C: T.handle("float32", "global")):
        T.func_attr({"global_symbol": "f"})
        A_1 = T.decl_buffer((24,), data=A)
        C_1 = T.decl_buffer((8,), data=C)
        acc = T.alloc_buffer((1,))
        top = T.alloc_buffer((4,))
        for i in range(4):
            for r0 in range(2):
                for r1 in range(3):
                    if T.And(r0 == 0, r1 == 0):
                        acc[0] = T.float32(0)
                    acc[0] = acc[0] + A_1[i * 6 + r0 * 3 + r1]
            C_1[i] = acc[0]
        # A max over one loop, the accumulator indexed by the loop around it.
        for c in range(4):
            for k in range(6):
                if k == 0:
                    top[c] = T.float32(-3.4e38)
                top[c] = T.max(top[c], A_1[c * 6 + k])
            C_1[c + 4] = top[c]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("float32", "global"), C: T.handle("float32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.reduction_init_hoisted": True})
        A_1 = T.decl_buffer((24,), data=A)
        C_1 = T.decl_buffer((8,), data=C)
        acc = T.alloc_buffer((1,))
        top = T.alloc_buffer((4,))
        for i in range(4):
            acc[0] = T.float32(0)
            for r0 in range(2):
                for r1 in range(3):
                    acc[0] = acc[0] + A_1[i * 6 + r0 * 3 + r1]
            C_1[i] = acc[0]
        for c in range(4):
            top[c] = T.float32(-3.4e38)
            for k in range(6):
                top[c] = T.max(top[c], A_1[c * 6 + k])
            C_1[c + 4] = top[c]


def test_the_init_moves_before_the_loops_it_tested() -> None:
    _tvm.assert_structural_equal(HoistReductionInit()(Before), Expected)


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("float32", "global"), C: T.handle("float32", "global"), n: T.int32):
        T.func_attr({"global_symbol": "f"})
        A_1 = T.decl_buffer((24,), data=A)
        C_1 = T.decl_buffer((24,), data=C)
        acc = T.alloc_buffer((6,))
        # The test covers the outer loop only: the init runs once per inner iteration of the first row.
        for r0 in range(2):
            for r1 in range(3):
                if r0 == 0:
                    acc[r1] = T.float32(0)
                acc[r1] = acc[r1] + A_1[r0 * 3 + r1]
        # The store's index uses a loop of the nest.
        for r0 in range(2):
            for r1 in range(3):
                if T.And(r0 == 0, r1 == 0):
                    acc[r1] = T.float32(0)
                acc[0] = acc[0] + A_1[r0 * 3 + r1]
        # The value reads memory (the loop might change it).
        for r0 in range(3):
            if r0 == 0:
                acc[0] = C_1[0]
            C_1[0] = C_1[0] + A_1[r0]
        # A loop that may run no iteration.
        for r0 in range(n):
            if r0 == 0:
                acc[0] = T.float32(0)
            acc[0] = acc[0] + A_1[r0]
        # The test is against another value than the loop's start.
        for r0 in range(3):
            if r0 == 1:
                acc[0] = T.float32(0)
            acc[0] = acc[0] + A_1[r0]
        C_1[0] = acc[0]


def test_declines_what_it_cannot_prove_equal() -> None:
    after = HoistReductionInit()(Declined)
    _tvm.assert_structural_equal(after["f"].body, Declined["f"].body)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(HoistReductionInit(), Before)


def _first_iteration_inits(mod: tvm.IRModule) -> int:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node.then_case, _tvm.tirx.BufferStore) and isinstance(
            node.condition, _tvm.tirx.EQ | _tvm.tirx.And
        ):
            found.append(node)

    for _, func in mod.functions_items():
        _tvm.structural_walk(func.body, (_tvm.tirx.IfThenElse, visit))
    return len(found)


def _conv_pool_strided() -> Any:
    """3x3 conv + bias -> 2x1 max pool -> grouped 1x1 conv of stride 3 (a fuzzer's find): in row bands
    the schedule cannot decompose the conv's and the pool's reductions (their bindings are not affine),
    and GCC warned the accumulators "may be used uninitialized"."""
    from tvm import te, topi

    x = te.placeholder((1, 3, 7, 3), "float32", name="x")
    w1 = te.placeholder((4, 3, 3, 3), "float32", name="w1")
    b1 = te.placeholder((1, 4, 1, 1), "float32", name="b1")
    w2 = te.placeholder((4, 1, 1, 1), "float32", name="w2")
    y = topi.add(topi.nn.conv2d_nchw(x, w1, 1, 0, 1), b1)
    y = topi.nn.pool2d(y, (2, 1), (1, 1), (1, 1), (0, 0, 0, 0), "max", layout="NCHW")
    y = topi.nn.group_conv2d_nchw(y, w2, (3, 1), 0, 1, 4)
    return te.create_prim_func([x, w1, b1, w2, y])


def test_row_band_accumulators_are_initialised_outside_their_loops(tmp_path: Path) -> None:
    """Without the pass the lowered chain tests the first iteration inside its reduction loops; with it
    no loop does, and the chain stays bit-exact."""
    from tests.passes.test_row_bands import _arrays, _reference

    func = _conv_pool_strided()
    banded = tvm.IRModule({"main": split_rows(func, 2)})
    passes = pipeline.operator_passes(symbol_prefix="k_")
    without = [p for p in passes if p.info.name != "HoistReductionInit"]
    assert len(without) == len(passes) - 1
    assert _first_iteration_inits(pipeline.run(without, banded)) == 2
    lowered = pipeline.run(passes, banded)
    assert _first_iteration_inits(lowered) == 0
    fn, ws = host.build_kernel(lowered, tmp_path, "k_main")
    arrays = _arrays(func)
    out = np.zeros([int(d) for d in func.params[-1].ty.shape], np.float32)
    host.call_kernel(fn, [*arrays, out], ws)
    np.testing.assert_array_equal(out, _reference(func, arrays))
