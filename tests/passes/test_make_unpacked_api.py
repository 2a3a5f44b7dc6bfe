"""MakeUnpackedAPI: buffer parameters become typed pointers, ``return 0`` is appended."""

import pytest
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu._tvm import assert_structural_equal, build_c_source, structural_equal
from tvm_mcu.passes.tir.make_unpacked_api import MakeUnpackedAPI


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def add(A: T.Buffer((4, 8), "float32"), B: T.Buffer((8,), "float32"), C: T.Buffer((4, 8), "float32")):
        T.func_attr({"tirx.noalias": True})
        A_1 = A.view(32)
        B_1 = T.decl_buffer((8,), data=B.data)
        C_1 = C.view(32)
        for i, j in T.grid(4, 8):
            C_1[i * 8 + j] = A_1[i * 8 + j] + B_1[j]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def add(
        A: T.handle("float32", "global"), B: T.handle("float32", "global"), C: T.handle("float32", "global")
    ) -> T.int32:
        T.func_attr({"global_symbol": "op_add", "tirx.noalias": True, "tvmmcu.unpacked": True})
        A_1 = T.decl_buffer((32,), data=A)
        B_1 = T.decl_buffer((8,), data=B)
        C_1 = T.decl_buffer((32,), data=C)
        for i, j in T.grid(4, 8):
            C_1[i * 8 + j] = A_1[i * 8 + j] + B_1[j]
        return 0


def test_buffers_become_typed_pointers():
    after = MakeUnpackedAPI(prefix="op_")(Before)
    assert_structural_equal(after, Expected)


def test_generated_c_has_plain_signature_and_no_runtime():
    src = build_c_source(MakeUnpackedAPI(prefix="op_")(Before))
    assert "int32_t op_add(float* A, float* B, float* C)" in src
    assert "TVMFFI" not in src.replace('#include "tvm/ffi', "") and "DLTensor" not in src


def test_idempotent_and_input_untouched():
    assert_idempotent_and_pure(MakeUnpackedAPI(prefix="op_"), Before)


def test_declines_already_unpacked_module():
    after = MakeUnpackedAPI(prefix="other_")(Expected)
    assert structural_equal(after, Expected)
    assert str(after["add"].attrs["global_symbol"]) == "op_add"


@pytest.mark.parametrize("prefix", ["", "tvmmcu_op_"], ids=["no-prefix", "tvmmcu-prefix"])
def test_symbol_prefix(prefix):
    after = MakeUnpackedAPI(prefix=prefix)(Before)
    assert str(after["add"].attrs["global_symbol"]) == prefix + "add"
