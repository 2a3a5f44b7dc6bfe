"""Relax to ONNX: write a float model's inference form back as one standalone ONNX file.

Channel pruning edits the Relax module, which is the source of truth; this writer turns the result back
into the ONNX the rest of the tool chain (``tvm-mcu quantize``, ``tvm-mcu compile``) reads unchanged.

Op knowledge lives in ``_RULES``, one small function per Relax op. A rule must read every attribute of
the call (the writer checks), so an attribute nobody wrote a rule for is refused, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import tvm_mcu
from tvm_mcu import _tvm, ops
from tvm_mcu._tvm import IRModule, relax
from tvm_mcu.errors import BadOptionError, UnsupportedOpError

# The rules below hold for these opsets; 18 moves ReduceMean's axes to an input.
OPSETS = range(13, 18)
# The oldest IR version that carries opset 17; onnx 1.23 and onnx.reference read it.
IR_VERSION = 8


class _Refused(Exception):
    """A rule cannot write this call; the writer adds the op and binding to the message."""


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise _Refused(reason)


class _Attrs:
    """A call's attributes as plain Python values, remembering which ones a rule read."""

    def __init__(self, attrs: Any) -> None:
        self._attrs = attrs
        self.fields = _tvm.attr_fields(attrs)
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name not in self.fields:
            raise AttributeError(name)
        self.read.add(name)
        value = getattr(self._attrs, name)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):  # layouts, modes and DataTypes (a str subclass)
            return str(value)
        return [int(v) for v in value]  # TVM arrays of ints


class _Writer:
    """Collects ONNX nodes and initializers; names come from one counter, in writing order."""

    def __init__(self, reserved: set[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[Any, Any] = {}  # Relax var -> tensor name, or a tuple of names for a Tuple
        self._consts: dict[Any, str] = {}
        self._used = set(reserved)
        self._count = 0

    def fresh(self, base: str) -> str:
        while True:
            self._count += 1
            name = f"{base}_{self._count}"
            if name not in self._used:
                self._used.add(name)
                return name

    def const(self, value: np.ndarray, base: str = "const") -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scalar(self, value: float, dtype: str) -> str:
        return self.const(np.array(value, dtype=dtype))

    def value(self, expr: Any) -> Any:
        """Tensor name (or tuple of names) of a Relax expression: a bound var, a constant or a Tuple."""
        if isinstance(expr, _tvm.RelaxConst):
            if expr not in self._consts:
                self._consts[expr] = self.const(_tvm.const_value(expr))
            return self._consts[expr]
        if isinstance(expr, relax.Tuple):
            return tuple(self.value(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            fields = self.value(expr.tuple_value)
            _require(isinstance(fields, tuple), "TupleGetItem of a tensor")
            return fields[int(expr.index)]
        _require(isinstance(expr, _tvm.RelaxVar) and expr in self.names, f"operand {type(expr).__name__}")
        return self.names[expr]

    def tensor(self, expr: Any) -> str:
        name = self.value(expr)
        _require(isinstance(name, str), "a tuple where a tensor is expected")
        return str(name)

    def node(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> None:
        name = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))


Rule = Callable[[_Writer, Any, _Attrs, str], None]


def _dtype(expr: Any) -> str:
    return _tvm.tensor_dtype(expr.ty)


def _shape(ty: Any) -> list[int]:
    try:
        return list(_tvm.tensor_shape(ty))
    except ValueError as exc:  # a symbolic dimension: ONNX shapes here are static
        raise _Refused(str(exc)) from None


def _same_dtype(call: Any, out_dtype: str | None) -> None:
    _require(out_dtype in (None, _dtype(call.args[0])), f"out_dtype={out_dtype} differs from the input's")


def _layouts(*got: str, want: tuple[str, ...]) -> None:
    _require(got == want, f"layouts {'/'.join(got)}; only {'/'.join(want)} has a rule")


def _conv2d(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    _layouts(a.data_layout, a.kernel_layout, a.out_layout, want=("NCHW", "OIHW", "NCHW"))
    _same_dtype(call, a.out_dtype)
    x, weight = call.args
    # Relax padding and ONNX pads are both (top, left, bottom, right).
    pads, kernel = a.padding, _shape(weight.ty)[2:]
    _require(len(pads) == 4, f"padding {pads} is not (top, left, bottom, right)")
    attrs = dict(kernel_shape=kernel, strides=a.strides, pads=pads, dilations=a.dilation, group=a.groups)
    w.node("Conv", [w.tensor(x), w.tensor(weight)], out, **attrs)


def _pool2d(op_type: str) -> Rule:
    def rule(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
        _layouts(a.layout, a.out_layout, want=("NCHW", "NCHW"))
        pads, dilation, count_include_pad = a.padding, a.dilation, a.count_include_pad
        _require(len(pads) == 4, f"padding {pads} is not (top, left, bottom, right)")
        extra: dict[str, Any] = {}
        if op_type == "MaxPool":
            # count_include_pad means nothing to a maximum: padding is -inf in both IRs.
            extra["dilations"] = dilation
        else:
            _require(set(dilation) == {1}, f"dilation {dilation}: AveragePool has none before opset 19")
            extra["count_include_pad"] = int(count_include_pad)
        attrs = dict(kernel_shape=a.pool_size, strides=a.strides, pads=pads, ceil_mode=int(a.ceil_mode))
        w.node(op_type, [w.tensor(call.args[0])], out, **attrs, **extra)

    return rule


def _adaptive_avg_pool2d(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    _layouts(a.layout, a.out_layout, want=("NCHW", "NCHW"))
    size = a.output_size or _shape(call.args[0].ty)[2:]  # None keeps the input's size
    _require(list(size) in ([1], [1, 1]), f"output_size {size}; only 1x1 (GlobalAveragePool) has a rule")
    w.node("GlobalAveragePool", [w.tensor(call.args[0])], out)


def _simple(op_type: str, n_args: int) -> Rule:
    """An op with no attributes whose tensor operands map one to one (numpy broadcasting in both IRs)."""

    def rule(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
        _require(len(call.args) == n_args, f"{len(call.args)} operands")
        _require(len({_dtype(x) for x in call.args}) == 1, "operands of different dtypes")
        w.node(op_type, [w.tensor(x) for x in call.args], out)

    return rule


def _bound(op_type: str) -> Rule:
    """maximum/minimum: against a one-element constant, a one-sided ONNX Clip, which TVM's importer reads
    back as the same Relax op (Max/Min would come back as stack + reduce); else Max/Min."""
    tensor_rule = _simple(op_type, 2)

    def rule(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
        x, c = call.args
        if isinstance(x, _tvm.RelaxConst):
            x, c = c, x  # both ops are commutative
        bound = _tvm.const_value(c) if isinstance(c, _tvm.RelaxConst) else None
        if bound is None or bound.size != 1 or bound.ndim > len(_shape(x.ty)):
            return tensor_rule(w, call, a, out)  # a bound that broadcasts x to a new shape is not a Clip
        _require(_dtype(x) == str(bound.dtype), "operands of different dtypes")
        bounds = [w.const(bound.reshape(())), ""] if op_type == "Max" else ["", w.const(bound.reshape(()))]
        w.node("Clip", [w.tensor(x), *bounds], out)

    return rule


def _clip(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    x, lo, hi = call.args
    bounds = (_tvm.tirx.FloatImm, _tvm.tirx.IntImm)
    _require(isinstance(lo, bounds) and isinstance(hi, bounds), "bounds that are not numbers")
    # TVM casts the bounds to the tensor's dtype, as ONNX Clip's typed bounds do.
    w.node("Clip", [w.tensor(x), w.scalar(lo.value, _dtype(x)), w.scalar(hi.value, _dtype(x))], out)


def _leakyrelu(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    w.node("LeakyRelu", [w.tensor(call.args[0])], out, alpha=float(a.alpha))


def _softmax(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    # Softmax-13 normalises along one axis, as Relax does (older opsets flatten).
    w.node("Softmax", [w.tensor(call.args[0])], out, axis=a.axis)


def _mean(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    axes = {} if a.axis is None else {"axes": a.axis}  # no axes: reduce over all, in both IRs
    w.node("ReduceMean", [w.tensor(call.args[0])], out, keepdims=int(a.keepdims), **axes)


def _reshape(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    shape = call.args[1]
    _require(isinstance(shape, relax.ShapeExpr), "a shape that is not an R.shape literal")
    dims = list(shape.values)
    _require(all(isinstance(d, _tvm.tirx.IntImm) for d in dims), f"symbolic shape {dims}")
    # ONNX Reshape reads 0 as "copy this dimension" and -1 as "infer"; Relax shapes here are all positive.
    _require(all(int(d) > 0 for d in dims), f"shape {[int(d) for d in dims]} has a non-positive dimension")
    w.node("Reshape", [w.tensor(call.args[0]), w.const(np.array(dims, np.int64), "shape")], out)


def _permute_dims(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    perm = {} if a.axes is None else {"perm": a.axes}  # no axes: reverse, in both IRs
    w.node("Transpose", [w.tensor(call.args[0])], out, **perm)


def _matmul(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    _same_dtype(call, a.out_dtype)
    w.node("MatMul", [w.tensor(x) for x in call.args], out)


def _concat(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    parts = w.value(call.args[0])
    _require(isinstance(parts, tuple), "operand that is not a tuple")
    _require(a.axis is not None, "axis=None (flattening concat)")
    w.node("Concat", list(parts), out, axis=a.axis)


# Relax's pad modes and ONNX's names for them (circular is ONNX's "wrap", opset 19: beyond OPSETS).
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    mode = str(a.pad_mode)
    _require(mode in _PAD_MODES, f"pad_mode={mode!r} (ONNX writes it from opset 19 only)")
    x, widths = call.args[0], a.pad_width
    rank = len(_shape(x.ty))
    _require(len(widths) == 2 * rank, f"pad_width {widths} for a rank-{rank} tensor")
    # Relax interleaves (before, after) per axis; ONNX lists every before, then every after.
    pads = np.array(widths[0::2] + widths[1::2], np.int64)
    w.node(
        "Pad",
        [w.tensor(x), w.const(pads, "pads"), w.scalar(a.pad_value, _dtype(x))],
        out,
        mode=_PAD_MODES[mode],
    )


def _unary(op_type: str) -> Rule:
    return _simple(op_type, 1)


def _reduce(op_type: str, axes_input: bool = False) -> Rule:
    """A reduction over ``axis`` (None: every axis, in both IRs); ReduceSum takes its axes as an input
    from opset 13, the others as an attribute until 18."""

    def rule(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
        keep = int(a.keepdims)
        if a.axis is None:
            w.node(op_type, [w.tensor(call.args[0])], out, keepdims=keep)
        elif axes_input:
            w.node(
                op_type,
                [w.tensor(call.args[0]), w.const(np.array(a.axis, np.int64), "axes")],
                out,
                keepdims=keep,
            )
        else:
            w.node(op_type, [w.tensor(call.args[0])], out, keepdims=keep, axes=a.axis)

    return rule


def _silu(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    x = w.tensor(call.args[0])
    s = w.fresh("sigmoid")
    w.node("Sigmoid", [x], s)
    w.node("Mul", [x, s], out)


def _gelu(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    """0.5 * x * (1 + erf(x / sqrt(2))): TVM's exact GELU, in opset-13 ops (Gelu itself is opset 20)."""
    x = call.args[0]
    dt = _dtype(x)
    xn = w.tensor(x)
    (
        scaled,
        erf,
        one_plus,
        half,
    ) = (w.fresh(n) for n in ("gelu_scaled", "gelu_erf", "gelu_1p", "gelu_half"))
    w.node("Mul", [xn, w.scalar(1 / np.sqrt(2.0), dt)], scaled)
    w.node("Erf", [scaled], erf)
    w.node("Add", [erf, w.scalar(1.0, dt)], one_plus)
    w.node("Mul", [xn, w.scalar(0.5, dt)], half)
    w.node("Mul", [half, one_plus], out)


def _prelu(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    x, slope = call.args
    rank = len(_shape(x.ty))
    axis = int(a.axis) % rank
    _require(isinstance(slope, _tvm.RelaxConst), "a slope that is not a constant")
    value = _tvm.const_value(slope).reshape(-1)
    # ONNX PRelu broadcasts the slope numpy-style: one value per element of ``axis``, then ones.
    shaped = value.reshape((value.size,) + (1,) * (rank - 1 - axis)) if value.size > 1 else value.reshape(())
    w.node("PRelu", [w.tensor(x), w.const(shaped, "slope")], out)


def _log_softmax(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    w.node("LogSoftmax", [w.tensor(call.args[0])], out, axis=a.axis)


def _squeeze(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    x = call.args[0]
    axes = a.axis if a.axis is not None else [k for k, d in enumerate(_shape(x.ty)) if d == 1]
    w.node("Squeeze", [w.tensor(x), w.const(np.array(axes, np.int64), "axes")], out)


def _expand_dims(w: _Writer, call: Any, a: _Attrs, out: str) -> None:
    w.node("Unsqueeze", [w.tensor(call.args[0]), w.const(np.array(a.axis, np.int64), "axes")], out)


# The rules the operator registry (tvm_mcu.ops) names.
_add, _subtract, _multiply, _divide, _power = (_simple(t, 2) for t in ("Add", "Sub", "Mul", "Div", "Pow"))
_maximum, _minimum = _bound("Max"), _bound("Min")
_relu, _sigmoid, _tanh, _exp, _log, _sqrt, _abs, _negative, _erf = (
    _unary(t) for t in ("Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Abs", "Neg", "Erf")
)
_max_pool2d, _avg_pool2d = _pool2d("MaxPool"), _pool2d("AveragePool")
_reduce_max, _reduce_min, _reduce_sum = _reduce("ReduceMax"), _reduce("ReduceMin"), _reduce("ReduceSum", True)

_RULES: dict[str, Rule] = ops.rules("export", globals())


def _value_info(name: str, ty: Any) -> onnx.ValueInfoProto:
    _require(isinstance(ty, relax.TensorType), f"'{name}' is not a tensor")
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(_tvm.tensor_dtype(ty)))
    return helper.make_tensor_value_info(name, elem, _shape(ty))


def _names(given: Sequence[str] | None, default: list[str], what: str) -> list[str]:
    names = list(default if given is None else given)
    if len(names) != len(default):
        raise BadOptionError(f"{len(names)} {what} names given for a model with {len(default)} {what}s")
    if len(set(names)) != len(names) or not all(names):
        raise BadOptionError(f"{what} names {names} are not distinct and non-empty")
    return names


def _operands(expr: Any) -> list[Any]:
    """The Relax expressions ``expr`` reads, in argument order (tuples flattened)."""
    if isinstance(expr, relax.Call):
        return [x for arg in expr.args for x in _operands(arg)]
    if isinstance(expr, relax.Tuple):
        return [x for f in expr.fields for x in _operands(f)]
    if isinstance(expr, relax.TupleGetItem):
        return _operands(expr.tuple_value)
    return [expr]


def _live_order(bindings: dict[Any, Any], roots: list[Any]) -> list[Any]:
    """Bindings the results depend on, depth first from the results, operands in argument order.

    The order depends only on the dataflow graph, not on the order of the bindings: TVM's importer binds
    some ops where they are first used, and a re-imported model must write the same bytes.
    """
    order: list[Any] = []
    seen: set[Any] = set()
    stack = [(root, False) for root in reversed(roots)]
    while stack:
        var, done = stack.pop()
        if done:
            order.append(var)
        elif var in bindings and var not in seen:
            seen.add(var)
            stack.append((var, True))
            stack.extend((x, False) for x in reversed(_operands(bindings[var].value)))
    return order


def _write(w: _Writer, binding: Any, out: str | None) -> None:
    """Write one binding: a call by its rule into ``out`` (or a fresh name); anything else is a name."""
    var, value = binding.var, binding.value
    op = _tvm.op_name(value) if isinstance(value, relax.Call) else None
    try:
        _require(isinstance(binding, relax.VarBinding), f"a {type(binding).__name__}")
        if not isinstance(value, relax.Call):
            w.names[var] = w.value(value)  # an alias, a tuple, a tuple item or a constant
            return
        rule = _RULES.get(op or "")
        if rule is None:
            raise _Refused(ops.refusal("export", op or "") or "no rule")
        out = out or w.fresh(str(op).rsplit(".", 1)[-1])
        attrs = _Attrs(value.attrs)
        rule(w, value, attrs, out)
        unread = [f for f in attrs.fields if f not in attrs.read]
        _require(not unread, f"no rule for attribute(s) {', '.join(unread)}")
        w.names[var] = out
    except _Refused as exc:
        what = op or type(value).__name__
        raise UnsupportedOpError(
            f"cannot write {what} (binding '{_tvm.var_name(var)}') to ONNX: {exc}"
        ) from None


def _fold_biases(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], ranks: dict[str, int]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``Conv`` + ``Add`` of a per-channel constant becomes a Conv with a bias, and 2-D ``MatMul`` by a
    constant + ``Add`` of a per-feature constant a ``Gemm``: the form quantisers and importers expect
    (a QDQ quantiser gives the bias int32 only as a Conv/Gemm input). Same arithmetic: the bias is
    added once to the finished sum either way."""
    from onnx import numpy_helper

    consts = {t.name: t for t in inits}
    users: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    producer = {o: n for n in nodes for o in n.output}
    unused: set[str] = set()  # initializers only a folded Add read
    biases: list[onnx.TensorProto] = []
    folded: set[int] = set()  # ids of the Add nodes folded away
    replaced: dict[int, onnx.NodeProto] = {}  # id of a Conv/MatMul -> its Conv/Gemm with the bias
    for n in nodes:
        if n.op_type != "Add" or len(n.input) != 2 or n.input[1] not in consts:
            continue
        src = producer.get(n.input[0])
        if src is None or users[n.input[0]] != 1 or src.input[1:2] == [] or src.input[1] not in consts:
            continue
        bias = numpy_helper.to_array(consts[n.input[1]])
        wshape = numpy_helper.to_array(consts[src.input[1]]).shape
        bias_name = n.input[1] + "_bias"
        if (
            src.op_type == "Conv"
            and len(src.input) == 2
            and bias.shape in ((wshape[0],), (1, wshape[0], 1, 1))
        ):
            new = helper.make_node("Conv", [*src.input, bias_name], list(n.output), name=src.name)
            new.attribute.extend(src.attribute)
        elif (
            src.op_type == "MatMul"
            and len(wshape) == 2
            and ranks.get(src.input[0]) == 2
            and bias.shape in ((wshape[1],), (1, wshape[1]))
        ):
            new = helper.make_node("Gemm", [*src.input, bias_name], list(n.output), name=src.name)
        else:
            continue
        biases.append(numpy_helper.from_array(bias.reshape(-1), bias_name))
        if users[n.input[1]] == 1:
            unused.add(n.input[1])
        folded.add(id(n))
        replaced[id(src)] = new
    out_nodes = [replaced.get(id(n), n) for n in nodes if id(n) not in folded]
    return out_nodes, [t for t in inits if t.name not in unused] + biases


def export_onnx(
    mod: IRModule,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = 13,
    model_name: str = "model",
) -> onnx.ModelProto:
    """Write the ``main`` function of a float Relax module in inference form as a standalone ONNX model.

    Inference form is what ``pipeline.run(pipeline.inference_passes(), imported.mod)`` gives: Relax ops
    such as conv2d, add, relu, pools, mean, reshape and matmul, with constants for the weights. Each op
    is written by its rule in ``_RULES``; constants become initializers.

    Parameters
    ----------
    mod
        The module; only ``main`` is read.
    input_names, output_names
        Graph input and output names, in parameter and result order. Default: the parameters' names,
        and ``output`` (one result) or ``output_0``, ``output_1``, ... (a tuple of results).
    opset
        The default-domain opset, 13 to 17.
    model_name
        The ONNX graph's name.

    Returns
    -------
    onnx.ModelProto
        IR version 8, weights as initializers, ``producer_name`` "tvm-mcu". Deterministic: nodes are
        in depth-first order from the results and names come from one counter, so the same module gives
        byte-identical ``SerializeToString()``, and so does the written model read back with
        ``load_model`` and put in inference form again. Bindings no result depends on are not written.

    Raises
    ------
    UnsupportedOpError
        For a binding with no rule: an op outside the table, an attribute its rule does not read, or an
        attribute value the rule declines (e.g. conv2d with a layout other than NCHW/OIHW).
    BadOptionError
        For an opset outside 13 to 17, or names that do not match the parameters and results.

    Notes
    -----
    Each written node computes its Relax op's function. ``maximum``/``minimum`` against a one-element
    constant become a one-sided ``Clip`` (TVM's importer reads that back as the same op; ``Max`` would
    come back as stack + reduce). Under ``onnx.reference`` the written inference form matches the
    original model within rtol 1e-5, atol 1e-6 (the BatchNorm folding rounds differently).
    """
    if opset not in OPSETS:
        raise BadOptionError(f"opset {opset}: the ONNX writer supports opsets {OPSETS[0]} to {OPSETS[-1]}")
    func = mod["main"]
    bindings = {b.var: b for block in func.body.blocks for b in block.bindings}
    ret = results = func.body.body
    while isinstance(results, _tvm.RelaxVar) and results in bindings:  # gv = (lv3, lv8); gv = lv
        results = bindings[results].value
    results = list(results.fields) if isinstance(results, relax.Tuple) else [ret]
    ret_types = list(func.ret_ty.fields) if isinstance(func.ret_ty, relax.TupleType) else [func.ret_ty]
    default_out = ["output"] if len(results) == 1 else [f"output_{k}" for k in range(len(results))]
    ins = _names(input_names, [_tvm.var_name(p) for p in func.params], "input")
    outs = _names(output_names, default_out, "output")
    if set(ins) & set(outs):
        raise BadOptionError(f"names {sorted(set(ins) & set(outs))} are both an input and an output")

    # A call whose result is returned writes straight into the output's name (first claim wins).
    claims: dict[Any, str] = {}
    for name, expr in zip(outs, results, strict=True):
        while expr in bindings and isinstance(bindings[expr].value, _tvm.RelaxVar):
            expr = bindings[expr].value
        if expr in bindings and isinstance(bindings[expr].value, relax.Call) and expr not in claims:
            claims[expr] = name

    w = _Writer(reserved=set(ins) | set(outs))
    w.names.update(zip(func.params, ins, strict=True))
    for var in _live_order(bindings, _operands(ret)):
        _write(w, bindings[var], claims.get(var))

    try:
        inputs = [_value_info(n, p.ty) for n, p in zip(ins, func.params, strict=True)]
        outputs = [_value_info(n, ty) for n, ty in zip(outs, ret_types, strict=True)]
        for name, expr in zip(outs, results, strict=True):
            tensor = w.tensor(expr)
            if tensor != name:  # a parameter, a constant, or a result returned twice
                w.node("Identity", [tensor], name)
    except _Refused as exc:
        raise UnsupportedOpError(f"cannot write the interface of main to ONNX: {exc}") from None
    graph = helper.make_graph(w.nodes, model_name, inputs, outputs, initializer=w.inits)
    inferred = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    )
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    nodes, inits = _fold_biases(w.nodes, w.inits, ranks)
    graph = helper.make_graph(nodes, model_name, inputs, outputs, initializer=inits)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=IR_VERSION,
        producer_name="tvm-mcu",
        producer_version=tvm_mcu.__version__,
    )
