"""Build bare-metal firmware: a generated model library + the tvm-mcu runtime, linked for one board.

The library directory holds ``model.h`` and one or more ``*.c`` files (see ``runtime/harness.c``
for what ``model.h`` must define). The runtime sources are copied next to the objects and the
linker script is rendered from ``runtime/link.ld.in``, so an output directory is a self-contained
record of the build.
"""

from __future__ import annotations

import concurrent.futures
import importlib.resources
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from tvm_mcu.errors import BadOptionError, BudgetError, FirmwareError, ToolchainError

from .board import Board
from .elf import ElfImage, read_elf
from .toolchain import INSTALL_COMMAND, find_toolchain

logger = logging.getLogger(__name__)

_PACKAGE = "tvm_mcu.targets"
_RUNTIME_SOURCES = ("startup.c", "harness.c")
_RUNTIME_HEADERS = ("semihost.h", "console.h", "exit_codes.h")
_COMMON_CFLAGS = ("-O2", "-g", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra")
# Plain diagnostics: one line each, no colour, no source excerpt, so warnings can be collected.
_DIAGNOSTIC_FLAGS = ("-fdiagnostics-plain-output",)
_LINK_FLAGS = ("--specs=nano.specs", "-nostartfiles", "-Wl,--gc-sections")
_LIBS = ("-lm", "-lc", "-lgcc")
# Memory windows of the measuring link after an overflow: big enough for any MCU image, and
# small enough that FLASH stays below RAM on every board.
_MEASURE_BYTES = 0x1000_0000


# Every operator function of a generated library starts with this (tvm_mcu.codegen.c_ops.OP_PREFIX).
OP_SYMBOL_PREFIX = "tvmmcu_op_"


@attrs.frozen
class Firmware:
    """A linked firmware image and what the linker placed where."""

    elf: Path
    map_file: Path
    board: Board
    flash_bytes: int  # everything loaded into flash: vectors, code, read-only data, .data's image
    ram_bytes: int  # static RAM: .data + .bss (the stack reserve is board.stack_bytes, on top)
    # Size of every allocated section, in address order. Left out of the hash: a dict has none.
    sections: Mapping[str, int] = attrs.field(hash=False)
    warnings: tuple[str, ...]  # compiler and linker warnings about the library, one line each
    roi_begin: int  # entry address of tvmmcu_roi_begin (Thumb bit clear)
    roi_end: int  # entry address of tvmmcu_roi_end
    input_bytes: int  # TVMMCU_INPUT_BYTES the firmware was built with
    output_bytes: int  # TVMMCU_OUTPUT_BYTES
    # Floating-point support routines linked in (soft-float helpers, libm): empty for integer-only code
    # on a core without an FPU. On FPU cores, inline FPU instructions do not show here.
    float_routines: tuple[str, ...] = ()
    # Entry addresses of the operator functions (OP_SYMBOL_PREFIX) and the code range [lo, hi) of
    # tvmmcu_model_run: the instruction counter attributes instructions to each operator call with them.
    op_entries: tuple[int, ...] = ()
    driver: tuple[int, int] | None = None


def render_linker_script(board: Board) -> str:
    """``runtime/link.ld.in`` with the board's memory windows and stack reserve filled in."""
    template = (importlib.resources.files(_PACKAGE) / "runtime" / "link.ld.in").read_text(encoding="utf-8")
    values = {
        "BOARD": board.name,
        "FLASH_ORIGIN": f"{board.flash_origin:#010x}",
        "FLASH_BYTES": f"{board.flash_bytes:#010x}",
        "RAM_ORIGIN": f"{board.ram_origin:#010x}",
        "RAM_BYTES": f"{board.ram_bytes:#010x}",
        "STACK_BYTES": f"{board.stack_bytes:#x}",
        "STACK_BYTES_DEC": str(board.stack_bytes),
    }
    text = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], template)
    assert "@" not in text, "link.ld.in has a placeholder render_linker_script does not fill"
    return text


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s in %s", list(cmd), cwd)
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)


def _compile(gcc: Path, flags: Sequence[str], source: str, cwd: Path, obj: Path) -> list[str]:
    """Compile one file; returns its warning lines, raises FirmwareError on an error."""
    proc = _run([str(gcc), *flags, "-c", source, "-o", str(obj)], cwd)
    if proc.returncode != 0:
        raise FirmwareError(f"arm-none-eabi-gcc failed on {source} (in {cwd}):\n{_tail(proc.stderr)}")
    return [line for line in proc.stderr.splitlines() if ": warning: " in line]


def _tail(text: str, lines: int = 40) -> str:
    kept = text.strip().splitlines()
    skipped = len(kept) - lines
    return "\n".join(([f"... ({skipped} lines skipped)"] if skipped > 0 else []) + kept[-lines:])


def _link(gcc: Path, board: Board, objs: Iterable[Path], script: Path, elf: Path, cwd: Path) -> str:
    """Link; returns the linker's stderr (warnings), raises on failure."""
    map_file = elf.with_suffix(".map")
    cmd = [
        str(gcc),
        *board.cpu_flags,
        *_LINK_FLAGS,
        f"-Wl,-T,{os.path.relpath(script, cwd)}",
        f"-Wl,-Map={os.path.relpath(map_file, cwd)}",
        *(os.path.relpath(o, cwd) for o in objs),
        *_LIBS,
        "-o",
        os.path.relpath(elf, cwd),
    ]
    proc = _run(cmd, cwd)
    if proc.returncode != 0:
        if "nano.specs" in proc.stderr or "cannot find -lc" in proc.stderr:
            raise ToolchainError(f"newlib for arm-none-eabi is missing; install with: {INSTALL_COMMAND}")
        raise _LinkFailed(proc.stderr)
    return proc.stderr


class _LinkFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def _is_overflow(stderr: str) -> bool:
    return "tvm-mcu: static RAM" in stderr or "overflowed by" in stderr or "will not fit in region" in stderr


def _sizes(image: ElfImage, board: Board) -> tuple[int, int, dict[str, int]]:
    """(flash bytes, static RAM bytes, allocated section sizes) of a linked image."""
    alloc = sorted((s for s in image.sections if s.alloc), key=lambda s: s.addr)
    flash = sum(s.size for s in alloc if not s.nobits)
    ram_end = board.ram_origin + board.ram_bytes
    ram = sum(s.size for s in alloc if board.ram_origin <= s.addr < ram_end)
    return flash, ram, {s.name: s.size for s in alloc}


def _budget_error(board: Board, image: ElfImage) -> BudgetError:
    """Explain an overflow with the numbers from a link into oversized memory windows."""
    sections = {s.name: s for s in image.sections if s.alloc}
    flash = sum(s.size for s in sections.values() if not s.nobits)
    data = sections[".data"].size if ".data" in sections else 0
    bss = sections[".bss"].size if ".bss" in sections else 0
    problems = []
    need_ram = data + bss + board.stack_bytes
    if need_ram > board.ram_bytes:
        ram_lo = board.ram_origin
        biggest = sorted(
            (s for s in image.symbols.values() if s.size and ram_lo <= s.addr < ram_lo + _MEASURE_BYTES),
            key=lambda s: (-s.size, s.name),
        )[:3]
        problems.append(
            f"static RAM (.data {data} B + .bss {bss} B = {data + bss} B) plus the {board.stack_bytes}-byte "
            f"stack needs {need_ram} bytes, but {board.name} has {board.ram_bytes} bytes of SRAM "
            f"({need_ram - board.ram_bytes} bytes over; largest: "
            + ", ".join(f"{s.name} {s.size} B" for s in biggest)
            + ")"
        )
    if flash > board.flash_bytes:
        problems.append(
            f"the image needs {flash} bytes of flash, but {board.name} has {board.flash_bytes} bytes "
            f"({flash - board.flash_bytes} bytes over)"
        )
    if not problems:  # the measuring link moved code; report what the linker said
        problems.append(f"the image does not fit the memory of {board.name}")
    return BudgetError(f"firmware does not fit {board.name}: " + "; ".join(problems))


def build_firmware(
    lib_dir: Path, board: Board, out_dir: Path, *, extra_cflags: Sequence[str] = ()
) -> Firmware:
    """Compile ``lib_dir/*.c`` with the runtime and link ``out_dir/firmware.elf`` for ``board``.

    The library is compiled with the board's CPU flags, ``-O2 -g -ffunction-sections
    -fdata-sections -Wall -Wextra`` and then ``extra_cflags``; its warnings are returned in
    ``Firmware.warnings``, not raised. The runtime is compiled with the same flags plus ``-Werror``.

    Raises
    ------
    BadOptionError
        ``lib_dir`` has no ``model.h`` or no ``*.c`` file.
    BudgetError
        The image does not fit the board's flash, or static RAM plus the stack reserve do not fit
        its SRAM; the message gives the bytes needed and available.
    FirmwareError
        A file did not compile, or the link failed for another reason.
    ToolchainError
        The Arm toolchain or newlib is not installed.
    """
    lib_dir = Path(lib_dir).resolve()
    out_dir = Path(out_dir).resolve()
    lib_sources = sorted(p.name for p in lib_dir.glob("*.c"))
    if not (lib_dir / "model.h").is_file() or not lib_sources:
        raise BadOptionError(f"{lib_dir} is not a model library: it needs model.h and at least one .c file")
    gcc = find_toolchain().gcc

    rt_dir = out_dir / "runtime"
    obj_dir = out_dir / "obj"
    rt_dir.mkdir(parents=True, exist_ok=True)
    obj_dir.mkdir(parents=True, exist_ok=True)
    runtime = importlib.resources.files(_PACKAGE) / "runtime"
    for name in _RUNTIME_SOURCES + _RUNTIME_HEADERS:
        (rt_dir / name).write_bytes((runtime / name).read_bytes())
    script = out_dir / "link.ld"
    script.write_text(render_linker_script(board), encoding="utf-8")

    # Paths inside the debug info are made relative, so the ELF does not depend on where it was built.
    prefix_maps = (f"-ffile-prefix-map={lib_dir}=lib", f"-ffile-prefix-map={out_dir}=.")
    base = (*board.cpu_flags, *_COMMON_CFLAGS, *_DIAGNOSTIC_FLAGS, *prefix_maps)
    lib_flags = (*base, "-I", str(lib_dir), *extra_cflags)
    # -isystem: warnings that model.h raises are reported once, from the library's own compile.
    rt_flags = (*base, "-Werror", "-isystem", str(lib_dir), "-I", str(rt_dir))
    jobs = [(lib_flags, src, lib_dir, obj_dir / f"lib_{Path(src).stem}.o") for src in lib_sources]
    jobs += [(rt_flags, src, rt_dir, obj_dir / f"rt_{Path(src).stem}.o") for src in _RUNTIME_SOURCES]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [pool.submit(_compile, gcc, *job) for job in jobs]
        warnings = [w for f in futures for w in f.result()]
    objs = [job[3] for job in jobs]

    elf = out_dir / "firmware.elf"
    elf.unlink(missing_ok=True)  # a failed link must not leave an older image behind
    try:
        link_stderr = _link(gcc, board, objs, script, elf, out_dir)
    except _LinkFailed as failed:
        if not _is_overflow(failed.stderr):
            message = f"linking firmware for {board.name} failed:\n{_tail(failed.stderr)}"
            raise FirmwareError(message) from None
        raise _measure_overflow(gcc, board, objs, out_dir) from None
    warnings += [line for line in link_stderr.splitlines() if "warning" in line]

    image = read_elf(elf)
    flash, ram, sections = _sizes(image, board)
    io_bytes = image.read(image.symbols["tvmmcu_io_bytes"].addr, 8)
    return Firmware(
        elf=elf,
        map_file=elf.with_suffix(".map"),
        board=board,
        flash_bytes=flash,
        ram_bytes=ram,
        sections=sections,
        warnings=tuple(warnings),
        roi_begin=image.symbols["tvmmcu_roi_begin"].addr,
        roi_end=image.symbols["tvmmcu_roi_end"].addr,
        input_bytes=int.from_bytes(io_bytes[:4], "little"),
        output_bytes=int.from_bytes(io_bytes[4:], "little"),
        float_routines=float_routines(image),
        op_entries=tuple(
            sorted(s.addr for s in image.symbols.values() if s.name.startswith(OP_SYMBOL_PREFIX) and s.size)
        ),
        driver=_code_range(image, "tvmmcu_model_run"),
    )


def _code_range(image: ElfImage, name: str) -> tuple[int, int] | None:
    symbol = image.symbols.get(name)
    return None if symbol is None or not symbol.size else (symbol.addr, symbol.addr + symbol.size)


# The run-time helpers GCC calls for float/double arithmetic without an FPU (ARM EABI and libgcc
# names), and the float functions of libm.
_FLOAT_ROUTINE = re.compile(
    r"^(__aeabi_[fd]\w+|__aeabi_[il]2[fd]|__aeabi_ui2[fd]|__aeabi_ul2[fd]"
    r"|__(add|sub|mul|div|neg|cmp|eq|ne|lt|le|gt|ge|unord|fix|fixuns|float|floatun|extend|trunc|pow)\w*[sd]f\d?"
    r"|(exp|log|pow|sqrt|tanh|sin|cos|floor|ceil|round|fmax|fmin|fabs)f?)$"
)


def float_routines(image: ElfImage) -> tuple[str, ...]:
    """Names of the floating-point routines linked into ``image``."""
    return tuple(sorted(name for name in image.symbols if _FLOAT_ROUTINE.match(name)))


def _measure_overflow(gcc: Path, board: Board, objs: Sequence[Path], out_dir: Path) -> BudgetError:
    """Relink into oversized memory windows to learn how much the image really needs."""
    roomy = attrs.evolve(board, flash_bytes=_MEASURE_BYTES, ram_bytes=_MEASURE_BYTES)
    with tempfile.TemporaryDirectory(prefix="measure-", dir=out_dir) as work:
        script = Path(work) / "link.ld"
        script.write_text(render_linker_script(roomy), encoding="utf-8")
        elf = Path(work) / "measure.elf"
        try:
            _link(gcc, roomy, objs, script, elf, out_dir)
        except _LinkFailed as failed:
            return BudgetError(
                f"firmware does not fit {board.name}, and it needs more than {_MEASURE_BYTES} bytes "
                f"of flash or RAM:\n{_tail(failed.stderr)}"
            )
        return _budget_error(board, read_elf(elf))
