"""PartialExecution: run a fused chain of operators a slice of channels at a time (Pex).

The chain (GroupChains) is a producer (a convolution or dense layer, any input channels) followed by
per-channel operators (depthwise convolution, pooling, element-wise): output channel ``c`` of the chain
depends only on channel ``c`` of the producer. Computing the producer one slice of output channels at a
time, and the rest of the chain on that slice, means the chain's intermediate tensors only ever exist
one slice at a time; the chain's output is written slice by slice. No value is computed twice.
"""

from __future__ import annotations

import logging
from typing import Any

from tvm_mcu._tvm import PrimFunc, s_tir, structural_walk, tirx, tvm
from tvm_mcu.passes.relax.group_chains import ATTR_PARTIAL

logger = logging.getLogger(__name__)

_SPATIAL = 0
_REDUCE = 2
ATTR_DONE = "tvmmcu.scheduled"


def parse_spec(spec: str) -> dict[str, Any]:
    """``"channels:axis=1:slice=2"`` -> ``{"mode": "channels", "axis": 1, "slice": 2}``."""
    mode, *fields = spec.split(":")
    out: dict[str, Any] = {"mode": mode}
    for f in fields:
        key, value = f.split("=")
        out[key] = int(value)
    return out


def _is_reduction(sch: s_tir.Schedule, block: Any) -> bool:
    return any(int(iv.iter_type) == _REDUCE for iv in sch.get(block).iter_vars)


def _root_blocks(sch: s_tir.Schedule) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _inline_between_operators(sch: s_tir.Schedule) -> None:
    """Inline padding and element-wise chains, keeping one epilogue block after each reduction.

    The kept epilogue writes the operator's (narrow, e.g. int8) output; inlining it into the next
    operator would turn the wide accumulator into the intermediate tensor and repeat the epilogue for
    every tap of a window.
    """
    changed = True
    while changed:
        changed = False
        for block in _root_blocks(sch):
            if _is_reduction(sch, block):
                continue
            producers = sch.get_producers(block)
            after_reduction = any(_is_reduction(sch, p) for p in producers)
            if producers and not after_reduction:
                try:
                    sch.reverse_compute_inline(block)
                    changed = True
                    break
                except s_tir.ScheduleError:
                    pass
            if sch.get_consumers(block) and not after_reduction:
                try:
                    sch.compute_inline(block)
                    changed = True
                    break
                except s_tir.ScheduleError:
                    pass


def _write_indices(block: Any) -> list[Any]:
    out = block.writes[0].source
    stores: list[Any] = []
    structural_walk(
        block.body, (tirx.BufferStore, lambda st: stores.append(st) if st.buffer.same_as(out) else None)
    )
    return list(stores[0].indices) if stores else []


def _loop_binding(sch: s_tir.Schedule, block: Any, var: Any) -> Any | None:
    """The loop whose variable the block binds to its iter var ``var`` (None for a unit extent)."""
    blk = sch.get(block)
    realizes: list[Any] = []
    structural_walk(
        sch.mod["main"].body,
        (s_tir.SBlockRealize, lambda r: realizes.append(r) if r.block.same_as(blk) else None),
    )
    value = next(
        v for iv, v in zip(blk.iter_vars, realizes[0].iter_values, strict=True) if iv.var.same_as(var)
    )
    for loop in sch.get_loops(block):
        if sch.get(loop).loop_var.same_as(value):
            return loop
    return None


def _innermost_spatial_loop(sch: s_tir.Schedule, block: Any) -> Any | None:
    blk = sch.get(block)
    realizes: list[Any] = []
    structural_walk(
        sch.mod["main"].body,
        (s_tir.SBlockRealize, lambda r: realizes.append(r) if r.block.same_as(blk) else None),
    )
    spatial_vars: set[Any] = set()
    for iv, v in zip(blk.iter_vars, realizes[0].iter_values, strict=True):
        if int(iv.iter_type) == _SPATIAL:
            structural_walk(v, (tirx.Var, spatial_vars.add))
    found = None
    for loop in sch.get_loops(block):
        if sch.get(loop).loop_var in spatial_vars:
            found = loop
    return found


def _epilogues_under_reductions(sch: s_tir.Schedule, skip: Any | None = None) -> None:
    """Compute each reduction's epilogue inside its innermost spatial loop (accumulator: one element)."""
    for block in _all_blocks(sch):
        if not _is_reduction(sch, block):
            continue
        if skip is not None and sch.get(block).same_as(sch.get(skip)):
            continue
        for consumer in sch.get_consumers(block):
            loop = _innermost_spatial_loop(sch, block)
            if loop is None:
                continue
            try:
                sch.reverse_compute_at(consumer, loop, preserve_unit_loops=False)
            except s_tir.ScheduleError:
                continue


def _hoist_inits(sch: s_tir.Schedule) -> None:
    for block in _all_blocks(sch):
        if not _is_reduction(sch, block) or sch.get(block).init is None:
            continue
        spatial = _innermost_spatial_loop(sch, block)
        loops = list(sch.get_loops(block))
        if spatial is None:
            continue
        at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(spatial)))
        if at + 1 < len(loops):
            try:
                sch.decompose_reduction(block, loops[at + 1])
            except s_tir.ScheduleError:
                continue


def _all_blocks(sch: s_tir.Schedule) -> list[Any]:
    out = []
    stack = _root_blocks(sch)
    while stack:
        block = stack.pop(0)
        out.append(block)
        stack.extend(sch.get_child_blocks(block))
    return out


def _reduced_channel_loop(sch: s_tir.Schedule, block: Any, source: Any, axis: int) -> Any:
    """The loop of ``block``'s reduction var indexing ``source`` along ``axis`` (its input channels)."""
    blk = sch.get(block)
    loads: list[Any] = []
    structural_walk(
        blk.body, (tvm.ir.TensorLoad, lambda ld: loads.append(ld) if ld.source.same_as(source) else None)
    )
    reduce_vars = {iv.var for iv in blk.iter_vars if int(iv.iter_type) == _REDUCE}
    chosen = {ld.indices[axis] for ld in loads}
    if not loads or len(chosen) != 1 or next(iter(chosen)) not in reduce_vars:
        raise ValueError(f"{blk.name_hint} does not reduce over the channels of {source.name}")
    loop = _loop_binding(sch, block, next(iter(chosen)))
    if loop is None:
        raise ValueError(f"{blk.name_hint} reduces over a single channel: nothing to split")
    return loop


def _check_float_order(sch: s_tir.Schedule, block: Any, channel: Any) -> None:
    """Float sums must keep their order: the channel loop must already be the outermost one reducing."""
    blk = sch.get(block)
    out = blk.writes[0].source
    if "float" not in str(out.ty.dtype):
        return
    loops = list(sch.get_loops(block))
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(channel)))
    reduce_vars = {iv.var for iv in blk.iter_vars if int(iv.iter_type) == _REDUCE}
    realizes: list[Any] = []
    structural_walk(
        sch.mod["main"].body,
        (s_tir.SBlockRealize, lambda r: realizes.append(r) if r.block.same_as(blk) else None),
    )
    reduce_loop_vars: set[Any] = set()
    for iv, v in zip(blk.iter_vars, realizes[0].iter_values, strict=True):
        if iv.var in reduce_vars:
            structural_walk(v, (tirx.Var, reduce_loop_vars.add))
    for lp in loops[:at]:
        loop = sch.get(lp)
        if loop.loop_var in reduce_loop_vars and int(loop.extent) > 1:
            raise ValueError(
                f"{blk.name_hint}: accumulating float slices would reorder its sums (not bit-exact)"
            )


def split_channels(func: PrimFunc, axis: int, slice_: int, *, accumulate: bool = False) -> PrimFunc:
    """The chain in ``func`` computed ``slice_`` channels (along ``axis``) at a time.

    ``accumulate``: the chain ends with an operator reducing over those channels (a pointwise or
    any convolution, a dense layer); it accumulates each slice's contribution into its (whole)
    accumulator, and its epilogue runs once all slices are in.
    """
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    _inline_between_operators(sch)
    blocks = _root_blocks(sch)
    if accumulate:
        last = max(i for i, b in enumerate(blocks) if _is_reduction(sch, b))
        final = blocks[last]
        producers = sch.get_producers(final)
        source = sch.get(producers[-1]).writes[0].source if producers else None
        if source is None:
            raise ValueError("the accumulating operator has no producer in the chain")
        channel = _reduced_channel_loop(sch, final, source, axis)
        before = blocks[:last]
        _check_float_order(sch, final, channel)
    else:
        final = blocks[-1]
        channel = _loop_binding(sch, final, _write_indices(sch.get(final))[axis])
        before = blocks[:-1]
        if channel is None:
            raise ValueError("the chain's output has one channel: nothing to split")
    loops = list(sch.get_loops(final))
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(channel)))
    # Only the loop over slices moves out: the channels within a slice stay where the channel loop was
    # (innermost for a reduction, so each slice's partial sum stays in a register).
    outer, _ = sch.split(channel, factors=[None, slice_])
    if at:
        sch.reorder(outer, *loops[:at])
    for block in reversed(before):
        sch.compute_at(block, outer, preserve_unit_loops=False)
    if accumulate:
        # The accumulator is initialised once, before the loop over slices.
        sch.decompose_reduction(final, outer)
    _epilogues_under_reductions(sch, skip=final if accumulate else None)
    _hoist_inits(sch)
    return sch.mod["main"].with_attr(ATTR_DONE, True)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="PartialExecution")
class PartialExecution:
    """Schedule each chain PrimFunc (``tvmmcu.partial``) to run a slice of channels at a time.

    Matches
        PrimFuncs from GroupChains, in s_tir form, with ``tvmmcu.partial = "channels:axis=A:slice=S"``.
    Rewrites to
        one loop over slices of S output channels (axis A) around the whole chain; every operator of
        the chain computed at that loop (its intermediates shrink to one slice), each epilogue inside
        its reduction's innermost spatial loop, accumulators initialised before their reductions.
    Declines when
        the attribute is absent or the function is already scheduled.
    Numerics
        bit-exact: same expressions, same reduction order per output element.
    Ordering
        after GroupChains, before ScheduleForMcu (which then skips the function) and lowering.
    """

    def transform_function(
        self, func: PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
    ) -> PrimFunc:
        if func.attrs is None or ATTR_PARTIAL not in func.attrs or ATTR_DONE in func.attrs:
            return func
        spec = parse_spec(str(func.attrs[ATTR_PARTIAL]))
        if spec["mode"] != "channels":
            raise ValueError(f"unknown partial-execution mode {spec['mode']!r}")
        logger.debug("PartialExecution: %s", spec)
        return split_channels(func, spec["axis"], spec["slice"], accumulate=bool(spec.get("accumulate", 0)))
