"""HoistScratchToWorkspace: place every operator-internal buffer in a caller-provided workspace."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import (
    AllocBuffer,
    DeclBuffer,
    PointerType,
    PrimFunc,
    PrimType,
    ptr_byte_offset,
    structural_map,
    structural_walk,
    tvm,
)
from tvm_mcu.passes.tir.each_function import Needs, check_needs

ATTR_BYTES = "tvmmcu.workspace_bytes"


def _nbytes(buf: Any) -> int:
    elems = int(np.prod([int(s) for s in buf.shape])) if len(buf.shape) else 1
    return elems * tvm.runtime.DataType(str(buf.dtype)).bits // 8


def _hoist(func: PrimFunc, align: int, max_local_bytes: int) -> PrimFunc:
    allocs: list[Any] = []

    def on_visit(alloc: Any) -> None:
        if _nbytes(alloc.buffer) > max_local_bytes:
            allocs.append(alloc.buffer)

    structural_walk(func.body, (AllocBuffer, on_visit))
    if not allocs:
        return func.with_attr(ATTR_BYTES, 0)
    workspace = tvm.ir.Var("workspace", PointerType(PrimType("uint8")))
    offsets: dict[Any, int] = {}
    cursor = 0
    for buf in allocs:
        offsets[buf] = cursor
        cursor += (_nbytes(buf) + align - 1) // align * align

    def on_alloc(alloc: Any) -> Any:
        if alloc.buffer not in offsets:
            return alloc
        ptr = ptr_byte_offset(workspace, offsets[alloc.buffer], str(alloc.buffer.dtype))
        return DeclBuffer(alloc.buffer, data=ptr)

    body = structural_map(func.body, (AllocBuffer, on_alloc))
    out = PrimFunc([*func.params, workspace], body, func.ret_type, func.attrs)
    return out.with_attr(ATTR_BYTES, cursor)


@tvm.transform.module_pass(opt_level=0, name="HoistScratchToWorkspace")
class HoistScratchToWorkspace:
    """Turn each operator's internal allocations into views of one ``uint8_t* workspace`` argument.

    A microcontroller has no heap to give an operator its scratch; microTVM asked a runtime for it
    (TVMBackendAllocWorkspace), which we do not have either. The workspace instead becomes a tensor
    of the static memory plan, live only while its operator runs.

    Matches
        unpacked PrimFuncs (after MakeUnpackedAPI) that allocate buffers in their body.
    Rewrites to
        a trailing ``uint8_t* workspace`` parameter; every ``AllocBuffer`` becomes a ``DeclBuffer`` at a
        fixed, ``align``-rounded byte offset in it. The total is recorded in the function attribute
        ``tvmmcu.workspace_bytes`` (0, and no extra parameter, when nothing is allocated).
        Allocations of at most ``max_local_bytes`` (accumulators compacted to one element by
        ScheduleForMcu) stay local variables: the C compiler keeps them in registers, and what they
        cost lands on the stack, which the runner measures.
    Declines when
        the function already carries ``tvmmcu.workspace_bytes``.
    Numerics
        unchanged. Buffers of one operator never overlap (StorageRewrite already merged the ones
        whose lifetimes allow it).
    Ordering
        after MakeUnpackedAPI and the lowering pipeline (StorageRewrite), before C code generation.
    """

    def __init__(self, *, align: int = 8, max_local_bytes: int = 16) -> None:
        self._align = align
        self._max_local_bytes = max_local_bytes

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out = mod.clone()
        for gv, func in mod.functions_items():
            if not isinstance(func, PrimFunc):
                continue
            if func.attrs is not None and ATTR_BYTES in func.attrs:
                continue
            needs = Needs((("tvmmcu.unpacked", "MakeUnpackedAPI"),))
            check_needs("HoistScratchToWorkspace", gv.name_hint, func, needs)
            out[gv] = _hoist(func, self._align, self._max_local_bytes)
        return out
