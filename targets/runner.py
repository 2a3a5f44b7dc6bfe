"""Run firmware on qemu-system-arm: input.bin in, output.bin out, exact instruction count and stack.

QEMU runs in a fresh temporary directory, which is where the firmware's semihosting calls open
``input.bin`` and create ``output.bin``. The semihosting console goes to QEMU's stdout; the
instruction-count plugin writes its counts to a file in the same directory.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
import subprocess
import tempfile
import time
from pathlib import Path

import attrs

from tvm_mcu.errors import BadOptionError, BudgetError, FirmwareError

from .board import Board
from .cycles import estimate_cycles
from .firmware import Firmware
from .plugin import ensure_plugin
from .toolchain import find_toolchain

logger = logging.getLogger(__name__)

_PACKAGE = "tvm_mcu.targets"
_RESULT_LINE = re.compile(r"^tvmmcu: rc=(-?\d+) stack=(\d+)$", re.MULTILINE)
_COUNTS = re.compile(r"^total=(\d+) roi=(\d+) roi_calls=(\d+)$", re.MULTILINE)
_STEPS = re.compile(r"^steps=([\d,]*|overflow)$", re.MULTILINE)
_CLASSES = re.compile(r"^classes=([\w:,]*)$", re.MULTILINE)


@attrs.frozen
class RunResult:
    """What one emulated inference produced and cost."""

    output: bytes  # contents of output.bin (all outputs, packed)
    rc: int  # status returned by tvmmcu_model_run (always 0: other values raise)
    # Guest instructions from the entry of tvmmcu_roi_begin to the entry of tvmmcu_roi_end: the
    # model call plus 6 instructions of harness overhead (a model that only returns 0 measures 8).
    instructions: int
    total_instructions: int  # every guest instruction from reset to exit
    stack_bytes: int  # peak stack depth of the model call below main's SP, from stack painting
    flash_bytes: int  # Firmware.flash_bytes
    ram_bytes: int  # Firmware.ram_bytes (static; add stack_bytes for the total RAM in use)
    wall_seconds: float  # host time of the QEMU process; not a measure of the target
    # Instructions of each operator call in the order the driver made them (the operator function and
    # every routine it calls, to its return); the driver's own instructions are in none. Empty for a
    # firmware without operator functions (a hand-written library).
    step_instructions: tuple[int, ...] = ()
    # The model call's instructions by class (tvm_mcu.targets.cycles.CLASSES), and the cycles on the
    # board's core they are estimated to take with the core's published timings: an estimate, not a
    # measurement (targets/cycles.py says what it leaves out).
    instruction_classes: tuple[tuple[str, int], ...] = ()
    estimated_cycles: int | None = None


@functools.cache
def exit_code_meanings() -> dict[int, tuple[str, str]]:
    """``{status: (NAME, meaning)}`` parsed from ``runtime/exit_codes.h``, the one source of the codes."""
    header = (importlib.resources.files(_PACKAGE) / "runtime" / "exit_codes.h").read_text(encoding="utf-8")
    pattern = re.compile(r"^#define TVMMCU_EXIT_(\w+)\s+(\d+)\s+/\*\s*(.*?)\s*\*/\s*$", re.MULTILINE)
    return {int(code): (name, meaning) for name, code, meaning in pattern.findall(header)}


def _exit_code(name: str) -> int:
    return next(code for code, (n, _) in exit_code_meanings().items() if n == name)


def _plugin_arg(path: Path) -> str:
    # QEMU option syntax: a literal comma in a value is written as two commas.
    return str(path).replace(",", ",,")


def console_command(board: Board, elf: Path) -> list[str]:
    """The qemu-system-arm command line that runs ``elf`` on ``board``'s machine, its semihosting console
    on standard output (no display, serial port or monitor)."""
    return [
        str(find_toolchain().qemu),
        "-M",
        board.qemu_machine,
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-chardev",
        "stdio,id=sh0",
        "-semihosting-config",
        "enable=on,target=native,chardev=sh0",
        *board.qemu_extra_args,
        "-kernel",
        str(elf),
    ]


def qemu_command(fw: Firmware, plugin: Path, counts: Path, entries: Path | None = None) -> list[str]:
    """The qemu-system-arm command line that runs ``fw`` with semihosting and the counting plugin
    (counting per operator call when ``entries`` names a file of ``fw.op_entries``)."""
    board = fw.board
    per_step = ""
    if entries is not None and fw.driver is not None:
        per_step = f",steps={_plugin_arg(entries)},driver={fw.driver[0]:#x}:{fw.driver[1]:#x}"
    return [
        *console_command(board, fw.elf),
        "-plugin",
        f"{_plugin_arg(plugin)},roi_begin={fw.roi_begin:#x},roi_end={fw.roi_end:#x},out={_plugin_arg(counts)}"
        + per_step,
    ]


def run_firmware(
    fw: Firmware, input_bytes: bytes, output_nbytes: int, *, timeout_s: float = 120
) -> RunResult:
    """Run one inference of ``fw`` on its board's emulator.

    Raises
    ------
    BadOptionError
        ``input_bytes`` or ``output_nbytes`` do not match the sizes the firmware was built with.
    FirmwareError
        QEMU timed out, the firmware faulted or failed (the message says what its exit status
        means and shows the console and QEMU's stderr), the model returned non-zero, or an
        output is missing.
    BudgetError
        The model call overflowed the board's stack reserve.
    """
    if len(input_bytes) != fw.input_bytes or output_nbytes != fw.output_bytes:
        raise BadOptionError(
            f"firmware {fw.elf} takes {fw.input_bytes} input bytes and gives {fw.output_bytes} output "
            f"bytes; the caller passed {len(input_bytes)} and expects {output_nbytes}"
        )
    board = fw.board
    plugin = ensure_plugin()
    with tempfile.TemporaryDirectory(prefix="tvmmcu-run-") as tmp:
        work = Path(tmp)
        (work / "input.bin").write_bytes(input_bytes)
        counts_file = work / "insn_count.txt"
        entries = None
        if fw.op_entries and fw.driver is not None:
            entries = work / "op_entries.txt"
            entries.write_text("".join(f"{a:#x}\n" for a in fw.op_entries), encoding="ascii")
        cmd = qemu_command(fw, plugin, counts_file, entries)
        logger.debug("running %s", cmd)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise FirmwareError(
                f"{fw.elf} on {board.name} did not finish within {timeout_s} s (an endless loop, or a "
                f"locked-up core){_context(exc.stdout, exc.stderr, board.harmless_stderr)}"
            ) from None
        wall = time.perf_counter() - start
        console = proc.stdout.decode("utf-8", "replace")
        stderr = _unexpected_stderr(proc.stderr, board.harmless_stderr)
        context = _context(proc.stdout, proc.stderr, board.harmless_stderr)
        found = _RESULT_LINE.search(console)
        if proc.returncode != 0:
            raise _exit_error(fw, proc.returncode, found, context)
        output_path = work / "output.bin"
        if found is None or not output_path.is_file() or not counts_file.is_file():
            raise FirmwareError(
                f"{fw.elf} on {board.name} exited with status 0 but left no result line, output.bin or "
                f"instruction counts{context}"
            )
        output = output_path.read_bytes()
        counts_text = counts_file.read_text(encoding="ascii")
        counts = _COUNTS.search(counts_text)
        steps = _STEPS.search(counts_text)
        profile = _CLASSES.search(counts_text)
    if len(output) != output_nbytes or counts is None or counts.group(3) != "1":
        raise FirmwareError(
            f"{fw.elf} on {board.name}: output.bin has {len(output)} bytes (expected {output_nbytes}) and "
            f"the plugin reported {counts.group(0) if counts else 'nothing'} (expected one ROI){context}"
        )
    if stderr:
        logger.warning("qemu-system-arm on %s wrote to stderr:\n%s", board.name, stderr)
    classes = (
        tuple((name, int(n)) for name, n in (item.split(":") for item in profile.group(1).split(",") if item))
        if profile is not None
        else ()
    )
    return RunResult(
        output=output,
        rc=int(found.group(1)),
        instructions=int(counts.group(2)),
        total_instructions=int(counts.group(1)),
        stack_bytes=int(found.group(2)),
        flash_bytes=fw.flash_bytes,
        ram_bytes=fw.ram_bytes,
        wall_seconds=wall,
        step_instructions=_step_counts(steps, fw, context),
        instruction_classes=classes,
        estimated_cycles=estimate_cycles(board.cpu, dict(classes), int(counts.group(2))) if classes else None,
    )


def _step_counts(found: re.Match[str] | None, fw: Firmware, context: str) -> tuple[int, ...]:
    if found is None:
        if fw.op_entries and fw.driver is not None:
            raise FirmwareError(f"the instruction counter gave no per-operator counts for {fw.elf}{context}")
        return ()
    if found.group(1) == "overflow":
        raise FirmwareError(f"{fw.elf} made more operator calls than the instruction counter records")
    return tuple(int(n) for n in found.group(1).split(",") if n)


def _exit_error(fw: Firmware, status: int, found: re.Match[str] | None, context: str) -> Exception:
    board = fw.board
    if status < 0:
        return FirmwareError(f"qemu-system-arm running {fw.elf} was killed by signal {-status}{context}")
    name, meaning = exit_code_meanings().get(status, ("", ""))
    if not name:
        # QEMU's own failures (bad option, plugin load) exit with 1.
        meaning = "not a tvm-mcu firmware status: QEMU itself failed"
    if name == "STACK_OVERFLOW":
        return BudgetError(
            f"the model call overflowed the {board.stack_bytes}-byte stack reserve of {board.name} "
            f"(set by stack_bytes in its board profile){context}"
        )
    rc = f" (model rc={found.group(1)})" if found and status == _exit_code("MODEL_FAILED") else ""
    return FirmwareError(f"{fw.elf} on {board.name} exited with status {status}: {meaning}{rc}{context}")


def _unexpected_stderr(raw: bytes | str | None, harmless: tuple[str, ...]) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw or ""
    kept = (line for line in text.splitlines() if line.strip() and not any(h in line for h in harmless))
    return "\n".join(kept)


def _context(stdout: bytes | str | None, stderr: bytes | str | None, harmless: tuple[str, ...]) -> str:
    """Console and stderr tails to append to an error message."""
    console = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else stdout or ""
    parts = []
    if console.strip():
        parts.append("console:\n" + "\n".join(console.strip().splitlines()[-20:]))
    err = _unexpected_stderr(stderr, harmless)
    if err:
        parts.append("qemu stderr:\n" + "\n".join(err.splitlines()[-20:]))
    return "".join("\n" + p for p in parts)
