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
operator mixes all channels and a channel split cannot apply. A run longer than ``MAX_ROW_DEPTH`` is
cut into several chains, where the SRAM it needs is least.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.passes.relax.group_chains import CHAIN_PREFIX
from tvm_mcu.schedule import cost
from tvm_mcu.schedule.graph import Graph

# Op families that compute each output channel from all input channels (and so can produce a slice).
PRODUCERS = ("conv2d", "matmul", "dense")
# Op families whose output row depends on a window of input rows (a row chain's members).
WINDOWED = ("conv2d", "max_pool2d", "avg_pool2d")
# Slice widths tried for accumulating chains.
ACCUMULATE_SLICES = (1, 2, 4, 8, 16)
# The most steps one row chain runs. Each operator of a chain runs inside the row loop of the next,
# so lowering a chain costs more than linearly in its depth (s_tir's compute_at and TVM's lowering
# passes walk the whole nest for each operator): a longer run is cut into several chains
# (cut_run), which keeps compile time linear in a network's depth. Cut where a tensor is small, a
# long run usually needs less SRAM, not more: its line buffers all live at once, and its late,
# low-resolution layers gain little from them (MobileNetV1-style, 13 blocks at 96x96: 66,818 B as
# one chain of 27 steps, 41,858 B as chains of 8 and 4 steps, the rest whole). 12 keeps every run of
# the benchmark models whole (the longest, the KWS DS-CNN's, has 9 steps).
MAX_ROW_DEPTH = 12


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


def find_row_chains(
    graph: Graph,
    row_axes: dict[str, int | None],
    window: Callable[[str, int], int | None] | None = None,
    *,
    macs: dict[str, int] | None = None,
    max_depth: int = MAX_ROW_DEPTH,
    costs: cost.Costs = cost.FLOAT,
    skips: Callable[[str, int], bool] | None = None,
) -> list[Chain]:
    """Runs of windowed steps (``WINDOWED``), each output read by the next step only, as row chains
    of at most ``max_depth`` steps. ``skips(callee, axis)``: whether the callee's stride passes over
    input rows its window does not read (``analysis.rows.skips_rows``): it may start a chain, not
    continue one.

    ``row_axes``: for each callee, the axis of its output's rows (None when the kernel does not say,
    e.g. pooling alone); the members of a chain must agree on it. A run longer than ``max_depth`` is
    cut where the SRAM it needs is least (:func:`cut_run`), from ``window(callee, axis)``: the rows of
    its input one output row of a callee reads (None: unknown, its input counted whole), and ``macs``
    per step (the cost of a chain against the model's instructions; None: shifted elements only).
    """
    chains: list[Chain] = []
    for names, axis in _row_runs(graph, row_axes, skips):
        if len(names) <= max_depth:
            chains.append(Chain(names, axis, mode="rows"))
            continue
        for cut in cut_run(graph, names, axis, window, macs=macs, max_depth=max_depth, costs=costs):
            if len(cut) >= 2:
                chains.append(Chain(cut, axis, mode="rows"))
    return chains


def _row_runs(
    graph: Graph, row_axes: dict[str, int | None], skips: Callable[[str, int], bool] | None = None
) -> list[tuple[tuple[str, ...], int]]:
    """Maximal runs of windowed steps that may run a row at a time, with their rows' axis; a step that
    ``skips`` rows (at the run's axis so far, or its own) only first in a run."""
    readers: dict[str, list[int]] = {}
    for i, step in enumerate(graph.steps):
        for name in step.inputs:
            readers.setdefault(graph.storage_root(name), []).append(i)
    outputs = {graph.storage_root(o) for o in graph.outputs}
    steps = graph.steps

    def windowed(step: Any) -> bool:
        return step.kind in WINDOWED and not step.in_place and len(graph.tensors[step.output].shape) == 4

    runs: list[tuple[tuple[str, ...], int]] = []
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
            known_axes = [a for a in (*axes, row_axes.get(nxt.callee)) if a is not None]
            if (
                not windowed(nxt)
                or (skips is not None and any(skips(nxt.callee, a) for a in known_axes))
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
            runs.append((tuple(names), axis))
            i += len(names)
        else:
            i += 1
    return runs


def cut_run(
    graph: Graph,
    names: tuple[str, ...],
    axis: int,
    window: Callable[[str, int], int | None] | None = None,
    *,
    macs: dict[str, int] | None = None,
    max_depth: int = MAX_ROW_DEPTH,
    costs: cost.Costs = cost.FLOAT,
) -> list[tuple[str, ...]]:
    """A run of windowed steps cut into pieces of at most ``max_depth`` steps: the cuts that need the
    least SRAM at the piece that needs most, then (among those) the fewest extra instructions.

    A piece of one step runs whole: its input and output. A longer piece is a row chain: its input
    and output whole, each intermediate as a line buffer of the rows its consumer's window reads.
    Cutting where a tensor is small (after a stride, or before a pointwise convolution widens it)
    keeps that tensor whole at little cost; a deep network's late, low-resolution layers gain little
    from line buffers and pay their shifts, so they are usually left as single steps. Exact: one
    dynamic programme for the least SRAM, a second for the cheapest cuts within it.
    """
    by_name = {s.name: s for s in graph.steps}
    steps = [by_name[n] for n in names]
    acts = [n for n in steps[0].inputs if graph.tensors[n].kind != "weight"]
    tensors = [graph.tensors[acts[0]], *(graph.tensors[s.output] for s in steps)]  # tensors[i] feeds step i
    whole = [t.nbytes for t in tensors]
    elements = [int(np.prod(t.shape, dtype=np.int64)) for t in tensors]
    lines = list(whole)  # the line buffer of tensors[i] (i >= 1) while step i reads it
    for i in range(1, len(steps)):
        k = window(steps[i].callee, axis) if window is not None else None
        rows = tensors[i].shape[axis]
        if k is not None and rows > 0:
            lines[i] = whole[i] * min(k, rows) // rows
    total = costs.instructions(macs) if macs else 0.0
    # The model's inputs and outputs live in the caller's buffers for the whole run.
    io = {graph.storage_root(n) for n in (*graph.inputs, *graph.outputs)}
    resident = sum(graph.tensors[n].nbytes for n in io)
    for k, t in enumerate(tensors):
        if graph.storage_root(t.name) in io:
            whole[k] = lines[k] = 0

    def sram(j: int, i: int) -> int:  # steps j..i-1 as one piece
        return resident + whole[j] + whole[i] + sum(lines[j + 1 : i])

    def extra(j: int, i: int) -> float:  # as row_overhead estimates a chain
        if i - j == 1:
            return 0.0
        return costs.chain_overhead * total + 2 * costs.per_shifted_element * sum(elements[j + 1 : i])

    n = len(steps)
    pieces = [(j, i) for i in range(1, n + 1) for j in range(max(0, i - max_depth), i)]
    least = [0] + [2**62] * n  # least SRAM of the steps before i
    for j, i in pieces:
        least[i] = min(least[i], max(least[j], sram(j, i)))
    peak = least[n]
    cheapest: list[tuple[float, int]] = [(0.0, -1)] + [(float("inf"), -1)] * n  # (cost, cut before)
    for j, i in pieces:
        if sram(j, i) <= peak and cheapest[j][0] + extra(j, i) < cheapest[i][0]:
            cheapest[i] = (cheapest[j][0] + extra(j, i), j)
    out: list[tuple[str, ...]] = []
    i = n
    while i > 0:
        j = cheapest[i][1]
        out.append(names[j:i])
        i = j
    return out[::-1]


def row_overhead(chains: list[Chain], graph: Graph, macs: dict[str, int], costs: cost.Costs) -> float:
    """Estimated extra instructions of row chains relative to the model's. Each intermediate's line
    buffer shifts its kept rows once per row of its consumer: for 3x3 windows at stride 1, each
    element is copied about twice."""
    total = costs.instructions(macs)
    by_name = {s.name: s for s in graph.steps}
    extra = 0.0
    for c in chains:
        extra += costs.chain_overhead * total
        for name in c.steps[:-1]:
            shape = graph.tensors[by_name[name].output].shape
            extra += 2 * costs.per_shifted_element * int(np.prod(shape, dtype=np.int64))
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


def overhead(chains: list[Chain], macs: dict[str, int], costs: cost.Costs) -> float:
    """Estimated extra instructions of ``chains``, as a fraction of the model's (``macs``: per step of
    the unsplit graph). An accumulating consumer re-enters each output element once per slice
    instead of once: one pass per ``slice`` of its MACs."""
    total = costs.instructions(macs)
    extra = 0.0
    for c in chains:
        extra += costs.chain_overhead * total
        if c.accumulate:
            consumer = next(n for n in reversed(c.steps) if macs.get(n, 0))
            extra += costs.per_accumulator_pass * macs[consumer] / c.slice
    return extra / total
