"""The test model zoo: small, seeded ONNX and TFLite CNNs built in code, no files checked in.

``ONNX_MODELS`` and ``TFLITE_MODELS`` map a readable name to a builder; :func:`write_model` writes any
of them to disk under its own name, which is how the frontend sees it.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_models import ONNX_MODELS
from .tflite_int8 import TFLITE_INT8_MODELS
from .tflite_models import TFLITE_MODELS

FLOAT_MODELS: tuple[str, ...] = (*ONNX_MODELS, *TFLITE_MODELS)
INT8_MODELS: tuple[str, ...] = tuple(f"int8_{name}" for name in TFLITE_INT8_MODELS)
ALL_MODELS: tuple[str, ...] = (*FLOAT_MODELS, *INT8_MODELS)


def write_model(name: str, directory: Path) -> Path:
    """Write zoo model ``name`` to ``directory/name.onnx`` or ``directory/name.tflite``; return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name in ONNX_MODELS:
        path = directory / f"{name}.onnx"
        path.write_bytes(ONNX_MODELS[name]().SerializeToString())
    elif name in TFLITE_MODELS:
        path = directory / f"{name}.tflite"
        path.write_bytes(TFLITE_MODELS[name]())
    elif name.removeprefix("int8_") in TFLITE_INT8_MODELS:
        path = directory / f"{name}.tflite"
        path.write_bytes(TFLITE_INT8_MODELS[name.removeprefix("int8_")]())
    else:
        raise KeyError(f"no zoo model '{name}'; known: {', '.join(ALL_MODELS)}")
    return path


__all__ = ["ALL_MODELS", "FLOAT_MODELS", "INT8_MODELS", "ONNX_MODELS", "TFLITE_MODELS", "write_model"]
