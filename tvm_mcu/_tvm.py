"""Every version-specific Apache TVM name and workaround, for apache-tvm 0.27.0.post1.

The rest of tvm-mcu imports TVM through this module only, so the next TVM upgrade touches one file.
Facts behind each workaround: ``shared/notes/tvm-0.27.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx, topi
from tvm.ir import IRModule

__all__ = [
    "Analyzer",
    "detect_linear_equation",
    "tvm",
    "relax",
    "tirx",
    "s_tir",
    "te",
    "topi",
    "IRModule",
    "GlobalVar",
    "PrimFunc",
    "RelaxFunction",
    "RelaxVar",
    "RelaxCall",
    "RelaxConst",
    "PrimValue",
    "ConstantExpr",
    "TensorType",
    "BufferType",
    "PointerType",
    "PrimType",
    "TensorLoad",
    "AllocBuffer",
    "DeclBuffer",
    "C_TARGET",
    "structural_map",
    "structural_walk",
    "assert_structural_equal",
    "structural_equal",
    "const_value",
    "error_summary",
    "TVMError",
    "tensor_shape",
    "tensor_dtype",
    "var_name",
    "op_name",
    "attr_fields",
    "buffer_data_op",
    "ptr_byte_offset",
    "build_c_source",
    "register_tir_pipeline",
    "building_function",
    "is_internal_error",
    "from_onnx",
    "provenance",
    "provenance_name",
    "ATTR_PROVENANCE",
    "from_tflite",
    "relax_const",
    "attr_values",
    "call_with_args",
    "call_with_attrs",
]

GlobalVar = tvm.ir.GlobalVar
PrimFunc = tirx.PrimFunc
RelaxFunction = relax.Function
# 0.27 unified Var: Relax vars are ``tvm.ir.Var`` with ``.name`` and ``.ty``
# (was ``name_hint`` / ``struct_info``).
RelaxVar = relax.Var
RelaxCall = relax.Call
# 0.27: ``relax.Constant(.data)`` became ``tvm.ir.GenericConst(.value)``.
RelaxConst = tvm.ir.GenericConst
# 0.27: ``relax.TensorStructInfo`` became ``relax.TensorType``.
TensorType = relax.TensorType
# 0.27: ``relax.PrimValue`` is gone; a scalar argument (R.clip's bounds) is a prim ``IntImm``/``FloatImm``,
# and every constant expression (those and ``GenericConst``) derives from ``tvm.ir.expr.Constant``.
PrimValue = (tirx.IntImm, tirx.FloatImm)
ConstantExpr = tvm.ir.expr.Constant
BufferType = tirx.BufferType
PointerType = tvm.ir.PointerType
PrimType = tvm.ir.PrimType
# 0.27: a buffer load is ``tvm.ir.TensorLoad``; ``tirx.BufferLoad`` is only a factory function.
TensorLoad = tvm.ir.TensorLoad
AllocBuffer = tirx.AllocBuffer
DeclBuffer = tirx.DeclBuffer

# CodeGenCHost; target strings such as "c -mcpu=..." are rejected in 0.27, targets are dicts.
# Integer-set analysis (tvm.arith before 0.27).
from tvm.sym import detect_linear_equation  # noqa: E402
from tvm.sym.analyzer import Analyzer  # noqa: E402

C_TARGET = tvm.target.Target({"kind": "c"})

# 0.26/0.27 removed tirx.stmt_functor; the generic replacements live in tvm_ffi.
structural_map: Callable[..., Any] = tvm_ffi.structural_map
structural_walk: Callable[..., Any] = tvm_ffi.structural_walk
structural_equal: Callable[..., bool] = tvm_ffi.structural_equal
assert_structural_equal = tvm.ir.assert_structural_equal


def _register_errors() -> None:
    """Let tvm-mcu's errors cross TVM's FFI with their type (a pass raising UnsupportedOpError inside a
    Sequential reaches the caller as UnsupportedOpError, not RuntimeError)."""
    from tvm_mcu import errors

    for cls in (errors.UnsupportedOpError, errors.BudgetError, errors.BadOptionError, errors.ModelError):
        tvm_ffi.register_error(cls.__name__, cls)


_register_errors()

# TVM 0.27 raises its C++ errors as RuntimeError subclasses (InternalError, OpError, ...).
TVMError = RuntimeError


def is_internal_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a bug rather than TVM refusing the user's model: a TVM ``InternalError`` (a
    failed internal check: TVM's bug, or IR that tvm-mcu built wrongly), or an exception that passed
    through tvm-mcu's own passes or analyses (any frame in the tvm_mcu package, passes and targets
    included, other than the drivers that only call TVM: compiler, pipeline, api, cli)."""
    import traceback
    from pathlib import Path

    import tvm_mcu
    import tvm_mcu.passes
    import tvm_mcu.targets

    if isinstance(exc, tvm.error.InternalError):
        return True
    ours = [Path(str(m.__file__)).parent for m in (tvm_mcu, tvm_mcu.passes, tvm_mcu.targets)]
    drivers = {ours[0] / f"{name}.py" for name in ("compiler", "pipeline", "api", "cli")}
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path not in drivers and any(path.is_relative_to(d) for d in ours):
            return True
    return False


def error_summary(exc: BaseException) -> str:
    """One line for an exception raised inside TVM: its type and the innermost Python frame's function."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f.name for f in reversed(frames) if "/tvm/" in f.filename), "")
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}{' in ' + where if where else ''}{': ' + text if text else ''}"


def const_value(c: Any) -> np.ndarray:
    """The numpy value of a Relax constant."""
    return c.value.numpy()


def relax_const(arr: np.ndarray) -> Any:
    """A Relax constant holding ``arr`` (dtype kept)."""
    return relax.const(arr, str(arr.dtype))


def attr_values(attrs: Any) -> dict[str, Any]:
    """Every field of an operator's attributes as a plain Python value (arrays become tuples, dtypes
    strings), read through tvm-ffi's type reflection so that a field added by a TVM upgrade shows up."""
    return {name: _plain(getattr(attrs, name)) for name in attr_fields(attrs)}


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float):
        return v
    if isinstance(v, str):  # also tvm-ffi's dtype, a str subclass
        return str(v)
    if isinstance(v, tirx.IntImm | tirx.FloatImm):
        return v.value
    if isinstance(v, tvm_ffi.Array):
        return tuple(_plain(x) for x in v)
    return str(v)  # DataType and other scalars


def call_with_args(call: Any, args: list[Any]) -> Any:
    """``call`` with its arguments replaced (same op, attributes and type arguments)."""
    return relax.Call(call.op, args, call.attrs, call.ty_args)


def call_with_attrs(call: Any, args: list[Any], **changes: Any) -> Any:
    """``call`` with its arguments replaced and some attribute fields changed (the others kept).

    0.27: an attributes object is rebuilt from its reflected fields with ``make_node``."""
    if not changes:
        return call_with_args(call, args)
    fields = {name: getattr(call.attrs, name) for name in attr_fields(call.attrs)}
    unknown = set(changes) - set(fields)
    if unknown:
        raise KeyError(f"{op_name(call)} has no attribute {', '.join(sorted(unknown))}")
    fields.update(changes)
    attrs = tvm.ir.make_node(type(call.attrs).__tvm_ffi_type_info__.type_key, **fields)
    return relax.Call(call.op, args, attrs, call.ty_args)


def _prim_dtype(dt: Any) -> str:
    return str(dt.dtype) if isinstance(dt, tvm.ir.PrimType) else str(dt)


def tensor_shape(ty: Any) -> tuple[int, ...]:
    """Static shape of a Relax ``TensorType`` (raises ValueError when a dimension is symbolic)."""
    shape = ty.shape
    if shape is None:
        raise ValueError("tensor has unknown rank")
    dims = []
    for s in shape:
        if not isinstance(s, tirx.IntImm):
            raise ValueError(f"dimension {s} is not static")
        dims.append(int(s))
    return tuple(dims)


def tensor_dtype(ty: Any) -> str:
    """dtype string (``"float32"``, ``"int8"``, ...) of a Relax ``TensorType`` or TIR buffer type."""
    return _prim_dtype(ty.dtype)


def var_name(v: Any) -> str:
    """The name of a Relax or TIR variable."""
    return str(v.name)


def op_name(call: Any) -> str | None:
    """``"relax.nn.conv2d"`` for a call to a Relax operator, None for calls to functions."""
    op = call.op
    return str(op.name) if isinstance(op, tvm.ir.Op) else None


def attr_fields(attrs: Any) -> tuple[str, ...]:
    """Field names of an operator call's attributes object (``()`` when the op has none).

    0.27: attrs are tvm_ffi objects; their fields are listed by the reflected type info.
    """
    names: list[str] = []
    info = None if attrs is None else type(attrs).__tvm_ffi_type_info__
    while info is not None:
        names[:0] = [f.name for f in info.fields]
        info = info.parent_type_info
    return tuple(names)


def buffer_data_op() -> Any:
    """The ``tirx.buffer_data(buf)`` intrinsic that stands for a BufferType parameter's data pointer."""
    return tvm.ir.Op.get("tirx.buffer_data")


def ptr_byte_offset(base: Any, offset: int, dtype: str) -> Any:
    """A typed pointer ``(dtype*)((char*)base + offset)`` that CodeGenC understands."""
    return tirx.ptr_byte_offset(base, offset, dtype)


@contextlib.contextmanager
def building_function(
    bb: Any, name: str, params: list[Any], *, attrs: dict[str, Any], private: bool = False
) -> Iterator[None]:
    """``bb.function(...)``, for a rewrite that may raise midway.

    0.27: a ``bb.function`` scope left by an exception keeps the binding block its dataflow scope
    opened on exit, and the BlockBuilder's destructor then prints "BlockBuilder destroyed with
    remaining blocks!" to stderr, so a clean one-line refusal would come with a stray TVM warning.
    """
    try:
        with bb.function(name, params, attrs=attrs, private=private):
            yield
    except BaseException:
        bb._end_block()
        raise


def build_c_source(mod: IRModule) -> str:
    """CodeGenCHost source of an IRModule of unpacked, lowered PrimFuncs (no MakePackedAPI).

    ``tvm.tirx.build`` always runs MakePackedAPI, so the codegen is called directly.
    """
    build = tvm_ffi.get_global_func("target.build.c")
    return str(build(mod, C_TARGET).inspect_source())


def register_tir_pipeline(name: str, after: Callable[[], list[Any]]) -> str:
    """Register under ``name`` TVM's default TIR pipeline followed by the passes ``after()`` makes, for
    ``tvm.compile(mod, target=..., tir_pipeline=name)``; returns ``name``. Registering again replaces.

    0.27: ``tvm.tirx.build`` takes only a registered pipeline's name (it asserts a ``str``); a pipeline
    is a factory of (lowering pass, host finalisation, device finalisation). The default for CPU
    targets is ``s_tir``'s, whose last passes give the packed calling convention; the host
    finalisation after it (LowerTVMBuiltin, LowerIntrin) does not simplify.
    """
    from tvm.s_tir import pipeline as s_tir_pipeline
    from tvm.tirx import compilation_pipeline

    def factory() -> tuple[Any, Any, Any]:
        lowering, host, device = s_tir_pipeline.default_s_tir_pipeline()
        return tvm.transform.Sequential([lowering, *after()], name=name), host, device

    compilation_pipeline.register_tir_pipeline(name, factory)
    return name


# main's attribute mapping each binding's variable name to the ONNX node it came from, e.g.
# ``{"lv15": "BatchNormalization 'bn_1'"}``: errors name the user's node, not Relax's variables.
ATTR_PROVENANCE = "tvmmcu.provenance"


def from_onnx(model: Any, shape_dict: dict[str, list[int]]) -> IRModule:
    """TVM's ONNX importer, with the ONNX node of every binding of ``main`` recorded (ATTR_PROVENANCE).

    0.27's importer names every binding ``lv<n>``; its node table (``_nodes``: ONNX tensor name ->
    Relax expression, a Var or a Call the normaliser binds where it is used) is read after the import.
    A node's bindings are emitted together, so each binding belongs to the first node output bound at
    or after it.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _onnx_importer()(shape_dict, "float32", keep_params_in_input=False, sanitize=True)
    try:
        mod = importer.from_onnx(model.graph, opset)
    except BaseException:
        importer.bb._end_block()  # see building_function: no stray "BlockBuilder destroyed" line
        raise
    producer: dict[Any, str] = {}
    for k, node in enumerate(model.graph.node):
        label = f"{node.op_type} '{node.name or (node.output[0] if node.output else k)}'"
        for out in node.output:
            expr = importer._nodes.get(out)
            if isinstance(expr, relax.Expr):  # tvm objects hash and compare by identity
                producer.setdefault(expr, label)
    names: dict[str, str] = {}
    pending: list[str] = []
    func = mod["main"]
    for block in func.body.blocks:
        for b in block.bindings:
            pending.append(var_name(b.var))
            found = producer.get(b.var) or producer.get(b.value)
            if found is not None:
                names.update(dict.fromkeys(pending, found))
                pending = []
    mod["main"] = func.with_attr(ATTR_PROVENANCE, names)
    return mod


def _onnx_importer() -> Any:
    """0.27's ONNXGraphImporter with our own conversion of the operators it imports unhelpfully."""
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    class Importer(fe.ONNXGraphImporter):  # type: ignore[misc]
        def _convert_operator(
            self, op_name: str, inputs: list[Any], attrs: dict[str, Any], opset: int
        ) -> Any:
            sym = None
            if op_name == "Clip":
                sym = _clip(self.bb, inputs, attrs, opset)
            elif op_name == "Pad":
                sym = _pad(self.bb, inputs, attrs, opset)
            elif op_name == "Dropout" and attrs["tvm_custom"]["num_outputs"] == 1:
                # Inference: the identity (0.27 keeps an R.nn.dropout returning a tuple).
                sym = inputs[0]
            elif op_name in ("Max", "Min") and len(inputs) == 2 and None not in inputs:
                # Two operands: one element-wise op (0.27 stacks them and reduces).
                sym = self.bb.normalize((relax.op.maximum if op_name == "Max" else relax.op.minimum)(*inputs))
            if sym is None:
                sym = super()._convert_operator(op_name, inputs, attrs, opset)
            # Bind a node's result while its node is converted (the importer leaves a call unbound until
            # a consumer uses it), so that every binding follows the node that made it (provenance).
            if isinstance(sym, relax.Call) and isinstance(sym.ty, relax.TensorType):
                sym = self.bb.emit(sym)
            return sym

    return Importer


def _clip(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any | None:
    """ONNX Clip with constant bounds as one ``R.clip``. 0.27 imports it as a NaN test of each bound
    (``where(isnan(b), inf, b)``) and two TE kernels (``call_tir`` max and min), which hides a plain
    clamp from every later rewrite (int8 lowering, channel analysis). A NaN bound is no bound, as in
    ONNX. None (TVM's own conversion) when a bound is not a constant scalar."""
    if opset < 11:
        bounds = [attrs.get("min"), attrs.get("max")]
    else:
        bounds = []
        for b in (list(inputs) + [None, None])[1:3]:
            if b is None:
                bounds.append(None)
                continue
            if not isinstance(b, RelaxConst):
                return None
            v = const_value(b)
            if v.size != 1:
                return None
            bounds.append(float(v.reshape(-1)[0]))
    x = inputs[0]
    if not isinstance(x.ty, relax.TensorType) or not tensor_dtype(x.ty).startswith("float"):
        return None
    # No bound is the largest float32 (an infinity would reach the C code as a literal).
    big = float(np.finfo(np.float32).max)
    lo = -big if bounds[0] is None or np.isnan(bounds[0]) else max(float(bounds[0]), -big)
    hi = big if bounds[1] is None or np.isnan(bounds[1]) else min(float(bounds[1]), big)
    return bb.normalize(relax.op.clip(x, lo, hi))


def _pad(bb: Any, inputs: list[Any], attrs: dict[str, Any], opset: int) -> Any | None:
    """ONNX Pad with constant pads (and value) as one ``R.nn.pad`` (0.27 imports it as a TE kernel
    behind ``call_tir``, opaque to the int8 lowering and the channel analysis); the value may be a
    DequantizeLinear of a constant (ONNX Runtime quantises it), the pads may name axes (Pad-18). The
    modes reflect, edge and wrap become Relax's reflect, replicate and circular (legalised to TOPI's
    pads, equal to onnxruntime's) while every pad is within what ONNX allows (reflect: below the axis'
    size; wrap: at most it). None (TVM's own conversion) for dynamic pads, negative (cropping) pads or
    a pad beyond those limits."""
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in _PAD_MODES:
        return None
    x = inputs[0]
    rank = len(x.ty.shape)
    value = 0.0
    if opset < 11:
        pads = [int(p) for p in attrs.get("pads", [])]
        value = float(attrs.get("value", 0.0))
    else:
        if not isinstance(inputs[1], RelaxConst):
            return None
        given = [int(p) for p in const_value(inputs[1]).reshape(-1)]
        axes = list(range(rank))
        if len(inputs) > 3 and inputs[3] is not None:  # Pad-18: the pads are for these axes only
            if not isinstance(inputs[3], RelaxConst):
                return None
            axes = [int(a) % rank for a in const_value(inputs[3]).reshape(-1)]
        if len(given) != 2 * len(axes):
            return None
        pads = [0] * (2 * rank)
        for k, a in enumerate(axes):
            pads[a], pads[rank + a] = given[k], given[len(axes) + k]
        if len(inputs) > 2 and inputs[2] is not None:
            constant = _constant_value(bb, inputs[2])
            if constant is None:
                return None
            value = float(constant.reshape(-1)[0])
    # Relax pads are (before, after) per axis, interleaved; ONNX lists all befores, then all afters.
    widths = [w for a in range(rank) for w in (pads[a], pads[rank + a])]
    if any(w < 0 for w in widths):
        return None  # negative pads crop: TVM's conversion
    limit = {"reflect": -1, "wrap": 0}.get(mode)
    shape = [int(d) for d in x.ty.shape]
    if limit is not None and any(w > shape[k // 2] + limit for k, w in enumerate(widths)):
        return None
    return bb.normalize(relax.op.nn.pad(x, widths, _PAD_MODES[mode], value))


# ONNX Pad's modes and Relax's names for them.
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _constant_value(bb: Any, expr: Any) -> np.ndarray | None:
    """The value of a constant, or of a DequantizeLinear of constants (ONNX Runtime quantises a Pad's
    value input), as the float32 numbers ONNX computes; None for anything else."""
    if isinstance(expr, RelaxVar):
        bound = bb.lookup_binding(expr)
        if bound is None:
            return None
        expr = bound
    if isinstance(expr, RelaxConst):
        return const_value(expr)
    if isinstance(expr, relax.Call) and op_name(expr) == "relax.dequantize":
        data, scale, zp = expr.args
        if all(isinstance(a, RelaxConst) for a in (data, scale, zp)):
            q, s, z = (const_value(a) for a in (data, scale, zp))
            return (
                (q.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s.astype(np.float32)
            ).astype(np.float32)
    return None


def provenance(func: Any, var: Any) -> str | None:
    """The ONNX node a binding of ``func`` came from (recorded by :func:`from_onnx`), if known."""
    table = (func.attrs or {}).get(ATTR_PROVENANCE)
    if table is None:
        return None
    label = table.get(var_name(var))
    return None if label is None else str(label)


def provenance_name(func: Any, var: Any) -> str | None:
    """The name of the ONNX node a binding came from (``conv_7`` of ``Conv 'conv_7'``), if known."""
    label = provenance(func, var)
    return None if label is None else label.split(" ", 1)[-1].strip("'")


def from_exported_program(program: Any) -> IRModule:
    """TVM's ``torch.export`` importer (0.27: ``relax.frontend.torch.from_exported_program``): a single
    output returned as itself, not as a one-element tuple."""
    from tvm.relax.frontend.torch import from_exported_program as _from_exported_program

    return _from_exported_program(program, unwrap_unit_return_tuple=True)


def from_tflite(model: Any) -> IRModule:
    from tvm.relax.frontend.tflite import from_tflite as _from_tflite

    return _from_tflite(model)
