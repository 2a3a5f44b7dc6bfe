"""Every version-specific Apache TVM name and workaround, for apache-tvm 0.27.0.post1.

The rest of tvm-mcu imports TVM through this module only, so the next TVM upgrade touches one file.
Facts behind each workaround: ``shared/notes/tvm-0.27.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx, topi
from tvm.ir import IRModule

__all__ = [
    "Analyzer",
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
    "from_onnx",
    "from_tflite",
    "relax_const",
    "attr_values",
    "call_with_args",
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
BufferType = tirx.BufferType
PointerType = tvm.ir.PointerType
PrimType = tvm.ir.PrimType
# 0.27: a buffer load is ``tvm.ir.TensorLoad``; ``tirx.BufferLoad`` is only a factory function.
TensorLoad = tvm.ir.TensorLoad
AllocBuffer = tirx.AllocBuffer
DeclBuffer = tirx.DeclBuffer

# CodeGenCHost; target strings such as "c -mcpu=..." are rejected in 0.27, targets are dicts.
# Integer-set analysis (tvm.arith before 0.27).
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


def build_c_source(mod: IRModule) -> str:
    """CodeGenCHost source of an IRModule of unpacked, lowered PrimFuncs (no MakePackedAPI).

    ``tvm.tirx.build`` always runs MakePackedAPI, so the codegen is called directly.
    """
    build = tvm_ffi.get_global_func("target.build.c")
    return str(build(mod, C_TARGET).inspect_source())


def from_onnx(model: Any, shape_dict: dict[str, list[int]]) -> IRModule:
    from tvm.relax.frontend.onnx import from_onnx as _from_onnx

    return _from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)


def from_tflite(model: Any) -> IRModule:
    from tvm.relax.frontend.tflite import from_tflite as _from_tflite

    return _from_tflite(model)
