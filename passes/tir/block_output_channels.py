"""BlockOutputChannels: four output channels' dot products at once, the data read once for the four."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm_mcu._tvm import (
    PrimFunc,
    TensorLoad,
    detect_linear_equation,
    structural_map,
    structural_walk,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.dot_kernels import DOT, DOT4, RUNS, RUNS4, SUM, SUM4, WINDOW, WINDOW4
from tvm_mcu.passes.tir.each_function import (
    constant_extent,
    extern_name,
    fresh_variables,
    parameter_owners,
    rewrite_each,
    substitute,
    uses,
)
from tvm_mcu.passes.tir.float_kernels import DOT4_F32, DOT_F32, RUNS4_F32, RUNS_F32, WINDOW4_F32, WINDOW_F32

ATTR_DONE = "tvmmcu.output_channels_blocked"
BLOCK = 4

# The one-channel kernel -> its four-channel form, and where its weight pointer is among its arguments
# (the four channels' stride goes right after it).
_FOUR = {
    **{name: (DOT4[key], 1) for key, name in DOT.items()},
    **{SUM[k]: (SUM4[k], 0) for k in SUM},
    **{name: (WINDOW4[key], 3) for key, name in WINDOW.items()},
    **{name: (RUNS4[key], 3) for key, name in RUNS.items()},
    # float32: the same positions (the float kernels take the weights' stride along the reduction after
    # the channel stride).
    **{name: (DOT4_F32[key], 1) for key, name in DOT_F32.items()},
    **{name: (WINDOW4_F32[key], 3) for key, name in WINDOW_F32.items()},
    **{name: (RUNS4_F32[key], 3) for key, name in RUNS_F32.items()},
}
# The accumulators' dtypes: int32 for the integer kernels, float32 for the float ones.
_ACCUMULATORS = ("int32", "float32")


def _kernel_call(store: Any, acc: Any) -> Any | None:
    """The call of ``acc[0] = kernel(..., acc[0])`` when ``store`` is one, else None."""
    if not isinstance(store, tirx.BufferStore) or not store.buffer.same_as(acc):
        return None
    call = store.value
    if extern_name(call) not in _FOUR:
        return None
    last = call.args[-1]
    if not (isinstance(last, TensorLoad) and last.source.same_as(acc)):
        return None
    return call


def _weight_stride(call: Any, var: Any) -> int | None:
    """The stride along ``var`` of the weights a kernel call reads (its weight pointer ``&w[i]``, ``i``
    linear in ``var``), the data and sizes being free of ``var``; None otherwise."""
    name = str(call.args[0].value)
    at = _FOUR[name][1]
    args = list(call.args[1:-1])
    weight = args[at]
    others = args[:at] + args[at + 1 :]
    if any(uses(a, var) for a in others):
        return None
    if not (isinstance(weight, tvm.ir.Call) and str(getattr(weight.op, "name", "")) == "tirx.address_of"):
        return None
    load = weight.args[0]
    if not isinstance(load, TensorLoad) or len(load.indices) != 1:
        return None
    coeffs = detect_linear_equation(load.indices[0], [var])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm) or uses(coeffs[1], var):
        return None
    return int(coeffs[0])


def _reduction(stmts: list[Any], acc: Any, var: Any) -> tuple[list[Any], int] | None:
    """The calls of the statements updating ``acc`` (loops and tests around them free of ``var``, nothing
    else written) and their common weight stride along ``var``; None when they are not that."""
    calls: list[Any] = []
    ok = True

    def check(node: Any) -> None:
        nonlocal ok
        if isinstance(node, tirx.BufferStore):
            call = _kernel_call(node, acc)
            if call is None:
                ok = False
            else:
                calls.append(call)
        elif isinstance(node, tirx.For):
            if uses(node.min, var) or uses(node.extent, var):
                ok = False
        elif isinstance(node, tirx.IfThenElse):
            if uses(node.condition, var):
                ok = False
        elif isinstance(node, tirx.Stmt) and not isinstance(node, tirx.SeqStmt | tirx.Evaluate):
            ok = False

    for stmt in stmts:
        structural_walk(stmt, check)
    if not ok or not calls:
        return None
    strides = {_weight_stride(c, var) for c in calls}
    if len(strides) != 1 or None in strides:
        return None
    (stride,) = strides
    return calls, int(stride)  # type: ignore[arg-type]


def _writes(stmt: Any, buffer: Any) -> bool:
    found: list[Any] = []
    structural_walk(stmt, (tirx.BufferStore, lambda s: found.append(s) if s.buffer.same_as(buffer) else None))
    return bool(found)


def _blocked(loop: Any) -> Any | None:
    """The four-channel form of ``loop``, or None."""
    extent = constant_extent(loop)
    if extent is None:
        return None
    body = loop.body
    if extent < BLOCK or not isinstance(body, tirx.SeqStmt) or len(body.seq) < 4:
        return None
    alloc, init = body.seq[0], body.seq[1]
    if not isinstance(alloc, tirx.AllocBuffer) or str(alloc.buffer.dtype) not in _ACCUMULATORS:
        return None
    acc = alloc.buffer
    if [int(d) for d in acc.shape] != [1]:
        return None
    if not (
        isinstance(init, tirx.BufferStore)
        and init.buffer.same_as(acc)
        and not uses(init.value, loop.loop_var)
    ):
        return None
    rest = list(body.seq[2:])
    split = max((k + 1 for k, s in enumerate(rest) if _writes(s, acc)), default=0)
    update, epilogue = rest[:split], rest[split:]
    if not epilogue or not update:
        return None
    found = _reduction(update, acc, loop.loop_var)
    if found is None:
        return None
    _, stride = found
    var = loop.loop_var
    dtype = str(var.ty)
    outer = tirx.Var(f"{var.name}_o", dtype)
    inner = tirx.Var(f"{var.name}_i", dtype)
    four = tirx.decl_buffer((BLOCK,), str(acc.dtype), name=f"{acc.name}4", layout=None)
    first = outer * tirx.IntImm(dtype, BLOCK)

    def blocked_call(store: Any) -> Any:
        call = _kernel_call(store, acc)
        if call is None:
            return store
        name, at = _FOUR[str(call.args[0].value)]
        args = [substitute(a, var, first) for a in call.args[1:-1]]
        args.insert(at + 1, tirx.IntImm("int32", stride))  # the four channels' stride after the weights
        pointer = tirx.address_of(tirx.BufferLoad(four, [tirx.IntImm(dtype, 0)]))
        return tirx.Evaluate(tirx.call_extern("int32", name, *args, pointer))

    update4 = [structural_map(fresh_variables(s), (tirx.BufferStore, blocked_call)) for s in update]
    inits = [tirx.BufferStore(four, init.value, [tirx.IntImm(dtype, j)]) for j in range(BLOCK)]

    def read_four(load: Any) -> Any:
        return tirx.BufferLoad(four, [inner]) if load.source.same_as(acc) else load

    tail = [
        structural_map(fresh_variables(substitute(s, var, first + inner)), (TensorLoad, read_four))
        for s in epilogue
    ]
    per_channel = tirx.For(
        inner, tirx.IntImm(dtype, 0), tirx.IntImm(dtype, BLOCK), tirx.ForKind.UNROLLED, _seq(tail)
    )
    blocks = tirx.For(
        outer,
        tirx.IntImm(dtype, 0),
        tirx.IntImm(dtype, extent // BLOCK),
        tirx.ForKind.SERIAL,
        tirx.SeqStmt([tirx.AllocBuffer(four), *inits, *update4, per_channel]),
    )
    left = extent % BLOCK
    if not left:
        return blocks
    remainder = tirx.For(
        var, tirx.IntImm(dtype, extent - left), tirx.IntImm(dtype, left), tirx.ForKind.SERIAL, body
    )
    return tirx.SeqStmt([blocks, remainder])


def _seq(stmts: list[Any]) -> Any:
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


# The compiler's marks of weights it means to store sparse -> the calls the sparse pass rewrites over
# them, one output channel each (SparseFilterlets: runs; SparseElements: runs and a dense layer's dots),
# and where each call's weight pointer is among its arguments: those calls' loops stay one channel per
# call.
_SPARSE_CALLS = {
    "tvmmcu.sparse_weights": {
        **{name: 4 for name in RUNS.values()},
        **{name: 4 for name in RUNS_F32.values()},
    },
    "tvmmcu.sparse_element_weights": {
        **{name: 4 for name in RUNS.values()},
        **{name: 2 for name in DOT.values()},
    },
}


def _sparse_reads(func: PrimFunc) -> Callable[[Any], bool]:
    """Whether a loop holds a call the sparse passes rewrite over weights ``func``'s marks want sparse
    (``_SPARSE_CALLS``). A marked weight read otherwise (a dilated convolution's taps are no runs)
    stays dense, so its loop is blocked as any other."""
    owners = parameter_owners(func)
    wanted: dict[str, dict[Any, int]] = {}  # call -> marked parameter -> its weight pointer's position
    for mark, calls in _SPARSE_CALLS.items():
        positions = func.attrs.get(mark) if func.attrs is not None else None
        for k in positions or {}:
            for name, at in calls.items():
                wanted.setdefault(name, {})[func.params[int(k)]] = at
    if not wanted:
        return lambda loop: False

    def reads(loop: Any) -> bool:
        found = False

        def visit(call: Any) -> None:
            nonlocal found
            params = wanted.get(extern_name(call), {})
            for param, at in params.items():
                pointer = call.args[at] if len(call.args) > at else None
                load = pointer.args[0] if isinstance(pointer, tvm.ir.Call) and pointer.args else None
                if isinstance(load, TensorLoad) and owners.get(load.source, load.source).same_as(param):
                    found = True

        structural_walk(loop, (tvm.ir.Call, visit))
        return found

    return reads


def block_output_channels(func: PrimFunc) -> PrimFunc:
    sparse = _sparse_reads(func)
    body = structural_map(func.body, (tirx.For, lambda loop: (not sparse(loop) and _blocked(loop)) or loop))
    return func.with_body(body).with_attr(ATTR_DONE, True)


@tvm.transform.module_pass(opt_level=0, name="BlockOutputChannels")
class BlockOutputChannels:
    """Compute four output channels' reductions per pass over the data (``tvmmcu_dot4_*``).

    Matches
        a serial loop ``for f in [0, F)`` (F >= 4, constant) whose body is ``acc = alloc int32[1];
        acc[0] = c; <update>; <epilogue>`` where ``c`` is free of ``f``, every store of ``<update>`` is
        ``acc[0] = tvmmcu_dot_*(x, &w[i], n, acc[0])``, ``tvmmcu_dot_sum_s8(&w[i], n, z, acc[0])`` or
        ``tvmmcu_dot_win_*(x, .., &w[i], .., acc[0])`` (UseDotKernels' calls) with ``i`` linear in
        ``f`` with one stride ``S`` for all of them and everything else (data, sizes, the loops and
        tests around the calls) free of ``f``, and
        ``<epilogue>`` (which reads ``acc[0]`` and ``f``) writes no ``acc``: one output pixel's channels.
        Likewise ``acc = alloc float32[1]`` with the float kernels' calls (``tvmmcu_dot_f32``,
        ``tvmmcu_dot_win_f32``, ``tvmmcu_dot_runs_f32``).
    Rewrites to
        ``for fo in [0, F / 4): acc4 = alloc int32[4]; acc4[0..3] = c; <update with each call on the
        four channels fo * 4 .. fo * 4 + 3: tvmmcu_dot4_*(x, &w[i(fo * 4)], S, n, &acc4[0]), the
        stride ``S`` right after the weight pointer (``tvmmcu_dot4_win_*`` and the float
        ``tvmmcu_dot4_*_f32`` likewise, ``acc4`` of the accumulator's dtype)>;
        for fi in [0, 4) (unrolled: the four accumulators stay in registers): <epilogue with
        f = fo * 4 + fi, acc[0] = acc4[fi]>``, then the original loop
        over the last F mod 4 channels.
    Declines when
        the loop is not of that form (a store to anything else, a test or loop bound on
        ``f``, data that depends on ``f`` as in a depthwise convolution, different strides), the loop
        holds a call a sparse pass rewrites one channel per call over a parameter the compiler marked
        for it (``tvmmcu.sparse_weights``: SparseFilterlets' runs calls ``tvmmcu_dot_runs_*``;
        ``tvmmcu.sparse_element_weights``: SparseElements' runs calls and a dense layer's dot calls),
        or the function already carries
        ``tvmmcu.output_channels_blocked``.
    Numerics
        unchanged: each channel's accumulator receives the same products in the same order.
    Ordering
        after UseDotKernels (it blocks that pass's calls), before LoopPartition and UnrollLoop.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, block_output_channels)
