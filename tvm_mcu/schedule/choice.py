"""Choosing among candidate schedules: the SRAM each needs, its bottleneck, and the budget rule.

A candidate is one complete schedule of the model (operator order, in-place decisions, and later the
partial-execution splits) with its memory plan. SRAM here is what the schedule needs statically: the
arena plus the caller's input and output buffers, or the arena alone when it holds them
(``--io-in-arena``); the stack comes on top and is measured on the board.

Rule: with a budget, the candidate that fits with the fewest extra instructions; without one, the
candidate with the smallest SRAM among those within ``MAX_OVERHEAD`` extra instructions.
"""

from __future__ import annotations

import logging
import math

import attrs

from tvm_mcu.codegen import model_c
from tvm_mcu.errors import BudgetError
from tvm_mcu.schedule.graph import Graph
from tvm_mcu.schedule.memory import MemoryPlan, live_profile

logger = logging.getLogger(__name__)

# Extra instructions (fraction of the plain schedule's estimate, schedule/cost.py) accepted without a
# budget. With the SIMD kernels a MAC costs about 2 instructions, so fixed per-element work (an in-place
# kernel's staging, a line buffer's shifts) weighs about 4x more against it than it did at 9: running
# KWS's depthwise-separable blocks in place is estimated at 4.8 % (it halves the SRAM: 16,502 ->
# 8,630 B) and measures faster, since its depthwise loops split their borders better.
MAX_OVERHEAD = 0.05


@attrs.frozen
class Candidate:
    """One complete schedule: ``label`` for the report, its graph and memory plan."""

    label: str
    graph: Graph
    plan: MemoryPlan
    extra_instructions: float  # estimated, relative to the plain layer-by-layer schedule

    @property
    def io_bytes(self) -> int:
        return 0 if self.plan.holds_io else io_bytes(self.graph)

    @property
    def sram_bytes(self) -> int:
        return self.plan.arena_bytes + self.io_bytes


@attrs.frozen
class Bottleneck:
    """The step at which the most bytes are live, and those buffers (largest first)."""

    step: int
    step_name: str
    kind: str
    live_bytes: int
    buffers: tuple[tuple[str, int], ...]


def io_bytes(graph: Graph) -> int:
    """The caller's packed input and output buffers."""
    ins, outs = model_c.io_slots(graph, graph.inputs), model_c.io_slots(graph, graph.outputs)
    return model_c.packed_bytes(ins) + model_c.packed_bytes(outs)


def profile(graph: Graph, plan: MemoryPlan) -> list[int]:
    """Bytes live at each step: arena buffers of the plan plus the caller's input and output buffers
    (none when the plan holds them)."""
    io = 0 if plan.holds_io else io_bytes(graph)
    return [n + io for n in live_profile(plan.buffers, len(graph.steps))]


def bottleneck(graph: Graph, plan: MemoryPlan) -> Bottleneck:
    live = profile(graph, plan)
    i = max(range(len(live)), key=lambda k: (live[k], -k))
    at = [(b.name, b.size) for b in plan.buffers if b.start <= i <= b.end]
    if not plan.holds_io:
        at += [(n, graph.tensors[n].nbytes) for n in (*graph.inputs, *graph.outputs)]
    at.sort(key=lambda x: (-x[1], x[0]))
    step = graph.steps[i]
    return Bottleneck(i, step.name, step.kind, live[i], tuple(at))


# A 32-bit address space: no budget or board is larger.
MAX_BYTES = 1 << 32


def parse_bytes(text: str) -> int:
    """``"32KiB"``, ``"32k"``, ``"32768"``, ``"1MiB"`` -> bytes (KiB/k = 1024, KB = 1000)."""
    units = {"kib": 1024, "k": 1024, "kb": 1000, "mib": 1 << 20, "m": 1 << 20, "mb": 1_000_000, "b": 1, "": 1}
    s = text.strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    if unit not in units or not num:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 32KiB, 32768 or 1MiB")
    try:
        value = float(num) * units[unit]
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 32KiB, 32768 or 1MiB") from None
    if not math.isfinite(value) or value > MAX_BYTES:
        raise ValueError(f"{text!r} is more than a 32-bit microcontroller can address (4 GiB)")
    if value <= 0 or value != int(value):
        raise ValueError(f"{text!r} is not a positive whole number of bytes")
    return int(value)


def fits(candidates: list[Candidate], budget: int) -> Candidate | None:
    """The fastest candidate (fewest extra instructions, then least SRAM) within ``budget``, if any."""
    ranked = sorted(candidates, key=lambda c: (c.extra_instructions, c.sram_bytes))
    return next((c for c in ranked if c.sram_bytes <= budget), None)


def _parts(c: Candidate) -> str:
    if c.plan.holds_io:
        return f"arena {c.plan.arena_bytes} B, inputs and outputs in it"
    return f"arena {c.plan.arena_bytes} B + inputs/outputs {c.io_bytes} B"


def choose(candidates: list[Candidate], *, budget: int | None, model_name: str) -> Candidate:
    """Apply the module's rule; raise BudgetError naming the bottleneck when nothing fits."""
    ranked = sorted(candidates, key=lambda c: (c.extra_instructions, c.sram_bytes))
    for c in ranked:
        logger.info(
            "candidate %s: %d B, estimated %+.2f%% instructions",
            c.label,
            c.sram_bytes,
            100 * c.extra_instructions,
        )
    if budget is not None:
        fit = fits(candidates, budget)
        if fit is not None:
            return fit
        best = min(candidates, key=lambda c: (c.sram_bytes, c.extra_instructions))
        b = bottleneck(best.graph, best.plan)
        live = ", ".join(f"'{n}' {size} B" for n, size in b.buffers[:4])
        raise BudgetError(
            f"{model_name} cannot meet the SRAM budget of {budget} B: the smallest schedule found "
            f"({best.label}) needs {best.sram_bytes} B ({_parts(best)}), {best.sram_bytes - budget} B over. "
            f"The bottleneck is step {b.step} "
            f"'{b.step_name}' ({b.kind}), where {b.live_bytes} B are live: {live}"
        )
    within = [c for c in ranked if c.extra_instructions <= MAX_OVERHEAD]
    return min(within or ranked[:1], key=lambda c: (c.sram_bytes, c.extra_instructions))
