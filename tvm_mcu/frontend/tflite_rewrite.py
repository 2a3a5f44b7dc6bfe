"""Rewrites of a TFLite flatbuffer before import.

Hybrid ("dynamic-range quantised") float models keep float activations but store some weights as int8
with a scale. Neither TVM's TFLite importer nor the TFLite Micro interpreter runs them. Their meaning as
a float model is exact: ``w = scale * q`` per channel. :func:`dequantize_weights` stores those weights as
float32, so the compiled model and the reference compute the same float network (both see that file).

int4 weights (TensorType INT4, two values a byte, the first in the low nibble, as TFLite's
``tensor_utils::PackInt8IntoDenseInt4`` writes them) are read by TFLite Micro's CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED, but not by TVM's importer: :func:`unpack_int4_weights` stores them as
INT8 tensors of the same values (same quantisation parameters), for TVM only; the reference runs the
int4 file as written.
"""

from __future__ import annotations

import flatbuffers
import numpy as np

from tvm_mcu.errors import ModelError, UnsupportedOpError

# TFLite TensorType codes (schema.fbs).
_FLOAT32 = 0
_INT8 = 9
_INT4 = 17


def _schema():  # type: ignore[no-untyped-def]
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def dequantize_weights(data: bytes) -> tuple[bytes, list[str]]:
    """Turn int8 constant weights feeding float operators into float32; returns the model and their names.

    Only constant tensors (with buffer data) consumed by operators whose first input is float32 are
    rewritten; a fully integer model is returned unchanged.
    """
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    changed: list[str] = []
    for graph in model.subgraphs or []:
        tensors = graph.tensors or []
        for op in graph.operators or []:
            inputs = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0]
            if not inputs or tensors[inputs[0]].type != _FLOAT32:
                continue
            for idx in inputs[1:]:
                t = tensors[idx]
                buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
                if t.type != _INT8 or buf is None or buf.data is None or len(buf.data) == 0:
                    continue
                q = t.quantization
                if q is None or q.scale is None or len(q.scale) == 0:
                    continue
                values = np.frombuffer(bytes(bytearray(buf.data)), dtype=np.int8).astype(np.float32)
                values = values.reshape(t.shape)
                scale = np.asarray(q.scale, dtype=np.float32)
                zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], dtype=np.float32)
                if scale.size > 1:
                    axis = int(q.quantizedDimension)
                    bshape = [1] * values.ndim
                    bshape[axis] = scale.size
                    scale, zero = scale.reshape(bshape), zero.reshape(bshape) if zero.size > 1 else zero
                real = ((values - zero) * scale).astype(np.float32)
                buf.data = np.frombuffer(real.tobytes(), dtype=np.uint8)
                t.type = _FLOAT32
                t.quantization = None
                changed.append(t.name.decode() if isinstance(t.name, bytes) else str(t.name))
    if not changed:
        return data, []
    builder = flatbuffers.Builder(len(data) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), sorted(set(changed))


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """``count`` int4 values from bytes holding two each, the first in the low nibble, sign-extended."""
    raw = np.asarray(packed, np.uint8)
    low = ((raw & 0x0F) ^ 0x08).astype(np.int8) - np.int8(8)
    high = ((raw >> 4) ^ 0x08).astype(np.int8) - np.int8(8)
    return np.stack([low, high], axis=1).reshape(-1)[:count].astype(np.int8)


def unpack_int4_weights(data: bytes) -> tuple[bytes, list[str]]:
    """Store every constant INT4 tensor as INT8 of the same values; returns the model and their names.

    Raises UnsupportedOpError for an INT4 tensor without data (an int4 activation: activations are int8).
    """
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    changed: list[str] = []
    for graph in model.subgraphs or []:
        for t in graph.tensors or []:
            if t.type != _INT4:
                continue
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
            if buf is None or buf.data is None or len(buf.data) == 0:
                raise UnsupportedOpError(
                    f"tensor '{name}' is an int4 activation: tvm-mcu reads int4 only as constant weights "
                    "(activations int8)"
                )
            count = int(np.prod(t.shape)) if t.shape is not None else 0
            packed = np.frombuffer(bytes(bytearray(buf.data)), np.uint8)
            if len(packed) != (count + 1) // 2:
                raise ModelError(
                    f"int4 tensor '{name}' of shape {list(t.shape)} holds {len(packed)} bytes, not "
                    f"{(count + 1) // 2}"
                )
            buf.data = unpack_int4(packed, count).view(np.uint8)
            t.type = _INT8
            changed.append(name)
    if not changed:
        return data, []
    builder = flatbuffers.Builder(len(data) * 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), sorted(set(changed))
