"""The four-pixel rewrites of SparseFilterlets and SparseElements: a layer by layer nest of one-pixel
sparse calls, ``for yy: for xx: for o: {acc; acc = sparse1p(...); epilogue}`` (or, filterlet CSR only,
a row band's step ``for xx: for o: {...}``, its row set by the loops around it), computed four pixels
per call of the four-pixel kernel.

Two shapes, by what the format's four-pixel kernel takes:

- :func:`row_blocks` (element CSR): four pixels of a row ``ps`` bytes apart whose windows lie inside, in
  the rows whose windows lie inside; every other pixel through the one-pixel kernel's never-inlined
  copy.
- :func:`flat_blocks` (filterlet CSR, int8 or float32 data): four consecutive pixels of the flattened
  output ``(yy, xx)``, anywhere: each pixel's window offset and a mask of its taps inside the input are
  computed once per block; a tap outside for all four pixels reads padding rows, one inside for some
  but not all (or for a block whose windows are not one pixel stride apart) is staged once per block,
  back to back in a buffer sized for the most taps a block of the nest copies (:func:`stage_copies`);
  the padding rows and the table of tap offsets are built once per nest by ``tvmmcu_sparse_setup``.
  The ``H * W % 4`` last pixels come from a last block of the output's last four pixels, only the new
  ones stored. A nest whose output channel is fixed outside it (a channel slice) keeps one pixel per
  call: its blocks would be staged once per channel. Float data: the set-up and the staging count
  bytes (four per value), and the kernel skips the taps outside for all four pixels.
"""

from __future__ import annotations

import math
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
from tvm_mcu.passes.tir.sparse_float_kernels import STAGE_F32

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
# Bytes per value of the data flat_blocks takes (the set-up and the staging count bytes).
_VALUE_BYTES = {"int8": 1, "uint8": 1, "float32": 4}


@attrs.frozen
class _Nest:
    """The parts of a ``for yy: for xx: for o: {alloc acc; init; acc = one(...); epilogue}`` nest, or of
    a one-row ``for xx: for o: {...}`` nest (``loop_y`` None: a row band's step, the row set by the
    loops around it)."""

    loop_y: Any | None
    loop_x: Any
    loop_o: Any
    h: int
    w: int
    acc: Any
    init: Any
    call: Any
    epilogue: tuple[Any, ...]
    args: dict[str, Any]

    @property
    def loop_vars(self) -> list[Any]:
        """The nest's pixel loop variables, outermost first."""
        return [loop.loop_var for loop in (self.loop_y, self.loop_x) if loop is not None]


def _nest(loop: Any, *, rows: int) -> _Nest | None:
    """The nest at ``loop`` with ``rows`` (1 or 2) pixel loops, then the output channels' loop, every
    loop from 0 with a constant extent."""
    loops = [loop]
    while isinstance(loops[-1].body, tirx.For) and len(loops) <= rows:
        loops.append(loops[-1].body)
    body = loops[-1].body
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
    # Not a channel slice's nest (the call's channel fixed outside, each block staged once per channel).
    if len(loops) != rows + 1 or not uses(args["o"], loops[-1].loop_var):
        return None
    if any(constant_extent(v) is None for v in loops):
        return None
    loop_o = loops.pop()
    loop_y, loop_x = (loops[0], loops[1]) if rows == 2 else (None, loops[0])
    h = 1 if loop_y is None else constant_extent(loop_y)
    w = constant_extent(loop_x)
    assert h is not None and w is not None  # checked above
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
    out = substitute(stmt, nest.loop_x.loop_var, xx)
    return out if nest.loop_y is None else substitute(out, nest.loop_y.loop_var, yy)


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


def _starts_clear(nest: _Nest) -> bool:
    """Whether a float accumulator starts at a constant other than ``-0.0``: the four-pixel float
    kernel adds ``+-0.0`` for a tap in the padding at some of its pixels where the one-pixel kernel adds
    nothing, the same sum unless the accumulator is ``-0.0``, which adds from another value never make."""
    init = nest.init.value
    return isinstance(init, tirx.FloatImm) and math.copysign(1.0, float(init.value)) > 0


def flat_blocks(loop: Any, four_of: Any, window_of: Any, *, row: bool = False) -> Any | None:
    """The nest at ``loop`` (``row``: a one-row nest ``for xx: for o``, as a row band's step computes
    it, the row's taps and window start set by the loops around it) four consecutive output pixels per
    call of the four-pixel kernel ``four_of(one-pixel kernel)`` (``tvmmcu_sparse4p_blob_*``), the last
    ``H * W % 4`` pixels from a block of the last four pixels, only the new ones stored;
    ``window_of(blob pointer)``: the window's (kh, kw), or None.

    Per nest ``tvmmcu_sparse_setup`` fills a state buffer (the taps' offsets, four padding rows ps
    bytes apart: ``4 * (1 + taps) + 3 * ps + n`` bytes); per block ``tvmmcu_sparse_stage`` points each
    tap of its buffer's table at the four pixels' data: in the input where they lie inside ps bytes
    apart (ps: the input bytes between horizontally adjacent windows), at the padding rows where the
    tap lies outside for all four, else at copies in the buffer (``8 * taps + 4 * copies * ps``
    bytes, copies: :func:`stage_copies` of the nest); then every output channel runs the kernel on
    them. Both buffers are scratch (HoistScratchToWorkspace places them in the arena). Int8 or uint8
    data, or float32 (the set-up's and the staging's strides, run, offsets and pixel stride in bytes,
    four per value; ``tvmmcu_sparse_stage_f32``, whose result, the taps outside for all four pixels,
    the kernel skips). None when the nest is not one (the output channel's loop innermost), it has
    fewer than 4 pixels, its window start is not affine in (yy, xx) with constant coefficients, its
    strides, padding or weights change inside it, adjacent windows are fewer than ``n`` values apart
    (ps < n), its window has over 32 taps, or float data's accumulator does not start at a constant
    other than ``-0.0`` (:func:`_starts_clear`)."""
    nest = _nest(loop, rows=1 if row else 2)
    if nest is None:
        return None
    a = nest.args
    four_name = four_of(extern_name(nest.call))
    window = window_of(a["blob"])
    load = _x_load(nest)
    if four_name is None or window is None or load is None:
        return None
    size = _VALUE_BYTES.get(str(load.source.dtype))
    if size is None or (str(load.source.dtype) == "float32" and not _starts_clear(nest)):
        return None
    kh, kw = window
    if kh * kw > MAX_TAPS or not all(isinstance(a[k], tirx.IntImm) for k in ("xsy", "xsx", "kw", "n")):
        return None
    xx = nest.loop_x.loop_var
    pixel_vars = nest.loop_vars
    if any(uses(a[k], v) for k in ("blob", "O", "pad") for v in (*pixel_vars, nest.loop_o.loop_var)):
        return None
    start = _window_start(nest, load)
    coeffs = detect_linear_equation(start, pixel_vars)
    variables = len(pixel_vars)
    if len(coeffs) != variables + 1 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:variables]):
        return None
    dtype = str(xx.ty)
    pixels = nest.h * nest.w
    blocks = pixels // PIXELS
    n, taps, ps = int(a["n"]), kh * kw, int(coeffs[variables - 1])
    if blocks == 0 or ps < n:
        return None  # no block of four; or windows overlapping in a staged block (n values, ps apart)
    ana = Analyzer()

    def at(pixel: Any) -> tuple[Any, Any]:  # (yy, xx) of a flat pixel index; (None, xx) in a row
        if nest.loop_y is None:
            return None, pixel
        width = tirx.IntImm(dtype, nest.w)
        return ana.simplify(tirx.floordiv(pixel, width)), ana.simplify(tirx.floormod(pixel, width))

    # TVMMCU_SPARSE_STATE_WORDS: the tap offsets, then four padding rows ps bytes apart.
    state = tirx.decl_buffer(
        (1 + taps + (size * (3 * ps + n) + 3) // 4,), "int32", name="sparse_state", layout=None
    )
    # TVMMCU_SPARSE_STAGE_BYTES: a pointer per tap (8 bytes), then the most taps a block copies.
    copies = _most_copies(nest, (kh, kw), [int(c) for c in coeffs[:variables]])
    staged = tirx.decl_buffer(
        (8 * taps + PIXELS * copies * ps * size,), "uint8", name="sparse_windows", layout=None
    )
    zero = tirx.IntImm(dtype, 0)
    state_at, staged_at = (tirx.address_of(tirx.BufferLoad(b, [zero])) for b in (state, staged))
    x0 = tirx.address_of(tirx.BufferLoad(load.source, [tirx.IntImm(str(load.indices[0].ty), 0)]))
    # The set-up and the staging count bytes: the strides, the run and the pixel stride in bytes.
    kk, pixel_stride = tirx.IntImm("int32", taps), tirx.IntImm("int32", ps * size)
    n_bytes = tirx.IntImm("int32", n * size)
    # The stage's result, the kernel's second argument: whether the table is word-aligned (int8), the
    # taps outside for all four pixels (float).
    stage_name, staged_name = (STAGE_F32, "outside") if size > 1 else (STAGE, "aligned")

    def in_bytes(expr: Any) -> Any:
        return expr if size == 1 else ana.simplify(expr * tirx.IntImm(str(expr.ty), size))

    def block(pixel: Any, first: int) -> Any:
        """Stage the block whose p-th pixel is ``pixel(p)``, then every output channel: the kernel, the
        epilogue of its pixels from ``first`` on."""

        def of_pixel(node: Any, p: Any) -> Any:  # an expression or statement at pixel p of the block
            out = _per_pixel(node, nest, *at(pixel(p)))
            return out if isinstance(out, tirx.Stmt) else ana.simplify(out)

        offsets = [in_bytes(_int32(of_pixel(start, tirx.IntImm(dtype, p)))) for p in range(PIXELS)]
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
            "int32", stage_name, staged_at, x0, *offsets, *masks, state_at, kk, pixel_stride, n_bytes
        )
        aligned = tirx.Var(staged_name, "int32")
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
        per_pixel = tirx.For(
            p_var,
            tirx.IntImm(dtype, first),
            tirx.IntImm(dtype, PIXELS - first),
            tirx.ForKind.UNROLLED,
            _seq(tail),
        )
        loop_o = nest.loop_o
        channels = tirx.For(
            loop_o.loop_var,
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
        in_bytes(a["xsy"]),
        in_bytes(a["xsx"]),
        n_bytes,
        pixel_stride,
        a["pad"],
    )
    pb = tirx.Var("pb", dtype)
    blocked = block(lambda p: pb * tirx.IntImm(dtype, PIXELS) + p, 0)
    pieces = [tirx.AllocBuffer(state), tirx.AllocBuffer(staged), tirx.Evaluate(setup)]
    pieces.append(tirx.For(pb, zero, tirx.IntImm(dtype, blocks), tirx.ForKind.SERIAL, blocked))
    left = pixels - blocks * PIXELS
    if left:
        # The last four pixels again, only the ``left`` new ones stored: a block in a row when the row
        # has four, its taps then read in place as any other block's.
        pieces.append(block(lambda p: tirx.IntImm(dtype, pixels - PIXELS) + p, PIXELS - left))
    return tirx.SeqStmt(pieces)


def _most_copies(nest: _Nest, window: tuple[int, int], steps: list[int]) -> int:
    """:func:`stage_copies` of ``nest``'s blocks; all taps (``kh * kw``) when the taps inside a pixel's
    window are not known when compiling. A row band's rows are not, but a row outside is outside for all
    four pixels of a block in one row: every row counts as inside."""
    kh, kw = window
    a, h, w = nest.args, nest.h, nest.w
    xs0, xs1 = _values(a["x0"], nest.loop_x.loop_var, w), _values(a["x1"], nest.loop_x.loop_var, w)
    ys0: list[int] | None
    ys1: list[int] | None
    if nest.loop_y is None:
        if any(uses(a[k], nest.loop_x.loop_var) for k in ("y0", "y1")):
            return kh * kw
        ys0, ys1 = [0], [kh]
    else:
        ys0, ys1 = _values(a["y0"], nest.loop_y.loop_var, h), _values(a["y1"], nest.loop_y.loop_var, h)
    if xs0 is None or xs1 is None or ys0 is None or ys1 is None:
        return kh * kw
    return stage_copies(list(zip(ys0, ys1, strict=True)), list(zip(xs0, xs1, strict=True)), kw, steps)


def stage_copies(rows: list[tuple[int, int]], cols: list[tuple[int, int]], kw: int, steps: list[int]) -> int:
    """The most taps ``tvmmcu_sparse_stage`` copies for one block of :func:`flat_blocks` (the last one
    included) over an output of ``len(rows)`` x ``len(cols)`` pixels, computing what it computes: a tap
    is read in place where it lies inside for the four pixels and their windows start ps bytes apart,
    at the padding rows where it lies outside for all four, else copied. ``rows[yy]`` / ``cols[xx]``:
    the window rows / columns inside, [y0, y1) / [x0, x1); ``steps``: the window start's bytes per
    output row and column (per column only for one row): the last is ps."""
    row_bits = [sum(1 << (ry * kw) for ry in range(y0, y1)) for y0, y1 in rows]
    col_bits = [sum(1 << rx for rx in range(x0, x1)) for x0, x1 in cols]
    w = len(cols)
    pixels, ps = len(rows) * w, steps[-1]

    def copied(flat: list[int]) -> int:
        at = [divmod(f, w) for f in flat]
        masks = [row_bits[y] * col_bits[x] for y, x in at]  # bit ry * kw + rx: the tap inside
        starts = [sum(c * v for c, v in zip(steps, (y, x)[-len(steps) :], strict=True)) for y, x in at]
        inside_all = masks[0] & masks[1] & masks[2] & masks[3]
        some = masks[0] | masks[1] | masks[2] | masks[3]
        in_row = all(starts[p] == starts[0] + p * ps for p in range(PIXELS))
        return bin(some & ~inside_all if in_row else some).count("1")

    blocks = [[b * PIXELS + p for p in range(PIXELS)] for b in range(pixels // PIXELS)]
    if pixels % PIXELS:
        blocks.append([pixels - PIXELS + p for p in range(PIXELS)])
    return max(copied(b) for b in blocks)


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


def row_blocks(loop_y: Any, four_of: Any, edge_of: Any, window_of: Any) -> Any | None:
    """The nest at ``loop_y`` with the runs of pixels whose windows lie inside taken four at a time by
    the four-pixel kernel ``four_of(one-pixel kernel)`` (``x, ps, xsy, xsx, kw, blob, O, o, n, acc``)
    in the rows whose windows lie inside, the rest through ``edge_of``; None when the nest is not that.
    ``window_of(blob)``: the kernel's (kh, kw), None when not known (then None). The kernel height is
    not the widest window's: an output whose every row reaches into the padding has no full row (fuzz
    seed 71: a 3-row kernel, stride 2 over 3 rows padded by one took its clipped 2-row windows for
    inside)."""
    nest = _nest(loop_y, rows=2)
    if nest is None:
        return None
    four_name = four_of(extern_name(nest.call))
    if four_name is None:
        return None
    a = nest.args
    assert nest.loop_y is not None  # a whole layer's nest
    yy, xx = nest.loop_y.loop_var, nest.loop_x.loop_var
    h, w = nest.h, nest.w
    ys0, ys1 = _values(a["y0"], yy, h), _values(a["y1"], yy, h)
    xs0, xs1 = _values(a["x0"], xx, w), _values(a["x1"], xx, w)
    if ys0 is None or ys1 is None or xs0 is None or xs1 is None:
        return None
    window = window_of(a["blob"])
    if window is None or window[1] != int(a["kw"]):
        return None
    kh, kw = window
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
        # Every row's windows inside: no test (nor the one-pixel branch, whose accumulator would be left
        # declared and unused once the test folds away: fuzz seed 384).
        fresh_variables(block)
        if rows == (0, h)
        else tirx.IfThenElse(full_rows, fresh_variables(block), singles),
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
