"""What the PrimFunc-at-a-time passes share: the module-level loop, copying statements SSA-clean."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from tvm_mcu._tvm import PrimFunc, TensorLoad, buffer_data_op, structural_map, structural_walk, tirx, tvm


@attrs.frozen
class Needs:
    """What a pass needs of every function it takes (its preconditions): the marks of the passes that
    must have run (attribute -> that pass, as the user would add it), and flattened buffers (TVM's
    ``LowerOpaqueBlock`` and ``FlattenBuffer``: one index per access, no blocks)."""

    passes: tuple[tuple[str, str], ...] = ()
    flat: bool = False


def _flat(func: PrimFunc) -> bool:
    """Whether every buffer access has one index and no s_tir block is left."""
    found: list[bool] = []

    def visit(node: Any) -> None:
        if isinstance(node, TensorLoad | tirx.BufferStore):
            if len(node.indices) > 1:
                found.append(True)
        elif type(node).__name__ in ("SBlock", "SBlockRealize"):  # LowerOpaqueBlock not run
            found.append(True)

    structural_walk(func.body, (object, visit))
    return not found


def pointer_load(pointer: Any) -> Any | None:
    """The load ``pointer`` takes the address of (``&B[i]``, flat), or None."""
    if isinstance(pointer, tvm.ir.Call) and str(getattr(pointer.op, "name", "")) == "tirx.address_of":
        load = pointer.args[0]
        if isinstance(load, TensorLoad) and len(load.indices) == 1:
            return load
    return None


def check_needs(name: str, gv_name: str, func: PrimFunc, needs: Needs) -> None:
    """Raise PassOrderError naming what pass ``name`` needs and function ``gv_name`` lacks."""
    from tvm_mcu.errors import PassOrderError

    attrs_ = func.attrs if func.attrs is not None else {}
    missing = [f"{before} (attribute {attr})" for attr, before in needs.passes if attr not in attrs_]
    if needs.flat and not _flat(func):
        missing.append("LowerOpaqueBlock and FlattenBuffer (flat buffers, no blocks)")
    if missing:
        raise PassOrderError(
            f"{name} needs {' and '.join(missing)} to have run on '{gv_name}' first; tvm_mcu.pipeline "
            "lists the passes in order with the reason for each"
        )


def rewrite_each(
    mod: tvm.IRModule,
    done: str,
    rewrite: Callable[[PrimFunc], PrimFunc],
    *,
    name: str = "",
    needs: Needs | None = None,
) -> tvm.IRModule:
    """``mod`` with ``rewrite`` applied to every PrimFunc not marked ``done`` (the rewrite marks it):
    running a pass twice changes nothing the second time, and the input module is left untouched. Pass
    ``name`` checks ``needs`` of each function first (PassOrderError)."""
    out = mod.clone()
    for gv, func in mod.functions_items():
        if not isinstance(func, PrimFunc) or (func.attrs is not None and done in func.attrs):
            continue
        if needs is not None:
            check_needs(name, gv.name_hint, func, needs)
        out[gv] = rewrite(func)
    return out


def substitute(node: Any, var: Any, value: Any) -> Any:
    """``node`` with ``var`` replaced by ``value``."""
    return structural_map(node, (tirx.Var, lambda v: value if v.same_as(var) else v))


def fresh_variables(stmt: Any) -> Any:
    """``stmt`` with a new variable for each one it defines (loop variables, ``Bind`` lets): a copy of
    a statement placed beside the original keeps the function in SSA form (TVM's passes reject a
    variable defined twice)."""
    defined: list[Any] = []

    def define(node: Any) -> None:
        var = node.loop_var if isinstance(node, tirx.For) else node.var
        defined.append(var)

    structural_walk(stmt, [(tirx.For, define), (tirx.Bind, define)])
    if not defined:
        return stmt
    renamed = [(old, tirx.Var(str(old.name), str(old.ty))) for old in defined]

    def rename(var: Any) -> Any:
        return next((new for old, new in renamed if old.same_as(var)), var)

    return structural_map(stmt, (tirx.Var, rename))


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


def fresh_buffers(stmt: Any) -> Any:
    """``stmt`` with a new buffer for each buffer it allocates (and its loads and stores): a copy of a
    statement that allocates keeps each allocation declared once."""
    allocated: list[Any] = []
    structural_walk(stmt, (tirx.AllocBuffer, lambda a: allocated.append(a.buffer)))
    if not allocated:
        return stmt
    renamed = {}
    for old in allocated:
        shape = [int(d) for d in old.shape]
        renamed[old] = tirx.decl_buffer(shape, str(old.dtype), name=str(old.name), layout=None)

    def new(buffer: Any) -> Any:
        return next((b for o, b in renamed.items() if o.same_as(buffer)), buffer)

    def on_alloc(alloc: Any) -> Any:
        buffer = new(alloc.buffer)
        return alloc if buffer is alloc.buffer else tirx.AllocBuffer(buffer, alloc.annotations)

    def on_store(store: Any) -> Any:
        buffer = new(store.buffer)
        return store if buffer is store.buffer else tirx.BufferStore(buffer, store.value, store.indices)

    def on_load(load: Any) -> Any:
        buffer = new(load.source)
        return load if buffer is load.source else tirx.BufferLoad(buffer, load.indices)

    return structural_map(
        stmt, [(tirx.AllocBuffer, on_alloc), (tirx.BufferStore, on_store), (tvm.ir.TensorLoad, on_load)]
    )


def extern_name(node: Any) -> str:
    """The C function a ``call_extern`` calls, ``""`` for any other node."""
    if not isinstance(node, tvm.ir.Call) or str(getattr(node.op, "name", "")) != "tirx.call_extern":
        return ""
    return str(node.args[0].value) if hasattr(node.args[0], "value") else ""


def parameter_owners(func: PrimFunc) -> dict[Any, Any]:
    """Declared buffer -> the parameter whose memory it views: FlattenBuffer's flat views declare
    ``data = buffer_data(param)``, a TVMScript buffer over a handle parameter ``data = param``."""
    data_op = buffer_data_op()
    out: dict[Any, Any] = {}

    def visit(decl: Any) -> None:
        data = decl.data
        if isinstance(data, tvm.ir.Call) and data.op.same_as(data_op):
            data = data.args[0]
        out[decl.buffer] = data

    structural_walk(func.body, (tirx.DeclBuffer, visit))
    return out


def read_only_by_kernels(
    func: PrimFunc, positions: Iterable[int], pointer_at: Mapping[str, int]
) -> dict[Any, int]:
    """Parameter -> position of the parameters at ``positions`` every read of which is the pointer
    argument ``pointer_at[kernel]`` (counted after the name) of a call to a kernel named in ``pointer_at``
    (BlockWeights' guarantee for blocked weights, checked: a parameter read otherwise is left out)."""
    candidates = {func.params[k]: k for k in positions if k < len(func.params)}
    if not candidates:
        return {}
    owners = parameter_owners(func)
    reads: dict[Any, int] = {}
    by_kernels: dict[Any, int] = {}

    def count(load: Any) -> None:
        owner = owners.get(load.source, load.source)
        reads[owner] = reads.get(owner, 0) + 1

    def visit(call: Any) -> None:
        name = extern_name(call)
        if name in pointer_at:
            load = pointer_load(call.args[1 + pointer_at[name]])
            if load is not None:
                owner = owners.get(load.source, load.source)
                by_kernels[owner] = by_kernels.get(owner, 0) + 1

    structural_walk(func.body, (TensorLoad, count))
    structural_walk(func.body, (tvm.ir.Call, visit))
    return {p: k for p, k in candidates.items() if by_kernels.get(p, 0) == reads.get(p, 0) > 0}
