"""SparseElements: a convolution whose weights are stored element-sparse (CSR over single weights) visits
only the kept ones."""

from __future__ import annotations

from tvm_mcu._tvm import PrimFunc, tvm
from tvm_mcu.passes.tir.each_function import rewrite_each
from tvm_mcu.passes.tir.sparse_element_kernels import ELEMENT1P_BLOB, ELEMENT1P_EDGE, ELEMENT4P_BLOB
from tvm_mcu.passes.tir.sparse_filterlets import SparseKernels, rewrite_sparse

ATTR_DONE = "tvmmcu.elements_done"
# Set by the compiler before lowering: parameter position -> output channels, for the weights it will
# store element-sparse when every read of them becomes a sparse call (the compiler reads ATTR_SPARSE).
ATTR_WANTED = "tvmmcu.sparse_element_weights"
# Set by this pass: the parameter positions whose reads all became element-sparse calls -> channels.
ATTR_SPARSE = "tvmmcu.sparse_elements"

ELEMENTS = SparseKernels(ELEMENT1P_BLOB, ELEMENT4P_BLOB, ELEMENT1P_EDGE, contiguous_taps=True)


def sparse_elements(func: PrimFunc) -> PrimFunc:
    return rewrite_sparse(func, wanted_attr=ATTR_WANTED, done=ATTR_DONE, stored=ATTR_SPARSE, kernels=ELEMENTS)


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
    Numerics
        unchanged: a pruned weight's product is zero; the kept ones are summed modulo 2**32 as the runs
        kernel sums them, the padding taps as ``pad`` times their weights.
    Ordering
        after UseDotKernels and SplitBorders (it rewrites their calls); beside SparseFilterlets, which
        rewrites the calls over other parameters (a parameter is marked for one format only).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, sparse_elements)
