"""ONNX graph rewrites before TVM's importer: one dialect of each thing for everything downstream.

- ``auto_pad`` (SAME_UPPER, SAME_LOWER, VALID) becomes explicit ``pads`` on Conv, MaxPool and
  AveragePool. TVM's importer would otherwise emit a separate padding kernel before the operator (a
  whole padded copy of the input in SRAM, and a TE kernel the int8 lowering cannot read).
- ONNX Runtime's QOperator format (``QLinearConv``, ``QLinearMatMul`` and the ``com.microsoft``
  ``QLinearAdd``, ``QLinearMul``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
  ``QLinearConcat``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearSoftmax``, ``QGemm``) becomes
  the QDQ form it means: ``DequantizeLinear`` of each quantised input, the float operator,
  ``QuantizeLinear`` of the output. The integer lowering then sees one form. Any other operator of the
  format is refused by name.
- 2- and 4-bit weights: INT4/UINT4 and INT2/UINT2 initializers of ``DequantizeLinear`` become 8-bit
  ones holding the same integers, and ONNX Runtime's ``com.microsoft`` Q/DQ (what it writes for 4-bit
  weights below opset 21) the standard operators; 2- and 4-bit activations are refused (``onnx_int4``).

Each rewrite keeps the model's meaning exactly (explicit pads are the ones ONNX defines; a QOperator is
defined as its dequantise - float op - quantise composition). The reference interpreters keep running
the original file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import onnx_int4

MS_DOMAIN = "com.microsoft"


def rewrite(model: Any) -> tuple[Any, list[str]]:
    """The model with explicit pads and QOperator nodes in QDQ form; notes of what changed."""
    import onnx

    notes: list[str] = []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    n_qop = _qoperator_to_qdq(out)
    if n_qop:
        notes.append(f"{n_qop} QOperator node(s) (ONNX Runtime's QLinear* format) read as QDQ")
    onnx_int4.check_activations(out)
    n_int4 = onnx_int4.widen_int4_weights(out)
    if n_int4:
        notes.append(
            f"{n_int4} 2- or 4-bit weight tensor(s) (INT2/UINT2/INT4/UINT4) stored as 8-bit, "
            "the same integers"
        )
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    n_contrib = onnx_int4.contrib_qdq_to_onnx(out, opset)
    if n_contrib:
        notes.append(
            f"{n_contrib} com.microsoft QuantizeLinear/DequantizeLinear node(s) read as the standard ones"
        )
    # Last: SAME pads need the input's shape, which ONNX's shape inference cannot tell past a
    # com.microsoft Q/DQ (no schema); TVM's importer then pads on its own, negatively where the input is
    # smaller than the stride (fuzz seed 5157: MaxPool SAME_LOWER 2x2 stride (3, 2) on 1x1, pads -1).
    n_pads = _explicit_pads(out)
    if n_pads:
        notes.append(f"auto_pad of {n_pads} node(s) made explicit pads")
    return out, notes


# ------------------------------------------------------------------------------------------ auto_pad
def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _set_attr(node: Any, name: str, value: Any) -> None:
    import onnx

    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    if value is not None:
        node.attribute.append(onnx.helper.make_attribute(name, value))


def _shapes(model: Any) -> dict[str, list[int]]:
    """Static shapes of every tensor ONNX shape inference can tell (a symbolic batch taken as 1)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return {}
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        values = [
            d.dim_value if d.HasField("dim_value") else (1 if k == 0 else -1) for k, d in enumerate(dims)
        ]
        if dims and all(v > 0 for v in values):
            shapes[vi.name] = values
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """ONNX's SAME padding of one axis: output ceil(size / stride), the odd pixel at the end (UPPER) or
    the start (LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def _explicit_pads(model: Any) -> int:
    targets = [
        n
        for n in model.graph.node
        if n.op_type in ("Conv", "MaxPool", "AveragePool") and n.domain in ("", "ai.onnx")
    ]
    targets = [n for n in targets if _text(_attr(n, "auto_pad", b"NOTSET")) not in ("NOTSET", "")]
    if not targets:
        return 0
    shapes = _shapes(model)
    done = 0
    for node in targets:
        mode = _text(_attr(node, "auto_pad"))
        x = shapes.get(node.input[0])
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            kernel = list(_attr(node, "kernel_shape", w[2:] if w else []))
        else:
            kernel = list(_attr(node, "kernel_shape", []))
        if x is None or len(x) != 2 + len(kernel) or not kernel:
            continue  # TVM's importer pads it (shapes unknown here)
        ndim = len(kernel)
        strides = list(_attr(node, "strides", [1] * ndim))
        dilations = list(_attr(node, "dilations", [1] * ndim))
        if mode == "VALID":
            begins, ends = [0] * ndim, [0] * ndim
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            pairs = [
                same_pads(x[2 + a], kernel[a], strides[a], dilations[a], mode == "SAME_UPPER")
                for a in range(ndim)
            ]
            begins, ends = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            continue
        _set_attr(node, "auto_pad", None)
        _set_attr(node, "pads", begins + ends)
        done += 1
    return done


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------------------------------ QOperator
class _Builder:
    """New nodes and initializers for one graph, with fresh names."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.names = {o for n in model.graph.node for o in n.output} | set(self.inits)
        self.names |= {i.name for i in model.graph.input}
        self.count = 0

    def fresh(self, base: str) -> str:
        while True:
            self.count += 1
            name = f"{base}__tvmmcu{self.count}"
            if name not in self.names:
                self.names.add(name)
                return name

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        init = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(init)
        self.inits[name] = init
        return name

    def value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)


def _make(op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> Any:
    import onnx

    return onnx.helper.make_node(
        op, inputs, outputs, name=name, **{k: v for k, v in attrs.items() if v is not None}
    )


def _dq(
    b: _Builder, nodes: list[Any], x: str, scale: str, zp: str, base: str, axis: int | None = None
) -> str:
    out = b.fresh(f"{base}_dq")
    inputs = [x, scale] + ([zp] if zp else [])
    nodes.append(_make("DequantizeLinear", inputs, [out], out, axis=axis))
    return out


def _q(nodes: list[Any], x: str, scale: str, zp: str, out: str) -> None:
    inputs = [x, scale] + ([zp] if zp else [])
    nodes.append(_make("QuantizeLinear", inputs, [out], f"{out}_q"))


def _opt(node: Any, k: int) -> str:
    return node.input[k] if len(node.input) > k else ""


def _attrs(node: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


def _qlinear_conv(b: _Builder, node: Any) -> list[Any]:
    x, xs, xz, w, ws, wz, ys, yz = (list(node.input) + [""] * 8)[:8]
    bias = _opt(node, 8)
    label = node.name or node.output[0]
    nodes: list[Any] = []
    xf = _dq(b, nodes, x, xs, xz, label)
    wf = _dq(b, nodes, w, ws, wz, label + "_w", axis=0)
    inputs = [xf, wf]
    if bias:
        # The int32 bias is in units of x_scale * w_scale (per output channel), zero point 0.
        x_scale, w_scale = b.value(xs), b.value(ws)
        if x_scale is None or w_scale is None:
            raise UnsupportedOpError(f"QLinearConv (node '{label}'): the scales are not constants")
        bias_scale = (np.float32(x_scale.reshape(-1)[0]) * w_scale.astype(np.float32).reshape(-1)).astype(
            np.float32
        )
        inputs.append(
            _dq(b, nodes, bias, b.const(label + "_bias_scale", bias_scale), "", label + "_b", axis=0)
        )
    yf = b.fresh(f"{label}_float")
    nodes.append(_make("Conv", inputs, [yf], f"{label} (QLinearConv)", **_attrs(node)))
    _q(nodes, yf, ys, yz, node.output[0])
    return nodes


def _qlinear_matmul(b: _Builder, node: Any) -> list[Any]:
    a, as_, az, w, ws, wz, ys, yz = list(node.input)[:8]
    label = node.name or node.output[0]
    nodes: list[Any] = []
    af = _dq(b, nodes, a, as_, az, label)
    scale = b.value(ws)
    axis = 1 if scale is not None and scale.size > 1 else None  # per column of B [K, N]
    wf = _dq(b, nodes, w, ws, wz, label + "_w", axis=axis)
    yf = b.fresh(f"{label}_float")
    nodes.append(_make("MatMul", [af, wf], [yf], f"{label} (QLinearMatMul)"))
    _q(nodes, yf, ys, yz, node.output[0])
    return nodes


def _qgemm(b: _Builder, node: Any) -> list[Any]:
    a, as_, az, w, ws, wz = list(node.input)[:6]
    c, ys, yz = _opt(node, 6), _opt(node, 7), _opt(node, 8)
    label = node.name or node.output[0]
    attrs = _attrs(node)
    alpha = float(attrs.pop("alpha", 1.0))
    trans_b = int(attrs.get("transB", 0))
    nodes: list[Any] = []
    af = _dq(b, nodes, a, as_, az, label)
    scale = b.value(ws)
    axis = (0 if trans_b else 1) if scale is not None and scale.size > 1 else None
    wf = _dq(b, nodes, w, ws, wz, label + "_w", axis=axis)
    inputs = [af, wf]
    if c:
        # C is int32 in units of alpha * a_scale * b_scale (ORT's QGemm): Y = alpha * A'B' + C_real.
        a_scale, w_scale = b.value(as_), b.value(ws)
        if a_scale is None or w_scale is None:
            raise UnsupportedOpError(f"QGemm (node '{label}'): the scales are not constants")
        c_scale = (
            np.float32(alpha) * np.float32(a_scale.reshape(-1)[0]) * w_scale.astype(np.float32).reshape(-1)
        ).astype(np.float32)
        inputs.append(_dq(b, nodes, c, b.const(label + "_c_scale", c_scale), "", label + "_c", axis=0))
    out = node.output[0] if not ys else b.fresh(f"{label}_float")
    nodes.append(_make("Gemm", inputs, [out], f"{label} (QGemm)", alpha=alpha, beta=1.0, **attrs))
    if ys:
        _q(nodes, out, ys, yz, node.output[0])
    return nodes


def _binary(op: str) -> Any:
    def rewrite_binary(b: _Builder, node: Any) -> list[Any]:
        a, as_, az, c, cs, cz, ys, yz = (list(node.input) + [""] * 8)[:8]
        label = node.name or node.output[0]
        nodes: list[Any] = []
        af = _dq(b, nodes, a, as_, az, label + "_a")
        cf = _dq(b, nodes, c, cs, cz, label + "_b")
        yf = b.fresh(f"{label}_float")
        nodes.append(_make(op, [af, cf], [yf], f"{label} (QLinear{op})"))
        _q(nodes, yf, ys, yz, node.output[0])
        return nodes

    return rewrite_binary


def _unary(op: str, drop: tuple[str, ...] = ()) -> Any:
    def rewrite_unary(b: _Builder, node: Any) -> list[Any]:
        x, xs, xz, ys, yz = (list(node.input) + [""] * 5)[:5]
        label = node.name or node.output[0]
        attrs = _attrs(node, drop)
        if int(attrs.pop("channels_last", 0)):
            raise UnsupportedOpError(f"{node.op_type} (node '{label}'): channels_last=1 is not supported")
        nodes: list[Any] = []
        xf = _dq(b, nodes, x, xs, xz, label)
        yf = b.fresh(f"{label}_float")
        nodes.append(_make(op, [xf], [yf], f"{label} ({node.op_type})", **attrs))
        _q(nodes, yf, ys, yz, node.output[0])
        return nodes

    return rewrite_unary


def _qlinear_softmax(b: _Builder, node: Any) -> list[Any]:
    attrs = _attrs(node)
    label = node.name or node.output[0]
    # ``opset`` says which Softmax it is: before 13, softmax over the flattened trailing axes.
    if int(attrs.get("opset", 13)) < 13:
        raise UnsupportedOpError(
            f"QLinearSoftmax (node '{label}'): the opset-{attrs.get('opset')} semantics (softmax over the "
            "flattened trailing axes) are not supported; re-quantise the model at opset 13 or newer"
        )
    return _unary("Softmax", drop=("opset",))(b, node)


def _qlinear_concat(b: _Builder, node: Any) -> list[Any]:
    ys, yz = node.input[0], node.input[1]
    label = node.name or node.output[0]
    rest = list(node.input[2:])
    nodes: list[Any] = []
    parts = [
        _dq(b, nodes, rest[k], rest[k + 1], rest[k + 2], f"{label}_{k // 3}") for k in range(0, len(rest), 3)
    ]
    yf = b.fresh(f"{label}_float")
    nodes.append(_make("Concat", parts, [yf], f"{label} (QLinearConcat)", **_attrs(node)))
    _q(nodes, yf, ys, yz, node.output[0])
    return nodes


_QOPERATORS = {
    ("", "QLinearConv"): _qlinear_conv,
    ("", "QLinearMatMul"): _qlinear_matmul,
    (MS_DOMAIN, "QGemm"): _qgemm,
    (MS_DOMAIN, "QLinearAdd"): _binary("Add"),
    (MS_DOMAIN, "QLinearMul"): _binary("Mul"),
    (MS_DOMAIN, "QLinearGlobalAveragePool"): _unary("GlobalAveragePool"),
    (MS_DOMAIN, "QLinearAveragePool"): _unary("AveragePool"),
    (MS_DOMAIN, "QLinearSigmoid"): _unary("Sigmoid"),
    (MS_DOMAIN, "QLinearLeakyRelu"): _unary("LeakyRelu"),
    (MS_DOMAIN, "QLinearSoftmax"): _qlinear_softmax,
    (MS_DOMAIN, "QLinearConcat"): _qlinear_concat,
}

# The QOperator format's other operators, refused by name (dynamic quantisation computes scales at run
# time: not an integer-only program with a static plan).
REFUSED = {
    "ConvInteger": "dynamic quantisation (the activation scale is computed at run time)",
    "MatMulInteger": "dynamic quantisation (the activation scale is computed at run time)",
    "DynamicQuantizeLinear": "dynamic quantisation (the activation scale is computed at run time)",
}


def supported(domain: str, op: str) -> bool:
    return ((domain if domain != "ai.onnx" else ""), op) in _QOPERATORS


def _qoperator_to_qdq(model: Any) -> int:
    nodes = list(model.graph.node)
    if not any(((n.domain if n.domain != "ai.onnx" else ""), n.op_type) in _QOPERATORS for n in nodes):
        return 0
    b = _Builder(model)
    new: list[Any] = []
    done = 0
    for node in nodes:
        rule = _QOPERATORS.get(((node.domain if node.domain != "ai.onnx" else ""), node.op_type))
        if rule is None:
            new.append(node)
            continue
        new.extend(rule(b, node))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(new)
    if not any(n.domain == MS_DOMAIN for n in model.graph.node):
        keep = [o for o in model.opset_import if o.domain != MS_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return done
