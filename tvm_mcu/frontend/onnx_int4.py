"""2- and 4-bit weights and ONNX Runtime's contrib Q/DQ, normalised before TVM's importer (see
``onnx_rewrite``).

- An INT4 (UINT4) or INT2 (UINT2, opset 25) initializer that only ``DequantizeLinear`` nodes read, as
  their data or zero point, becomes an INT8 (UINT8) initializer of the same name holding the same
  integers. ``DequantizeLinear`` computes ``(x - zero_point) * scale`` on the integers' values, whatever
  type holds them, so the graph's meaning is unchanged; the zero point keeps the data's type, as the
  operator requires. A weight zero point (UINT4 weights have one, 8 in ONNX Runtime's QUInt4) is then
  taken out at compile time by the integer lowering like any 8-bit one
  (``passes/relax/integer/emit._weights``): the differences lie in [-15, 15] (UINT2: [-3, 3]), int8
  weights. The compiler then stores weights whose values fit int4 two per byte
  (``passes/tir/pack_weights.py``), int2 ones included. TVM's importer has no 2-bit type: unwidened, it
  failed with an internal error.
- ONNX Runtime writes ``com.microsoft`` ``QuantizeLinear``/``DequantizeLinear`` for a model below opset
  21 quantised with 4-bit (or 16-bit) types. Its contrib operators are defined as the standard ones (one
  ``axis`` attribute, no blocks); once the 4-bit initializers are 8-bit, they are the standard operators
  of the model's opset and are moved to the default domain.

Refused, each naming the node: a 2- or 4-bit activation, i.e. a ``QuantizeLinear`` to INT4, UINT4, INT2
or UINT2 (activations are int8 or uint8); a contrib Q/DQ of 16-bit tensors; a 2- or 4-bit tensor read by
anything but a ``DequantizeLinear`` or held in a ``Constant`` node; a per-axis contrib Q/DQ in a model
below opset 13. A blocked ``DequantizeLinear`` (``block_size``) is left as it is and refused by the
supported-operator check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu.errors import UnsupportedOpError

MS_DOMAIN = "com.microsoft"
INT4, UINT4 = 22, 21  # onnx.TensorProto.INT4, UINT4
INT2, UINT2 = 26, 25  # onnx.TensorProto.INT2, UINT2 (opset 25)
_WIDENED = {INT4: np.int8, UINT4: np.uint8, INT2: np.int8, UINT2: np.uint8}
_EIGHT_BIT = (2, 3)  # UINT8, INT8
_TYPE_NAMES = {
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    21: "uint4",
    22: "int4",
    25: "uint2",
    26: "int2",
}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _label(node: Any, index: int) -> str:
    return node.name or f"#{index}, output '{node.output[0] if node.output else '?'}'"


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constant_types(model: Any) -> dict[str, int]:
    """The element type of every initializer and Constant-node output."""
    types = {t.name: int(t.data_type) for t in model.graph.initializer}
    for node in model.graph.node:
        value = _attr(node, "value") if node.op_type == "Constant" else None
        if value is not None and hasattr(value, "data_type"):
            types[node.output[0]] = int(value.data_type)
    return types


def _quantized_type(node: Any, types: dict[str, int]) -> int:
    """The integer type a QuantizeLinear writes: its zero point's, else ``output_dtype``, else uint8."""
    if len(node.input) > 2 and node.input[2] and node.input[2] in types:
        return types[node.input[2]]
    return int(_attr(node, "output_dtype", 0) or 2)


def check_activations(model: Any) -> None:
    """Refuse every QuantizeLinear to a 2- or 4-bit type, naming the nodes (other types are the integer
    lowering's to judge: ``--allow-float`` may run them in float)."""
    types = _constant_types(model)
    problems = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx", MS_DOMAIN):
            continue
        qtype = _quantized_type(node, types)
        if qtype in _WIDENED:
            problems.append(
                f"QuantizeLinear (node '{_label(node, i)}') quantises activation '{node.input[0]}' to "
                f"{_TYPE_NAMES[qtype]}"
            )
    if problems:
        raise UnsupportedOpError(
            f"{'; '.join(problems)}: activations must be int8 or uint8 (tvm-mcu reads 2- and 4-bit integers "
            "only as the constant weights of a DequantizeLinear); quantise the activations to 8 bits"
        )


def widen_int4_weights(model: Any) -> int:
    """Store every 2- and 4-bit initializer read only by unblocked DequantizeLinear nodes as 8-bit; in place.

    Returns how many initializers were widened. Raises UnsupportedOpError for 2- and 4-bit
    tensors read otherwise.
    """
    from onnx import numpy_helper

    readers: dict[str, list[tuple[int, Any, int]]] = {}
    for i, node in enumerate(model.graph.node):
        for k, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((i, node, k))
    problems = []
    for i, node in enumerate(model.graph.node):
        value = _attr(node, "value") if node.op_type == "Constant" else None
        if value is not None and getattr(value, "data_type", None) in _WIDENED:
            problems.append(
                f"Constant (node '{_label(node, i)}') holds a {_TYPE_NAMES[value.data_type]} tensor; "
                "store it as an initializer"
            )
    widened = 0
    for pos, init in enumerate(model.graph.initializer):
        if init.data_type not in _WIDENED:
            continue
        uses = readers.get(init.name, [])
        others = [(i, n) for i, n, k in uses if n.op_type != "DequantizeLinear" or k not in (0, 2)]
        if others:
            i, n = others[0]
            problems.append(
                f"{n.op_type} (node '{_label(n, i)}') reads the {_TYPE_NAMES[init.data_type]} tensor "
                f"'{init.name}': 2- and 4-bit tensors are read only as the weights (and zero points) of a "
                "DequantizeLinear"
            )
            continue
        if any(int(_attr(n, "block_size", 0) or 0) for _, n, _ in uses):
            continue  # blocked quantisation: refused by support.py with the node's name
        values = numpy_helper.to_array(init)
        model.graph.initializer[pos].CopyFrom(
            numpy_helper.from_array(values.astype(_WIDENED[init.data_type]), init.name)
        )
        widened += 1
    if problems:
        raise UnsupportedOpError("; ".join(problems))
    return widened


def contrib_qdq_to_onnx(model: Any, opset: int) -> int:
    """Move ONNX Runtime's ``com.microsoft`` Q/DQ nodes of 8-bit (and int32 bias) tensors to the default
    domain; in place. Returns how many were moved. Run after :func:`widen_int4_weights`."""
    types = _constant_types(model)
    problems = []
    moved = 0
    for i, node in enumerate(model.graph.node):
        if node.domain != MS_DOMAIN or node.op_type not in QDQ_OPS:
            continue
        if node.op_type == "QuantizeLinear":
            qtype = _quantized_type(node, types)
        else:
            # The data's type when it is a constant, else the zero point's; an activation's type is that
            # of the QuantizeLinear writing it, which check_activations has seen.
            zp = node.input[2] if len(node.input) > 2 else ""
            qtype = types.get(node.input[0], types.get(zp, 3))
        if qtype not in (*_EIGHT_BIT, 6):
            name = _TYPE_NAMES.get(qtype, f"ONNX type {qtype}")
            problems.append(
                f"{MS_DOMAIN}.{node.op_type} (node '{_label(node, i)}') of {name} tensors "
                "(8-bit only; 2- and 4-bit as weights)"
            )
            continue
        if opset < 13 and _scale_size(model, node) > 1:
            problems.append(
                f"{MS_DOMAIN}.{node.op_type} (node '{_label(node, i)}') is per-axis in an opset-{opset} "
                "model (per-axis QuantizeLinear/DequantizeLinear need opset 13)"
            )
            continue
        node.domain = ""
        moved += 1
    if problems:
        raise UnsupportedOpError("; ".join(problems))
    if moved and not any(n.domain == MS_DOMAIN for n in model.graph.node):
        keep = [o for o in model.opset_import if o.domain != MS_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return moved


def _scale_size(model: Any, node: Any) -> int:
    for t in model.graph.initializer:
        if t.name == node.input[1]:
            return int(np.prod(list(t.dims))) if len(t.dims) else 1
    return 1
