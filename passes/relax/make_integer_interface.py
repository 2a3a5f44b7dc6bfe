"""MakeIntegerInterface: a QDQ model's float inputs and outputs become the int8/uint8 tensors it quantises
them to."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, tvm

ATTR_IO = "tvmmcu.io_quantization"


_INTEGER = ("int8", "uint8")


def _qparams(call: Any) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor quantize/dequantize, else None."""
    scale, zp = call.args[1], call.args[2]
    if not isinstance(scale, _tvm.RelaxConst) or not isinstance(zp, _tvm.RelaxConst):
        return None
    s, z = _tvm.const_value(scale).reshape(-1), _tvm.const_value(zp).reshape(-1)
    if s.size != 1 or z.size != 1:
        return None
    return float(np.float32(s[0])), int(z[0])


def _bindings(func: Any) -> list[Any]:
    return [b for block in func.body.blocks for b in block.bindings]


def _uses(func: Any) -> dict[Any, list[Any]]:
    uses: dict[Any, list[Any]] = {}
    for b in _bindings(func):

        def visit(v: Any, binding: Any = b) -> None:
            uses.setdefault(v, []).append(binding)

        _tvm.structural_walk(b.value, (_tvm.RelaxVar, visit))
    return uses


@tvm.transform.module_pass(opt_level=0, name="MakeIntegerInterface")
class MakeIntegerInterface:
    """Give a quantised (QDQ) model an integer interface, as TFLite int8 models have.

    An ONNX QDQ model takes float input and quantises it first, and dequantises its result last. On a
    microcontroller those two steps would be the only float code; the caller quantises and dequantises
    instead, with the scales this pass records.

    Matches
        float parameters of ``main`` whose every use is the same per-tensor ``quantize`` to int8 or
        uint8, and outputs that are a per-tensor ``dequantize`` of an int8 or uint8 tensor (the model's
        own type: a uint8 model keeps a uint8 interface).
    Rewrites to
        an integer parameter used in place of the quantize's result; the integer tensor returned in
        place of its dequantisation. ``main`` gets the attribute ``tvmmcu.io_quantization``:
        ``{"inputs": [[scale, zero_point] | [], ...], "outputs": [...]}``.
    Declines when
        no input or output qualifies (float models, TFLite int8 models); returns the module unchanged.
    Numerics
        the caller's quantisation (round half to even, saturate) is ONNX QuantizeLinear's; unchanged.
    Ordering
        before LowerQuantizedOps, which then sees int8 inputs.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        bindings = _bindings(func)
        uses = _uses(func)
        replace: dict[Any, Any] = {}  # quantize binding var -> new int8 param
        params, in_q = [], []
        for p in func.params:
            dtypes: set[str] = set()
            users = uses.get(p, [])
            quant = [
                _qparams(b.value)
                if isinstance(b.value, relax.Call)
                and _tvm.op_name(b.value) == "relax.quantize"
                and str(b.value.attrs.out_dtype) in _INTEGER
                and b.value.args[0].same_as(p)
                else None
                for b in users
            ]
            if users and all(q is not None for q in quant) and len(set(quant)) == 1:
                dtypes = {str(b.value.attrs.out_dtype) for b in users}
            if users and all(q is not None for q in quant) and len(set(quant)) == 1 and len(dtypes) == 1:
                new = relax.Var(_tvm.var_name(p), relax.TensorType(p.ty.shape, dtypes.pop()))
                for b in users:
                    replace[b.var] = new
                params.append(new)
                in_q.append(list(quant[0]))  # type: ignore[arg-type]
            else:
                params.append(p)
                in_q.append([])
        value_of = {b.var: b.value for b in bindings}
        ret = func.body.body
        while isinstance(ret, _tvm.RelaxVar) and isinstance(value_of.get(ret), relax.Tuple | _tvm.RelaxVar):
            ret = value_of[ret]  # a tuple of outputs bound to a variable, or an alias of one
        outs = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
        new_outs, out_q = [], []
        for o in outs:
            v = value_of.get(o)
            while isinstance(v, _tvm.RelaxVar) and v in value_of:  # gv = lv aliases
                o, v = v, value_of[v]
            q = None
            if isinstance(v, relax.Call) and _tvm.op_name(v) == "relax.dequantize":
                src = v.args[0]
                if isinstance(src, _tvm.RelaxVar) and _tvm.tensor_dtype(src.ty) in _INTEGER:
                    q = _qparams(v)
            if q is not None and v is not None:
                new_outs.append(v.args[0])
                out_q.append(list(q))
            else:
                new_outs.append(o)
                out_q.append([])
        if not replace and not any(out_q):
            return mod
        bb = relax.BlockBuilder(
            tvm.IRModule(
                {gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}, attrs=mod.attrs
            )
        )
        remap: dict[Any, Any] = dict(zip(func.params, params, strict=True))
        attrs = dict(func.attrs) if func.attrs is not None else {}
        with _tvm.building_function(bb, "main", params, attrs=attrs):
            with bb.dataflow():
                for b in bindings:
                    if b.var in replace:
                        remap[b.var] = replace[b.var]
                        continue
                    value = _substitute(b.value, remap)
                    remap[b.var] = bb.emit(value, name_hint=_tvm.var_name(b.var))
                results = [_substitute(o, remap) for o in new_outs]
                out = bb.emit_output(relax.Tuple(results) if isinstance(ret, relax.Tuple) else results[0])
            bb.emit_func_output(out)
        new_mod = bb.get()
        io = {"inputs": in_q, "outputs": out_q}
        new_mod["main"] = new_mod["main"].with_attr(ATTR_IO, str(io))
        # Unused float bindings (the dequantised outputs) are removed by DeadCodeElimination later.
        return new_mod


def _substitute(expr: Any, remap: dict[Any, Any]) -> Any:
    def on_var(v: Any) -> Any:
        return remap.get(v, v)

    return _tvm.structural_map(expr, (_tvm.RelaxVar, on_var))


def io_quantization(mod: tvm.IRModule) -> dict[str, list[list[float]]] | None:
    """The recorded (scale, zero point) per input and output, or None when the interface is unchanged."""
    attrs = mod["main"].attrs
    if attrs is None or ATTR_IO not in attrs:
        return None
    import ast

    value: dict[str, list[list[float]]] = ast.literal_eval(str(attrs[ATTR_IO]))
    return value
