"""``--io-in-arena``: the model's inputs and outputs planned in the arena (TFLite Micro's convention).

The planner gives an input a lifetime from the start to its last reader and an output one from its
producer to the end, so an input's bytes are reused once it is dead; the library's accessors
(``tvmmcu_model_input``/``_output``) return where they are. The caller's-buffers convention stays the
default, its generated C unchanged.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest

from tests import graphs
from tests.zoo import ALL_MODELS, write_model
from tvm_mcu import api, cli, compiler
from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.codegen import model_c
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.report import IoRow
from tvm_mcu.schedule import choice, inplace
from tvm_mcu.schedule.graph import Graph, Step
from tvm_mcu.schedule.memory import Buffer, io_roots, packed_io_bytes, plan_memory
from tvm_mcu.targets.host import build_host_library, run_host_library

_graph, _t = graphs.graph, graphs.tensor


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
    caller = plan_memory(g)
    if plan.io_apart:  # sharing the arena saved nothing: the caller convention's plan
        assert (plan.arena_bytes, plan.buffers) == (caller.arena_bytes, caller.buffers)
        return
    by_name = {b.name: b for b in plan.buffers}
    for name in g.inputs:
        assert by_name[name].start == 0 and by_name[name].size == g.tensors[name].nbytes
    for name in g.outputs:
        assert by_name[name].end == n - 1
    for b in plan.buffers:
        assert b.offset % plan.align == 0
    assert plan.lower_bound <= plan.arena_bytes <= caller.arena_bytes + choice.io_bytes(g)


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
        figures.append((c.plan.arena_bytes + (0 if c.plan.holds_io else choice.io_bytes(c.graph)), c))
        _assert_no_live_overlap(c.plan.buffers)
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
    (caller, _), (io_sram, _) = figures
    assert io_sram <= caller


def test_the_cli_takes_the_option_on_compile_and_verify() -> None:
    parser = cli.build_parser()
    for argv in (["compile", "m.onnx", "--board", "b"], ["verify", "m.onnx", "--board", "b"]):
        assert parser.parse_args([*argv, "--io-in-arena"]).io_in_arena is True
        assert parser.parse_args(argv).io_in_arena is False


def test_all_io_live_at_once_keeps_the_callers_layout_behind_the_accessors(tmp_path: Path) -> None:
    # One concatenation: both inputs and the output live at the one step, nothing to reuse; in the arena
    # they would need 75 + 5 + 50 + 128-aligned... more than the caller's 130 + 125 B.
    g = _graph(
        [Step("y", "concat", ("a", "b"), "y", "op")],
        [_t("a", 75, "input"), _t("b", 50, "input"), _t("y", 125, "output")],
        inputs=("a", "b"),
    )
    caller = plan_memory(g)
    plan = plan_memory(g, io_in_arena=True)
    assert plan.io_in_arena and plan.io_apart and not plan.holds_io
    assert (plan.arena_bytes, plan.buffers, plan.placement) == (0, (), caller.placement)
    assert packed_io_bytes(g) == choice.io_bytes(g) == 130 + 125
    assert plan.to_json()["io_apart"] is True and "io_apart" not in caller.to_json()
    header = model_c.emit_model_h(g, plan, model_name="concat")
    assert "#define TVMMCU_IO_IN_ARENA 1" in header and "ARENA_OFFSET" not in header
    source = model_c.emit_model_c(g, plan, model_name="concat", op_prefix="op_")
    assert "static uint8_t tvmmcu_input[TVMMCU_INPUT_BYTES]" in source
    assert "return tvmmcu_input + 80;" in source and "tvmmcu_arena" not in source
    # An operator that ran in place over an input only has the arena layout: it is kept.
    shared, _ = inplace.choose(
        _graph([Step("y", "relu", ("x",), "y", "op")], [_t("x", 61, "input"), _t("y", 61, "output")]),
        {"relu": [InPlace("elementwise", 0, 0)]},
        io_in_arena=True,
    )
    assert plan_memory(shared, io_in_arena=True).holds_io


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_zoo_model_needs_no_more_sram_in_the_arena(name: str, tmp_path: Path) -> None:
    # Every candidate schedule (so the one chosen too) needs no more than its caller convention's arena
    # plus the caller's input and output buffers; the one in place over inputs and outputs has no such
    # counterpart (the caller convention cannot run it).
    model = load_model(write_model(name, tmp_path))
    layout = compiler._layout(model.mod, None, True)
    sched = compiler.plan_schedules(
        model.mod,
        model_name=model.name,
        rounding="onnx" if model.format == "onnx" else "tflite",
        convert=layout.startswith("channels-last") and not compiler.channels_last(model.mod),
        io_in_arena=True,
    )
    callers = []
    for c in sched.candidates:
        assert c.plan.io_in_arena
        if c.label == compiler.IN_PLACE_IO:
            continue
        caller = attrs.evolve(c, plan=plan_memory(c.graph))
        assert c.sram_bytes <= caller.sram_bytes == caller.plan.arena_bytes + choice.io_bytes(c.graph)
        callers.append(caller)
    picked = choice.choose(list(sched.candidates), budget=None, model_name=name)
    assert picked.sram_bytes <= choice.choose(callers, budget=None, model_name=name).sram_bytes
