"""Peak live memory of whole tensors, for the given operator order and for the best order.

The "whole-buffer bound" is what any layer-by-layer executor needs at least: the largest sum of tensors
alive at once (model input and output included, views sharing storage, operator scratch excluded),
minimised over every execution order of the graph. Going below it needs partial execution.
"""

from __future__ import annotations

from functools import cache

import attrs

from tvm_mcu.schedule.graph import Graph

# Memoised states (sets of executed operators) explored before falling back to the given order.
MAX_STATES = 200_000


@attrs.frozen
class PeakResult:
    peak_bytes: int
    order: tuple[int, ...]  # step indices in execution order
    exact: bool  # False when the search was cut off and ``order`` is the graph's own order


def _storage(graph: Graph) -> tuple[list[str], dict[str, int], list[set[int]], list[int]]:
    """Storage roots (non-weight), their sizes, the steps consuming each, the root each step writes."""
    roots: list[str] = []
    index: dict[str, int] = {}
    for name in graph.tensors:
        t = graph.tensors[name]
        if t.kind == "weight":
            continue
        r = graph.storage_root(name)
        if r not in index:
            index[r] = len(roots)
            roots.append(r)
    consumers: list[set[int]] = [set() for _ in roots]
    writes: list[int] = []
    for i, step in enumerate(graph.steps):
        writes.append(index[graph.storage_root(step.output)])
        for name in step.inputs:
            if graph.tensors[name].kind != "weight":
                consumers[index[graph.storage_root(name)]].add(i)
    return roots, index, consumers, writes


def whole_buffer_peak(graph: Graph, order: tuple[int, ...] | None = None) -> int:
    """Largest sum of live whole tensors when the steps run in ``order`` (default: the graph's)."""
    roots, index, consumers, writes = _storage(graph)
    sizes = [graph.tensors[r].nbytes for r in roots]
    keep = {index[graph.storage_root(o)] for o in graph.outputs}
    live = {index[graph.storage_root(i)] for i in graph.inputs}
    done: set[int] = set()
    peak = sum(sizes[t] for t in live)
    for s in order if order is not None else range(len(graph.steps)):
        live.add(writes[s])
        peak = max(peak, sum(sizes[t] for t in live))
        done.add(s)
        live = {t for t in live if t in keep or not consumers[t] <= done}
    return peak


def best_order_peak(graph: Graph) -> PeakResult:
    """The operator order with the smallest whole-buffer peak, by memoised search over executed sets."""
    roots, index, consumers, writes = _storage(graph)
    n = len(graph.steps)
    sizes = [graph.tensors[r].nbytes for r in roots]
    keep = {index[graph.storage_root(o)] for o in graph.outputs}
    inputs = {index[graph.storage_root(i)] for i in graph.inputs}
    producer = {writes[s]: s for s in range(n)}
    deps = [0] * n
    for s, step in enumerate(graph.steps):
        for name in step.inputs:
            if graph.tensors[name].kind == "weight":
                continue
            p = producer.get(index[graph.storage_root(name)])
            if p is not None and p != s:
                deps[s] |= 1 << p
    consumer_masks = [sum(1 << c for c in cons) for cons in consumers]
    full = (1 << n) - 1
    explored = 0

    def live_after(done: int) -> int:
        total = 0
        for t in range(len(roots)):
            produced = t in inputs or (t in producer and done >> producer[t] & 1)
            if produced and (t in keep or consumer_masks[t] & ~done):
                total += sizes[t]
        return total

    @cache
    def solve(done: int) -> tuple[int, tuple[int, ...]]:
        nonlocal explored
        explored += 1
        if explored > MAX_STATES:
            raise _TooLarge
        if done == full:
            return 0, ()
        base = live_after(done)
        best: tuple[int, tuple[int, ...]] | None = None
        for s in range(n):
            if done >> s & 1 or deps[s] & ~done:
                continue
            during = base + sizes[writes[s]]
            rest, order = solve(done | 1 << s)
            cand = (max(during, rest), (s, *order))
            if best is None or cand[0] < best[0]:
                best = cand
        assert best is not None
        return best

    try:
        peak, order = solve(0)
        return PeakResult(max(peak, live_after(0)), order, True)
    except _TooLarge:
        default = tuple(range(n))
        return PeakResult(whole_buffer_peak(graph, default), default, False)


class _TooLarge(Exception):
    """The search space exceeds MAX_STATES."""
