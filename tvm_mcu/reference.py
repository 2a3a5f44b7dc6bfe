"""Independent oracles: onnxruntime and ``onnx.reference`` for ONNX models, the TFLite Micro interpreter for
TFLite models, PyTorch itself for ``torch.export`` programs (.pt2).

Two ONNX oracles, because each is wrong or missing somewhere: ``onnx.reference`` (1.23) has no
DequantizeLinear before version 19, returns transposed shapes for MaxPool with some asymmetric pads, one
column too many for MaxPool with ``ceil_mode`` and end padding where the division is exact, and
evaluates Softmax-11 on 4-D inputs wrongly; onnxruntime has no kernel for a few rarely used
operator/type combinations. :func:`run_oracles` runs them in order and keeps each one's outputs or the
one line saying why it could not run, so that ``verify`` can fall back, and can tell a disagreement of
the references from a wrong firmware.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from tvm_mcu.errors import ModelError
from tvm_mcu.frontend import ImportedModel

ONNXRUNTIME = "onnxruntime"
ONNX_REFERENCE = "onnx.reference"
TFLITE_MICRO = "tflite-micro"
PYTORCH = "pytorch"


@attrs.frozen
class Oracle:
    """One reference run: its outputs, or why it could not run the model (one line)."""

    name: str
    outputs: tuple[np.ndarray, ...] | None = attrs.field(default=None, eq=False)
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.outputs is not None


def oracle_names(model: ImportedModel) -> tuple[str, ...]:
    """The oracles of ``model``'s format, the preferred one first."""
    if model.format == "onnx":
        return (ONNXRUNTIME, ONNX_REFERENCE)
    if model.format == "tflite":
        return (TFLITE_MICRO,)
    if model.format == "pt2":
        return (PYTORCH,)
    raise ModelError(f"no reference for format {model.format}")


def run_oracle(name: str, model: ImportedModel, inputs: list[np.ndarray]) -> Oracle:
    """Run one oracle; an oracle that cannot run the model gives its reason instead of raising.

    The oracles are third-party interpreters that raise whatever they raise (NotImplementedError,
    RuntimeError, their own exception classes) for a model they lack a kernel for; that is a fact about
    the oracle, recorded, never the user's error.
    """
    run = {
        ONNXRUNTIME: _onnxruntime,
        ONNX_REFERENCE: _onnx_reference,
        TFLITE_MICRO: _tflm,
        PYTORCH: _pytorch,
    }[name]
    try:
        outputs = run(model, inputs)
    except Exception as exc:  # noqa: BLE001 -- recorded: any failure of an oracle is its own
        return Oracle(name, None, _one_line(exc))
    return Oracle(name, tuple(np.asarray(o) for o in outputs))


def reference_outputs(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs of the first oracle of ``model``'s format that can run it (batch 1), computed without
    TVM; ModelError naming every oracle's reason when none can."""
    failures = []
    for name in oracle_names(model):
        oracle = run_oracle(name, model, inputs)
        if oracle.outputs is not None:
            return list(oracle.outputs)
        failures.append(f"{name}: {oracle.error}")
    raise ModelError(f"no reference interpreter can run {model.name} ({'; '.join(failures)})")


def _pytorch(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The exported program run by PyTorch itself (its module, on CPU)."""
    import torch

    from tvm_mcu.frontend import load_exported_program

    program = load_exported_program(model.data, model.path)
    with torch.no_grad():
        out = program.module()(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.detach().numpy() for o in outs]


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------- ONNX
# onnx.reference runs BatchNormalization-9 (opsets 9 to 13) in training mode whenever ``momentum`` has a
# value, and the schema always gives it one (0.9): inference models would be normalised with the batch's
# own statistics. BatchNormalization-14/15 have an explicit ``training_mode`` (default 0), so such models
# are converted to this opset for the reference only; the converter keeps the model's meaning.
_BATCHNORM_FIXED_OPSET = 15


def _reference_model(data: bytes) -> Any:
    import onnx
    from onnx import version_converter

    proto = onnx.load_from_string(data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 14 and any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        proto = version_converter.convert_version(proto, _BATCHNORM_FIXED_OPSET)
    return proto


def _feeds(model: ImportedModel, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {spec.name: np.asarray(x) for spec, x in zip(model.inputs, inputs, strict=True)}


def _contrib_qdq() -> list[type]:
    """ONNX Runtime's ``com.microsoft`` QuantizeLinear/DequantizeLinear (what its quantiser writes for
    4-bit or 16-bit types below opset 21) for ``onnx.reference``: ONNX Runtime defines them as the
    standard operators with one ``axis`` attribute (default 1) and no blocks."""
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_21
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_21

    # onnx.reference keys an added operator by (op_domain, class name), and passes it the attributes
    # the standard operator's newest schema declares: only ``axis`` is read.
    class DequantizeLinear(DequantizeLinear_21):
        op_domain = "com.microsoft"

        def _run(self, *args: Any, axis: int = 1, **_: Any) -> Any:
            return super()._run(*args, axis=axis)

    class QuantizeLinear(QuantizeLinear_21):
        op_domain = "com.microsoft"

        def _run(self, *args: Any, axis: int = 1, **_: Any) -> Any:
            return super()._run(*args, axis=axis)

    return [DequantizeLinear, QuantizeLinear]


def _onnx_reference(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(_reference_model(model.data), new_ops=_contrib_qdq())
    return [np.asarray(o) for o in evaluator.run(None, _feeds(model, inputs))]


def _onnxruntime(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The model as written: no fusion, so a QDQ model runs as its float operators between
    # QuantizeLinear and DequantizeLinear (its meaning), and float kernels are not rewritten.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.data, options, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, _feeds(model, inputs))]


# ----------------------------------------------------------------------------------------- TFLite
@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """The TFLM interpreter prints allocation chatter straight to file descriptor 2."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _tflm(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return _tflm_reference(model.data, inputs, len(model.outputs))


def _tflm_reference(data: bytes, inputs: list[np.ndarray], n_outputs: int) -> list[np.ndarray]:
    from tflite_micro.python.tflite_micro import runtime

    with _quiet_fd2():
        interp = runtime.Interpreter.from_bytes(data, arena_size=16 * 1024 * 1024)
        for k, x in enumerate(inputs):
            interp.set_input(x, k)
        interp.invoke()
        return [np.array(interp.get_output(k)) for k in range(n_outputs)]


def tflm_arena(data: bytes) -> dict[str, int]:
    """TFLite Micro's arena use for a model: ``total``, ``head`` (activations) and ``tail`` bytes, from its
    RecordingMicroAllocator report. Measured by the x86-64 interpreter: the tail (pointer-heavy runtime
    structs) is larger than on a 32-bit Cortex-M; the head is what the activations need."""
    import re

    from tflite_micro.python.tflite_micro import runtime

    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            interp = runtime.Interpreter.from_bytes(data, arena_size=16 * 1024 * 1024)
            interp.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    head = re.search(r"Arena allocation head (\d+) bytes", text)
    tail = re.search(r"Arena allocation tail (\d+) bytes", text)
    if not (found and head and tail):
        raise ModelError("the TFLite Micro interpreter printed no allocation report")
    return {"total": int(found.group(1)), "head": int(head.group(1)), "tail": int(tail.group(1))}
