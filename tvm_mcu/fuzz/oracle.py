"""The second opinion: onnxruntime, when ``onnx.reference`` (verify's oracle) and the firmware disagree.

``ort_agrees`` compares the firmware's outputs with onnxruntime's under verify's tolerances: when they
agree, the reference is the one that is wrong. ``first_departure`` then names the first node whose output
``onnx.reference`` computes differently from onnxruntime (a different shape, values beyond tolerance, or
an exception): the op the reference gets wrong, which is what a "reference failed" signature records.

onnxruntime runs without graph rewrites, so a QDQ model runs as written (dequantise, float op, quantise),
as the reference runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import helper


@attrs.frozen
class Departure:
    """Where ``onnx.reference`` first parts from onnxruntime: the node's op (``flavour``) and an account."""

    op: str
    description: str


def _session(model: bytes | str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _tolerance(want: np.ndarray) -> float:
    from tvm_mcu import api

    # Integer tensors (QuantizeLinear outputs) may round one step apart after tiny float differences.
    return 1.0 if want.dtype.kind in "iu" else api.tolerance_for([want.astype(np.float64)])


def ort_agrees(
    target: Path, build: Path, inputs: list[np.ndarray], outputs: list[np.ndarray]
) -> tuple[bool, str]:
    """Whether onnxruntime's outputs for the model at ``target`` match the firmware's ``outputs`` (from the
    compiled model in ``build``) within verify's tolerance (float: 1e-4 scaled; quantised: one
    quantisation step), and how far apart they are."""
    from tvm_mcu import api
    from tvm_mcu.report import Report

    report = Report.read(build / api.REPORT)
    session = _session(str(target))
    # Graph order, as the frontend lists them; a quantised model's firmware got these float inputs
    # quantised by ``run``, onnxruntime quantises them with the model's own QuantizeLinear.
    feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs, strict=True)}
    err = tol = 0.0
    for k, (row, got, want) in enumerate(zip(report.outputs, outputs, session.run(None, feeds), strict=True)):
        if np.size(want) != got.size:
            return (
                False,
                f"output {k}: the firmware gives shape {list(got.shape)}, onnxruntime {list(np.shape(want))}",
            )
        want = np.asarray(want).reshape(got.shape)
        if got.dtype.kind in "iu" and want.dtype.kind == "f" and row.scale is not None:
            real = (got.astype(np.int32) - int(row.zero_point or 0)) * np.float32(row.scale)
            got = real.astype(np.float32)
            tol = max(tol, 1.0001 * row.scale)
        elif got.dtype.kind == "f":
            tol = max(tol, api.tolerance_for([want]))
        err = max(err, api.max_abs_error(got, want))
    return err <= tol, f"max abs error {err:.4g}, tolerance {tol:.3g}"


def flavour(node: onnx.NodeProto) -> str:
    """The op type with the mode attributes that make it a different computation (``auto_pad``,
    ``ceil_mode``, ``count_include_pad``): "MaxPool(auto_pad=SAME_LOWER)", "AveragePool(ceil_mode)"."""
    modes = []
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if a.name == "auto_pad" and value not in (b"NOTSET", "NOTSET"):
            modes.append(f"auto_pad={value.decode() if isinstance(value, bytes) else value}")
        elif a.name in ("ceil_mode", "count_include_pad") and value:
            modes.append(a.name)
    return node.op_type + (f"({','.join(sorted(modes))})" if modes else "")


def _describe(node: onnx.NodeProto) -> str:
    attributes = ", ".join(f"{a.name}={helper.get_attribute_value(a)!r}" for a in node.attribute)
    return f"{node.op_type} '{node.name}'" + (f" ({attributes})" if attributes else "")


def first_departure(target: Path, inputs: list[np.ndarray]) -> Departure | None:
    """The first node (in graph order) whose output ``onnx.reference`` computes differently from
    onnxruntime, or None when every node agrees."""
    from onnx.reference import ReferenceEvaluator

    # The model as verify's reference sees it (BatchNormalization-9 models converted to opset 15).
    from tvm_mcu.reference import _reference_model

    model = onnx.load(str(target))
    names = [o for n in model.graph.node for o in n.output if o]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = _session(exposed.SerializeToString())
    feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs, strict=True)}
    truth = dict(zip(names, session.run(None, feeds), strict=True))
    for k, node in enumerate(model.graph.node):
        # The graph up to this node, so an exception belongs to it and not to a later node.
        prefix = onnx.ModelProto()
        prefix.CopyFrom(model)
        del prefix.graph.node[k + 1 :]
        del prefix.graph.output[:]
        prefix.graph.output.append(helper.make_empty_tensor_value_info(node.output[0]))
        try:
            evaluator = ReferenceEvaluator(_reference_model(prefix.SerializeToString()))
            results = evaluator.run(None, feeds)
            assert isinstance(results, list)  # run(None, ...) returns the outputs as a list
            got = np.asarray(results[0])
        except Exception as exc:  # the reference cannot compute this node: that is the departure
            first = str(exc).split("\n")[0]
            return Departure(flavour(node), f"{_describe(node)} raised {type(exc).__name__}: {first}")
        want = truth[node.output[0]]
        if got.shape != want.shape:
            return Departure(
                flavour(node),
                f"{_describe(node)} gives shape {list(got.shape)}, onnxruntime {list(want.shape)}",
            )
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
        if err > _tolerance(want):
            return Departure(flavour(node), f"{_describe(node)} differs from onnxruntime by {err:.4g}")
    return None
