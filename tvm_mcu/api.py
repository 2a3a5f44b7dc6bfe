"""The public Python API of tvm-mcu; the CLI is a thin shell around these functions."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tvm_mcu import compiler, outputs
from tvm_mcu import explain as explain_mod
from tvm_mcu.codegen import model_c, project
from tvm_mcu.errors import BadOptionError, BudgetError, VerificationError
from tvm_mcu.frontend import ImportedModel, load_model, random_inputs
from tvm_mcu.reference import oracle_names, run_oracle
from tvm_mcu.report import (
    IO_APART,
    IO_CALLER,
    IO_IN_ARENA,
    CompressedRow,
    IoRow,
    NotCompressedRow,
    OpRow,
    Report,
)
from tvm_mcu.schedule.graph import Graph
from tvm_mcu.targets.board import Board, load_board
from tvm_mcu.targets.firmware import build_firmware
from tvm_mcu.targets.runner import run_firmware

logger = logging.getLogger(__name__)

REPORT = "report.json"
SCHEDULE = explain_mod.SCHEDULE
FIRMWARE_DIR = "build"
# Float outputs must match the reference within this absolute error, scaled by the output's magnitude
# when it exceeds 1 (float32 has ~7 significant digits; summation order differs from the reference).
FLOAT_ATOL = 1e-4


@attrs.frozen
class Compiled:
    """A compiled model on disk: its directory, report and firmware."""

    out_dir: Path
    report: Report
    elf: Path


@attrs.frozen
class RunOutcome:
    outputs: list[np.ndarray]
    report: Report


@attrs.frozen
class Verification:
    report: Report
    outputs: list[np.ndarray]
    reference: list[np.ndarray]
    passed: bool


def _check_fits(board: Board, plan_arena: int, io_bytes: int, graph: Graph) -> None:
    """Refuse early, naming the bottleneck, when the activations alone cannot fit the board's SRAM."""
    need = plan_arena + io_bytes + board.stack_bytes
    if need <= board.ram_bytes:
        return
    biggest = max(
        (t for t in graph.tensors.values() if t.kind != "weight"), key=lambda t: t.nbytes, default=None
    )
    detail = (
        f"; the largest tensor is '{biggest.name}' {list(biggest.shape)} ({biggest.nbytes} B)"
        if biggest
        else ""
    )
    raise BudgetError(
        f"the model needs {need} B of SRAM on {board.name} (arena {plan_arena} B "
        f"+ inputs/outputs {io_bytes} B + stack {board.stack_bytes} B) "
        f"but the board has {board.ram_bytes} B: "
        f"{need - board.ram_bytes} B too many{detail}"
    )


def _io_rows(
    slots: tuple[model_c.IoSlot, ...], quant: list[list[float]] | None, specs: tuple[Any, ...]
) -> tuple[IoRow, ...]:
    rows = []
    for k, s in enumerate(slots):
        q = quant[k] if quant is not None and k < len(quant) else []
        spec = specs[k] if k < len(specs) else None
        scale, zp = (
            (float(q[0]), int(q[1]))
            if q
            else (getattr(spec, "scale", None), getattr(spec, "zero_point", None))
        )
        name = spec.name if spec is not None else s.name
        rows.append(IoRow(name, s.shape, s.dtype, s.offset, s.nbytes, scale, zp))
    return tuple(rows)


def _op_row(op: compiler.OpInfo) -> OpRow:
    """The report's row of one step: its figures and how its weights are stored."""
    w = op.weights
    counted = [s for s in w if s.filterlets is not None]
    return OpRow(
        op.name,
        op.kind,
        op.macs,
        op.output_bytes,
        op.scratch_bytes,
        weights_format=" + ".join(dict.fromkeys(s.format for s in w)),
        weights_bytes=sum(s.stored_bytes for s in w),
        index_bytes=sum(s.index_bytes for s in w),
        filterlets_kept=sum(int(s.filterlets_kept or 0) for s in counted) if counted else None,
        filterlets=sum(int(s.filterlets or 0) for s in counted) if counted else None,
    )


def compile_model(
    model_path: Path,
    board_name: str,
    out_dir: Path,
    *,
    allow_float: bool = False,
    sram_budget: int | None = None,
    strict_budget: bool = True,
    in_place: bool = True,
    partial_execution: bool = True,
    schedule: str | None = None,
    weights: str = "auto",
    sparse: bool = True,
    channels_last: bool | None = None,
    emit: tuple[str, ...] = (),
    io_in_arena: bool = False,
    compress: str = "off",
    flash_budget: int | None = None,
) -> Compiled:
    """Import, compile to C, build the firmware for ``board_name``; writes the library, report.json and
    schedule.json, and the build files ``emit`` names (``codegen.project.EMITS``: a CMake library
    target, toolchain file and example application; a Zephyr module).

    ``allow_float``: operators of an int8 model without an integer lowering run in float instead of
    being refused; the report lists them. ``sram_budget``: bytes of arena plus input and output
    buffers the schedule must fit (BudgetError, naming the bottleneck, when no schedule does;
    with ``strict_budget=False`` the default schedule instead, and the report records no budget).
    ``in_place=False, partial_execution=False`` keeps every tensor whole in a buffer of its own (the
    layer-by-layer baseline). ``schedule``: take this candidate (e.g. "row bands") instead of choosing.
    ``weights``: "auto" stores the SIMD kernels' weights that fit int4 two per byte, "int8" as given,
    "int16" pre-widened (compiler.compile_module's); ``sparse=False``: every weight
    stored dense; ``channels_last=True``: an ONNX (NCHW) model computed NHWC, ``False``: NCHW, ``None``:
    channels-last when its int8 convolution weights are filterlet- or element-sparse
    (compiler.compile_module's ``convert``; the report's ``layout`` says which and why).
    ``io_in_arena``: the model's inputs and outputs live in the arena, reused once dead (TFLite Micro's
    convention: ``tvmmcu_model_input(k)``/``tvmmcu_model_output(k)``, ``tvmmcu_model_run(void)``); the
    report's ``io_convention`` says which, and its SRAM figures count them either way.
    ``compress``: "off", "all" or "auto" (with ``flash_budget``, bytes the stored weights must fit):
    which weights are stored Golomb-Rice coded (compiler.compile_module's); the report lists them.
    """
    board = load_board(board_name)
    out_dir = outputs.output_dir(Path(out_dir))
    model = load_model(Path(model_path))
    result = compiler.compile_module(
        model.mod,
        model_name=model.name,
        allow_float=allow_float,
        rounding="onnx" if model.format == "onnx" else "tflite",
        sram_budget=sram_budget,
        strict_budget=strict_budget,
        in_place=in_place,
        partial_execution=partial_execution,
        schedule=schedule,
        weights=weights,
        sparse=sparse,
        convert=channels_last,
        io_in_arena=io_in_arena,
        compress=compress,
        flash_budget=flash_budget,
    )
    ins = model_c.io_slots(result.graph, result.graph.inputs)
    outs = model_c.io_slots(result.graph, result.graph.outputs)
    # The caller's input and output buffers (or the library's own, laid out alike): none when the arena
    # holds them.
    io_bytes = 0 if result.plan.holds_io else model_c.packed_bytes(ins) + model_c.packed_bytes(outs)
    _check_fits(board, result.plan.arena_bytes, io_bytes, result.graph)
    out_dir = Path(out_dir)
    model_c.write_library(result.library, out_dir, plan_json=result.plan.to_json())
    (out_dir / SCHEDULE).write_text(json.dumps(explain_mod.schedule_json(result), indent=2) + "\n")
    fw = build_firmware(out_dir, board, out_dir / FIRMWARE_DIR)
    if fw.warnings:
        logger.warning("the generated library compiled with warnings:\n%s", "\n".join(fw.warnings))
    report = Report(
        board=board.name,
        model=model.name,
        model_path=str(model.path),
        format=model.format,
        arena_bytes=result.plan.arena_bytes,
        arena_lower_bound_bytes=result.plan.lower_bound,
        weights_bytes=sum(int(w.nbytes) for w in result.graph.weights.values()),
        flash_bytes=fw.flash_bytes,
        ram_bytes=fw.ram_bytes,
        macs=sum(o.macs for o in result.ops),
        compile_seconds=result.seconds,
        inputs=_io_rows(ins, (result.io_quantization or {}).get("inputs"), model.inputs),
        outputs=_io_rows(outs, (result.io_quantization or {}).get("outputs"), model.outputs),
        ops=tuple(_op_row(o) for o in result.ops),
        plan_strategy=result.plan.strategy,
        whole_buffer_peak_bytes=result.whole_buffer_peak,
        whole_buffer_bound_bytes=result.whole_buffer_bound.peak_bytes,
        library_warnings=fw.warnings,
        allow_float=allow_float,
        float_ops=result.float_ops,
        float_routines=fw.float_routines,
        int16_weight_ops=result.int16_weight_ops,
        int4_weight_ops=result.int4_weight_ops,
        int2_weight_ops=result.int2_weight_ops,
        stored_weights_bytes=result.stored_weights_bytes,
        stored_constants_bytes=result.stored_constants_bytes,
        layout=result.layout,
        schedule=result.schedule,
        sram_budget_bytes=result.sram_budget,
        io_bytes=io_bytes,
        io_convention=IO_IN_ARENA if result.plan.io_in_arena else IO_CALLER,
        io_placement=IO_APART if result.plan.io_apart else None,
        in_place_steps=tuple(f"{s.name} ({s.in_place})" for s in result.graph.steps if s.in_place),
        compressed_weights=tuple(
            CompressedRow(
                c.step,
                c.weight,
                c.raw_bytes,
                c.stored_bytes,
                round(c.stored_bytes / c.raw_bytes, 3),
                c.decode_calls,
            )
            for c in result.compressed
        ),
        flash_budget_bytes=result.flash_budget,
        not_compressed_weights=tuple(
            NotCompressedRow(c.step, c.weight, c.reason) for c in result.not_compressed
        ),
    )
    report.write(out_dir / REPORT)
    if emit:
        example = pack(report.inputs, model_inputs(model, input_path=None, seed=0))
        project.write_project(
            out_dir,
            board,
            model.name,
            emit,
            example,
            io_in_arena=result.plan.io_in_arena,
            n_inputs=len(ins),
            n_outputs=len(outs),
        )
    return Compiled(out_dir, report, fw.elf)


def pack(rows: tuple[IoRow, ...], arrays: list[np.ndarray]) -> bytes:
    """Pack arrays into the byte layout ``tvmmcu_model_run`` expects (see model.h).

    Float values for an integer input of a quantised model are quantised with its scale and zero point
    (ONNX QuantizeLinear); integer values are taken when they fit the input's type.
    """
    if len(arrays) != len(rows):
        raise BadOptionError(f"the model takes {len(rows)} input(s), got {len(arrays)}")
    total = max((r.offset + r.bytes for r in rows), default=0)
    buf = bytearray(total)
    for r, a in zip(rows, arrays, strict=True):
        a = np.asarray(a)
        if tuple(a.shape) != tuple(r.shape) and a.size == int(np.prod(r.shape)):
            a = a.reshape(r.shape)
        if tuple(a.shape) != tuple(r.shape):
            raise BadOptionError(f"input '{r.name}' must have shape {list(r.shape)}, got {list(a.shape)}")
        buf[r.offset : r.offset + r.bytes] = np.ascontiguousarray(_as_input(r, a)).tobytes()
    return bytes(buf)


def _as_input(r: IoRow, a: np.ndarray) -> np.ndarray:
    want = np.dtype(r.dtype)
    if a.dtype == want:
        return a
    if a.dtype.kind not in "biuf":
        raise BadOptionError(f"input '{r.name}' must be {r.dtype}; got {a.dtype} values")
    if a.dtype.kind == "f" and want.kind in "iu":
        if r.scale is None:
            raise BadOptionError(
                f"input '{r.name}' is {r.dtype} and the model gives no scale to quantise float values with; "
                f"give {r.dtype} values"
            )
        return quantize_linear(a, r.scale, int(r.zero_point or 0), r.dtype)
    if want.kind == "f":
        return a.astype(want)
    info = np.iinfo(want)
    if a.dtype.kind == "b" or (int(a.min(initial=0)) >= info.min and int(a.max(initial=0)) <= info.max):
        return a.astype(want)
    raise BadOptionError(
        f"input '{r.name}' is {r.dtype} ({info.min} to {info.max}); the values given range from "
        f"{a.min()} to {a.max()}"
    )


def quantize_linear(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, saturate to ``dtype`` (int8 or uint8)."""
    info = np.iinfo(np.dtype(dtype))
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_linear(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.int32) - zero_point) * np.float32(scale)).astype(np.float32)


def unpack(rows: tuple[IoRow, ...], data: bytes) -> list[np.ndarray]:
    return [
        np.frombuffer(data[r.offset : r.offset + r.bytes], dtype=np.dtype(r.dtype)).reshape(r.shape).copy()
        for r in rows
    ]


def run_compiled(out_dir: Path, inputs: list[np.ndarray]) -> RunOutcome:
    """Run a compiled model's firmware once on its emulated board; updates report.json with the figures."""
    out_dir = Path(out_dir)
    report = Report.read(out_dir / REPORT)
    board = load_board(report.board)
    fw = build_firmware(out_dir, board, out_dir / FIRMWARE_DIR)
    out_bytes = max((r.offset + r.bytes for r in report.outputs), default=0)
    result = run_firmware(fw, pack(report.inputs, inputs), out_bytes)
    report = report.with_run(
        stack_bytes=result.stack_bytes,
        instructions=result.instructions,
        step_instructions=result.step_instructions,
        estimated_cycles=result.estimated_cycles,
        clock_hz=board.clock_hz,
    )
    report = attrs.evolve(report, flash_bytes=result.flash_bytes, ram_bytes=result.ram_bytes)
    report.write(out_dir / REPORT)
    return RunOutcome(unpack(report.outputs, result.output), report)


def model_inputs(model: ImportedModel, *, input_path: Path | None, seed: int) -> list[np.ndarray]:
    """Inputs from a .npy/.npz file, or seeded random ones."""
    if input_path is None:
        return random_inputs(model, seed)
    arrays = load_inputs(Path(input_path), [(s.name, s.shape, s.dtype) for s in model.inputs])
    for spec, a in zip(model.inputs, arrays, strict=True):
        if a.dtype != np.dtype(spec.dtype):
            raise BadOptionError(
                f"input '{spec.name}' of {model.name} is {spec.dtype}; {input_path} holds {a.dtype}"
            )
    return arrays


def load_inputs(path: Path, specs: list[tuple[str, tuple[int, ...], str]]) -> list[np.ndarray]:
    """The arrays of a .npy (one input) or .npz (inputs in order) file, each reshaped to its input's shape.

    Float inputs take float or integer values; the values of an integer input are converted by
    :func:`pack` (float values of a quantised input are quantised there).
    """
    if not path.is_file():
        raise BadOptionError(f"input file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = [data[k] for k in data.files] if isinstance(data, np.lib.npyio.NpzFile) else [data]
    except (OSError, ValueError, EOFError) as exc:
        raise BadOptionError(f"{path} is not a .npy or .npz file ({exc})") from exc
    if len(arrays) != len(specs):
        raise BadOptionError(f"the model takes {len(specs)} input(s); {path} holds {len(arrays)}")
    out = []
    for (name, shape, dtype), a in zip(specs, arrays, strict=True):
        if a.dtype.kind not in "biuf":
            raise BadOptionError(
                f"input '{name}' needs {dtype} values; {path} holds {a.dtype} (give a real-valued array)"
            )
        if a.size != int(np.prod(shape)):
            raise BadOptionError(
                f"input '{name}' needs {list(shape)} ({dtype}); {path} holds {list(a.shape)}"
            )
        a = a.reshape(shape)
        want = np.dtype(dtype)
        if want.kind == "f":
            a = a.astype(want)
        elif a.dtype.kind != "f":
            a = _as_input(IoRow(name, shape, dtype), a)
        out.append(a)
    return out


def max_abs_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference; NaN where both are NaN counts as equal, NaN on one side as infinite."""
    return float(np.max(_abs_diff(np.reshape(got, -1), np.reshape(want, -1)), initial=0.0))


def tolerance_for(reference: list[np.ndarray]) -> float:
    finite = [np.abs(r[np.isfinite(r)]) for r in reference if r.size]
    scale = max((float(np.max(f)) for f in finite if f.size), default=1.0)
    return FLOAT_ATOL * max(1.0, scale)


@attrs.frozen
class Comparison:
    """The firmware's outputs against one reference: the largest error, its tolerance and where."""

    error: float
    tolerance: float
    worst: str = ""  # the output and element with the largest error, and both values
    # A QDQ model over its end-to-end tolerance whose every operator, checked alone, is within one step.
    per_operator: bool = False

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance or self.per_operator


def compare(
    rows: tuple[IoRow, ...], outputs: list[np.ndarray], reference: list[np.ndarray], *, steps: float = 1.0001
) -> Comparison:
    """Float outputs within 1e-4 (scaled by the output's magnitude above 1); int8/uint8 outputs of a
    TFLite model exactly; those of an ONNX QDQ model within one quantisation step (compared dequantised
    with the float reference, whose rounding differs from integer rounding)."""
    if len(reference) != len(outputs):
        raise VerificationError(f"the reference gave {len(reference)} outputs, the firmware {len(outputs)}")
    err, tol, worst = 0.0, 0.0, ""
    for row, got, want in zip(rows, outputs, reference, strict=True):
        want = np.asarray(want)
        if want.size != got.size:
            raise VerificationError(
                f"output '{row.name}': the reference has shape {list(want.shape)}, the firmware "
                f"{list(got.shape)}"
            )
        want = want.reshape(got.shape)
        if got.dtype.kind in "iu" and want.dtype.kind == "f" and row.scale is not None:
            # A QDQ model: the reference's float output is a dequantised integer value.
            got = dequantize_linear(got, row.scale, int(row.zero_point or 0))
            tol = max(tol, steps * row.scale)
        elif got.dtype.kind == "f":
            tol = max(tol, tolerance_for([want]))
        diff = _abs_diff(got, want)
        if diff.size and float(diff.max()) > err:
            err = float(diff.max())
            at = np.unravel_index(int(np.argmax(diff)), diff.shape)
            worst = (
                f"output '{row.name}' at {[int(i) for i in at]}: firmware {got[at].item()!r}, "
                f"reference {want[at].item()!r}"
            )
    return Comparison(err, tol, worst)


def _abs_diff(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Absolute differences; NaN on both sides (and equal infinities) count as equal, NaN on one side as
    infinite."""
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(g - w)
    diff[np.isnan(g) & np.isnan(w)] = 0.0
    diff[np.isnan(diff)] = np.inf
    diff[np.isinf(g) & np.isinf(w) & (np.sign(g) == np.sign(w))] = 0.0
    return diff


@attrs.frozen
class Checked:
    """The verdict of :func:`check_against_references`."""

    reference: str  # the oracle the verdict rests on
    comparison: Comparison
    notes: tuple[str, ...]
    outputs: list[np.ndarray] = attrs.field(eq=False)  # that oracle's outputs


def check_against_references(
    model: ImportedModel, inputs: list[np.ndarray], rows: tuple[IoRow, ...], outputs: list[np.ndarray]
) -> Checked:
    """Compare the firmware's outputs with the oracles of the model's format, the preferred one first.

    An oracle that cannot run the model is skipped (noted), as is one whose outputs have other shapes
    than the firmware's (noted; raised when no oracle has the firmware's shapes). When the firmware
    differs from the first oracle that runs, the others are tried: if one agrees with the firmware, the
    references disagree with each other and that is said, rather than blaming the firmware.
    VerificationError when no oracle can run the model.
    """
    notes: list[str] = []
    first: Checked | None = None
    misshapen: VerificationError | None = None
    for name in oracle_names(model):
        oracle = run_oracle(name, model, inputs)
        if oracle.outputs is None:
            notes.append(f"{name} could not run the model ({oracle.error})")
            continue
        try:
            result = compare(rows, outputs, list(oracle.outputs))
        except VerificationError as exc:  # other shapes: another oracle may agree with the firmware's
            misshapen = misshapen or exc
            notes.append(f"{name}'s outputs differ from the firmware's in shape: {exc}")
            continue
        if first is None:
            first = Checked(name, result, (), list(oracle.outputs))
        if result.passed:
            if first.reference != name:
                notes.append(
                    f"the references disagree: {first.reference} differs from the firmware and from "
                    f"{name} (max error {first.comparison.error:.3g}, {first.comparison.worst}); the "
                    f"firmware matches {name}"
                )
            return Checked(name, result, tuple(notes), list(oracle.outputs))
    if first is None and misshapen is not None:
        raise misshapen
    if first is None:
        raise VerificationError(f"no reference interpreter can run {model.name}: {'; '.join(notes)}")
    return attrs.evolve(first, notes=tuple(notes))


def _is_qdq(model: ImportedModel, rows: tuple[IoRow, ...]) -> bool:
    """An ONNX model that quantises anything (its outputs may still be float: a quantiser can leave the
    last operators in float)."""
    if model.format != "onnx":
        return False
    if any(r.scale is not None and np.dtype(r.dtype).kind in "iu" for r in rows):
        return True
    import onnx

    return any(
        n.op_type == "QuantizeLinear" or n.op_type.startswith(("QLinear", "QGemm"))
        for n in onnx.load_from_string(model.data).graph.node
    )


def _per_operator(
    model: ImportedModel,
    inputs: list[np.ndarray],
    checked: Checked,
    workdir: Path,
    rows: tuple[IoRow, ...],
    outputs: list[np.ndarray],
    *,
    allow_float: bool,
) -> Checked:
    """A QDQ model whose outputs differ by more than a step: check each quantised operator alone
    (:mod:`tvm_mcu.qdq_check`). The difference is rounding at ties that later layers amplified when every
    operator is within a step of onnxruntime given onnxruntime's integers, and the firmware's integer
    outputs are exactly those of tvm-mcu's own operators run one after another (so the memory plan and
    schedule that compose them change nothing); the verdict then says so. Otherwise the notes name the
    operator, or say the outputs could not be accounted for."""
    from tvm_mcu import qdq_check

    feeds = {spec.name: x for spec, x in zip(model.inputs, inputs, strict=True)}
    segments = qdq_check.check_segments(model.data, feeds, workdir=workdir, allow_float=allow_float)
    wrong = [s for s in segments.checks if s.steps > 1]
    unchecked = [s for s in segments.checks if s.skipped]
    cmp = checked.comparison
    if wrong:
        worst = max(wrong, key=lambda s: s.steps)
        note = (
            f"checked alone on the same integers as onnxruntime, {len(wrong)} quantised operator(s) "
            f"differ by more than one step: {worst.label} by {worst.steps} steps"
        )
        return attrs.evolve(checked, notes=(*checked.notes, note))
    if unchecked:
        note = (
            f"every quantised operator that could be checked alone is within one step of onnxruntime; "
            f"{len(unchecked)} could not be ({unchecked[0].label}: {unchecked[0].skipped})"
        )
        return attrs.evolve(checked, notes=(*checked.notes, note))
    if len(segments.own_outputs) != len(outputs):
        return attrs.evolve(checked, notes=(*checked.notes, "the outputs could not be accounted for"))
    # The same integers (half a step: exact), or float outputs within float error.
    composed = compare(rows, outputs, list(segments.own_outputs), steps=0.5)
    if not composed.passed:
        note = (
            "every quantised operator is within one step of onnxruntime given its integers, but the "
            "firmware's outputs differ from what tvm-mcu's own operators give run one after another "
            f"({composed.worst}): a fault in how the compiled model composes them (memory plan, schedule)"
        )
        return attrs.evolve(checked, notes=(*checked.notes, note))
    note = (
        f"the outputs differ by more than one step (max error {cmp.error:.3g}, {cmp.worst}), but every "
        f"one of the {len(segments.checks)} quantised operators, given the same integers as onnxruntime, "
        "is within one step of it, and the firmware computes exactly what they compute run one after "
        "another: rounding at ties (float32 in onnxruntime, exact in tvm-mcu) amplified by later layers"
    )
    return attrs.evolve(
        checked, comparison=attrs.evolve(cmp, per_operator=True), notes=(*checked.notes, note)
    )


def verify(
    model_path: Path,
    board_name: str,
    out_dir: Path,
    *,
    input_path: Path | None = None,
    seed: int = 0,
    allow_float: bool = False,
    schedule: str | None = None,
    weights: str = "auto",
    sparse: bool = True,
    channels_last: bool | None = None,
    io_in_arena: bool = False,
    compress: str = "off",
) -> Verification:
    """Compile, run on the emulated board and compare with the independent references
    (:func:`check_against_references`; tolerances in :func:`compare`).

    ``schedule``: verify this candidate schedule (e.g. "row bands") instead of the one the compiler
    would choose. ``weights``, ``sparse``, ``channels_last``, ``io_in_arena``, ``compress``: as for
    :func:`compile_model`.
    """
    compiled = compile_model(
        model_path,
        board_name,
        out_dir,
        allow_float=allow_float,
        schedule=schedule,
        weights=weights,
        sparse=sparse,
        channels_last=channels_last,
        io_in_arena=io_in_arena,
        compress=compress,
    )
    model = load_model(Path(model_path))
    inputs = model_inputs(model, input_path=input_path, seed=seed)
    outcome = run_compiled(compiled.out_dir, inputs)
    checked = check_against_references(model, inputs, outcome.report.outputs, outcome.outputs)
    if not checked.comparison.passed and _is_qdq(model, outcome.report.outputs):
        checked = _per_operator(
            model,
            inputs,
            checked,
            compiled.out_dir / "per_operator",
            outcome.report.outputs,
            outcome.outputs,
            allow_float=allow_float,
        )
    result = checked.comparison
    report = attrs.evolve(
        outcome.report,
        max_abs_error=result.error,
        tolerance=result.tolerance,
        reference=checked.reference,
        reference_notes=checked.notes,
        verified=result.passed,
        verdict="mismatch"
        if not result.passed
        else ("match per operator" if result.per_operator and result.error > result.tolerance else "match"),
        worst_difference=result.worst,
    )
    report.write(compiled.out_dir / REPORT)
    return Verification(report, outcome.outputs, checked.outputs, result.passed)


def explain(directory: Path, *, png: Path | None = None) -> tuple[str, Path]:
    """The schedule of a compiled model as a table, and a PNG of live SRAM per step (default
    ``DIR/schedule.png``), before and after in-place and partial execution, with the budget line; after
    a run (``tvm-mcu run``/``verify``), each step's instructions too."""
    record = explain_mod.read(Path(directory))
    report_path = Path(directory) / REPORT
    if report_path.is_file():
        record = explain_mod.with_run(record, Report.read(report_path))
    text = explain_mod.render_text(record)
    path = explain_mod.plot(record, Path(png) if png else Path(directory) / explain_mod.PLOT)
    return text, path
