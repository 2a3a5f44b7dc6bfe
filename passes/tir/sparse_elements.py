"""SparseElements: a convolution whose weights are stored element-sparse (CSR over single weights) visits
only the kept ones."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import Analyzer, PrimFunc, structural_map, tirx, tvm
from tvm_mcu.passes.tir.dot_kernels import DOT
from tvm_mcu.passes.tir.each_function import extern_name, pointer_load, rewrite_each
from tvm_mcu.passes.tir.sparse_element_kernels import (
    ELEMENT1P_BLOB,
    ELEMENT1P_EDGE,
    ELEMENT4P_BLOB,
    ELEMENT_DOT_BLOB,
)
from tvm_mcu.passes.tir.sparse_filterlets import (
    SparseKernels,
    read_only_sparse,
    rewrite_sparse,
    wanted_parameters,
)

ATTR_DONE = "tvmmcu.elements_done"
# Set by the compiler before lowering: parameter position -> output channels, for the weights it will
# store element-sparse when every read of them becomes a sparse call (the compiler reads ATTR_SPARSE).
ATTR_WANTED = "tvmmcu.sparse_element_weights"
# Set by this pass: the parameter positions whose reads all became element-sparse calls -> channels.
ATTR_SPARSE = "tvmmcu.sparse_elements"

ELEMENTS = SparseKernels(ELEMENT1P_BLOB, ELEMENT4P_BLOB, ELEMENT1P_EDGE, contiguous_taps=True)


def sparse_elements(func: PrimFunc) -> PrimFunc:
    out = rewrite_sparse(func, wanted_attr=ATTR_WANTED, done=ATTR_DONE, stored=ATTR_SPARSE, kernels=ELEMENTS)
    if out.attrs is not None and out.attrs.get(ATTR_SPARSE):
        return out
    return _dense_rows(func)


def _dense_rows(func: PrimFunc) -> PrimFunc:
    """A dense layer's dot calls over a wanted parameter's rows (``tvmmcu_dot_*(x, &W[o * n], n, acc)``,
    ``W`` the ``[O, n]`` weights) rewritten to the element kernel over the row's entries, all or
    nothing per parameter; marked done, and ``ATTR_SPARSE`` for the parameters rewritten."""
    done = func.with_attr(ATTR_DONE, True)
    found = wanted_parameters(func, ATTR_WANTED)
    if found is None:
        return done
    position, wanted, owner_of = found
    rewritten: dict[Any, int] = {}

    def rewrite(call: Any) -> Any:
        key = next((k for k, name in DOT.items() if name == extern_name(call)), None)
        if key is None:
            return call
        x, w, n, acc = call.args[1:]
        n = Analyzer().simplify(n)  # the count may be a cast of a constant
        load = pointer_load(w)
        owner = owner_of(load.source) if load is not None else None
        if load is None or owner not in wanted or not isinstance(n, tirx.IntImm):
            return call
        shape = load.source.shape  # the flat weights: O * n values
        if (
            len(shape) != 1
            or not isinstance(shape[0], tirx.IntImm)
            or int(n) * wanted[owner] != int(shape[0])
        ):
            return call  # not whole rows of the [O, n] weights
        index = load.indices[0]
        ana = Analyzer()
        if not ana.can_prove(tirx.floormod(index, tirx.IntImm(str(index.ty), int(n))) == 0):
            return call
        channel = ana.simplify(tirx.floordiv(index, tirx.IntImm(str(index.ty), int(n))))
        channel = channel if str(channel.ty) == "int32" else tirx.Cast("int32", channel)
        blob = tirx.address_of(tirx.BufferLoad(load.source, [tirx.IntImm(str(index.ty), 0)]))
        rewritten[owner] = rewritten.get(owner, 0) + 1
        out_channels = tirx.IntImm("int32", wanted[owner])
        return tirx.call_extern(str(call.ty), ELEMENT_DOT_BLOB[key], x, blob, out_channels, channel, acc)

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    complete = read_only_sparse(body, wanted, owner_of, rewritten)
    if complete is None:
        return done  # some read was left dense: keep the dense kernel
    return done.with_body(body).with_attr(ATTR_SPARSE, {position[p]: wanted[p] for p in complete})


@tvm.transform.module_pass(opt_level=0, name="SparseElements")
class SparseElements:
    """Visit only the kept single weights of a convolution whose weights the compiler stores
    element-sparse (the unstructured baseline beside SparseFilterlets' filterlets).

    Matches
        functions whose attribute ``tvmmcu.sparse_element_weights`` (parameter position -> output
        channels, set by the compiler where element CSR is the weights' least flash) names a weight
        parameter read by runs calls (``tvmmcu_dot_runs_*``) of OHWI weights whose window rows are
        contiguous in the data (``xsx == n``: an undilated NHWC convolution).
    Rewrites to
        ``tvmmcu_esparse1p_blob_*(x, xsy, xsx, kw, &W[0], O, o, n, y0, y1, x0, x1, pad, acc)``: the
        parameter holds the element CSR blob (``sparse_element_kernels.compress_blob``); records
        ``tvmmcu.sparse_elements`` = {position: O}. The interior of a ``for yy: for xx: for o`` nest
        then runs four pixels at a time (``tvmmcu_esparse4p_blob_*``), the border through
        ``tvmmcu_esparse1p_edge_*``, exactly as SparseFilterlets does for its kernels.
    Declines when
        a read of the parameter is anything else, its offset is not provably a whole channel, or a
        call's taps are not contiguous (dilation): then nothing changes and the weights stay dense; or
        the function carries ``tvmmcu.elements_done``.
    Also matches
        a dense layer: the marked parameter is its ``[O, n]`` weights, read only by dot calls over whole
        rows (``tvmmcu_dot_*(x, &W[o * n], n, acc)``, per output: BlockOutputChannels leaves marked
        functions alone), rewritten to ``tvmmcu_esparse_dot_blob_*(x, &W[0], O, o, acc)`` over the
        row's entries, all or nothing likewise.
    Numerics
        unchanged: a pruned weight's product is zero; the kept ones are summed modulo 2**32 as the runs
        kernel sums them, the padding taps as ``pad`` times their weights.
    Ordering
        after UseDotKernels and SplitBorders (it rewrites their calls); beside SparseFilterlets, which
        rewrites the calls over other parameters (a parameter is marked for one format only).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, sparse_elements)
