"""Board profiles: the shipped data files and the loader's validation."""

from __future__ import annotations

import pytest

from tvm_mcu.errors import BadOptionError
from tvm_mcu.targets import Board, list_boards, load_board
from tvm_mcu.targets.board import _parse

BOARD_NAMES = [
    "lm3s6965evb",
    "mps2-an385",
    "mps2-an386",
    "mps2-an500",
    "mps2-an521",
    "nrf52840dk",
    "nucleo-h743zi",
    "nucleo-l4r5zi",
    "stm32f746g-disco",
]

MPS2_MEMORY = {"flash_origin": 0, "flash_bytes": 4 << 20, "ram_origin": 0x2000_0000, "ram_bytes": 4 << 20}
EXPECTED = {
    "mps2-an385": {"zephyr_board": "mps2/an385", "cpu": "cortex-m3", "has_fpu": False, **MPS2_MEMORY},
    "mps2-an386": {"zephyr_board": "mps2/an386", "cpu": "cortex-m4", "has_fpu": True, **MPS2_MEMORY},
    "mps2-an500": {"zephyr_board": "mps2/an500", "cpu": "cortex-m7", "has_fpu": True, **MPS2_MEMORY},
    "mps2-an521": {
        "zephyr_board": "mps2/an521/cpu0",
        "cpu": "cortex-m33",
        "has_fpu": False,
        "flash_origin": 0x1000_0000,
        "flash_bytes": 4 << 20,
        "ram_origin": 0x3800_0000,
        "ram_bytes": 2 << 20,
    },
    # Real boards: their core's QEMU machine and memory map, their own flash and SRAM sizes and clock.
    "nucleo-l4r5zi": {
        "zephyr_board": "nucleo_l4r5zi",
        "qemu_machine": "mps2-an386",
        "cpu": "cortex-m4",
        "has_fpu": True,
        "flash_bytes": 2 << 20,
        "ram_bytes": 640 << 10,
        "clock_hz": 120_000_000,
    },
    "nrf52840dk": {
        "zephyr_board": "nrf52840dk/nrf52840",
        "qemu_machine": "mps2-an386",
        "cpu": "cortex-m4",
        "has_fpu": True,
        "flash_bytes": 1 << 20,
        "ram_bytes": 256 << 10,
        "clock_hz": 64_000_000,
    },
    "stm32f746g-disco": {
        "zephyr_board": "stm32f746g_disco",
        "qemu_machine": "mps2-an500",
        "cpu": "cortex-m7",
        "has_fpu": True,
        "flash_bytes": 1 << 20,
        "ram_bytes": 320 << 10,
        "clock_hz": 216_000_000,
    },
    "nucleo-h743zi": {
        "zephyr_board": "nucleo_h743zi",
        "qemu_machine": "mps2-an500",
        "cpu": "cortex-m7",
        "has_fpu": True,
        "flash_bytes": 2 << 20,
        "ram_bytes": 512 << 10,
        "clock_hz": 480_000_000,
    },
    "lm3s6965evb": {
        "zephyr_board": "qemu_cortex_m3",
        "cpu": "cortex-m3",
        "has_fpu": False,
        "flash_origin": 0,
        "flash_bytes": 256 << 10,
        "ram_origin": 0x2000_0000,
        "ram_bytes": 64 << 10,
        "stack_bytes": 4 << 10,
    },
}

GOOD_TOML = """
name = "toy"
description = "a toy board"
zephyr_board = "toy"
qemu_machine = "toy"
cpu = "cortex-m3"
cpu_flags = ["-mthumb", "-mcpu=cortex-m3", "-mfloat-abi=soft"]
has_fpu = false
flash_origin = 0
flash_bytes = 0x10000
ram_origin = 0x20000000
ram_bytes = 0x8000
stack_bytes = 0x800
"""


def test_list_boards_is_sorted_and_complete():
    boards = list_boards()
    assert [b.name for b in boards] == BOARD_NAMES
    assert all(isinstance(b, Board) for b in boards)


@pytest.mark.parametrize("name", BOARD_NAMES, ids=BOARD_NAMES)
def test_board_values(name):
    board = load_board(name)
    expected = {"qemu_machine": name, "stack_bytes": 16 << 10, **EXPECTED[name]}
    assert {field: getattr(board, field) for field in expected} == expected
    assert "-mthumb" in board.cpu_flags
    assert any(flag.startswith(f"-mcpu={board.cpu}") for flag in board.cpu_flags)
    assert ("-mfloat-abi=hard" in board.cpu_flags) == board.has_fpu
    assert any(flag.startswith("-mfpu=") for flag in board.cpu_flags) == board.has_fpu


def test_an521_is_soft_float_because_qemu_72_has_no_fpu_there():
    assert "-mfloat-abi=soft" in load_board("mps2-an521").cpu_flags


def test_load_board_returns_equal_frozen_records():
    board = load_board("mps2-an386")
    assert board == load_board("mps2-an386")
    with pytest.raises(AttributeError):
        board.ram_bytes = 1  # type: ignore[misc]


def test_unknown_board_names_the_valid_ones():
    with pytest.raises(BadOptionError, match=r"unknown board 'stm32'.*lm3s6965evb, mps2-an385.*mps2-an521"):
        load_board("stm32")


def test_parse_accepts_a_minimal_profile():
    board = _parse("toy", GOOD_TOML)
    assert board.qemu_extra_args == ()
    assert board.cpu_flags == ("-mthumb", "-mcpu=cortex-m3", "-mfloat-abi=soft")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "stak_bytes = 4096\n", r"unknown fields \['stak_bytes'\]"),
        (lambda t: t.replace('cpu = "cortex-m3"\n', ""), r"missing fields \['cpu'\]"),
        (lambda t: t.replace('name = "toy"', 'name = "other"'), "must match the file name"),
        (lambda t: t.replace("stack_bytes = 0x800", "stack_bytes = 1001"), "positive multiple of 8"),
        (lambda t: t.replace("stack_bytes = 0x800", "stack_bytes = 0x8000"), "leaves no room"),
        (lambda t: t.replace("has_fpu = false", "has_fpu = true"), "has_fpu = true but cpu_flags do not use"),
        (lambda t: t.replace("ram_bytes = 0x8000", "ram_bytes = true"), "is not of type int"),
        (lambda t: t.replace('"-mthumb", ', ""), "must contain -mthumb"),
        (lambda t: t.replace("ram_origin = 0x20000000", "ram_origin = 0xFFFFFF00"), "32-bit address space"),
    ],
    ids=[
        "typo",
        "missing",
        "name",
        "stack-align",
        "stack-too-big",
        "fpu-flags",
        "bool-as-int",
        "thumb",
        "range",
    ],
)
def test_parse_rejects_inconsistent_profiles(edit, message):
    with pytest.raises(BadOptionError, match=message):
        _parse("toy", edit(GOOD_TOML))
