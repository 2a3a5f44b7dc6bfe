"""SparseFilterlets: a convolution whose weights are stored sparse (CSR over filterlets) visits only the
kept ones."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import Analyzer, PrimFunc, TensorLoad, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.block_weights import _owners
from tvm_mcu.passes.tir.dot_kernels import RUNS
from tvm_mcu.passes.tir.each_function import extern_name, rewrite_each
from tvm_mcu.passes.tir.sparse_kernels import SPARSE1P_BLOB

ATTR_DONE = "tvmmcu.filterlets_done"
# Set by the compiler before lowering: parameter position -> output channels, for the weights it will
# store sparse when every read of them becomes a sparse call (the compiler reads ATTR_SPARSE after).
ATTR_WANTED = "tvmmcu.sparse_weights"
# Set by this pass: the parameter positions whose reads all became sparse calls -> output channels.
ATTR_SPARSE = "tvmmcu.sparse_filterlets"

_RUNS_ARGS = ("x", "xsy", "xsx", "w", "wsy", "wsx", "kh", "kw", "n", "y0", "y1", "x0", "x1", "pad", "acc")
_OF = {name: SPARSE1P_BLOB[key] for key, name in RUNS.items()}


def _pointer_load(pointer: Any) -> Any | None:
    if isinstance(pointer, tvm.ir.Call) and str(getattr(pointer.op, "name", "")) == "tirx.address_of":
        load = pointer.args[0]
        if isinstance(load, TensorLoad) and len(load.indices) == 1:
            return load
    return None


def _sparse_call(call: Any, owner_of: Any, wanted: dict[Any, int]) -> Any | None:
    """The sparse call replacing a runs call over a wanted parameter's filterlets, or None."""
    a = dict(zip(_RUNS_ARGS, call.args[1:], strict=True))
    load = _pointer_load(a["w"])
    if load is None or owner_of(load.source) not in wanted:
        return None
    if not all(isinstance(a[k], tirx.IntImm) for k in ("wsy", "wsx", "kh", "kw", "n")):
        return None
    kh, kw, n = int(a["kh"]), int(a["kw"]), int(a["n"])
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
    return tirx.call_extern(str(call.ty), _OF[extern_name(call)], *args)


def sparse_filterlets(func: PrimFunc) -> PrimFunc:
    wanted_attr = func.attrs.get(ATTR_WANTED) if func.attrs is not None else None
    if not wanted_attr:
        return func.with_attr(ATTR_DONE, True)
    position = {p: k for k, p in enumerate(func.params)}
    by_position = {int(k): int(v) for k, v in wanted_attr.items()}
    wanted = {p: by_position[k] for p, k in position.items() if k in by_position}
    owners = _owners(func)

    def owner_of(buffer: Any) -> Any:
        return owners.get(buffer, buffer)

    rewritten: dict[Any, int] = {}

    def rewrite(call: Any) -> Any:
        if extern_name(call) not in _OF:
            return call
        sparse = _sparse_call(call, owner_of, wanted)
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
    done = {p for p in wanted if p in rewritten and reads.get(p, 0) == rewritten[p]}
    if not done or done != set(rewritten):
        return func.with_attr(ATTR_DONE, True)  # some read was left dense: keep the dense kernel
    return (
        func.with_body(body)
        .with_attr(ATTR_DONE, True)
        .with_attr(ATTR_SPARSE, {position[p]: wanted[p] for p in done})
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
        the compiler to store the blob.
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
