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

from tvm_mcu._tvm import PrimFunc, s_tir, tvm
from tvm_mcu.analysis.tir_access import loads_of
from tvm_mcu.passes.relax.group_chains import ATTR_PARTIAL
from tvm_mcu.passes.tir import sblocks

logger = logging.getLogger(__name__)

ATTR_DONE = "tvmmcu.scheduled"


def parse_spec(spec: str) -> dict[str, Any]:
    """``"channels:axis=1:slice=2"`` -> ``{"mode": "channels", "axis": 1, "slice": 2}``."""
    mode, *fields = spec.split(":")
    out: dict[str, Any] = {"mode": mode}
    for f in fields:
        key, value = f.split("=")
        out[key] = int(value)
    return out


def _inline_between_operators(sch: s_tir.Schedule) -> None:
    """Inline padding and element-wise chains, keeping one epilogue block after each reduction.

    The kept epilogue writes the operator's (narrow, e.g. int8) output; inlining it into the next
    operator would turn the wide accumulator into the intermediate tensor and repeat the epilogue for
    every tap of a window.
    """
    changed = True
    while changed:
        changed = False
        for block in sblocks.root_blocks(sch):
            if sblocks.is_reduction(sch, block):
                continue
            producers = sch.get_producers(block)
            # A padding after a pooling reduction is not its epilogue: it is inlined into its consumer.
            after_reduction = any(
                sblocks.is_reduction(sch, p) and not sblocks.expands(sch, block, p) for p in producers
            )
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


def _epilogues_under_reductions(sch: s_tir.Schedule, skip: Any | None = None) -> None:
    """Compute each reduction's epilogue inside its innermost spatial loop (accumulator: one element)."""
    for block in sblocks.all_blocks(sch):
        if not sblocks.is_reduction(sch, block):
            continue
        if skip is not None and sch.get(block).same_as(sch.get(skip)):
            continue
        for consumer in sch.get_consumers(block):
            if sblocks.is_reduction(sch, consumer) or sblocks.expands(sch, consumer, block):
                continue  # another operator, or a padding (its border reads nothing from ``block``)
            loop = sblocks.innermost_spatial_loop(sch, block)
            if loop is None:
                continue
            try:
                sch.reverse_compute_at(consumer, loop, preserve_unit_loops=False)
            except s_tir.ScheduleError:
                continue


def _hoist_inits(sch: s_tir.Schedule) -> None:
    for block in sblocks.all_blocks(sch):
        if not sblocks.is_reduction(sch, block) or sch.get(block).init is None:
            continue
        spatial = sblocks.innermost_spatial_loop(sch, block)
        loops = list(sch.get_loops(block))
        if spatial is None:
            continue
        at = sblocks.position(sch, loops, spatial)
        if at + 1 < len(loops):
            try:
                sch.decompose_reduction(block, loops[at + 1])
            except s_tir.ScheduleError:
                continue


def _reduced_channel_loop(sch: s_tir.Schedule, block: Any, source: Any, axis: int) -> Any:
    """The loop of ``block``'s reduction var indexing ``source`` along ``axis`` (its input channels)."""
    blk = sch.get(block)
    loads = loads_of(blk.body, source)
    reduce_vars = {iv.var for iv in blk.iter_vars if int(iv.iter_type) == sblocks.REDUCE}
    if any(len(ld.indices) <= axis for ld in loads):
        # It reads the source through another shape (a grouped convolution's reshaped view, say).
        raise ValueError(f"{blk.name_hint} reads {source.name} with fewer than {axis + 1} indices")
    chosen = {ld.indices[axis] for ld in loads}
    if not loads or len(chosen) != 1 or next(iter(chosen)) not in reduce_vars:
        raise ValueError(f"{blk.name_hint} does not reduce over the channels of {source.name}")
    loop = sblocks.loop_binding(sch, block, next(iter(chosen)))
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
    reduce_loop_vars = sblocks.loop_vars_of_kind(sch, block, sblocks.REDUCE)
    for lp in loops[: sblocks.position(sch, loops, channel)]:
        loop = sch.get(lp)
        if loop.loop_var in reduce_loop_vars and int(loop.extent) > 1:
            raise ValueError(
                f"{blk.name_hint}: accumulating float slices would reorder its sums (not bit-exact)"
            )


def split_channels(func: PrimFunc, axis: int, slice_: int, *, accumulate: bool = False) -> PrimFunc:
    """The chain in ``func`` computed ``slice_`` channels (along ``axis``) at a time.

    ``accumulate``: the chain ends with an operator reducing over those channels (a pointwise or
    any convolution, a dense layer); it accumulates each slice's contribution into its (whole)
    accumulator, and its epilogue runs once all slices are in. ValueError when the chain does not have
    that shape (TVM's schedule refuses a move: e.g. an operator's result is also read outside it).
    """
    try:
        return _split_channels(func, axis, slice_, accumulate=accumulate)
    except s_tir.ScheduleError as exc:
        first = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ValueError(f"cannot run this chain by channel slices: {first[-1] if first else exc}") from exc


def _split_channels(func: PrimFunc, axis: int, slice_: int, *, accumulate: bool) -> PrimFunc:
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    _inline_between_operators(sch)
    blocks = sblocks.root_blocks(sch)
    if accumulate:
        last = max(i for i, b in enumerate(blocks) if sblocks.is_reduction(sch, b))
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
        channel = sblocks.loop_binding(sch, final, sblocks.written_indices(sch, final)[axis])
        before = blocks[:-1]
        if channel is None:
            raise ValueError("the chain's output has one channel: nothing to split")
    loops = list(sch.get_loops(final))
    at = sblocks.position(sch, loops, channel)
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
        logger.debug("PartialExecution: %s", spec)
        if spec["mode"] == "rows":
            from tvm_mcu.passes.tir.row_bands import split_rows

            return split_rows(func, spec["axis"])
        if spec["mode"] != "channels":
            raise ValueError(f"unknown partial-execution mode {spec['mode']!r}")
        return split_channels(func, spec["axis"], spec["slice"], accumulate=bool(spec.get("accumulate", 0)))
