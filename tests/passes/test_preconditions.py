"""A pass given a function it cannot take yet says which pass must run first (PassOrderError, which
TVM's pass machinery hands back as the message of its own error), instead of declining silently or
failing deep inside TVM: MakeUnpackedAPI on a function still in s_tir blocks, HoistScratchToWorkspace
before MakeUnpackedAPI, UseDotKernels on multi-dimensional buffers."""

from __future__ import annotations

import pytest

from tvm_mcu._tvm import te, tvm
from tvm_mcu.errors import PassOrderError
from tvm_mcu.passes.tir import HoistReductionInit, HoistScratchToWorkspace, MakeUnpackedAPI, UseDotKernels


def _unlowered() -> tvm.IRModule:
    """A 4x8 by 8 reduction as ``te.create_prim_func`` gives it: s_tir blocks, 2-D buffers."""
    a = te.placeholder((4, 8), "int8", name="a")
    k = te.reduce_axis((0, 8), name="k")
    b = te.compute((4,), lambda i: te.sum(a[i, k].astype("int32"), axis=k), name="b")
    return tvm.IRModule({"f": te.create_prim_func([a, b])})


@pytest.mark.parametrize(
    ("make", "needs"),
    [
        (MakeUnpackedAPI, r"MakeUnpackedAPI needs LowerOpaqueBlock and FlattenBuffer .* on 'f' first"),
        (UseDotKernels, r"UseDotKernels needs LowerOpaqueBlock and FlattenBuffer"),
        (HoistReductionInit, r"HoistReductionInit needs LowerOpaqueBlock and FlattenBuffer"),
        (
            HoistScratchToWorkspace,
            r"HoistScratchToWorkspace needs MakeUnpackedAPI \(attribute tvmmcu.unpacked\)",
        ),
    ],
    ids=["MakeUnpackedAPI", "UseDotKernels", "HoistReductionInit", "HoistScratchToWorkspace"],
)
def test_a_pass_out_of_order_names_what_must_run_first(make: type, needs: str) -> None:
    with pytest.raises((PassOrderError, RuntimeError), match=needs):
        make()(_unlowered())


def test_the_same_function_lowered_first_is_taken() -> None:
    """After TVM's lowering (blocks gone, buffers flat) the same function passes every check."""
    from tvm_mcu import pipeline

    lowered = tvm.transform.Sequential(pipeline.lowering_passes())(_unlowered())
    unpacked = MakeUnpackedAPI(prefix="my_")(lowered)
    assert unpacked["f"].attrs["global_symbol"] == "my_f"
    hoisted = HoistScratchToWorkspace(align=8)(unpacked)
    assert "tvmmcu.workspace_bytes" in hoisted["f"].attrs
