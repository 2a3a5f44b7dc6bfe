"""The four-pixel rewrites of SparseFilterlets and SparseElements: a layer by layer nest of one-pixel
sparse calls, ``for yy: for xx: for o: {acc; acc = sparse1p(...); epilogue}``, computed four pixels per
call of the four-pixel kernel.

Two shapes, by what the format's four-pixel kernel takes:

- :func:`row_blocks` (element CSR): four pixels of a row ``ps`` bytes apart whose windows lie inside, in
  the rows whose windows lie inside; every other pixel through the one-pixel kernel's never-inlined
  copy.
- :func:`flat_blocks` (filterlet CSR): four consecutive pixels of the flattened output ``(yy, xx)``,
  anywhere: each pixel's window offset and a mask of its taps inside the input are computed once per
  block, and the taps whose four pixels do not lie inside one pixel stride apart are staged once per
  block (a tap outside reads a row of the padding value, built once per layer by
  ``tvmmcu_sparse_setup`` with the table of tap offsets). The ``H * W % 4`` last pixels make a last
  block whose missing pixels repeat the last one.
"""

from __future__ import annotations

from typing import Any

import attrs

from tvm_mcu._tvm import Analyzer, TensorLoad, detect_linear_equation, structural_map, tirx, tvm
from tvm_mcu.passes.tir.each_function import (
    constant_extent,
    extern_name,
    fresh_buffers,
    fresh_variables,
    substitute,
    uses,
)

# Output pixels per call of a four-pixel kernel.
PIXELS = 4
# The one-pixel sparse kernels' arguments (SparseFilterlets' rewrite of a runs call).
ONE_ARGS = ("x", "xsy", "xsx", "kw", "blob", "O", "o", "n", "y0", "y1", "x0", "x1", "pad", "acc")
# The layer set-up and the window mask of the filterlet kernels (sparse_kernels.HEADER_TEXT).
SETUP = "tvmmcu_sparse_setup"
INSIDE = "tvmmcu_sparse_inside"
STAGE = "tvmmcu_sparse_stage"
# Bits of a window mask: the taps of a window flat_blocks takes.
MAX_TAPS = 32


@attrs.frozen
class _Nest:
    """The parts of a ``for yy: for xx: for o: {alloc acc; init; acc = one(...); epilogue}`` nest."""

    loop_y: Any
    loop_x: Any
    loop_o: Any
    h: int
    w: int
    acc: Any
    init: Any
    call: Any
    epilogue: tuple[Any, ...]
    args: dict[str, Any]


def _nest(loop_y: Any) -> _Nest | None:
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
    alloc, init, update = body.seq[0], body.seq[1], body.seq[2]
    if not (isinstance(alloc, tirx.AllocBuffer) and isinstance(init, tirx.BufferStore)):
        return None
    if not isinstance(update, tirx.BufferStore) or not update.buffer.same_as(alloc.buffer):
        return None
    call = update.value
    if [int(d) for d in alloc.buffer.shape] != [1] or not isinstance(call, tvm.ir.Call):
        return None
    if len(call.args) != len(ONE_ARGS) + 1:
        return None
    args = dict(zip(ONE_ARGS, call.args[1:], strict=True))
    return _Nest(loop_y, loop_x, loop_o, h, w, alloc.buffer, init, call, tuple(body.seq[3:]), args)


def _x_load(nest: _Nest) -> Any | None:
    x = nest.args["x"]
    load = x.args[0] if isinstance(x, tvm.ir.Call) else None
    return load if isinstance(load, TensorLoad) and len(load.indices) == 1 else None


def _raw(clamp: Any, itype: str) -> Any:
    """A tap clamp in the index's type (the call's is a cast of it)."""
    inner = clamp.value if isinstance(clamp, tirx.Cast) else clamp
    return inner if str(inner.ty) == itype else tirx.Cast(itype, inner)


def _window_start(nest: _Nest, load: Any) -> Any:
    """The index of the window's first tap (the kernel's x points at the first tap inside)."""
    index = load.indices[0]
    itype = str(index.ty)
    a = nest.args
    strides = (tirx.IntImm(itype, int(a["xsy"])), tirx.IntImm(itype, int(a["xsx"])))
    return Analyzer().simplify(index - _raw(a["y0"], itype) * strides[0] - _raw(a["x0"], itype) * strides[1])


def _per_pixel(stmt: Any, nest: _Nest, yy: Any, xx: Any) -> Any:
    return substitute(substitute(stmt, nest.loop_y.loop_var, yy), nest.loop_x.loop_var, xx)


def _edges(stmt: Any, edge_of: Any) -> Any:
    """``stmt`` with its one-pixel sparse calls through the never-inlined kernel (border copies)."""

    def rename(call: Any) -> Any:
        edge = edge_of(extern_name(call))
        return tirx.call_extern(str(call.ty), edge, *call.args[1:]) if edge is not None else call

    return structural_map(stmt, (tvm.ir.Call, rename))


def _copy(stmt: Any, edge_of: Any) -> Any:
    return _edges(fresh_buffers(fresh_variables(stmt)), edge_of)


def _seq(stmts: list[Any]) -> Any:
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def _int32(expr: Any) -> Any:
    return expr if str(expr.ty) == "int32" else tirx.Cast("int32", expr)


def flat_blocks(loop_y: Any, four_of: Any, window_of: Any) -> Any | None:
    """The nest at ``loop_y`` four consecutive output pixels per call of the four-pixel kernel
    ``four_of(one-pixel kernel)`` (``tvmmcu_sparse4p_blob_*``), the last ``H * W % 4`` pixels as a block
    whose missing pixels repeat the last one (computed, not stored); ``window_of(blob pointer)``: the
    window's (kh, kw), or None.

    Per layer ``tvmmcu_sparse_setup`` fills a state buffer (the taps' offsets, the padding row); per
    block ``tvmmcu_sparse_stage`` points each tap of its buffer's table at the four pixels' data, in
    the input where they lie inside ps bytes apart (ps: the input bytes between horizontally adjacent
    windows), else at copies in the buffer (8 * taps + 4 * taps * ps bytes); then every output
    channel runs the kernel on them. Both buffers are scratch (HoistScratchToWorkspace places them in
    the arena). None when the nest is not one, it has fewer than 4 pixels, its
    window start is not affine in (yy, xx) with constant coefficients, its strides, padding or
    weights change inside it, adjacent windows overlap by less than ``n`` bytes (ps < n), or its
    window has over 32 taps."""
    nest = _nest(loop_y)
    if nest is None:
        return None
    a = nest.args
    four_name = four_of(extern_name(nest.call))
    window = window_of(a["blob"])
    load = _x_load(nest)
    if four_name is None or window is None or load is None or str(load.source.dtype) not in ("int8", "uint8"):
        return None
    kh, kw = window
    if kh * kw > MAX_TAPS or not all(isinstance(a[k], tirx.IntImm) for k in ("xsy", "xsx", "kw", "n")):
        return None
    yy, xx, o = nest.loop_y.loop_var, nest.loop_x.loop_var, nest.loop_o.loop_var
    if any(uses(a[k], v) for k in ("blob", "O", "pad") for v in (yy, xx, o)):
        return None
    start = _window_start(nest, load)
    coeffs = detect_linear_equation(start, [yy, xx])
    if len(coeffs) != 3 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:2]):
        return None
    dtype = str(xx.ty)
    pixels = nest.h * nest.w
    blocks = pixels // PIXELS
    n, taps, ps = int(a["n"]), kh * kw, int(coeffs[1])
    if blocks == 0 or ps < n:
        return None  # no block of four; or windows overlapping in a staged block (n bytes, ps apart)
    ana = Analyzer()

    def at(pixel: Any) -> tuple[Any, Any]:  # (yy, xx) of a flat pixel index
        width = tirx.IntImm(dtype, nest.w)
        return ana.simplify(tirx.floordiv(pixel, width)), ana.simplify(tirx.floormod(pixel, width))

    state = tirx.decl_buffer((1 + taps + (n + 3) // 4,), "int32", name="sparse_state", layout=None)
    # A pointer per tap (8 bytes), then the staged taps: TVMMCU_SPARSE_STAGE_BYTES.
    staged = tirx.decl_buffer((8 * taps + PIXELS * taps * ps,), "uint8", name="sparse_windows", layout=None)
    zero = tirx.IntImm(dtype, 0)
    state_at, staged_at = (tirx.address_of(tirx.BufferLoad(b, [zero])) for b in (state, staged))
    x0 = tirx.address_of(tirx.BufferLoad(load.source, [tirx.IntImm(str(load.indices[0].ty), 0)]))
    kk, pixel_stride = tirx.IntImm("int32", taps), tirx.IntImm("int32", ps)

    def block(pixel: Any, valid: int) -> Any:
        """Stage the block whose p-th pixel is ``pixel(p)``, then every output channel: the kernel, the
        epilogue of its first ``valid`` pixels."""

        def of_pixel(node: Any, p: Any) -> Any:  # an expression or statement at pixel p of the block
            out = _per_pixel(node, nest, *at(pixel(p)))
            return out if isinstance(out, tirx.Stmt) else ana.simplify(out)

        offsets = [_int32(of_pixel(start, tirx.IntImm(dtype, p))) for p in range(PIXELS)]
        masks = [
            tirx.call_extern(
                "int32",
                INSIDE,
                *(_int32(of_pixel(a[k], tirx.IntImm(dtype, p))) for k in ("y0", "y1", "x0", "x1")),
                a["kw"],
            )
            for p in range(PIXELS)
        ]
        stage = tirx.call_extern(
            "int32", STAGE, staged_at, x0, *offsets, *masks, state_at, kk, pixel_stride, a["n"]
        )
        aligned = tirx.Var("aligned", "int32")
        four = tirx.decl_buffer((PIXELS,), str(nest.acc.dtype), name=f"{nest.acc.name}4", layout=None)
        kernel = tirx.call_extern(
            "int32",
            four_name,
            staged_at,
            aligned,
            pixel_stride,
            a["blob"],
            a["O"],
            a["o"],
            a["n"],
            tirx.address_of(tirx.BufferLoad(four, [zero])),
        )
        inits = [
            tirx.BufferStore(four, of_pixel(nest.init.value, tirx.IntImm(dtype, p)), [tirx.IntImm(dtype, p)])
            for p in range(PIXELS)
        ]
        p_var = tirx.Var("p", dtype)

        def read_four(load: Any) -> Any:
            return tirx.BufferLoad(four, [p_var]) if load.source.same_as(nest.acc) else load

        tail = [structural_map(of_pixel(s, p_var), (TensorLoad, read_four)) for s in nest.epilogue]
        per_pixel = tirx.For(p_var, zero, tirx.IntImm(dtype, valid), tirx.ForKind.UNROLLED, _seq(tail))
        loop_o = nest.loop_o
        channels = tirx.For(
            o,
            loop_o.min,
            loop_o.extent,
            loop_o.kind,
            tirx.SeqStmt([tirx.AllocBuffer(four), *inits, tirx.Evaluate(kernel), per_pixel]),
        )
        return fresh_variables(tirx.SeqStmt([tirx.LetStmt(aligned, stage), channels]))

    setup = tirx.call_extern(
        "int32",
        SETUP,
        state_at,
        tirx.IntImm("int32", kh),
        a["kw"],
        a["xsy"],
        a["xsx"],
        a["n"],
        a["pad"],
    )
    pb = tirx.Var("pb", dtype)
    blocked = block(lambda p: pb * tirx.IntImm(dtype, PIXELS) + p, PIXELS)
    pieces = [tirx.AllocBuffer(state), tirx.AllocBuffer(staged), tirx.Evaluate(setup)]
    pieces.append(tirx.For(pb, zero, tirx.IntImm(dtype, blocks), tirx.ForKind.SERIAL, blocked))
    left = pixels - blocks * PIXELS
    if left:
        # The last pixels as a block, its missing pixels repeating the last one (computed, not stored).
        last = blocks * PIXELS

        def pixel(p: Any) -> Any:
            return tirx.Min(tirx.IntImm(dtype, last) + p, tirx.IntImm(dtype, pixels - 1))

        pieces.append(block(pixel, left))
    return tirx.SeqStmt(pieces)


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


def _copy_loop(loop: Any, start: int, extent: int, edge_of: Any) -> Any:
    dtype = str(loop.loop_var.ty)
    var = tirx.Var(loop.loop_var.name, dtype)
    body = _edges(fresh_buffers(fresh_variables(substitute(loop.body, loop.loop_var, var))), edge_of)
    return tirx.For(var, tirx.IntImm(dtype, start), tirx.IntImm(dtype, extent), loop.kind, body)


def row_blocks(loop_y: Any, four_of: Any, edge_of: Any) -> Any | None:
    """The nest at ``loop_y`` with the runs of pixels whose windows lie inside taken four at a time by
    the four-pixel kernel ``four_of(one-pixel kernel)`` (``x, ps, xsy, xsx, kw, blob, O, o, n, acc``)
    in the rows whose windows lie inside, the rest through ``edge_of``; None when the nest is not that."""
    nest = _nest(loop_y)
    if nest is None:
        return None
    four_name = four_of(extern_name(nest.call))
    if four_name is None:
        return None
    a = nest.args
    yy, xx = nest.loop_y.loop_var, nest.loop_x.loop_var
    h, w = nest.h, nest.w
    ys0, ys1 = _values(a["y0"], yy, h), _values(a["y1"], yy, h)
    xs0, xs1 = _values(a["x0"], xx, w), _values(a["x1"], xx, w)
    if ys0 is None or ys1 is None or xs0 is None or xs1 is None:
        return None
    kh, kw = max(hi - lo for lo, hi in zip(ys0, ys1, strict=True)), int(a["kw"])
    rows, cols = _inside(ys0, ys1, kh), _inside(xs0, xs1, kw)
    if rows is None or cols is None or (cols[1] - cols[0]) < PIXELS:
        return None
    load = _x_load(nest)
    if load is None:
        return None
    base = _window_start(nest, load)
    coeffs = detect_linear_equation(base, [xx])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm):
        return None
    ps = int(coeffs[0])
    first, blocks = cols[0], (cols[1] - cols[0]) // PIXELS
    dtype = str(xx.ty)
    xb = tirx.Var("xb", dtype)
    at = tirx.IntImm(dtype, first) + xb * tirx.IntImm(dtype, PIXELS)
    four = tirx.decl_buffer((PIXELS,), str(nest.acc.dtype), name=f"{nest.acc.name}4", layout=None)
    loop_o = nest.loop_o
    x_at = tirx.address_of(tirx.BufferLoad(load.source, [substitute(base, xx, at)]))
    args = [x_at, tirx.IntImm("int32", ps), a["xsy"], a["xsx"], a["kw"], a["blob"], a["O"], a["o"], a["n"]]
    kernel = tirx.call_extern(
        "int32", four_name, *args, tirx.address_of(tirx.BufferLoad(four, [tirx.IntImm(dtype, 0)]))
    )
    inits = [tirx.BufferStore(four, nest.init.value, [tirx.IntImm(dtype, p)]) for p in range(PIXELS)]
    p_var = tirx.Var("p", dtype)

    def read_four(load: Any) -> Any:
        return tirx.BufferLoad(four, [p_var]) if load.source.same_as(nest.acc) else load

    tail = [structural_map(substitute(s, xx, at + p_var), (TensorLoad, read_four)) for s in nest.epilogue]
    per_pixel = tirx.For(
        p_var, tirx.IntImm(dtype, 0), tirx.IntImm(dtype, PIXELS), tirx.ForKind.UNROLLED, _seq(tail)
    )
    block = tirx.For(
        loop_o.loop_var,
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
        _copy(substitute(loop_o, xx, at + one), edge_of),
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
        pieces.append(_copy_loop(nest.loop_x, 0, first, edge_of))
    pieces.append(blocked)
    if end < w:
        pieces.append(_copy_loop(nest.loop_x, end, w - end, edge_of))
    loop_y = nest.loop_y
    return tirx.For(
        yy, loop_y.min, loop_y.extent, loop_y.kind, _seq(pieces), loop_y.thread_binding, loop_y.annotations
    )
