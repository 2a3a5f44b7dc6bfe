"""StageWindows: a window every block of output channels reads is copied once per output pixel."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import PrimFunc, TensorLoad, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.dot_kernels import DOT4, STAGE, WINDOW4
from tvm_mcu.passes.tir.each_function import constant_extent, extern_name, pointer_load, rewrite_each, uses

ATTR_DONE = "tvmmcu.windows_staged"
# A window staged for fewer blocks of channels costs its copy for too little reuse.
MIN_BLOCKS = 2
# The staged window is scratch of the operator (a workspace of the memory plan): at most this many taps.
MAX_STAGED_TAPS = 256
# The in-place kernels' marker (ExecuteInPlace): their parameters may share memory.
_IN_PLACE = "tvmmcu.in_place"

_DOT4_OF = {name: DOT4[key] for key, name in WINDOW4.items()}
_ARGS = ("x", "xsy", "xsx", "w", "ws", "wsy", "wsx", "kh", "kw", "y0", "y1", "x0", "x1", "pad", "acc")
_WINDOW_ARGS = ("x", "xsy", "xsx", "kh", "kw", "y0", "y1", "x0", "x1", "pad")


def _window_calls(stmt: Any) -> list[Any]:
    found: list[Any] = []
    structural_walk(stmt, (tvm.ir.Call, lambda c: found.append(c) if extern_name(c) in _DOT4_OF else None))
    return found


def _stores_outside(stmt: Any, allocated: set[Any]) -> bool:
    """Whether ``stmt`` stores into a buffer the function does not allocate (a parameter's memory)."""
    found: list[Any] = []
    structural_walk(
        stmt, (tirx.BufferStore, lambda s: found.append(s) if s.buffer not in allocated else None)
    )
    return bool(found)


def _staged(loop: Any, in_place: bool, allocated: set[Any]) -> Any | None:
    """``loop`` (over blocks of four output channels) with its window staged before it, or None."""
    extent = constant_extent(loop)
    if extent is None or extent < MIN_BLOCKS:
        return None
    calls = _window_calls(loop.body)
    if len(calls) != 1:
        return None
    call = calls[0]
    a = dict(zip(_ARGS, call.args[1:], strict=True))
    fixed = ("xsy", "xsx", "wsy", "wsx", "kh", "kw", "pad")
    if not all(isinstance(a[k], tirx.IntImm) for k in fixed):
        return None
    kh, kw = int(a["kh"]), int(a["kw"])
    # The weights of the taps must follow each other for one contiguous dot product over the window.
    if int(a["wsx"]) != 1 or int(a["wsy"]) != kw or kh * kw > MAX_STAGED_TAPS:
        return None
    # The window must be the same in every iteration: free of the loop's variable and of every variable
    # defined inside it (an inner loop's, a let's), so that it can be staged before the loop.
    inner: list[Any] = [loop.loop_var]
    structural_walk(
        loop.body,
        [(tirx.For, lambda f: inner.append(f.loop_var)), (tirx.Bind, lambda b: inner.append(b.var))],
    )
    if any(uses(a[k], var) for k in _WINDOW_ARGS for var in inner):
        return None
    # ... and of the buffers stored inside it (row bands keep loop bounds in buffers).
    stored: list[Any] = []
    structural_walk(loop.body, (tirx.BufferStore, lambda st: stored.append(st.buffer)))
    read: list[Any] = []
    for k in _WINDOW_ARGS:
        structural_walk(a[k], (TensorLoad, lambda ld: read.append(ld.source)))
    if any(r.same_as(s) for r in read for s in stored):
        return None
    x, w = pointer_load(a["x"]), pointer_load(a["w"])
    if x is None or w is None:
        return None
    # An in-place kernel's parameters may be one memory: a store inside the loop could change the window.
    if in_place and _stores_outside(loop.body, allocated):
        return None
    dtype = str(x.source.dtype)
    dot = DOT4.get((dtype, str(w.source.dtype)))
    if dot is None:
        return None
    window = tirx.decl_buffer((kh * kw,), dtype, name="window", layout=None)
    at = tirx.address_of(tirx.BufferLoad(window, [tirx.IntImm("int32", 0)]))
    stage = tirx.call_extern("int32", STAGE, at, *(a[k] for k in _WINDOW_ARGS))
    n = tirx.IntImm("int32", kh * kw)

    def read_staged(node: Any) -> Any:
        if not node.same_as(call):
            return node
        return tirx.call_extern(str(call.ty), dot, at, a["w"], a["ws"], n, a["acc"])

    body = structural_map(loop.body, (tvm.ir.Call, read_staged))
    blocks = tirx.For(
        loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations
    )
    return tirx.SeqStmt([tirx.AllocBuffer(window), tirx.Evaluate(stage), blocks])


def stage_windows(func: PrimFunc) -> PrimFunc:
    in_place = func.attrs is not None and _IN_PLACE in func.attrs
    allocated: set[Any] = set()
    structural_walk(func.body, (tirx.AllocBuffer, lambda alloc: allocated.add(alloc.buffer)))

    def rewrite(loop: Any) -> Any:
        staged = _staged(loop, in_place, allocated)
        return loop if staged is None else staged

    return func.with_body(structural_map(func.body, (tirx.For, rewrite))).with_attr(ATTR_DONE, True)


@tvm.transform.module_pass(opt_level=0, name="StageWindows")
class StageWindows:
    """Copy the window of an output pixel once when every block of output channels reads it.

    Matches
        a loop of at least ``MIN_BLOCKS`` iterations (BlockOutputChannels' loop over blocks of four
        output channels) holding one ``tvmmcu_dot4_win_*`` call whose window (data pointer, strides,
        ``kh x kw`` taps, the taps inside, padding value) does not depend on the loop, whose weights
        of a channel follow each other tap after tap (``wsx = 1``, ``wsy = kw``), of at most
        ``MAX_STAGED_TAPS`` taps: a convolution over one input channel, as KWS's first layer, or an
        RGB input's kernel rows fused with their channels.
    Rewrites to
        a ``window`` scratch buffer of ``kh * kw`` values filled before the loop by
        ``tvmmcu_dot_stage8(&window[0], x, xsy, xsx, kh, kw, y0, y1, x0, x1, pad)`` (the padding value
        where a tap lies outside) and, in the loop, ``tvmmcu_dot4_*(&window[0], w, ws, kh * kw,
        acc)``: one contiguous dot product per block, which BlockWeights then blocks. The window is
        operator scratch: HoistScratchToWorkspace places it in the memory plan.
    Declines when
        the loop holds no such call or several, the window moves with the loop (or reads a variable
        defined or a buffer stored inside it), its weights skip
        values, or the operator runs in place (ExecuteInPlace) and the loop stores into a parameter's
        memory (which could be the window's); or the function already carries
        ``tvmmcu.windows_staged``.
    Numerics
        unchanged: a tap outside the input is the padding value either way (the window kernel adds
        ``pad`` times its weight), and the same integer products are summed per channel.
    Ordering
        after BlockOutputChannels (its blocked calls), before BlockWeights (which blocks the new
        calls' weights) and HoistScratchToWorkspace (which places the window).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, stage_windows)
