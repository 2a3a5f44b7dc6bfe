"""The execution graph of a fused Relax ``main``: operator steps over named tensors.

Reads the IRModule after the graph pipeline (one ``R.call_tir`` per fused operator, ``R.reshape`` for
views) and returns a plain, printable record that the memory planner, the C emitter and the report share.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from tvm_mcu import _tvm
from tvm_mcu.errors import UnsupportedOpError


def dtype_bytes(dtype: str) -> int:
    return int(np.dtype(dtype).itemsize)


@attrs.frozen
class Tensor:
    """One tensor of the graph. ``kind``: input, output, intermediate, weight or alias (a view)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    # The tensor whose storage this one shares: the source of a view (kind "alias": reshape, flatten),
    # or the input an in-place operator overwrites with this tensor.
    alias_of: str | None = None

    @property
    def nbytes(self) -> int:
        return (
            int(np.prod(self.shape, dtype=np.int64)) * dtype_bytes(self.dtype)
            if self.shape
            else dtype_bytes(self.dtype)
        )


@attrs.frozen
class Step:
    """One operator call: ``callee(*inputs, output[, workspace])`` in execution order."""

    name: str
    callee: str
    inputs: tuple[str, ...]
    output: str
    kind: str  # the Relax op family, e.g. "conv2d", "max_pool2d", "matmul", "softmax", "copy"
    workspace_bytes: int = 0
    # "elementwise", "depthwise" or "pointwise" when the output overwrites an input (then the output
    # tensor's ``alias_of`` names that input), "" otherwise.
    in_place: str = ""
    in_place_axis: int = -1  # the channel axis of a depthwise or pointwise step run in place
    # Partial execution: for a step running a fused chain, how it is split ("channels:axis=A:slice=S:
    # accumulate=0|1") and the names of the chain's operator steps, producer first.
    partial: str = ""
    chain: tuple[str, ...] = ()


@attrs.frozen
class Graph:
    """Tensors by name, steps in execution order, and the model's input and output names."""

    tensors: dict[str, Tensor]
    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: dict[str, np.ndarray] = attrs.field(eq=False, repr=False)

    def storage_root(self, name: str) -> str:
        """The tensor that owns the memory ``name`` lives in (follows alias chains)."""
        t = self.tensors[name]
        while t.alias_of is not None:
            t = self.tensors[t.alias_of]
        return t.name


def _kind_of(callee: str) -> str:
    """A readable op family from a fused function name such as ``fused_conv2d1_add1_relu1``."""
    base = callee.removeprefix("fused_").split("_")[0]
    for prefix in ("conv2d", "max", "avg", "adaptive", "matmul", "softmax", "concatenate", "transpose"):
        if base.startswith(prefix):
            return {"max": "max_pool2d", "avg": "avg_pool2d", "adaptive": "global_avg_pool2d"}.get(
                prefix, prefix
            )
    return base.rstrip("0123456789") or "op"


class _Extractor:
    def __init__(self, func: Any) -> None:
        self.func = func
        self.tensors: dict[str, Tensor] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.steps: list[Step] = []
        self.names: dict[Any, str] = {}
        self.tuples: dict[Any, list[str]] = {}
        self.const_ids: dict[Any, str] = {}

    def _unique(self, base: str) -> str:
        name = base.replace(".", "_") or "t"
        if name[0].isdigit():
            name = "t" + name
        n, k = name, 1
        while n in self.tensors:
            n, k = f"{name}_{k}", k + 1
        return n

    def _add_var(self, var: Any, kind: str, alias_of: str | None = None) -> str:
        ty = var.ty
        name = self._unique(_tvm.var_name(var))
        self.tensors[name] = Tensor(name, _tvm.tensor_shape(ty), _tvm.tensor_dtype(ty), kind, alias_of)
        self.names[var] = name
        return name

    def _arg(self, arg: Any) -> str:
        if isinstance(arg, _tvm.RelaxConst):
            for known, name in self.const_ids.items():
                if known.same_as(arg):
                    return name
            value = _tvm.const_value(arg)
            name = self._unique(f"w{len(self.weights)}")
            self.tensors[name] = Tensor(name, tuple(int(d) for d in value.shape), str(value.dtype), "weight")
            self.weights[name] = value
            self.const_ids[arg] = name
            return name
        if isinstance(arg, _tvm.RelaxVar) and arg in self.names:
            return self.names[arg]
        raise UnsupportedOpError(f"operator argument {arg!r} is neither a tensor nor a constant")

    def run(self) -> Graph:
        inputs = tuple(self._add_var(p, "input") for p in self.func.params)
        for block in self.func.body.blocks:
            for binding in block.bindings:
                self._binding(binding)
        ret = self.func.body.body
        if isinstance(ret, _tvm.RelaxVar) and ret in self.tuples:
            outputs = list(self.tuples[ret])
        else:
            outs = list(ret.fields) if isinstance(ret, _tvm.relax.Tuple) else [ret]
            outputs = []
            for o in outs:
                if not isinstance(o, _tvm.RelaxVar) or o not in self.names:
                    raise UnsupportedOpError(f"model output {o!r} is not a computed tensor")
                outputs.append(self.names[o])
        return Graph(dict(self.tensors), tuple(self.steps), inputs, tuple(outputs), dict(self.weights))

    def _binding(self, binding: Any) -> None:
        value = binding.value
        if isinstance(value, _tvm.RelaxVar) and value in self.names:
            self.names[binding.var] = self.names[value]
            return
        if isinstance(value, _tvm.RelaxVar) and value in self.tuples:
            self.tuples[binding.var] = self.tuples[value]
            return
        if isinstance(value, _tvm.relax.Tuple):
            self.tuples[binding.var] = [self._arg(f) for f in value.fields]
            return
        if isinstance(value, _tvm.relax.TupleGetItem) and value.tuple_value in self.tuples:
            self.names[binding.var] = self.tuples[value.tuple_value][int(value.index)]
            return
        if not isinstance(value, _tvm.RelaxCall):
            raise UnsupportedOpError(f"cannot execute binding {_tvm.var_name(binding.var)} = {value!r}")
        op = _tvm.op_name(value)
        if op == "relax.call_tir":
            callee = value.args[0].name_hint
            args = [self._arg(a) for a in value.args[1].fields]
            out = self._add_var(binding.var, "intermediate")
            self.steps.append(Step(out, callee, tuple(args), out, _kind_of(callee)))
            return
        if op == "relax.reshape":
            src = self._arg(value.args[0])
            if self.tensors[src].kind == "weight":
                raise UnsupportedOpError("reshape of a constant survived constant folding")
            self._add_var(binding.var, "alias", alias_of=src)
            return
        raise UnsupportedOpError(f"no lowering for Relax call {op or value.op!r} in binding {binding.var}")


def extract_graph(mod: _tvm.IRModule) -> Graph:
    """The execution graph of ``mod["main"]`` after the graph pipeline (fused, legalised)."""
    graph = _Extractor(mod["main"]).run()
    tensors = dict(graph.tensors)
    steps = list(graph.steps)
    outputs: list[str] = []
    claimed = set(graph.inputs)
    for k, name in enumerate(graph.outputs):
        root = graph.storage_root(name)
        if root in claimed:
            # The output's storage is an input or another output: it needs a buffer of its own.
            t = tensors[name]
            copy = f"{name}_output{k}"
            tensors[copy] = Tensor(copy, t.shape, t.dtype, "output")
            steps.append(Step(copy, "", (name,), copy, "copy"))
            name = copy
        else:
            t = tensors[name]
            tensors[name] = attrs.evolve(t, kind="output") if t.kind == "intermediate" else t
        claimed.add(graph.storage_root(name) if name in graph.tensors else name)
        outputs.append(name)
    return attrs.evolve(graph, tensors=tensors, steps=tuple(steps), outputs=tuple(outputs))


def reorder(graph: Graph, order: tuple[int, ...]) -> Graph:
    """``graph`` with its steps in ``order`` (step indices); the order must respect data dependencies."""
    if sorted(order) != list(range(len(graph.steps))):
        raise ValueError(f"{order} is not a permutation of the {len(graph.steps)} steps")
    produced = set(graph.inputs) | set(graph.weights)
    steps = [graph.steps[i] for i in order]
    for step in steps:
        missing = [n for n in step.inputs if graph.storage_root(n) not in produced and n not in produced]
        if missing:
            raise ValueError(f"step {step.name} runs before its inputs {missing} are computed")
        produced.add(step.output)
        produced.add(graph.storage_root(step.output))
    return attrs.evolve(graph, steps=tuple(steps))
