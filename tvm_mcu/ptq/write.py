"""Writing the QDQ model: quantised weights and biases, Q/DQ pairs, the assembled ONNX graph."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu import __version__
from tvm_mcu.ptq.common import (
    _DEFAULT_DOMAINS,
    FIXED,
    FLOAT,
    FUSED,
    INT2_QDQ_OPSET,
    INT4_QDQ_OPSET,
    INT32_MAX,
    MIN_QDQ_OPSET,
    OWN_RANGE,
    QMAX,
    SAME_SCALE,
    SOFTMAX_SCALE,
    SOFTMAX_ZERO_POINT,
    WEIGHT_QMAX,
    WEIGHTED,
    TensorQuant,
)
from tvm_mcu.ptq.plan import _RULES, _activations, _Graph
from tvm_mcu.ptq.prepare import _all_names, _attr, _drop_unused_initializers, _fresh

logger = logging.getLogger(__name__)


def activation_params(lo: float, hi: float) -> tuple[np.float32, int]:
    """Asymmetric int8 (scale, zero point) covering ``[lo, hi]`` widened to include 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return np.float32(1.0), 0  # an all-zero tensor: any scale represents it exactly
    scale = np.float32(max((hi - lo) / 255.0, float(np.finfo(np.float32).tiny)))
    zero_point = int(np.clip(np.round(-128.0 - lo / float(scale)), -128, 127))
    return scale, zero_point


# Ternary weights (qmax 1) keep the values above this times the slice's mean magnitude (Li and Liu's
# ternary weight networks: the threshold that minimises the expected error for normal weights).
TERNARY_THRESHOLD = 0.7


def weight_scales(w: np.ndarray, axis: int | None, qmax: int = WEIGHT_QMAX) -> np.ndarray:
    """Symmetric scales ``max|w| / qmax`` per slice along ``axis`` (one scale when ``axis`` is None);
    ternary (``qmax`` 1): the mean magnitude of the slice's values above ``TERNARY_THRESHOLD`` times its
    mean magnitude (with ``max|w|`` most of a slice would round to zero; with this scale the values below
    about half of it do, as ternary weight networks keep them).

    An all-zero channel gets scale 1/qmax: any scale represents it, and this one keeps its bias scale sane.
    """
    a = np.abs(w.astype(np.float64))
    dims = tuple(range(w.ndim)) if axis is None else tuple(k for k in range(w.ndim) if k != axis)
    amax = a.max(axis=dims)
    if qmax == 1:
        kept = a > TERNARY_THRESHOLD * a.mean(axis=dims, keepdims=True)
        count = kept.sum(axis=dims)
        amax = np.where(count > 0, (a * kept).sum(axis=dims) / np.maximum(count, 1), 0.0)
    return (np.where(amax > 0, amax, 1.0) / qmax).astype(np.float32)


def _broadcast(scale: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or scale.ndim == 0:
        return scale.astype(np.float64)
    shape = [1] * ndim
    shape[axis] = -1
    return scale.astype(np.float64).reshape(shape)


# ------------------------------------------------------------------------------------------- writing
@attrs.frozen
class _Act:
    scale: np.float32
    zero_point: int
    scale_name: str
    zero_point_name: str


class _Writer:
    """Collects the nodes and initializers of the QDQ graph, naming new tensors uniquely and in order."""

    def __init__(self, names: set[str], ranges: Mapping[str, tuple[float, float]]) -> None:
        self.names = names
        self.ranges = ranges
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.tensors: list[TensorQuant] = []
        self.acts: dict[str, _Act] = {}  # quantised activation -> its parameters
        self.read: dict[str, str] = {}  # quantised activation -> the DQ output its consumers read

    def init(self, base: str, value: np.ndarray) -> str:
        name = _fresh(self.names, base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, base: str, **kwargs: Any) -> None:
        self.nodes.append(helper.make_node(op, inputs, [output], name=_fresh(self.names, base), **kwargs))

    def dequantized(
        self, base: str, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None
    ) -> str:
        """``q`` stored as an initializer, followed by the DequantizeLinear that gives it back as float."""
        inputs = [self.init(f"{base}_quantized", q), self.init(f"{base}_scale", scale)]
        inputs.append(self.init(f"{base}_zero_point", zero_point))
        out = _fresh(self.names, f"{base}_DequantizeLinear_Output")
        kwargs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        self.node("DequantizeLinear", inputs, out, f"{base}_DequantizeLinear", **kwargs)
        return out

    def dequantized_int4(
        self, base: str, q: np.ndarray, scale: np.ndarray, axis: int | None, bits: int = 4
    ) -> str:
        """int4 ``q`` (values in [-8, 7]) stored as an INT4 initializer (two per byte), zero point 0 of the
        same type, followed by its DequantizeLinear (opset 21); ``bits=2``: int2 (values in [-2, 1]) as
        INT2 (opset 25)."""
        dtype = TensorProto.INT4 if bits == 4 else TensorProto.INT2
        q_name = _fresh(self.names, f"{base}_quantized")
        self.inits.append(helper.make_tensor(q_name, dtype, q.shape, q.reshape(-1).tolist()))
        zp_name = _fresh(self.names, f"{base}_zero_point")
        zeros = [0] * int(scale.size)
        self.inits.append(helper.make_tensor(zp_name, dtype, scale.shape, zeros))
        inputs = [q_name, self.init(f"{base}_scale", scale), zp_name]
        out = _fresh(self.names, f"{base}_DequantizeLinear_Output")
        kwargs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        self.node("DequantizeLinear", inputs, out, f"{base}_DequantizeLinear", **kwargs)
        return out

    def params(self, name: str, scale: np.float32, zero_point: int) -> _Act:
        return _Act(
            scale,
            zero_point,
            self.init(f"{name}_scale", np.array(scale, np.float32)),
            self.init(f"{name}_zero_point", np.array(zero_point, np.int8)),
        )

    def activation(self, name: str, source: str, params: _Act | None, rule: str) -> None:
        """Q -> DQ on activation ``name`` written as ``source``; calibrated parameters unless given."""
        if params is None:
            params = self.params(name, *activation_params(*self.ranges[name]))
        self.acts[name] = params
        q = _fresh(self.names, f"{name}_QuantizeLinear_Output")
        # A graph output keeps its name on the DQ output; its producer then writes ``source``.
        dq = name if source != name else _fresh(self.names, f"{name}_DequantizeLinear_Output")
        qparams = [params.scale_name, params.zero_point_name]
        self.node("QuantizeLinear", [source, *qparams], q, f"{name}_QuantizeLinear")
        self.node("DequantizeLinear", [q, *qparams], dq, f"{name}_DequantizeLinear")
        self.read[name] = dq
        scale, zp = (float(params.scale),), (params.zero_point,)
        self.tensors.append(
            TensorQuant(name, "activation", "int8", scale, zp, None, rule, self.ranges.get(name))
        )


def _qdq_tensors(g: _Graph, roles: list[tuple[str, str]]) -> set[str]:
    """Activations that get a Q -> DQ pair: every one a quantised op reads, every one it writes, except the
    output of a weighted op that its fused activation consumes."""
    fused_away = {reason for role, reason in roles if role == FUSED}
    qset: set[str] = set()
    for node, (role, _) in zip(g.nodes, roles, strict=True):
        if role == FLOAT:
            continue
        if role != FUSED:
            qset.update(n for n in _activations(node, _RULES[node.op_type]) if n not in g.inits)
        qset.update(o for o in node.output if o and o not in fused_away)
    return qset


def _write_qdq(
    model: onnx.ModelProto,
    g: _Graph,
    roles: list[tuple[str, str]],
    ranges: Mapping[str, tuple[float, float]],
    *,
    per_channel: bool,
    weight_bits: Mapping[str, int] | None = None,
) -> tuple[onnx.ModelProto, tuple[TensorQuant, ...]]:
    """The QDQ model, nodes in the float model's order: each op preceded by its weight DQs, followed by
    the Q/DQ pairs of its outputs; the graph inputs' pairs come first. ``weight_bits``: 4 or 8 per
    weighted op (keyed by its first output), 8 where absent; any 4 makes the model opset 21."""
    w = _Writer(_all_names(model.graph), ranges)
    qset = _qdq_tensors(g, roles)
    for vi in model.graph.input:
        if vi.name in qset:
            w.activation(vi.name, vi.name, None, "calibrated")
    for node, (role, reason) in zip(g.nodes, roles, strict=True):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(w.read.get(n, n) for n in node.input)
        if role == WEIGHTED:
            bits = weight_bits.get(node.output[0], 8) if weight_bits else 8
            _quantize_weights(new, node, g, w, w.acts[node.input[0]].scale, per_channel, bits)
        elif role == OWN_RANGE:
            for k, name in enumerate(node.input):
                if name in g.inits and name in _activations(node, _RULES[node.op_type]):
                    new.input[k] = _quantize_constant(name, g.inits[name], w)
        for k, o in enumerate(node.output):
            if o in qset and o in g.outputs:
                new.output[k] = _fresh(w.names, f"{o}_QuantizeLinear_Input")
        w.nodes.append(new)
        for o, src in zip(node.output, new.output, strict=True):
            if o not in qset:
                continue
            if role == SAME_SCALE:
                w.activation(o, src, w.acts[node.input[0]], f"same as '{node.input[0]}'")
            elif role == FIXED:
                params = w.params(o, np.float32(SOFTMAX_SCALE), SOFTMAX_ZERO_POINT)
                w.activation(o, src, params, f"fixed by {node.op_type} (1/256, -128)")
            elif role == FUSED:
                w.activation(o, src, None, f"calibrated, {node.op_type} fused with the op writing '{reason}'")
            else:
                w.activation(o, src, None, "calibrated")
    low = [b for b in (weight_bits or {}).values() if b < 8]
    return _assemble(model, w, min(low, default=8)), tuple(w.tensors)


@attrs.frozen
class QuantizedWeight:
    """A weighted op's weight as the QDQ model stores it: ``q * scale`` along ``axis`` (None: one scale);
    ``weight`` and ``bias`` are the float values it stands for (Gemm's alpha and beta folded in)."""

    weight: np.ndarray = attrs.field(eq=False)
    bias: np.ndarray | None = attrs.field(eq=False)
    q: np.ndarray = attrs.field(eq=False)
    scale: np.ndarray = attrs.field(eq=False)
    axis: int | None  # the quantised axis (None: per tensor)
    channel_axis: int  # the output-channel axis of the weight

    def dequantized(self) -> np.ndarray:
        return (self.q.astype(np.float64) * _broadcast(self.scale, self.q.ndim, self.axis)).astype(np.float32)


def quantized_weight(
    node: onnx.NodeProto, g: _Graph, s_in: np.float32, per_channel: bool, qmax: int = WEIGHT_QMAX
) -> QuantizedWeight:
    """The symmetric weight of a Conv, Gemm or MatMul in ``[-qmax, qmax]``: scale ``max|w| / qmax`` per
    output channel (or per tensor), grown where the int32 bias would not hold ``bias / (s_in * scale)``."""
    weight = g.inits[node.input[1]].astype(np.float64)
    bias = g.const(node, 2)
    if node.op_type == "Gemm":
        axis = 0 if _attr(node, "transB", 0) else 1
        weight = weight * float(_attr(node, "alpha", 1.0))
        if bias is not None:
            bias = np.broadcast_to(bias.reshape(-1) * float(_attr(node, "beta", 1.0)), (weight.shape[axis],))
    else:
        axis = 1 if node.op_type == "MatMul" else 0
    scale = weight_scales(weight, axis if per_channel else None, qmax)
    if bias is not None:
        # Grow a weight scale when its bias would not fit int32 (w * s_in tiny, bias large).
        need = np.abs(bias.astype(np.float64)) / (float(s_in) * INT32_MAX)
        scale = np.maximum(scale, (need if per_channel else need.max()).astype(np.float32))
    q_axis = axis if per_channel else None
    q = np.clip(np.rint(weight / _broadcast(scale, weight.ndim, q_axis)), -qmax, qmax)
    return QuantizedWeight(weight, bias, q, scale, q_axis, axis)


def _quantize_weights(
    new: onnx.NodeProto,
    node: onnx.NodeProto,
    g: _Graph,
    w: _Writer,
    s_in: np.float32,
    per_channel: bool,
    bits: int = 8,
) -> None:
    """Replace the weight (and bias) inputs of ``new`` by int8, int4 or int2 (int32) initializers and
    their DQ nodes."""
    qmax = QMAX[bits]
    qw = quantized_weight(node, g, s_in, per_channel, qmax)
    if node.op_type == "Gemm":
        kept = [a for a in new.attribute if a.name not in ("alpha", "beta")]
        del new.attribute[:]
        new.attribute.extend(kept)
    scale, q_axis, bias = qw.scale, qw.axis, qw.bias
    name = node.input[1]
    if bits == 8:
        zeros = np.zeros(scale.shape, np.int8)
        new.input[1] = w.dequantized(name, qw.q.astype(np.int8), scale, zeros, q_axis)
    else:
        zeros = np.zeros(scale.shape, np.int64)
        new.input[1] = w.dequantized_int4(name, qw.q.astype(np.int64), scale, q_axis, bits)
    label = f"int{bits}"
    w.tensors.append(
        TensorQuant(
            name,
            "weight",
            label,
            tuple(map(float, scale.reshape(-1))),
            tuple(map(int, zeros.reshape(-1))),
            q_axis,
            f"symmetric, max|w| / {qmax}" + (" per channel" if per_channel else " per tensor"),
        )
    )
    if bias is None:
        return
    b_scale = (float(s_in) * scale.astype(np.float64)).astype(np.float32)
    qb = np.clip(np.rint(bias.astype(np.float64) / b_scale.astype(np.float64)), -INT32_MAX - 1, INT32_MAX)
    b_name = node.input[2]
    b_zeros = np.zeros(b_scale.shape, np.int32)
    b_axis = 0 if per_channel else None
    new.input[2] = w.dequantized(b_name, qb.astype(np.int32), b_scale, b_zeros, b_axis)
    w.tensors.append(
        TensorQuant(
            b_name,
            "bias",
            "int32",
            tuple(map(float, b_scale.reshape(-1))),
            tuple(map(int, b_zeros.reshape(-1))),
            b_axis,
            "s_input * s_weight",
        )
    )


def _quantize_constant(name: str, value: np.ndarray, w: _Writer) -> str:
    """A constant input of Add/Concat: asymmetric int8 over its own value range, then DQ."""
    scale, zp = (
        activation_params(float(value.min()), float(value.max())) if value.size else (np.float32(1), 0)
    )
    q = np.clip(np.rint(value.astype(np.float64) / float(scale)) + zp, -128, 127).astype(np.int8)
    out = w.dequantized(name, q, np.array(scale, np.float32), np.array(zp, np.int8), None)
    w.tensors.append(TensorQuant(name, "constant", "int8", (float(scale),), (zp,), None, "value range"))
    return out


def _assemble(model: onnx.ModelProto, w: _Writer, bits: int = 8) -> onnx.ModelProto:
    """The QDQ model: the float model's interface and metadata around the new nodes; ``bits``: its
    narrowest weights, opset 21 or newer with int4 weights, 25 with int2 (the model was converted to it
    before calibration)."""
    opset = {8: MIN_QDQ_OPSET, 4: INT4_QDQ_OPSET, 2: INT2_QDQ_OPSET}[bits]
    graph = helper.make_graph(
        w.nodes,
        model.graph.name,
        list(model.graph.input),
        list(model.graph.output),
        initializer=[*model.graph.initializer, *w.inits],
        doc_string=model.graph.doc_string,
    )
    opsets = [
        helper.make_opsetid(
            o.domain,
            max(o.version, opset) if o.domain in _DEFAULT_DOMAINS else o.version,
        )
        for o in model.opset_import
    ]
    out = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="tvm-mcu",
        producer_version=__version__,
        doc_string=model.doc_string,
    )
    out.ir_version = max(model.ir_version, helper.find_min_ir_version_for(opsets))
    out.model_version = model.model_version
    out.metadata_props.extend(model.metadata_props)
    out.metadata_props.append(
        onnx.StringStringEntryProto(
            key="tvm_mcu.quantization",
            value=f"int8 activations, int{bits}/int8 weights QDQ, post-training static"
            if bits < 8
            else "int8 QDQ, post-training static",
        )
    )
    return _drop_unused_initializers(out)
