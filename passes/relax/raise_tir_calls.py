"""RaiseTirCalls: the TE kernels TVM's ONNX importer emits for Clip and constant Pad become Relax ops."""

from __future__ import annotations

from typing import Any

from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, s_tir, tirx, tvm


def _blocks(func: Any) -> list[Any]:
    found: list[Any] = []
    _tvm.structural_walk(
        func.body, (s_tir.SBlock, lambda b: found.append(b) if str(b.name_hint) != "root" else None)
    )
    return found


def _is_identity(indices: Any, iter_vars: Any) -> bool:
    return len(indices) == len(iter_vars) and all(
        i.same_as(iv.var) for i, iv in zip(indices, iter_vars, strict=True)
    )


def _min_max(func: Any, args: list[Any]) -> Any | None:
    """``out[i] = max|min(a[i], b[()])`` with ``b`` a scalar Relax constant -> R.maximum / R.minimum."""
    blocks = _blocks(func)
    if len(blocks) != 1 or len(args) != 2 or not isinstance(args[1], _tvm.RelaxConst):
        return None
    block = blocks[0]
    store = block.body
    value = getattr(store, "value", None)
    kinds = {tirx.Max: relax.op.maximum, tirx.Min: relax.op.minimum}
    make = next((op for t, op in kinds.items() if isinstance(value, t)), None)
    if make is None or value is None or not isinstance(store, tirx.BufferStore):
        return None
    a, b = value.a, value.b
    params = list(func.params)
    if not (isinstance(a, _tvm.TensorLoad) and isinstance(b, _tvm.TensorLoad)):
        return None
    if not (a.source.same_as(params[0]) and b.source.same_as(params[1]) and len(b.indices) == 0):
        return None
    if not (_is_identity(a.indices, block.iter_vars) and _is_identity(store.indices, block.iter_vars)):
        return None
    return make(args[0], args[1])


def _pad(func: Any, args: list[Any]) -> Any | None:
    """``out[i] = if_then_else(inside, x[i - before], value)`` -> R.nn.pad(x, widths, "constant", value)."""
    blocks = _blocks(func)
    if len(blocks) != 1 or len(args) != 1:
        return None
    block = blocks[0]
    store = block.body
    value = getattr(store, "value", None)
    if not isinstance(store, tirx.BufferStore) or not isinstance(value, tvm.ir.Call):
        return None
    if str(value.op.name) != "prim.if_then_else":
        return None
    load, fill = value.args[1], value.args[2]
    if not isinstance(load, _tvm.TensorLoad) or not isinstance(fill, (tirx.FloatImm, tirx.IntImm)):
        return None
    x = list(func.params)[0]
    if not load.source.same_as(x) or not _is_identity(store.indices, block.iter_vars):
        return None
    in_shape = [int(d) for d in x.ty.shape]
    out_shape = [int(d) for d in store.buffer.ty.shape]
    before: list[int] = []
    analyzer = _tvm.Analyzer()
    for idx, iv in zip(load.indices, block.iter_vars, strict=True):
        offset = analyzer.simplify(iv.var - idx)
        if not isinstance(offset, tirx.IntImm):
            return None
        before.append(int(offset))
    after = [o - i - b for o, i, b in zip(out_shape, in_shape, before, strict=True)]
    if any(w < 0 for w in before + after):
        return None
    # Relax pads are (before, after) per axis, interleaved.
    widths = [w for pair in zip(before, after, strict=True) for w in pair]
    return relax.op.nn.pad(args[0], widths, "constant", float(fill.value))


_RULES = (_min_max, _pad)


@tvm.transform.module_pass(opt_level=0, name="RaiseTirCalls")
class RaiseTirCalls:
    """Turn the TE kernels TVM's ONNX importer writes for ``Clip`` and constant ``Pad`` back into Relax ops.

    The importer lowers ``Clip`` with min/max inputs and ``Pad`` with a value to ``call_tir`` of private
    PrimFuncs; graph analyses (channel groups, the training bridge, the ONNX writer) need the op.

    Matches
        ``R.call_tir(f, args)`` where ``f`` has one block that computes, at the same index as it writes,
        ``max(a[i], b[()])`` or ``min(a[i], b[()])`` with ``b`` a scalar constant; or
        ``if_then_else(inside, x[i - before], value)`` with constant offsets.
    Rewrites to
        ``R.maximum(a, b)``, ``R.minimum(a, b)``, ``R.nn.pad(x, [b0, a0, b1, a1, ...], "constant", value)``.
    Declines when
        the kernel has any other form; the call is kept as it is.
    Numerics
        exact: the same elementwise function.
    Ordering
        after FoldConstant (which turns the importer's scalar inputs into constants); the PrimFuncs left
        unused are removed by DeadCodeElimination.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        call_tir = tvm.ir.Op.get("relax.call_tir")
        changed = False

        def raise_call(call: Any) -> Any:
            nonlocal changed
            if not call.op.same_as(call_tir):
                return call
            callee = mod[call.args[0]]
            args = list(call.args[1].fields)
            for rule in _RULES:
                new = rule(callee, args)
                if new is not None:
                    changed = True
                    return new
            return call

        body = _tvm.structural_map(func.body, [(relax.Call, raise_call)])
        if not changed:
            return mod
        out = tvm.IRModule({gv: f for gv, f in mod.functions_items()}, attrs=mod.attrs)
        new = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
        out["main"] = new
        return relax.transform.Normalize()(out)
