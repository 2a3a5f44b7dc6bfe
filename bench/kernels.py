"""The kernels' section of docs/BENCHMARKS.md: instructions of the int8 MLPerf Tiny models against
CMSIS-NN's, per model and per operator, with flash and peak SRAM before and after the kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvm_mcu import api
from tvm_mcu.frontend import load_model, random_inputs
from tvm_mcu.reference import reference_outputs

KERNELS_HEADING = "## Kernels against CMSIS-NN"
BOARD = "mps2-an386"
NO_DSP_BOARD = "mps2-an385"
SEEDS = 5
# (label, file, CMSIS-NN instructions on mps2-an386: TFLite Micro with its CMSIS-NN v7 kernels,
# arm-none-eabi-gcc -Ofast, the same QEMU and plugin; ../shared/notes/anchors.md section 6), and
# tvm-mcu's figures before these kernels (TVM's scalar loops): instructions, flash B, peak SRAM B.
MODELS = (
    ("KWS DS-CNN", "kws_ref_model.tflite", 7_842_131, (23_868_288, 36_184, 8_766)),
    ("ResNet-8", "pretrainedResnet_quant.tflite", 29_869_303, (139_851_900, 91_872, 37_622)),
    ("AD autoencoder", "ad01_int8.tflite", 579_591, (1_405_063, 288_356, 1_620)),
)
GOAL = 0.7  # of CMSIS-NN's instructions


def bit_exact_run(
    path: Path,
    board: str,
    out: Path,
    seeds: int = SEEDS,
    weights: str = "int8",
    schedule: str | None = None,
) -> tuple[object, bool]:
    """Compile, run ``seeds`` seeded inputs and compare each with the tflite-micro interpreter: the
    report of the last run, and whether every output was equal."""
    model = load_model(path)
    compiled = api.compile_model(path, board, out, weights=weights, schedule=schedule)
    exact = True
    report: object = compiled.report
    for seed in range(seeds):
        inputs = random_inputs(model, seed)
        outcome = api.run_compiled(compiled.out_dir, inputs)
        want = reference_outputs(model, inputs)
        exact &= all(
            np.array_equal(g, np.asarray(w).reshape(g.shape))
            for g, w in zip(outcome.outputs, want, strict=True)
        )
        report = outcome.report
    return report, exact


def kernels_section(tmp: Path, models_dir: Path) -> list[str]:
    lines = [
        "",
        KERNELS_HEADING,
        "",
        f"The int8 MLPerf Tiny models on {BOARD} (Cortex-M4 with the DSP extension) against TFLite Micro with",
        "CMSIS-NN (`../shared/notes/anchors.md` section 6: the same QEMU and instruction-counting plugin,",
        "instructions, not cycles), with the figures tvm-mcu had before its own kernels (TVM's scalar loops).",
        "The schedule is the one the compiler picks (the smallest peak SRAM). Bit-exact: the int8 outputs",
        f"equal the `tflite-micro` interpreter's on {SEEDS} seeded inputs. Goal: at most {GOAL}x CMSIS-NN's",
        "instructions with no more flash than 5 % above and no more peak SRAM than before.",
        "",
        "| model | bit-exact | MACs | instructions | per MAC | CMSIS-NN | per MAC | ratio | before | flash B (before) | peak SRAM B (before) | instructions on Cortex-M3 (no DSP) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_op: list[str] = []
    for label, file, cmsis, (before, flash_before, sram_before) in MODELS:
        path = models_dir / file
        if not path.is_file():
            lines.append(f"| {label} | skipped: {path} is absent |" + " |" * 10)
            continue
        report, exact = bit_exact_run(path, BOARD, tmp / f"{path.stem}_kernels")
        m3, m3_exact = bit_exact_run(path, NO_DSP_BOARD, tmp / f"{path.stem}_kernels_m3")
        r, n = report, int(report.macs)  # type: ignore[attr-defined]
        insns = int(r.instructions)  # type: ignore[attr-defined]
        print(
            f"kernels: {label}: {insns:,} instructions, {insns / cmsis:.2f}x CMSIS-NN, exact={exact}",
            flush=True,
        )
        lines.append(
            f"| {label} | {'yes' if exact and m3_exact else 'NO'} | {n:,} | {insns:,} | {insns / n:.2f} | "
            f"{cmsis:,} | {cmsis / n:.2f} | {insns / cmsis:.3f}x | {before:,} ({before / cmsis:.2f}x) | "
            f"{r.flash_bytes:,} ({flash_before:,}) | {r.peak_sram_bytes:,} ({sram_before:,}) | "  # type: ignore[attr-defined]
            f"{int(m3.instructions):,} |"  # type: ignore[attr-defined]
        )
        per_op += [
            "",
            f"{label}, per operator ({r.schedule}; driver and harness {r.driver_instructions:,} instructions):",  # type: ignore[attr-defined]
            "",
            "| step | operator | MACs | instructions | share | per MAC |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for k, op in enumerate(r.ops):  # type: ignore[attr-defined]
            count = op.instructions or 0
            per_mac = f"{op.instructions_per_mac:.2f}" if op.instructions_per_mac is not None else ""
            per_op.append(
                f"| {k} | {op.kind} | {op.macs:,} | {count:,} | {100 * count / insns:.1f} % | {per_mac} |"
            )
    lines += [
        "",
        "Where the instructions go: dot products of contiguous int8 vectors, four output channels per pass",
        "over the input, their weights stored blocked so one pointer and LDRD walk them (SMLAD on SXTB16",
        "pairs: `tvmmcu_dot4b_*`), a convolution's window of channel runs in one call",
        "(`tvmmcu_dot4b_runs_*`), windows of strided taps (depthwise convolutions, kernel rows of a one- or",
        "three-channel input: whole words with the padding in them, or unrolled where the taps are known,",
        "the output loops split at the borders), TFLite's requantisation by one rounded high multiply and",
        "one saturation where the accumulator is provably small, and the rest (ADD, pooling, softmax).",
        *_halfword_rows(tmp, models_dir),
        *_float_rows(tmp, models_dir),
        *per_op,
        "",
    ]
    return lines


HALF_GOAL = 0.55  # of CMSIS-NN's instructions with --weights int16


def _halfword_rows(tmp: Path, models_dir: Path) -> list[str]:
    """The same models with ``--weights int16`` (WidenWeights: the blocked kernels' weights stored as
    halfwords, no SXTB16 on them)."""
    rows = [
        "",
        "With `--weights int16` (the weights the blocked kernels read stored pre-widened to halfwords, twice",
        f"their flash): goal at most {HALF_GOAL}x CMSIS-NN's instructions. Bit-exact on {BOARD} and",
        f"{NO_DSP_BOARD} ({SEEDS} seeded inputs each).",
        "",
        "| model | bit-exact | instructions | per MAC | ratio to CMSIS-NN | flash B | operators with int16 weights |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for label, file, cmsis, _ in MODELS:
        path = models_dir / file
        if not path.is_file():
            rows.append(f"| {label} | skipped: {path} is absent |" + " |" * 5)
            continue
        r, exact = bit_exact_run(path, BOARD, tmp / f"{path.stem}_int16", weights="int16")
        _, m3_exact = bit_exact_run(path, NO_DSP_BOARD, tmp / f"{path.stem}_int16_m3", weights="int16")
        insns, n = int(r.instructions), int(r.macs)  # type: ignore[attr-defined]
        print(f"kernels: {label} (int16 weights): {insns:,} instructions, {insns / cmsis:.3f}x", flush=True)
        widened = len(r.int16_weight_ops)  # type: ignore[attr-defined]
        rows.append(
            f"| {label} | {'yes' if exact and m3_exact else 'NO'} | {insns:,} | {insns / n:.2f} | "
            f"{insns / cmsis:.3f}x | {r.flash_bytes:,} | {widened} of {len(r.ops)} |"  # type: ignore[attr-defined]
        )
    return rows


# The float kernels (passes/tir/float_kernels.py): their instructions per MAC beside the goal of the issue
# that asked for FPU kernels (at most 4 per MAC on a Cortex-M4F).
FLOAT_MODELS = (("KWS DS-CNN (float32)", "kws_ref_model_float32.tflite"),)
FLOAT_GOAL = 4.0


def _float_rows(tmp: Path, models_dir: Path) -> list[str]:
    rows = [
        "",
        f"Float kernels on {BOARD} (Cortex-M4F; tvm-mcu's float kernels in plain C, the FPU's multiply-accumulate): goal",
        f"at most {FLOAT_GOAL:g} instructions per MAC.",
        "",
        "| model | MACs | instructions | per MAC |",
        "|---|---:|---:|---:|",
    ]
    for label, file in FLOAT_MODELS:
        path = models_dir / file
        if not path.is_file():
            rows.append(f"| {label} | skipped: {path} is absent | | |")
            continue
        out = tmp / f"{path.stem}_float"
        api.compile_model(path, BOARD, out)
        inputs = api.model_inputs(load_model(path), input_path=None, seed=0)
        r = api.run_compiled(out, inputs).report
        n, insns = int(r.macs), int(r.instructions)  # type: ignore[attr-defined,arg-type]
        print(f"kernels: {label}: {insns:,} instructions, {insns / n:.2f} per MAC", flush=True)
        rows.append(f"| {label} | {n:,} | {insns:,} | {insns / n:.2f} |")
    return rows


SCHEDULES_HEADING = "## Kernels under every schedule and board"
SCHEDULE_SEEDS = 20
SCHEDULE_BOARDS = ("mps2-an385", "mps2-an386", "mps2-an500", "mps2-an521", "lm3s6965evb")


def schedules_section(tmp: Path, models_dir: Path) -> list[str]:
    """Every candidate schedule the compiler can pick for each MLPerf Tiny model (a budget picks one of
    them), on every board it fits, bit-exact with tflite-micro on ``SCHEDULE_SEEDS`` seeded inputs."""
    from tvm_mcu import compiler
    from tvm_mcu.errors import BudgetError, FirmwareError

    lines = [
        "",
        SCHEDULES_HEADING,
        "",
        "Each int8 MLPerf Tiny model compiled under every candidate schedule (an SRAM budget makes the",
        f"compiler pick one of these) for every board, run on {SCHEDULE_SEEDS} seeded inputs and compared",
        "with the `tflite-micro` interpreter. The M4 and M7 run the SIMD path (SMLAD), the M3 and the M33",
        "(built without DSP) the portable C one. Instructions of the last input.",
        "",
        "| model | schedule | board | bit-exact | peak SRAM B | instructions |",
        "|---|---|---|---|---:|---:|",
    ]
    for label, file, _, _ in MODELS:
        path = models_dir / file
        if not path.is_file():
            lines.append(f"| {label} | skipped: {path} is absent | | | | |")
            continue
        model = load_model(path)
        candidates = compiler.plan_schedules(model.mod, model_name=model.name).candidates
        for k, c in enumerate(candidates):
            for board in SCHEDULE_BOARDS:
                out = tmp / f"{path.stem}_s{k}_{board}"
                try:
                    r, exact = bit_exact_run(path, board, out, seeds=SCHEDULE_SEEDS, schedule=c.label)
                except (BudgetError, FirmwareError) as exc:  # the board's SRAM or flash is too small
                    lines.append(f"| {label} | {c.label} | {board} | does not fit: {str(exc)[:80]} | | |")
                    continue
                print(f"schedules: {label} {c.label} {board}: exact={exact}", flush=True)
                lines.append(
                    f"| {label} | {c.label} | {board} | {'yes' if exact else 'NO'} | "
                    f"{r.peak_sram_bytes:,} | {int(r.instructions):,} |"  # type: ignore[attr-defined]
                )
    return [*lines, ""]
