"""ScheduleForMcu: schedule legalised operator PrimFuncs so their scratch memory is as small as possible."""

from __future__ import annotations

import logging

from tvm_mcu._tvm import PrimFunc, s_tir, tvm
from tvm_mcu.passes.tir import sblocks

logger = logging.getLogger(__name__)


def _inline_all(sch: s_tir.Schedule, *, inline_padding: bool) -> list[str]:
    """Inline every injective block into its consumer or producer; returns the names inlined."""
    inlined: list[str] = []
    progress = True
    while progress:
        progress = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            name = sch.get(block).name_hint
            if not inline_padding and name.startswith("pad"):
                continue
            for primitive in (sch.reverse_compute_inline, sch.compute_inline):
                try:
                    primitive(block)
                except s_tir.ScheduleError:
                    continue
                inlined.append(name)
                progress = True
                break
            if progress:
                break  # the block list changed; start over
    return inlined


def _epilogues_under_reduction(sch: s_tir.Schedule) -> list[str]:
    """Move each block that follows a reduction block into the reduction's innermost spatial loop.

    The reduction's accumulator then compacts from a whole tensor to one element.
    """
    moved: list[str] = []
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    for producer, consumer in zip(blocks, blocks[1:], strict=False):
        kinds = [int(iv.iter_type) for iv in sch.get(producer).iter_vars]
        if sblocks.REDUCE not in kinds:
            continue
        n_spatial = kinds.count(sblocks.SPATIAL)
        loops = sch.get_loops(producer)
        if n_spatial == 0 or n_spatial > len(loops) or sblocks.expands(sch, consumer, producer):
            continue
        try:
            sch.reverse_compute_at(consumer, loops[n_spatial - 1], preserve_unit_loops=False)
        except s_tir.ScheduleError:
            continue
        moved.append(sch.get(consumer).name_hint)
    return moved


def _hoist_reduction_inits(sch: s_tir.Schedule) -> list[str]:
    """Initialise each accumulator once, before its reduction loops, not by a test inside them."""
    done: list[str] = []
    for block in sblocks.all_blocks(sch):
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        if sblocks.REDUCE not in kinds or sch.get(block).init is None:
            continue
        loops = sch.get_loops(block)
        n_spatial = kinds.count(sblocks.SPATIAL)
        if len(loops) <= n_spatial:
            continue
        try:
            sch.decompose_reduction(block, loops[n_spatial])
        except s_tir.ScheduleError:
            continue
        done.append(sch.get(block).name_hint)
    return done


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="ScheduleForMcu")
class ScheduleForMcu:
    """Schedule a legalised operator so it needs as little scratch memory as possible.

    LegalizeOps and FuseTIR produce one block per elementwise step, each materialising a whole
    intermediate tensor; on a microcontroller that scratch would cost more SRAM than the activations.

    Matches
        PrimFuncs in s_tir form (``T.sblock``), as produced by LegalizeOps / FuseTIR.
    Rewrites to
        the same computation with every injective block inlined (padding too, when
        ``inline_padding``) and the epilogue that follows a reduction (bias, activation, residual add)
        computed inside the reduction's innermost spatial loop, so accumulators shrink to one element;
        each accumulator is initialised before its reduction loops (decompose_reduction) rather than
        by a first-iteration test inside them.
    Declines when
        a block cannot be inlined or moved (e.g. it reads a reduction result along a reduced axis, as
        softmax does); such blocks are left as they are.
    Numerics
        bit-exact: only the loop structure changes, every value is computed by the same expression.
    Ordering
        after FuseTIR (needs whole fused operators), before lowering (needs s_tir blocks).
    """

    def __init__(self, *, inline_padding: bool = True) -> None:
        self._inline_padding = inline_padding

    def transform_function(
        self, func: PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
    ) -> PrimFunc:
        if func.attrs is not None and "tvmmcu.scheduled" in func.attrs:
            return func
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        try:
            sch.get_sblock("root")
        except s_tir.ScheduleError:
            return func  # already lowered: nothing to schedule
        inlined = _inline_all(sch, inline_padding=self._inline_padding)
        moved = _epilogues_under_reduction(sch)
        inits = _hoist_reduction_inits(sch)
        logger.debug("ScheduleForMcu: inlined %s, moved %s, hoisted inits of %s", inlined, moved, inits)
        return sch.mod["main"].with_attr("tvmmcu.scheduled", True)
