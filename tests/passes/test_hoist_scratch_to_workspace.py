"""HoistScratchToWorkspace: operator scratch becomes views of one workspace argument."""

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu._tvm import assert_structural_equal, build_c_source
from tvm_mcu.passes.tir.hoist_scratch_to_workspace import HoistScratchToWorkspace


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("float32", "global"), C: T.handle("float32", "global")) -> T.int32:
        T.func_attr({"global_symbol": "f", "tvmmcu.unpacked": True})
        t = T.alloc_buffer((32,))
        acc = T.alloc_buffer((1,))
        A_1 = T.decl_buffer((32,), data=A)
        C_1 = T.decl_buffer((1,), data=C)
        for i in range(32):
            t[i] = A_1[i] * T.float32(2)
        acc[0] = T.float32(0)
        for i in range(32):
            acc[0] = acc[0] + t[i]
        C_1[0] = acc[0]
        return 0


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        A: T.handle("float32", "global"),
        C: T.handle("float32", "global"),
        workspace: T.handle("uint8", "global"),
    ) -> T.int32:
        T.func_attr({"global_symbol": "f", "tvmmcu.unpacked": True, "tvmmcu.workspace_bytes": 128})
        t = T.decl_buffer((32,), data=T.ptr_byte_offset(workspace, 0, T.type_annotation("float32")))
        acc = T.alloc_buffer((1,))
        A_1 = T.decl_buffer((32,), data=A)
        C_1 = T.decl_buffer((1,), data=C)
        for i in range(32):
            t[i] = A_1[i] * T.float32(2)
        acc[0] = T.float32(0)
        for i in range(32):
            acc[0] = acc[0] + t[i]
        C_1[0] = acc[0]
        return 0


@I.ir_module
class NoScratch:
    @T.prim_func(s_tir=True)
    def g(A: T.handle("float32", "global"), C: T.handle("float32", "global")) -> T.int32:
        T.func_attr({"global_symbol": "g", "tvmmcu.unpacked": True})
        A_1 = T.decl_buffer((8,), data=A)
        C_1 = T.decl_buffer((8,), data=C)
        for i in range(8):
            C_1[i] = A_1[i]
        return 0


def test_large_scratch_moves_to_workspace_small_stays_local():
    after = HoistScratchToWorkspace(align=8, max_local_bytes=16)(Before)
    assert_structural_equal(after, Expected)


def test_workspace_offsets_are_aligned_and_summed():
    after = HoistScratchToWorkspace(align=64, max_local_bytes=0)(Before)
    # t: 128 B at 0, acc: 4 B rounded up to 64 at 128
    assert int(after["f"].attrs["tvmmcu.workspace_bytes"]) == 192
    src = build_c_source(after)
    assert "(((char*)workspace) + 128)" in src


def test_declines_when_nothing_is_allocated():
    after = HoistScratchToWorkspace()(NoScratch)
    assert len(after["g"].params) == 2
    assert int(after["g"].attrs["tvmmcu.workspace_bytes"]) == 0


def test_idempotent_and_input_untouched():
    assert_idempotent_and_pure(HoistScratchToWorkspace(), Before)
