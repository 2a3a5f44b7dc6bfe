"""``docs/passes.md``: every pass of ``tvm_mcu.passes.relax`` and ``tvm_mcu.passes.tir`` with its contract
(its docstring: Matches, Rewrites to, Declines when, Numerics, Ordering), and examples of using the passes
in one's own ``tvm.transform`` pipeline (run as tests: ``tests/passes/test_passes_doc.py``).

    python -m tvm_mcu.passes.doc > docs/passes.md
"""

from __future__ import annotations

import inspect

EXAMPLES = """\
## Using the passes in your own pipeline

Every pass is a `tvm.transform` module pass: put it in a `tvm.transform.Sequential` with TVM's own.
`tvm_mcu.pipeline` lists the order tvm-mcu runs them in, with one comment per ordering constraint; a pass
given a function it cannot take yet says which pass must run first (`tvm_mcu.errors.PassOrderError`,
handed back by TVM's pass machinery as the message of its error).

A reduction written with `te`, lowered by TVM's passes and tvm-mcu's micro-kernel passes, then given the
plain C calling convention and a workspace argument instead of TVM's packed API:

```python
import tvm
from tvm import te

from tvm_mcu import pipeline
from tvm_mcu.passes.tir import HoistScratchToWorkspace, MakeUnpackedAPI

a = te.placeholder((4, 32), "int8", name="a")
w = te.placeholder((32,), "int8", name="w")
k = te.reduce_axis((0, 32), name="k")
y = te.compute((4,), lambda i: te.sum(a[i, k].astype("int32") * w[k].astype("int32"), axis=k), name="y")
mod = tvm.IRModule({"dot": te.create_prim_func([a, w, y])})

mine = tvm.transform.Sequential(
    [*pipeline.lowering_passes(), MakeUnpackedAPI(prefix="my_"), HoistScratchToWorkspace(align=8)]
)
out = mine(mod)
assert out["dot"].attrs["global_symbol"] == "my_dot"
assert "tvmmcu_dot_s8s8" in out["dot"].script()  # UseDotKernels: the SIMD dot-product kernel
```

The same passes in the wrong order: MakeUnpackedAPI needs TVM's lowering first.

```python
import pytest
import tvm
from tvm import te

from tvm_mcu.passes.tir import MakeUnpackedAPI

a = te.placeholder((4, 8), "int8", name="a")
k = te.reduce_axis((0, 8), name="k")
b = te.compute((4,), lambda i: te.sum(a[i, k].astype("int32"), axis=k), name="b")
mod = tvm.IRModule({"f": te.create_prim_func([a, b])})
with pytest.raises(Exception, match="MakeUnpackedAPI needs LowerOpaqueBlock and FlattenBuffer"):
    MakeUnpackedAPI()(mod)
```

A graph pass on an imported model: PruneChannels removes channels of a group found by
`tvm_mcu.analysis.channels.channel_groups`, here half of a convolution's output channels, and the
model still runs in TVM:

```python
import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_mcu import pipeline
from tvm_mcu.analysis.channels import channel_groups
from tvm_mcu.frontend import load_model
from tvm_mcu.passes.relax import PruneChannels

rng = np.random.default_rng(0)
nodes = [
    helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["h"], ["r"]),
    helper.make_node("Conv", ["r", "w2"], ["y"]),
]
weights = [
    numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w1"),
    numpy_helper.from_array(rng.standard_normal((2, 8, 1, 1)).astype(np.float32), "w2"),
]
graph = helper.make_graph(
    nodes,
    "two_convs",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
    weights,
)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), "two_convs.onnx")

mod = pipeline.run(pipeline.inference_passes(), load_model("two_convs.onnx").mod)
group = next(g for g in channel_groups(mod).prunable if g.size == 8)
pruned = PruneChannels(keep={group.gid: (0, 2, 4, 6)})(mod)
assert "R.Tensor((1, 4, 6, 6)" in pruned.script()  # the hidden tensor now has 4 channels
ex = relax.build(pruned, target="llvm")
vm = relax.VirtualMachine(ex, tvm.cpu())
x = rng.standard_normal((1, 1, 6, 6)).astype(np.float32)
assert vm["main"](tvm.runtime.tensor(x)).numpy().shape == (1, 2, 6, 6)
```

An int8 model built by TVM itself instead of tvm-mcu's C library: ONNX Runtime's `quantize_static` makes
a QDQ model, tvm-mcu's graph passes lower it to integer-only Relax and TIR, and `tvm.compile` builds it
for the host's LLVM with `pipeline.tvm_tir_pipeline()`, TVM's own TIR pipeline with InlineFixedPoint
last (the integer kernels' fixed-point helpers are otherwise C functions only tvm-mcu's library ships).
The graph passes add no micro-kernel calls (those come with the TIR passes of
`pipeline.operator_passes`), so nothing else is left to resolve:

```python
import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
from tvm import relax

from tvm_mcu import pipeline
from tvm_mcu.api import dequantize_linear, quantize_linear
from tvm_mcu.frontend import load_model
from tvm_mcu.passes.relax.make_integer_interface import io_quantization

rng = np.random.default_rng(0)
nodes = [
    helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["h"], ["r"]),
    helper.make_node("GlobalAveragePool", ["r"], ["p"]),
    helper.make_node("Flatten", ["p"], ["f"]),
    helper.make_node("Softmax", ["f"], ["y"], axis=1),
]
weights = [
    numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
    numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
]
graph = helper.make_graph(
    nodes,
    "conv_softmax",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
    weights,
)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), "float.onnx")


class Calibration(CalibrationDataReader):
    def __init__(self):
        self.samples = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.samples, None)


quantize_static("float.onnx", "int8.onnx", Calibration(), activation_type=QuantType.QInt8)

lowered = pipeline.run(pipeline.graph_passes(rounding="onnx"), load_model("int8.onnx").mod)
assert "tvmmcu_fp_reciprocal_scale" in lowered.script()  # softmax's fixed-point helpers
ex = tvm.compile(lowered, target="llvm", tir_pipeline=pipeline.tvm_tir_pipeline())
vm = relax.VirtualMachine(ex, tvm.cpu())

x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
[(scale_in, zero_in)] = io_quantization(lowered)["inputs"]  # the interface is int8: we quantise
[(scale_out, zero_out)] = io_quantization(lowered)["outputs"]
q = vm["main"](tvm.runtime.tensor(quantize_linear(x, scale_in, int(zero_in), "int8"))).numpy()
want = ort.InferenceSession("int8.onnx").run(None, {"x": x})[0]
assert np.abs(dequantize_linear(q, scale_out, int(zero_out)) - want).max() <= 1.0001 * scale_out
```
"""


def _section(title: str, module: object) -> list[str]:
    lines = [f"## {title}", ""]
    for name in module.__all__:  # type: ignore[attr-defined]
        doc = inspect.cleandoc(getattr(module, name).__doc__ or "")
        lines += [f"### {name}", "", "```text", doc, "```", ""]
    return lines


def render() -> str:
    from tvm_mcu.passes import relax, tir

    lines = [
        "# Passes",
        "",
        "Generated by `python -m tvm_mcu.passes.doc` from the passes' docstrings; do not edit. Importable",
        "as `from tvm_mcu.passes.relax import ...` and `from tvm_mcu.passes.tir import ...`.",
        "",
        EXAMPLES,
        *_section("Relax passes (tvm_mcu.passes.relax)", relax),
        *_section("TIR passes (tvm_mcu.passes.tir)", tir),
    ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
