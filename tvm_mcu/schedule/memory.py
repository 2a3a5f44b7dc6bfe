"""The static memory plan: lifetimes of every buffer in execution order, and their offsets in one arena.

Every activation and every operator's workspace lives in the arena. The model's inputs and outputs
live in the caller's buffers, or (``io_in_arena``, TFLite Micro's convention) in the arena too: an
input from the start until its last reader, an output from the step producing it to the end, so an
input's bytes are reused once it is dead. Views (reshape, flatten) share their source's storage. When
sharing the arena saves nothing (every input and output live at once, as in a single concatenation),
the plan keeps the caller convention's arena and lays the inputs and outputs out as the caller's
buffers would be, in the library's own buffers beside the arena (``io_apart``).
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
    # The model's inputs and outputs are arena buffers (named by their storage root) instead of the
    # caller's: every placement is then "arena".
    io_in_arena: bool = False
    # With ``io_in_arena``: the inputs and outputs are not in the arena after all but in the library's
    # own static buffers, laid out as the caller's would be (placements "input:<k>", "output:<k>"),
    # because sharing the arena with them saved nothing.
    io_apart: bool = False

    @property
    def holds_io(self) -> bool:
        """Whether the arena holds the model's inputs and outputs (its bytes count them)."""
        return self.io_in_arena and not self.io_apart

    def offset_of(self, name: str) -> int:
        for b in self.buffers:
            if b.name == name:
                return b.offset
        raise KeyError(name)

    def to_json(self) -> dict[str, object]:
        io = {"io_in_arena": True} if self.io_in_arena else {}
        if self.io_apart:
            io["io_apart"] = True
        return {
            **io,
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


def io_roots(graph: Graph) -> tuple[list[str], list[str]]:
    """The storage roots of the model's inputs and of its outputs (each once, inputs first)."""
    ins = list(dict.fromkeys(graph.storage_root(n) for n in graph.inputs))
    outs = [r for r in dict.fromkeys(graph.storage_root(n) for n in graph.outputs) if r not in ins]
    return ins, outs


def packed_io_bytes(graph: Graph) -> int:
    """The caller's input and output buffers: each packs its tensors one after another, each at an
    8-byte-aligned offset (model.h's layout)."""
    total = 0
    for names in (graph.inputs, graph.outputs):
        cursor = 0
        for name in names:
            cursor = _round_up(cursor, 8) + graph.tensors[name].nbytes
        total += cursor
    return total


def _caller_layout_allowed(graph: Graph) -> bool:
    """Whether the caller convention's placement is valid for ``graph``: no step ran in place over a
    model input or writing a model output (only the arena convention allows those)."""
    ins, outs = io_roots(graph)
    io = set(ins) | set(outs)
    return not any(s.in_place and graph.storage_root(s.output) in io for s in graph.steps)


def buffer_lifetimes(
    graph: Graph, align: int, *, io_in_arena: bool = False
) -> tuple[list[Buffer], dict[str, str]]:
    """Arena buffers with their live ranges (step indices), and where each tensor lives.

    ``io_in_arena``: the inputs' and outputs' storage roots are arena buffers too, an input live from
    step 0 (the caller fills it before the run) to its last reader, an output from its producer to the
    last step (the caller reads it after the run). Their sizes are their exact bytes, not rounded up
    (their offsets still are): no more than the caller's packed buffers would take.
    """
    placement: dict[str, str] = {}
    if not io_in_arena:
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
    io: list[Buffer] = []
    if io_in_arena:
        end = max(len(graph.steps) - 1, 0)
        ins, outs = io_roots(graph)
        # An input a step overwrote with a model output (in place) is both: live from 0 to the end.
        kept = {graph.storage_root(n) for n in graph.outputs}
        io += [Buffer(r, graph.tensors[r].nbytes, 0, end if r in kept else last.get(r, 0)) for r in ins]
        io += [Buffer(r, graph.tensors[r].nbytes, first.get(r, end), end) for r in outs]
        placement.update({b.name: "arena" for b in io})
    for root, start in first.items():
        if root in placement:
            continue
        placement[root] = "arena"
        buffers.append(Buffer(root, _round_up(graph.tensors[root].nbytes, align), start, last[root]))
    for i, step in enumerate(graph.steps):
        if step.workspace_bytes:
            buffers.append(Buffer(workspace_name(step.name), _round_up(step.workspace_bytes, align), i, i))
    buffers += io
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


def _first_fit(
    order: list[Buffer], align: int, placed: tuple[Buffer, ...] = (), floor: int = 0
) -> list[Buffer]:
    """Place buffers in the given order at the lowest offset (at least ``floor``) free for their whole
    lifetime, around those ``placed`` already."""
    placed_list = list(placed)
    for buf in order:
        busy = sorted((p.offset, p.offset + p.size) for p in placed_list if p.overlaps_in_time(buf))
        offset = floor
        for lo, hi in busy:
            if offset + buf.size <= lo:
                break
            offset = max(offset, _round_up(hi, align))
        placed_list.append(attrs.evolve(buf, offset=offset))
    return placed_list


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


def _smallest(buffers: list[Buffer], align: int) -> tuple[int, str, list[Buffer]]:
    """The smallest arena of the first-fit orders: (bytes, strategy, placed buffers)."""
    best: tuple[int, str, list[Buffer]] | None = None
    for name, order in STRATEGIES.items():
        placed = _first_fit(order(buffers), align)
        size = max((b.offset + b.size for b in placed), default=0)
        if best is None or size < best[0]:
            best = (size, name, placed)
    assert best is not None
    return best


def _io_above(graph: Graph, buffers: list[Buffer], align: int) -> list[tuple[int, str, list[Buffer]]]:
    """Plans with the inputs and outputs above the caller convention's arena (its own best plan of the
    other buffers), inputs first or outputs first: no more than that arena plus the caller's packed
    buffers (but for up to ``align - 1`` bytes between the inputs and the outputs when both are live at
    once and neither packs to a multiple of ``align``). The first-fit orders almost always do better:
    they reuse a dead input's bytes."""
    ins, outs = io_roots(graph)
    io = {b.name: b for b in buffers if b.name in ins or b.name in outs}
    size, name, below = _smallest([b for b in buffers if b.name not in io], align)
    plans = []
    for label, names in (("inputs first", ins + outs), ("outputs first", outs + ins)):
        placed = _first_fit([io[n] for n in names], align, tuple(below), _round_up(size, align))
        top = max((b.offset + b.size for b in placed), default=0)
        plans.append((top, f"{name}, inputs and outputs above ({label})", placed))
    return plans


def plan_memory(graph: Graph, *, align: int = 8, io_in_arena: bool = False) -> MemoryPlan:
    """Assign arena offsets with several first-fit orders and keep the smallest arena.

    ``io_in_arena``: the model's inputs and outputs are placed in the arena too
    (:func:`buffer_lifetimes`, :func:`_io_above`). When that arena is larger than the caller
    convention's plus its packed input and output buffers (model.h's alignment can put up to
    ``align - 1`` bytes between them when all are live at once), the caller convention's plan is kept
    instead, ``io_apart``: the library holds the inputs and outputs in buffers of their own, laid out
    as the caller's would be, so the option never needs more SRAM than the caller convention.
    """
    buffers, placement = buffer_lifetimes(graph, align, io_in_arena=io_in_arena)
    bound = live_lower_bound(buffers, len(graph.steps))
    best = _smallest(buffers, align)
    if io_in_arena:
        best = min([best, *_io_above(graph, buffers, align)], key=lambda p: p[0])
        if _caller_layout_allowed(graph):
            caller = plan_memory(graph, align=align)
            if best[0] > caller.arena_bytes + packed_io_bytes(graph):
                return attrs.evolve(caller, io_in_arena=True, io_apart=True)
    size, strategy, placed = best
    _check_no_overlap(placed)
    placed.sort(key=lambda b: (b.start, b.name))
    return MemoryPlan(size, bound, align, strategy, tuple(placed), placement, io_in_arena)


def _check_no_overlap(placed: list[Buffer]) -> None:
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            if a.overlaps_in_time(b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
