"""Independent oracles: ``onnx.reference`` for ONNX models, the TFLite Micro interpreter for TFLite."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

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


def _onnx_reference(model: ImportedModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load_from_string(model.data))
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
