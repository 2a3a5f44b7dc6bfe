"""The random CNN generator: deterministic per seed, valid (ONNX checker, onnxruntime with the declared
shapes), within the size limits, and covering every feature the fuzzer promises over a range of seeds.

Fast: no TVM, no emulator.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tvm_mcu.fuzz import random_cnn
from tvm_mcu.fuzz.features import features
from tvm_mcu.fuzz.generate import MAX_ELEMENTS, MAX_PARAMS, OPSETS
from tvm_mcu.fuzz.reduce import shapes

SEEDS = range(50)

# What the fuzzer must exercise across SEEDS (op types, attributes, graph shapes).
REQUIRED = {
    # convolutions
    "Conv.k1", "Conv.k3", "Conv.k5", "Conv.nonsquare", "Conv.stride1", "Conv.stride2", "Conv.stride3",
    "Conv.dilation", "Conv.pads", "Conv.pads_asymmetric", "Conv.auto_pad=SAME_UPPER",
    "Conv.auto_pad=SAME_LOWER", "Conv.auto_pad=VALID", "Conv.depthwise", "Conv.grouped", "Conv.no_bias",
    # pooling
    "MaxPool", "MaxPool.ceil_mode", "MaxPool.pads", "MaxPool.pads_asymmetric", "MaxPool.stride2",
    "MaxPool.dilation", "AveragePool", "AveragePool.ceil_mode", "AveragePool.pads",
    "AveragePool.count_include_pad=0", "AveragePool.count_include_pad=1", "GlobalAveragePool",
    "GlobalMaxPool",
    # activations
    "Relu", "Clip.both", "Clip.min_only", "Clip.max_only", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
    "HardSwish",
    # the rest of the graph
    "BatchNormalization", "Add.tensors", "Concat", "Mul.const", "Sub.const", "Pad.constant",
    "Pad.reflect", "Pad.edge", "Reshape", "Flatten", "Transpose", "Identity", "Gemm", "Gemm.transB",
    "Softmax",
    # the model's interface
    "outputs=1", "outputs=2", "outputs=3", "inputs=2", "input_nonsquare",
    *(f"opset={v}" for v in OPSETS),
}  # fmt: skip


@functools.cache
def _model(seed: int) -> onnx.ModelProto:
    return random_cnn(seed)


def _run(model: onnx.ModelProto, seed: int) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}
    return list(session.run(None, feeds))


@pytest.mark.parametrize("seed", [0, 7, 123], ids=lambda s: f"seed{s}")
def test_same_seed_gives_the_same_bytes(seed: int) -> None:
    first = random_cnn(seed).SerializeToString(deterministic=True)
    assert random_cnn(seed).SerializeToString(deterministic=True) == first
    assert random_cnn(seed + 1).SerializeToString(deterministic=True) != first


def test_global_random_state_does_not_matter() -> None:
    import random

    random.seed(1)
    np.random.seed(1)
    first = random_cnn(5).SerializeToString(deterministic=True)
    random.seed(2)
    np.random.seed(2)
    assert random_cnn(5).SerializeToString(deterministic=True) == first


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_model_is_valid_small_and_runs(seed: int) -> None:
    model = _model(seed)
    onnx.checker.check_model(model, full_check=True)
    known = shapes(model)
    assert all(int(np.prod(s)) <= MAX_ELEMENTS for s in known.values()), max(known.values(), key=np.prod)
    floats = sum(t.size for t in map(numpy_helper.to_array, model.graph.initializer) if t.dtype == np.float32)
    assert floats <= MAX_PARAMS
    outputs = _run(model, seed)
    declared = [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in model.graph.output]
    assert [o.shape for o in outputs] == declared
    # He-scaled weights: a standard-normal input gives outputs that are finite and not exploding.
    assert all(np.isfinite(o).all() and np.abs(o).max() < 1e3 for o in outputs)


def test_features_cover_the_fuzzers_promise() -> None:
    seen: set[str] = set()
    for seed in SEEDS:
        seen |= features(_model(seed))
    missing = REQUIRED - seen
    assert not missing, f"no model of seeds {SEEDS.start}..{SEEDS.stop - 1} has {sorted(missing)}"


def test_features_reads_a_crafted_model() -> None:
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.zeros((4, 1, 3, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=4, strides=[2, 1], pads=[0, 0, 1, 0]),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], ceil_mode=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tags = features(model)
    assert {
        "Conv.depthwise",
        "Conv.nonsquare",
        "Conv.stride2",
        "Conv.pads_asymmetric",
        "Conv.no_bias",
    } <= tags
    assert {"MaxPool.ceil_mode", "opset=17", "input_nonsquare", "outputs=1"} <= tags
    assert "Conv.grouped" not in tags and "Conv.dilation" not in tags


def test_sample_covers_the_features() -> None:
    from tests.fuzz.test_sample import FLOAT_SEEDS

    seen: set[str] = set()
    for seed in FLOAT_SEEDS:
        seen |= features(_model(seed))
    assert not REQUIRED - seen, sorted(REQUIRED - seen)
