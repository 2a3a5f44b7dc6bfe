"""Hardware: board profiles, bare-metal runtime, toolchain, emulator runner and instruction counter.

Public API (importable from this package; the submodules load on first use, so that
``python -m tvm_mcu.targets.plugin`` runs without a double import):

- ``Board``, ``load_board(name)``, ``list_boards()``                  (board.py)
- ``Toolchain``, ``find_toolchain()``                                 (toolchain.py)
- ``Firmware``, ``build_firmware(lib_dir, board, out_dir, *, extra_cflags=())``  (firmware.py)
- ``RunResult``, ``run_firmware(fw, input_bytes, output_nbytes, *, timeout_s=120)``  (runner.py)
- ``ensure_plugin()``                                                 (plugin.py)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .board import Board, list_boards, load_board
    from .firmware import Firmware, build_firmware
    from .plugin import ensure_plugin
    from .runner import RunResult, run_firmware
    from .toolchain import Toolchain, find_toolchain

_EXPORTS = {
    "Board": "board",
    "list_boards": "board",
    "load_board": "board",
    "Firmware": "firmware",
    "build_firmware": "firmware",
    "ensure_plugin": "plugin",
    "RunResult": "runner",
    "run_firmware": "runner",
    "Toolchain": "toolchain",
    "find_toolchain": "toolchain",
}

__all__ = [
    "Board",
    "Firmware",
    "RunResult",
    "Toolchain",
    "build_firmware",
    "ensure_plugin",
    "find_toolchain",
    "list_boards",
    "load_board",
    "run_firmware",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
