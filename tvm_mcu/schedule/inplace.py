"""In-place execution: which steps overwrite an input with their output, for a given operator order.

An operator may overwrite an input when its kernel can be made safe for it
(:mod:`tvm_mcu.analysis.inplace`), the input lives in the arena (the caller's input buffer is read-only),
no later step reads it, and the output is not a model output (those live in the caller's buffer). When
the arena holds the model's inputs and outputs (``io_in_arena``), a model input may be overwritten and a
model output may be written over its dead input too (never a model output: the caller reads it last).
Element-wise operators run in place whenever they may: it costs nothing. Depthwise and pointwise
convolutions stage a plane or a pixel and copy it, a few instructions per output byte, so they run in
place only where that lowers the peak of live bytes.
"""

from __future__ import annotations

import attrs

from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.schedule.graph import Graph
from tvm_mcu.schedule.memory import buffer_lifetimes, live_profile

# Suffix of the PrimFunc cloned for a step that runs in place (the original may serve other steps).
CALLEE_SUFFIX = "_in_place"


@attrs.frozen
class Candidate:
    step: int
    option: InPlace
    input: str


def candidates(
    graph: Graph, options: dict[str, list[InPlace]], *, io_in_arena: bool = False
) -> list[Candidate]:
    """Every (step, input) pair of ``graph``'s order where running in place is allowed (``io_in_arena``:
    over a model input, or writing a model output, too)."""
    out_roots = {graph.storage_root(o) for o in graph.outputs}
    in_roots = {graph.storage_root(i) for i in graph.inputs}
    last_read: dict[str, int] = {}
    for i, step in enumerate(graph.steps):
        for name in step.inputs:
            last_read[graph.storage_root(name)] = i
    found = []
    for i, step in enumerate(graph.steps):
        # An output that is (or a view of it is) a model output lives in the caller's buffer, sized for
        # that output: it cannot take over its input's arena buffer (nor the input its slot).
        if step.kind == "copy" or step.in_place:
            continue
        if not io_in_arena and (step.output in graph.outputs or step.output in out_roots):
            continue
        if graph.storage_root(step.output) != step.output:
            continue
        for opt in options.get(step.callee, []):
            name = step.inputs[opt.param]
            t = graph.tensors[name]
            root = graph.storage_root(name)
            if t.kind == "weight" or (root in in_roots and not io_in_arena) or root in out_roots:
                continue
            if last_read.get(root) != i or step.inputs.count(name) != 1:
                continue
            if graph.tensors[step.output].nbytes > graph.tensors[root].nbytes:
                continue
            found.append(Candidate(i, opt, name))
    return found


def apply(graph: Graph, chosen: list[Candidate]) -> Graph:
    """``graph`` with each chosen step writing over its input (output aliased, callee renamed)."""
    tensors = dict(graph.tensors)
    steps = list(graph.steps)
    for c in chosen:
        step = steps[c.step]
        callee = step.callee if c.option.kind == "elementwise" else step.callee + CALLEE_SUFFIX
        steps[c.step] = attrs.evolve(step, callee=callee, in_place=c.option.kind, in_place_axis=c.option.axis)
        tensors[step.output] = attrs.evolve(tensors[step.output], alias_of=c.input)
    return attrs.evolve(graph, tensors=tensors, steps=tuple(steps))


def _profile(graph: Graph, extra: dict[int, int], io_in_arena: bool = False) -> list[int]:
    buffers, _ = buffer_lifetimes(graph, 8, io_in_arena=io_in_arena)
    live = live_profile(buffers, len(graph.steps))
    for i, nbytes in extra.items():
        live[i] += nbytes
    return live


def choose(
    graph: Graph, options: dict[str, list[InPlace]], *, io_in_arena: bool = False
) -> tuple[Graph, list[Candidate]]:
    """Run element-wise steps in place wherever allowed, convolutions where they lower the peak
    (``io_in_arena``: the model's inputs and outputs in the arena, see :func:`candidates`)."""
    cands = candidates(graph, options, io_in_arena=io_in_arena)
    by_step: dict[int, Candidate] = {}
    for c in cands:
        by_step.setdefault(c.step, c)  # the first allowed input of a step
    chosen = [c for c in by_step.values() if c.option.kind == "elementwise"]
    pending = [c for c in by_step.values() if c.option.kind != "elementwise"]
    current = apply(graph, chosen)
    while pending:
        extra = {c.step: c.option.scratch_bytes for c in chosen}
        live = _profile(current, extra, io_in_arena)
        peak = max(live)
        at_peak = [c for c in pending if live[c.step] == peak]
        if not at_peak:
            break
        trial = chosen + at_peak
        trial_graph = apply(graph, trial)
        if max(_profile(trial_graph, {c.step: c.option.scratch_bytes for c in trial}, io_in_arena)) >= peak:
            break
        chosen, current = trial, trial_graph
        pending = [c for c in pending if c not in at_peak]
    return current, sorted(chosen, key=lambda c: c.step)


def in_place_callees(graph: Graph) -> dict[str, tuple[str, str, int]]:
    """Cloned callee -> (original callee, kind, axis), for steps that run in place with a restaged kernel."""
    return {
        s.callee: (s.callee.removesuffix(CALLEE_SUFFIX), s.in_place, s.in_place_axis)
        for s in graph.steps
        if s.in_place and s.callee.endswith(CALLEE_SUFFIX)
    }
