"""Shared by the channel-pruning tests: zoo models in inference form, zeroing planned channels, running a
Relax module with TVM's own llvm build (an independent executor of the same IR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

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


def digits_cnn(path: Path, seed: int = 0) -> Path:
    """An 8x8 one-channel CNN built by hand with onnx.helper (not from the zoo): conv 3x3 (1 -> 8) with a
    bias, Relu, conv 3x3 (8 -> 16), Relu, a 1x1 conv (16 -> 16, no filterlets), global average pool,
    Flatten and Gemm to 10 classes; seeded weights. Written to ``path``."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pointwise"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [
        init("w1", 8, 1, 3, 3),
        init("b1", 8),
        init("w2", 16, 8, 3, 3),
        init("w3", 16, 16, 1, 1),
        init("b3", 16),
        init("wf", 10, 16),
        init("bf", 10),
    ]
    return write_digits_model(path, "digits_cnn", nodes, inits)


def write_digits_model(path: Path, name: str, nodes: list[Any], inits: list[Any]) -> Path:
    """``nodes`` and ``inits`` as a checked opset-13 model from ``x`` (1x1x8x8, the digits) to ``y``
    (10 logits), written to ``path``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def torch_digits_cnn(path: Path, seed: int = 0) -> Path:
    """A small 8x8 CNN defined in PyTorch and written by its (legacy, opset 13) ONNX exporter: conv 3x3
    + BatchNorm + ReLU, a stride-2 conv 3x3 + ReLU, a depthwise 3x3, average pool, flatten, linear."""
    import warnings

    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["x"],
            output_names=["y"],
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
        )
    return path


def int4_initializers(path: Path, dtype: int = onnx.TensorProto.INT4) -> int:
    """The int4 (``dtype``) weight tensors of a QDQ model (not their zero points)."""
    inits = onnx.load(str(path)).graph.initializer
    return sum(i.data_type == dtype and len(i.dims) >= 2 for i in inits)
