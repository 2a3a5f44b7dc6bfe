"""One handler per Relax op: what a call on quantised values becomes during LowerQuantizedOps' walk.

A handler ``(low, var, call, args) -> value`` gets the call's arguments already looked up (QTensor,
QConst, Pending, Elementwise, ... or plain Relax expressions) and returns the value the binding stands
for: a Relax expression it emitted, or a lowered value waiting for a later ``quantize``. It returns
``NotImplemented`` when the arguments are not a form it lowers; the walk then refuses the op (or runs it
in float with ``allow_float``). ``HANDLERS`` maps the op name to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import numpy as np

from tvm_mcu import _tvm, ops
from tvm_mcu._tvm import relax
from tvm_mcu.passes.relax.integer import elementwise, fixed_point
from tvm_mcu.passes.relax.integer.emit import (
    EMITTERS,
    NotInteger,
    avg_pool_int8,
    requantize,
)
from tvm_mcu.passes.relax.integer.values import (
    LOWERED,
    QUANTIZED_DTYPES,
    Elementwise,
    IntAccumulate,
    Pending,
    QConst,
    QTensor,
    QTuple,
    QType,
)


class Lowering(Protocol):
    """What handlers use of the pass's walk (see ``lower_quantized_ops._Lowering``)."""

    bb: Any
    rounding: str

    def lookup(self, expr: Any) -> Any: ...


Handler = Callable[[Lowering, Any, Any, list[Any]], Any]


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
        return np.full(shape, value[0], dtype=value.dtype)
    bshape = [1] * len(shape)
    bshape[axis] = value.size
    return np.broadcast_to(value.reshape(bshape), shape).copy()


def is_float_const(expr: Any) -> bool:
    return isinstance(expr, _tvm.RelaxConst) and _tvm.tensor_dtype(expr.ty).startswith("float")


# ---------------------------------------------------------------------- quantize / dequantize
def _dequantize(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    data, scale, zp = args
    axis = int(call.attrs.axis)
    if isinstance(data, _tvm.RelaxConst):
        values = _np(data)
        shape = values.shape
        a = axis % max(len(shape), 1) if shape else 0
        scales = _broadcast_param(_np(scale).astype(np.float32), shape, a)
        zps = _broadcast_param(_np(zp).astype(np.int64), shape, a)
        return QConst(values, scales, zps)
    if isinstance(data, LOWERED):
        raise NotInteger("dequantize of a value that is not an integer tensor")
    dtype = _tvm.tensor_dtype(data.ty)
    if dtype not in QUANTIZED_DTYPES:
        raise NotInteger(f"dequantize of a {dtype} tensor (int8 and uint8 only)")
    return QTensor(data, float(np.float32(_scalar(scale))), int(_np(zp).reshape(-1)[0]), dtype)


def _quantize(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    src, scale, zp = args
    dtype = str(call.attrs.out_dtype)
    if dtype not in QUANTIZED_DTYPES:
        raise NotInteger(f"quantize to {dtype} (int8 and uint8 only)")
    out = QType(float(np.float32(_scalar(scale))), int(_np(zp).reshape(-1)[0]), dtype)
    if isinstance(src, Pending):
        emitter = EMITTERS.get(src.kind)
        if emitter is None:
            raise NotInteger(f"no integer lowering for {src.kind}")
        result = low.bb.emit(emitter(low.bb, src, out, low.rounding))
        for move in src.post:
            result = low.bb.emit(relax.Call(move.op, [result, *move.args[1:]], move.attrs, move.ty_args))
        return result
    if isinstance(src, QTensor):
        return low.bb.emit(requantize(low.bb, src, out, rounding=low.rounding))
    if isinstance(src, Elementwise):
        return low.bb.emit(_emit_elementwise(low, src, out))
    raise NotInteger("quantize of a float value that does not come from quantised inputs")


def _emit_elementwise(low: Lowering, ew: Elementwise, out: QType) -> Any:
    """A quantised element-wise function: clamps requantise (cheap, and TFLite's exact arithmetic); any
    other function of an ONNX model becomes a lookup table (its float meaning, exactly)."""
    src = ew.source
    if set(ew.ops) <= elementwise.CLAMPS:
        lo, hi = _clamp_bounds(ew)
        if lo is not None:
            return requantize(low.bb, src, out, _clamp_range(lo, hi, out), low.rounding)
    if low.rounding != fixed_point.ONNX:
        raise NotInteger(
            f"{', '.join(ew.ops)} of an int8 TFLite tensor: TFLite Micro's integer algorithm for it is not "
            "implemented (bit-exactness is required)"
        )
    try:
        table, axis = elementwise.lookup_table(ew, out)
    except elementwise.TableError as exc:
        raise NotInteger(f"cannot be tabulated: {exc}") from None
    offset = -QUANTIZED_DTYPES[src.dtype][0]
    return low.bb.call_te(
        _lookup_kernel(),
        src.var,
        relax.const(table, str(table.dtype)),
        offset=offset,
        channel_axis=axis,
        primfunc_name_hint="lookup_int8",
    )


def _lookup_kernel() -> Any:
    from tvm_mcu.passes.relax.integer import kernels

    return kernels.lookup_int8


def _clamp_bounds(ew: Elementwise) -> tuple[float | None, float | None]:
    """(lo, hi) of a chain of relu/clip with scalar bounds, read off the function at +-inf; (None, None)
    when a bound varies (per-channel constants)."""
    probe = np.array([-np.inf, np.inf], dtype=np.float32)
    with np.errstate(all="ignore"):
        y = np.asarray(ew.fn(probe.reshape((2,) + (1,) * len(ew.source.var.ty.shape))), dtype=np.float32)
    if y.size != 2:
        return None, None
    lo, hi = float(y.reshape(-1)[0]), float(y.reshape(-1)[1])
    return lo, hi


def _clamp_range(lo: float | None, hi: float | None, out: QType) -> tuple[int, int]:
    from tvm_mcu.passes.relax.integer import params

    finite = [None if v is None or not np.isfinite(v) else v for v in (lo, hi)]
    return params.activation_range(out.zero_point, out.scale, finite[0], finite[1], out.dtype)


# ---------------------------------------------------------------------- operators awaiting a quantize
def _conv2d(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    x, w = args
    if isinstance(x, QTensor) and isinstance(w, QConst):
        return Pending("conv2d", (x, w), call)
    return NotImplemented


def _matmul(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    x, w = args
    if isinstance(x, QTensor) and isinstance(w, QConst):
        return Pending("dense", (x, w), call)
    return NotImplemented


def _bias_value(other: Any) -> Any:
    if isinstance(other, QConst):
        return other.transformed(lambda v: v.reshape(-1))
    if is_float_const(other):
        return _np(other).reshape(-1)
    return None


def _add(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    a, b = args
    for p, other in ((a, b), (b, a)):
        if (
            isinstance(p, Pending)
            and p.kind in ("conv2d", "dense")
            and p.bias is None
            and p.act is None
            and not p.post
        ):
            bias = _bias_value(other)
            if bias is not None and _per_output_channel(p, bias):
                return Pending(p.kind, p.inputs, p.call, bias=bias)
    if isinstance(a, QTensor) and isinstance(b, QTensor):
        return Pending("add", (a, b), call)
    return _elementwise(low, var, call, args)


def _per_output_channel(p: Pending, bias: Any) -> bool:
    """Whether a constant added to a conv/dense result is one value per output channel (or one value)."""
    size = bias.values.size if isinstance(bias, QConst) else np.asarray(bias).size
    shape = [int(d) for d in p.call.ty.shape]
    if p.kind == "conv2d":
        channels = shape[str(p.call.attrs.out_layout or p.call.attrs.data_layout).index("C")]
    else:
        channels = shape[-1]
    return size in (1, channels)


def _subtract(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    a, b = args
    if isinstance(a, QTensor) and isinstance(b, QTensor):
        return Pending("subtract", (a, b), call)
    return _elementwise(low, var, call, args)


def _positive_scalar(c: Any) -> float | None:
    if not is_float_const(c):
        return None
    v = _np(c).reshape(-1)
    return float(v[0]) if v.size == 1 and np.isfinite(v[0]) and v[0] > 0 else None


def _multiply(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    a, b = args
    if isinstance(a, QTensor) and isinstance(b, QTensor) and not a.var.same_as(b.var):
        return Pending("multiply", (a, b), call)
    for x, other in ((a, b), (b, a)):
        alpha = _positive_scalar(other)
        if isinstance(x, QTensor) and alpha is not None:
            # (q - zp) * s * alpha: the same integers with the scale s * alpha (Gemm's alpha on its input).
            return QTensor(x.var, float(np.float32(x.scale) * np.float32(alpha)), x.zero_point, x.dtype)
    for p, other in ((a, b), (b, a)):
        # Gemm's alpha, a folded scale: a positive constant per output channel scales the weights.
        if (
            isinstance(p, Pending)
            and p.kind in ("conv2d", "dense")
            and p.act is None
            and not p.post
            and is_float_const(other)
        ):
            k = _np(other).astype(np.float32).reshape(-1)
            # TFLite's requantisation takes positive multipliers only.
            if _per_output_channel(p, k) and (low.rounding == fixed_point.ONNX or np.all(k > 0)):
                return _scaled(p, k)
    return _elementwise(low, var, call, args)


def _divide(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    x, other = args
    k = _positive_scalar(other)
    if isinstance(x, QTensor) and k is not None:
        # (q - zp) * s / k: the same integers with the scale s / k.
        return QTensor(x.var, float(np.float32(x.scale) / np.float32(k)), x.zero_point, x.dtype)
    return _elementwise(low, var, call, args)


def _scaled(p: Pending, k: np.ndarray) -> Pending:
    """A conv/dense result multiplied by ``k`` (one value, or one per output channel): the weight scales
    and the bias scaled. A negative gain gives a negative scale, which the requantisation takes as is."""
    x, w = p.inputs
    axis = str(p.call.attrs.kernel_layout).index("O") if p.kind == "conv2d" else w.values.ndim - 1
    shape = [1] * w.values.ndim
    shape[axis] = -1
    factor = np.broadcast_to(k.reshape(shape) if k.size > 1 else k.reshape(()), w.values.shape)
    weights = QConst(w.values, (w.scales.astype(np.float32) * factor).astype(np.float32), w.zero_points)
    bias = p.bias
    if isinstance(bias, QConst):
        bias = (bias.real().reshape(-1) * k).astype(np.float32)
    elif bias is not None:
        bias = (np.asarray(bias, dtype=np.float32).reshape(-1) * k).astype(np.float32)
    return Pending(p.kind, (x, weights), p.call, bias=bias, act=p.act)


def _batch_norm(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    """Inference batch norm of a conv result (folded into its weight scales and bias) or of a quantised
    tensor (a depthwise 1x1 convolution with weight +-1 and the gain as its per-channel scale)."""
    data, gamma, beta, mean, variance = args
    consts = [_real(c) for c in (gamma, beta, mean, variance)]
    if any(c is None for c in consts):
        return NotImplemented
    g, b, m, v = (np.asarray(c, dtype=np.float32).reshape(-1) for c in consts)  # type: ignore[arg-type]
    k = (g / np.sqrt(v + np.float32(float(call.attrs.epsilon)))).astype(np.float32)
    shift = (b - m * k).astype(np.float32)
    axis = int(call.attrs.axis)
    if low.rounding != fixed_point.ONNX:
        return NotImplemented
    if isinstance(data, Pending) and data.kind == "conv2d" and data.act is None and not data.post:
        layout = str(data.call.attrs.out_layout or data.call.attrs.data_layout)
        if axis % 4 != layout.index("C"):
            return NotImplemented
        folded = _scaled(data, k)
        bias = np.zeros_like(k) if folded.bias is None else np.asarray(folded.bias, np.float32)
        # batch_norm's result is (output, running mean, running variance); inference reads field 0.
        return QTuple((Pending(folded.kind, folded.inputs, folded.call, bias=bias + shift), None, None))
    if isinstance(data, QTensor):
        return QTuple((_depthwise_affine(data, k, shift, axis), None, None))
    return NotImplemented


def _real(c: Any) -> np.ndarray | None:
    if isinstance(c, QConst):
        return c.real()
    if is_float_const(c):
        return _np(c).astype(np.float32)
    return None


def _depthwise_affine(x: QTensor, k: np.ndarray, shift: np.ndarray, axis: int) -> Pending:
    """``x * k[c] + shift[c]`` as a depthwise 1x1 conv: weight 1 with scale k[c], float bias shift[c]."""
    shape = [int(d) for d in x.var.ty.shape]
    layouts = {1: ("NCHW", "OIHW"), 3: ("NHWC", "HWOI")}  # HWOI: the depthwise weights of TFLite
    if len(shape) != 4 or axis % 4 not in layouts:
        raise NotInteger("batch norm of a quantised tensor other than its channels (NCHW or NHWC)")
    data_layout, kernel_layout = layouts[axis % 4]
    channels = shape[axis % 4]
    o_axis = kernel_layout.index("O")
    weight_shape = [1, 1, 1, 1]
    weight_shape[o_axis] = channels
    weights = np.ones(weight_shape, dtype=np.int8)
    # The call only lends its attributes (and result type) to the conv2d emitter.
    call = relax.BlockBuilder().normalize(
        relax.op.nn.conv2d(
            x.var,
            relax.const(weights),
            groups=channels,
            data_layout=data_layout,
            kernel_layout=kernel_layout,
            out_dtype="int32",
        )
    )
    scales = np.broadcast_to(k.reshape(weight_shape), weights.shape).astype(np.float32)
    return Pending(
        "conv2d", (x, QConst(weights, scales, np.zeros(weights.shape, np.int64))), call, bias=shift
    )


def _activation_bounds(call: Any) -> tuple[float | None, float | None]:
    if _tvm.op_name(call) == "relax.nn.relu":
        return 0.0, None
    return float(call.args[1].value), float(call.args[2].value)


def _activation(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    src = args[0]
    if isinstance(src, Pending) and src.act is None and src.kind not in ("clamp",):
        # A clamp commutes with data movement (post), so it still fuses into the operator's epilogue.
        return attrs.evolve(src, act=_activation_bounds(call))
    if isinstance(src, QTensor) and low.rounding == fixed_point.TFLITE:
        # TFLite's standalone RELU/RELU6: requantised to the output, then clamped (its exact arithmetic).
        return Pending("clamp", (src,), call, act=_activation_bounds(call))
    return _elementwise(low, var, call, args)


def _elementwise(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    """An element-wise op of one quantised tensor (and constants): composed into an Elementwise."""
    op = _tvm.op_name(call) or ""
    if op not in elementwise.NUMPY_RULES:
        return NotImplemented
    source: QTensor | None = None
    operands: list[Any] = []
    ops: tuple[str, ...] = ()
    for a in args:
        if isinstance(a, QTensor | Elementwise):
            src = a if isinstance(a, QTensor) else a.source
            if source is not None and not src.var.same_as(source.var):
                return NotImplemented  # two different quantised tensors
            source = src
            if isinstance(a, QTensor):
                operands.append(lambda x: x)
            else:
                operands.append(a.fn)
                ops += tuple(o for o in a.ops if o not in ops)
        elif isinstance(a, _tvm.RelaxConst):
            operands.append(_np(a))
        elif isinstance(a, QConst):
            operands.append(a.real())  # a quantised constant operand: its float value, exactly
        elif isinstance(a, _tvm.PrimValue):
            operands.append(float(a.value))
        else:
            return NotImplemented
    if source is None:
        return NotImplemented
    rank = len(source.var.ty.shape)
    return Elementwise(source, elementwise.compose(op, call, operands, rank), (*ops, op), call)


def _pool(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    op = _tvm.op_name(call)
    src = args[0]
    kinds = {
        "relax.nn.avg_pool2d": "avg_pool2d",
        "relax.nn.max_pool2d": "max_pool2d",
        "relax.mean": "mean",
        "relax.max": "reduce_max",
        "relax.min": "reduce_min",
    }
    if isinstance(src, QTensor):
        return Pending(kinds[op or ""], (src,), call)
    if op in ("relax.nn.max_pool2d", "relax.max", "relax.min") and isinstance(src, Elementwise):
        # max(f(x)) = f(max(x)) for a nondecreasing f: the maximum runs on the integers, the table after.
        if _is_scalar_function(src) and _nondecreasing(src):
            pooled = low.bb.emit(
                relax.Call(call.op, [src.source.var, *call.args[1:]], call.attrs, call.ty_args)
            )
            source = QTensor(pooled, src.source.scale, src.source.zero_point, src.source.dtype)
            return Elementwise(source, src.fn, src.ops, call)
        return NotImplemented
    if op == "relax.nn.avg_pool2d" and isinstance(src, IntAccumulate) and src.call is None:
        return IntAccumulate(src.source, call)
    return NotImplemented


def _softmax(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    if isinstance(args[0], QTensor):
        return Pending("softmax", (args[0],), call)
    return NotImplemented


def _pad(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    if isinstance(args[0], QTensor):
        return Pending("pad", (args[0],), call)
    return NotImplemented


def _concat(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    fields = args[0]
    items = list(fields.fields) if isinstance(fields, QTuple | relax.Tuple) else None
    if items is not None:
        items = [low.lookup(f) for f in items]
        if all(isinstance(f, QTensor) for f in items):
            return Pending("concat", tuple(items), call)
    return NotImplemented


def _layout_op(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    """A data-movement op of a quantised value: the same op on the integer tensor or constant."""
    src = args[0]
    op = _tvm.op_name(call)
    shape = tuple(int(d) for d in call.ty.shape)
    if isinstance(src, _tvm.RelaxConst | QConst):  # TFLite transposes int8 weights before dequantising them

        def move(a: np.ndarray) -> np.ndarray:
            if op == "relax.permute_dims":
                axes = [int(x) for x in call.attrs.axes] if call.attrs.axes is not None else None
                return np.ascontiguousarray(np.transpose(a, axes))
            return a.reshape(shape)

        return relax.const(move(_np(src))) if isinstance(src, _tvm.RelaxConst) else src.transformed(move)
    if isinstance(src, QTensor):
        new = low.bb.emit(relax.Call(call.op, [src.var, *call.args[1:]], call.attrs, call.ty_args))
        return QTensor(new, src.scale, src.zero_point, src.dtype)
    if isinstance(src, Pending):
        return attrs.evolve(src, post=(*src.post, call))  # moved after the operator, on its integers
    if isinstance(src, Elementwise) and _is_scalar_function(src):
        moved = low.bb.emit(relax.Call(call.op, [src.source.var, *call.args[1:]], call.attrs, call.ty_args))
        source = QTensor(moved, src.source.scale, src.source.zero_point, src.source.dtype)
        return Elementwise(source, src.fn, src.ops, call)
    return NotImplemented


def _nondecreasing(ew: Elementwise) -> bool:
    """Whether the function never decreases over the source's dequantised values (then it commutes with
    a maximum or a minimum)."""
    lo, hi = QUANTIZED_DTYPES[ew.source.dtype]
    x = ((np.arange(lo, hi + 1) - ew.source.zero_point) * np.float32(ew.source.scale)).astype(np.float32)
    with np.errstate(all="ignore"):
        y = np.asarray(
            ew.fn(x.reshape((-1,) + (1,) * len(ew.source.var.ty.shape))), dtype=np.float32
        ).reshape(-1)
    return bool(np.all(np.diff(y) >= 0))


def _is_scalar_function(ew: Elementwise) -> bool:
    """Whether an element-wise function uses no per-element constants (it then commutes with any
    data movement of its input)."""
    grid = np.zeros((2,) + (1,) * len(ew.source.var.ty.shape), dtype=np.float32)
    with np.errstate(all="ignore"):
        return bool(np.asarray(ew.fn(grid)).size <= 2)


def _astype(low: Lowering, var: Any, call: Any, args: list[Any]) -> Any:
    """TFLite's int8 average pool arrives as ``astype(int32) -> avg_pool2d -> astype(int8)``."""
    src = args[0]
    dtype = str(call.attrs.dtype)
    plain = not isinstance(src, LOWERED)
    if dtype == "int32" and plain and _tvm.tensor_dtype(src.ty) == "int8":
        return IntAccumulate(src, None)
    if dtype == "int8" and isinstance(src, IntAccumulate) and src.call is not None:
        return low.bb.emit(avg_pool_int8(low.bb, src.source, src.call, (-128, 127)))
    if isinstance(src, IntAccumulate):
        return low.bb.emit(relax.op.astype(src.source, dtype)) if src.call is None else NotImplemented
    if isinstance(src, QTensor | Elementwise) and dtype.startswith("float"):
        return src  # a float -> float cast of a dequantised value changes nothing
    return NotImplemented


# The handlers the operator registry (tvm_mcu.ops) names; the element-wise functions of the lookup
# tables that have no record of their own (comparisons, where: parts of imported activations).
HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(elementwise.NUMPY_RULES, _elementwise),
    **ops.rules("int8", globals()),
}
