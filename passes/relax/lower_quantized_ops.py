"""LowerQuantizedOps: fake-quantised graphs (dequantize -> float op -> quantize) to integer operators."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.passes.relax.integer.emit import EMITTERS, NotInteger, avg_pool_int8, requantize
from tvm_mcu.passes.relax.integer.values import IntAccumulate, Pending, QConst, QTensor

logger = logging.getLogger(__name__)

ATTR_FLOAT_OPS = "tvmmcu.float_ops"

# Float ops whose output is just a clamp of their input: folded into the integer op's activation range.
_ACTIVATIONS = ("relax.nn.relu", "relax.clip")
# Float ops on a quantised tensor that become integer operators once their output is quantised.
_POOLS = {"relax.nn.avg_pool2d": "avg_pool2d", "relax.nn.max_pool2d": "max_pool2d", "relax.mean": "mean"}


def _np(c: Any) -> np.ndarray:
    return _tvm.const_value(c)


def _scalar(c: Any) -> float:
    v = _np(c).reshape(-1)
    if v.size != 1:
        raise NotInteger("a per-axis quantisation of an activation")
    return float(v[0])


def _broadcast_param(value: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    value = value.reshape(-1)
    if value.size == 1:
        return np.broadcast_to(value, shape).copy()
    bshape = [1] * len(shape)
    bshape[axis] = value.size
    return np.broadcast_to(value.reshape(bshape), shape).copy()


class _Lowering:
    """One walk over ``main``'s bindings, emitting the integer function into ``bb``."""

    def __init__(self, bb: Any, allow_float: bool, rounding: str) -> None:
        self.bb = bb
        self.allow_float = allow_float
        self.rounding = rounding
        self.env: dict[Any, Any] = {}  # old var -> new expr, QTensor, QConst, Pending or IntAccumulate
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
            real = ((v.values.astype(np.float64) - v.zero_points) * v.scales).astype(np.float32)
            return relax.const(real)
        if isinstance(v, Pending | IntAccumulate):
            return self.emit_original(expr)
        if isinstance(v, relax.Tuple):
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

    # ------------------------------------------------------------------ bindings
    def binding(self, var: Any, value: Any) -> None:
        self.origin[var] = value
        try:
            result = self.classify(var, value)
        except NotInteger as exc:
            name = _tvm.var_name(var)
            op = _tvm.op_name(value) if isinstance(value, relax.Call) else type(value).__name__
            if not self.allow_float:
                self.problems.append(f"{op} ('{name}'): {exc}")
                result = value
            else:
                self.float_ops.append(f"{op} ('{name}')")
                result = self.bb.emit(self.rebuild(value, self.materialize))
        self.env[var] = result

    def classify(self, var: Any, value: Any) -> Any:
        if not isinstance(value, relax.Call):
            if isinstance(value, _tvm.RelaxVar):
                return self.lookup(value)
            if isinstance(value, relax.Tuple):
                fields = [self.lookup(f) for f in value.fields]
                if any(isinstance(f, QTensor | QConst | Pending | IntAccumulate) for f in fields):
                    return relax.Tuple(fields)  # consumed by concat (a Pending) or materialised
                return self.bb.emit(value if not fields else relax.Tuple(fields))
            if isinstance(value, relax.TupleGetItem):
                return self.bb.emit(relax.TupleGetItem(self.materialize(value.tuple_value), value.index))
            return value
        op = _tvm.op_name(value)
        args = [self.lookup(a) for a in value.args]
        handler = _HANDLERS.get(op or "")
        if handler is not None:
            out = handler(self, var, value, args)
            if out is not NotImplemented:
                return out
        if any(isinstance(a, QTensor | QConst | Pending | IntAccumulate) for a in args) or (
            op is not None and op not in _INTEGER_SAFE and _is_float(var)
        ):
            raise NotInteger("no integer lowering for this operator")
        return self.bb.emit(self.rebuild(value, self.lookup_plain))

    def lookup_plain(self, expr: Any) -> Any:
        v = self.lookup(expr)
        if isinstance(v, QTensor | QConst | Pending | IntAccumulate):
            raise NotInteger("a quantised value reaches an operator with no integer lowering")
        if isinstance(v, relax.Tuple):
            return relax.Tuple([self.lookup_plain(f) for f in v.fields])
        return v


def _is_float(var: Any) -> bool:
    ty = var.ty
    return isinstance(ty, _tvm.TensorType) and _tvm.tensor_dtype(ty).startswith("float")


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


# ---------------------------------------------------------------------- handlers, one per Relax op
def _dequantize(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    data, scale, zp = args
    axis = int(call.attrs.axis)
    if isinstance(data, _tvm.RelaxConst):
        values = _np(data)
        shape = values.shape
        a = axis % max(len(shape), 1) if shape else 0
        scales = _broadcast_param(_np(scale).astype(np.float32), shape, a)
        zps = _broadcast_param(_np(zp).astype(np.int64), shape, a)
        return QConst(values, scales, zps)
    if isinstance(data, QTensor | QConst | Pending | IntAccumulate):
        raise NotInteger("dequantize of a value that is not an int8 tensor")
    if _tvm.tensor_dtype(data.ty) != "int8":
        raise NotInteger(f"dequantize of a {_tvm.tensor_dtype(data.ty)} tensor (int8 only)")
    return QTensor(data, float(np.float32(_scalar(scale))), int(_np(zp).reshape(-1)[0]))


def _quantize(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    src, scale, zp = args
    if str(call.attrs.out_dtype) != "int8":
        raise NotInteger(f"quantize to {call.attrs.out_dtype} (int8 only)")
    out_scale, out_zp = float(np.float32(_scalar(scale))), int(_np(zp).reshape(-1)[0])
    if isinstance(src, Pending):
        emitter = EMITTERS.get(src.kind)
        if emitter is None:
            raise NotInteger(f"no integer lowering for {src.kind}")
        return low.bb.emit(emitter(low.bb, src, out_scale, out_zp, low.rounding))
    if isinstance(src, QTensor):
        return low.bb.emit(requantize(low.bb, src, out_scale, out_zp, rounding=low.rounding))
    raise NotInteger("quantize of a float value that does not come from quantised inputs")


def _conv2d(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    x, w = args
    if isinstance(x, QTensor) and isinstance(w, QConst):
        return Pending("conv2d", (x, w), call)
    return NotImplemented


def _matmul(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    x, w = args
    if isinstance(x, QTensor) and isinstance(w, QConst):
        return Pending("dense", (x, w), call)
    return NotImplemented


def _add(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    a, b = args
    for p, other in ((a, b), (b, a)):
        if isinstance(p, Pending) and p.kind in ("conv2d", "dense") and p.bias is None and p.act is None:
            if isinstance(other, QConst):
                return Pending(p.kind, p.inputs, p.call, bias=other.transformed(lambda v: v.reshape(-1)))
            if isinstance(other, _tvm.RelaxConst) and _tvm.tensor_dtype(other.ty).startswith("float"):
                return Pending(p.kind, p.inputs, p.call, bias=_np(other).reshape(-1))
    if isinstance(a, QTensor) and isinstance(b, QTensor):
        return Pending("add", (a, b), call)
    return NotImplemented


def _activation(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    src = args[0]
    if isinstance(src, QTensor):  # a standalone activation: requantised to its output and clamped
        src = Pending("clamp", (src,), call)
    elif not isinstance(src, Pending) or src.act is not None:
        return NotImplemented
    act: tuple[float | None, float | None]
    if _tvm.op_name(call) == "relax.nn.relu":
        act = (0.0, None)
    else:
        lo, hi = float(call.args[1].value), float(call.args[2].value)
        act = (lo, hi)
    return Pending(src.kind, src.inputs, src.call, bias=src.bias, act=act)


def _pool(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    op = _tvm.op_name(call)
    src = args[0]
    if isinstance(src, QTensor):
        return Pending(_POOLS[op or ""], (src,), call)
    if op == "relax.nn.avg_pool2d" and isinstance(src, IntAccumulate) and src.call is None:
        return IntAccumulate(src.source, call)
    return NotImplemented


def _softmax(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    if isinstance(args[0], QTensor):
        return Pending("softmax", (args[0],), call)
    return NotImplemented


def _concat(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    fields = args[0]
    if isinstance(fields, relax.Tuple):
        items = [low.lookup(f) for f in fields.fields]
        if all(isinstance(f, QTensor) for f in items):
            return Pending("concat", tuple(items), call)
    return NotImplemented


def _layout_op(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    """reshape / permute_dims of a quantised value: the same op on the integer tensor or constant."""
    src = args[0]
    op = _tvm.op_name(call)
    if isinstance(src, _tvm.RelaxConst):  # TFLite transposes int8 weights before dequantising them
        values = _np(src)
        if op == "relax.reshape":
            return relax.const(values.reshape(tuple(int(d) for d in call.ty.shape)))
        axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else None
        return relax.const(np.ascontiguousarray(np.transpose(values, axes)))
    if isinstance(src, QConst):
        if op == "relax.reshape":
            shape = tuple(int(d) for d in call.ty.shape)
            return src.transformed(lambda a: a.reshape(shape))
        axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else None
        return src.transformed(lambda a: np.transpose(a, axes))
    if isinstance(src, QTensor):
        new = low.bb.emit(relax.Call(call.op, [src.var, *call.args[1:]], call.attrs, call.ty_args))
        return QTensor(new, src.scale, src.zero_point)
    return NotImplemented


def _astype(low: _Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    """TFLite's int8 average pool arrives as ``astype(int32) -> avg_pool2d -> astype(int8)``."""
    src = args[0]
    dtype = str(call.attrs.dtype)
    plain = not isinstance(src, QTensor | QConst | Pending | IntAccumulate)
    if dtype == "int32" and plain and _tvm.tensor_dtype(src.ty) == "int8":
        return IntAccumulate(src, None)
    if dtype == "int8" and isinstance(src, IntAccumulate) and src.call is not None:
        return low.bb.emit(avg_pool_int8(low.bb, src.source, src.call, (-128, 127)))
    if isinstance(src, IntAccumulate):
        return low.bb.emit(relax.op.astype(src.source, dtype)) if src.call is None else NotImplemented
    return NotImplemented


_HANDLERS = {
    "relax.dequantize": _dequantize,
    "relax.quantize": _quantize,
    "relax.nn.conv2d": _conv2d,
    "relax.matmul": _matmul,
    "relax.add": _add,
    "relax.nn.relu": _activation,
    "relax.clip": _activation,
    "relax.nn.avg_pool2d": _pool,
    "relax.nn.max_pool2d": _pool,
    "relax.mean": _pool,
    "relax.nn.softmax": _softmax,
    "relax.concat": _concat,
    "relax.reshape": _layout_op,
    "relax.permute_dims": _layout_op,
    "relax.astype": _astype,
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
        low = _Lowering(bb, self._allow_float, self._rounding)
        attrs = dict(func.attrs) if func.attrs is not None else {}
        with bb.function("main", params, attrs=attrs, private=False):
            with bb.dataflow():
                for block in func.body.blocks:
                    for b in block.bindings:
                        low.binding(b.var, b.value)
                ret = func.body.body
                outs = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
                results = []
                for o in outs:
                    v = low.lookup(o)
                    if isinstance(v, QTensor | QConst | Pending | IntAccumulate):
                        v = low.materialize(o) if self._allow_float else None
                        if v is None:
                            low.problems.append(
                                f"output '{_tvm.var_name(o)}': a float value of a quantised model"
                            )
                            v = o
                    if isinstance(v, relax.Tuple):
                        results.extend(v.fields)
                    else:
                        results.append(v)
                if low.problems:
                    raise UnsupportedOpError(
                        f"{len(low.problems)} operator(s) of the int8 model cannot run in integer "
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
        return new_mod
