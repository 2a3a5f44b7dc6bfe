"""LowerQuantizedOps: fake-quantised graphs (dequantize -> float op -> quantize) to integer operators."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.passes.relax.integer.emit import NotInteger
from tvm_mcu.passes.relax.integer.handlers import HANDLERS
from tvm_mcu.passes.relax.integer.values import LOWERED, QConst, QTensor, QTuple, Unusable
from tvm_mcu.passes.relax.make_integer_interface import ATTR_IO, io_quantization

logger = logging.getLogger(__name__)

ATTR_FLOAT_OPS = "tvmmcu.float_ops"


class _Lowering:
    """One walk over ``main``'s bindings, emitting the integer function into ``bb``."""

    def __init__(self, bb: Any, func: Any, allow_float: bool, rounding: str) -> None:
        self.bb = bb
        self.func = func
        self.allow_float = allow_float
        self.rounding = rounding
        self.env: dict[Any, Any] = {}  # old var -> new expr or lowered value (values.LOWERED)
        self.origin: dict[Any, Any] = {}  # old var -> its binding value (for float fallback)
        self.problems: list[str] = []
        self.float_ops: list[str] = []

    # ------------------------------------------------------------------ values
    def lookup(self, expr: Any) -> Any:
        if isinstance(expr, _tvm.RelaxVar):
            return self.env.get(expr, expr)
        return expr

    def materialize(self, expr: Any) -> Any:
        """A plain Relax expression for ``expr`` (float code for quantised values: the fallback path)."""
        v = self.lookup(expr)
        if isinstance(v, QTensor):
            return self.bb.emit(
                relax.op.dequantize(
                    v.var, relax.const(np.float32(v.scale)), relax.const(np.int32(v.zero_point))
                )
            )
        if isinstance(v, QConst):
            return relax.const(v.real())
        if isinstance(v, LOWERED) and isinstance(expr, _tvm.RelaxVar) and expr in self.origin:
            return self.emit_original(expr)
        if isinstance(v, QTuple | relax.Tuple):
            return relax.Tuple([self.materialize(f) for f in v.fields])
        return v

    def emit_original(self, var: Any) -> Any:
        value = self.origin[var]
        new = self.rebuild(value, self.materialize)
        out = self.bb.emit(new)
        self.env[var] = out
        return out

    def rebuild(self, value: Any, fn: Any) -> Any:
        if isinstance(value, relax.Call):
            args = [fn(a) for a in value.args]
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        if isinstance(value, relax.Tuple):
            return relax.Tuple([fn(f) for f in value.fields])
        if isinstance(value, relax.TupleGetItem):
            return relax.TupleGetItem(fn(value.tuple_value), value.index)
        return fn(value)

    def label(self, var: Any, value: Any) -> str:
        """The op as the user knows it: the ONNX node when the importer recorded it, with the Relax op."""
        op = _tvm.op_name(value) if isinstance(value, relax.Call) else type(value).__name__
        node = _tvm.provenance(self.func, var)
        return node if node else f"{op} ('{_tvm.var_name(var)}')"

    # ------------------------------------------------------------------ bindings
    def binding(self, var: Any, value: Any) -> None:
        self.origin[var] = value
        try:
            result = self.classify(var, value)
        except NotInteger as exc:
            if not self.allow_float:
                self.problems.append(f"{self.label(var, value)}: {exc}")
                result = value
            else:
                self.float_ops.append(self.label(var, value))
                result = self.bb.emit(self.rebuild(value, self.materialize))
        self.env[var] = result

    def classify(self, var: Any, value: Any) -> Any:
        if not isinstance(value, relax.Call):
            if isinstance(value, _tvm.RelaxVar):
                return self.lookup(value)
            if isinstance(value, relax.Tuple):
                fields = [self.lookup(f) for f in value.fields]
                if any(isinstance(f, LOWERED) for f in fields):
                    return QTuple(tuple(fields))  # consumed by concat (a Pending) or the outputs
                return self.bb.emit(value if not fields else relax.Tuple(fields))
            if isinstance(value, relax.TupleGetItem):
                src = self.lookup(value.tuple_value)
                if isinstance(src, QTuple):
                    item = src.fields[value.index]
                    return Unusable("a training-mode output of batch_norm") if item is None else item
                return self.bb.emit(relax.TupleGetItem(self.materialize(value.tuple_value), value.index))
            return value
        op = _tvm.op_name(value)
        args = [self.lookup(a) for a in value.args]
        handler = HANDLERS.get(op or "")
        if handler is not None:
            out = handler(self, var, value, args)
            if out is not NotImplemented:
                return out
        if any(isinstance(a, LOWERED) for a in args):
            raise NotInteger("no integer lowering for this operator on quantised values")
        if all(_is_constant(a) for a in value.args):
            return self.bb.emit(value)  # constants only: FoldConstant evaluates it at compile time
        if op is not None and op not in _INTEGER_SAFE and _is_float(var):
            floats = [a for a in value.args if isinstance(a, _tvm.RelaxVar) and _is_float(a)]
            if floats:
                raise NotInteger(
                    "it reads a float tensor the model does not quantise (no QuantizeLinear/DequantizeLinear "
                    "before it), so it would run in float"
                )
            raise NotInteger("no integer lowering for this operator")
        return self.bb.emit(self.rebuild(value, self.lookup_plain))

    def lookup_plain(self, expr: Any) -> Any:
        v = self.lookup(expr)
        if isinstance(v, LOWERED):
            raise NotInteger("a quantised value reaches an operator with no integer lowering")
        if isinstance(v, relax.Tuple):
            return relax.Tuple([self.lookup_plain(f) for f in v.fields])
        return v


def _is_float(var: Any) -> bool:
    ty = var.ty
    return isinstance(ty, _tvm.TensorType) and _tvm.tensor_dtype(ty).startswith("float")


def _is_constant(expr: Any) -> bool:
    if isinstance(expr, relax.Tuple):
        return all(_is_constant(f) for f in expr.fields)
    return isinstance(expr, _tvm.ConstantExpr | relax.ShapeExpr)


# Integer-domain ops the importers emit that need nothing from this pass.
_INTEGER_SAFE = {
    "relax.reshape",
    "relax.clip",
    "relax.nn.max_pool2d",
    "relax.concat",
    "relax.permute_dims",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.flatten",
}


def is_quantized(mod: tvm.IRModule) -> bool:
    """Whether ``main`` quantises (quantize/dequantize calls) or computes on int8 tensors at all."""
    func = mod["main"]
    found: list[bool] = []

    def visit(call: Any) -> None:
        if _tvm.op_name(call) in ("relax.quantize", "relax.dequantize"):
            found.append(True)

    _tvm.structural_walk(func.body, (relax.Call, visit))
    int8_vars = [
        v
        for v in [*func.params, *(b.var for block in func.body.blocks for b in block.bindings)]
        if isinstance(v.ty, _tvm.TensorType) and _tvm.tensor_dtype(v.ty) == "int8"
    ]
    return bool(found) or bool(int8_vars)


@tvm.transform.module_pass(opt_level=0, name="LowerQuantizedOps")
class LowerQuantizedOps:
    """Rewrite fake-quantised operators into integer operators with TFLite's exact arithmetic.

    Both frontends import int8 models as ``dequantize -> float op -> quantize``: the float op runs on
    dequantised values and is requantised after. A microcontroller wants the integer computation.

    Matches
        every ``quantize`` whose input is a float computation on dequantised int8 tensors and int8
        constants: conv2d (regular, grouped, depthwise; optional bias add and relu/clip), matmul (fully
        connected), add, average / max pool, mean over the spatial axes, softmax, concat; plus
        dequantize -> quantize pairs (requantisation), reshape / permute_dims of quantised values, and
        TFLite's ``astype(int32) -> avg_pool2d -> astype(int8)`` integer average pool.
    Rewrites to
        one integer operator each (a PrimFunc composed from TOPI and TE through ``call_te``): int8 x int8
        products summed in int32, int32 bias with the input zero point folded in, TFLite's
        requantisation (QuantizeMultiplier parameters, SaturatingRoundingDoublingHighMul then
        RoundingDivideByPOT), the activation clamp; TFLite's int8 ADD, AVERAGE_POOL and SOFTMAX algorithms.
        A float output computed on a quantised tensor past its last dequantize (a reshape of it, say,
        which MakeIntegerInterface does not take) is returned as the integer tensor, its scale and zero
        point recorded in ``tvmmcu.io_quantization`` for the caller.
    Declines when
        the module has no quantize/dequantize and no int8 tensor (float models pass through unchanged).
    Refuses
        (UnsupportedOpError naming each op and the reason) any quantised value that reaches an op with no
        integer lowering, unless ``allow_float``: then that op runs in float between a dequantize and a
        quantize, and the ops are listed in the function attribute ``tvmmcu.float_ops``.
    Numerics
        ``rounding="tflite"``: bit-exact with TFLite Micro's reference kernels. ``rounding="onnx"`` (QDQ
        models, whose meaning is float arithmetic then QuantizeLinear): every requantisation rounds once,
        half to even, from the exact integer accumulator; it differs from the float reference only where
        the float sum itself rounds across a tie or the 31-bit multiplier moves a near-tie, and a step
        changed early can grow through later layers.
    Ordering
        first: before FoldConstant (which would fold the dequantised weights into float constants).
    """

    def __init__(self, *, allow_float: bool = False, rounding: str = "tflite") -> None:
        if rounding not in ("tflite", "onnx"):
            raise ValueError(f"rounding must be 'tflite' or 'onnx', not {rounding!r}")
        self._allow_float = allow_float
        self._rounding = rounding

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if not is_quantized(mod):
            return mod
        func = mod["main"]
        others = {gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}
        bb = relax.BlockBuilder(tvm.IRModule(others, attrs=mod.attrs))
        params = list(func.params)
        low = _Lowering(bb, func, self._allow_float, self._rounding)
        attrs = dict(func.attrs) if func.attrs is not None else {}
        with _tvm.building_function(bb, "main", params, attrs=attrs):
            with bb.dataflow():
                for block in func.body.blocks:
                    for b in block.bindings:
                        low.binding(b.var, b.value)
                ret = func.body.body
                while isinstance(ret, _tvm.RelaxVar) and isinstance(
                    low.origin.get(ret), relax.Tuple | _tvm.RelaxVar
                ):
                    ret = low.origin[ret]  # a tuple of outputs bound to a variable: its fields
                outs = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
                results: list[Any] = []
                # Float outputs computed as integer tensors (a reshape of a dequantised tensor, say):
                # their position -> (scale, zero point), which the caller dequantises with.
                integer_outputs: dict[int, list[float]] = {}
                for o in outs:
                    v = low.lookup(o)
                    if isinstance(v, QTensor) and _is_float(o):
                        integer_outputs[len(results)] = [v.scale, v.zero_point]
                    if isinstance(v, QTuple):
                        v = relax.Tuple([_output(low, f, o, self._allow_float) for f in v.fields])
                    else:
                        v = _output(low, v, o, self._allow_float)
                    if isinstance(v, relax.Tuple):
                        results.extend(v.fields)
                    else:
                        results.append(v)
                if low.problems:
                    raise UnsupportedOpError(
                        f"{len(low.problems)} operator(s) of the quantised model cannot run in integer "
                        "arithmetic: "
                        + "; ".join(low.problems)
                        + ". Pass --allow-float to run them in float (the report lists them)"
                    )
                out = bb.emit_output(
                    relax.Tuple(results) if len(results) > 1 or isinstance(ret, relax.Tuple) else results[0]
                )
            bb.emit_func_output(out)
        new_mod = bb.get()
        if low.float_ops:
            new_mod["main"] = new_mod["main"].with_attr(ATTR_FLOAT_OPS, low.float_ops)
            logger.warning("running in float: %s", ", ".join(low.float_ops))
        if integer_outputs:
            io = io_quantization(mod) or {"inputs": [[] for _ in params], "outputs": [[] for _ in results]}
            if len(io["outputs"]) != len(results):
                raise AssertionError(f"{len(results)} outputs, {len(io['outputs'])} in the interface record")
            for k, q in integer_outputs.items():
                io["outputs"][k] = q
            new_mod["main"] = new_mod["main"].with_attr(ATTR_IO, str(io))
        return new_mod


def _output(low: _Lowering, v: Any, o: Any, allow_float: bool) -> Any:
    """A graph output as a Relax expression: a quantised tensor is its integer variable (the caller
    dequantises: MakeIntegerInterface recorded how, or for a float output the caller records it);
    anything else lowered is float code, allowed or not."""
    if isinstance(v, QTensor):
        return v.var
    if isinstance(v, LOWERED):
        if allow_float:
            return low.materialize(o) if isinstance(o, _tvm.RelaxVar) else low.materialize(v)
        src = o
        while isinstance(low.origin.get(src), _tvm.RelaxVar):  # output aliases: the binding that made it
            src = low.origin[src]
        node = _tvm.provenance(low.func, src) if isinstance(src, _tvm.RelaxVar) else None
        what = f"the output of {node}" if node else f"output '{_tvm.var_name(o)}'"
        low.problems.append(f"{what}: a float value (the model does not quantise this output)")
        return o
    return v
