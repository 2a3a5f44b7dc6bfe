"""MakeUnpackedAPI: give lowered operator PrimFuncs a plain C calling convention."""

from __future__ import annotations

import re
from typing import Any

from tvm_mcu._tvm import (
    BufferType,
    PointerType,
    PrimFunc,
    PrimType,
    buffer_data_op,
    structural_map,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.each_function import Needs, check_needs

ATTR_DONE = "tvmmcu.unpacked"


def c_identifier(name: str) -> str:
    """``name`` as a C identifier: an imported tensor's name may hold any character (ONNX names such as
    ``/0/Conv_output_0`` reach the parameters through the frontend)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "p"
    return "_" + ident if ident[0].isdigit() else ident


def _unpack(func: PrimFunc, symbol: str) -> PrimFunc:
    params: list[Any] = []
    remap: dict[Any, Any] = {}
    for p in func.params:
        if isinstance(p.ty, BufferType):
            dtype = p.ty.dtype if isinstance(p.ty.dtype, PrimType) else PrimType(str(p.ty.dtype))
            ptr = tvm.ir.Var(c_identifier(str(p.name)), PointerType(dtype))
            remap[p] = ptr
            params.append(ptr)
        else:
            params.append(p)
    data_op = buffer_data_op()

    def on_call(call: Any) -> Any:
        if call.op.same_as(data_op) and call.args[0] in remap:
            return remap[call.args[0]]
        return call

    body = structural_map(func.body, (tvm.ir.Call, on_call))
    body = tirx.SeqStmt([body, tirx.Return(tirx.IntImm("int32", 0))])
    out = tirx.PrimFunc(params, body, PrimType("int32"), func.attrs)
    out = out.with_attr("global_symbol", symbol).with_attr(ATTR_DONE, True)
    if out.attrs is not None and "tirx.is_entry_func" in out.attrs:
        # CodeGenCHost would append a __tvm_ffi_main wrapper for an entry function.
        out = out.without_attr("tirx.is_entry_func")
    return out


@tvm.transform.module_pass(opt_level=0, name="MakeUnpackedAPI")
class MakeUnpackedAPI:
    """Give every lowered PrimFunc the calling convention ``int32_t f(T0* a, T1* b, ...)``.

    TVM 0.27 removed MakeUnpackedAPI (and microTVM with it); its only calling convention is the packed
    FFI one, which needs TVM's runtime headers. A microcontroller wants plain C.

    Matches
        lowered PrimFuncs (flattened buffers, no s_tir blocks) whose parameters are buffers.
    Rewrites to
        one typed pointer parameter per buffer, in the same order; ``return 0`` at the end; the
        function's ``global_symbol`` set to ``prefix + name``; ``tirx.is_entry_func`` dropped.
    Declines when
        the function is already unpacked (attribute ``tvmmcu.unpacked``).
    Numerics
        unchanged.
    Ordering
        after the lowering pipeline (FlattenBuffer must have run), before HoistScratchToWorkspace and C
        code generation.
    """

    def __init__(self, *, prefix: str = "") -> None:
        self._prefix = prefix

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if not isinstance(func, PrimFunc):
                continue
            if func.attrs is not None and ATTR_DONE in func.attrs:
                continue
            check_needs("MakeUnpackedAPI", gv.name_hint, func, Needs(flat=True))
            out[gv] = _unpack(func, self._prefix + gv.name_hint)
        return out
