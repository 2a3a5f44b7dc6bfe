"""CompressWeights: blocked int8 weights stored Golomb-Rice coded, a block of four channels decoded into a
small scratch buffer before the kernels read it."""

from __future__ import annotations

from typing import Any

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
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, CHANNELS
from tvm_mcu.passes.tir.dot_kernels import DOT4B, RUNS4B, SUM4B
from tvm_mcu.passes.tir.each_function import extern_name, parameter_owners, pointer_load, rewrite_each
from tvm_mcu.passes.tir.rice_kernels import SCRATCH_TAG_BYTES

ATTR_DONE = "tvmmcu.weights_compressed"
# On the function, set by the compiler: positions of the weight parameters to store compressed.
ATTR_WANTED = "tvmmcu.compress_weights"
# On the function: parameter position -> channel stride S of the blocked weights it holds compressed, in
# chunks of 4 * S values (``rice_kernels.encode``); those positions leave ``tvmmcu.blocked_weights``.
ATTR_COMPRESSED = "tvmmcu.compressed_weights"

DECODE = "tvmmcu_rice_decode"
RESET = "tvmmcu_rice_reset"

# The blocked kernel -> where its weight pointer is among its arguments.
_WEIGHT_AT = {
    **{n: 1 for n in DOT4B.values()},
    **{n: 0 for n in SUM4B.values()},
    **{n: 3 for n in RUNS4B.values()},
}


def _chosen(func: PrimFunc, blocked: dict[int, int], wanted: set[int]) -> dict[Any, int]:
    """Parameter -> position of the blocked, wanted parameters every read of which is a blocked
    kernel's weight pointer."""
    owners = parameter_owners(func)
    candidates = {func.params[k]: k for k in blocked if k in wanted and k < len(func.params)}
    reads: dict[Any, int] = {}
    by_kernels: dict[Any, int] = {}

    def count(load: Any) -> None:
        owner = owners.get(load.source, load.source)
        reads[owner] = reads.get(owner, 0) + 1

    def visit(call: Any) -> None:
        name = extern_name(call)
        if name in _WEIGHT_AT:
            load = pointer_load(call.args[1 + _WEIGHT_AT[name]])
            if load is not None:
                owner = owners.get(load.source, load.source)
                by_kernels[owner] = by_kernels.get(owner, 0) + 1

    structural_walk(func.body, (TensorLoad, count))
    structural_walk(func.body, (tvm.ir.Call, visit))
    return {p: k for p, k in candidates.items() if by_kernels.get(p, 0) == reads.get(p, 0) > 0}


def _split(index: Any, chunk: int, ana: Any) -> tuple[Any, Any]:
    """(chunk number, offset in the chunk) of blocked value ``index``: the terms whose coefficients are
    multiples of ``chunk`` and the others where the offset provably lies in [0, chunk), else
    ``index // chunk`` and ``index % chunk``."""
    dtype = str(index.ty)
    found: list[Any] = []
    structural_walk(
        index, (tirx.Var, lambda v: found.append(v) if not any(v.same_as(f) for f in found) else None)
    )
    coeffs = detect_linear_equation(index, found) if found else [index]
    size = tirx.IntImm(dtype, chunk)
    if len(coeffs) == len(found) + 1 and all(isinstance(c, tirx.IntImm) for c in coeffs):
        number: Any = tirx.IntImm(dtype, 0)
        offset: Any = tirx.IntImm(dtype, 0)
        for var, c in zip(found, coeffs[:-1], strict=True):
            if int(c) % chunk == 0:
                number = number + tirx.IntImm(dtype, int(c) // chunk) * var
            else:
                offset = offset + c * var
        blocks, rest = divmod(int(coeffs[-1]), chunk)
        number = ana.simplify(number + tirx.IntImm(dtype, blocks))
        offset = ana.simplify(offset + tirx.IntImm(dtype, rest))
        if ana.can_prove(offset >= 0) and ana.can_prove(offset < size):
            return number, offset
    return ana.simplify(tirx.floordiv(index, size)), ana.simplify(tirx.floormod(index, size))


def _bind_loops(func: PrimFunc, ana: Any) -> None:
    """Tell the analyzer each loop variable's range (loop variables are distinct: SplitBorders' copies
    take fresh ones); one bound twice is left unbound."""
    seen: dict[Any, int] = {}

    def count(loop: Any) -> None:
        seen[loop.loop_var] = seen.get(loop.loop_var, 0) + 1

    structural_walk(func.body, (tirx.For, count))

    def bind(loop: Any) -> None:
        if seen[loop.loop_var] == 1:
            ana.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))

    structural_walk(func.body, (tirx.For, bind))


def compress_weights(func: PrimFunc) -> PrimFunc:
    found = func.attrs if func.attrs is not None else {}
    blocked = {int(k): int(v) for k, v in (found.get(ATTR_BLOCKED) or {}).items()}
    wanted = {int(k) for k in (found.get(ATTR_WANTED) or [])}
    chosen = _chosen(func, blocked, wanted) if blocked and wanted else {}
    if not chosen:
        return func.with_attr(ATTR_DONE, True)
    owners = parameter_owners(func)
    ana = Analyzer()
    _bind_loops(func, ana)
    scratch: dict[Any, Any] = {}
    for p, k in sorted(chosen.items(), key=lambda item: item[1]):
        values = CHANNELS * blocked[k]
        scratch[p] = tirx.decl_buffer(
            (SCRATCH_TAG_BYTES + values,), "int8", name=f"{p.name}_chunk", layout=None
        )

    def at(buf: Any, i: Any) -> Any:
        return tirx.address_of(tirx.BufferLoad(buf, [i]))

    def rewrite(stmt: Any) -> Any:
        call = stmt.value
        name = extern_name(call)
        if name not in _WEIGHT_AT:
            return stmt
        args = list(call.args[1:])
        load = pointer_load(args[_WEIGHT_AT[name]])
        owner = owners.get(load.source, load.source) if load is not None else None
        if owner not in scratch:
            return stmt
        buf = scratch[owner]
        size = int(buf.shape[0]) - SCRATCH_TAG_BYTES
        index = load.indices[0]
        number, offset = _split(index, size, ana)
        i32 = str(index.ty)
        decode = tirx.call_extern(
            "int32",
            DECODE,
            at(load.source, tirx.IntImm(i32, 0)),
            number,
            tirx.IntImm("int32", size),
            at(buf, tirx.IntImm(i32, 0)),
        )
        args[_WEIGHT_AT[name]] = at(buf, ana.simplify(offset + tirx.IntImm(i32, SCRATCH_TAG_BYTES)))
        return tirx.SeqStmt(
            [tirx.Evaluate(decode), tirx.Evaluate(tirx.call_extern(str(call.ty), name, *args))]
        )

    body = structural_map(func.body, (tirx.Evaluate, rewrite))
    zero = tirx.IntImm("int32", 0)
    prologue = [
        s
        for buf in scratch.values()
        for s in (tirx.AllocBuffer(buf), tirx.Evaluate(tirx.call_extern("int32", RESET, at(buf, zero))))
    ]
    moved = {k: blocked[k] for k in chosen.values()}
    rest = {k: s for k, s in blocked.items() if k not in moved}
    out = func.with_body(tirx.SeqStmt([*prologue, body])).with_attr(ATTR_DONE, True)
    return out.with_attr(ATTR_COMPRESSED, moved).with_attr(ATTR_BLOCKED, rest)


@tvm.transform.module_pass(opt_level=0, name="CompressWeights")
class CompressWeights:
    """Store blocked int8 weights Golomb-Rice coded, one chunk per block of four output channels, for
    less flash where it is the wall: each chunk is decoded into a small scratch buffer before the kernels
    read it, as an NPU's weight decoder does.

    Matches
        functions whose weights BlockWeights blocked (``tvmmcu.blocked_weights``, stride ``S``) and whose
        parameters the compiler marked (``tvmmcu.compress_weights``): the ``tvmmcu_dot4b_*``,
        ``tvmmcu_dot4b_sum_s8`` and ``tvmmcu_dot4b_runs_*`` calls reading those parameters, their only
        readers. A call reads ``4 * S`` consecutive blocked values at most (four channels), one chunk.
    Rewrites to
        a scratch buffer ``W_chunk`` of ``8 + 4 * S`` bytes per parameter (``tvmmcu_rice_reset`` at the
        function's start: it holds no chunk), and before each such call
        ``tvmmcu_rice_decode(&W[0], i / (4 S), 4 S, &W_chunk[0])`` (a no-op when the scratch holds that
        chunk already), the call reading ``&W_chunk[8 + i % (4 S)]`` instead of ``&W[i]``. Those
        positions move from ``tvmmcu.blocked_weights`` to ``tvmmcu.compressed_weights``: the compiler
        stores those constants :func:`~tvm_mcu.passes.tir.rice_kernels.encode`-d. The scratch is
        operator scratch: HoistScratchToWorkspace places it in the memory plan, so every schedule (row
        bands, channel slices, in place) counts it in SRAM.
    Declines when
        nothing is blocked, no blocked parameter is marked, a marked parameter is read by anything but a
        blocked kernel's weight pointer (it stays as it is), or the function already carries
        ``tvmmcu.weights_compressed``.
    Numerics
        bit-exact: the decoder is lossless and the kernels read the same blocked values. Instructions:
        a decode per call whose chunk differs from the scratch's; where the loop over blocks of channels
        is inside the loop over pixels (convolutions), that is every call of a layer with more than four
        output channels: each pixel decodes all the weights. Dense layers decode each chunk once per
        visit (once per row band or channel slice).
    Ordering
        after BlockWeights and SplitBorders (the calls, and all their copies), before StorageRewrite and
        HoistScratchToWorkspace (which place the scratch) and before PackWeights and WidenWeights (a
        compressed parameter is neither packed nor widened).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, compress_weights)
