"""ScheduleForMcu: inline elementwise blocks, compute epilogues under reductions, hoist accumulator inits."""

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu._tvm import assert_structural_equal
from tvm_mcu.passes.tir.schedule_for_mcu import ScheduleForMcu


@I.ir_module
class AddRelu:
    @T.prim_func(private=True, s_tir=True)
    def main(A: T.Buffer((4, 8), "float32"), B: T.Buffer((8,), "float32"), C: T.Buffer((4, 8), "float32")):
        T.func_attr({"tirx.noalias": True})
        t = T.sblock_alloc_buffer((4, 8))
        for i, j in T.grid(4, 8):
            with T.sblock("add"):
                vi, vj = T.axis.remap("SS", [i, j])
                t[vi, vj] = A[vi, vj] + B[vj]
        for i, j in T.grid(4, 8):
            with T.sblock("relu"):
                vi, vj = T.axis.remap("SS", [i, j])
                C[vi, vj] = T.max(t[vi, vj], T.float32(0))


@I.ir_module
class AddReluExpected:
    @T.prim_func(private=True, s_tir=True)
    def main(A: T.Buffer((4, 8), "float32"), B: T.Buffer((8,), "float32"), C: T.Buffer((4, 8), "float32")):
        T.func_attr({"tirx.noalias": True, "tvmmcu.scheduled": True})
        for i, j in T.grid(4, 8):
            with T.sblock("relu"):
                vi, vj = T.axis.remap("SS", [i, j])
                T.reads(A[vi, vj], B[vj])
                T.writes(C[vi, vj])
                C[vi, vj] = T.max(A[vi, vj] + B[vj], T.float32(0.0))


@I.ir_module
class MatmulBias:
    @T.prim_func(private=True, s_tir=True)
    def main(
        A: T.Buffer((2, 16), "float32"),
        W: T.Buffer((16, 4), "float32"),
        B: T.Buffer((4,), "float32"),
        C: T.Buffer((2, 4), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        acc = T.sblock_alloc_buffer((2, 4))
        for i, j, k in T.grid(2, 4, 16):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    acc[vi, vj] = T.float32(0)
                acc[vi, vj] = acc[vi, vj] + A[vi, vk] * W[vk, vj]
        for i, j in T.grid(2, 4):
            with T.sblock("bias"):
                vi, vj = T.axis.remap("SS", [i, j])
                C[vi, vj] = acc[vi, vj] + B[vj]


@I.ir_module
class MatmulBiasExpected:
    @T.prim_func(private=True, s_tir=True)
    def main(
        A: T.Buffer((2, 16), "float32"),
        W: T.Buffer((16, 4), "float32"),
        B: T.Buffer((4,), "float32"),
        C: T.Buffer((2, 4), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tvmmcu.scheduled": True})
        acc = T.sblock_alloc_buffer((2, 4))
        for i, j in T.grid(2, 4):
            with T.sblock("matmul_init"):
                vi, vj = T.axis.remap("SS", [i, j])
                T.reads()
                T.writes(acc[vi, vj])
                acc[vi, vj] = T.float32(0)
            for k in range(16):
                with T.sblock("matmul_update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    T.reads(acc[vi, vj], A[vi, vk], W[vk, vj])
                    T.writes(acc[vi, vj])
                    acc[vi, vj] = acc[vi, vj] + A[vi, vk] * W[vk, vj]
            with T.sblock("bias"):
                vi, vj = T.axis.remap("SS", [i, j])
                T.reads(acc[vi, vj], B[vj])
                T.writes(C[vi, vj])
                C[vi, vj] = acc[vi, vj] + B[vj]


@I.ir_module
class Softmax:
    """The normalisation reads the max and sum along the reduced axis: nothing can be inlined."""

    @T.prim_func(private=True, s_tir=True)
    def main(A: T.Buffer((1, 8), "float32"), C: T.Buffer((1, 8), "float32")):
        T.func_attr({"tirx.noalias": True})
        mx = T.sblock_alloc_buffer((1,))
        s = T.sblock_alloc_buffer((1,))
        for i, k in T.grid(1, 8):
            with T.sblock("max"):
                vi, vk = T.axis.remap("SR", [i, k])
                with T.init():
                    mx[vi] = T.float32(-3.4e38)
                mx[vi] = T.max(mx[vi], A[vi, vk])
        for i, k in T.grid(1, 8):
            with T.sblock("sum"):
                vi, vk = T.axis.remap("SR", [i, k])
                with T.init():
                    s[vi] = T.float32(0)
                s[vi] = s[vi] + T.exp(A[vi, vk] - mx[vi])
        for i, j in T.grid(1, 8):
            with T.sblock("norm"):
                vi, vj = T.axis.remap("SS", [i, j])
                C[vi, vj] = T.exp(A[vi, vj] - mx[vi]) / s[vi]


def _run(mod, *arrays):
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _private_to_public(mod):
    return tvm.IRModule({"main": mod["main"].with_attr("global_symbol", "main")})


@pytest.mark.parametrize(
    "before,expected",
    [(AddRelu, AddReluExpected), (MatmulBias, MatmulBiasExpected)],
    ids=["inline", "epilogue"],
)
def test_structure(before, expected):
    assert_structural_equal(ScheduleForMcu()(before), expected)


@pytest.mark.parametrize("mod", [AddRelu, MatmulBias, Softmax], ids=["add-relu", "matmul-bias", "softmax"])
def test_numerics_unchanged(mod):
    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32") for p in mod["main"].params]
    want = _run(_private_to_public(mod), *[a.copy() for a in args])
    got = _run(_private_to_public(ScheduleForMcu()(mod)), *[a.copy() for a in args])
    np.testing.assert_array_equal(got, want)


def test_declines_blocks_that_cannot_move():
    after = ScheduleForMcu()(Softmax)
    names = []
    tvm_ffi_walk = __import__("tvm_ffi").structural_walk
    tvm_ffi_walk(after["main"].body, (tvm.s_tir.SBlock, lambda b: names.append(b.name_hint)))
    # max, sum and norm all stay (only their inits are hoisted out of the reduction loops)
    assert {"max_update", "sum_update", "norm"} <= set(names)


def test_idempotent_and_input_untouched():
    assert_idempotent_and_pure(ScheduleForMcu(), MatmulBias)
