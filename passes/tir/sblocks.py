"""Finding blocks and the loops that drive them in an s_tir Schedule (shared by the TIR passes)."""

from __future__ import annotations

import math
from typing import Any

from tvm_mcu._tvm import s_tir, structural_walk
from tvm_mcu.analysis.tir_access import free_vars, stores_to

# Iteration kinds of s_tir block iter vars (IterVar.iter_type).
SPATIAL = 0
REDUCE = 2


def root_blocks(sch: s_tir.Schedule) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def all_blocks(sch: s_tir.Schedule) -> list[Any]:
    """Every block below the root, breadth first."""
    out = []
    stack = root_blocks(sch)
    while stack:
        block = stack.pop(0)
        out.append(block)
        stack.extend(sch.get_child_blocks(block))
    return out


def is_reduction(sch: s_tir.Schedule, block: Any) -> bool:
    return any(int(iv.iter_type) == REDUCE for iv in sch.get(block).iter_vars)


def expands(sch: s_tir.Schedule, block: Any, producer: Any) -> bool:
    """Whether ``block`` writes more elements than ``producer`` does (padding, concat, broadcast).

    Such a block has outputs that read nothing from ``producer`` (a padding's border): moving it under
    the producer's loops (reverse_compute_at) would compute only the part the producer covers and
    leave the rest unwritten, so it must not be treated as the producer's epilogue.
    """

    def elements(b: Any) -> int:
        return math.prod(int(d) for d in sch.get(b).writes[0].source.shape)

    return elements(block) > elements(producer)


def writer_of(sch: s_tir.Schedule, var: Any) -> Any:
    """The one block storing into buffer ``var``."""
    found = [b for b in all_blocks(sch) if stores_to(sch.get(b).body, var)]
    if len(found) != 1:
        raise ValueError(f"expected one block writing {var.name}, found {len(found)}")
    return found[0]


def written_indices(sch: s_tir.Schedule, block: Any) -> list[Any]:
    """The indices at which ``block`` stores into the (first) buffer it writes."""
    blk = sch.get(block)
    stores = stores_to(blk.body, blk.writes[0].source)
    return list(stores[0].indices) if stores else []


def bindings(sch: s_tir.Schedule, block: Any) -> list[tuple[Any, Any]]:
    """(iter var, the loop expression bound to it) for each iter var of ``block``."""
    blk = sch.get(block)
    realizes: list[Any] = []
    structural_walk(
        sch.mod["main"].body,
        (s_tir.SBlockRealize, lambda r: realizes.append(r) if r.block.same_as(blk) else None),
    )
    return list(zip(blk.iter_vars, realizes[0].iter_values, strict=True))


def loop_binding(sch: s_tir.Schedule, block: Any, var: Any) -> Any | None:
    """The loop whose variable ``block`` binds to its iter var ``var`` (None for an extent of 1)."""
    value = next(v for iv, v in bindings(sch, block) if iv.var.same_as(var))
    for loop in sch.get_loops(block):
        if sch.get(loop).loop_var.same_as(value):
            return loop
    return None


def loop_vars_of_kind(sch: s_tir.Schedule, block: Any, kind: int) -> set[Any]:
    """The loop variables bound to ``block``'s iter vars of ``kind`` (SPATIAL or REDUCE)."""
    out: set[Any] = set()
    for iv, value in bindings(sch, block):
        if int(iv.iter_type) == kind:
            out |= free_vars(value)
    return out


def innermost_spatial_loop(sch: s_tir.Schedule, block: Any) -> Any | None:
    spatial = loop_vars_of_kind(sch, block, SPATIAL)
    found = None
    for loop in sch.get_loops(block):
        if sch.get(loop).loop_var in spatial:
            found = loop
    return found


def position(sch: s_tir.Schedule, loops: list[Any], loop: Any) -> int:
    """Index of ``loop`` in ``loops`` (LoopRVs compare by identity of the loop they name)."""
    return next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
