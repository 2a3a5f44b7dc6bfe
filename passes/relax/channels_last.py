"""ChannelsLast: an NCHW model (ONNX's layout) computes channels-last, where the SIMD kernels apply.

The dot-product kernels read a tap's input channels as one contiguous run, which NHWC data has and NCHW
data has not: an NCHW convolution falls back to TVM's generic loops, 7-10 instructions per MAC against
1-2. This pass moves every NCHW convolution, and the ops between convolutions, to NHWC, and puts the
data back into NCHW only where an op's meaning depends on the layout (a Flatten of a feature map, a
model output): the model's interface is unchanged.

Each op's rule is its ``layout`` record in :mod:`tvm_mcu.ops`:

``_conv2d``   starts channels-last: NCHW data in NHWC, the weights transposed at compile time (OHWI; a
              depthwise convolution's HWOI, TFLite's), a dequantised weight as the dequantisation of the
              transposed integers (LowerQuantizedOps then sees the same per-channel weights).
``_same``     element-wise, one tensor: follows its input's layout.
``_binary``   element-wise, two tensors: channels-last when either is; the other operand moved to match
              (a per-channel constant ``(1, C, 1, 1)`` transposed at compile time).
``_pool``     pooling: its ``layout`` attribute follows its input.
``_reduce``   reductions: axes renamed; without ``keepdims`` only where the kept axes keep their order.
``_axis``     an ``axis`` attribute (softmax, quantize, dequantize, PReLU, batch norm): renamed.
``_pad``      pad widths permuted.
``_concat``   the axis renamed when every operand is channels-last (the others are moved).
``_boundary`` anything else (reshape, transpose, ...): reads NCHW, so a channels-last operand is moved
              back first.

A move is ``permute_dims``, or a ``reshape`` where the two layouts hold the same bytes (one channel, or
one pixel: a global pool's result, a grey-scale input), which the memory plan aliases for free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tvm_mcu import _tvm, ops
from tvm_mcu._tvm import relax, tvm

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
# NCHW axis -> its NHWC position.
_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def _shape(expr: Any) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape)
    except (TypeError, ValueError):
        return None  # symbolic


def _is_4d(expr: Any) -> bool:
    shape = _shape(expr)
    return shape is not None and len(shape) == 4


class _Rewriter:
    """One walk over ``main``'s bindings, emitting the channels-last function into ``bb``."""

    def __init__(self, bb: Any) -> None:
        self.bb = bb
        self.remap: dict[Any, Any] = {}  # old var -> new expr (NHWC when in self.last)
        self.last: set[Any] = set()  # old vars whose new value is channels-last
        self.tuple_last: dict[Any, set[int]] = {}  # old tuple vars -> fields that are channels-last
        self.moved: dict[tuple[Any, str], Any] = {}  # (old var, "nchw"|"nhwc") -> moved value
        self.origin: dict[Any, Any] = {}  # old var -> its binding's value

    # ----------------------------------------------------------------- moves
    def _move(self, new: Any, perm: tuple[int, ...], name: str) -> Any:
        shape = _shape(new)
        assert shape is not None
        target = tuple(shape[p] for p in perm)
        n, c = (shape[0], shape[3]) if perm == TO_NCHW else (shape[0], shape[1])
        pixels = int(np.prod(shape)) // max(n * c, 1)
        if c == 1 or pixels == 1:
            return self.bb.emit(relax.op.reshape(new, target), name_hint=name)
        return self.bb.emit(relax.op.permute_dims(new, list(perm)), name_hint=name)

    def nchw(self, expr: Any) -> Any:
        """``expr`` (an old expression) as the new function's NCHW value."""
        if isinstance(expr, _tvm.RelaxVar) and expr in self.last:
            key = (expr, "nchw")
            if key not in self.moved:
                self.moved[key] = self._move(self.remap[expr], TO_NCHW, f"{_tvm.var_name(expr)}_nchw")
            return self.moved[key]
        return self.plain(expr)

    def nhwc(self, expr: Any) -> Any:
        """``expr`` (an old 4-D NCHW expression) as the new function's NHWC value."""
        if isinstance(expr, _tvm.RelaxVar) and expr in self.last:
            return self.remap[expr]
        if isinstance(expr, _tvm.RelaxConst):
            return _tvm.relax_const(np.ascontiguousarray(_tvm.const_value(expr).transpose(TO_NHWC)))
        key = (expr, "nhwc")
        if key not in self.moved:
            name = _tvm.var_name(expr) if isinstance(expr, _tvm.RelaxVar) else "moved"
            self.moved[key] = self._move(self.plain(expr), TO_NHWC, f"{name}_nhwc")
        return self.moved[key]

    def plain(self, expr: Any) -> Any:
        """``expr`` with every old variable replaced by its new value in the original layout."""

        def on_var(v: Any) -> Any:
            return self.nchw(v) if v in self.last else self.remap.get(v, v)

        return _tvm.structural_map(expr, (_tvm.RelaxVar, on_var))

    def is_last(self, expr: Any) -> bool:
        return isinstance(expr, _tvm.RelaxVar) and expr in self.last

    # ----------------------------------------------------------------- walk
    def binding(self, var: Any, value: Any) -> None:
        new, last = self._rewrite(value)
        name = _tvm.var_name(var)
        if isinstance(var, relax.DataflowVar):
            self.remap[var] = self.bb.emit(new, name_hint=name)
        elif last is True:
            # A result of the block: computed channels-last, leaves it in the original layout.
            self.remap[var] = self.bb.emit(new, name_hint=f"{name}_nhwc")
            self.last.add(var)
            moved = self.nchw(var)
            self.last.discard(var)
            self.remap[var] = self.bb.emit_output(moved, name_hint=name)
            return
        else:
            self.remap[var] = self.bb.emit_output(new, name_hint=name)
        if last is True:
            self.last.add(var)
        elif isinstance(last, set) and last:
            self.tuple_last[var] = last

    def _rewrite(self, value: Any) -> tuple[Any, bool | set[int]]:
        """The new value of a binding and its layout (see :data:`Done`)."""
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            done = LAYOUT_RULES.get(_tvm.op_name(value) or "", _boundary)(self, value)
            if done is not None:
                return done
        elif isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, _tvm.RelaxVar):
            if value.index in self.tuple_last.get(value.tuple_value, set()):
                return relax.TupleGetItem(self.remap[value.tuple_value], value.index), True
        elif self.is_last(value):
            return self.remap[value], True  # an alias keeps its source's layout
        return self.plain(value), False


# ------------------------------------------------------------------------- rules
# A rule returns (new call, layout of the result: True for channels-last, a set of channels-last tuple
# fields, False for the original layout), or None for the boundary treatment.
Done = tuple[Any, "bool | set[int]"] | None


def _conv2d(rw: _Rewriter, call: Any) -> Done:
    a = call.attrs
    data, weight = call.args
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCHW", "OIHW", "NCHW"):
        return None
    shape = _shape(weight)
    if shape is None or not _is_4d(data):
        return None
    groups = int(a.groups)
    depthwise = groups > 1 and shape[1] == 1 and groups == shape[0] == (_shape(data) or (0, 0))[1]
    if groups != 1 and not depthwise:
        return None  # grouped (not depthwise): no channels-last kernel to gain
    # TFLite's layouts, which the integer lowering and the kernels already know.
    layout, perm = ("HWOI", (2, 3, 0, 1)) if depthwise else ("OHWI", (0, 2, 3, 1))
    new = _tvm.call_with_attrs(
        call,
        [rw.nhwc(data), _transposed_weight(rw, weight, perm)],
        data_layout="NHWC",
        kernel_layout=layout,
        out_layout="NHWC",
    )
    return new, True


def _transposed_weight(rw: _Rewriter, weight: Any, perm: tuple[int, ...]) -> Any:
    """The weights transposed: at compile time for a constant or the dequantisation of one (whose
    per-channel axis moves with it), else by a ``permute_dims`` (weights passed as parameters)."""
    if isinstance(weight, _tvm.RelaxConst):
        return _tvm.relax_const(np.ascontiguousarray(_tvm.const_value(weight).transpose(perm)))
    value = rw.origin.get(weight) if isinstance(weight, _tvm.RelaxVar) else None
    if isinstance(value, relax.Call) and _tvm.op_name(value) == "relax.dequantize":
        q = value.args[0]
        if isinstance(q, _tvm.RelaxConst):
            moved = _tvm.relax_const(np.ascontiguousarray(_tvm.const_value(q).transpose(perm)))
            axis = int(value.attrs.axis) % 4
            args = [moved, rw.plain(value.args[1]), rw.plain(value.args[2])]
            new = _tvm.call_with_attrs(value, args, axis=perm.index(axis))
            return rw.bb.emit(new, name_hint=f"{_tvm.var_name(weight)}_moved")
    name = _tvm.var_name(weight) if isinstance(weight, _tvm.RelaxVar) else "weight"
    return rw.bb.emit(relax.op.permute_dims(rw.plain(weight), list(perm)), name_hint=f"{name}_moved")


def _same(rw: _Rewriter, call: Any) -> Done:
    if not rw.is_last(call.args[0]):
        return None
    return _tvm.call_with_args(call, [rw.remap[call.args[0]], *map(rw.plain, call.args[1:])]), True


def _operand(rw: _Rewriter, expr: Any) -> Any | None:
    """A binary op's operand, channels-last for a channels-last 4-D result, or None (it cannot be)."""
    if rw.is_last(expr):
        return rw.remap[expr]
    shape = _shape(expr)
    if shape is None:
        return None
    if int(np.prod(shape)) == 1:
        return rw.plain(expr)  # a scalar broadcasts the same way in either layout
    if len(shape) == 4:
        return rw.nhwc(expr)  # a full tensor or a per-channel (1, C, 1, 1) one
    return None  # a lower-rank operand broadcasts against NCHW's trailing axes


def _binary(rw: _Rewriter, call: Any) -> Done:
    out = _shape(call)
    if out is None or len(out) != 4 or not any(rw.is_last(a) for a in call.args):
        return None
    args = [_operand(rw, a) for a in call.args]
    if any(a is None for a in args):
        return None
    return _tvm.call_with_args(call, args), True


def _pool(rw: _Rewriter, call: Any) -> Done:
    a = call.attrs
    if not rw.is_last(call.args[0]) or (str(a.layout), str(a.out_layout)) != ("NCHW", "NCHW"):
        return None
    return _tvm.call_with_attrs(call, [rw.remap[call.args[0]]], layout="NHWC", out_layout="NHWC"), True


def _reduce(rw: _Rewriter, call: Any) -> Done:
    x = call.args[0]
    if not rw.is_last(x):
        return None
    axes = [int(v) % 4 for v in call.attrs.axis] if call.attrs.axis is not None else [0, 1, 2, 3]
    keepdims = bool(call.attrs.keepdims)
    if not keepdims:
        # The kept axes must come out in the same order: NCHW's N, C, H, W against NHWC's N, H, W, C.
        kept_nchw = [d for d in range(4) if d not in axes]
        kept_nhwc = [d for d in (0, 2, 3, 1) if d not in axes]
        if kept_nchw != kept_nhwc:
            return None
    new_axes = sorted(_AXIS[d] for d in axes)
    new = _tvm.call_with_attrs(call, [rw.remap[x]], axis=new_axes)
    return new, keepdims


def _axis(rw: _Rewriter, call: Any) -> Done:
    x = call.args[0]
    if not rw.is_last(x):
        return None
    axis = int(call.attrs.axis) % 4
    new = _tvm.call_with_attrs(call, [rw.remap[x], *map(rw.plain, call.args[1:])], axis=_AXIS[axis])
    if isinstance(call.ty, relax.TupleType):
        return new, {0}  # batch norm: (result, mean, variance)
    return new, True


def _pad(rw: _Rewriter, call: Any) -> Done:
    x = call.args[0]
    if not rw.is_last(x):
        return None
    widths = [int(v) for v in call.attrs.pad_width]
    pairs = [widths[2 * d : 2 * d + 2] for d in range(4)]
    moved = [v for d in TO_NHWC for v in pairs[d]]
    return _tvm.call_with_attrs(call, [rw.remap[x], *map(rw.plain, call.args[1:])], pad_width=moved), True


def _concat(rw: _Rewriter, call: Any) -> Done:
    fields = call.args[0]
    if not isinstance(fields, relax.Tuple) or call.attrs.axis is None:
        return None
    items = list(fields.fields)
    if not all(_is_4d(f) for f in items) or not any(rw.is_last(f) for f in items):
        return None
    axis = _AXIS[int(call.attrs.axis) % 4]
    return _tvm.call_with_attrs(call, [relax.Tuple([rw.nhwc(f) for f in items])], axis=axis), True


def _boundary(rw: _Rewriter, call: Any) -> Done:
    return None


LAYOUT_RULES: dict[str, Callable[[_Rewriter, Any], Done]] = ops.rules("layout", globals())


def _has_nchw_conv(func: Any) -> bool:
    return any(
        isinstance(b.value, relax.Call)
        and _tvm.op_name(b.value) == "relax.nn.conv2d"
        and str(b.value.attrs.data_layout) == "NCHW"
        for block in func.body.blocks
        for b in block.bindings
    )


@tvm.transform.module_pass(opt_level=0, name="ChannelsLast")
class ChannelsLast:
    """Compute an NCHW model's convolutions, and the ops between them, channels-last (NHWC).

    Matches
        ``main`` with an NCHW ``conv2d`` (OIHW weights; regular or depthwise).
    Rewrites to
        the same computation with NHWC data: each such convolution with NHWC data and output and its
        weights transposed at compile time (OHWI; depthwise HWOI), the ops that follow it per their
        ``layout`` rule (:mod:`tvm_mcu.ops`), and a move back to NCHW (``permute_dims``, or a free
        ``reshape`` where both layouts hold the same bytes) before every op that reads NCHW and every
        output. Weights that are constants, or dequantisations of constants (a QDQ model's), are
        transposed at compile time; others (parameters) by a ``permute_dims``. Parameters and results
        keep their shapes. The bindings keep their names (their provenance); the moves are new ones.
    Declines when
        no convolution is NCHW (TFLite models, models without convolutions): the module is unchanged.
        A grouped (not depthwise) convolution stays NCHW.
    Numerics
        unchanged: only the order of elements in memory moves; every op computes the same values.
    Ordering
        before LowerQuantizedOps (which lowers the dequantize -> conv2d -> quantize patterns with
        their layouts) and after FoldBatchnormToConv2D (which only folds OIHW convolutions).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        if not _has_nchw_conv(func):
            return mod
        bb = relax.BlockBuilder(
            tvm.IRModule(
                {gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}, attrs=mod.attrs
            )
        )
        rw = _Rewriter(bb)
        bindings = [b for block in func.body.blocks for b in block.bindings]
        rw.origin = {b.var: b.value for b in bindings}
        params = list(func.params)
        attrs = dict(func.attrs) if func.attrs is not None else {}
        with _tvm.building_function(bb, "main", params, attrs=attrs):
            with bb.dataflow():
                for b in bindings:
                    rw.binding(b.var, b.value)
            bb.emit_func_output(rw.plain(func.body.body))
        return bb.get()
