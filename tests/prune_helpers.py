"""Shared by the channel-pruning tests: zoo models in inference form, zeroing planned channels, running a
Relax module with TVM's own llvm build (an independent executor of the same IR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.zoo import write_model
from tvm_mcu import _tvm, pipeline
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.analysis.channels import ChannelPlan, bindings
from tvm_mcu.frontend import ImportedModel, load_model

# Binary ops whose constant operand is added: zero there keeps a zero channel zero.
_ADDITIVE = ("relax.add", "relax.subtract")


def inference_model(name: str, directory: Path) -> tuple[ImportedModel, _tvm.IRModule]:
    imported = load_model(write_model(name, directory))
    return imported, pipeline.run(pipeline.inference_passes(), imported.mod)


def zero_channels(mod: _tvm.IRModule, plan: ChannelPlan, keep: dict[int, list[int]]) -> _tvm.IRModule:
    """The module with every channel ``keep`` drops made exactly zero: its producers' weights and the
    biases added to it are zero (scales are left alone; they multiply zero)."""
    from tvm_mcu.passes.relax.prune_channels import removed_units

    gone = removed_units(plan, keep)
    binds = bindings(mod["main"])
    replace: dict[tuple[int, int], np.ndarray] = {}
    for s in plan.sites:
        call = binds[s.binding].value
        if not (s.produces or _tvm.op_name(call) in _ADDITIVE):
            continue
        key = (s.binding, s.arg)
        arr = replace.get(key, _tvm.const_value(call.args[s.arg]).copy())
        drop = [k for k, n in enumerate(s.nodes) if plan.unit_of[n] in gone]
        index = [slice(None)] * arr.ndim
        index[s.axis] = drop  # type: ignore[call-overload]
        arr[tuple(index)] = 0
        replace[key] = arr
    by_const = [(binds[b].value.args[k], v) for (b, k), v in replace.items()]

    def on_const(c: object) -> object:
        return next((_tvm.relax_const(v) for old, v in by_const if old.same_as(c)), c)

    return tvm.IRModule(
        {gv: _tvm.structural_map(f, [(_tvm.RelaxConst, on_const)]) for gv, f in mod.functions_items()}
    )


def run_llvm(mod: _tvm.IRModule, inputs: list[np.ndarray]) -> list[np.ndarray]:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def random_inputs(imported: ImportedModel, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.shape).astype(np.float32) for s in imported.inputs]
