"""Multiply-accumulate counts of fused operators, read from their TIR reduction blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu import _tvm
from tvm_mcu.schedule.graph import Graph

_REDUCE = 2


def _has_multiply(stmt: Any) -> bool:
    found: list[bool] = []
    _tvm.structural_walk(stmt, (_tvm.tirx.Mul, lambda _m: found.append(True)))
    return bool(found)


def mac_blocks(func: _tvm.PrimFunc) -> list[tuple[int, ...]]:
    """The iteration extents of each reduction block that multiplies, in walk order."""
    blocks: list[tuple[int, ...]] = []

    def on_block(block: Any) -> None:
        kinds = [int(iv.iter_type) for iv in block.iter_vars]
        if _REDUCE in kinds and _has_multiply(block.body):
            blocks.append(tuple(int(iv.dom.extent) for iv in block.iter_vars))

    _tvm.structural_walk(func.body, (_tvm.s_tir.SBlock, on_block))
    return blocks


def primfunc_macs(func: _tvm.PrimFunc) -> int:
    """Sum over reduction blocks that multiply of the product of their iteration extents."""
    return sum(int(np.prod(b, dtype=np.int64)) for b in mac_blocks(func))


def step_macs(fused: _tvm.IRModule, graph: Graph) -> dict[str, int]:
    """MACs of each step of ``graph``, keyed by step name, from the fused (unlowered) PrimFuncs."""
    funcs = {gv.name_hint: f for gv, f in fused.functions_items() if isinstance(f, _tvm.PrimFunc)}
    cache: dict[str, int] = {}
    out = {}
    for step in graph.steps:
        if step.callee not in cache:
            cache[step.callee] = primfunc_macs(funcs[step.callee]) if step.callee in funcs else 0
        out[step.name] = cache[step.callee]
    return out
