"""What the PrimFunc-at-a-time passes share: the module-level loop, copying statements SSA-clean."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm_mcu._tvm import PrimFunc, structural_map, structural_walk, tirx, tvm


def rewrite_each(mod: tvm.IRModule, done: str, rewrite: Callable[[PrimFunc], PrimFunc]) -> tvm.IRModule:
    """``mod`` with ``rewrite`` applied to every PrimFunc not marked ``done`` (the rewrite marks it):
    running a pass twice changes nothing the second time, and the input module is left untouched."""
    out = mod.clone()
    for gv, func in mod.functions_items():
        if not isinstance(func, PrimFunc) or (func.attrs is not None and done in func.attrs):
            continue
        out[gv] = rewrite(func)
    return out


def substitute(node: Any, var: Any, value: Any) -> Any:
    """``node`` with ``var`` replaced by ``value``."""
    return structural_map(node, (tirx.Var, lambda v: value if v.same_as(var) else v))


def fresh_loops(stmt: Any) -> Any:
    """``stmt`` with a new variable for each loop it holds: a copy of a loop nest placed beside the
    original keeps the function in SSA form (TVM's passes reject a loop variable defined twice)."""

    def fresh(loop: Any) -> Any:
        var = tirx.Var(loop.loop_var.name, str(loop.loop_var.ty))
        body = substitute(loop.body, loop.loop_var, var)
        return tirx.For(var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations)

    return structural_map(stmt, (tirx.For, fresh))


def uses(expr: Any, var: Any) -> bool:
    """Whether ``expr`` (or statement) mentions ``var``."""
    found: list[Any] = []
    structural_walk(expr, (tirx.Var, lambda v: found.append(v) if v.same_as(var) else None))
    return bool(found)


def from_zero(loop: Any) -> bool:
    """A plain serial loop starting at 0, without a step."""
    return (
        loop.kind == tirx.ForKind.SERIAL
        and loop.step is None
        and isinstance(loop.min, tirx.IntImm)
        and int(loop.min) == 0
    )


def constant_extent(loop: Any) -> int | None:
    """The iteration count of a plain serial loop from 0 with a constant one, else None."""
    return int(loop.extent) if from_zero(loop) and isinstance(loop.extent, tirx.IntImm) else None
