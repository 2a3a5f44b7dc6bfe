"""``--io-in-arena``: the model's inputs and outputs planned in the arena (TFLite Micro's convention).

The planner gives an input a lifetime from the start to its last reader and an output one from its
producer to the end, so an input's bytes are reused once it is dead; the library's accessors
(``tvmmcu_model_input``/``_output``) return where they are. The caller's-buffers convention stays the
default, its generated C unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import graphs
from tests.zoo import write_model
from tvm_mcu import api, cli, compiler
from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.codegen import model_c
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.report import IoRow
from tvm_mcu.schedule import choice, inplace
from tvm_mcu.schedule.graph import Graph, Step
from tvm_mcu.schedule.memory import Buffer, MemoryPlan, io_roots, plan_memory
from tvm_mcu.targets.host import build_host_library, run_host_library

_graph, _t = graphs.graph, graphs.tensor


def _round8(n: int) -> int:
    return -(-n // 8) * 8


def _caller_bound(graph: Graph, caller: MemoryPlan) -> int:
    """What the caller convention needs with its two buffers back to back, the second 8-byte aligned as
    model.h requires: the arena plus the packed inputs and outputs, one of them padded to 8 bytes. The
    caller's figure (``choice.io_bytes``) leaves that padding out, so it can be up to 7 B less."""
    ins = model_c.packed_bytes(model_c.io_slots(graph, graph.inputs))
    outs = model_c.packed_bytes(model_c.io_slots(graph, graph.outputs))
    return caller.arena_bytes + min(_round8(ins) + outs, ins + _round8(outs))


def _assert_no_live_overlap(buffers: tuple[Buffer, ...]) -> None:
    for i, a in enumerate(buffers):
        for b in buffers[i + 1 :]:
            if a.overlaps_in_time(b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)


def _chain(sizes: list[int]) -> Graph:
    names = ["x"] + [f"a{i}" for i in range(len(sizes) - 2)] + ["y"]
    kinds = ["input"] + ["intermediate"] * (len(sizes) - 2) + ["output"]
    tensors = [_t(n, s, k) for n, s, k in zip(names, sizes, kinds, strict=True)]
    steps = [Step(names[i + 1], "f", (names[i],), names[i + 1], "op") for i in range(len(names) - 1)]
    return _graph(steps, tensors)


def test_the_input_bytes_are_reused_after_its_last_reader() -> None:
    # The anomaly autoencoder's shape: 640 -> 128 -> 128 -> 640.
    g = _chain([640, 128, 128, 640])
    caller = plan_memory(g)
    plan = plan_memory(g, io_in_arena=True)
    x = next(b for b in plan.buffers if b.name == "x")
    y = next(b for b in plan.buffers if b.name == "y")
    assert (x.start, x.end) == (0, 0) and (y.start, y.end) == (2, 2)
    # A later buffer sits in the input's bytes: they were reused once it was dead.
    assert any(b.start > x.end and b.offset < x.offset + x.size for b in plan.buffers if b is not x)
    assert plan.arena_bytes == plan.lower_bound == 640 + 128
    assert caller.arena_bytes + choice.io_bytes(g) == 256 + 640 + 640
    assert set(plan.placement.values()) == {"arena"} and plan.io_in_arena
    _assert_no_live_overlap(plan.buffers)


def test_the_default_plan_keeps_inputs_and_outputs_in_the_callers_buffers() -> None:
    plan = plan_memory(_chain([640, 128, 128, 640]))
    assert not plan.io_in_arena and {b.name for b in plan.buffers} == {"a0", "a1"}
    assert plan.placement["x"] == "input:0" and plan.placement["y"] == "output:0"
    assert "io_in_arena" not in plan.to_json()


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_random_graphs_with_several_inputs_and_outputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 10
    tensors = [_t("x0", int(rng.integers(1, 400)), "input"), _t("x1", int(rng.integers(1, 400)), "input")]
    steps, outputs = [], []
    for i in range(n):
        name = f"t{i}"
        is_output = i == n - 1 or rng.random() < 0.2
        tensors.append(_t(name, int(rng.integers(1, 400)), "output" if is_output else "intermediate"))
        pool = ["x0", "x1"] + [f"t{j}" for j in range(i) if f"t{j}" not in outputs]
        ins = tuple(sorted(set(rng.choice(pool, size=min(2, len(pool)), replace=False).tolist())))
        steps.append(Step(name, "f", ins, name, "op", workspace_bytes=int(rng.integers(0, 3)) * 24))
        if is_output:
            outputs.append(name)
    g = _graph(steps, tensors, inputs=("x0", "x1"), outputs=tuple(outputs))
    plan = plan_memory(g, io_in_arena=True)
    _assert_no_live_overlap(plan.buffers)
    by_name = {b.name: b for b in plan.buffers}
    for name in g.inputs:
        assert by_name[name].start == 0 and by_name[name].size == g.tensors[name].nbytes
    for name in g.outputs:
        assert by_name[name].end == n - 1
    for b in plan.buffers:
        assert b.offset % plan.align == 0
    assert plan.lower_bound <= plan.arena_bytes <= _caller_bound(g, plan_memory(g))


def test_an_input_that_is_also_an_output_and_an_output_view() -> None:
    # x is returned as is (extract_graph gives the output a copy of its own), and y is a view of a.
    tensors = [
        _t("x", 24, "input"),
        _t("a", 40),
        _t("y", 40, "output", alias_of="a"),
        _t("x_output1", 24, "output"),
    ]
    steps = [Step("a", "f", ("x",), "a", "op"), Step("x_output1", "", ("x",), "x_output1", "copy")]
    g = _graph(steps, tensors, outputs=("y", "x_output1"))
    plan = plan_memory(g, io_in_arena=True)
    assert io_roots(g) == (["x"], ["a", "x_output1"])
    by_name = {b.name: b for b in plan.buffers}
    assert (by_name["a"].start, by_name["a"].end) == (0, 1)  # the view's source lives to the end
    assert (by_name["x"].start, by_name["x"].end) == (0, 1)  # read by the copy
    assert plan.placement["y"] == plan.placement["x_output1"] == "arena"
    _assert_no_live_overlap(plan.buffers)
    c = model_c.emit_model_c(g, plan, model_name="copy", op_prefix="op_")
    assert c.count("tvmmcu_arena + ") >= 4 and "(void)input" not in c


def test_in_place_may_overwrite_a_model_input_and_write_a_model_output() -> None:
    # x -> relu (in place over x) -> y: only with the input and output in the arena.
    tensors = [_t("x", 64, "input"), _t("y", 64, "output")]
    g = _graph([Step("y", "relu", ("x",), "y", "op")], tensors)
    options = {"relu": [InPlace("elementwise", 0, 0)]}
    assert inplace.candidates(g, options) == []
    shared, chosen = inplace.choose(g, options, io_in_arena=True)
    assert [c.input for c in chosen] == ["x"] and shared.storage_root("y") == "x"
    plan = plan_memory(shared, io_in_arena=True)
    assert [(b.name, b.start, b.end) for b in plan.buffers] == [("x", 0, 0)]
    assert plan.arena_bytes == 64  # against 128 in the caller's two buffers
    # An output is never overwritten: the caller reads it after the run.
    g2 = _graph(
        [Step("y", "relu", ("x",), "y", "op"), Step("z", "relu", ("y",), "z", "op")],
        [_t("x", 64, "input"), _t("y", 64, "output"), _t("z", 64, "output")],
        outputs=("y", "z"),
    )
    assert [c.step for c in inplace.candidates(g2, options, io_in_arena=True)] == [0]


# Float and int8, one and several inputs and outputs, schedules in place, partial execution, row bands,
# and a model whose packed inputs and outputs are both not a multiple of 8 bytes (the concat).
ZOO = (
    "two_inputs",
    "two_outputs",
    "conv_bn_swish",
    "int8_ds_cnn_block",
    "int8_softmax",
    "int8_concat_same_params",
)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_give_the_same_outputs_in_no_more_sram(name: str, tmp_path: Path) -> None:
    model = load_model(write_model(name, tmp_path))
    rounding = "onnx" if model.format == "onnx" else "tflite"
    outputs, figures = [], []
    for io in (False, True):
        c = compiler.compile_module(model.mod, model_name=model.name, rounding=rounding, io_in_arena=io)
        lib_dir = tmp_path / f"lib{int(io)}"
        model_c.write_library(c.library, lib_dir, plan_json=c.plan.to_json())
        assert c.plan.io_in_arena == io
        header, source = c.library.files["model.h"], c.library.files["model.c"]
        if io:
            assert "#define TVMMCU_IO_IN_ARENA 1" in header and "int32_t tvmmcu_model_run(void);" in header
            assert "void *tvmmcu_model_input(uint32_t index);" in header
            assert "const void *tvmmcu_model_output(uint32_t index);" in header
            again = compiler.compile_module(
                model.mod, model_name=model.name, rounding=rounding, io_in_arena=True
            )
            assert again.library.files == c.library.files  # deterministic
        else:
            assert "tvmmcu_model_input" not in header + source and "TVMMCU_IO_IN_ARENA" not in header
        ins = model_c.io_slots(c.graph, c.graph.inputs)
        outs = model_c.io_slots(c.graph, c.graph.outputs)
        rows = tuple(IoRow(s.name, s.shape, s.dtype, s.offset, s.nbytes) for s in ins)
        out_rows = tuple(IoRow(s.name, s.shape, s.dtype, s.offset, s.nbytes) for s in outs)
        lib = build_host_library(lib_dir, name=f"{name}{int(io)}")
        packed = run_host_library(lib, api.pack(rows, random_inputs(model, 0)), model_c.packed_bytes(outs))
        outputs.append(api.unpack(out_rows, packed))
        figures.append((c.plan.arena_bytes + (0 if io else choice.io_bytes(c.graph)), c))
        _assert_no_live_overlap(c.plan.buffers)
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    (caller, caller_c), (io_sram, _) = figures
    assert io_sram <= _caller_bound(caller_c.graph, caller_c.plan)
    ins = model_c.packed_bytes(model_c.io_slots(caller_c.graph, caller_c.graph.inputs))
    outs = model_c.packed_bytes(model_c.io_slots(caller_c.graph, caller_c.graph.outputs))
    if ins % 8 == 0 or outs % 8 == 0:
        assert io_sram <= caller  # no padding between the caller's buffers to count
    else:
        assert io_sram <= caller + 7


def test_the_cli_takes_the_option_on_compile_and_verify() -> None:
    parser = cli.build_parser()
    for argv in (["compile", "m.onnx", "--board", "b"], ["verify", "m.onnx", "--board", "b"]):
        assert parser.parse_args([*argv, "--io-in-arena"]).io_in_arena is True
        assert parser.parse_args(argv).io_in_arena is False
