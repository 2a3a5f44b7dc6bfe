"""The named pass pipelines of tvm-mcu, from imported Relax to unpacked TIR ready for C.

Each list is the pipeline; one comment per ordering constraint.
"""

from __future__ import annotations

from tvm_mcu._tvm import C_TARGET, register_tir_pipeline, relax, s_tir, tirx, tvm
from tvm_mcu.passes.relax.channels_last import ChannelsLast
from tvm_mcu.passes.relax.lower_quantized_ops import LowerQuantizedOps
from tvm_mcu.passes.relax.make_integer_interface import MakeIntegerInterface
from tvm_mcu.passes.relax.raise_tir_calls import RaiseTirCalls
from tvm_mcu.passes.tir.block_output_channels import BlockOutputChannels
from tvm_mcu.passes.tir.block_weights import BlockWeights
from tvm_mcu.passes.tir.compress_weights import CompressWeights
from tvm_mcu.passes.tir.execute_in_place import ExecuteInPlace
from tvm_mcu.passes.tir.hoist_reduction_init import HoistReductionInit, InitGuardedAccumulators
from tvm_mcu.passes.tir.hoist_scratch_to_workspace import HoistScratchToWorkspace
from tvm_mcu.passes.tir.inline_fixed_point import InlineFixedPoint
from tvm_mcu.passes.tir.make_unpacked_api import MakeUnpackedAPI
from tvm_mcu.passes.tir.row_bands import RollRowBuffers, SkipComputedRows
from tvm_mcu.passes.tir.schedule_for_mcu import ScheduleForMcu
from tvm_mcu.passes.tir.sparse_elements import SparseElements
from tvm_mcu.passes.tir.sparse_filterlets import SparseFilterlets
from tvm_mcu.passes.tir.split_borders import SplitBorders
from tvm_mcu.passes.tir.stage_windows import StageWindows
from tvm_mcu.passes.tir.unpack_int4_weights import UnpackInt4Weights
from tvm_mcu.passes.tir.use_dot_kernels import UseDotKernels


def graph_passes(
    *, allow_float: bool = False, rounding: str = "tflite", channels_last: bool = False
) -> list[tvm.transform.Pass]:
    """Relax passes: integer lowering, simplification, legalisation of every op to TIR, fusion.
    ``channels_last``: NCHW convolutions computed NHWC (ChannelsLast)."""
    return [
        # The caller quantises the inputs and dequantises the outputs of a QDQ model; before the integer
        # lowering, which then sees int8 inputs.
        MakeIntegerInterface(),
        # Folds a float model's BatchNorm into the OIHW convolution before it (FoldConstant evaluates the
        # products later); before ChannelsLast, as it folds only OIHW weights.
        relax.transform.FoldBatchnormToConv2D(),
        # NCHW convolutions compute channels-last, where the SIMD kernels apply; before LowerQuantizedOps,
        # which lowers the dequantize -> conv2d -> quantize patterns in whatever layout they have.
        *([ChannelsLast()] if channels_last else []),
        # Must see the dequantize -> float op -> quantize patterns before FoldConstant turns the
        # dequantised weights into float constants.
        LowerQuantizedOps(allow_float=allow_float, rounding=rounding),
        # Folds inference BatchNorm that follows a conv2d into the conv's weights and a bias add ...
        relax.transform.FoldBatchnormToConv2D(),
        # ... (and the FoldConstant that evaluates the new weights must come before decomposition).
        relax.transform.FoldConstant(),
        # Any other batch_norm and composite ops become arithmetic on constants ...
        relax.transform.DecomposeOpsForInference(),
        # ... which FoldConstant evaluates: folded BatchNorm, reshaped biases, transposed weights.
        relax.transform.FoldConstant(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        # Legalisation exposes more constant subexpressions (e.g. weight layout transforms).
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        # Reshape kernels become R.reshape again, so the memory plan can alias them.
        relax.transform.RewriteDataflowReshape(),
        relax.transform.DeadCodeElimination(),
    ]


def inference_passes() -> list[tvm.transform.Pass]:
    """A float model as graph analyses and the training bridge read it: inference BatchNorm folded or
    decomposed into constants, the importer's Clip and Pad kernels raised back to Relax ops, no dead code.

    The result is still a pre-legalisation Relax graph (conv2d, add, relu, ...), numerically the model.
    """
    return [
        relax.transform.FoldBatchnormToConv2D(),
        # Evaluates the folded weights before decomposition (as in graph_passes).
        relax.transform.FoldConstant(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        # Needs the importer's scalar Clip bounds as constants (after FoldConstant).
        RaiseTirCalls(),
        # Folds the (output, mean, variance) tuples decomposed BatchNorm leaves behind.
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ]


def lowering_passes() -> list[tvm.transform.Pass]:
    """TVM's default s_tir lowering minus SplitHostDevice / MakePackedAPI / LowerTVMBuiltin.

    Those three produce the packed FFI calling convention and TVMBackendAllocWorkspace calls, which need
    TVM's runtime; a microcontroller gets plain C instead (MakeUnpackedAPI, HoistScratchToWorkspace).
    """
    return [
        tirx.transform.BindTarget(C_TARGET),
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        # Row bands (PartialExecution's row mode): windows become line buffers kept across rows.
        RollRowBuffers(),
        # Shrinks each scratch buffer to the region its loop nest touches (after ScheduleForMcu's moves).
        s_tir.transform.CompactBufferAllocation(),
        SkipComputedRows(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        # A reduction left undecomposed (inside a row band) initialises its accumulator before its
        # loops, not behind a first-iteration test; needs LowerOpaqueBlock's explicit ``if``, and runs
        # before LoopPartition and UnrollLoop copy that ``if``.
        HoistReductionInit(),
        # Innermost integer reductions over contiguous operands become dot-product micro-kernel calls;
        # needs flat indices and the accumulator's initialisation hoisted (so the loop holds only the
        # multiply-accumulate), and runs before LoopPartition and UnrollLoop split or unroll the loop.
        UseDotKernels(),
        # Four output channels per pass over the data; blocks UseDotKernels' calls.
        BlockOutputChannels(),
        # A window every block of channels reads is copied once per pixel: rewrites BlockOutputChannels'
        # calls into ones BlockWeights blocks.
        StageWindows(),
        # Weights read only four channels at a time stored for one pointer (the compiler permutes the
        # constants): rewrites BlockOutputChannels' calls; before SplitBorders copies them.
        BlockWeights(),
        # Output loops split where the windows' tap clamps change: constant taps in the interior; reads
        # both passes' calls.
        SplitBorders(),
        # The runs calls over weights the compiler stores sparse visit only the kept filterlets: after
        # SplitBorders, whose copies of a call it rewrites all.
        SparseFilterlets(),
        # The same for the weights stored element-sparse: after SplitBorders, whose copies of a call it
        # rewrites all (SparseFilterlets rewrites other parameters: their order is free).
        SparseElements(),
        # Weights the compiler marked are decoded per block of channels into a scratch buffer: after
        # SplitBorders (every copy of a blocked call), before StorageRewrite and HoistScratchToWorkspace
        # (which place the scratch); parameters left blocked are PackWeights' and WidenWeights'.
        CompressWeights(),
        # Marked weights no kernel reads blocked are unpacked from int4 into a scratch once per call:
        # after BlockWeights, CompressWeights and the sparse passes (what they took stays theirs),
        # before StorageRewrite and HoistScratchToWorkspace (which place the scratch).
        UnpackInt4Weights(),
        tirx.transform.NarrowDataType(32),
        s_tir.transform.LoopPartition(),
        tirx.transform.VectorizeLoop(False),
        # Reuses scratch buffers inside one operator whose lifetimes do not overlap.
        tirx.transform.StorageRewrite(),
        tirx.transform.UnrollLoop(),
        tirx.transform.StmtSimplify(),
        tirx.transform.RemoveNoOp(),
        tirx.transform.CommonSubexprElim(),
        tirx.transform.LowerIntrin(),
        # An accumulator only guarded code initialises gets its value at its allocation (GCC's
        # -Wmaybe-uninitialized): after the passes that leave the guards in their final form.
        InitGuardedAccumulators(),
        # Unrolled copies may reuse loop variables; CodeGenC needs SSA.
        tirx.transform.ConvertSSA(),
    ]


def operator_passes(*, symbol_prefix: str) -> list[tvm.transform.Pass]:
    """TIR passes from fused s_tir operators to unpacked, lowered PrimFuncs with a workspace argument."""
    return [
        # Scheduling needs s_tir blocks, so it runs before lowering.
        ScheduleForMcu(inline_padding=True),
        # Restages operators chosen to overwrite an input; needs ScheduleForMcu's loop nests.
        ExecuteInPlace(),
        *lowering_passes(),
        # Needs flattened buffers (after FlattenBuffer).
        MakeUnpackedAPI(prefix=symbol_prefix),
        # Appends the workspace parameter after the unpacked ones.
        HoistScratchToWorkspace(align=8),
    ]


TVM_TIR_PIPELINE = "tvmmcu_inline_fixed_point"


def tvm_tir_pipeline() -> str:
    """The name of TVM's own TIR pipeline with InlineFixedPoint after it, registered with TVM:
    ``tvm.compile(graph-lowered module, target="llvm", tir_pipeline=pipeline.tvm_tir_pipeline())`` builds
    an integer-lowered model (:func:`graph_passes`) with TVM's backends and no tvm-mcu header.

    For TVM's build instead of tvm-mcu's C library: the graph passes' PrimFuncs call no micro-kernel (the
    TIR passes that add those calls are in :func:`operator_passes`), only the fixed-point helpers.
    """
    return register_tir_pipeline(
        TVM_TIR_PIPELINE,
        # After all of TVM's lowering: its analysers would expand the helpers' let-chains, and its
        # NarrowDataType rejects Let expressions (InlineFixedPoint's Ordering).
        lambda: [InlineFixedPoint()],
    )


def run(passes: list[tvm.transform.Pass], mod: tvm.IRModule) -> tvm.IRModule:
    return tvm.transform.Sequential(passes)(mod)
