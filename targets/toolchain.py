"""Locate the Arm cross toolchain and QEMU on ``PATH``."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import attrs

from tvm_mcu.errors import ToolchainError

INSTALL_COMMAND = (
    "sudo apt-get install --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
)


@attrs.frozen
class Toolchain:
    """Absolute paths of the external programs the firmware build and run need."""

    gcc: Path
    size: Path
    nm: Path
    qemu: Path


_PROGRAMS = {
    "gcc": "arm-none-eabi-gcc",
    "size": "arm-none-eabi-size",
    "nm": "arm-none-eabi-nm",
    "qemu": "qemu-system-arm",
}


@functools.cache
def find_toolchain(search_path: str | None = None) -> Toolchain:
    """The toolchain found on ``search_path`` (default: the ``PATH`` environment variable).

    Raises
    ------
    ToolchainError
        A program is missing; the message names it and gives the install command.
    """
    found = {field: shutil.which(program, path=search_path) for field, program in _PROGRAMS.items()}
    missing = [_PROGRAMS[field] for field, path in found.items() if path is None]
    if missing:
        raise ToolchainError(f"{', '.join(missing)} not found on PATH; install with: {INSTALL_COMMAND}")
    return Toolchain(**{field: Path(path) for field, path in found.items() if path is not None})
