"""UseDotKernels: an integer reduction over contiguous data and weights becomes a dot-product call."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import (
    Analyzer,
    PrimFunc,
    TensorLoad,
    detect_linear_equation,
    structural_equal,
    structural_map,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.dot_kernels import COPY, DOT, RUNS, SCATTER, SUM, WINDOW
from tvm_mcu.passes.tir.each_function import Needs, from_zero, rewrite_each, uses
from tvm_mcu.passes.tir.float_kernels import DOT_F32, RUNS_F32, SCATTER_F32, WINDOW_F32

ATTR_DONE = "tvmmcu.dot_kernels"


def _strip_cast(expr: Any) -> Any | None:
    """``x`` of ``int32(x)``, or None."""
    if isinstance(expr, tirx.Cast) and str(expr.ty) == "int32":
        return expr.value
    return None


def _contiguous(load: Any, var: Any) -> Any | None:
    """``buf[base]`` (the element at the loop's first iteration, 0) when ``load`` reads a flat buffer at
    ``base + var``; None otherwise."""
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = detect_linear_equation(load.indices[0], [var])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm) or int(coeffs[0]) != 1:
        return None
    base = coeffs[1]
    if uses(base, var):
        return None
    return tirx.BufferLoad(load.source, [base])


def _conjuncts(cond: Any) -> list[Any]:
    if isinstance(cond, tirx.And):
        return _conjuncts(cond.a) + _conjuncts(cond.b)
    return [cond]


def _bound(test: Any, var: Any) -> tuple[str, Any] | None:
    """("lo", L) for a test equivalent to ``var >= L``, ("hi", U) for ``var < U``; None when ``test``
    is not a comparison linear in ``var`` with coefficient 1 or -1."""
    kinds = {tirx.LT: "<", tirx.LE: "<=", tirx.GT: ">", tirx.GE: ">="}
    op = next((o for t, o in kinds.items() if isinstance(test, t)), None)
    if op is None:
        return None
    coeffs = detect_linear_equation(test.a - test.b, [var])  # test: c * var + d (op) 0
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm) or uses(coeffs[1], var):
        return None
    c, d = int(coeffs[0]), coeffs[1]
    one = tirx.IntImm(str(d.ty), 1)
    bound: tuple[str, Any] | None = None
    if c == -1:  # -var + d (op) 0  is  var (flipped op) d
        bound = {"<": ("lo", d + one), "<=": ("lo", d), ">": ("hi", d), ">=": ("hi", d + one)}[op]
    elif c == 1:  # var (op) -d
        bound = {"<": ("hi", -d), "<=": ("hi", -d + one), ">": ("lo", -d + one), ">=": ("lo", -d)}[op]
    # One canonical form, whatever form the analysis returned the offset in.
    return None if bound is None else (bound[0], Analyzer().simplify(bound[1]))


def _padding(cond: Any, var: Any) -> tuple[Any, list[Any], list[Any]] | None:
    """(the conjuncts free of ``var`` as one condition or None, lower bounds, upper bounds on ``var``)
    of a window's padding test; None when a conjunct on ``var`` is no linear bound."""
    free: list[Any] = []
    lows: list[Any] = []
    highs: list[Any] = []
    for test in _conjuncts(cond):
        if not uses(test, var):
            free.append(test)
            continue
        bound = _bound(test, var)
        if bound is None:
            return None
        (lows if bound[0] == "lo" else highs).append(bound[1])
    outer = None
    for test in free:
        outer = test if outer is None else tirx.And(outer, test)
    return outer, lows, highs


def _operand(expr: Any, var: Any) -> tuple[Any, Any, Any] | None:
    """(element at the first iteration, padding test or None, padding value or None) of a data
    operand ``buf[base + var]`` or ``if_then_else(test, buf[base + var], value)``."""
    if isinstance(expr, tvm.ir.Call) and str(getattr(expr.op, "name", "")) == "prim.if_then_else":
        cond, then, other = expr.args
        first = _contiguous(then, var)
        if first is None or not isinstance(other, tirx.IntImm):
            return None
        return first, cond, other
    first = _contiguous(expr, var)
    return None if first is None else (first, None, None)


def _i32(e: Any) -> Any:
    return e if str(e.ty) == "int32" else tirx.Cast("int32", e)


def _shifted(load: Any, offset: Any) -> Any:
    """``&buf[base + offset]`` of ``buf[base]``."""
    if isinstance(offset, tirx.IntImm) and int(offset) == 0:
        return tirx.address_of(load)
    index = load.indices[0]
    return tirx.address_of(tirx.BufferLoad(load.source, [index + offset]))


def _accumulation(store: Any, loop_vars: list[Any], dtype: str) -> tuple[Any, Any] | None:
    """(acc[i], A * B) of ``acc[i] = acc[i] + A * B`` over a ``dtype`` accumulator with ``i`` free of
    the loops."""
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != dtype:
        return None
    value = store.value
    if not isinstance(value, tirx.Add) or not isinstance(value.b, tirx.Mul):
        return None
    acc = value.a
    if not (
        isinstance(acc, TensorLoad)
        and acc.source.same_as(store.buffer)
        and len(acc.indices) == len(store.indices)
        and all(structural_equal(a, b) for a, b in zip(acc.indices, store.indices, strict=True))
    ):
        return None
    if any(uses(i, v) for i in store.indices for v in loop_vars):
        return None
    return acc, value.b


def _mac(store: Any, loop_vars: list[Any]) -> tuple[Any, Any, Any] | None:
    """(acc[i], A, B) of ``acc[i] = acc[i] + int32(A) * int32(B)`` with ``i`` free of the loops."""
    found = _accumulation(store, loop_vars, "int32")
    if found is None:
        return None
    acc, product = found
    a, b = _strip_cast(product.a), _strip_cast(product.b)
    if a is None or b is None:
        return None
    return acc, a, b


def _rewrite(loop: Any) -> Any | None:
    """The call replacing ``loop``, or None when it is not a dot product the kernels compute."""
    if not from_zero(loop):
        return None
    var = loop.loop_var
    mac = _mac(loop.body, [var])
    if mac is None:
        return None
    acc, a, b = mac
    for data, weight in ((a, b), (b, a)):
        x = _operand(data, var)
        w = _contiguous(weight, var)
        if x is None or w is None:
            continue
        first, cond, pad = x
        name = DOT.get((str(first.source.dtype), str(w.source.dtype)))
        if name is None:
            continue
        return _calls(loop.body, acc, name, first, w, loop.extent, cond, pad, var)
    return None


# A run of at least this many contiguous taps is faster as dot products (4 taps per SMLAD pair) than
# tap by tap in a window.
MIN_DOT_TAPS = 8
# A window row of contiguous taps shorter than this stays in the window kernel, whose rows path takes
# it a word at a time with its padding in the words (a kernel row of an RGB input: 3 taps x 3
# channels); a longer one is the dot rule's.
MAX_WINDOW_ROW = 16


def _strides(load: Any, ry: Any, rx: Any) -> tuple[int, int, Any] | None:
    """(stride along ry, stride along rx, base) of a flat load ``buf[base + sy * ry + sx * rx]``."""
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = detect_linear_equation(load.indices[0], [ry, rx])
    if len(coeffs) != 3 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:2]):
        return None
    if uses(coeffs[2], ry) or uses(coeffs[2], rx):
        return None
    return int(coeffs[0]), int(coeffs[1]), coeffs[2]


def _nest(loop: Any, depth: int) -> tuple[list[Any], list[int], Any] | None:
    """(loop variables, constant extents, innermost body) of ``depth`` perfectly nested plain loops
    from 0 with constant extents starting at ``loop``; None otherwise."""
    loops = [loop]
    for _ in range(depth - 1):
        body = loops[-1].body
        if not isinstance(body, tirx.For):
            return None
        loops.append(body)
    if not all(from_zero(f) and isinstance(f.extent, tirx.IntImm) for f in loops):
        return None
    return [f.loop_var for f in loops], [int(f.extent) for f in loops], loops[-1].body


def _window(loop: Any) -> Any | None:
    """The call replacing a two-level window ``for ry: for rx: acc += x * w`` with strided taps."""
    nest = _nest(loop, 2)
    if nest is None:
        return None
    (ry, rx), (kh, kw), body = nest
    mac = _mac(body, [ry, rx])
    if mac is None:
        return None
    acc, a, b = mac
    for data, weight in ((a, b), (b, a)):
        cond, pad, load = None, 0, data
        if isinstance(data, tvm.ir.Call) and str(getattr(data.op, "name", "")) == "prim.if_then_else":
            cond, load, other = data.args
            if not isinstance(other, tirx.IntImm):
                continue
            pad = int(other)
        xs, ws = _strides(load, ry, rx), _strides(weight, ry, rx)
        if xs is None or ws is None:
            continue
        name = WINDOW.get((str(load.source.dtype), str(weight.source.dtype)))
        if name is None:
            continue
        if xs[1] == 1 and ws[1] == 1 and kw >= MAX_WINDOW_ROW:
            return None  # each row is a long dot product: the dot rule's
        bounds = _window_bounds(cond, ry, rx, kh, kw)
        if bounds is None:
            continue
        # (name, data load and strides, weight load and strides, window, padding value, accumulator)
        return _window_store(body, (name, load, xs, weight, ws, (kh, kw), pad, acc), bounds)
    return None


def _window_store(store: Any, fixed: tuple[Any, ...], bounds: tuple[Any, Any], run: int = 0) -> Any:
    """``store`` of the window kernel's call over the taps inside, under an ``if`` on the tests free of
    the window's loops (else every tap is padding)."""
    outer, taps = bounds
    inside = tirx.BufferStore(store.buffer, _window_call(fixed, taps, run), store.indices)
    if outer is None:
        return inside
    zero = tirx.IntImm(str(taps[0].ty), 0)
    # Every tap padding: the kernel reads no data, and its pointer is the buffer's start (the window's
    # origin may lie before it, a pointer C may not form: -Warray-bounds, fuzz seed 5302).
    padding = _window_call(fixed, (zero, zero, zero, zero), run, origin=zero)
    return tirx.IfThenElse(outer, inside, tirx.BufferStore(store.buffer, padding, store.indices))


def _window_call(
    fixed: tuple[Any, ...], taps: tuple[Any, Any, Any, Any], run: int = 0, origin: Any = None
) -> Any:
    """The window kernel's call for the taps [y0, y1) x [x0, x1) inside the input (``run``: the runs
    kernel's values per tap; ``origin``: the data index to pass instead of the first tap inside's)."""
    name, load, xs, weight, ws, (kh, kw), pad, acc = fixed
    y0, y1, x0, x1 = taps
    at = tirx.BufferLoad(load.source, [xs[2] + y0 * xs[0] + x0 * xs[1] if origin is None else origin])
    args = [tirx.address_of(at), _c(xs[0]), _c(xs[1])]
    args += [tirx.address_of(tirx.BufferLoad(weight.source, [ws[2]])), _c(ws[0]), _c(ws[1])]
    args += [_c(kh), _c(kw), *([_c(run)] if run else []), _i32(y0), _i32(y1), _i32(x0), _i32(x1)]
    args += [_c(pad), acc]
    return tirx.call_extern("int32", name, *args)


def _runs(loop: Any) -> Any | None:
    """The call replacing a window of runs ``for ry: for rx: for rc in [0, n): acc += x * w`` with ``rc``
    contiguous in both operands (an NHWC convolution's taps of input channels) and ``n`` at least
    ``MIN_DOT_TAPS``: the runs kernel, one call for the whole window."""
    nest = _nest(loop, 3)
    if nest is None:
        return None
    (ry, rx, rc), (kh, kw, n), body = nest
    if n < MIN_DOT_TAPS:
        return None
    mac = _mac(body, [ry, rx, rc])
    if mac is None:
        return None
    acc, a, b = mac
    for data, weight in ((a, b), (b, a)):
        cond, pad, load = None, 0, data
        if isinstance(data, tvm.ir.Call) and str(getattr(data.op, "name", "")) == "prim.if_then_else":
            cond, load, other = data.args
            if not isinstance(other, tirx.IntImm) or uses(cond, rc):
                continue
            pad = int(other)
        xs, ws = _strides3(load, ry, rx, rc), _strides3(weight, ry, rx, rc)
        if xs is None or ws is None:
            continue
        name = RUNS.get((str(load.source.dtype), str(weight.source.dtype)))
        if name is None:
            continue
        bounds = _window_bounds(cond, ry, rx, kh, kw)
        if bounds is None:
            continue
        return _window_store(body, (name, load, xs, weight, ws, (kh, kw), pad, acc), bounds, n)
    return None


def _strides3(load: Any, ry: Any, rx: Any, rc: Any) -> tuple[int, int, Any] | None:
    """(stride along ry, stride along rx, base) of a flat load ``buf[base + sy * ry + sx * rx + rc]``."""
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = detect_linear_equation(load.indices[0], [ry, rx, rc])
    if len(coeffs) != 4 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:3]) or int(coeffs[2]) != 1:
        return None
    if any(uses(coeffs[3], v) for v in (ry, rx, rc)):
        return None
    return int(coeffs[0]), int(coeffs[1]), coeffs[3]


def _c(v: int) -> Any:
    return tirx.IntImm("int32", v)


def _window_bounds(
    cond: Any, ry: Any, rx: Any, kh: int, kw: int
) -> tuple[Any, tuple[Any, Any, Any, Any]] | None:
    """(the test's conjuncts on neither loop, (y0, y1, x0, x1)): the taps inside the input, clamped to
    the window; the whole window without a test. None when a conjunct is no bound of one loop."""
    dtype = str(ry.ty)
    full = (tirx.IntImm(dtype, 0), tirx.IntImm(dtype, kh), tirx.IntImm(dtype, 0), tirx.IntImm(dtype, kw))
    if cond is None:
        return None, full
    outer = None
    lows: dict[str, list[Any]] = {"y": [], "x": []}
    highs: dict[str, list[Any]] = {"y": [], "x": []}
    for test in _conjuncts(cond):
        on_y, on_x = uses(test, ry), uses(test, rx)
        if on_y and on_x:
            return None
        if not on_y and not on_x:
            outer = test if outer is None else tirx.And(outer, test)
            continue
        axis, var = ("y", ry) if on_y else ("x", rx)
        bound = _bound(test, var)
        if bound is None:
            return None
        (lows if bound[0] == "lo" else highs)[axis].append(bound[1])
    ranges = []
    for axis, extent in (("y", kh), ("x", kw)):
        n = tirx.IntImm(dtype, extent)
        lo: Any = tirx.IntImm(dtype, 0)
        for b in lows[axis]:
            lo = tirx.Max(lo, b)
        lo = tirx.Min(lo, n)
        hi: Any = n
        for b in highs[axis]:
            hi = tirx.Min(hi, b)
        ranges += [lo, tirx.Max(hi, lo)]
    return outer, (ranges[0], ranges[1], ranges[2], ranges[3])


def _calls(
    store: Any, acc: Any, name: str, first: Any, w: Any, n: Any, cond: Any, pad: Any, var: Any
) -> Any | None:
    """The statement computing ``store`` with the kernels: one dot product, or, for a window that may
    reach into the padding, a dot product over the taps inside and padding sums for the rest. Bounds
    are computed in the loop variable's type (NarrowDataType later narrows them with the loops); only
    the counts passed to the kernels are int32."""

    def update(value: Any) -> Any:
        return tirx.BufferStore(store.buffer, value, store.indices)

    def dot(lo: Any, count: Any) -> Any:
        return tirx.call_extern("int32", name, _shifted(first, lo), _shifted(w, lo), _i32(count), acc)

    zero = tirx.IntImm(str(var.ty), 0)
    if cond is None:
        return update(dot(zero, n))
    parts = _padding(cond, var)
    if parts is None:
        return None
    outer, lows, highs = parts
    value = tirx.IntImm("int32", int(pad))
    summed = str(w.source.dtype)

    def pad_sum(lo: Any, count: Any) -> Any:
        return tirx.call_extern("int32", SUM[summed], _shifted(w, lo), _i32(count), value, acc)

    everything = update(pad_sum(zero, n))
    if not lows and not highs:  # the test does not depend on the loop: all taps inside, or none
        inside = update(dot(zero, n))
        return tirx.IfThenElse(outer, inside, everything) if outer is not None else inside
    # Taps [lo, hi) lie inside the input: lo = clamp(max(lows), 0, n), hi = clamp(min(highs), lo, n).
    lo: Any = zero
    for bound in lows:
        lo = tirx.Max(lo, bound)
    lo = tirx.Min(lo, n)
    hi: Any = n
    for bound in highs:
        hi = tirx.Min(hi, bound)
    hi = tirx.Max(hi, lo)
    body = tirx.SeqStmt([update(dot(lo, hi - lo)), update(pad_sum(zero, lo)), update(pad_sum(hi, n - hi))])
    return tirx.IfThenElse(outer, body, everything) if outer is not None else body


def _fused(loop: Any) -> Any | None:
    """``for k in [0, K * C)`` for ``for rx in [0, K): for rc in [0, C): acc += X * W`` whose operands
    run contiguously across ``rx`` (stride ``C`` along ``rx``, 1 along ``rc``, in both) and ``C`` is
    less than ``MIN_DOT_TAPS`` (an RGB input's 3 channels): the taps of a kernel row as one run, which
    the window rule then takes row by row. A padding test's bounds on ``rx`` become bounds on ``k``
    (``rx >= L`` is ``k >= L * C``, ``rx < U`` is ``k < U * C``); None otherwise."""
    inner = loop.body
    if not from_zero(loop) or not isinstance(inner, tirx.For) or not from_zero(inner):
        return None
    if not isinstance(loop.extent, tirx.IntImm) or not isinstance(inner.extent, tirx.IntImm):
        return None
    rx, rc = loop.loop_var, inner.loop_var
    kw, c = int(loop.extent), int(inner.extent)
    store = inner.body
    mac = _mac(store, [rx, rc])
    if mac is None or kw < 2 or c >= MIN_DOT_TAPS:
        return None  # runs of MIN_DOT_TAPS or more: the runs kernel's
    acc, a, b = mac
    k = tirx.Var(f"{rx.name}_{rc.name}", str(rx.ty))
    dtype = str(k.ty)

    def run(load: Any) -> Any | None:
        strides = _strides(load, rx, rc)
        if strides is None or strides[0] != c or strides[1] != 1:
            return None
        return tirx.BufferLoad(load.source, [strides[2] + k])

    def operand(expr: Any) -> Any | None:
        if isinstance(expr, tvm.ir.Call) and str(getattr(expr.op, "name", "")) == "prim.if_then_else":
            cond, then, other = expr.args
            load = run(then)
            if load is None or not isinstance(other, tirx.IntImm):
                return None
            tests = []
            for test in _conjuncts(cond):
                if uses(test, rc):
                    return None
                if not uses(test, rx):
                    tests.append(test)
                    continue
                bound = _bound(test, rx)
                if bound is None:
                    return None
                limit = bound[1] * tirx.IntImm(str(bound[1].ty), c)
                limit = limit if str(limit.ty) == dtype else tirx.Cast(dtype, limit)
                tests.append(k >= limit if bound[0] == "lo" else k < limit)
            new_cond = tests[0]
            for test in tests[1:]:
                new_cond = tirx.And(new_cond, test)
            return tirx.if_then_else(new_cond, load, other)
        return run(expr)

    fa, fb = operand(a), operand(b)
    if fa is None or fb is None:
        return None
    value = tirx.Add(acc, tirx.Mul(tirx.Cast("int32", fa), tirx.Cast("int32", fb)))
    body = tirx.BufferStore(store.buffer, value, store.indices)
    return tirx.For(k, tirx.IntImm(dtype, 0), tirx.IntImm(dtype, kw * c), tirx.ForKind.SERIAL, body)


# A copy loop of at least this many bytes becomes a word-at-a-time copy call.
MIN_COPY_BYTES = 8


def _copy(loop: Any) -> Any | None:
    """``tvmmcu_dot_copy8(&A[a], &B[b], n)`` for ``for i in [0, n): A[a + i] = B[b + i]`` over 8-bit
    buffers (an in-place kernel's staged output written back), ``n >= MIN_COPY_BYTES`` constant, the
    two buffers distinct; None otherwise."""
    if not from_zero(loop) or not isinstance(loop.extent, tirx.IntImm) or int(loop.extent) < MIN_COPY_BYTES:
        return None
    store = loop.body
    if not isinstance(store, tirx.BufferStore) or len(store.indices) != 1:
        return None
    var = loop.loop_var
    dst = _contiguous(tirx.BufferLoad(store.buffer, store.indices), var)
    src = _contiguous(store.value, var)
    if dst is None or src is None or dst.source.same_as(src.source):
        return None
    if str(dst.source.dtype) != str(src.source.dtype) or str(dst.source.dtype) not in ("int8", "uint8"):
        return None
    call = tirx.call_extern("int32", COPY, tirx.address_of(dst), tirx.address_of(src), _i32(loop.extent))
    return tirx.Evaluate(call)


def _scatter(loop: Any) -> Any | None:
    """``tvmmcu_dot_scatter8(&A[a], S, &B[b], H * W)`` for ``for y in [0, H): for x in [0, W):
    A[a + y * W * S + x * S] = B[b + y * W + x]`` over distinct 8-bit buffers (a depthwise
    convolution's staged plane written back between the other channels), ``H * W >= MIN_COPY_BYTES``;
    None otherwise."""
    inner = loop.body
    if not from_zero(loop) or not isinstance(inner, tirx.For) or not from_zero(inner):
        return None
    if not isinstance(loop.extent, tirx.IntImm) or not isinstance(inner.extent, tirx.IntImm):
        return None
    h, w = int(loop.extent), int(inner.extent)
    store = inner.body
    if h * w < MIN_COPY_BYTES or not isinstance(store, tirx.BufferStore) or len(store.indices) != 1:
        return None
    y, x = loop.loop_var, inner.loop_var
    dst = _strides(tirx.BufferLoad(store.buffer, store.indices), y, x)
    src = _strides(store.value, y, x)
    if dst is None or src is None or store.buffer.same_as(store.value.source):
        return None
    dtype = str(store.buffer.dtype)
    if dtype != str(store.value.source.dtype) or dtype not in ("int8", "uint8"):
        return None
    if src[1] != 1 or src[0] != w or dst[0] != w * dst[1] or dst[1] < 1:
        return None
    first = tirx.address_of(tirx.BufferLoad(store.buffer, [dst[2]]))
    source = tirx.address_of(tirx.BufferLoad(store.value.source, [src[2]]))
    return tirx.Evaluate(tirx.call_extern("int32", SCATTER, first, _c(dst[1]), source, _c(h * w)))


# Float32 rules: the same loops over float32 data, weights and accumulator (no casts), the padding
# zero (its taps add nothing, so the kernels visit the taps inside only), the weights at any constant
# stride along the reduction (TVM's HWIO layout puts the output channels in between).


def _mac_f32(store: Any, loop_vars: list[Any]) -> tuple[Any, Any, Any] | None:
    """(acc[i], A, B) of ``acc[i] = acc[i] + A * B`` over float32 ``acc`` with ``i`` free of the loops."""
    found = _accumulation(store, loop_vars, "float32")
    if found is None:
        return None
    acc, product = found
    a, b = product.a, product.b
    if str(a.ty) != "float32" or str(b.ty) != "float32":
        return None
    return acc, a, b


def _zero_padded(expr: Any) -> tuple[Any, Any]:
    """(test, value) of ``if_then_else(test, value, 0.0)``; (None, expr) for anything else. A padding
    value other than zero is no padding the float kernels leave out: (None, expr), which no rule
    takes as a load."""
    if isinstance(expr, tvm.ir.Call) and str(getattr(expr.op, "name", "")) == "prim.if_then_else":
        cond, then, other = expr.args
        if isinstance(other, tirx.FloatImm) and float(other.value) == 0.0:
            return cond, then
    return None, expr


def _strided(load: Any, var: Any) -> tuple[int, Any] | None:
    """(stride, ``buf[base]``) of a flat load ``buf[base + stride * var]`` with a constant stride."""
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = detect_linear_equation(load.indices[0], [var])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm) or uses(coeffs[1], var):
        return None
    return int(coeffs[0]), tirx.BufferLoad(load.source, [coeffs[1]])


def _fold(expr: Any) -> Any:
    """``expr`` with its ``min`` and ``max`` of two constants folded (a window's axis without padding
    tests clamps constants)."""

    def fold(node: Any) -> Any:
        if isinstance(node.a, tirx.IntImm) and isinstance(node.b, tirx.IntImm):
            pick = min if isinstance(node, tirx.Min) else max
            return tirx.IntImm(str(node.ty), pick(int(node.a), int(node.b)))
        return node

    return structural_map(expr, ((tirx.Min, tirx.Max), fold))


def _float_bounds(
    cond: Any, ry: Any, rx: Any, kh: int, kw: int
) -> tuple[Any, tuple[Any, Any, Any, Any]] | None:
    """:func:`_window_bounds` with the clamps of constants folded."""
    bounds = _window_bounds(cond, ry, rx, kh, kw)
    if bounds is None:
        return None
    outer, (y0, y1, x0, x1) = bounds
    return outer, (_fold(y0), _fold(y1), _fold(x0), _fold(x1))


def _guarded(outer: Any, store: Any) -> Any:
    """``store`` under ``if outer`` (else every tap is zero padding: the accumulator stays)."""
    return store if outer is None else tirx.IfThenElse(outer, store, None)


def _float_dot(loop: Any) -> Any | None:
    """``acc = tvmmcu_dot_f32(&x[a + lo], &w[b + lo * s], s, hi - lo, acc)`` for ``for v in [0, n):
    acc += X * w[b + s * v]`` with ``X = x[a + v]`` or ``if_then_else(c, x[a + v], 0.0)``, the taps
    ``[lo, hi)`` inside (under an ``if`` on the tests free of ``v``); None otherwise."""
    if not from_zero(loop):
        return None
    var = loop.loop_var
    mac = _mac_f32(loop.body, [var])
    if mac is None:
        return None
    acc, a, b = mac
    for data, weight in ((a, b), (b, a)):
        cond, load = _zero_padded(data)
        first = _contiguous(load, var)
        w = _strided(weight, var)
        if first is None or w is None:
            continue
        name = DOT_F32.get((str(first.source.dtype), str(w[1].source.dtype)))
        if name is None:
            continue
        stride, w_first = w
        zero = tirx.IntImm(str(var.ty), 0)
        lo, hi, outer = zero, loop.extent, None
        if cond is not None:
            parts = _padding(cond, var)
            if parts is None:
                continue
            # Taps [lo, hi) lie inside: lo = clamp(max(lows), 0, n), hi = clamp(min(highs), lo, n).
            outer, lows, highs = parts
            for bound in lows:
                lo = tirx.Max(lo, bound)
            if lows:
                lo = tirx.Min(lo, loop.extent)
            for bound in highs:
                hi = tirx.Min(hi, bound)
            if highs:
                hi = tirx.Max(hi, lo)
        w_lo = lo if lo is zero else lo * tirx.IntImm(str(var.ty), stride)
        count = _i32(hi if lo is zero else hi - lo)
        call = tirx.call_extern(
            "float32", name, _shifted(first, lo), _shifted(w_first, w_lo), _c(stride), count, acc
        )
        return _guarded(outer, tirx.BufferStore(loop.body.buffer, call, loop.body.indices))
    return None


def _float_window(loop: Any) -> Any | None:
    """``acc = tvmmcu_dot_win_f32(&x[first tap inside], xsy, xsx, &w[b], wsy, wsx, kh, kw, y0, y1, x0,
    x1, acc)`` for a window ``for ry in [0, kh): for rx in [0, kw): acc += X * W`` with constant
    strides in both operands (a depthwise window, a single input channel's taps); None otherwise."""
    nest = _nest(loop, 2)
    if nest is None:
        return None
    (ry, rx), (kh, kw), body = nest
    mac = _mac_f32(body, [ry, rx])
    if mac is None:
        return None
    acc, a, b = mac
    for data, weight in ((a, b), (b, a)):
        cond, load = _zero_padded(data)
        xs, ws = _strides(load, ry, rx), _strides(weight, ry, rx)
        if xs is None or ws is None:
            continue
        name = WINDOW_F32.get((str(load.source.dtype), str(weight.source.dtype)))
        if name is None:
            continue
        bounds = _float_bounds(cond, ry, rx, kh, kw)
        if bounds is None:
            continue
        weights = (weight.source, ws[2], ws[:2])
        return _float_call(name, body, load, xs, weights, (kh, kw), (), bounds, acc)
    return None


def _float_runs(loop: Any) -> Any | None:
    """``acc = tvmmcu_dot_runs_f32(&x[first tap inside], xsy, xsx, &w[b], wsy, wsx, wc, kh, kw, n, y0,
    y1, x0, x1, acc)`` for ``for ry in [0, kh): for rx in [0, kw): for rc in [0, n): acc += X * W`` with
    ``rc`` contiguous in the data and ``wc`` apart in the weights (an NHWC convolution's taps of input
    channels); None otherwise."""
    nest = _nest(loop, 3)
    if nest is None:
        return None
    (ry, rx, rc), (kh, kw, n), body = nest
    mac = _mac_f32(body, [ry, rx, rc])
    if mac is None:
        return None
    acc, a, b = mac
    for data, weight in ((a, b), (b, a)):
        cond, load = _zero_padded(data)
        if cond is not None and uses(cond, rc):
            continue
        xs = _strides3(load, ry, rx, rc)
        ws = _weight_strides3(weight, ry, rx, rc)
        if xs is None or ws is None:
            continue
        name = RUNS_F32.get((str(load.source.dtype), str(weight.source.dtype)))
        if name is None:
            continue
        bounds = _float_bounds(cond, ry, rx, kh, kw)
        if bounds is None:
            continue
        weights = (weight.source, ws[3], ws[:3])
        return _float_call(name, body, load, xs, weights, (kh, kw), (n,), bounds, acc)
    return None


def _float_call(
    name: str,
    store: Any,
    load: Any,
    xs: tuple[int, int, Any],
    weights: tuple[Any, Any, tuple[int, ...]],
    window: tuple[int, int],
    run: tuple[int, ...],
    bounds: tuple[Any, tuple[Any, Any, Any, Any]],
    acc: Any,
) -> Any:
    """``store`` of a float window or runs kernel's call: the data from the first tap inside, the
    weights (buffer, base, strides), the window, the run length (runs only), the taps inside."""
    outer, (y0, y1, x0, x1) = bounds
    source, base, strides = weights
    at = tirx.BufferLoad(load.source, [xs[2] + y0 * xs[0] + x0 * xs[1]])
    args = [tirx.address_of(at), _c(xs[0]), _c(xs[1])]
    args += [tirx.address_of(tirx.BufferLoad(source, [base])), *(_c(v) for v in strides)]
    args += [_c(window[0]), _c(window[1]), *(_c(v) for v in run), _i32(y0), _i32(y1), _i32(x0), _i32(x1)]
    call = tirx.call_extern("float32", name, *args, acc)
    return _guarded(outer, tirx.BufferStore(store.buffer, call, store.indices))


def _weight_strides3(load: Any, ry: Any, rx: Any, rc: Any) -> tuple[int, int, int, Any] | None:
    """(strides along ry, rx and rc, base) of a flat load ``buf[base + sy * ry + sx * rx + sc * rc]``."""
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = detect_linear_equation(load.indices[0], [ry, rx, rc])
    if len(coeffs) != 4 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:3]):
        return None
    if any(uses(coeffs[3], v) for v in (ry, rx, rc)):
        return None
    return int(coeffs[0]), int(coeffs[1]), int(coeffs[2]), coeffs[3]


# A float copy of at least this many values becomes a call (four values a step).
MIN_COPY_FLOATS = 8


def _float_scatter(loop: Any) -> Any | None:
    """``tvmmcu_dot_scatter_f32(&A[a], S, &B[b], n)`` for a float32 copy ``for i in [0, n): A[a + i * S]
    = B[b + i]`` or ``for y in [0, H): for x in [0, W): A[a + (y * W + x) * S] = B[b + y * W + x]``
    (n = H * W) between distinct buffers, ``n >= MIN_COPY_FLOATS``: an in-place operator's staged
    output written back; None otherwise."""
    if not from_zero(loop) or not isinstance(loop.extent, tirx.IntImm):
        return None
    inner = loop.body
    if isinstance(inner, tirx.For):
        if not from_zero(inner) or not isinstance(inner.extent, tirx.IntImm):
            return None
        y, x = loop.loop_var, inner.loop_var
        store, w, n = inner.body, int(inner.extent), int(loop.extent) * int(inner.extent)
        if not isinstance(store, tirx.BufferStore) or len(store.indices) != 1:
            return None
        dst = _strides(tirx.BufferLoad(store.buffer, store.indices), y, x)
        src = _strides(store.value, y, x)
        if dst is None or src is None or src[1] != 1 or src[0] != w or dst[0] != w * dst[1]:
            return None
        stride, dst_base, src_base = dst[1], dst[2], src[2]
    else:
        store, n, var = inner, int(loop.extent), loop.loop_var
        if not isinstance(store, tirx.BufferStore) or len(store.indices) != 1:
            return None
        dst1 = _strided(tirx.BufferLoad(store.buffer, store.indices), var)
        src1 = _contiguous(store.value, var)
        if dst1 is None or src1 is None:
            return None
        stride, dst_base, src_base = dst1[0], dst1[1].indices[0], src1.indices[0]
    if n < MIN_COPY_FLOATS or stride < 1 or store.buffer.same_as(store.value.source):
        return None
    if str(store.buffer.dtype) != "float32" or str(store.value.source.dtype) != "float32":
        return None
    first = tirx.address_of(tirx.BufferLoad(store.buffer, [dst_base]))
    source = tirx.address_of(tirx.BufferLoad(store.value.source, [src_base]))
    return tirx.Evaluate(tirx.call_extern("int32", SCATTER_F32, first, _c(stride), source, _c(n)))


def use_float_kernels(body: Any) -> Any:
    """``body`` with its float32 reductions and copies as kernel calls: windows of runs first (their
    inner loops are dot products too), then windows, then dot products, then copies."""
    body = structural_map(body, (tirx.For, lambda loop: _float_runs(loop) or loop))
    body = structural_map(body, (tirx.For, lambda loop: _float_window(loop) or loop))
    body = structural_map(body, (tirx.For, lambda loop: _float_dot(loop) or loop))
    return structural_map(body, (tirx.For, lambda loop: _float_scatter(loop) or loop))


def use_dot_kernels(func: PrimFunc) -> PrimFunc:
    # Windows of runs first (their innermost loops are dot products too), then windows: a window's inner
    # loop may also be a (too short) row of contiguous taps.
    body = structural_map(func.body, (tirx.For, lambda loop: _runs(loop) or loop))
    # A kernel row of short runs that follow each other (NHWC data, OHWI weights, few input channels)
    # becomes one run, which the window rule then takes row by row.
    body = structural_map(body, (tirx.For, lambda loop: _fused(loop) or loop))
    body = structural_map(body, (tirx.For, lambda loop: _window(loop) or loop))
    body = structural_map(body, (tirx.For, lambda loop: _rewrite(loop) or loop))
    body = structural_map(body, (tirx.For, lambda loop: _copy(loop) or _scatter(loop) or loop))
    body = use_float_kernels(body)
    return func.with_body(body).with_attr(ATTR_DONE, True)


@tvm.transform.module_pass(opt_level=0, name="UseDotKernels")
class UseDotKernels:
    """Replace an integer convolution's or dense layer's reduction loops by calls to the micro-kernels
    of the library's ``tvmmcu_dot.h`` (SMLAD on Cortex-M cores with DSP, plain C elsewhere).

    Matches
        (dot) a serial loop ``for v in [0, n)`` whose body is only ``acc[i] = acc[i] + int32(X) *
        int32(W)`` (either operand order) with ``acc`` int32, ``i`` free of ``v``, ``W = w[b + v]`` int8
        and ``X = x[a + v]`` int8 or uint8, or ``X = if_then_else(c, x[a + v], z)`` with ``z`` a
        constant (a tap that may lie in the padding, which holds ``z``) and ``c`` a conjunction of tests
        free of ``v`` and linear bounds on ``v``;
        (window) two such loops ``for ry in [0, kh): for rx in [0, kw)`` around that body with both
        operands' flat indices linear in ``ry`` and ``rx`` with constant strides (a depthwise window,
        channels apart; a row of fewer than ``MIN_DOT_TAPS`` contiguous taps), ``c``'s tests each on
        one of the loops or neither;
        (runs) three such loops ``for ry: for rx: for rc in [0, n)`` with ``rc`` contiguous in both
        operands and ``n >= MIN_DOT_TAPS`` (an NHWC convolution's taps, each ``n`` input channels),
        ``c``'s tests on ``ry``, ``rx`` or neither; (fused row) ``for rx in [0, K): for rc in [0, C)``
        contiguous across ``rx`` in both operands with ``C < MIN_DOT_TAPS`` (an RGB input) becomes one
        loop over ``K * C``, its bounds on ``rx`` scaled by ``C``, for the window rule; (copy)
        ``for i in [0, n): A[a + i] = B[b + i]`` over distinct 8-bit buffers, ``n >= MIN_COPY_BYTES``
        (an in-place kernel's staged output written back), or ``for y: for x: A[a + (y * W + x) * S]
        = B[b + y * W + x]`` (a depthwise plane written back between the channels). Runs are matched
        first, then fused rows, then windows, dot products and copies. Flat buffers: after
        FlattenBuffer.
        (float32) the same dot, window and runs loops over float32 ``acc``, ``X`` and ``W`` without
        casts (``acc[i] = acc[i] + X * W``), ``X``'s padding value ``0.0``, ``W`` at any constant
        stride along the reduction (TVM's HWIO weights: the output channels in between); and float32
        copies ``for i in [0, n): A[a + i * S] = B[b + i]`` (or the plane form above) of at least
        ``MIN_COPY_FLOATS`` values between distinct buffers.
    Rewrites to
        (dot) ``acc[i] = tvmmcu_dot_s8s8(&x[a], &w[b], n, acc[i])`` (``_u8s8`` for uint8 data); with a
        test, the taps inside ``[lo, hi)`` (the bounds clamped to the loop) in one such call and
        ``tvmmcu_dot_sum_s8`` adding ``z`` times the weights of the taps before and after, under an
        ``if`` on the tests free of ``v`` (else every tap is padding);
        (window) one ``tvmmcu_dot_win_s8s8`` call with the strides, the window's size and the rows and
        columns of taps inside the input; (runs) one ``tvmmcu_dot_runs_s8s8`` call likewise, with the
        run length ``n``; (copy) ``tvmmcu_dot_copy8(&A[a], &B[b], n)`` or
        ``tvmmcu_dot_scatter8(&A[a], S, &B[b], H * W)``, a word of the source at a time.
        (float32) ``acc[i] = tvmmcu_dot_f32(&x[a + lo], &w[b + lo * s], s, hi - lo, acc[i])``,
        ``tvmmcu_dot_win_f32`` (the window kernel's arguments without the padding value) and
        ``tvmmcu_dot_runs_f32`` (the weights' stride along the runs after the taps'), each over the
        taps inside only, under an ``if`` on the tests free of the loops (else the accumulator stays);
        ``tvmmcu_dot_scatter_f32(&A[a], S, &B[b], n)``.
    Declines when
        a loop does not start at 0, has a step or another kind, or a non-constant extent (window), the
        body does anything else, an operand is neither contiguous nor a constant-stride window, a test
        is no bound of one loop, or the dtypes have no kernel (int16 weights, float16, float32 mixed
        with other types), a float padding value is not zero (its taps would add to the sum); or the
        function already carries ``tvmmcu.dot_kernels``.
    Numerics
        integer: unchanged, the kernels add the same int32 products, and the padding's value times
        its taps' weights, in the same modular arithmetic. float32: each accumulator adds the same
        products in the loop's order, the padding's zero products left out (``x + 0.0 * w`` is ``x``
        for finite weights); GCC may contract a multiply-add to a fused one where the loop's C was not
        (rounding once instead of twice): within float32 rounding of the loop, not bit-identical.
    Ordering
        after FlattenBuffer and HoistReductionInit (flat indices, the accumulator's initialisation out
        of the loop), before LoopPartition and UnrollLoop (which would split or unroll the loops).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, use_dot_kernels, name="UseDotKernels", needs=Needs(flat=True))
