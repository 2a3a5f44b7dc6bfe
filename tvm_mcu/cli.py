"""``tvm-mcu``: the command line. The only module that prints or exits."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tvm_mcu import __version__, api, compiler
from tvm_mcu.errors import BadOptionError, TvmMcuError
from tvm_mcu.ptq.common import DEFAULT_INT4_SQNR_DB, WEIGHT_CHOICES
from tvm_mcu.report import IO_IN_ARENA, Report
from tvm_mcu.schedule import choice


def _figures(r: Report) -> list[tuple[str, str]]:
    def b(n: int | None) -> str:
        return "-" if n is None else f"{n:,} B"

    rows = [
        ("board", r.board),
        ("model", f"{r.model} ({r.format})"),
        ("schedule", r.schedule + (f" (budget {b(r.sram_budget_bytes)})" if r.sram_budget_bytes else "")),
        ("layout", r.layout or "-"),
        ("arena", f"{b(r.arena_bytes)} (lower bound of this schedule {b(r.arena_lower_bound_bytes)})"),
        (
            "peak SRAM (arena + stack)"
            if r.io_convention == IO_IN_ARENA and r.io_placement is None
            else "peak SRAM (arena + I/O + stack)",
            b(r.peak_sram_bytes),
        ),
        ("inputs and outputs", _io_line(r)),
        (
            "whole-buffer peak / bound",
            f"{b(r.whole_buffer_peak_bytes)} / {b(r.whole_buffer_bound_bytes)} (inputs and outputs included)",
        ),
        ("stack (painted)", b(r.stack_bytes)),
        (
            "flash (text+rodata+data)",
            f"{b(r.flash_bytes)} (weights {b(r.weights_bytes)}, stored as {b(r.stored_weights_bytes)}: "
            f"{b(r.stored_weights_bytes - r.stored_constants_bytes)} weight tensors, "
            f"{b(r.stored_constants_bytes)} per-channel constants)",
        ),
        ("static RAM (data+bss)", b(r.ram_bytes)),
        ("MACs", f"{r.macs:,}"),
        ("instructions (QEMU, not cycles)", "-" if r.instructions is None else f"{r.instructions:,}"),
        ("instructions per MAC", "-" if r.instructions_per_mac is None else f"{r.instructions_per_mac:.2f}"),
        (
            "cycles, estimated (not measured)",
            "-" if r.estimated_cycles is None else f"{r.estimated_cycles:,}",
        ),
        (
            "latency at the board's clock (est.)",
            "-" if r.estimated_latency_ms is None else f"{r.estimated_latency_ms:,.2f} ms",
        ),
        ("compile time", f"{r.compile_seconds:.2f} s"),
    ]
    if r.max_abs_error is not None:
        rows.append(
            ("max abs error", f"{r.max_abs_error:.3g} vs {r.reference} (tolerance {r.tolerance:.3g})")
        )
    return rows


def _io_line(r: Report) -> str:
    if r.io_convention == IO_IN_ARENA and r.io_placement is not None:
        return f"{r.io_bytes:,} B (tvmmcu_model_input/output), {r.io_placement}"
    if r.io_convention == IO_IN_ARENA:
        return "in the arena (tvmmcu_model_input/output), reused once dead"
    return f"{r.io_bytes:,} B, the caller's buffers (tvmmcu_model_run(input, output))"


def _print_report(r: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.to_json(), indent=2))
        return
    for k, v in _figures(r):
        print(f"  {k:<32} {v}")


def _print_ops(r: Report) -> None:
    """One row per step; after a run, its instructions (QEMU, not cycles) and instructions per MAC."""
    ran = r.instructions is not None and r.driver_instructions is not None
    extra = f"{'instructions':>14}{'per MAC':>9}" if ran else ""
    print(
        f"  {'step':<6}{'operator':<14}{'MACs':>12}{'output B':>11}{'scratch B':>11}{'weights B':>11}"
        f"{'kept':>7}{extra}  name (weights' format)"
    )
    for i, op in enumerate(r.ops):
        extra = ""
        if ran:
            count = f"{op.instructions:,}" if op.instructions is not None else "-"
            per_mac = f"{op.instructions_per_mac:.2f}" if op.instructions_per_mac is not None else ""
            extra = f"{count:>14}{per_mac:>9}"
        stored = f"{op.weights_bytes:,}" if op.weights_bytes else ""
        sizes = f"{op.macs:>12,}{op.output_bytes:>11,}{op.scratch_bytes:>11,}{stored:>11}"
        kept = f"{(op.filterlets_kept or 0) / op.filterlets:.0%}" if op.filterlets else ""
        fmt = f" ({op.weights_format})" if op.weights_format else ""
        print(f"  {i:<6}{op.kind:<14}{sizes}{kept:>7}{extra}  {op.name}{fmt}")
    if ran:
        print(f"  driver and harness: {r.driver_instructions:,} instructions")


def cmd_compile(args: argparse.Namespace) -> int:
    out = Path(args.output or Path(args.model).stem + "_" + args.board)
    budget = _budget(args.sram_budget)
    flash = _budget(args.flash_budget, "--flash-budget")
    compiled = api.compile_model(
        Path(args.model),
        args.board,
        out,
        allow_float=args.allow_float,
        sram_budget=budget,
        weights=args.weights,
        sparse=not args.dense,
        channels_last=args.channels_last,
        emit=args.emit,
        io_in_arena=args.io_in_arena,
        compress=args.compress_weights,
        flash_budget=flash,
    )
    if args.json:
        _print_report(compiled.report, True)
        return 0
    print(
        f"compiled {args.model} for {args.board} into {out}/ (model.c, model.h, memory_plan.json, "
        f"{api.FIRMWARE_DIR}/firmware.elf, report.json, report.html)"
    )
    if "cmake" in args.emit:
        print(f"CMake: {out}/CMakeLists.txt (target tvmmcu_model), {out}/cmake/ (toolchain), {out}/example/")
    if "zephyr" in args.emit:
        print(f"Zephyr module: {out}/zephyr/ (module.yml, CMakeLists.txt, Kconfig: CONFIG_TVMMCU_MODEL)")
    if compiled.report.int16_weight_ops:
        print(f"weights stored as int16 for: {', '.join(compiled.report.int16_weight_ops)}")
    if compiled.report.int4_weight_ops:
        print(f"weights stored as int4 for: {', '.join(compiled.report.int4_weight_ops)}")
    if compiled.report.int2_weight_ops:
        print(f"weights stored as int2 for: {', '.join(compiled.report.int2_weight_ops)}")
    for c in compiled.report.compressed_weights:
        print(
            f"weights Golomb-Rice coded for {c.step} ({c.weight}): {c.raw_bytes:,} -> {c.stored_bytes:,} B "
            f"({c.ratio:.3f}x), "
            + (f"{c.decode_calls:,}" if c.decode_calls is not None else "a run-time count of")
            + " decode calls per inference"
        )
    for n in compiled.report.not_compressed_weights:
        print(f"weights not Golomb-Rice coded for {n.step} ({n.weight}): {n.reason}")
    _print_ops(compiled.report)
    _print_report(compiled.report, False)
    return 0


def _emits(text: str) -> tuple[str, ...]:
    from tvm_mcu.codegen.project import EMITS

    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in EMITS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown build files {unknown or [text]}; choose from {', '.join(EMITS)}"
        )
    return names


def _budget(text: str | None, option: str = "--sram-budget") -> int | None:
    if text is None:
        return None
    try:
        return choice.parse_bytes(text)
    except ValueError as exc:
        raise BadOptionError(f"{option}: {exc}") from exc


def cmd_explain(args: argparse.Namespace) -> int:
    text, png = api.explain(Path(args.dir), png=Path(args.png) if args.png else None)
    print(text)
    print(f"\nplot: {png}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    out_dir = Path(args.dir)
    report = Report.read(out_dir / api.REPORT)
    specs = [(r.name, tuple(r.shape), r.dtype) for r in report.inputs]
    if args.input:
        inputs = api.load_inputs(Path(args.input), specs)
    else:
        rng = np.random.default_rng(args.seed)
        inputs = [
            rng.standard_normal(s).astype(d)
            if d.startswith("float")
            else rng.integers(-128, 127, s).astype(d)
            for _, s, d in specs
        ]
    outcome = api.run_compiled(out_dir, inputs)
    if args.save_output:
        if len(outcome.outputs) == 1:
            np.save(args.save_output, outcome.outputs[0])
        else:
            np.savez(args.save_output, *outcome.outputs)
    if not args.json:
        for row, o in zip(outcome.report.outputs, outcome.outputs, strict=True):
            flat = o.reshape(-1)
            print(
                f"  output '{row.name}' {list(o.shape)} {o.dtype}: {np.array2string(flat[:10], precision=4)}"
                + (" ..." if flat.size > 10 else "")
            )
        _print_ops(outcome.report)
    _print_report(outcome.report, args.json)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ctx: Any = tempfile.TemporaryDirectory() if args.output is None else None
    out = Path(ctx.name) if ctx is not None else Path(args.output)
    input_path = Path(args.input) if args.input else None
    try:
        v = api.verify(
            Path(args.model),
            args.board,
            out,
            input_path=input_path,
            seed=args.seed,
            allow_float=args.allow_float,
            weights=args.weights,
            sparse=not args.dense,
            channels_last=args.channels_last,
            io_in_arena=args.io_in_arena,
            compress=args.compress_weights,
        )
    finally:
        if ctx is not None:
            ctx.cleanup()
    _print_report(v.report, args.json)
    r = v.report
    word = (r.verdict or ("match" if v.passed else "mismatch")).upper()
    verdict = (
        f"{word}: max abs error {r.max_abs_error:.3g} against {r.reference} (tolerance {r.tolerance:.3g})"
        + ("" if v.passed else f"; largest at {r.worst_difference}")
    )
    # In --json mode stdout holds only the JSON (with "verified"); the verdict of a mismatch and the
    # references' notes still reach the user, on stderr.
    stream = sys.stderr if args.json else sys.stdout
    for note in r.reference_notes:
        print(f"note: {note}", file=stream)
    if not args.json or not v.passed:
        print(verdict, file=stream)
    return 0 if v.passed else 1


def cmd_boards(args: argparse.Namespace) -> int:
    from tvm_mcu.targets.board import list_boards

    boards = list_boards()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": b.name,
                        "cpu": b.cpu,
                        "qemu_machine": b.qemu_machine,
                        "zephyr_board": b.zephyr_board,
                        "flash_bytes": b.flash_bytes,
                        "ram_bytes": b.ram_bytes,
                        "has_fpu": b.has_fpu,
                        "clock_hz": b.clock_hz,
                    }
                    for b in boards
                ],
                indent=2,
            )
        )
        return 0
    print(
        f"  {'board':<18}{'cpu':<12}{'flash':>10}{'SRAM':>10}{'clock':>9}  {'FPU':<5}{'zephyr board':<22}"
        "qemu -M"
    )
    for b in boards:
        clock = f"{b.clock_hz // 1_000_000}MHz" if b.clock_hz else "-"
        print(
            f"  {b.name:<18}{b.cpu:<12}{b.flash_bytes // 1024:>8}Ki{b.ram_bytes // 1024:>8}Ki{clock:>9}  "
            f"{'yes' if b.has_fpu else 'no':<5}{b.zephyr_board:<22}{b.qemu_machine}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tvm_mcu import demo

    return demo.run_demo(board=args.board, out_dir=Path(args.output), limit=args.limit)


CHANNELS_LAST_HELP = (
    "compute an ONNX (NCHW) model's convolutions channels-last, on the SIMD and sparse kernels (2-3x fewer "
    "instructions; the model's inputs and outputs stay NCHW); --no-channels-last keeps them NCHW. Default: "
    "channels-last when an int8 convolution's weights are sparse enough to store compactly (only the "
    "channels-last kernels read the sparse formats), else NCHW (an input with several channels is "
    "transposed into the arena, and row bands and in-place steps stop at the moves); report.json's "
    "layout says which and why"
)
DENSE_HELP = (
    "store every weight dense: by default a convolution whose filterlets (one output channel's weights "
    "at one tap) are mostly zero is stored as CSR over its kept filterlets and run by the sparse kernels"
)
WEIGHTS_HELP = (
    "how to store the weights the SIMD kernels read: auto (default): as int4, two per byte, where every "
    "value of a weight lies in [-8, 7] (half their flash, about the same instructions, bit-exact), else "
    "as given; int8: as given; int16: pre-widened to halfwords (twice their flash, fewer instructions). "
    "report.json lists the operators with int4 or int16 weights"
)
IO_IN_ARENA_HELP = (
    "place the model's inputs and outputs inside the arena (TFLite Micro's convention): "
    "tvmmcu_model_run() takes no buffers, tvmmcu_model_input(k) and tvmmcu_model_output(k) return where "
    "the caller writes the inputs and reads the outputs, and an input's bytes are reused once it is dead "
    "(never more SRAM than the caller's two 8-byte-aligned buffers: where sharing the arena saves nothing "
    "they get buffers of their own beside it, report.json's io_placement says so; 'tvm-mcu run' follows "
    "the directory's convention, report.json's io_convention)"
)
ALLOW_FLOAT_HELP = (
    "int8 models: run operators that have no integer lowering in float instead of refusing the model "
    "(the report lists them)"
)


QUANTIZE_WEIGHTS_HELP = (
    "int8 (default): every weight int8; int4: every Conv/Gemm/MatMul weight int4 per output channel "
    "in [-7, 7] (INT4 initializers, opset 21), depthwise convolutions included (see --int8-depthwise); "
    "mixed: int4 for the layers whose output keeps --int4-sqnr dB on the calibration data with int4 "
    "weights, int8 elsewhere. "
    "Activations are int8 in every case"
)


def cmd_quantize(args: argparse.Namespace) -> int:
    from tvm_mcu.ptq import evaluate_accuracy, quantize_onnx

    out = Path(args.output)
    result = quantize_onnx(
        Path(args.model),
        Path(args.calibration),
        out,
        weights=args.weights,
        int4_sqnr_db=args.int4_sqnr,
        int8_depthwise=args.int8_depthwise,
    )
    # int8 weights: the report as before; int4/mixed add the per-layer choice and their accuracy key.
    label = "int8" if args.weights == "int8" else f"{args.weights}-weight"
    report: dict[str, Any] = {
        "model": args.model,
        "output": str(out),
        "calibration_samples": result.n_calibration_samples,
        "quantized_ops": result.quantized_ops,
        "notes": list(result.notes),
    }
    if result.layers:
        report["weights"] = args.weights
        report["int4_sqnr_db"] = args.int4_sqnr
        report["layers"] = [
            {
                "node": layer.node,
                "op": layer.op,
                "weight": layer.weight,
                "bits": layer.bits,
                "sqnr_int4_db": round(layer.sqnr_int4_db, 2),
                "sqnr_int8_db": round(layer.sqnr_int8_db, 2),
                "reason": layer.reason,
            }
            for layer in result.layers
        ]
    if args.eval:
        data = np.load(args.eval)
        x, y = data[args.eval_x], data[args.eval_y]
        report["float_accuracy"] = evaluate_accuracy(Path(args.model), x, y)
        report[f"{label.replace('-', '_')}_accuracy"] = evaluate_accuracy(out, x, y)
        report["eval_samples"] = int(len(y))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    what = "int8" if args.weights == "int8" else "quantised (int8 activations)"
    print(
        f"quantised {args.model} -> {out}: {result.quantized_ops} operators {what} "
        f"(calibrated on {result.n_calibration_samples} samples)"
    )
    if result.layers:
        print(f"  weights {args.weights}: per layer (SQNR of its output on the calibration data, dB)")
        for layer in result.layers:
            print(
                f"    {layer.node:<28} {layer.op:<6} int{layer.bits}  int4 {layer.sqnr_int4_db:6.1f}  "
                f"int8 {layer.sqnr_int8_db:6.1f}  ({layer.reason})"
            )
    for note in result.notes:
        print(f"  note: {note}")
    if args.eval:
        print(
            f"  accuracy on {report['eval_samples']} samples of {args.eval}: float "
            f"{report['float_accuracy']:.4f} -> {label} "
            f"{report[label.replace('-', '_') + '_accuracy']:.4f}"
        )
    return 0


def _bytes_row(name: str, before: int, after: int, limit: int | None) -> str:
    budget = "-" if limit is None else f"{limit:,}"
    return f"  {name:<8}{before:>14,}{after:>14,}{budget:>14}"


def cmd_prune(args: argparse.Namespace) -> int:
    from tvm_mcu import prune

    if args.epochs < 0:
        raise BadOptionError("--epochs must be 0 or more")
    if args.epochs > 0 and not args.data:
        raise BadOptionError("--epochs N needs --data (fashion-mnist, digits or a .npz) to fine-tune on")
    budget = prune.parse_budget(args.budget)
    result = prune.prune_model(
        Path(args.model),
        board=args.board,
        budget=budget,
        method=args.method,
        granularity=args.granularity,
        importance=args.importance,
        scheduler=args.scheduler,
        out_path=Path(args.output),
        int8=not args.float,
        data=args.data,
        epochs=args.epochs,
        train_limit=args.train_images,
        sram_model=args.sram_model,
        progress=not args.json,
        distill=args.distill,
        seed=args.seed,
        channels_last=args.channels_last,
        workdir=Path(args.workdir) if args.workdir else None,
        workers=args.workers,
        ray_address=args.ray_address,
        weights=args.weights,
        compress_weights=args.compress_weights,
    )
    report = prune.result_json(result, budget)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    how = result.method if result.granularity == "channel" else f"{result.granularity}, {result.importance}"
    if result.method == "udc" and result.granularity != "channel":
        how = f"udc: channels, bits and zeros ({result.importance}), weights to be compiled coded"
    print(f"pruned {args.model} -> {args.output} ({how}, {'float' if args.float else 'int8'} figures)")
    print(f"  {'':<8}{'before':>14}{'after':>14}{'budget':>14}")
    b, a = result.before, result.after
    print(_bytes_row("SRAM B", b.sram, a.sram, budget.sram))
    print(_bytes_row("flash B", b.flash, a.flash, budget.flash))
    print(_bytes_row("MACs", b.macs, a.macs, budget.macs))
    if budget.instructions is not None or result.granularity != "channel":
        print(_bytes_row("instr", b.instructions, a.instructions, budget.instructions))
        print("  (instr: estimated by the kernels' cost model, channels-last; `tvm-mcu run` counts them)")
    if result.search:
        print(f"  {result.search}")
    if result.bits:
        widths = ", ".join(f"{layer} int{b}" for layer, b in result.bits.items())
        print(f"  weights (written quantised): {widths}")
    print(_bytes_row("weights B", b.weights, a.weights, budget.weights))
    print(f"  schedule: {b.schedule} -> {a.schedule}")
    if budget.sram is not None:
        print(f"  (as compiled with --sram-budget {budget.sram}: the fastest schedule within it)")
    m = result.measured
    if m is not None and result.granularity != "channel" and not result.channels_last:
        print(f"  (flash and MACs after: counted with the zero {result.unit} stored compactly; as compiled")
        print(f"  today: flash {m.flash:,} B, MACs {m.macs:,})")
    for label, (kept, of) in result.widths.items():
        if kept < of or result.granularity in ("channel", "mixed"):
            print(f"  {label:<32} {kept:>4} of {of} channels")
    for label, (kept, of) in result.sparsity.items():
        print(f"  {label:<32} {kept:>4} of {of} {result.unit} ({kept / of:.0%})")
    for line in prune.training_lines(result):
        print(f"  {line}")
    if args.workers or args.ray_address:
        print(f"  measured {result.compiles} candidates in {result.rounds} rounds (Ray tasks)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvm-mcu", description=__doc__)
    p.add_argument("--version", action="version", version=f"tvm-mcu {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the compiler does")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an internal error (a bug in tvm-mcu), show the whole traceback instead of one line",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model to a C library and firmware for a board")
    c.add_argument("model", help=".onnx, .tflite or .pt2 (torch.export.save) file")
    c.add_argument("--board", required=True, help="board name (see 'tvm-mcu boards')")
    c.add_argument("-o", "--output", help="output directory (default: MODEL_BOARD)")
    c.add_argument("--json", action="store_true", help="print report.json")
    c.add_argument("--allow-float", action="store_true", help=ALLOW_FLOAT_HELP)
    c.add_argument(
        "--sram-budget",
        metavar="SIZE",
        help="SRAM the schedule may use for arena + inputs/outputs, e.g. 32KiB: picks the schedule that "
        "fits with the fewest extra instructions, or fails naming the bottleneck",
    )
    c.add_argument("--weights", choices=compiler.WEIGHT_WIDTHS, default="auto", help=WEIGHTS_HELP)
    c.add_argument("--dense", action="store_true", help=DENSE_HELP)
    c.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help=CHANNELS_LAST_HELP)
    c.add_argument("--io-in-arena", action="store_true", help=IO_IN_ARENA_HELP)
    c.add_argument(
        "--compress-weights",
        choices=compiler.COMPRESS_MODES,
        default="off",
        help="store weights Golomb-Rice coded, each block of four output channels decoded at run time "
        "into a scratch buffer in the workspace (bit-exact; less flash, more instructions: about 31 per "
        "decoded byte, each weight decoded once per inference layer by layer, once per output row in "
        "row bands, once per output pixel in place; the schedule chooser weighs it): off (default); "
        "all: every weight the blocked "
        "kernels read that shrinks; auto: those saving the most bytes per decode instruction until the "
        "stored weights fit --flash-budget. report.json lists them (compressed_weights)",
    )
    c.add_argument(
        "--flash-budget",
        metavar="SIZE",
        help="bytes the stored weights (report.json's stored_weights_bytes) must fit, e.g. 200KiB: "
        "fails saying by how much they are over",
    )
    c.add_argument(
        "--emit",
        type=_emits,
        default=(),
        help="build files beside the library, comma-separated: cmake (a CMakeLists.txt with the static "
        "library target tvmmcu_model, a toolchain file for the board, an example application), zephyr "
        "(a Zephyr module: module.yml, CMakeLists.txt, Kconfig)",
    )
    c.set_defaults(func=cmd_compile)

    e = sub.add_parser("explain", help="print a compiled model's schedule and plot its live SRAM per step")
    e.add_argument("dir", help="directory written by 'tvm-mcu compile'")
    e.add_argument("--png", help="where to write the plot (default: DIR/schedule.png)")
    e.set_defaults(func=cmd_explain)

    r = sub.add_parser("run", help="run a compiled model on its emulated board and print the figures")
    r.add_argument("dir", help="directory written by 'tvm-mcu compile'")
    r.add_argument("--input", help=".npy (one input) or .npz (inputs in order); default: seeded random")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--save-output", help="write the output to this .npy (.npz for several outputs)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("verify", help="compile, run on QEMU and compare with the reference interpreter")
    v.add_argument("model")
    v.add_argument("--board", required=True)
    v.add_argument("--input", help=".npy or .npz input; default: seeded random")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("-o", "--output", help="keep the build in this directory")
    v.add_argument("--json", action="store_true")
    v.add_argument("--allow-float", action="store_true", help=ALLOW_FLOAT_HELP)
    v.add_argument("--weights", choices=compiler.WEIGHT_WIDTHS, default="auto", help=WEIGHTS_HELP)
    v.add_argument("--dense", action="store_true", help=DENSE_HELP)
    v.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help=CHANNELS_LAST_HELP)
    v.add_argument("--io-in-arena", action="store_true", help=IO_IN_ARENA_HELP)
    v.add_argument(
        "--compress-weights",
        choices=("off", "all"),
        default="off",
        help="off (default) or all: as for compile (auto needs compile's --flash-budget)",
    )
    v.set_defaults(func=cmd_verify)

    q = sub.add_parser(
        "quantize", help="post-training int8 quantisation of a float ONNX model (QDQ ONNX out)"
    )
    q.add_argument("model", help="float .onnx model")
    q.add_argument("--calibration", required=True, help=".npz of calibration inputs (leading sample axis)")
    q.add_argument("-o", "--output", required=True, help="the quantised .onnx to write")
    q.add_argument("--eval", help=".npz with test inputs and labels: report the accuracy change")
    q.add_argument("--eval-x", default="x", help="array of --eval holding the inputs (default x)")
    q.add_argument("--eval-y", default="y", help="array of --eval holding the labels (default y)")
    q.add_argument("--weights", choices=WEIGHT_CHOICES, default="int8", help=QUANTIZE_WEIGHTS_HELP)
    q.add_argument(
        "--int4-sqnr",
        type=float,
        default=DEFAULT_INT4_SQNR_DB,
        metavar="DB",
        help=f"--weights mixed: int4 where a layer keeps this SQNR (default {DEFAULT_INT4_SQNR_DB:g} dB)",
    )
    q.add_argument(
        "--int8-depthwise",
        action="store_true",
        help="--weights int4 or mixed: keep depthwise convolutions' weights int8",
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quantize)

    pr = sub.add_parser(
        "prune",
        help="remove channels (or zero filterlets or weights) of a float ONNX CNN until it meets "
        "SRAM/flash/MAC budgets on a board",
    )
    pr.add_argument("model", help="float .onnx model")
    pr.add_argument("--board", required=True)
    pr.add_argument(
        "--budget",
        required=True,
        help="e.g. sram=24KiB,flash=64KiB,macs=2M,weights=8KiB,instructions=5M (any subset; figures as "
        "compiled; weights: the weight bytes as stored, without the code; instructions as the kernels' "
        "cost model prices them)",
    )
    pr.add_argument(
        "--channels-last",
        action="store_true",
        help="compile every candidate channels-last, as it is to be deployed (compile --channels-last): "
        "zero filterlets and weights are then stored sparse and --granularity filterlet, mixed and "
        "unstructured are held to the measured flash instead of counted figures",
    )
    pr.add_argument(
        "--granularity",
        default="channel",
        choices=["channel", "filterlet", "mixed", "unstructured"],
        help="channel: remove channels (default); filterlet: zero whole filterlets W[o,:,ky,kx] of the "
        "convolutions with a window (DTMM); mixed: remove channels as far as SRAM needs, then zero "
        "filterlets; unstructured: zero single weights of any convolution or dense layer",
    )
    pr.add_argument(
        "--method",
        choices=["diff", "l1", "uniform", "udc"],
        help="how channels are ranked (--granularity channel only): diff (default): gates trained with "
        "budget losses while the model trains (needs --data and --epochs; without them, l1); l1: weight "
        "magnitude; uniform: width scaling; udc: diff's gates and gates per layer choosing int8, int4 or "
        "int2 weights, searched together for half the epochs, then the network found trained at its widths "
        "for all of them (UDC; writes the quantised model)",
    )
    pr.add_argument(
        "--weights",
        choices=["int8", "int4", "int2"],
        default="int8",
        help="int4: deploy every convolution and dense layer with int4 weights (depthwise ones too, "
        "up to 4,096 values), budgeted and trained as such; writes the quantised model (--data "
        "calibrates it); int2: ternary weights (INT2, opset 25) where the kernels read them four per "
        "byte, depthwise ones int4",
    )
    pr.add_argument(
        "--compress-weights",
        choices=["off", "all"],
        default="off",
        help="all: the model will be compiled with --compress-weights all; every candidate is measured "
        "so (weights Golomb-Rice coded, a zero weight one bit), and --method udc then searches each "
        "layer's share of zero weights as well as its channels and int8/int4/int2 width",
    )
    pr.add_argument(
        "--importance",
        choices=["taylor", "magnitude"],
        help="how filterlets or weights are ranked (--granularity filterlet, mixed, unstructured): taylor: "
        "|w * dL/dw| over a few training batches (default with --data); magnitude: L2 norm (default "
        "without --data)",
    )
    pr.add_argument(
        "--scheduler",
        choices=["global", "anneal", "gates"],
        help="how a filterlet cut is spread over the layers (--granularity filterlet, mixed): global: "
        "the weakest filterlets of the whole model; anneal: DTMM's simulated annealing over per-layer "
        "ratios, each filterlet priced by what it costs; gates: a gate per filterlet trained with budget "
        "losses (needs --data and --epochs 2 or more, 4 with mixed). Default: gates where they can "
        "train, else global",
    )
    pr.add_argument(
        "--sram-model",
        default="compiler",
        choices=["compiler", "whole"],
        help="diff: price SRAM by the schedule the compiler picks (partial execution, default) or by the "
        "layer-by-layer whole-buffer peak",
    )
    pr.add_argument("--data", help="fashion-mnist, digits or a .npz (x_train, y_train, x_test, y_test)")
    pr.add_argument(
        "--train-images",
        type=int,
        help="train on the first N training samples of --data only (quick runs; the test set stays whole)",
    )
    pr.add_argument(
        "--distill",
        action="store_true",
        help="train the pruned network on the original's outputs as well as the labels (knowledge "
        "distillation; on the Fashion-MNIST CNN at 1/4 SRAM it cost 1.4 points, so it is off by default)",
    )
    pr.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="training epochs (diff: half pruning, half fine-tuning; 0: no training)",
    )
    pr.add_argument(
        "--seed", type=int, default=0, help="of the training runs (sample order, initial state); default 0"
    )
    pr.add_argument("--float", action="store_true", help="budget the float model (default: int8 deployment)")
    pr.add_argument("-o", "--output", required=True, help="the pruned .onnx to write")
    pr.add_argument("--json", action="store_true")
    pr.add_argument(
        "--workers",
        type=int,
        help="compile and build the candidates as Ray tasks on a local Ray with this many CPUs, the "
        "bisections measuring that many candidates at once (speculated: the serial result in fewer "
        "rounds); pip install 'tvm-mcu[distributed]'",
    )
    pr.add_argument(
        "--ray-address",
        help="as --workers, on the Ray cluster at this address (e.g. auto); give a --workdir on storage "
        "every node sees",
    )
    pr.add_argument(
        "--workdir",
        help="where the candidates are exported and built (default: a temporary directory, removed)",
    )
    pr.set_defaults(func=cmd_prune)

    b = sub.add_parser("boards", help="list the supported boards")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_boards)

    d = sub.add_parser(
        "demo", help="compile the bundled Fashion-MNIST CNN and classify its test images on QEMU"
    )
    d.add_argument("--board", default="mps2-an386")
    d.add_argument("-o", "--output", default="out/demo")
    d.add_argument("--limit", type=int, default=16, help="number of test images to run")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.func(args))
    except TvmMcuError as exc:
        print(f"tvm-mcu: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Anything that is not a TvmMcuError is a bug in tvm-mcu, never the user's model or options:
        # one line that says so, the traceback kept in a file (and shown with --debug).
        if args.debug:
            raise
        print(f"tvm-mcu: {internal_error_line(exc, _save_traceback(exc))}", file=sys.stderr)
        return INTERNAL_ERROR


# Exit status of an internal error (1 is the user's error, argparse uses 2 for bad usage).
INTERNAL_ERROR = 3


def internal_error_line(exc: BaseException, saved: Path | None) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    what = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
    where = f"the traceback is in {saved}; " if saved is not None else ""
    return (
        f"internal error (a bug in tvm-mcu, not a problem with your model or options): {what}. "
        f"{where}rerun with --debug to see it, and please report it"
    )


def _save_traceback(exc: BaseException) -> Path | None:
    import traceback

    try:
        fd, name = tempfile.mkstemp(prefix="tvm-mcu-internal-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"tvm-mcu {__version__}: {' '.join(sys.argv)}\n\n")
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return Path(name)


if __name__ == "__main__":
    sys.exit(main())
