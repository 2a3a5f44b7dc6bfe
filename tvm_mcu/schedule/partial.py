"""Partial execution (Pex): which chains of operators can run a slice of channels at a time.

A chain is a producer that computes each output channel on its own (a convolution or a dense layer,
over all its input channels) followed by operators that map channel ``c`` to channel ``c`` only
(depthwise convolutions, pooling, per-channel element-wise ops: the in-place analysis's "depthwise"
kind), each intermediate read by the next operator only. Run slice by slice, the intermediates never
exist whole: the chain needs its inputs, its output and one slice of each intermediate.
"""

from __future__ import annotations

import attrs

from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.passes.relax.group_chains import CHAIN_PREFIX
from tvm_mcu.schedule.graph import Graph

# Op families that compute each output channel from all input channels (and so can produce a slice).
PRODUCERS = ("conv2d", "matmul", "dense")
# Slice widths tried for accumulating chains.
ACCUMULATE_SLICES = (1, 2, 4, 8, 16)
# Estimates for ranking candidates (reports give QEMU's counts): instructions per MAC of our kernels;
# per output element and slice, an accumulating consumer's extra pass (accumulator load and store,
# loop set-up: about 16 instructions measured on the MobileNetV2-style benchmark); per chain for its
# loop over slices.
INSTR_PER_MAC = 9.0
INSTR_PER_ACCUMULATOR_PASS = 16.0
CHAIN_OVERHEAD = 0.002


@attrs.frozen
class Chain:
    steps: tuple[str, ...]  # step names, producer first
    axis: int  # the channel axis of the chain's tensors
    slice: int = 1  # channels per slice
    # The last step reduces over the chain's channels (pointwise conv, dense): it accumulates slices.
    accumulate: bool = False

    @property
    def spec(self) -> str:
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


def annotate(graph: Graph, chains: list[Chain]) -> Graph:
    """Mark the steps of a grouped graph that run a chain (named after the chain's last step)."""
    by_last = {c.steps[-1]: c for c in chains}
    steps = []
    for step in graph.steps:
        c = by_last.get(step.name)
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
