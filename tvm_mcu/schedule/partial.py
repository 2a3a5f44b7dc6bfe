"""Partial execution (Pex): which chains of operators can run a slice of channels, or a band of rows,
at a time.

A chain is a producer that computes each output channel on its own (a convolution or a dense layer,
over all its input channels) followed by operators that map channel ``c`` to channel ``c`` only
(depthwise convolutions, pooling, per-channel element-wise ops: the in-place analysis's "depthwise"
kind), each intermediate read by the next operator only. Run slice by slice, the intermediates never
exist whole: the chain needs its inputs, its output and one slice of each intermediate.

A row chain is a run of windowed operators (convolutions of any kind, pooling), each intermediate read
by the next operator only: run a row of its output at a time, each intermediate is a line buffer of the
rows the next operator's window needs (passes/tir/row_bands.py). No row is computed twice; the cost is
shifting the line buffers up after each row. It shrinks the high-resolution early layers, where every
operator mixes all channels and a channel split cannot apply.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.passes.relax.group_chains import CHAIN_PREFIX
from tvm_mcu.schedule.graph import Graph

# Op families that compute each output channel from all input channels (and so can produce a slice).
PRODUCERS = ("conv2d", "matmul", "dense")
# Op families whose output row depends on a window of input rows (a row chain's members).
WINDOWED = ("conv2d", "max_pool2d", "avg_pool2d")
# Slice widths tried for accumulating chains.
ACCUMULATE_SLICES = (1, 2, 4, 8, 16)
# Estimates for ranking candidates (reports give QEMU's counts): instructions per MAC of our kernels;
# per output element and slice, an accumulating consumer's extra pass (accumulator load and store,
# loop set-up: about 16 instructions measured on the MobileNetV2-style benchmark); per chain for its
# loop over slices.
INSTR_PER_MAC = 9.0
INSTR_PER_ACCUMULATOR_PASS = 16.0
CHAIN_OVERHEAD = 0.002
# Per element a line buffer shifts: the shift is a contiguous copy the C compiler turns into memmove
# (measured: row bands cost +0.4 % on ResNet-8 and +1.2 % on the MobileNetV2-style benchmark).
INSTR_PER_SHIFTED_ELEMENT = 1.0


@attrs.frozen
class Chain:
    steps: tuple[str, ...]  # step names, producer first
    axis: int  # the channel axis of the chain's tensors
    slice: int = 1  # channels per slice
    # The last step reduces over the chain's channels (pointwise conv, dense): it accumulates slices.
    accumulate: bool = False
    mode: str = "channels"  # or "rows": a band of output rows at a time (``axis``: the rows' axis)

    @property
    def spec(self) -> str:
        if self.mode == "rows":
            return f"rows:axis={self.axis}"
        return f"channels:axis={self.axis}:slice={self.slice}:accumulate={int(self.accumulate)}"


def find_chains(graph: Graph, options: dict[str, list[InPlace]], *, accumulate: bool = True) -> list[Chain]:
    """Maximal chains in ``graph``'s order: a producer, per-channel steps on its output, and (when the
    next step reduces over those channels and is their only reader) that accumulating step."""
    readers: dict[str, list[int]] = {}
    for i, step in enumerate(graph.steps):
        for name in step.inputs:
            readers.setdefault(graph.storage_root(name), []).append(i)
    outputs = {graph.storage_root(o) for o in graph.outputs}
    chains: list[Chain] = []
    i = 0
    steps = graph.steps
    while i < len(steps):
        step = steps[i]
        if step.kind not in PRODUCERS or step.in_place:
            i += 1
            continue
        names, axis, cur, j = [step.name], None, step, i + 1
        while j < len(steps):
            nxt = steps[j]
            out = cur.output
            if graph.storage_root(out) != out or out in outputs or readers.get(out) != [j]:
                break
            acts = [n for n in nxt.inputs if graph.tensors[n].kind != "weight"]
            per_channel = [
                o for o in options.get(nxt.callee, []) if o.kind == "depthwise" and nxt.inputs[o.param] == out
            ]
            if acts != [out] or not per_channel or (axis is not None and per_channel[0].axis != axis):
                break
            axis = per_channel[0].axis
            names.append(nxt.name)
            cur, j = nxt, j + 1
        acc = False
        if accumulate and axis is not None and j < len(steps):
            nxt, out = steps[j], cur.output
            acts = [n for n in nxt.inputs if graph.tensors[n].kind != "weight"]
            if (
                nxt.kind in PRODUCERS
                and not nxt.in_place
                and acts == [out]
                and readers.get(out) == [j]
                and out not in outputs
                and graph.storage_root(out) == out
            ):
                names.append(nxt.name)
                acc, cur, j = True, nxt, j + 1
                # Element-wise steps on the accumulated result (a residual add) join the chain: their
                # input never exists whole either, and they end the chain's data flow.
                while j < len(steps):
                    nxt, out = steps[j], cur.output
                    elementwise = [
                        o
                        for o in options.get(nxt.callee, [])
                        if o.kind == "elementwise" and nxt.inputs[o.param] == out
                    ]
                    if (
                        not elementwise
                        or readers.get(out) != [j]
                        or out in outputs
                        or graph.storage_root(out) != out
                    ):
                        break
                    names.append(nxt.name)
                    cur, j = nxt, j + 1
        if axis is not None and len(names) >= 2:
            chains.append(Chain(tuple(names), axis, accumulate=acc))
            i = j
        else:
            i += 1
    return chains


def find_row_chains(graph: Graph, row_axes: dict[str, int | None]) -> list[Chain]:
    """Maximal runs of windowed steps (``WINDOWED``), each output read by the next step only.

    ``row_axes``: for each callee, the axis of its output's rows (None when the kernel does not say,
    e.g. pooling alone); the members of a chain must agree on it.
    """
    readers: dict[str, list[int]] = {}
    for i, step in enumerate(graph.steps):
        for name in step.inputs:
            readers.setdefault(graph.storage_root(name), []).append(i)
    outputs = {graph.storage_root(o) for o in graph.outputs}
    steps = graph.steps

    def windowed(step: Any) -> bool:
        return step.kind in WINDOWED and not step.in_place and len(graph.tensors[step.output].shape) == 4

    chains: list[Chain] = []
    i = 0
    while i < len(steps):
        if not windowed(steps[i]):
            i += 1
            continue
        names, cur, j = [steps[i].name], steps[i], i + 1
        axes = {row_axes.get(cur.callee)}
        while j < len(steps):
            nxt, out = steps[j], cur.output
            acts = [n for n in nxt.inputs if graph.tensors[n].kind != "weight"]
            if (
                not windowed(nxt)
                or acts != [out]
                or readers.get(out) != [j]
                or out in outputs
                or graph.storage_root(out) != out
            ):
                break
            names.append(nxt.name)
            axes.add(row_axes.get(nxt.callee))
            cur, j = nxt, j + 1
        known = axes - {None}
        axis = known.pop() if len(known) == 1 else None
        if axis is not None:
            # A last member with one output row (a global pool) would need its whole input.
            by_name = {s.name: s for s in steps[i:j]}
            while names and graph.tensors[by_name[names[-1]].output].shape[axis] <= 1:
                names.pop()
        if axis is not None and len(names) >= 2:
            chains.append(Chain(tuple(names), axis, mode="rows"))
            i += len(names)
        else:
            i += 1
    return chains


def row_overhead(chains: list[Chain], graph: Graph, macs: dict[str, int]) -> float:
    """Estimated extra instructions of row chains relative to the model's. Each intermediate's line
    buffer shifts its kept rows once per row of its consumer: for 3x3 windows at stride 1, each
    element is copied about twice."""
    total = max(sum(macs.values()), 1) * INSTR_PER_MAC
    by_name = {s.name: s for s in graph.steps}
    extra = 0.0
    for c in chains:
        extra += CHAIN_OVERHEAD * total
        for name in c.steps[:-1]:
            shape = graph.tensors[by_name[name].output].shape
            extra += 2 * INSTR_PER_SHIFTED_ELEMENT * int(np.prod(shape, dtype=np.int64))
    return extra / total


def annotate(graph: Graph, chains: list[Chain]) -> Graph:
    """Mark the steps of a grouped graph that run a chain (named after the chain's last step; a chain
    ending in the model's output may carry the output's name instead)."""
    by_last = {c.steps[-1]: c for c in chains}
    names = {s.name for s in graph.steps}
    unmatched = [c for c in chains if c.steps[-1] not in names]
    steps = []
    for step in graph.steps:
        c = by_last.get(step.name)
        if c is None and step.callee.startswith(CHAIN_PREFIX) and len(unmatched) == 1:
            c = unmatched.pop()
        if c is not None and step.callee.startswith(CHAIN_PREFIX):
            step = attrs.evolve(step, kind="chain", partial=c.spec, chain=c.steps)
        steps.append(step)
    return attrs.evolve(graph, steps=tuple(steps))


def overhead(chains: list[Chain], macs: dict[str, int]) -> float:
    """Estimated extra instructions of ``chains``, as a fraction of the model's (``macs``: per step of
    the unsplit graph). An accumulating consumer re-enters each output element once per slice
    instead of once: one pass per ``slice`` of its MACs."""
    total = max(sum(macs.values()), 1) * INSTR_PER_MAC
    extra = 0.0
    for c in chains:
        extra += CHAIN_OVERHEAD * total
        if c.accumulate:
            consumer = next(n for n in reversed(c.steps) if macs.get(n, 0))
            extra += INSTR_PER_ACCUMULATOR_PASS * macs[consumer] / c.slice
    return extra / total
