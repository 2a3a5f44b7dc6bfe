"""Tool discovery, the linker-script template, exit codes and the host-built QEMU plugin."""

from __future__ import annotations

import re

import pytest

from tvm_mcu.errors import ToolchainError
from tvm_mcu.targets import ensure_plugin, find_toolchain, load_board
from tvm_mcu.targets.firmware import render_linker_script
from tvm_mcu.targets.plugin import cache_dir
from tvm_mcu.targets.runner import exit_code_meanings

INSTALL = (
    "sudo apt-get install --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
)


def test_missing_toolchain_names_programs_and_install_command(tmp_path):
    with pytest.raises(ToolchainError, match="arm-none-eabi-gcc.*qemu-system-arm not found") as err:
        find_toolchain(str(tmp_path))
    assert INSTALL in str(err.value)


@pytest.mark.parametrize("name", ["mps2-an521", "lm3s6965evb"], ids=["an521", "lm3s"])
def test_linker_script_is_filled_from_the_board(name):
    board = load_board(name)
    text = render_linker_script(board)
    assert "@" not in text
    assert f"ORIGIN = {board.flash_origin:#010x}, LENGTH = {board.flash_bytes:#010x}" in text
    assert f"ORIGIN = {board.ram_origin:#010x}, LENGTH = {board.ram_bytes:#010x}" in text
    assert f"the {board.stack_bytes}-byte stack do not fit in the board's SRAM" in text
    # The vector table is the first output section.
    assert re.search(r"SECTIONS\s*\{\s*/\*[^*]*\*/\s*\.isr_vector", text)


def test_exit_codes_are_distinct_and_cover_every_failure():
    meanings = exit_code_meanings()
    names = {name for name, _ in meanings.values()}
    assert {"OK", "MODEL_FAILED", "INPUT_OPEN", "INPUT_SIZE", "OUTPUT_WRITE", "STACK_OVERFLOW"} <= names
    assert {"HARDFAULT", "MEMMANAGE", "BUSFAULT", "USAGEFAULT", "UNEXPECTED_IRQ"} <= names
    assert len(names) == len(meanings)
    assert 1 not in meanings  # QEMU's own failure status
    assert meanings[0][0] == "OK"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TVMMCU_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TVMMCU_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tvm-mcu"


def test_ensure_plugin_builds_once(monkeypatch, tmp_path):
    monkeypatch.setenv("TVMMCU_CACHE", str(tmp_path))
    first = ensure_plugin()
    assert first.parent == tmp_path
    assert re.fullmatch(r"insn_count-[0-9a-f]{16}\.so", first.name)
    assert first.read_bytes()[:4] == b"\x7fELF"
    stamp = first.stat().st_mtime_ns
    assert ensure_plugin() == first
    assert first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temporary files left


def test_ensure_plugin_without_host_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("TVMMCU_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="apt-get install gcc"):
        ensure_plugin()
