"""The reducer shrinks a model to a minimal one on synthetic predicates, keeps every candidate valid,
never accepts a candidate the predicate rejects and stays within its test budget.

Fast: the predicates look at the graph; nothing is compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu.fuzz import random_cnn
from tvm_mcu.fuzz.reduce import bypass, drop_attribute, reduce_model, tidy

Predicate = Callable[[onnx.ModelProto], bool]


def _ceil_maxpool(model: onnx.ModelProto) -> bool:
    return any(
        n.op_type == "MaxPool" and any(a.name == "ceil_mode" and a.i == 1 for a in n.attribute)
        for n in model.graph.node
    )


def _has(op: str) -> Predicate:
    return lambda model: any(n.op_type == op for n in model.graph.node)


def _first_seed(predicate: Predicate, min_nodes: int) -> int:
    """The first seed whose model meets ``predicate`` with at least ``min_nodes`` nodes."""
    return next(s for s in range(500) if predicate(m := random_cnn(s)) and len(m.graph.node) >= min_nodes)


def test_reduces_to_the_one_node_the_predicate_needs() -> None:
    seed = _first_seed(_ceil_maxpool, 8)
    model = random_cnn(seed)
    result = reduce_model(model, _ceil_maxpool)
    assert [n.op_type for n in result.model.graph.node] == ["MaxPool"]
    assert _ceil_maxpool(result.model)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.steps and result.tests <= 80
    # Attributes the predicate does not need went; the one it needs stayed.
    attributes = {a.name for a in result.model.graph.node[0].attribute}
    assert "ceil_mode" in attributes and "strides" not in attributes and "pads" not in attributes


@pytest.mark.parametrize("op", ["Concat", "Gemm", "Softmax"])
def test_keeps_what_the_predicate_needs_and_little_else(op: str) -> None:
    predicate = _has(op)
    model = random_cnn(_first_seed(predicate, 8))
    result = reduce_model(model, predicate)
    ops = [n.op_type for n in result.model.graph.node]
    assert op in ops
    assert len(ops) <= 2 < len(model.graph.node)


def test_a_predicate_no_candidate_meets_leaves_the_model_alone() -> None:
    model = random_cnn(3)
    whole = tidy(model)
    assert whole is not None
    calls = []

    def only_the_original(m: onnx.ModelProto) -> bool:
        calls.append(len(m.graph.node))
        return m.SerializeToString() == whole.SerializeToString()

    result = reduce_model(model, only_the_original, max_tests=500)
    assert result.model.SerializeToString() == model.SerializeToString()
    assert result.steps == ()
    assert calls and result.tests == len(calls) < 500


def test_stays_within_the_test_budget() -> None:
    calls: list[int] = []
    result = reduce_model(random_cnn(11), lambda m: bool(calls.append(1)) or False, max_tests=3)
    assert result.tests == len(calls) == 3


def test_every_candidate_the_oracle_sees_is_valid() -> None:
    seen: list[onnx.ModelProto] = []

    def record(m: onnx.ModelProto) -> bool:
        seen.append(m)
        return _has("Conv")(m)

    reduce_model(random_cnn(_first_seed(_has("Conv"), 10)), record, max_tests=30)
    assert seen
    for m in seen:
        onnx.checker.check_model(m, full_check=True)


def _tiny(pool_attrs: dict[str, object], h: int = 4) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], **pool_attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, h, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_tidy_infers_output_shapes_and_drops_dead_parts() -> None:
    model = _tiny({"pads": [1, 1, 1, 1]})
    extra = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    model.graph.initializer.append(extra)
    model.graph.node.append(helper.make_node("Sigmoid", ["r"], ["dead"]))
    tidied = tidy(model)
    assert tidied is not None
    assert [n.op_type for n in tidied.graph.node] == ["Relu", "MaxPool"]
    assert not tidied.graph.initializer
    assert [d.dim_value for d in tidied.graph.output[0].type.tensor_type.shape.dim] == [1, 2, 4, 5]


def test_tidy_refuses_a_window_larger_than_its_padded_input() -> None:
    # onnxruntime runs this (its truncating division gives a 1-row output); the specification does not.
    assert tidy(_tiny({}, h=2)) is None
    assert tidy(_tiny({"pads": [1, 0, 0, 0]}, h=2)) is not None


def test_edits_keep_the_graph_connected() -> None:
    model = _tiny({"pads": [1, 1, 1, 1], "strides": [2, 2]})
    bypassed = tidy(bypass(model, 0, 0))
    assert bypassed is not None and [n.input[0] for n in bypassed.graph.node] == ["x"]
    dropped = tidy(drop_attribute(model, 1, "strides"))
    assert dropped is not None
    assert [d.dim_value for d in dropped.graph.output[0].type.tensor_type.shape.dim] == [1, 2, 4, 5]
