"""The module-level loop the PrimFunc-at-a-time passes share."""

from __future__ import annotations

from collections.abc import Callable

from tvm_mcu._tvm import PrimFunc, tvm


def rewrite_each(mod: tvm.IRModule, done: str, rewrite: Callable[[PrimFunc], PrimFunc]) -> tvm.IRModule:
    """``mod`` with ``rewrite`` applied to every PrimFunc not marked ``done`` (the rewrite marks it):
    running a pass twice changes nothing the second time, and the input module is left untouched."""
    out = mod.clone()
    for gv, func in mod.functions_items():
        if not isinstance(func, PrimFunc) or (func.attrs is not None and done in func.attrs):
            continue
        out[gv] = rewrite(func)
    return out
