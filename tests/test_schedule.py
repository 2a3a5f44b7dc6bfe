"""Scheduling choices: in-place execution (which steps, and that the result is exact and smaller)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import host
from tests.zoo import ALL_MODELS, write_model
from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.compiler import compile_module
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.schedule import inplace
from tvm_mcu.schedule.graph import Graph, Step, Tensor
from tvm_mcu.schedule.memory import plan_memory

# Models whose peak step is a depthwise or pointwise convolution or an element-wise op on a dead input.
SHRINKS = ["int8_ds_cnn_block", "mobilenet_block", "conv_grouped_depthwise"]


@pytest.mark.parametrize("name", [*SHRINKS, "resnet_block", "int8_resnet_block"])
def test_in_place_is_bit_exact_with_separate_buffers(name: str, tmp_path: Path) -> None:
    model = load_model(write_model(name, tmp_path))
    separate = compile_module(model.mod, model_name=name, in_place=False)
    shared = compile_module(model.mod, model_name=name)
    if name in SHRINKS:
        assert any(s.in_place for s in shared.graph.steps), "no step runs in place"
    assert not any(s.in_place for s in separate.graph.steps)
    inputs = random_inputs(model, seed=7)
    lib_a = host.build_shared(separate, tmp_path / "a", f"{name}_a")
    lib_b = host.build_shared(shared, tmp_path / "b", f"{name}_b")
    for want, got in zip(host.run(lib_a, separate, inputs), host.run(lib_b, shared, inputs), strict=True):
        np.testing.assert_array_equal(got, want)
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


def _t(name: str, n: int, kind: str = "intermediate") -> Tensor:
    return Tensor(name, (n,), "int8", kind)


def _graph() -> Graph:
    """x -> a -> b (depthwise-like on a) -> y (reads a and b): a is still live when b is computed."""
    tensors = [_t("x", 8, "input"), _t("a", 64), _t("b", 64), _t("c", 64), _t("y", 8, "output")]
    steps = [
        Step("a", "conv", ("x",), "a", "conv2d"),
        Step("b", "dw", ("a",), "b", "conv2d"),
        Step("c", "dw", ("b",), "c", "conv2d"),
        Step("y", "add", ("a", "c"), "y", "add"),
    ]
    return Graph({t.name: t for t in tensors}, tuple(steps), ("x",), ("y",), {})


def test_candidates_skip_inputs_read_later_and_model_inputs() -> None:
    options = {"dw": [InPlace("depthwise", 0, 8)], "conv": [InPlace("pointwise", 0, 8)]}
    cands = inplace.candidates(_graph(), options)
    # a is read again by the add: only c = dw(b) may overwrite its input; conv reads the model input.
    assert [(c.step, c.input) for c in cands] == [(2, "b")]


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
