"""Preparing a float model for quantisation: loading, opset conversion, BatchNorm folding, graph helpers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu.errors import ModelError
from tvm_mcu.ptq.common import _DEFAULT_DOMAINS, MIN_QDQ_OPSET

logger = logging.getLogger(__name__)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


# ------------------------------------------------------------------------------------------- loading
def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        model = onnx.load_from_string(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError and friends for a corrupt file
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (its graph has no nodes)")
    if not opset_of(model):
        raise ModelError(f"{path} declares no default-domain opset")
    return model


def _convert(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        out = version_converter.convert_version(model, opset)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(
            f"onnx.version_converter could not convert the model from opset {opset_of(model)} to {opset} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})"
        ) from exc
    out.ir_version = max(out.ir_version, helper.find_min_ir_version_for(list(out.opset_import)))
    return out


# ------------------------------------------------------------------------------------------- rewrites
def _prepare(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """The float model as calibrated and quantised: opset >= 19, constants as initializers, BN folded."""
    opset = opset_of(model)
    if opset < MIN_QDQ_OPSET:
        model = _convert(model, MIN_QDQ_OPSET)
        notes.append(
            f"converted from ONNX opset {opset} to {MIN_QDQ_OPSET} (onnx.reference runs DequantizeLinear "
            f"from version {MIN_QDQ_OPSET})"
        )
    return _fold_batchnorm(_constants_to_initializers(model), notes)


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes holding a tensor become initializers, so weights given that way are found."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    outputs = {o.name for o in out.graph.output}
    keep = []
    for node in out.graph.node:
        attr = node.attribute
        if (
            node.op_type == "Constant"
            and node.domain in _DEFAULT_DOMAINS
            and len(attr) == 1
            and attr[0].name == "value"
            and node.output[0] not in outputs
        ):
            tensor = TensorProto()
            tensor.CopyFrom(attr[0].t)
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _fold_batchnorm(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Conv -> BatchNormalization (inference, constant statistics) becomes one Conv with the BN folded in.

    ``w' = w * k``, ``b' = (b - mean) * k + beta`` with ``k = gamma / sqrt(var + eps)`` per output channel,
    computed in float64 and stored as float32 (the float model's outputs change by float32 rounding only).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers = _consumer_counts(g)
    producers = {o: node for node in g.node for o in node.output}
    graph_outputs = {o.name for o in g.output}
    names = _all_names(g)
    drop: set[int] = set()
    folded = 0
    for i, bn in enumerate(g.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in _DEFAULT_DOMAINS:
            continue
        conv = producers.get(bn.input[0])
        params = [inits.get(name) for name in bn.input[1:5]]
        if (
            conv is None
            or conv.op_type != "Conv"
            or consumers.get(bn.input[0], 0) != 1
            or bn.input[0] in graph_outputs
            or _attr(bn, "training_mode", 0)
            or any(o for o in bn.output[1:])
            or any(p is None for p in params)
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
        ):
            continue
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        k = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
        w = inits[conv.input[1]].astype(np.float64)
        b = inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
        w_name = _fresh(names, f"{conv.input[1]}_bn_folded")
        b_name = _fresh(names, f"{bn.output[0]}_bias_bn_folded")
        g.initializer.extend(
            [
                numpy_helper.from_array(
                    (w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32), w_name
                ),
                numpy_helper.from_array(((b - mean) * k + beta).astype(np.float32), b_name),
            ]
        )
        x_name = conv.input[0]
        del conv.input[:]
        conv.input.extend([x_name, w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.add(i)
        folded += 1
    if folded:
        kept = [n for i, n in enumerate(g.node) if i not in drop]
        del g.node[:]
        g.node.extend(kept)
        notes.append(f"folded {folded} BatchNormalization node(s) into the preceding Conv")
    return _drop_unused_initializers(out)


def _drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove initializers no node reads (in place: only called on copies this module made)."""
    used = _used_names(model.graph) | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    if len(kept) == len(model.graph.initializer):
        return model
    unused = {t.name for t in model.graph.initializer} - used
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    inputs = [vi for vi in model.graph.input if vi.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node, subgraphs (If/Loop/Scan bodies) included."""
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                used |= _used_names(sub) | {o.name for o in sub.output}
    return used


def _consumer_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in (i for node in graph.node for i in node.input if i):
        counts[name] = counts.get(name, 0) + 1
    return counts


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in [*graph.input, *graph.output]} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _fresh(names: set[str], base: str) -> str:
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    names.add(name)
    return name


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ------------------------------------------------------------------------------------------- calibration
