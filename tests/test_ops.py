"""The operator registry (tvm_mcu.ops): one record per Relax op, complete for what the frontend accepts.

Every ONNX operator the frontend accepts is imported (a one-node model each); every Relax op that comes
out must have a record, so each part (channel analysis, training, ONNX export, int8 lowering) either
has its rule or refuses the op by name before doing any work. Each part's table is built from the
registry, so the parts hold exactly the ops the registry gives them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu import _tvm, ops, pipeline
from tvm_mcu.errors import UnsupportedOpError
from tvm_mcu.frontend import support

X = [1, 4, 6, 6]


def _c(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


# Inputs, attributes and initializers of a minimal node per ONNX operator (default: one input "x").
_SPECS: dict[str, tuple[list[str], dict[str, object], list[onnx.TensorProto]] | None] = {
    "Conv": (["x", "w"], {"kernel_shape": [3, 3]}, [_c("w", np.ones((4, 4, 3, 3), np.float32))]),
    "ConvTranspose": (["x", "w"], {"kernel_shape": [3, 3]}, [_c("w", np.ones((4, 4, 3, 3), np.float32))]),
    "Gemm": (["f", "gw"], {"transB": 1}, [_c("gw", np.ones((3, 144), np.float32))]),
    "MatMul": (["f", "mw"], {}, [_c("mw", np.ones((144, 3), np.float32))]),
    "MaxPool": (["x"], {"kernel_shape": [2, 2]}, []),
    "AveragePool": (["x"], {"kernel_shape": [2, 2]}, []),
    "ReduceMean": (["x"], {"axes": [2, 3]}, []),
    "ReduceMax": (["x"], {"axes": [2, 3]}, []),
    "ReduceSum": (["x", "ax"], {}, [_c("ax", np.array([2, 3], np.int64))]),
    **{op: (["x", "x"], {}, []) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min")},
    "Pow": (["x", "p"], {}, [_c("p", np.float32(2))]),
    "Concat": (["x", "x"], {"axis": 1}, []),
    "Pad": (["x", "pads"], {}, [_c("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]),
    "Reshape": (["x", "sh"], {}, [_c("sh", np.array([1, 144], np.int64))]),
    "Transpose": (["x"], {"perm": [0, 2, 3, 1]}, []),
    "Squeeze": (["s", "ax1"], {}, [_c("ax1", np.array([3], np.int64))]),
    "Unsqueeze": (["x", "ax0"], {}, [_c("ax0", np.array([4], np.int64))]),
    "Softmax": (["x"], {"axis": 1}, []),
    "LogSoftmax": (["x"], {"axis": 1}, []),
    "BatchNormalization": (["x", "g", "b", "m", "v"], {}, [_c(n, np.ones(4, np.float32)) for n in "gbmv"]),
    "InstanceNormalization": (["x", "g", "b"], {}, [_c(n, np.ones(4, np.float32)) for n in "gb"]),
    "Gather": (["x", "gi"], {"axis": 1}, [_c("gi", np.array([0, 2], np.int64))]),
    "PRelu": (["x", "sl"], {}, [_c("sl", np.ones((4, 1, 1), np.float32))]),
    "Tile": (["x", "rp"], {}, [_c("rp", np.array([1, 1, 2, 1], np.int64))]),
    "Clip": (["x", "lo", "hi"], {}, [_c("lo", np.float32(0)), _c("hi", np.float32(6))]),
    # Not operators of a float graph on their own: a shape or a constant feeds another node, and
    # quantize/dequantize are the int8 dialect (tests/passes/test_lower_quantized_ops_onnx.py).
    "Shape": None,
    "Constant": None,
    "QuantizeLinear": None,
    "DequantizeLinear": None,
}


def _relax_ops_of(op: str) -> set[str]:
    spec = _SPECS.get(op, (["x"], {}, []))
    assert spec is not None
    ins, attrs, inits = spec
    nodes = []
    if "f" in ins:
        nodes.append(helper.make_node("Flatten", ["x"], ["f"]))
    if "s" in ins:
        nodes.append(helper.make_node("ReduceMean", ["x"], ["s"], axes=[3]))
    nodes.append(helper.make_node(op, ins, ["y"], **attrs))
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, X)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    mod = pipeline.run(pipeline.inference_passes(), _tvm.from_onnx(model, {"x": X}))
    found: set[str] = set()
    _tvm.structural_walk(mod["main"].body, (_tvm.RelaxCall, lambda c: found.add(_tvm.op_name(c) or "")))
    return found - {""}


FRONTEND_OPS = [op for op in support.ONNX_RULES if _SPECS.get(op, ()) is not None]


@pytest.mark.parametrize("onnx_op", FRONTEND_OPS)
def test_every_relax_op_the_frontend_produces_has_a_record(onnx_op):
    produced = _relax_ops_of(onnx_op)
    missing = sorted(op for op in produced if op not in ops.OPS)
    assert not missing, f"ONNX {onnx_op} imports to {missing}, which have no record in tvm_mcu.ops"


def test_each_part_holds_exactly_the_ops_the_registry_gives_it():
    from tvm_mcu.analysis import channels
    from tvm_mcu.frontend import onnx_export
    from tvm_mcu.passes.relax.integer import handlers
    from tvm_mcu.train import torch_rules

    tables = {
        "channels": set(channels.RULES),
        "train": set(torch_rules.RULES),
        "export": set(onnx_export._RULES),
        "int8": set(handlers.HANDLERS) & set(ops.OPS),
    }
    for part, have in tables.items():
        want = {name for name, op in ops.OPS.items() if isinstance(getattr(op, part), str)}
        assert have == want, f"{part}: {sorted(have ^ want)}"
    for name, op in ops.OPS.items():
        for part in ops.PARTS:
            rule = getattr(op, part)
            assert isinstance(rule, str) or (isinstance(rule, ops.Refused) and rule.reason), (name, part)


def test_a_name_missing_from_a_part_is_a_clear_error():
    with pytest.raises(KeyError, match=r"the channels rule '_conv2d' of relax.nn.conv2d is not defined"):
        ops.rules("channels", {})


def test_prune_refuses_an_op_it_cannot_write_before_any_work(tmp_path):
    from tvm_mcu.prune import parse_budget, prune_model

    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[3, 3], name="upsample")]
    graph = helper.make_graph(
        nodes,
        "deconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, X)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [_c("w", np.ones((4, 4, 3, 3), np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "deconv.onnx"
    onnx.save(model, path)
    with pytest.raises(
        UnsupportedOpError,
        match=r"prune cannot take deconv: ConvTranspose 'upsample' \(relax.nn.conv2d_transpose\) "
        r"\(writing ONNX\)",
    ):
        prune_model(path, board="mps2-an386", budget=parse_budget("sram=4KiB"), out_path=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def _elementwise_model() -> onnx.ModelProto:
    """A CNN through every element-wise op the registry gained for pruning: Tanh, Exp, Sqrt (of an Abs),
    Neg, PRelu per channel, Erf, Pow, ReduceMax/ReduceSum over space, Unsqueeze/Squeeze."""
    rng = np.random.default_rng(0)
    inits = [
        _c("w1", (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32)),
        _c("w2", (rng.standard_normal((4, 6, 1, 1)) * 0.3).astype(np.float32)),
        _c("slope", np.array([0.1, -0.2, 0.3, 0.05, 0.5, 1.5], np.float32).reshape(6, 1, 1)),
        _c("two", np.float32(2.0)),
        _c("axes", np.array([2, 3], np.int64)),
        _c("ax0", np.array([4], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c1"], ["t"]),
        helper.make_node("PRelu", ["t", "slope"], ["p"]),
        helper.make_node("Erf", ["p"], ["e"]),
        helper.make_node("Neg", ["e"], ["n"]),
        helper.make_node("Abs", ["n"], ["a"]),
        helper.make_node("Sqrt", ["a"], ["s"]),
        helper.make_node("Pow", ["s", "two"], ["q"]),
        helper.make_node("Exp", ["q"], ["ex"]),
        helper.make_node("Conv", ["ex", "w2"], ["c2"]),
        helper.make_node("ReduceMax", ["c2"], ["m"], axes=[3], keepdims=1),
        helper.make_node("ReduceSum", ["m", "axes"], ["r"], keepdims=1),
        helper.make_node("Unsqueeze", ["r", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "elementwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_the_new_rules_export_and_train_what_the_model_computes(tmp_path):
    """Written back to ONNX and evaluated by the training bridge, the model computes what onnxruntime
    computes for the original; its channel groups pass through every one of these ops."""
    from tvm_mcu.analysis.channels import channel_groups
    from tvm_mcu.frontend import load_model
    from tvm_mcu.frontend.onnx_export import export_onnx
    from tvm_mcu.reference import ONNXRUNTIME, run_oracle

    path = tmp_path / "elementwise.onnx"
    onnx.save(_elementwise_model(), path)
    model = load_model(path)
    mod = pipeline.run(pipeline.inference_passes(), model.mod)
    x = [np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)]
    want = run_oracle(ONNXRUNTIME, model, x).outputs
    assert want is not None
    written = tmp_path / "written.onnx"
    written.write_bytes(export_onnx(mod, input_names=["x"], output_names=["y"]).SerializeToString())
    got = run_oracle(ONNXRUNTIME, load_model(written), x).outputs
    assert got is not None
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    plan = channel_groups(mod)
    assert [g.size for g in plan.prunable] == [6], str(plan)  # the first conv's channels, through it all

    import torch  # installed by make test (the train extra)

    from tvm_mcu.train.bridge import RelaxModule

    with torch.no_grad():
        out = RelaxModule(mod)(torch.from_numpy(x[0]))
    np.testing.assert_allclose(out.numpy(), want[0], rtol=1e-5, atol=1e-5)
