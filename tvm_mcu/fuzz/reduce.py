"""Shrink a failing float ONNX model to a small one that still fails the same way.

``reduce_model(model, still_fails)`` is a greedy delta-debugging loop over graph edits. ``still_fails``
is the oracle: for the fuzzer it compiles the candidate (quantised again by the same quantiser for an int8
variant), runs it and compares the outcome's signature with the original failure's; the tests use cheap
predicates. Edits, largest first, repeated until none is accepted or the test budget is spent:

1. cut the graph at an earlier tensor made the only output (bisection over the node order for the
   earliest cut that still fails);
2. cut it at a later tensor made a graph input (bisection for the latest): everything only it needed goes;
3. drop one of several outputs;
4. bypass a node whose input has the shape of its output (an activation, BN, a size-keeping conv, a
   residual Add with one of its operands...);
5. remove an attribute (strides, pads, dilations, auto_pad, ceil_mode, alpha...), falling back to its
   default;
6. shrink a graph input (half, or one less, along each axis).

Every candidate is tidied (dead nodes, initializers and inputs removed, output shapes inferred again) and
must pass ``onnx.checker.check_model(full_check=True)`` and run in onnxruntime with the shapes it declares
before the oracle sees it; an invalid candidate costs no test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import attrs
import numpy as np
import onnx
from onnx import helper

# Attributes whose removal keeps a node valid in many cases (the default takes over).
_DROPPABLE = (
    "strides",
    "dilations",
    "pads",
    "auto_pad",
    "ceil_mode",
    "count_include_pad",
    "alpha",
    "beta",
    "allowzero",
    "epsilon",
    "kernel_shape",
)
DEFAULT_MAX_TESTS = 80


@attrs.frozen
class Reduction:
    """The reduced model, how many oracle calls it took, and the edits accepted, in order."""

    model: onnx.ModelProto = attrs.field(eq=False, repr=False)
    tests: int
    steps: tuple[str, ...]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return None if any(d < 1 for d in dims) else dims


def shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor of ``model`` (inputs, intermediates, outputs), by shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    out: dict[str, tuple[int, ...]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = _dims(vi)
        if dims is not None:
            out[vi.name] = dims
    return out


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes no output depends on, then initializers and graph inputs nothing reads."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(inputs)


def _windows_fit(model: onnx.ModelProto, known: dict[str, tuple[int, ...]]) -> bool:
    """Every Conv / MaxPool / AveragePool window fits its padded input (pooling pads also smaller than
    the kernel). onnxruntime runs some models that break this (a window larger than its input gives an
    output of 1 by C's truncating division) that the specification leaves undefined."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool") or node.input[0] not in known:
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        size = known[node.input[0]][2:]
        n = len(size)
        kernel = a.get("kernel_shape") or weights.get(node.input[1], (0, 0) + (1,) * n)[2:]
        auto_pad = a.get("auto_pad", b"NOTSET")
        if auto_pad in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        pads = [0] * (2 * n) if auto_pad == b"VALID" else list(a.get("pads") or [0] * (2 * n))
        dilations = a.get("dilations") or [1] * n
        for i in range(n):
            if size[i] + pads[i] + pads[i + n] < dilations[i] * (kernel[i] - 1) + 1:
                return False
            if node.op_type != "Conv" and max(pads[i], pads[i + n]) >= kernel[i]:
                return False
    return True


def tidy(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` without dead parts and with its output shapes inferred again, or None when it is not a
    valid model onnxruntime runs with the shapes it declares (or has no node or no input left)."""
    import onnxruntime as ort

    m = _copy(model)
    _remove_dead(m)
    inits = {t.name for t in m.graph.initializer}
    if not m.graph.node or not [i for i in m.graph.input if i.name not in inits]:
        return None
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        known = shapes(m)
        if not _windows_fit(m, known):
            return None
        for o in m.graph.output:
            if o.name not in known:
                return None
            o.CopyFrom(
                helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, list(known[o.name]))
            )
        onnx.checker.check_model(m, full_check=True)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}
        results = session.run(None, feeds)
    except Exception:  # any complaint makes the candidate invalid; it is skipped, not tested
        return None
    if any(tuple(r.shape) != known[o.name] for r, o in zip(results, m.graph.output, strict=True)):
        return None  # onnxruntime and the specification disagree on a shape (pooling ceil_mode)
    return m


# ----------------------------------------------------------------------------------- edits
def cut_at(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``tensor`` becomes the only output."""
    m = _copy(model)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return m


def promote(model: onnx.ModelProto, tensor: str, shape: tuple[int, ...]) -> onnx.ModelProto | None:
    """``tensor`` becomes a graph input; the node that produced it goes."""
    m = _copy(model)
    producers = [k for k, n in enumerate(m.graph.node) if tensor in n.output]
    if len(producers) != 1 or len(m.graph.node[producers[0]].output) != 1:
        return None
    if tensor in {o.name for o in m.graph.output}:
        return None
    del m.graph.node[producers[0]]
    m.graph.input.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, list(shape)))
    return m


def drop_output(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    m = _copy(model)
    del m.graph.output[k]
    return m


def bypass(model: onnx.ModelProto, node_index: int, input_index: int) -> onnx.ModelProto | None:
    """Node ``node_index`` removed, its readers reading its input ``input_index`` instead."""
    m = _copy(model)
    node = m.graph.node[node_index]
    old, new = node.output[0], node.input[input_index]
    outputs = {o.name for o in m.graph.output}
    graph_inputs = {i.name for i in m.graph.input}
    if old in outputs and (new in outputs or new in graph_inputs):
        return None
    del m.graph.node[node_index]
    for n in m.graph.node:
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new
    for o in m.graph.output:
        if o.name == old:
            o.name = new
    return m


def drop_attribute(model: onnx.ModelProto, node_index: int, name: str) -> onnx.ModelProto:
    m = _copy(model)
    node = m.graph.node[node_index]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    return m


def resize_input(model: onnx.ModelProto, input_index: int, axis: int, size: int) -> onnx.ModelProto:
    m = _copy(model)
    m.graph.input[input_index].type.tensor_type.shape.dim[axis].dim_value = size
    return m


# ----------------------------------------------------------------------------------- the loop
class _Search:
    def __init__(
        self, model: onnx.ModelProto, still_fails: Callable[[onnx.ModelProto], bool], max_tests: int
    ):
        self.model = model
        self.still_fails = still_fails
        self.max_tests = max_tests
        self.tests = 0
        self.steps: list[str] = []
        self._seen: dict[str, bool] = {
            hashlib.sha1(model.SerializeToString(deterministic=True)).hexdigest(): True
        }

    @property
    def exhausted(self) -> bool:
        return self.tests >= self.max_tests

    def fails(self, candidate: onnx.ModelProto | None) -> onnx.ModelProto | None:
        """The tidied candidate when it is valid and still fails, else None (tested at most once)."""
        if candidate is None or self.exhausted:
            return None
        tidied = tidy(candidate)
        if tidied is None:
            return None
        key = hashlib.sha1(tidied.SerializeToString(deterministic=True)).hexdigest()
        if key not in self._seen:
            self.tests += 1
            self._seen[key] = bool(self.still_fails(tidied))
        return tidied if self._seen[key] else None

    def accept(self, model: onnx.ModelProto, step: str) -> bool:
        if model.SerializeToString(deterministic=True) == self.model.SerializeToString(deterministic=True):
            return False
        self.model = model
        self.steps.append(step)
        return True

    def first(self, candidates: Iterator[tuple[str, onnx.ModelProto | None]]) -> bool:
        """Accept the first candidate that still fails."""
        for step, candidate in candidates:
            found = self.fails(candidate)
            if found is not None:
                return self.accept(found, step)
        return False


def _tensors(model: onnx.ModelProto) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o]


def _cut_outputs(s: _Search) -> bool:
    """Bisection for the earliest tensor that, made the only output, still fails."""
    outputs = {o.name for o in s.model.graph.output}
    cuts = [t for t in _tensors(s.model) if not (len(outputs) == 1 and t in outputs)]
    lo, hi, best = 0, len(cuts), None
    while lo < hi:
        mid = (lo + hi) // 2
        found = s.fails(cut_at(s.model, cuts[mid]))
        if found is not None:
            hi, best = mid, found
        else:
            lo = mid + 1
    return best is not None and s.accept(best, f"cut at {cuts[hi]}")


def _promote_inputs(s: _Search) -> bool:
    """Bisection for the latest tensor that, made a graph input, still fails."""
    known = shapes(s.model)
    outputs = {o.name for o in s.model.graph.output}
    names = [t for t in _tensors(s.model) if t not in outputs and t in known]
    lo, hi, best = -1, len(names) - 1, None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        found = s.fails(promote(s.model, names[mid], known[names[mid]]))
        if found is not None:
            lo, best = mid, found
        else:
            hi = mid - 1
    return best is not None and s.accept(best, f"input at {names[lo]}")


def _drop_outputs(s: _Search) -> bool:
    n = len(s.model.graph.output)
    return n > 1 and s.first(
        (f"drop output {s.model.graph.output[k].name}", drop_output(s.model, k)) for k in range(n)
    )


def _bypass_nodes(s: _Search) -> bool:
    known = shapes(s.model)

    def candidates() -> Iterator[tuple[str, onnx.ModelProto | None]]:
        for k in reversed(range(len(s.model.graph.node))):
            node = s.model.graph.node[k]
            if len(node.output) != 1 or node.output[0] not in known:
                continue
            for i, name in enumerate(node.input):
                if name and known.get(name) == known[node.output[0]]:
                    yield f"bypass {node.name or node.op_type} (input {i})", bypass(s.model, k, i)

    return s.first(candidates())


def _drop_attributes(s: _Search) -> bool:
    def candidates() -> Iterator[tuple[str, onnx.ModelProto | None]]:
        for k, node in enumerate(s.model.graph.node):
            for a in node.attribute:
                if a.name in _DROPPABLE:
                    yield f"drop {node.name or node.op_type}.{a.name}", drop_attribute(s.model, k, a.name)

    return s.first(candidates())


def _shrink_inputs(s: _Search) -> bool:
    def candidates() -> Iterator[tuple[str, onnx.ModelProto | None]]:
        for k, vi in enumerate(s.model.graph.input):
            dims = _dims(vi) or ()
            for axis in range(1, len(dims)):
                for size in sorted({dims[axis] // 2, dims[axis] - 1}):
                    if 1 <= size < dims[axis]:
                        yield f"input {vi.name} axis {axis} -> {size}", resize_input(s.model, k, axis, size)

    return s.first(candidates())


_PHASES = (_cut_outputs, _promote_inputs, _drop_outputs, _bypass_nodes, _drop_attributes, _shrink_inputs)


def reduce_model(
    model: onnx.ModelProto,
    still_fails: Callable[[onnx.ModelProto], bool],
    *,
    max_tests: int = DEFAULT_MAX_TESTS,
) -> Reduction:
    """The smallest model the edits reach from ``model`` for which ``still_fails`` holds, within
    ``max_tests`` calls of ``still_fails`` (``model`` itself is assumed to fail and is not tested)."""
    s = _Search(model, still_fails, max_tests)
    progress = True
    while progress and not s.exhausted:
        progress = False
        for phase in _PHASES:
            progress = phase(s) or progress
    return Reduction(s.model, s.tests, tuple(s.steps))
