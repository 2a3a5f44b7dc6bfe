"""ExecuteInPlace: schedule an operator so its output may share memory with one of its inputs."""

from __future__ import annotations

import logging
from typing import Any

from tvm_mcu._tvm import PrimFunc, s_tir, tvm
from tvm_mcu.passes.tir import sblocks

logger = logging.getLogger(__name__)

# Set by the scheduler on the PrimFunc of an operator chosen to run in place: the kind
# (tvm_mcu.analysis.inplace: "elementwise", "depthwise" or "pointwise") and the channel axis.
ATTR_KIND = "tvmmcu.in_place"
ATTR_AXIS = "tvmmcu.in_place_axis"
ATTR_DONE = "tvmmcu.in_place_done"


def _loop_of(sch: s_tir.Schedule, block: Any, index: int) -> Any | None:
    """The loop that drives the ``index``-th dimension the block writes (None for an extent of 1)."""
    return sblocks.loop_binding(sch, block, sblocks.written_indices(sch, block)[index])


def make_in_place(func: PrimFunc, kind: str, axis: int = 3) -> PrimFunc:
    """``func`` rescheduled so that its output may alias the input the analysis found (see module doc)."""
    if kind == "elementwise":
        return func  # each element is read before its own slot is written, in every schedule
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    writer = sblocks.writer_of(sch, func.params[-1])
    channel = _loop_of(sch, writer, axis)
    if channel is None:
        raise ValueError(f"the output's axis {axis} has one element: no channel loop to restage")
    loops = list(sch.get_loops(writer))
    outer = loops[: sblocks.position(sch, loops, channel)]
    if kind == "pointwise":
        # The pixel loops (every loop around the channel loop, and those of the spatial axes after it).
        pixel = [_loop_of(sch, writer, i) for i in range(1, 4) if i != axis]
        pixel = [lp for lp in pixel if lp is not None]
        if not pixel:
            raise ValueError("a pointwise operator with one output pixel gains nothing in place")
        if axis != 3:
            sch.reorder(*pixel, channel)
        copy = sch.cache_write(writer, 0, "global")
        sch.reverse_compute_at(copy, pixel[-1], preserve_unit_loops=False)
    elif kind == "depthwise":
        copy = sch.cache_write(writer, 0, "global")
        if outer:
            sch.reorder(channel, *outer)
        sch.reverse_compute_at(copy, channel, preserve_unit_loops=False)
    else:
        raise ValueError(f"unknown in-place kind {kind!r}")
    return sch.mod["main"]


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="ExecuteInPlace")
class ExecuteInPlace:
    """Reschedule operators marked ``tvmmcu.in_place`` so their output may overwrite an input.

    Matches
        scheduled s_tir PrimFuncs (after ScheduleForMcu) carrying ``tvmmcu.in_place``.
    Rewrites to
        depthwise: the channel loop outermost, each output channel plane computed into a scratch plane
        and then copied over the output; pointwise: each output pixel computed into a scratch pixel,
        then copied. The scratch becomes workspace (HoistScratchToWorkspace).
    Declines when
        the attribute is absent, or the kind is ``elementwise`` (already safe as scheduled).
    Numerics
        bit-exact: every value is computed by the same expression; only where it is staged changes.
    Ordering
        after ScheduleForMcu (needs its loop nest), before lowering (needs s_tir blocks).
    """

    def transform_function(
        self, func: PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
    ) -> PrimFunc:
        if func.attrs is None or ATTR_KIND not in func.attrs or ATTR_DONE in func.attrs:
            return func
        try:
            sch = s_tir.Schedule(tvm.IRModule({"main": func}))
            sch.get_sblock("root")
        except s_tir.ScheduleError:
            return func
        kind = str(func.attrs[ATTR_KIND])
        axis = int(func.attrs[ATTR_AXIS]) if ATTR_AXIS in func.attrs else 3
        logger.debug("ExecuteInPlace: %s along axis %d", kind, axis)
        return make_in_place(func, kind, axis).with_attr(ATTR_DONE, True)
