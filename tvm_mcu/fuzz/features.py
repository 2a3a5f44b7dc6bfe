"""The features a fuzz model exercises, as tags: what the coverage test asserts over a range of seeds and
what the sample test's seeds were picked for.

Tags are op types (``Conv``), op variants (``Conv.depthwise``, ``Conv.k5``, ``Conv.stride3``,
``Conv.pads_asymmetric``, ``Conv.auto_pad=SAME_LOWER``, ``MaxPool.ceil_mode``, ``Clip.min_only``...) and
graph facts (``opset=17``, ``outputs=3``, ``inputs=2``, ``input_nonsquare``).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper, numpy_helper

_WINDOW_OPS = ("Conv", "MaxPool", "AveragePool")
# (min given, max given) -> tag
_CLIP_BOUNDS = {
    (True, True): "Clip.both",
    (True, False): "Clip.min_only",
    (False, True): "Clip.max_only",
    (False, False): "Clip.no_bounds",
}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _window_tags(op: str, a: dict[str, Any], kernel: tuple[int, int]) -> set[str]:
    tags = {f"{op}.k{k}" for k in kernel}
    if kernel[0] != kernel[1]:
        tags.add(f"{op}.nonsquare")
    strides = a.get("strides") or [1, 1]
    tags |= {f"{op}.stride{s}" for s in strides}
    if any(d > 1 for d in a.get("dilations") or [1, 1]):
        tags.add(f"{op}.dilation")
    pads = list(a.get("pads") or [0, 0, 0, 0])
    if any(pads):
        tags.add(f"{op}.pads")
    if pads[:2] != pads[2:]:
        tags.add(f"{op}.pads_asymmetric")
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad != "NOTSET":
        tags.add(f"{op}.auto_pad={auto_pad}")
    if a.get("ceil_mode"):
        tags.add(f"{op}.ceil_mode")
    if "count_include_pad" in a:
        tags.add(f"{op}.count_include_pad={a['count_include_pad']}")
    return tags


def features(model: onnx.ModelProto) -> frozenset[str]:
    """The tags of ``model`` (a float fuzz model)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    tags = {f"opset={next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}"}
    tags.add(f"outputs={len(g.output)}")
    tags.add(f"inputs={len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2] != dims[3]:
        tags.add("input_nonsquare")
    for node in g.node:
        op = node.op_type
        a = _attrs(node)
        tags.add(op)
        if op == "Conv":
            w = numpy_helper.to_array(inits[node.input[1]])
            tags |= _window_tags(op, a, (int(w.shape[2]), int(w.shape[3])))
            group = int(a.get("group", 1))
            if group > 1:
                tags.add("Conv.depthwise" if w.shape[1] == 1 else "Conv.grouped")
            if len(node.input) < 3:
                tags.add("Conv.no_bias")
        elif op in _WINDOW_OPS:
            kernel = a["kernel_shape"]
            tags |= _window_tags(op, a, (int(kernel[0]), int(kernel[1])))
        elif op == "Clip":
            lo = len(node.input) > 1 and bool(node.input[1])
            hi = len(node.input) > 2 and bool(node.input[2])
            tags.add(_CLIP_BOUNDS[(lo, hi)])
        elif op == "Pad":
            mode = a.get("mode", b"constant")
            tags.add(f"Pad.{mode.decode() if isinstance(mode, bytes) else mode}")
            if len(node.input) > 3 and node.input[3]:
                tags.add("Pad.axes")
        elif op == "Gemm":
            if a.get("transB"):
                tags.add("Gemm.transB")
            if "alpha" in a or "beta" in a:
                tags.add("Gemm.alpha_beta")
        elif op in ("Add", "Sub", "Mul", "Div"):
            tags.add(f"{op}.const" if any(i in inits for i in node.input) else f"{op}.tensors")
    return frozenset(tags)
