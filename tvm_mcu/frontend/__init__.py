"""Model files to Relax: ONNX, TFLite and ``torch.export`` (.pt2) import, with the supported-operator
check first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tvm_mcu import _tvm
from tvm_mcu.errors import ModelError, UnsupportedOpError
from tvm_mcu.frontend import onnx_rewrite, support
from tvm_mcu.frontend.tflite_rewrite import dequantize_weights, unpack_int4_weights

MIN_ONNX_OPSET = 11
# Older models are converted to this opset before import.
UPGRADE_OPSET = 13


@attrs.frozen
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


@attrs.frozen
class ImportedModel:
    """A model in Relax, with what the user and the reference need to know about its interface."""

    name: str
    path: Path
    format: str  # "onnx", "tflite" or "pt2"
    mod: _tvm.IRModule = attrs.field(eq=False, repr=False)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # The model as the reference interpreter must see it (after any rewrite such as dequantize_weights).
    data: bytes = attrs.field(eq=False, repr=False, default=b"")
    # What the importer changed, for the report (e.g. hybrid int8 weights made float32).
    notes: tuple[str, ...] = ()


def load_model(path: Path) -> ImportedModel:
    """Import an ``.onnx``, ``.tflite`` or ``.pt2`` file into Relax, refusing what cannot be compiled
    exactly."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    data = path.read_bytes()
    if path.suffix.lower() == ".tflite" or data[4:8] == b"TFL3":
        return _load_tflite(path, data)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, data)
    if path.suffix.lower() == ".pt2":
        return _load_pt2(path, data)
    raise ModelError(f"{path}: unknown model format (expected a .onnx, .tflite or .pt2 file)")


# ----------------------------------------------------------------------------------------- ONNX
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 11: "float64"}


def _onnx_value_spec(vi: Any, *, fix_batch: bool) -> TensorSpec:
    tt = vi.type.tensor_type
    dims = []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif k == 0 and fix_batch:
            dims.append(1)  # a symbolic batch dimension: microcontrollers run one sample at a time
        else:
            label = d.dim_param or "?"
            raise ModelError(
                f"input '{vi.name}' has a dynamic dimension {k} ('{label}'); give a static shape"
            )
    dtype = _ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise ModelError(f"tensor '{vi.name}' has an unsupported element type (ONNX type {tt.elem_type})")
    return TensorSpec(vi.name, tuple(dims), dtype)


def _load_onnx(path: Path, data: bytes) -> ImportedModel:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends for a corrupt file
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (its graph has no nodes)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{path} declares no default-domain opset")
    notes: list[str] = []
    if opset < MIN_ONNX_OPSET:
        model = _upgrade_opset(path, model, opset)
        notes.append(f"converted from ONNX opset {opset} to {UPGRADE_OPSET} with onnx.version_converter")
    _check_declared_shapes(path, model)
    model, rewritten = onnx_rewrite.rewrite(model)
    notes.extend(rewritten)
    problems = []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"#{i}, output '{node.output[0] if node.output else '?'}'"
        if node.op_type in onnx_rewrite.REFUSED:
            problems.append(support.Problem(node.op_type, name, onnx_rewrite.REFUSED[node.op_type]))
            continue
        if node.domain not in ("", "ai.onnx"):
            refusal = (
                "an ONNX Runtime contrib operator tvm-mcu does not read (of the QOperator format it reads "
                "QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul, QLinearConcat, "
                "QLinearAveragePool, QLinearGlobalAveragePool, QLinearSigmoid, QLinearLeakyRelu, "
                "QLinearSoftmax)"
                if node.domain == onnx_rewrite.MS_DOMAIN
                else "custom operator domain"
            )
            problems.append(support.Problem(f"{node.domain}.{node.op_type}", name, refusal))
            continue
        rule = support.ONNX_RULES.get(node.op_type)
        reason = "no lowering for this operator" if rule is None else rule(node)
        if reason:
            problems.append(support.Problem(node.op_type, name, reason))
    support.check(problems, fmt="ONNX", supported=support.ONNX_RULES)
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(
        _onnx_value_spec(vi, fix_batch=True) for vi in model.graph.input if vi.name not in initializers
    )
    try:
        mod = _tvm.from_onnx(model, {s.name: list(s.shape) for s in inputs})
    except Exception as exc:  # TVM's importer raises several types for malformed graphs
        raise ModelError(f"TVM's ONNX importer rejected {path}: {_first_line(exc)}") from exc
    outputs = _relax_outputs(mod, model_outputs(model))
    return ImportedModel(path.stem, path, "onnx", mod, inputs, outputs, data, tuple(notes))


def _check_declared_shapes(path: Path, model: Any) -> None:
    """A model whose declared shapes (graph outputs, value_info) contradict what its operators compute,
    by ONNX's own shape inference, is the model's fault: a ModelError naming the node. Any other
    complaint of the inference (an operator it cannot infer, say) is left to the importer."""
    import onnx

    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        text = " ".join(str(exc).split())
        if "existing" in text and "differ" in text:
            detail = text.split("Inference error(s):", 1)[-1].strip()
            raise ModelError(
                f"{path}: a declared shape contradicts what the operators compute (ONNX shape "
                f"inference): {detail}"
            ) from exc
    except Exception:  # noqa: BLE001 - the inference's other failures are not this check's concern
        return


def _upgrade_opset(path: Path, model: Any, opset: int) -> Any:
    """Models older than opset 11 are converted up; the reference keeps running the original file."""
    import onnx
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, UPGRADE_OPSET)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise UnsupportedOpError(
            f"{path} uses ONNX opset {opset}; tvm-mcu compiles opset {MIN_ONNX_OPSET} and newer, and "
            f"onnx.version_converter could not convert it ({_first_line(exc)})"
        ) from exc


def model_outputs(model: Any) -> list[str]:
    return [o.name for o in model.graph.output]


def _relax_outputs(mod: _tvm.IRModule, names: list[str]) -> tuple[TensorSpec, ...]:
    ret_ty = mod["main"].ret_ty
    fields = list(ret_ty.fields) if isinstance(ret_ty, _tvm.relax.TupleType) else [ret_ty]
    specs = []
    for k, ty in enumerate(fields):
        try:
            shape = _tvm.tensor_shape(ty)
        except ValueError as exc:
            raise ModelError(f"output {k} of the model has no static shape ({exc})") from exc
        specs.append(TensorSpec(names[k] if k < len(names) else f"output{k}", shape, _tvm.tensor_dtype(ty)))
    return tuple(specs)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


# ----------------------------------------------------------------------------------------- PyTorch
_TORCH_DTYPES = {"torch.float32": "float32", "torch.int8": "int8", "torch.uint8": "uint8"}


def load_exported_program(data: bytes, path: Path) -> Any:
    """The ``torch.export`` program saved in ``data`` (``torch.export.save``)."""
    import io

    try:
        import torch
    except ImportError as exc:
        raise ModelError(
            f"{path} is a PyTorch program: reading it needs PyTorch (pip install 'tvm-mcu[train]', or "
            "export the model to ONNX)"
        ) from exc
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # a zip that is not an exported program, or from another torch version
        raise ModelError(f"{path} is not a readable torch.export program ({_first_line(exc)})") from exc


def _load_pt2(path: Path, data: bytes) -> ImportedModel:
    program = load_exported_program(data, path)
    problems = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        op = str(node.target)
        if op.startswith("quantized_decomposed."):
            quantised = (
                "a quantised torch.export program (PT2E) is not read: export the float model, and "
                "quantise it with `tvm-mcu quantize` or to ONNX QDQ"
            )
            problems.append(support.Problem(op, node.name, quantised))
            continue
        rule = support.ATEN_RULES.get(op)
        reason = "no lowering for this operator" if rule is None else rule(node)
        if reason:
            problems.append(support.Problem(op, node.name, reason))
    support.check(problems, fmt="PyTorch", supported=support.ATEN_RULES)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for spec in program.graph_signature.input_specs:
        if str(spec.kind).endswith("USER_INPUT"):
            value = placeholders[spec.arg.name].meta.get("val")
            dtype = _TORCH_DTYPES.get(str(getattr(value, "dtype", None)))
            if value is None or dtype is None:
                raise ModelError(f"input '{spec.arg.name}' of {path} is not a float32 or 8-bit tensor")
            inputs.append(TensorSpec(spec.arg.name, tuple(int(d) for d in value.shape), dtype))
    try:
        mod = _tvm.from_exported_program(program)
    except Exception as exc:  # TVM's importer raises several types for programs it cannot read
        raise ModelError(f"TVM's PyTorch importer rejected {path}: {_first_line(exc)}") from exc
    names = [str(spec.arg.name) for spec in program.graph_signature.output_specs]
    outputs = _relax_outputs(mod, names)
    return ImportedModel(path.stem, path, "pt2", mod, tuple(inputs), outputs, data)


# ----------------------------------------------------------------------------------------- TFLite
_TFLITE_DTYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16"}


def _tflite_op_names() -> dict[int, str]:
    import tflite

    return {
        v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
    }


def _load_tflite(path: Path, data: bytes) -> ImportedModel:
    import tflite

    notes: list[str] = []
    try:
        # The reference runs int4 weights as written (TFLite Micro reads them); TVM gets them as int8.
        reference_data, dequantized = dequantize_weights(data)
        unpacked, int4 = unpack_int4_weights(data)
        data = dequantize_weights(unpacked)[0] if int4 else reference_data
    except (ModelError, UnsupportedOpError):
        raise
    except Exception as exc:  # flatbuffers raises struct.error / IndexError / ValueError on garbage
        raise ModelError(
            f"{path} is not a readable TFLite model (truncated or corrupt flatbuffer: {exc})"
        ) from exc
    if int4:
        notes.append(f"{len(int4)} int4 weight tensor(s) stored as int8 for TVM, the same values")
    if dequantized:
        notes.append(
            f"{len(dequantized)} hybrid int8 weight tensor(s) stored as float32 (w = scale * q, exact); "
            "the model runs in float32"
        )
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ModelError(f"{path} is not a readable TFLite model (no subgraph)")
        graph = model.Subgraphs(0)
        n_ops = graph.OperatorsLength()
    except ModelError:
        raise
    except Exception as exc:  # flatbuffers raises struct.error / IndexError on garbage
        raise ModelError(
            f"{path} is not a readable TFLite model (truncated or corrupt flatbuffer: {exc})"
        ) from exc
    if model.SubgraphsLength() != 1:
        raise UnsupportedOpError(f"{path} has {model.SubgraphsLength()} subgraphs; tvm-mcu supports one")
    names = _tflite_op_names()
    problems = []
    for i in range(n_ops):
        op = graph.Operators(i)
        code_rec = model.OperatorCodes(op.OpcodeIndex())
        code = max(code_rec.BuiltinCode(), code_rec.DeprecatedBuiltinCode())
        op_name = names.get(code, f"BUILTIN_{code}")
        if op_name == "CUSTOM":
            op_name = f"CUSTOM({code_rec.CustomCode().decode(errors='replace')})"
        out_name = graph.Tensors(op.Outputs(0)).Name().decode() if op.OutputsLength() else f"#{i}"
        rule = support.TFLITE_RULES.get(op_name)
        reason = "no lowering for this operator" if rule is None else rule(op)
        if reason:
            problems.append(support.Problem(op_name, out_name, reason))
        for j in range(op.InputsLength()):
            t_idx = op.Inputs(j)
            if t_idx < 0:
                continue
            dtype = _TFLITE_DTYPES.get(graph.Tensors(t_idx).Type())
            if j == 0 and dtype in ("uint8", "int16"):
                problems.append(
                    support.Problem(op_name, out_name, f"{dtype} quantisation is not supported (int8 only)")
                )
                break
    support.check(problems, fmt="TFLite", supported=support.TFLITE_RULES)
    inputs = []
    for k in range(graph.InputsLength()):
        t = graph.Tensors(graph.Inputs(k))
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        if t.ShapeSignatureLength():
            signature = [int(d) for d in t.ShapeSignatureAsNumpy()]
            shape = tuple(-1 if sig < 0 else d for d, sig in zip(shape, signature, strict=False))
        for i, d in enumerate(shape):
            if d <= 0 and i > 0:
                raise ModelError(
                    f"input '{t.Name().decode()}' has a dynamic dimension {i}; give the model a static shape"
                )
        shape = tuple(1 if d <= 0 else d for d in shape)
        dtype = _TFLITE_DTYPES.get(t.Type())
        if dtype is None:
            raise ModelError(f"input {t.Name().decode()} has an unsupported TFLite type {t.Type()}")
        inputs.append(TensorSpec(t.Name().decode(), shape, dtype))
    out_names = [graph.Tensors(graph.Outputs(k)).Name().decode() for k in range(graph.OutputsLength())]
    try:
        mod = _tvm.from_tflite(model)
    except Exception as exc:  # TVM's importer raises several types for malformed graphs
        raise ModelError(f"TVM's TFLite importer rejected {path}: {_first_line(exc)}") from exc
    outputs = _relax_outputs(mod, out_names)
    return ImportedModel(path.stem, path, "tflite", mod, tuple(inputs), outputs, reference_data, tuple(notes))


def random_inputs(model: ImportedModel, seed: int) -> list[np.ndarray]:
    """Seeded inputs: standard normal for float tensors, the full range for integer ones."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in model.inputs:
        if spec.dtype.startswith("float"):
            out.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        else:
            info = np.iinfo(np.dtype(spec.dtype))
            out.append(rng.integers(info.min, info.max, spec.shape, endpoint=True).astype(spec.dtype))
    return out
