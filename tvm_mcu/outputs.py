"""Where tvm-mcu writes: checked before any work starts, so a bad ``-o`` is one clear error, not a
traceback after minutes of compiling."""

from __future__ import annotations

import os
from pathlib import Path

from tvm_mcu.errors import BadOptionError


def output_dir(path: Path) -> Path:
    """``path`` as a directory tvm-mcu may write into (created if missing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadOptionError(f"cannot write the output into {path}: it is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadOptionError(f"cannot create the output directory {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadOptionError(f"cannot write into the output directory {path}: permission denied")
    return path


def output_file(path: Path) -> Path:
    """``path`` as a file tvm-mcu may write (its directory created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise BadOptionError(f"cannot write {path}: it is a directory; give a file name")
    output_dir(path.parent if str(path.parent) else Path("."))
    if path.exists() and not os.access(path, os.W_OK):
        raise BadOptionError(f"cannot write {path}: permission denied")
    return path
