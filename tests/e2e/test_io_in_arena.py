"""``--io-in-arena`` on the emulated board: the firmware reads input.bin into ``tvmmcu_model_input(k)`` and
writes output.bin from ``tvmmcu_model_output(k)``; the outputs equal the caller-buffers build's and the
reference's under several schedules, in no more measured SRAM (arena + I/O + painted stack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.e2e.test_emit import _run_example
from tests.zoo import write_model
from tvm_mcu import api, cli
from tvm_mcu.frontend import load_model
from tvm_mcu.report import IO_APART, IO_CALLER, IO_IN_ARENA, Report

pytestmark = pytest.mark.emulator


@pytest.mark.parametrize(
    ("name", "schedule"),
    [
        ("int8_ds_cnn_block", "partial execution"),
        ("conv_grouped_depthwise", "in place"),
        ("conv_grouped_depthwise", "row bands"),
        ("two_inputs", None),
        ("two_outputs", None),
    ],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_outputs_match_the_caller_build_and_the_reference(
    name: str, schedule: str | None, tmp_path: Path
) -> None:
    path = write_model(name, tmp_path)
    inputs = api.model_inputs(load_model(path), input_path=None, seed=1)
    np.savez(tmp_path / "x.npz", *inputs)
    caller = api.compile_model(path, "mps2-an386", tmp_path / "caller", schedule=schedule)
    plain = api.run_compiled(caller.out_dir, inputs)
    v = api.verify(
        path,
        "mps2-an386",
        tmp_path / "io",
        input_path=tmp_path / "x.npz",
        schedule=schedule,
        io_in_arena=True,
    )
    assert v.passed, v.report.worst_difference
    for got, want in zip(v.outputs, plain.outputs, strict=True):
        np.testing.assert_array_equal(got, want)
    r, before = v.report, plain.report
    assert (r.io_convention, before.io_convention) == (IO_IN_ARENA, IO_CALLER)
    assert r.schedule == before.schedule or schedule is None
    assert r.io_bytes == 0 and r.peak_sram_bytes == r.arena_bytes + r.stack_bytes
    assert before.peak_sram_bytes == before.arena_bytes + before.io_bytes + before.stack_bytes
    assert r.peak_sram_bytes is not None and before.peak_sram_bytes is not None
    assert r.peak_sram_bytes <= before.peak_sram_bytes
    assert r.ram_bytes < before.ram_bytes  # the harness has no input and output buffers
    page = (tmp_path / "io" / "report.html").read_text()
    assert "inputs and outputs in arena" in page and "tvmmcu_model_input(k)" in page


def test_the_cmake_example_fills_and_prints_through_the_accessors(tmp_path: Path) -> None:
    path = write_model("int8_resnet_block", tmp_path)
    out = tmp_path / "out"
    api.compile_model(path, "mps2-an386", out, emit=("cmake",), io_in_arena=True)
    main_c = (out / "example" / "main.c").read_text()
    assert "tvmmcu_model_input(0)" in main_c and "tvmmcu_model_run()" in main_c
    printed = _run_example(out, "mps2-an386", tmp_path)
    run = api.run_compiled(out, api.model_inputs(load_model(path), input_path=None, seed=0))
    assert printed == b"".join(np.ascontiguousarray(o).tobytes() for o in run.outputs)


def test_the_cli_compiles_and_runs_with_io_in_arena(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_model("int8_autoencoder", tmp_path)
    out = tmp_path / "out"
    assert cli.main(["compile", str(path), "--board", "mps2-an385", "-o", str(out), "--io-in-arena"]) == 0
    assert cli.main(["run", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "in the arena (tvmmcu_model_input/output)" in printed and "peak SRAM (arena + stack)" in printed
    report = Report.read(out / api.REPORT)
    assert report.io_convention == IO_IN_ARENA and report.stack_bytes is not None


def test_io_live_all_at_once_costs_no_more_than_the_callers_buffers(tmp_path: Path) -> None:
    # One concatenation: its inputs and output are all live at its one step, so the arena would need
    # them back to back at aligned offsets, more than the caller's two buffers. The library keeps the
    # caller's layout behind the accessors: the same measured peak and static RAM, the same outputs.
    path = write_model("int8_concat_same_params", tmp_path)
    inputs = api.model_inputs(load_model(path), input_path=None, seed=1)
    caller = api.run_compiled(api.compile_model(path, "mps2-an386", tmp_path / "caller").out_dir, inputs)
    io = api.run_compiled(
        api.compile_model(path, "mps2-an386", tmp_path / "io", io_in_arena=True).out_dir, inputs
    )
    for got, want in zip(io.outputs, caller.outputs, strict=True):
        np.testing.assert_array_equal(got, want)
    r, before = io.report, caller.report
    assert (r.io_convention, r.io_placement, before.io_placement) == (IO_IN_ARENA, IO_APART, None)
    assert r.peak_sram_bytes is not None and before.peak_sram_bytes is not None
    assert r.peak_sram_bytes <= before.peak_sram_bytes and r.ram_bytes <= before.ram_bytes
    assert r.arena_bytes + r.io_bytes == before.arena_bytes + before.io_bytes
    assert "io_placement" not in (tmp_path / "caller" / api.REPORT).read_text()
    page = (tmp_path / "io" / "report.html").read_text()
    assert "sharing the arena saved nothing" in page
