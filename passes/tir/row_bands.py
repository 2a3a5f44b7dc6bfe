"""Row bands: run a chain of convolutions a band of output rows at a time with rolling line buffers.

Channel splitting (PartialExecution) cannot shrink a chain whose every operator mixes all channels,
as the high-resolution early convolutions of a CNN do. Their intermediate tensors can instead be kept
as *line buffers*: the few rows the next operator's window needs. For each output row of the chain,
each operator computes only the rows of its output that no earlier row computed, into the bottom of
its line buffer; after the row, every line buffer shifts up by its consumer's stride. No row is
computed twice; the extra work is the shift (a contiguous copy of ``K - stride`` rows).

Three steps, because TVM's own ``rolling_buffer`` refuses padded windows (their regions are clamped at
the image border) and its s_tir lowering would move a buffer that lives across iterations into the loop:

``split_rows`` (s_tir schedule)
    moves every operator under the row loop of its consumer (``compute_at``), so each intermediate is
    computed a window of ``K`` rows per consumer row (still with recomputation), and annotates the row
    loops: ``tvmmcu.band = k`` on the consumer's row loop, ``tvmmcu.ring = "k:axis"`` on the producer's.
``RollRowBuffers`` (inside the lowering, after ConvertBlocksToOpaque)
    turns each annotated window into a line buffer of ``K`` rows indexed relative to the window, kept
    for the whole function, shifted after each consumer row.
``SkipComputedRows`` (after CompactBufferAllocation)
    makes each window loop compute only the rows not computed before (a row counter).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from tvm_mcu._tvm import Analyzer, PrimFunc, s_tir, structural_map, structural_walk, tirx, tvm
from tvm_mcu.analysis.tir_access import free_vars, stores_to
from tvm_mcu.passes.tir import sblocks

logger = logging.getLogger(__name__)

ATTR_BAND = "tvmmcu.band"
ATTR_RING = "tvmmcu.ring"
ATTR_NEW_ROWS = "tvmmcu.new_rows"


def _row_loop(sch: s_tir.Schedule, head: Any, outer: Any, axis: int) -> Any:
    """The loop below ``outer`` that drives the rows ``head`` writes."""
    row_var = sblocks.written_indices(sch, head)[axis]
    value = next(v for iv, v in sblocks.bindings(sch, head) if iv.var.same_as(row_var))
    used = free_vars(value)
    loops = list(sch.get_loops(head))
    at = sblocks.position(sch, loops, outer)
    found = [lp for lp in loops[at + 1 :] if sch.get(lp).loop_var in used]
    if not found:
        raise ValueError(f"{sch.get(head).name_hint}: no loop over its rows below the band loop")
    return found[0]


def split_rows(func: PrimFunc, axis: int) -> PrimFunc:
    """The chain in ``func`` scheduled one output row (along ``axis``) at a time, windows annotated.

    Every operator is a reduction with its epilogue (a convolution, pooling) or a single block; each
    moves under its consumer's row loop, so the result still recomputes overlapping windows until
    RollRowBuffers turns the windows into line buffers. ValueError when the chain does not have
    that shape.
    """
    try:
        return _split_rows(func, axis)
    except s_tir.ScheduleError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"cannot run this chain a row at a time: {first[-1] if first else exc}") from exc


def _split_rows(func: PrimFunc, axis: int) -> PrimFunc:
    from tvm_mcu.passes.tir.partial_execution import (
        ATTR_DONE,
        _epilogues_under_reductions,
        _hoist_inits,
        _inline_between_operators,
    )

    # int32 indices from the start: the row counters RollRowBuffers adds would otherwise keep
    # NarrowDataType from narrowing the (importer's int64) loops, doubling index arithmetic on a
    # 32-bit core.
    mod = tvm.IRModule({"main": func})
    try:
        mod = tirx.transform.ForceNarrowIndexToInt32()(mod)
    except tvm.error.InternalError as exc:
        # The kernel computes in int64 (an ONNX-rounding average pool's exact division), which the
        # forced narrowing refuses; without int32 indices the row counters would double the index
        # arithmetic, so the chain is left to the other schedules.
        raise ValueError("the chain computes in int64; its indices cannot all be narrowed to int32") from exc
    sch = s_tir.Schedule(mod)
    _inline_between_operators(sch)
    blocks = sblocks.root_blocks(sch)
    final = blocks[-1]
    last = len(blocks) - 2
    if len(blocks) >= 2 and sblocks.is_reduction(sch, blocks[-2]) and not sblocks.is_reduction(sch, final):
        # The last operator's epilogue: the band loop is its reduction's (the epilogue joins it below).
        final, last = blocks[-2], len(blocks) - 3
    band = sblocks.loop_binding(sch, final, sblocks.written_indices(sch, final)[axis])
    if band is None or int(sch.get(band).extent) <= 1:
        raise ValueError("the chain's output has one row: nothing to split")
    loops = list(sch.get_loops(final))
    at = sblocks.position(sch, loops, band)
    # Rows outermost (NCHW has the channels first); only unit loops may stay outside.
    outside = [lp for lp in loops[:at] if int(sch.get(lp).extent) > 1]
    if outside:
        sch.reorder(band, *outside)
    ring = 0
    i = last
    while i >= 0:
        block = blocks[i]
        sch.compute_at(block, band, preserve_unit_loops=True)
        head = block
        if (
            i >= 1
            and sblocks.is_reduction(sch, blocks[i - 1])
            and not sblocks.is_reduction(sch, block)
            and not sblocks.expands(sch, block, blocks[i - 1])
        ):
            head = blocks[i - 1]
            sch.compute_at(head, band, preserve_unit_loops=True)
            inner = sblocks.innermost_spatial_loop(sch, head)
            sch.reverse_compute_at(block, inner, preserve_unit_loops=True)
            i -= 1
        i -= 1
        rows = _row_loop(sch, head, band, axis)
        # The window's rows outermost under the band (NCHW puts the channels first): a row is then
        # computed whole, all channels, in one iteration, which the row counter relies on.
        loops = list(sch.get_loops(head))
        between = loops[sblocks.position(sch, loops, band) + 1 : sblocks.position(sch, loops, rows)]
        between = [lp for lp in between if int(sch.get(lp).extent) > 1]
        if between:
            sch.reorder(rows, *between)
        sch.annotate(band, ATTR_BAND, ring)
        sch.annotate(rows, ATTR_RING, f"{ring}:{axis}")
        ring += 1
        band = rows
    _epilogues_under_reductions(sch)
    _hoist_inits(sch)
    return sch.mod["main"].with_attr(ATTR_DONE, True)


# --- RollRowBuffers ------------------------------------------------------------------------------


def _annotated_loops(body: Any) -> tuple[dict[int, Any], dict[int, tuple[Any, int]]]:
    bands: dict[int, Any] = {}
    rings: dict[int, tuple[Any, int]] = {}

    def on_for(loop: Any) -> None:
        ann = loop.annotations
        if ATTR_BAND in ann:
            bands[int(ann[ATTR_BAND])] = loop
        if ATTR_RING in ann:
            k, axis = (int(v) for v in str(ann[ATTR_RING]).split(":"))
            rings[k] = (loop, axis)

    structural_walk(body, (tirx.For, on_for))
    return bands, rings


def _inner_loops_at_zero(stmt: Any) -> dict[Any, Any]:
    """Every loop variable in ``stmt`` mapped to zero (of its type)."""
    found: dict[Any, Any] = {}

    def on_for(loop: Any) -> None:
        found[loop.loop_var] = tirx.const(0, str(loop.loop_var.ty.dtype))

    structural_walk(stmt, (tirx.For, on_for))
    return found


class _Ring:
    """One line buffer: which buffer, its window (``base`` + [0, K) rows) and its consumer's stride."""

    def __init__(self, k: int, bands_outward: list[Any], loop: Any, axis: int) -> None:
        band = bands_outward[0]
        self.k, self.band, self.loop, self.axis = k, band, loop, axis
        written = {st.buffer for st in _stores(loop.body)}
        # Loads counted in one walk each: walking the band again for every load it holds was
        # quadratic in the band's size, for each of a chain's rings.
        inside = Counter(ld.source for ld in _loads(loop.body))
        everywhere = Counter(ld.source for ld in _loads(band.body))
        read_outside = {b for b in written if everywhere[b] > inside[b]}
        if len(read_outside) != 1:
            raise ValueError(f"row band {k}: expected one buffer produced for the next operator")
        self.buffer = next(iter(read_outside))
        ana = Analyzer()
        inner = _inner_loops_at_zero(loop.body)
        row = stores_to(loop.body, self.buffer)[0].indices[axis]
        at_zero = _subst(row, {**inner, loop.loop_var: tirx.const(0, str(loop.loop_var.ty.dtype))})
        self.base = ana.simplify(at_zero)
        step = ana.simplify(_subst(row, {**inner}) - self.base - loop.loop_var)
        if int(loop.extent) > 1 and not _is_const(step, 0):
            raise ValueError(f"row band {k}: rows of {self.buffer.name} are not one per iteration")
        # The window advances by ``stride`` rows per iteration of the band loop; a band loop of one
        # iteration (its own window is one row) runs once per iteration of the band around it.
        stride = None
        for outer in bands_outward:
            var = outer.loop_var
            d = ana.simplify(_subst(self.base, {var: var + tirx.const(1, str(var.ty.dtype))}) - self.base)
            if isinstance(d, tirx.IntImm) and int(d) > 0:
                stride = d
                break
            if not (_is_const(d, 0) and int(outer.extent) == 1):
                break
        if stride is None:
            raise ValueError(f"row band {k}: the window of {self.buffer.name} does not advance with its band")
        self.stride = int(stride)
        self.rows = int(loop.extent)
        self.height = int(self.buffer.shape[axis])
        shape = list(self.buffer.shape)
        shape[axis] = self.rows
        self.line = tirx.decl_buffer(shape, self.buffer.dtype, name=f"{self.buffer.name}_lines")
        # Index arithmetic in the loops' own type (TVM's importers use int64).
        self.dtype = str(loop.loop_var.ty.dtype)

    def const(self, value: int) -> Any:
        return tirx.const(value, self.dtype)


def _subst(expr: Any, mapping: dict[Any, Any]) -> Any:
    return structural_map(expr, [(tirx.Var, lambda v: mapping.get(v, v))])


def _is_const(expr: Any, value: int) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr) == value


def _stores(stmt: Any) -> list[Any]:
    found: list[Any] = []
    structural_walk(stmt, (tirx.BufferStore, found.append))
    return found


def _loads(stmt: Any) -> list[Any]:
    found: list[Any] = []
    structural_walk(stmt, (tvm.ir.TensorLoad, found.append))
    return found


def _shift(ring: _Ring) -> Any:
    """``line[.., i, ..] = line[.., i + stride, ..]`` for the rows kept: a contiguous copy upwards."""
    keep = ring.rows - ring.stride
    dims = [tirx.Var(f"{ring.line.name}_i{d}", ring.dtype) for d in range(len(ring.line.shape))]
    src = list(dims)
    src[ring.axis] = dims[ring.axis] + ring.const(ring.stride)
    stmt: Any = tirx.BufferStore(ring.line, tirx.BufferLoad(ring.line, src), dims)
    for d in reversed(range(len(dims))):
        extent = keep if d == ring.axis else int(ring.line.shape[d])
        stmt = tirx.For(dims[d], ring.const(0), ring.const(extent), tirx.ForKind.SERIAL, stmt)
    return stmt


def _roll(func: PrimFunc) -> PrimFunc:
    bands, annotated = _annotated_loops(func.body)
    if not annotated:
        return func
    rings = {
        k: _Ring(k, [bands[j] for j in range(k, -1, -1)], loop, axis) for k, (loop, axis) in annotated.items()
    }
    by_buffer = {r.buffer: r for r in rings.values()}
    ana = Analyzer()

    def relative(ring: _Ring, indices: Any) -> list[Any]:
        out = list(indices)
        out[ring.axis] = ana.simplify(out[ring.axis] - ring.base)
        return out

    def on_load(ld: Any) -> Any:
        ring = by_buffer.get(ld.source)
        return ld if ring is None else tirx.BufferLoad(ring.line, relative(ring, ld.indices))

    def on_store(st: Any) -> Any:
        ring = by_buffer.get(st.buffer)
        if ring is None:
            return st
        return tirx.BufferStore(ring.line, st.value, relative(ring, st.indices))

    def on_region(region: Any) -> Any:
        ring = by_buffer.get(region.source)
        if ring is None:
            return region
        ranges = list(region.region)
        r = ranges[ring.axis]
        ranges[ring.axis] = tvm.ir.Range.from_min_extent(ana.simplify(r.min - ring.base), r.extent)
        return tvm.ir.TensorRegion(ring.line, ranges, region.ty)

    def on_block(block: Any) -> Any:
        kept = [b for b in block.alloc_buffers if b not in by_buffer]
        if len(kept) == len(block.alloc_buffers):
            return block
        return _with(block, alloc_buffers=kept)

    ring_vars = {r.loop.loop_var: r for r in rings.values()}
    band_vars = {r.band.loop_var: r for r in rings.values()}

    def on_for(loop: Any) -> Any:
        out: Any = loop
        band = band_vars.get(loop.loop_var)
        if band is not None and band.rows > band.stride:
            out = _with_for(out, body=tirx.SeqStmt([out.body, _shift(band)]))
        ring = ring_vars.get(loop.loop_var)
        if ring is not None:
            # SkipComputedRows (after CompactBufferAllocation, which is slow on symbolic loop
            # bounds) makes the loop compute only the rows not computed before.
            window = tvm.runtime.convert([ring.base, ring.const(ring.rows), ring.const(ring.height)])
            out = _with_for(out, annotations={ATTR_NEW_ROWS: window})
        return out

    body = structural_map(
        func.body,
        [
            (tvm.ir.TensorLoad, on_load),
            (tirx.BufferStore, on_store),
            (tvm.ir.TensorRegion, on_region),
            (s_tir.SBlock, on_block),
            (tirx.For, on_for),
        ],
    )
    root = body.block
    # Plain allocations, not the root block's: CompactBufferAllocation must not shrink them to one
    # iteration's window (they hold rows across iterations).
    allocs = [tirx.AllocBuffer(r.line) for r in rings.values()]
    root = _with(root, body=tirx.SeqStmt([*allocs, root.body]))
    body = s_tir.SBlockRealize(body.iter_values, body.predicate, root)
    for r in rings.values():
        logger.debug("RollRowBuffers: %s -> %d rows, stride %d", r.buffer.name, r.rows, r.stride)
    return PrimFunc(func.params, body, func.ret_type, func.attrs)


def _with(block: Any, **changes: Any) -> Any:
    fields = {
        "iter_vars": block.iter_vars,
        "reads": block.reads,
        "writes": block.writes,
        "name_hint": block.name_hint,
        "body": block.body,
        "init": block.init,
        "alloc_buffers": block.alloc_buffers,
        "match_buffers": block.match_buffers,
        "annotations": block.annotations,
    }
    fields.update(changes)
    return s_tir.SBlock(**fields)


def _with_for(loop: Any, **changes: Any) -> Any:
    fields = {
        "loop_var": loop.loop_var,
        "min": loop.min,
        "extent": loop.extent,
        "kind": loop.kind,
        "body": loop.body,
        "thread_binding": loop.thread_binding,
        "annotations": {
            k: v for k, v in loop.annotations.items() if k not in (ATTR_BAND, ATTR_RING, ATTR_NEW_ROWS)
        },
    }
    fields.update(changes)
    return tirx.For(**fields)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="RollRowBuffers")
class RollRowBuffers:
    """Turn the row windows annotated by ``split_rows`` into rolling line buffers.

    Matches
        PrimFuncs with loops annotated ``tvmmcu.band`` / ``tvmmcu.ring`` (from PartialExecution's row
        mode), after ConvertBlocksToOpaque (blocks no longer bind iter vars; loops and regions name
        the rows directly).
    Rewrites to
        each annotated intermediate becomes a ``K``-row buffer allocated at the function's root,
        indexed relative to its window; after each consumer row the buffer shifts up by the
        consumer's stride. The window loops keep computing whole windows (valid, with recomputation)
        and are marked ``tvmmcu.new_rows`` (window base, K, rows of the tensor) for
        SkipComputedRows.
    Declines when
        no loop is annotated.
    Numerics
        bit-exact: every row is computed by the same expressions and read from where it was written.
    Ordering
        after ConvertBlocksToOpaque, before CompactBufferAllocation (which would otherwise compact the
        windows per iteration).
    """

    def transform_function(
        self, func: PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
    ) -> PrimFunc:
        return _roll(func)


def _skip_computed_rows(func: PrimFunc) -> PrimFunc:
    new_rows: list[Any] = []
    structural_walk(
        func.body, (tirx.For, lambda lp: new_rows.append(lp) if ATTR_NEW_ROWS in lp.annotations else None)
    )
    if not new_rows:
        return func
    row_vars = {lp.loop_var for lp in new_rows}
    counters: list[Any] = []
    bound_buffers: list[Any] = []

    def on_realize(realize: Any) -> Any:
        if not any(v in row_vars for v in free_vars(realize.predicate)):
            return realize
        # Indices compacted without knowing the rows are inside the tensor (max(row, 0) and the like)
        # simplify under the predicate before it goes.
        ana = Analyzer()

        def simple(indices: Any) -> list[Any]:
            with ana.constraint_scope(realize.predicate):
                return [ana.simplify(i) for i in indices]

        body = structural_map(
            realize.block.body,
            [
                (tvm.ir.TensorLoad, lambda ld: tirx.BufferLoad(ld.source, simple(ld.indices))),
                (tirx.BufferStore, lambda st: tirx.BufferStore(st.buffer, st.value, simple(st.indices))),
            ],
        )
        return s_tir.SBlockRealize(realize.iter_values, True, _with(realize.block, body=body))

    def on_for(loop: Any) -> Any:
        if ATTR_NEW_ROWS not in loop.annotations:
            return loop
        base, rows, height = loop.annotations[ATTR_NEW_ROWS]
        dtype = str(loop.loop_var.ty.dtype)
        zero = tirx.const(0, dtype)
        # The row counter is int32 whatever the loops use, so NarrowDataType can still narrow them.
        counter = tirx.decl_buffer((1,), "int32", name=f"{loop.loop_var.name}_rows_done")
        counters.append(counter)
        # Rows [first, last) of the window are new: not computed before, inside the tensor.
        done = tirx.Var(f"{loop.loop_var.name}_done", dtype)
        first = tirx.Max(tirx.Max(done, base), zero)
        last = tirx.Min(base + rows, height)
        # The loop's bounds (relative to the window) pass through one-element buffers, registers in
        # the C, which TVM's analysers cannot see through. As expressions they are in terms of the
        # window's base, i.e. of the enclosing window loops, whose own bounds are in terms of theirs:
        # RemoveNoOp relaxes each loop's extent over the ranges of every loop around it (EvalSet,
        # recursively through each range's bounds), which doubles the expression at each level of the
        # chain, and then asks ConstIntBoundAnalyzer about the result: time exponential in the chain's
        # depth (124 s at 19 operators, unfinished after 20 minutes at 27). Opaque, each extent is
        # ``stop - start``.
        bounds = {"start": first - base, "stop": tirx.Max(last, first) - base}
        lets, values = [], {}
        for what, value in bounds.items():
            buf = tirx.decl_buffer((1,), dtype, name=f"{loop.loop_var.name}_{what}")
            bound_buffers.append(buf)
            values[what] = tirx.Var(f"{loop.loop_var.name}_{what}", dtype)
            lets += [
                tirx.BufferStore(buf, value, [zero]),
                tirx.LetStmt(values[what], tirx.BufferLoad(buf, [zero])),
            ]
        new = _with_for(loop, min=values["start"], extent=values["stop"] - values["start"])
        return tirx.SeqStmt(
            [
                tirx.LetStmt(done, tirx.Cast(dtype, tirx.BufferLoad(counter, [zero]))),
                *lets,
                new,
                tirx.BufferStore(counter, tirx.Cast("int32", tirx.Max(done, last)), [zero]),
            ]
        )

    body = structural_map(func.body, [(s_tir.SBlockRealize, on_realize), (tirx.For, on_for)])
    root = body.block
    inits = [tirx.BufferStore(c, tirx.const(0, "int32"), [tirx.const(0, "int32")]) for c in counters]
    root = _with(
        root,
        alloc_buffers=[*root.alloc_buffers, *counters, *bound_buffers],
        body=tirx.SeqStmt([*inits, root.body]),
    )
    body = s_tir.SBlockRealize(body.iter_values, body.predicate, root)
    return PrimFunc(func.params, body, func.ret_type, func.attrs)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="SkipComputedRows")
class SkipComputedRows:
    """Make RollRowBuffers' window loops compute only the rows no earlier iteration computed.

    Matches
        loops marked ``tvmmcu.new_rows`` by RollRowBuffers.
    Rewrites to
        a row counter per loop (int32, at the function's root); the loop runs over rows
        ``[max(done, base, 0), min(base + K, H))`` and then records ``done``. Those bounds are
        stored to and read back from one-element buffers (registers in the C): opaque to TVM's
        analysers, so no loop's extent is an expression of the loops around it, and lowering a
        chain stays polynomial in its depth (see the comment in ``on_for``). Its blocks lose the
        image-border predicates the new bounds imply (indices compacted under them are simplified
        first); the marker is removed.
    Declines when
        no loop is marked.
    Numerics
        unchanged.
    Ordering
        after CompactBufferAllocation (which needs the predicates to compact each accumulator to one
        element, and is slow on symbolic loop bounds), before LowerOpaqueBlock (which would turn the
        predicates into a test per iteration).
    """

    def transform_function(
        self, func: PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext
    ) -> PrimFunc:
        return _skip_computed_rows(func)
