"""Scheduling choices: in-place execution (which steps, and that the result is exact and smaller)."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest

from tests import graphs, host
from tests.zoo import ALL_MODELS, write_model
from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.compiler import Compiled, compile_module
from tvm_mcu.frontend import ImportedModel, load_model, random_inputs
from tvm_mcu.schedule import inplace
from tvm_mcu.schedule.graph import Graph, Step, Tensor
from tvm_mcu.schedule.memory import plan_memory


# Models whose peak step is a depthwise or pointwise convolution or an element-wise op on a dead input.
def _assert_same_outputs(model: ImportedModel, a: Compiled, b: Compiled, tmp_path: Path) -> None:
    """Both libraries, built with host gcc, give bit-identical outputs on a seeded input."""
    inputs = random_inputs(model, seed=7)
    lib_a = host.build_shared(a, tmp_path / "a", f"{model.name}_a")
    lib_b = host.build_shared(b, tmp_path / "b", f"{model.name}_b")
    for want, got in zip(host.run(lib_a, a, inputs), host.run(lib_b, b, inputs), strict=True):
        np.testing.assert_array_equal(got, want)


SHRINKS = ["int8_ds_cnn_block", "mobilenet_block", "conv_grouped_depthwise"]


@pytest.mark.parametrize("name", [*SHRINKS, "resnet_block", "int8_resnet_block"])
def test_in_place_is_bit_exact_with_separate_buffers(name: str, tmp_path: Path) -> None:
    model = load_model(write_model(name, tmp_path))
    separate = compile_module(model.mod, model_name=name, in_place=False, partial_execution=False)
    shared = compile_module(model.mod, model_name=name, partial_execution=False)
    if name in SHRINKS:
        assert any(s.in_place for s in shared.graph.steps), "no step runs in place"
    assert not any(s.in_place for s in separate.graph.steps)
    _assert_same_outputs(model, separate, shared, tmp_path)
    assert shared.plan.arena_bytes <= separate.plan.arena_bytes
    if name in SHRINKS:
        assert shared.plan.arena_bytes < separate.plan.arena_bytes


@pytest.mark.parametrize("name", ALL_MODELS, ids=ALL_MODELS)
def test_in_place_never_writes_over_the_caller_or_a_live_tensor(name: str, tmp_path: Path) -> None:
    compiled = compile_module(load_model(write_model(name, tmp_path)).mod, model_name=name)
    graph = compiled.graph
    for i, step in enumerate(graph.steps):
        if not step.in_place:
            continue
        overwritten = graph.tensors[step.output].alias_of
        assert overwritten is not None and overwritten in step.inputs
        assert graph.storage_root(overwritten) not in {graph.storage_root(n) for n in graph.inputs}
        assert step.output not in graph.outputs
        # Later steps may read the output (same storage), never the overwritten input itself.
        assert not any(overwritten in s.inputs for s in graph.steps[i + 1 :])


_t = graphs.tensor


def _graph() -> Graph:
    """x -> a -> b (depthwise-like on a) -> y (reads a and b): a is still live when b is computed."""
    tensors = [_t("x", 8, "input"), _t("a", 64), _t("b", 64), _t("c", 64), _t("y", 8, "output")]
    steps = [
        Step("a", "conv", ("x",), "a", "conv2d"),
        Step("b", "dw", ("a",), "b", "conv2d"),
        Step("c", "dw", ("b",), "c", "conv2d"),
        Step("y", "add", ("a", "c"), "y", "add"),
    ]
    return graphs.graph(steps, tensors)


def test_candidates_skip_inputs_read_later_and_model_inputs() -> None:
    options = {"dw": [InPlace("depthwise", 0, 8)], "conv": [InPlace("pointwise", 0, 8)]}
    cands = inplace.candidates(_graph(), options)
    # a is read again by the add: only c = dw(b) may overwrite its input; conv reads the model input.
    assert [(c.step, c.input) for c in cands] == [(2, "b")]


def test_a_step_whose_output_a_model_output_views_never_runs_in_place() -> None:
    """y = flatten(mean(c)): mean's output lives in the caller's buffer for y (its view), sized for y;
    writing it over c's arena buffer would place c there instead, and overflow into the next output
    (found by the fuzzer: a conv output that was also a model output came back overwritten)."""
    tensors = [
        _t("x", 8, "input"),
        _t("a", 72, "output"),
        _t("c", 72),
        _t("m", 36),
        _t("y", 36, "alias", alias_of="m"),
    ]
    steps = [
        Step("a", "conv", ("x",), "a", "conv2d"),
        Step("c", "clip", ("a",), "c", "tir_clip"),
        Step("m", "mean", ("c",), "m", "mean"),
    ]
    graph = graphs.graph(steps, tensors, outputs=("y", "a"))
    options = {"mean": [InPlace("depthwise", 0, 8)], "tir_clip": [InPlace("elementwise", 0, 0)]}
    assert inplace.candidates(graph, options) == []


def test_choose_takes_convolutions_only_where_they_lower_the_peak() -> None:
    graph = _graph()
    options = {"dw": [InPlace("depthwise", 0, 8)]}
    chosen_graph, chosen = inplace.choose(graph, options)
    assert [c.step for c in chosen] == [2]
    assert chosen_graph.storage_root("c") == "b"
    assert plan_memory(chosen_graph).lower_bound < plan_memory(graph).lower_bound
    # A scratch as large as the saving gains nothing: nothing is chosen.
    _, none = inplace.choose(graph, {"dw": [InPlace("depthwise", 0, 64)]})
    assert none == []


# Models with a producer followed by per-channel operators (pooling, depthwise).
CHAINED = [
    "mobilenet_block",
    "conv_grouped_depthwise",
    "int8_ds_cnn_block",
    "int8_resnet_block",
    "resnet_block",
]


@pytest.mark.parametrize("name", CHAINED)
def test_partial_execution_is_bit_exact_with_whole_tensors(name: str, tmp_path: Path) -> None:
    model = load_model(write_model(name, tmp_path))
    whole = compile_module(model.mod, model_name=name, in_place=False, partial_execution=False)
    split = compile_module(model.mod, model_name=name, in_place=False, sram_budget=None)
    _assert_same_outputs(model, whole, split, tmp_path)
    assert split.plan.arena_bytes <= whole.plan.arena_bytes


def test_demo_model_runs_its_first_block_a_channel_at_a_time() -> None:
    from tvm_mcu.demo import demo_files

    model = load_model(demo_files()[0])
    whole = compile_module(model.mod, model_name="demo", in_place=False, partial_execution=False)
    split = compile_module(model.mod, model_name="demo")
    assert split.schedule == "partial execution"
    chains = [s for s in split.graph.steps if s.partial]
    assert chains and chains[0].partial.startswith("channels:axis=1:slice=1:")
    # conv -> pool: the 8x28x28 float conv output (25,088 B) is never materialised.
    assert max(split.profile) < max(whole.profile) / 2
    assert split.plan.arena_bytes == split.plan.lower_bound


def test_find_chains_stops_at_shared_tensors_and_mixing_ops() -> None:
    from tvm_mcu.schedule.partial import find_chains

    tensors = [
        _t("x", 8, "input"),
        _t("a", 64),
        _t("b", 64),
        _t("c", 64),
        _t("d", 64),
        _t("y", 8, "output"),
    ]
    steps = [
        Step("a", "conv", ("x",), "a", "conv2d"),
        Step("b", "pool", ("a",), "b", "max_pool2d"),
        Step("c", "pool", ("b",), "c", "max_pool2d"),
        Step("d", "conv", ("c",), "d", "conv2d"),  # mixes channels: ends the chain
        Step("y", "pool", ("d",), "y", "max_pool2d"),
    ]
    graph = graphs.graph(steps, tensors)
    options = {"pool": [InPlace("depthwise", 0, 8, 1)]}
    chains = find_chains(graph, options, accumulate=False)
    assert [c.steps for c in chains] == [("a", "b", "c"), ("d", "y")]
    # The second conv reduces over the chain's channels: it can accumulate the slices.
    chains = find_chains(graph, options)
    assert [(c.steps, c.accumulate) for c in chains] == [(("a", "b", "c", "d"), True)]
    # A tensor read twice must exist whole: it ends the chain (as the chain's output).
    shared = _also_reads_b(graph)
    assert [c.steps for c in find_chains(shared, options)] == [("a", "b"), ("d", "y")]


def _also_reads_b(graph: Graph) -> Graph:
    """``graph`` with the second conv also reading ``b``."""
    import attrs

    steps = list(graph.steps)
    steps[3] = attrs.evolve(steps[3], inputs=("c", "b"))
    return attrs.evolve(graph, steps=tuple(steps))


def _t4(name: str, rows: int, kind: str = "intermediate") -> Tensor:
    return Tensor(name, (1, rows, 8, 4), "int8", kind)


def test_find_row_chains_takes_windowed_runs_and_stops_at_shared_tensors() -> None:
    from tvm_mcu.schedule.partial import find_row_chains

    tensors = [_t4("x", 16, "input"), _t4("a", 16), _t4("b", 16), _t4("c", 8), _t4("d", 8), _t4("p", 1)]
    tensors.append(Tensor("y", (1, 10), "int8", "output"))
    steps = [
        Step("a", "conv", ("x",), "a", "conv2d"),
        Step("b", "conv", ("a",), "b", "conv2d"),
        Step("c", "pool", ("b",), "c", "max_pool2d"),
        Step("d", "conv", ("c",), "d", "conv2d"),
        Step("p", "gap", ("d",), "p", "avg_pool2d"),  # one output row: would need all of d
        Step("y", "fc", ("p",), "y", "dense"),  # not windowed: ends the run
    ]
    graph = Graph({t.name: t for t in tensors}, tuple(steps), ("x",), ("y",), {})
    axes = {"conv": 1, "pool": None, "gap": None, "fc": None}
    chains = find_row_chains(graph, axes)
    assert [(c.steps, c.mode, c.axis, c.spec) for c in chains] == [
        (("a", "b", "c", "d"), "rows", 1, "rows:axis=1")
    ]
    # A tensor with a second reader must exist whole: a chain can only start from it.
    shared = attrs.evolve(graph, steps=(*steps[:3], Step("d", "conv", ("c", "a"), "d", "add"), *steps[4:]))
    assert [c.steps for c in find_row_chains(shared, axes)] == [("b", "c")]
    # Kernels that disagree on (or do not say) where the rows are: no chain.
    assert find_row_chains(graph, {"conv": None, "pool": None}) == []


def _run(shapes: list[tuple[int, ...]]) -> Graph:
    """A run of convolutions: input ``x`` of ``shapes[0]``, step ``s<k>`` writing ``shapes[k + 1]``,
    then a dense layer (not windowed: it ends the run)."""
    tensors = [Tensor("x", shapes[0], "int8", "input")]
    steps, prev = [], "x"
    for k, shape in enumerate(shapes[1:]):
        tensors.append(Tensor(f"s{k}", shape, "int8", "intermediate"))
        steps.append(Step(f"s{k}", "conv", (prev,), f"s{k}", "conv2d"))
        prev = f"s{k}"
    tensors.append(Tensor("y", (1, 10), "int8", "output"))
    steps.append(Step("y", "fc", (prev,), "y", "dense"))
    return Graph({t.name: t for t in tensors}, tuple(steps), ("x",), ("y",), {})


def test_a_run_longer_than_the_depth_bound_is_cut_where_a_tensor_is_small() -> None:
    from tvm_mcu.schedule.partial import find_row_chains

    # 16 rows of 8x16 channels, then a stride-2 step down to 2 channels (128 B), then 8 rows of 16.
    shapes = [(1, 16, 8, 4), (1, 16, 8, 16), (1, 16, 8, 16), (1, 8, 8, 2), (1, 8, 8, 16), (1, 8, 8, 16)]
    graph = _run([*shapes, (1, 8, 8, 4)])
    axes = {"conv": 1, "fc": None}
    chains = find_row_chains(graph, axes, lambda callee, axis: 3, max_depth=3)
    assert [c.steps for c in chains] == [("s0", "s1", "s2"), ("s3", "s4", "s5")]
    # Within the bound, the run stays one chain.
    assert [c.steps for c in find_row_chains(graph, axes, lambda callee, axis: 3, max_depth=6)] == [
        ("s0", "s1", "s2", "s3", "s4", "s5")
    ]


@pytest.mark.parametrize("max_depth", [2, 3, 5])
def test_a_long_run_is_cut_into_pieces_of_bounded_depth_in_order(max_depth: int) -> None:
    from tvm_mcu.schedule.partial import cut_run

    rng = np.random.default_rng(0)
    shapes = [(1, 24, 6, int(c)) for c in rng.integers(1, 16, 31)]
    graph = _run(shapes)
    names = tuple(s.name for s in graph.steps[:-1])
    pieces = cut_run(graph, names, 1, lambda callee, axis: 3, max_depth=max_depth)
    assert tuple(n for p in pieces for n in p) == names
    assert all(1 <= len(p) <= max_depth for p in pieces)


def _deep_ds_cnn(blocks: int) -> bytes:
    """A MobileNetV1-style int8 network, 32x32x3: conv 3x3/2, ``blocks`` depthwise-separable blocks
    (depthwise 3x3 + RELU, pointwise + RELU; every third strided), global average pool, classifier."""
    from tests.zoo.tflite_int8 import AF, BO, SAME, VALID, Int8Writer

    w = Int8Writer(seed=131)
    x = w.activation("input", (1, 32, 32, 3), 0.05, -1)
    y = w.conv2d("stem", x, 8, (3, 3), 2, SAME, AF.RELU)
    for i in range(blocks):
        y = w.depthwise(f"dw{i}", y, (3, 3), 1, 2 if i % 3 == 1 else 1, SAME, AF.RELU)
        y = w.conv2d(f"pw{i}", y, 8 + 4 * (i // 3), (1, 1), 1, SAME, AF.RELU)
    _, h, width, c = w.shape(y)
    y = w.pool(BO.AVERAGE_POOL_2D, "avgpool", y, (h, width), 1, VALID)
    y = w.reshape("flat", y, (1, c))
    y = w.fully_connected("fc", y, 4)
    return w.finish([x], [y], "deep_ds_cnn")


def test_a_deep_network_runs_in_row_chains_of_bounded_depth_bit_exact(tmp_path: Path) -> None:
    """15 windowed steps in one run: more than one chain may take (MAX_ROW_DEPTH), all exact."""
    from tvm_mcu.schedule.partial import MAX_ROW_DEPTH

    path = tmp_path / "deep_ds_cnn.tflite"
    path.write_bytes(_deep_ds_cnn(7))
    model = load_model(path)
    whole = compile_module(model.mod, model_name="deep", in_place=False, partial_execution=False)
    assert sum(s.kind == "conv2d" for s in whole.graph.steps) == 15 > MAX_ROW_DEPTH
    rows = compile_module(model.mod, model_name="deep", schedule="row bands")
    chains = [s.chain for s in rows.graph.steps if s.partial.startswith("rows:")]
    assert chains and all(2 <= len(c) <= MAX_ROW_DEPTH for c in chains)
    _assert_same_outputs(model, whole, rows, tmp_path)
    assert rows.plan.arena_bytes < whole.plan.arena_bytes


# Models with runs of convolutions (and pooling) whose intermediates only the next one reads.
ROWS = ["mobilenet_block", "int8_ds_cnn_block", "conv_stride_dilation"]


@pytest.mark.parametrize("name", ROWS)
def test_row_bands_are_bit_exact_with_whole_tensors(name: str, tmp_path: Path) -> None:
    model = load_model(write_model(name, tmp_path))
    whole = compile_module(model.mod, model_name=name, in_place=False, partial_execution=False)
    rows = compile_module(model.mod, model_name=name, schedule="row bands")
    assert any(s.partial.startswith("rows:") for s in rows.graph.steps)
    _assert_same_outputs(model, whole, rows, tmp_path)
    assert rows.plan.arena_bytes < whole.plan.arena_bytes
    assert rows.plan.arena_bytes <= rows.plan.lower_bound * 1.05


def test_unknown_schedule_is_a_clear_error(tmp_path: Path) -> None:
    from tvm_mcu.errors import BadOptionError

    model = load_model(write_model("int8_resnet_block", tmp_path))
    with pytest.raises(BadOptionError, match="no 'tiles' schedule; its candidates are: layer by layer"):
        compile_module(model.mod, model_name="m", schedule="tiles")


def test_a_chain_its_consumer_reads_through_another_shape_is_declined(tmp_path: Path) -> None:
    """Found by the fuzzer: depthwise 3x1 conv -> 1x1 conv -> depthwise 3x3 (SAME) -> softmax over the
    channels on a 3x3 input; the channel-slice candidate met a load with fewer indices than its channel
    axis (an IndexError). It must decline that candidate and compile the model right."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(294)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], group=3),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], group=4, auto_pad="SAME_UPPER"),
        helper.make_node("Softmax", ["c3"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 3])],
        [w("w1", 3, 1, 3, 1), w("b1", 3), w("w2", 4, 3, 1, 1), w("b2", 4), w("w3", 4, 1, 3, 3), w("b3", 4)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "softmax_chain.onnx"
    onnx.save(model, path)
    imported = load_model(path)
    compiled = compile_module(imported.mod, model_name="softmax_chain")
    lib = host.build_shared(compiled, tmp_path, "softmax_chain")
    x = random_inputs(imported, 0)
    from tvm_mcu.reference import reference_outputs

    np.testing.assert_allclose(host.run(lib, compiled, x)[0], reference_outputs(imported, x)[0], atol=1e-5)


def test_a_strided_consumer_that_skips_rows_does_not_continue_a_row_chain(tmp_path: Path) -> None:
    """Fuzz seed 580 (reduced): 3x3 conv -> 5x5 conv (SAME_UPPER) -> 2x2 max pool -> 1x1 depthwise
    conv of stride 2 over the rows, on an 8x1 input. The pointwise step reads every other row of the
    pool's output; as a row-chain consumer its line buffer shifted by the stride past rows the pool had
    computed, and its second output row came out wrong. Such a step now starts a chain instead, and row
    bands stay bit-exact."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(580)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[0, 1, 0, 2]),
            helper.make_node("Conv", ["c1", "w2"], ["c2"], auto_pad="SAME_UPPER"),
            helper.make_node("MaxPool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Conv", ["p", "w3"], ["y"], group=8, strides=[2, 1]),
        ],
        "skips_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 2, 1])],
        initializer=[w("w1", 6, 1, 3, 3), w("w2", 8, 6, 5, 5), w("w3", 8, 1, 1, 1)],
    )
    path = tmp_path / "skips.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = load_model(path)
    whole = compile_module(model.mod, model_name="skips", in_place=False, partial_execution=False)
    rows = compile_module(model.mod, model_name="skips", schedule="row bands")
    # The convolutions and the pool in one row chain; the strided pointwise convolution after it, whole.
    assert [(s.kind, s.partial) for s in rows.graph.steps] == [("chain", "rows:axis=2"), ("conv2d", "")]
    _assert_same_outputs(model, whole, rows, tmp_path)


def test_a_pool_whose_stride_exceeds_its_window_does_not_continue_a_row_chain(tmp_path: Path) -> None:
    """Fuzz seed 421 (reduced, float): two 3x3 convolutions, then a 2x2 average pool of stride 3 over
    the rows. A pool alone does not say its rows' axis, so the stride test must take the chain's: the
    pool skips every third row and, chained, gave wrong outputs (off by 1.07)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(421)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[2, 0, 2, 0]),
            helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[0, 2, 0, 2]),
            helper.make_node(
                "AveragePool", ["c2"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 0], strides=[3, 1]
            ),
        ],
        "pool_skips_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 3])],
        initializer=[w("w1", 12, 16, 3, 3), w("w2", 2, 12, 3, 3)],
    )
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = load_model(path)
    whole = compile_module(model.mod, model_name="pool", in_place=False, partial_execution=False)
    rows = compile_module(model.mod, model_name="pool", schedule="row bands")
    assert [(s.kind, s.partial) for s in rows.graph.steps] == [("chain", "rows:axis=2"), ("avg_pool2d", "")]
    _assert_same_outputs(model, whole, rows, tmp_path)
