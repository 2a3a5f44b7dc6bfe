"""TIR (tensor-level) passes: scheduling for small scratch, the unpacked C calling convention, workspaces.

Each is a ``tvm.transform`` module pass; ``tvm_mcu.pipeline`` lists them in order, with the reason for
each ordering constraint.
"""

from tvm_mcu.passes.tir.block_output_channels import BlockOutputChannels
from tvm_mcu.passes.tir.block_weights import BlockWeights
from tvm_mcu.passes.tir.compress_weights import CompressWeights
from tvm_mcu.passes.tir.execute_in_place import ExecuteInPlace
from tvm_mcu.passes.tir.hoist_reduction_init import HoistReductionInit, InitGuardedAccumulators
from tvm_mcu.passes.tir.hoist_scratch_to_workspace import HoistScratchToWorkspace
from tvm_mcu.passes.tir.inline_fixed_point import InlineFixedPoint
from tvm_mcu.passes.tir.make_unpacked_api import MakeUnpackedAPI
from tvm_mcu.passes.tir.pack_weights import PackWeights
from tvm_mcu.passes.tir.partial_execution import PartialExecution
from tvm_mcu.passes.tir.row_bands import RollRowBuffers, SkipComputedRows
from tvm_mcu.passes.tir.schedule_for_mcu import ScheduleForMcu
from tvm_mcu.passes.tir.sparse_elements import SparseElements
from tvm_mcu.passes.tir.sparse_filterlets import SparseFilterlets
from tvm_mcu.passes.tir.split_borders import SplitBorders
from tvm_mcu.passes.tir.stage_windows import StageWindows
from tvm_mcu.passes.tir.unpack_int4_weights import UnpackInt4Weights
from tvm_mcu.passes.tir.use_dot_kernels import UseDotKernels
from tvm_mcu.passes.tir.widen_weights import WidenWeights

__all__ = [
    "BlockOutputChannels",
    "BlockWeights",
    "CompressWeights",
    "ExecuteInPlace",
    "HoistReductionInit",
    "InitGuardedAccumulators",
    "HoistScratchToWorkspace",
    "InlineFixedPoint",
    "MakeUnpackedAPI",
    "PackWeights",
    "PartialExecution",
    "RollRowBuffers",
    "ScheduleForMcu",
    "SkipComputedRows",
    "SparseElements",
    "SparseFilterlets",
    "SplitBorders",
    "StageWindows",
    "UnpackInt4Weights",
    "UseDotKernels",
    "WidenWeights",
]
