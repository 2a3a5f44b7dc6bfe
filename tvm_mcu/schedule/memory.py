"""The static memory plan: lifetimes of every buffer in execution order, and their offsets in one arena.

Model inputs and outputs live in the caller's buffers; every other activation and every operator's
workspace lives in the arena. Views (reshape, flatten) share their source's storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from tvm_mcu.schedule.graph import Graph


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@attrs.frozen
class Buffer:
    """A block of the arena: live from step ``start`` to step ``end`` inclusive."""

    name: str
    size: int
    start: int
    end: int
    offset: int = -1

    def overlaps_in_time(self, other: Buffer) -> bool:
        return not (self.end < other.start or other.end < self.start)


@attrs.frozen
class MemoryPlan:
    """Offsets of every arena buffer; ``lower_bound`` is the largest sum of simultaneously live bytes."""

    arena_bytes: int
    lower_bound: int
    align: int
    strategy: str
    buffers: tuple[Buffer, ...]
    # Tensor name -> where it lives: "arena", "input:<k>", "output:<k>" (after following views).
    placement: dict[str, str]

    def offset_of(self, name: str) -> int:
        for b in self.buffers:
            if b.name == name:
                return b.offset
        raise KeyError(name)

    def to_json(self) -> dict[str, object]:
        return {
            "arena_bytes": self.arena_bytes,
            "lower_bound_bytes": self.lower_bound,
            "align": self.align,
            "strategy": self.strategy,
            "buffers": [
                {
                    "name": b.name,
                    "offset": b.offset,
                    "bytes": b.size,
                    "first_step": b.start,
                    "last_step": b.end,
                }
                for b in sorted(self.buffers, key=lambda b: (b.offset, b.start, b.name))
            ],
            "placement": dict(sorted(self.placement.items())),
        }


def workspace_name(step_name: str) -> str:
    return f"{step_name}.workspace"


def buffer_lifetimes(graph: Graph, align: int) -> tuple[list[Buffer], dict[str, str]]:
    """Arena buffers with their live ranges (step indices), and where each tensor lives."""
    placement: dict[str, str] = {}
    for k, name in enumerate(graph.inputs):
        placement[name] = f"input:{k}"
    for k, name in enumerate(graph.outputs):
        root = graph.storage_root(name)
        if root not in placement:
            placement[root] = f"output:{k}"
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, step in enumerate(graph.steps):
        root = graph.storage_root(step.output)
        first.setdefault(root, i)
        last[root] = max(last.get(root, i), i)
        for name in step.inputs:
            if graph.tensors[name].kind == "weight":
                continue
            r = graph.storage_root(name)
            last[r] = max(last.get(r, i), i)
    buffers = []
    for root, start in first.items():
        if root in placement:
            continue
        placement[root] = "arena"
        buffers.append(Buffer(root, _round_up(graph.tensors[root].nbytes, align), start, last[root]))
    for i, step in enumerate(graph.steps):
        if step.workspace_bytes:
            buffers.append(Buffer(workspace_name(step.name), _round_up(step.workspace_bytes, align), i, i))
    for name in graph.tensors:
        root = graph.storage_root(name)
        if name != root and root in placement:
            placement[name] = placement[root]
    return buffers, placement


def live_profile(buffers: Iterable[Buffer], n_steps: int) -> list[int]:
    """Total size of the buffers live at each step."""
    live = [0] * max(n_steps, 1)
    for b in buffers:
        for t in range(b.start, b.end + 1):
            live[t] += b.size
    return live


def live_lower_bound(buffers: Iterable[Buffer], n_steps: int) -> int:
    """The largest total size of buffers live at the same step: no placement can beat it."""
    return max(live_profile(buffers, n_steps), default=0)


def _first_fit(order: list[Buffer], align: int) -> list[Buffer]:
    """Place buffers in the given order at the lowest offset free for their whole lifetime."""
    placed: list[Buffer] = []
    for buf in order:
        busy = sorted((p.offset, p.offset + p.size) for p in placed if p.overlaps_in_time(buf))
        offset = 0
        for lo, hi in busy:
            if offset + buf.size <= lo:
                break
            offset = max(offset, _round_up(hi, align))
        placed.append(attrs.evolve(buf, offset=offset))
    return placed


def _by_size(bufs: list[Buffer]) -> list[Buffer]:
    return sorted(bufs, key=lambda b: (-b.size, b.start, b.name))


def _by_conflicts(bufs: list[Buffer]) -> list[Buffer]:
    def pressure(b: Buffer) -> int:
        return sum(o.size for o in bufs if o is not b and o.overlaps_in_time(b))

    return sorted(bufs, key=lambda b: (-(pressure(b) + b.size), -b.size, b.start, b.name))


def _by_area(bufs: list[Buffer]) -> list[Buffer]:
    return sorted(bufs, key=lambda b: (-b.size * (b.end - b.start + 1), -b.size, b.start, b.name))


def _by_start(bufs: list[Buffer]) -> list[Buffer]:
    return sorted(bufs, key=lambda b: (b.start, -b.size, b.name))


STRATEGIES: dict[str, Callable[[list[Buffer]], list[Buffer]]] = {
    "greedy_by_size": _by_size,
    "greedy_by_conflicts": _by_conflicts,
    "greedy_by_area": _by_area,
    "linear_scan": _by_start,
}


def plan_memory(graph: Graph, *, align: int = 8) -> MemoryPlan:
    """Assign arena offsets with several first-fit orders and keep the smallest arena."""
    buffers, placement = buffer_lifetimes(graph, align)
    bound = live_lower_bound(buffers, len(graph.steps))
    best: tuple[int, str, list[Buffer]] | None = None
    for name, order in STRATEGIES.items():
        placed = _first_fit(order(buffers), align)
        size = max((b.offset + b.size for b in placed), default=0)
        if best is None or size < best[0]:
            best = (size, name, placed)
    assert best is not None
    size, strategy, placed = best
    _check_no_overlap(placed)
    placed.sort(key=lambda b: (b.start, b.name))
    return MemoryPlan(size, bound, align, strategy, tuple(placed), placement)


def _check_no_overlap(placed: list[Buffer]) -> None:
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            if a.overlaps_in_time(b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
