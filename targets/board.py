"""Board profiles: the data files in ``targets/boards/*.toml`` as frozen records.

A board profile holds everything the firmware build and the emulator need to know about one
board: the QEMU machine, the compiler flags for its core, the flash and SRAM windows and the stack
reserve. The numbers live in the TOML files (one per board, every value commented), not here.
"""

from __future__ import annotations

import functools
import importlib.resources
import tomllib
from typing import Any

import attrs

from tvm_mcu.errors import BadOptionError

_PACKAGE = "tvm_mcu.targets"


@attrs.frozen
class Board:
    """One emulated Cortex-M board, as read from ``targets/boards/<name>.toml``."""

    name: str
    description: str
    zephyr_board: str
    qemu_machine: str
    cpu: str
    cpu_flags: tuple[str, ...]
    has_fpu: bool
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    stack_bytes: int
    qemu_extra_args: tuple[str, ...] = ()
    harmless_stderr: tuple[str, ...] = ()
    # The board's CPU clock (its highest system clock), for latency estimates; 0: an emulator-only
    # development board, no clock to quote.
    clock_hz: int = 0


_FIELD_TYPES: dict[str, type] = {
    "name": str,
    "description": str,
    "zephyr_board": str,
    "qemu_machine": str,
    "cpu": str,
    "cpu_flags": list,
    "has_fpu": bool,
    "flash_origin": int,
    "flash_bytes": int,
    "ram_origin": int,
    "ram_bytes": int,
    "stack_bytes": int,
    "qemu_extra_args": list,
    "harmless_stderr": list,
    "clock_hz": int,
}
_OPTIONAL = {"qemu_extra_args", "harmless_stderr", "clock_hz"}


def _board_files() -> dict[str, Any]:
    boards = importlib.resources.files(_PACKAGE) / "boards"
    return {f.name.removesuffix(".toml"): f for f in boards.iterdir() if f.name.endswith(".toml")}


def _parse(stem: str, text: str) -> Board:
    where = f"board profile {stem}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BadOptionError(f"{where} is not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    missing = sorted(set(_FIELD_TYPES) - _OPTIONAL - set(data))
    if unknown or missing:
        raise BadOptionError(f"{where}: unknown fields {unknown}, missing fields {missing}")
    for key, value in data.items():
        expected = _FIELD_TYPES[key]
        # bool is a subclass of int; a count given as `true` is a typo, not a number.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise BadOptionError(f"{where}: {key} = {value!r} is not of type {expected.__name__}")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise BadOptionError(f"{where}: {key} must be a list of strings, got {value!r}")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    board = Board(**fields)
    _check(where, stem, board)
    return board


def _check(where: str, stem: str, board: Board) -> None:
    """Reject profiles whose values contradict each other; each check names the fix."""
    if board.name != stem:
        raise BadOptionError(f"{where}: name = {board.name!r} must match the file name {stem!r}")
    if "-mthumb" not in board.cpu_flags or not any(f.startswith("-mcpu=") for f in board.cpu_flags):
        raise BadOptionError(f"{where}: cpu_flags {list(board.cpu_flags)} must contain -mthumb and -mcpu=")
    hard = "-mfloat-abi=hard" in board.cpu_flags
    if hard != board.has_fpu:
        raise BadOptionError(
            f"{where}: has_fpu = {str(board.has_fpu).lower()} but cpu_flags "
            f"{'use' if hard else 'do not use'} -mfloat-abi=hard"
        )
    if board.clock_hz < 0:
        raise BadOptionError(f"{where}: clock_hz = {board.clock_hz} must be a clock in Hz, or 0 for none")
    if board.stack_bytes <= 0 or board.stack_bytes % 8:
        raise BadOptionError(f"{where}: stack_bytes = {board.stack_bytes} must be a positive multiple of 8")
    if board.stack_bytes >= board.ram_bytes:
        raise BadOptionError(
            f"{where}: stack_bytes = {board.stack_bytes} leaves no room in the {board.ram_bytes}-byte SRAM"
        )
    for label, origin, size in (
        ("flash", board.flash_origin, board.flash_bytes),
        ("ram", board.ram_origin, board.ram_bytes),
    ):
        if origin % 8 or size <= 0 or size % 8 or origin + size > 2**32:
            raise BadOptionError(
                f"{where}: {label}_origin = {origin:#x}, {label}_bytes = {size:#x} "
                "must be 8-byte aligned and inside the 32-bit address space"
            )


@functools.cache
def _load_all() -> dict[str, Board]:
    return {stem: _parse(stem, f.read_text(encoding="utf-8")) for stem, f in _board_files().items()}


def list_boards() -> list[Board]:
    """All board profiles shipped with tvm-mcu, sorted by name."""
    return sorted(_load_all().values(), key=lambda b: b.name)


def development_boards() -> list[Board]:
    """The boards QEMU emulates as themselves (each its own machine and memory map), sorted by name:
    the fuzzer's rotation; a real board's profile runs on one of their machines with smaller limits."""
    return [b for b in list_boards() if b.qemu_machine == b.name]


def load_board(name: str) -> Board:
    """The board profile called ``name`` (for example ``"mps2-an386"``).

    Raises
    ------
    BadOptionError
        No profile has that name; the message lists the valid names.
    """
    boards = _load_all()
    if name not in boards:
        raise BadOptionError(f"unknown board {name!r}; valid boards: {', '.join(sorted(boards))}")
    return boards[name]
