"""Independent oracles: ``onnx.reference`` for ONNX models, the TFLite Micro interpreter for TFLite."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from tvm_mcu.errors import ModelError
from tvm_mcu.frontend import ImportedModel


def reference_outputs(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The reference outputs of ``model`` for ``inputs`` (batch 1), computed without TVM."""
    if model.format == "onnx":
        return _onnx_reference(model, inputs)
    if model.format == "tflite":
        return _tflm_reference(model.data, inputs, len(model.outputs))
    raise ModelError(f"no reference for format {model.format}")


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


def _onnx_reference(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(_reference_model(model.data))
    feeds = {spec.name: x for spec, x in zip(model.inputs, inputs, strict=True)}
    return [np.asarray(o) for o in evaluator.run(None, feeds)]


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
    import tempfile

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
