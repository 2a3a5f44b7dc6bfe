"""Relax (graph-level) passes.

Each is a ``tvm.transform`` pass; ``tvm_mcu.pipeline`` lists them in order, with the reason for each
ordering constraint.
"""

from tvm_mcu.passes.relax.group_chains import GroupChains
from tvm_mcu.passes.relax.lower_quantized_ops import LowerQuantizedOps
from tvm_mcu.passes.relax.make_integer_interface import MakeIntegerInterface
from tvm_mcu.passes.relax.prune_channels import PruneChannels
from tvm_mcu.passes.relax.raise_tir_calls import RaiseTirCalls

__all__ = ["GroupChains", "LowerQuantizedOps", "MakeIntegerInterface", "PruneChannels", "RaiseTirCalls"]
