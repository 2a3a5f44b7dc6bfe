"""The Report: every figure of one compiled (and possibly run) model, serialised as ``report.json``.

Each figure is measured: arena and lower bound from the memory plan, flash and static RAM from the ELF,
stack by painting, instructions from the QEMU plugin (instructions, not cycles).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from tvm_mcu.errors import BadOptionError


@attrs.frozen
class OpRow:
    name: str
    kind: str
    macs: int
    output_bytes: int
    scratch_bytes: int
    # Set by a run: the instructions of this step's operator call (its function and every routine it
    # calls; a copy step's memcpy is the driver's), and per MAC.
    instructions: int | None = None
    instructions_per_mac: float | None = None
    # The step's weights as stored in flash: their format(s) ("dense", "dense, blocked", "dense, int16",
    # "dense, int4", "filterlet CSR"; several joined by " + " for a chain of layers), bytes (values and
    # indices), the index bytes of a sparse format, and for convolutions with several taps the
    # filterlets that hold a non-zero value and all of them.
    weights_format: str = ""
    weights_bytes: int = 0
    index_bytes: int = 0
    filterlets_kept: int | None = None
    filterlets: int | None = None


@attrs.frozen
class CompressedRow:
    """One weight of one step stored Golomb-Rice coded (compile --compress-weights)."""

    step: str
    weight: str
    raw_bytes: int  # blocked int8, what the kernels read
    stored_bytes: int  # the blob: chunk offsets, chunks, padding
    ratio: float  # stored / raw
    # tvmmcu_rice_decode calls per inference, counted from the lowered loops' trip counts (None where one
    # is read at run time: row bands); each decodes a chunk of four channels unless the scratch holds it.
    decode_calls: int | None


@attrs.frozen
class NotCompressedRow:
    """A weight --compress-weights asked for that the schedule leaves as it was, and why."""

    step: str
    weight: str
    reason: str


def _int_tuple(values: object) -> tuple[int, ...]:
    return tuple(int(v) for v in values)  # type: ignore[attr-defined]


def _str_tuple(values: object) -> tuple[str, ...]:
    return tuple(str(v) for v in values)  # type: ignore[attr-defined]


def _per_mac(instructions: int, macs: int) -> float | None:
    return round(instructions / macs, 3) if macs else None


@attrs.frozen
class IoRow:
    name: str
    shape: tuple[int, ...] = attrs.field(converter=_int_tuple)
    dtype: str = ""
    offset: int = 0
    bytes: int = 0
    # For an int8 tensor of a quantised model: real value = scale * (q - zero_point).
    scale: float | None = None
    zero_point: int | None = None


# Where the model's inputs and outputs live (Report.io_convention): buffers the caller passes to
# tvmmcu_model_run, or the arena (--io-in-arena, TFLite Micro's convention).
IO_CALLER = "caller buffers"
IO_IN_ARENA = "in arena"
# Report.io_placement of an IO_IN_ARENA library whose arena would have been larger with them than the
# caller convention's arena and buffers: the library keeps them in buffers of its own, laid out as the
# caller's (tvm_mcu.schedule.memory, ``io_apart``); None when they are where io_convention says.
IO_APART = "outside the arena, in the library's own buffers: sharing the arena saved nothing"


@attrs.frozen
class Report:
    board: str
    model: str
    model_path: str
    format: str
    arena_bytes: int
    arena_lower_bound_bytes: int
    weights_bytes: int  # the dense int8/float values of every weight
    flash_bytes: int
    ram_bytes: int
    macs: int
    compile_seconds: float
    inputs: tuple[IoRow, ...]
    outputs: tuple[IoRow, ...]
    ops: tuple[OpRow, ...]
    plan_strategy: str
    # Whole tensors live at once, model inputs and outputs included: in the compiled operator order, and
    # the minimum over all operator orders (the bound any layer-by-layer executor must pay).
    whole_buffer_peak_bytes: int
    whole_buffer_bound_bytes: int
    # Quantised models: ops left in float by --allow-float, and the float routines linked into the
    # firmware (soft-float helpers, libm); both empty for an integer-only model.
    allow_float: bool = False
    float_ops: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    float_routines: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    # What model.c stores for them: blocked, widened or sparse layouts, each weight once per layout; of
    # those, the per-channel constants' (int32 [C, 3]: bias, multiplier, shift; the rest is the weight
    # tensors').
    stored_weights_bytes: int = 0
    stored_constants_bytes: int = 0
    # The operators whose weights are stored pre-widened to int16 (compile --weights int16), and those
    # whose weights are stored as int4, two per byte (--weights auto, the default: values in [-8, 7]), or
    # as int2, four per byte (values in [-2, 1]).
    int16_weight_ops: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    int4_weight_ops: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    int2_weight_ops: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    # Warnings the C compiler gave for the generated library (-Wall -Wextra); expected to be none.
    library_warnings: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    # The schedule picked (layer by layer, in place, ...), the SRAM budget asked for, and the bytes of the
    # caller's input and output buffers (SRAM too: peak SRAM = arena + I/O + stack; 0 when the arena
    # holds them, ``io_convention`` IO_IN_ARENA without ``io_placement`` IO_APART).
    schedule: str = "layer by layer"
    # How the convolutions compute and why: "channels-last, as imported", "as imported (...)",
    # "channels-last (asked for)", "channels-last: <node> keeps 30% of its filterlets, ...".
    layout: str = ""
    sram_budget_bytes: int | None = None
    io_bytes: int = 0
    io_convention: str = IO_CALLER
    io_placement: str | None = None
    in_place_steps: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    # The weights stored Golomb-Rice coded (--compress-weights), and the flash budget (--flash-budget)
    # the stored weights had to fit.
    compressed_weights: tuple[CompressedRow, ...] = ()
    flash_budget_bytes: int | None = None
    not_compressed_weights: tuple[NotCompressedRow, ...] = ()
    stack_bytes: int | None = None
    peak_sram_bytes: int | None = None
    instructions: int | None = None
    instructions_per_mac: float | None = None
    # The instructions in no operator call: the driver's argument set-up and status tests, its copies,
    # and the harness' 6 around the model call.
    driver_instructions: int | None = None
    # An ESTIMATE, not a measurement: the cycles of one inference on the board's core from the run's
    # instruction classes and the core's published timings (tvm_mcu.targets.cycles), and at the board's
    # clock the latency (None for a development board without one).
    estimated_cycles: int | None = None
    estimated_latency_ms: float | None = None
    # Set by verify: the largest error against the reference the verdict rests on, its tolerance, the
    # verdict, where the largest error is, and what the oracles said (one could not run the model, the
    # references disagree with each other).
    max_abs_error: float | None = None
    tolerance: float | None = None
    reference: str | None = None
    verified: bool | None = None
    # "match", "match per operator" (a QDQ model whose every operator is within a step, see
    # tvm_mcu.qdq_check) or "mismatch".
    verdict: str = ""
    worst_difference: str = ""
    reference_notes: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    def with_run(
        self,
        *,
        stack_bytes: int,
        instructions: int,
        step_instructions: tuple[int, ...] = (),
        estimated_cycles: int | None = None,
        clock_hz: int = 0,
    ) -> Report:
        """The figures of one run; ``step_instructions`` are the operator calls' counts in call order
        (one per step but the copies, which the driver makes itself)."""
        ops = self.ops
        driver = None
        if step_instructions:
            called = [k for k, op in enumerate(ops) if op.kind != "copy"]
            if len(called) != len(step_instructions):
                raise RuntimeError(
                    f"the firmware made {len(step_instructions)} operator calls; the report has "
                    f"{len(called)} operator steps"
                )
            rows = list(ops)
            for k, n in zip(called, step_instructions, strict=True):
                rows[k] = attrs.evolve(
                    rows[k], instructions=n, instructions_per_mac=_per_mac(n, rows[k].macs)
                )
            ops = tuple(rows)
            driver = instructions - sum(step_instructions)
        return attrs.evolve(
            self,
            stack_bytes=stack_bytes,
            peak_sram_bytes=self.arena_bytes + self.io_bytes + stack_bytes,
            instructions=instructions,
            instructions_per_mac=_per_mac(instructions, self.macs),
            ops=ops,
            driver_instructions=driver,
            estimated_cycles=estimated_cycles,
            estimated_latency_ms=(
                round(estimated_cycles / clock_hz * 1e3, 3)
                if estimated_cycles is not None and clock_hz
                else None
            ),
        )

    def to_json(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=True)
        d["inputs"] = [dict(r, shape=list(r["shape"])) for r in d["inputs"]]
        d["outputs"] = [dict(r, shape=list(r["shape"])) for r in d["outputs"]]
        d["compile_seconds"] = round(self.compile_seconds, 3)
        if self.io_placement is None:
            del d["io_placement"]  # report.json as before for the usual placements
        if not self.compressed_weights and self.flash_budget_bytes is None:
            del d["compressed_weights"], d["flash_budget_bytes"]  # as before without compression
        if not self.not_compressed_weights:
            del d["not_compressed_weights"]
        return d

    def write(self, path: Path) -> None:
        """``path`` (report.json), and report.html beside it (``report_html``)."""
        from tvm_mcu import report_html

        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        report_html.write(self, path.with_name("report.html"))

    @classmethod
    def read(cls, path: Path) -> Report:
        if not path.is_file():
            raise BadOptionError(
                f"{path} not found: is {path.parent} a directory written by 'tvm-mcu compile'?"
            )
        d = json.loads(path.read_text())
        d["inputs"] = tuple(IoRow(**r) for r in d["inputs"])
        d["outputs"] = tuple(IoRow(**r) for r in d["outputs"])
        d["ops"] = tuple(OpRow(**r) for r in d["ops"])
        d["compressed_weights"] = tuple(CompressedRow(**r) for r in d.get("compressed_weights", ()))
        d["not_compressed_weights"] = tuple(
            NotCompressedRow(**r) for r in d.get("not_compressed_weights", ())
        )
        return cls(**d)
