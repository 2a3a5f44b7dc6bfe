"""The ``--io-in-arena`` section of docs/BENCHMARKS.md: peak SRAM of the MLPerf Tiny models with their
inputs and outputs in the caller's buffers (the default) and inside the arena (TFLite Micro's convention),
measured on the emulated board, with the outputs of both builds compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvm_mcu import api
from tvm_mcu.errors import TvmMcuError
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.reference import reference_outputs, tflm_arena
from tvm_mcu.report import Report

IO_ARENA_HEADING = "## Inputs and outputs in the arena (`--io-in-arena`)"
BOARD = "mps2-an386"
SEEDS = 3
# The MLPerf Tiny models (../shared/models), and the goal for the anomaly autoencoder.
MODELS = (
    ("KWS DS-CNN (int8)", "kws_ref_model.tflite"),
    ("KWS DS-CNN (float32)", "kws_ref_model_float32.tflite"),
    ("ResNet-8 (int8)", "pretrainedResnet_quant.tflite"),
    ("AD autoencoder (int8)", "ad01_int8.tflite"),
)
AD_GOAL = 900


def _runs(path: Path, out: Path, io_in_arena: bool) -> tuple[Report, list[list[np.ndarray]]]:
    """Compile with or without the option, run ``SEEDS`` seeded inputs: the last report, every output."""
    model = load_model(path)
    compiled = api.compile_model(path, BOARD, out, io_in_arena=io_in_arena)
    outputs: list[list[np.ndarray]] = []
    report = compiled.report
    for seed in range(SEEDS):
        outcome = api.run_compiled(compiled.out_dir, random_inputs(model, seed))
        outputs.append(outcome.outputs)
        report = outcome.report
    return report, outputs


def _matches(path: Path, outputs: list[list[np.ndarray]]) -> str:
    """Against the reference on the same seeded inputs: int8 bit-exact, float within 1e-4 (scaled)."""
    model = load_model(path)
    worst = 0.0
    for seed, got in enumerate(outputs):
        want = [
            np.asarray(w).reshape(g.shape)
            for g, w in zip(got, reference_outputs(model, random_inputs(model, seed)), strict=True)
        ]
        if all(g.dtype.kind in "iu" for g in got):
            if not all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)):
                return "NO"
            continue
        tol = api.tolerance_for(want)
        err = max(api.max_abs_error(g, w) for g, w in zip(got, want, strict=True))
        if err > tol:
            return f"NO ({err:.2g})"
        worst = max(worst, err)
    return "bit-exact" if worst == 0.0 else f"yes (max err {worst:.1e})"


def _tflm_head(path: Path) -> str:
    """TFLite Micro's arena head for the model, or why there is none (it cannot allocate the float KWS
    model, whose convolution weights are int8 with scales: a hybrid model)."""
    try:
        return f"{tflm_arena(path.read_bytes())['head']:,}"
    except RuntimeError:
        return "- (TFLM cannot allocate it)"


def io_arena_section(tmp: Path, models_dir: Path) -> list[str]:
    lines = [
        "",
        IO_ARENA_HEADING,
        "",
        f"On {BOARD}, {SEEDS} seeded inputs each. **Caller buffers** (the default): `tvmmcu_model_run(input,",
        "output)` reads and writes the caller's buffers, so peak SRAM = arena + the packed input and output",
        "buffers + the stack. **In arena** (`--io-in-arena`, TFLite Micro's convention): the planner places the",
        "input (live from the start to its last reader) and the output (from its producer to the end) in the",
        "arena like any other tensor, so the input's bytes are reused once it is dead; `tvmmcu_model_input(k)` /",
        "`tvmmcu_model_output(k)` say where the caller writes and reads them, and peak SRAM = arena + stack.",
        "Stack: painted on QEMU around the model call. **static RAM**: .data + .bss of the firmware (the",
        "harness's own buffers included). **same outputs**: both builds give identical outputs on every input;",
        "**reference**: the in-arena build against tflite-micro (int8 bit-exact; float within 1e-4, scaled).",
        "The whole-buffer bound (best order, inputs and outputs counted while live) is what a layer-by-layer",
        "executor needs at least; the TFLite Micro arena head is measured with its interpreter.",
        "",
        "| model | schedule | arena B | in/out B | stack B | **peak SRAM B** | static RAM B | schedule (in arena) | arena B (in arena) | stack B (in arena) | **peak SRAM B (in arena)** | static RAM B (in arena) | saved | whole-buffer bound B | TFLM arena head B | same outputs | reference |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    notes = []
    for label, file in MODELS:
        path = models_dir / file
        if not path.is_file():
            lines.append(f"| {label} | skipped: {path} is absent |" + " |" * 15)
            continue
        try:
            caller, caller_out = _runs(path, tmp / f"io_{path.stem}_caller", False)
            arena, arena_out = _runs(path, tmp / f"io_{path.stem}_arena", True)
        except TvmMcuError as exc:
            lines.append(f"| {label} | failed: {str(exc)[:150]} |" + " |" * 15)
            continue
        c, a = caller, arena  # reports of the last run
        same = all(
            np.array_equal(x, y)
            for xs, ys in zip(caller_out, arena_out, strict=True)
            for x, y in zip(xs, ys, strict=True)
        )
        head = _tflm_head(path)
        assert c.peak_sram_bytes is not None and a.peak_sram_bytes is not None
        peak_c, peak_a = c.peak_sram_bytes, a.peak_sram_bytes
        print(f"io-arena {label}: {peak_c} -> {peak_a} B (same outputs: {same})", flush=True)
        lines.append(
            f"| {label} | {c.schedule} | {c.arena_bytes:,} | {c.io_bytes:,} | {c.stack_bytes:,} | "
            f"**{peak_c:,}** | {c.ram_bytes:,} | {a.schedule} | {a.arena_bytes:,} | {a.stack_bytes:,} | "
            f"**{peak_a:,}** | {a.ram_bytes:,} | {peak_c - peak_a:,} ({(peak_c - peak_a) / peak_c:.0%}) | "
            f"{a.whole_buffer_bound_bytes:,} | {head} | {'yes' if same else 'NO'} | {_matches(path, arena_out)} |"
        )
        if file == "ad01_int8.tflite":
            verdict = "meets" if peak_a <= AD_GOAL else "misses"
            notes.append(
                f"- AD autoencoder: {peak_c:,} B -> {peak_a:,} B with `--io-in-arena` ({verdict} the goal of at "
                f"most {AD_GOAL} B): an arena of {a.arena_bytes:,} B against a whole-buffer bound of "
                f"{a.whole_buffer_bound_bytes:,} B, and {a.stack_bytes} B of stack."
            )
    return [*lines, "", *notes, ""]
