"""Per-operator check of a quantised (QDQ) ONNX model against onnxruntime, each operator fed the same
integers.

A QDQ model means float arithmetic between DequantizeLinear and QuantizeLinear; tvm-mcu computes each
quantised operator exactly in integers and rounds once. Where the float value sits on a rounding tie
(an average of two integers, a sum that float32 rounds across .5) the two may differ by one step, and
later layers can amplify that step (a steep sigmoid, a batch norm with a large gain, a deep stack of
convolutions): the end-to-end outputs then differ by several steps although every operator is right.

This check tells the two apart. Every ``QuantizeLinear`` of the model closes a *segment*: the nodes
that compute its input from integer tensors (other QuantizeLinear outputs, integer graph inputs) and
constants. Each segment becomes a model of its own, compiled by tvm-mcu and run on the host with the
integers onnxruntime computed for the whole model; its output must be within one step of
onnxruntime's. A segment that is not is an operator tvm-mcu computes wrongly, named.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tvm_mcu.errors import TvmMcuError


@attrs.frozen
class SegmentCheck:
    """One quantised operator (a QuantizeLinear and the float nodes before it)."""

    output: str  # the QuantizeLinear's output tensor
    nodes: tuple[str, ...]  # "OpType 'name'" of the segment's nodes, in order
    steps: int  # largest difference from onnxruntime, in integer steps
    skipped: str = ""  # why it was not checked (it could not be compiled alone, ...)

    @property
    def label(self) -> str:
        ops = [n for n in self.nodes if not n.startswith(("DequantizeLinear", "QuantizeLinear"))]
        return ", ".join(ops or self.nodes)


@attrs.frozen
class Segments:
    """The checks, and what tvm-mcu's operators compute when each is fed the others' outputs.

    ``own`` maps each QuantizeLinear output to the integers tvm-mcu's own segments give, run one after
    another from the model's input (the firmware must equal them exactly: it runs the same operators,
    only placed in one memory plan and schedule); ``outputs`` maps each graph output to the quantised
    tensor it dequantises (None for an output that is not a DequantizeLinear of one).
    """

    checks: tuple[SegmentCheck, ...]
    own: dict[str, np.ndarray] = attrs.field(eq=False)
    outputs: tuple[str | None, ...]
    # Each graph output as onnxruntime computes it from tvm-mcu's own integers (the float operators after
    # the last quantisation run in onnxruntime on them): what the firmware must give, within float error.
    own_outputs: tuple[np.ndarray, ...] = attrs.field(eq=False, default=())


def check_segments(
    model_data: bytes,
    feeds: dict[str, np.ndarray],
    *,
    workdir: Path | None = None,
    allow_float: bool = False,
) -> Segments:
    """Every quantised operator of the QDQ (or QOperator) model, compiled alone and compared with
    onnxruntime on the integers onnxruntime computes for ``feeds``; and run on its own integers.

    ``allow_float``: compile each segment as the whole model was compiled, its operators without an
    integer lowering in float (a float segment between two quantisations is then checked like the rest).
    """
    import onnx

    from tvm_mcu.frontend import onnx_rewrite

    model, _ = onnx_rewrite.rewrite(onnx.load_from_string(model_data))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    integer_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type in (2, 3)}
    boundaries = {n.output[0] for n in quantize} | integer_inputs
    values = _run(model, [n.output[0] for n in quantize], feeds)
    # The integers tvm-mcu's own operators give; the model's quantised inputs are quantised by the caller
    # exactly as onnxruntime quantises them.
    own: dict[str, np.ndarray] = {i: np.asarray(feeds[i]) for i in integer_inputs if i in feeds}
    checks: list[SegmentCheck] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        for k, q in enumerate(quantize):
            nodes, inputs = _segment(q, producer, boundaries, inits, list(model.graph.node))
            labels = tuple(f"{n.op_type} '{n.name or n.output[0]}'" for n in nodes)
            if not inputs or all(i not in boundaries for i in inputs):
                # Quantises a float graph input: the caller's conversion, not an operator.
                own[q.output[0]] = values[q.output[0]]
                continue
            if any(i not in boundaries for i in inputs):
                checks.append(SegmentCheck(q.output[0], labels, 0, "it reads a float tensor"))
                continue
            sub = _submodel(model, nodes, inputs, q.output[0], types, f"segment{k}")
            check, run = _compile(sub, labels, work / f"s{k}", allow_float=allow_float)
            if run is None:
                checks.append(check)
                continue
            got = run([values[i] if i in values else feeds[i] for i in inputs])
            diff = np.abs(got.astype(np.int32) - values[q.output[0]].astype(np.int32).reshape(got.shape))
            checks.append(attrs.evolve(check, steps=int(diff.max(initial=0))))
            if all(i in own for i in inputs):
                own[q.output[0]] = run([own[i] for i in inputs])
    dequantised = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    outputs = tuple(o.name if o.name in boundaries else dequantised.get(o.name) for o in model.graph.output)
    return Segments(tuple(checks), own, outputs, _outputs_from(model, own, feeds))


def _outputs_from(
    model: Any, own: dict[str, np.ndarray], feeds: dict[str, np.ndarray]
) -> tuple[np.ndarray, ...]:
    """The graph outputs onnxruntime computes when every quantised tensor in ``own`` holds tvm-mcu's
    integers: the QuantizeLinear nodes that made them are cut, their outputs become graph inputs."""
    import onnx

    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    keep = [n for n in cut.graph.node if not (n.op_type == "QuantizeLinear" and n.output[0] in own)]
    del cut.graph.node[:]
    cut.graph.node.extend(keep)
    elem = {np.dtype("int8"): onnx.TensorProto.INT8, np.dtype("uint8"): onnx.TensorProto.UINT8}
    given = {i.name for i in cut.graph.input}
    for name, value in own.items():
        if name not in given:
            cut.graph.input.append(
                onnx.helper.make_tensor_value_info(name, elem[value.dtype], list(value.shape))
            )
    outputs = [o.name for o in cut.graph.output]
    values = _run(cut, outputs, {**feeds, **{k: v for k, v in own.items() if k not in feeds}})
    return tuple(values[o] for o in outputs)


def _run(model: Any, outputs: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in outputs:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(outputs, feeds)
    return dict(zip(outputs, (np.asarray(g) for g in got), strict=True))


def _segment(
    q: Any, producer: dict[str, Any], boundaries: set[str], inits: set[str], order: list[Any]
) -> tuple[list[Any], list[str]]:
    """The nodes computing ``q`` back to boundary tensors (topological order) and those tensors."""
    seen: dict[str, Any] = {}
    inputs: list[str] = []
    stack = [q]
    while stack:
        node = stack.pop()
        key = node.output[0]
        if key in seen:
            continue
        seen[key] = node
        for name in node.input:
            if not name or name in inits:
                continue
            if name in boundaries or name not in producer:
                if name not in inputs:
                    inputs.append(name)
                continue
            stack.append(producer[name])
    return [n for n in order if n.output and n.output[0] in seen], inputs


def _submodel(
    model: Any, nodes: list[Any], inputs: list[str], output: str, types: dict[str, Any], name: str
) -> Any:
    import onnx

    used = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(
        nodes,
        name,
        [types[i] for i in inputs],
        [types[output]],
        [i for i in model.graph.initializer if i.name in used],
    )
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    return sub


def _compile(
    sub: Any, labels: tuple[str, ...], work: Path, *, allow_float: bool
) -> tuple[SegmentCheck, Callable[[list[np.ndarray]], np.ndarray] | None]:
    """The segment compiled alone and built for the host: a check to fill in, and the function running
    it (None, with the reason in the check, when it does not compile alone)."""
    from tvm_mcu import compiler
    from tvm_mcu.codegen import model_c
    from tvm_mcu.frontend import load_model
    from tvm_mcu.targets.host import build_host_library, run_host_library

    work.mkdir(parents=True, exist_ok=True)
    path = work / "segment.onnx"
    path.write_bytes(sub.SerializeToString())
    name = sub.graph.output[0].name
    try:
        model = load_model(path)
        compiled = compiler.compile_module(
            model.mod,
            model_name="segment",
            rounding="onnx",
            in_place=False,
            partial_execution=False,
            allow_float=allow_float,
        )
    except TvmMcuError as exc:
        return SegmentCheck(name, labels, 0, f"it does not compile alone ({exc})"), None
    model_c.write_library(compiled.library, work / "lib", plan_json=compiled.plan.to_json())
    lib = build_host_library(work / "lib")
    graph = compiled.graph
    ins, outs = model_c.io_slots(graph, graph.inputs), model_c.io_slots(graph, graph.outputs)

    def run(arrays: list[np.ndarray]) -> np.ndarray:
        packed = bytearray(model_c.packed_bytes(ins))
        for slot, a in zip(ins, arrays, strict=True):
            raw_in = np.ascontiguousarray(a).astype(slot.dtype).tobytes()
            packed[slot.offset : slot.offset + slot.nbytes] = raw_in
        raw = run_host_library(lib, bytes(packed), model_c.packed_bytes(outs))
        slot = outs[0]
        out = np.frombuffer(raw[slot.offset : slot.offset + slot.nbytes], np.dtype(slot.dtype))
        return out.reshape(slot.shape)

    return SegmentCheck(name, labels, 0), run
