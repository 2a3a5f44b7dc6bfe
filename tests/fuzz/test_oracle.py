"""The second opinion: ``first_departure`` names the first node where ``onnx.reference`` and onnxruntime
part ways, and nothing when they agree.

The disagreeing model uses a real ``onnx.reference`` (onnx 1.23) mistake the fuzzer found: MaxPool with
``auto_pad=SAME_LOWER`` and a stride that does not divide the input gets one output column too few.
If a newer onnx fixes it, this model stops disagreeing and the test says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tvm_mcu.fuzz.oracle import first_departure


def _model(path: Path, pool: dict[str, object]) -> Path:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu_1"),
        helper.make_node("MaxPool", ["r"], ["p"], name="maxpool_2", kernel_shape=[2, 2], **pool),
        helper.make_node("Sigmoid", ["p"], ["y"], name="sigmoid_3"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, str(path))
    return path


def test_names_the_node_the_reference_gets_wrong(tmp_path: Path) -> None:
    path = _model(tmp_path / "m.onnx", {"auto_pad": "SAME_LOWER", "strides": [1, 2]})
    x = np.random.default_rng(0).standard_normal((1, 3, 3, 7)).astype(np.float32)
    departure = first_departure(path, [x])
    assert departure is not None, "onnx.reference now agrees with onnxruntime on SAME_LOWER MaxPool"
    assert departure.op == "MaxPool(auto_pad=SAME_LOWER)" and "maxpool_2" in departure.description
    assert "[1, 3, 3, 4]" in departure.description  # onnxruntime's (and the specification's) shape


def test_nothing_when_they_agree(tmp_path: Path) -> None:
    path = _model(tmp_path / "m.onnx", {"pads": [1, 1, 1, 1], "strides": [2, 2]})
    x = np.random.default_rng(0).standard_normal((1, 3, 3, 7)).astype(np.float32)
    assert first_departure(path, [x]) is None
