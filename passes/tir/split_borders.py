"""SplitBorders: an output loop split where its padding clamps change, so the interior has none."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import (
    Analyzer,
    PrimFunc,
    detect_linear_equation,
    structural_map,
    structural_walk,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.dot_kernels import HELPER_PREFIX, STAGE, WINDOW, WINDOW_UNROLL_TAPS
from tvm_mcu.passes.tir.each_function import (
    constant_extent,
    extern_name,
    fresh_buffers,
    fresh_variables,
    rewrite_each,
    substitute,
    uses,
)
from tvm_mcu.passes.tir.float_kernels import WINDOW_F32

ATTR_DONE = "tvmmcu.borders_split"


def _kernel_arguments(body: Any, pieces: list[Any]) -> list[Any]:
    """The arguments of the dot-product kernels' calls in ``body`` that sit directly in output loops:
    every loop between ``body`` and the call moves the call's clamps or is a piece of an output loop
    split already (``pieces``: its clamps are gone) (a call inside a reduction loop,
    as over an NCHW convolution's input channels, would be copied with that whole loop: flash). Dot
    products', and windows' of at most ``WINDOW_UNROLL_TAPS`` taps (larger ones stay one general call)."""
    args: list[Any] = []
    windows = set(WINDOW.values()) | set(WINDOW_F32.values())

    def calls(node: Any) -> list[Any]:
        found: list[Any] = []

        def visit(call: Any) -> None:
            name = extern_name(call)
            # A staged window (StageWindows) fills its padding at run time: one copy of the loop.
            if not name.startswith(HELPER_PREFIX) or name == STAGE:
                return
            if name in windows and int(call.args[7]) * int(call.args[8]) > WINDOW_UNROLL_TAPS:
                return
            found.append(call)

        structural_walk(node, (tvm.ir.Call, visit))
        return found

    def walk(stmt: Any, loops: list[Any]) -> None:
        if isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                walk(s, loops)
        elif isinstance(stmt, tirx.For):
            walk(stmt.body, [*loops, stmt.loop_var])
        elif isinstance(stmt, tirx.IfThenElse):
            walk(stmt.then_case, loops)
            if stmt.else_case is not None:
                walk(stmt.else_case, loops)
        elif isinstance(stmt, tirx.BufferStore | tirx.Evaluate):
            for call in calls(stmt):
                clamps = _clamps(call.args[1:])
                moved = (any(uses(c, v) for c in clamps) or any(v.same_as(p) for p in pieces) for v in loops)
                if all(moved):
                    args.extend(call.args[1:])

    walk(body, [])
    return args


def _clamps(args: list[Any]) -> list[Any]:
    """The ``max`` and ``min`` expressions in ``args``."""
    found: list[Any] = []
    for arg in args:
        structural_walk(arg, ((tirx.Max, tirx.Min), found.append))
    return found


def _interior(args: list[Any], var: Any, extent: int) -> tuple[int, int]:
    """The range [lo, hi) of ``var`` where every clamp ``max(k, c * var + d)`` / ``min(k, c * var + d)``
    in the kernels' arguments (``k``, ``c``, ``d`` constants) takes its constant side ``k``."""
    lo, hi = 0, extent

    def visit(node: Any) -> None:
        nonlocal lo, hi
        if not isinstance(node, tirx.Max | tirx.Min):
            return
        for fixed, moving in ((node.a, node.b), (node.b, node.a)):
            if not isinstance(fixed, tirx.IntImm) or not uses(moving, var):
                continue
            coeffs = detect_linear_equation(moving, [var])
            if len(coeffs) != 2 or not all(isinstance(c, tirx.IntImm) for c in coeffs):
                continue
            c, d, k = int(coeffs[0]), int(coeffs[1]), int(fixed)
            if c == 0:
                continue
            # max takes k while c * v + d <= k; min while c * v + d >= k.
            below = isinstance(node, tirx.Max)
            if (c > 0) == below:  # v <= floor((k - d) / c)
                hi = min(hi, (k - d) // c + 1)
            else:  # v >= ceil((k - d) / c)
                lo = max(lo, -((d - k) // c))
            return

    for arg in args:
        structural_walk(arg, visit)
    return lo, hi


def _split(loop: Any, pieces: list[Any]) -> Any | None:
    extent = constant_extent(loop)
    if extent is None:
        return None
    args = _kernel_arguments(loop.body, pieces)
    if not args:
        return None
    lo, hi = _interior(args, loop.loop_var, extent)
    if hi <= lo:  # no pixel has its whole window inside
        return None
    edges = [0, *(p for p in (lo, hi) if 0 < p < extent), extent]
    ranges = list(zip(edges, edges[1:], strict=False))
    if len(ranges) < 2:
        return None
    var = loop.loop_var
    dtype = str(var.ty)
    loops = []
    for start, stop in ranges:
        fresh = tirx.Var(var.name, dtype)
        pieces.append(fresh)
        body = _simplified(
            fresh_buffers(fresh_variables(substitute(loop.body, var, fresh))), fresh, start, stop
        )
        loops.append(
            tirx.For(
                fresh,
                tirx.IntImm(dtype, start),
                tirx.IntImm(dtype, stop - start),
                loop.kind,
                body,
                loop.thread_binding,
                loop.annotations,
            )
        )
    return tirx.SeqStmt(loops)


def _simplified(body: Any, var: Any, start: int, stop: int) -> Any:
    """``body`` with every clamp over ``var`` simplified for ``var`` in [start, stop)."""
    ana = Analyzer()
    ana.bind(var, tvm.ir.Range(tirx.IntImm(str(var.ty), start), tirx.IntImm(str(var.ty), stop)))

    def on_clamp(node: Any) -> Any:
        constant = isinstance(node.a, tirx.IntImm) and isinstance(node.b, tirx.IntImm)
        return ana.simplify(node) if constant or uses(node, var) else node

    return structural_map(body, ((tirx.Max, tirx.Min), on_clamp))


def split_borders(func: PrimFunc) -> PrimFunc:
    pieces: list[Any] = []  # the loop variables of the pieces made so far (inner loops first)
    body = structural_map(func.body, (tirx.For, lambda loop: _split(loop, pieces) or loop))
    return func.with_body(body).with_attr(ATTR_DONE, True)


@tvm.transform.module_pass(opt_level=0, name="SplitBorders")
class SplitBorders:
    """Split an output loop where the clamps of its windows' taps change, so that its interior calls
    the kernels with constant tap ranges (the inlined kernel then has no test per pixel).

    Matches
        a serial loop ``for v in [0, N)`` (constant ``N``) whose body calls the dot-product kernels
        with arguments holding ``max(k, c * v + d)`` or ``min(k, c * v + d)`` (``k``, ``c``, ``d``
        constants): UseDotKernels' clamps of a window's taps to the input; only calls every loop
        between ``v`` and the call moves the clamps of (output loops, pieces split already), not calls
        inside a reduction loop, and windows (integer or float) of at most ``WINDOW_UNROLL_TAPS``
        taps.
    Rewrites to
        consecutive copies of the loop over [0, lo), [lo, hi) and [hi, N) (the empty ones left out),
        where [lo, hi) is the interior in which every such clamp takes its constant side, each copy's
        clamps simplified for its range (in the interior, to constants).
    Declines when
        the loop has a step, another kind, a non-constant range, no kernel call with such a clamp, an
        empty interior (every window reaches into the padding), or one piece only; or the function
        already carries ``tvmmcu.borders_split``.
    Numerics
        unchanged: each copy runs the same iterations with the same values.
    Ordering
        after UseDotKernels and BlockOutputChannels (it reads their calls), before LoopPartition and
        UnrollLoop.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, split_borders)
