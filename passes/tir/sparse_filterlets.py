"""SparseFilterlets: a convolution whose weights are stored sparse (CSR over filterlets) visits only the
kept ones."""

from __future__ import annotations

from typing import Any

import attrs

from tvm_mcu._tvm import (
    Analyzer,
    PrimFunc,
    TensorLoad,
    detect_linear_equation,
    structural_map,
    structural_walk,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.dot_kernels import RUNS
from tvm_mcu.passes.tir.each_function import (
    constant_extent,
    extern_name,
    fresh_buffers,
    fresh_variables,
    parameter_owners,
    rewrite_each,
    substitute,
)
from tvm_mcu.passes.tir.sparse_kernels import PIXELS, SPARSE1P_BLOB, SPARSE1P_EDGE, SPARSE4P_BLOB

ATTR_DONE = "tvmmcu.filterlets_done"
# Set by the compiler before lowering: parameter position -> output channels, for the weights it will
# store sparse when every read of them becomes a sparse call (the compiler reads ATTR_SPARSE after).
ATTR_WANTED = "tvmmcu.sparse_weights"
# Set by this pass: the parameter positions whose reads all became sparse calls -> output channels.
ATTR_SPARSE = "tvmmcu.sparse_filterlets"

_RUNS_ARGS = ("x", "xsy", "xsx", "w", "wsy", "wsx", "kh", "kw", "n", "y0", "y1", "x0", "x1", "pad", "acc")


@attrs.frozen
class SparseKernels:
    """The kernels of one sparse format, each keyed by (data dtype, weight dtype) as ``RUNS``: the
    one-pixel kernel replacing a runs call, its four-pixel interior kernel and its never-inlined
    border copy; ``contiguous_taps``: the format needs a window row's taps back to back (xsx == n)."""

    one: dict[tuple[str, str], str]
    four: dict[tuple[str, str], str]
    edge: dict[tuple[str, str], str]
    contiguous_taps: bool = False

    def of_runs(self, name: str) -> str | None:
        return next((self.one[key] for key, runs in RUNS.items() if runs == name), None)

    def four_of(self, name: str) -> str | None:
        return next((self.four[key] for key, one in self.one.items() if one == name), None)

    def edge_of(self, name: str) -> str | None:
        return next((self.edge[key] for key, one in self.one.items() if one == name), None)


FILTERLETS = SparseKernels(SPARSE1P_BLOB, SPARSE4P_BLOB, SPARSE1P_EDGE)
_ONE_ARGS = ("x", "xsy", "xsx", "kw", "blob", "O", "o", "n", "y0", "y1", "x0", "x1", "pad", "acc")


def _pointer_load(pointer: Any) -> Any | None:
    if isinstance(pointer, tvm.ir.Call) and str(getattr(pointer.op, "name", "")) == "tirx.address_of":
        load = pointer.args[0]
        if isinstance(load, TensorLoad) and len(load.indices) == 1:
            return load
    return None


def _sparse_call(call: Any, owner_of: Any, wanted: dict[Any, int], kernels: SparseKernels) -> Any | None:
    """The sparse call replacing a runs call over a wanted parameter's weights, or None."""
    a = dict(zip(_RUNS_ARGS, call.args[1:], strict=True))
    load = _pointer_load(a["w"])
    if load is None or owner_of(load.source) not in wanted:
        return None
    if not all(isinstance(a[k], tirx.IntImm) for k in ("wsy", "wsx", "kh", "kw", "n")):
        return None
    kh, kw, n = int(a["kh"]), int(a["kw"]), int(a["n"])
    if kernels.contiguous_taps and not (isinstance(a["xsx"], tirx.IntImm) and int(a["xsx"]) == n):
        return None
    # A channel's filterlets follow each other tap after tap (OHWI): the weight pointer is channel o's.
    if int(a["wsx"]) != n or int(a["wsy"]) != kw * n:
        return None
    index = load.indices[0]
    dtype = str(index.ty)
    per_channel = tirx.IntImm(dtype, kh * kw * n)
    ana = Analyzer()
    if not ana.can_prove(tirx.floormod(index, per_channel) == 0):
        return None
    channel = ana.simplify(tirx.floordiv(index, per_channel))
    blob = tirx.address_of(tirx.BufferLoad(load.source, [tirx.IntImm(dtype, 0)]))
    out_channels = tirx.IntImm("int32", wanted[owner_of(load.source)])
    channel = channel if str(channel.ty) == "int32" else tirx.Cast("int32", channel)
    args = [a["x"], a["xsy"], a["xsx"], a["kw"], blob, out_channels, channel, a["n"]]
    args += [a["y0"], a["y1"], a["x0"], a["x1"], a["pad"], a["acc"]]
    one = kernels.of_runs(extern_name(call))
    assert one is not None  # the caller matched a runs call
    return tirx.call_extern(str(call.ty), one, *args)


def _values(expr: Any, var: Any, extent: int) -> list[int] | None:
    """``expr`` at ``var`` = 0 .. extent - 1, when each is a constant."""
    ana = Analyzer()
    out = []
    for v in range(extent):
        value = ana.simplify(substitute(expr, var, tirx.IntImm(str(var.ty), v)))
        if not isinstance(value, tirx.IntImm):
            return None
        out.append(int(value))
    return out


def _inside(lows: list[int], highs: list[int], full: int) -> tuple[int, int] | None:
    """[a, b): the one run of positions whose taps are all inside (low 0, high ``full``)."""
    inside = [k for k, (lo, hi) in enumerate(zip(lows, highs, strict=True)) if lo == 0 and hi == full]
    if not inside or inside != list(range(inside[0], inside[-1] + 1)):
        return None
    return inside[0], inside[-1] + 1


def _edges(stmt: Any, kernels: SparseKernels) -> Any:
    """``stmt`` with its one-pixel sparse calls through the never-inlined kernel (border copies)."""

    def rename(call: Any) -> Any:
        edge = kernels.edge_of(extern_name(call))
        return tirx.call_extern(str(call.ty), edge, *call.args[1:]) if edge is not None else call

    return structural_map(stmt, (tvm.ir.Call, rename))


def _copy(stmt: Any, var: Any, value: Any, kernels: SparseKernels) -> Any:
    return _edges(fresh_buffers(fresh_variables(substitute(stmt, var, value))), kernels)


def _pixel_blocks(loop_y: Any, kernels: SparseKernels) -> Any | None:
    """``for yy: for xx: for o: {acc; sparse1p; epilogue}`` with the runs of pixels whose windows lie
    inside taken four at a time by the four-pixel kernel; None when the nest is not that."""
    loop_x = loop_y.body
    if not isinstance(loop_x, tirx.For) or not isinstance(loop_x.body, tirx.For):
        return None
    loop_o = loop_x.body
    h, w = constant_extent(loop_y), constant_extent(loop_x)
    if h is None or w is None or constant_extent(loop_o) is None:
        return None
    body = loop_o.body
    if not isinstance(body, tirx.SeqStmt) or len(body.seq) < 4:
        return None
    alloc, init, update, *epilogue = body.seq
    if not (isinstance(alloc, tirx.AllocBuffer) and isinstance(init, tirx.BufferStore)):
        return None
    acc = alloc.buffer
    if not isinstance(update, tirx.BufferStore) or not update.buffer.same_as(acc):
        return None
    call = update.value
    name = extern_name(call)
    four_name = kernels.four_of(name)
    if four_name is None or [int(d) for d in acc.shape] != [1]:
        return None
    a = dict(zip(_ONE_ARGS, call.args[1:], strict=True))
    yy, xx = loop_y.loop_var, loop_x.loop_var
    ys0, ys1 = _values(a["y0"], yy, h), _values(a["y1"], yy, h)
    xs0, xs1 = _values(a["x0"], xx, w), _values(a["x1"], xx, w)
    if ys0 is None or ys1 is None or xs0 is None or xs1 is None:
        return None
    kh, kw = max(hi - lo for lo, hi in zip(ys0, ys1, strict=True)), int(a["kw"])
    rows, cols = _inside(ys0, ys1, kh), _inside(xs0, xs1, kw)
    if rows is None or cols is None or (cols[1] - cols[0]) < PIXELS:
        return None
    x_load = a["x"].args[0] if isinstance(a["x"], tvm.ir.Call) else None
    if not isinstance(x_load, TensorLoad) or len(x_load.indices) != 1:
        return None
    ana = Analyzer()
    index = x_load.indices[0]
    itype = str(index.ty)

    def raw(clamp: Any) -> Any:  # the clamp in the index's type (the call's is a cast of it)
        inner = clamp.value if isinstance(clamp, tirx.Cast) else clamp
        return inner if str(inner.ty) == itype else tirx.Cast(itype, inner)

    # The window's first tap (the kernel's x points at the first tap inside): the clamps taken out.
    strides = (tirx.IntImm(itype, int(a["xsy"])), tirx.IntImm(itype, int(a["xsx"])))
    base = ana.simplify(index - raw(a["y0"]) * strides[0] - raw(a["x0"]) * strides[1])
    coeffs = detect_linear_equation(base, [xx])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm):
        return None
    ps = int(coeffs[0])
    first, blocks = cols[0], (cols[1] - cols[0]) // PIXELS
    dtype = str(xx.ty)
    xb = tirx.Var("xb", dtype)
    at = tirx.IntImm(dtype, first) + xb * tirx.IntImm(dtype, PIXELS)
    four = tirx.decl_buffer((PIXELS,), str(acc.dtype), name=f"{acc.name}4", layout=None)
    o = loop_o.loop_var
    x_at = tirx.address_of(tirx.BufferLoad(x_load.source, [substitute(base, xx, at)]))
    args = [x_at, tirx.IntImm("int32", ps), a["xsy"], a["xsx"], a["kw"], a["blob"], a["O"], a["o"], a["n"]]
    kernel = tirx.call_extern(
        "int32", four_name, *args, tirx.address_of(tirx.BufferLoad(four, [tirx.IntImm(dtype, 0)]))
    )
    inits = [tirx.BufferStore(four, init.value, [tirx.IntImm(dtype, p)]) for p in range(PIXELS)]
    p_var = tirx.Var("p", dtype)

    def read_four(load: Any) -> Any:
        return tirx.BufferLoad(four, [p_var]) if load.source.same_as(acc) else load

    tail = [structural_map(substitute(s, xx, at + p_var), (TensorLoad, read_four)) for s in epilogue]
    per_pixel = tirx.For(
        p_var, tirx.IntImm(dtype, 0), tirx.IntImm(dtype, PIXELS), tirx.ForKind.UNROLLED, _seq(tail)
    )
    block = tirx.For(
        o,
        loop_o.min,
        loop_o.extent,
        loop_o.kind,
        tirx.SeqStmt([tirx.AllocBuffer(four), *inits, tirx.Evaluate(kernel), per_pixel]),
    )
    one = tirx.Var("p", dtype)
    singles = tirx.For(
        one,
        tirx.IntImm(dtype, 0),
        tirx.IntImm(dtype, PIXELS),
        tirx.ForKind.SERIAL,
        _copy(loop_o, xx, at + one, kernels),
    )
    full_rows = tirx.And(
        tirx.EQ(a["y0"], tirx.IntImm(str(a["y0"].ty), 0)), tirx.EQ(a["y1"], tirx.IntImm(str(a["y1"].ty), kh))
    )
    blocked = tirx.For(
        xb,
        tirx.IntImm(dtype, 0),
        tirx.IntImm(dtype, blocks),
        tirx.ForKind.SERIAL,
        tirx.IfThenElse(full_rows, fresh_variables(block), singles),
    )
    end = first + blocks * PIXELS
    pieces = []
    if first > 0:
        pieces.append(_copy_loop(loop_x, 0, first, kernels))
    pieces.append(blocked)
    if end < w:
        pieces.append(_copy_loop(loop_x, end, w - end, kernels))
    return tirx.For(
        yy, loop_y.min, loop_y.extent, loop_y.kind, _seq(pieces), loop_y.thread_binding, loop_y.annotations
    )


def _copy_loop(loop: Any, start: int, extent: int, kernels: SparseKernels) -> Any:
    dtype = str(loop.loop_var.ty)
    var = tirx.Var(loop.loop_var.name, dtype)
    body = _edges(fresh_buffers(fresh_variables(substitute(loop.body, loop.loop_var, var))), kernels)
    return tirx.For(var, tirx.IntImm(dtype, start), tirx.IntImm(dtype, extent), loop.kind, body)


def _seq(stmts: list[Any]) -> Any:
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def rewrite_sparse(
    func: PrimFunc, *, wanted_attr: str, done: str, stored: str, kernels: SparseKernels
) -> PrimFunc:
    """``func`` with the runs calls over the parameters its attribute ``wanted_attr`` names rewritten
    to ``kernels`` (all or nothing per parameter), marked ``done``, and ``stored`` = {position: output
    channels} of the parameters now read only so: SparseFilterlets' rewrite, for any sparse format."""
    wanted_positions = func.attrs.get(wanted_attr) if func.attrs is not None else None
    if not wanted_positions:
        return func.with_attr(done, True)
    position = {p: k for k, p in enumerate(func.params)}
    by_position = {int(k): int(v) for k, v in wanted_positions.items()}
    wanted = {p: by_position[k] for p, k in position.items() if k in by_position}
    owners = parameter_owners(func)

    def owner_of(buffer: Any) -> Any:
        return owners.get(buffer, buffer)

    rewritten: dict[Any, int] = {}

    def rewrite(call: Any) -> Any:
        if kernels.of_runs(extern_name(call)) is None:
            return call
        sparse = _sparse_call(call, owner_of, wanted, kernels)
        if sparse is None:
            return call
        load = _pointer_load(call.args[4])
        assert load is not None  # _sparse_call matched it
        owner = owner_of(load.source)
        rewritten[owner] = rewritten.get(owner, 0) + 1
        return sparse

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    # All or nothing per parameter: every read of it must now be a sparse call's blob pointer.
    reads: dict[Any, int] = {}

    def count(load: Any) -> None:
        owner = owner_of(load.source)
        if owner in wanted:
            reads[owner] = reads.get(owner, 0) + 1

    structural_walk(body, (TensorLoad, count))
    complete = {p for p in wanted if p in rewritten and reads.get(p, 0) == rewritten[p]}
    if not complete or complete != set(rewritten):
        return func.with_attr(done, True)  # some read was left dense: keep the dense kernel
    # Four pixels at once where their windows lie inside (the interior of a layer by layer loop nest).
    body = structural_map(body, (tirx.For, lambda loop: _pixel_blocks(loop, kernels) or loop))
    return (
        func.with_body(body)
        .with_attr(done, True)
        .with_attr(stored, {position[p]: wanted[p] for p in complete})
    )


def sparse_filterlets(func: PrimFunc) -> PrimFunc:
    return rewrite_sparse(
        func, wanted_attr=ATTR_WANTED, done=ATTR_DONE, stored=ATTR_SPARSE, kernels=FILTERLETS
    )


@tvm.transform.module_pass(opt_level=0, name="SparseFilterlets")
class SparseFilterlets:
    """Visit only the kept filterlets of a convolution whose weights the compiler stores sparse.

    Matches
        functions whose attribute ``tvmmcu.sparse_weights`` (parameter position -> output channels, set
        by the compiler where the weights' zero filterlets pay) names a weight parameter read by runs
        calls (``tvmmcu_dot_runs_*``: one pixel, one output channel, a window of taps each a run of ``n``
        input channels, the channel's taps following each other: OHWI weights).
    Rewrites to
        ``tvmmcu_sparse1p_blob_*(x, xsy, xsx, kw, &W[0], O, o, n, y0, y1, x0, x1, pad, acc)``: the
        parameter holds the CSR blob (``sparse_kernels.compress_blob``), channel ``o`` is the call's
        weight offset over ``kh * kw * n``; records ``tvmmcu.sparse_filterlets`` = {position: O} for
        the compiler to store the blob. Then, in a ``for yy: for xx: for o`` nest whose windows lie
        inside for a run of constant ``xx``, that run is taken four pixels at a time
        (``tvmmcu_sparse4p_blob_*``, the epilogue once per pixel) in the rows whose windows lie inside
        (tested per row), the rest through ``tvmmcu_sparse1p_edge_*`` (never inlined: little flash).
    Declines when
        a read of the parameter is anything else or its offset is not provably a whole channel (then
        nothing changes and the weights stay dense), or the function carries ``tvmmcu.filterlets_done``.
    Numerics
        unchanged: a pruned filterlet's products are zero; the kept ones are summed as the runs kernel
        sums them (integers: any order), the padding taps as ``pad`` times their weights.
    Ordering
        after UseDotKernels and SplitBorders (it rewrites their calls, as many as SplitBorders made);
        BlockOutputChannels leaves such functions alone (the sparse kernel is per channel).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, sparse_filterlets)
