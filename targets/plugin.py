"""Build the QEMU instruction-counting plugin (``targets/plugin/insn_count.c``) with the host compiler.

The shared object is cached under ``$TVMMCU_CACHE``, else ``$XDG_CACHE_HOME/tvm-mcu``, else
``~/.cache/tvm-mcu``. Its file name carries a hash of the sources and flags, so an edited source
builds a new file and an unchanged one is built once. ``python -m tvm_mcu.targets.plugin`` builds it
and prints its path.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tvm_mcu.errors import ToolchainError

logger = logging.getLogger(__name__)

_PACKAGE = "tvm_mcu.targets"
_SOURCES = ("insn_count.c", "qemu_plugin_api.h")
_CFLAGS = ("-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror")


def cache_dir() -> Path:
    """The directory for tvm-mcu's build products that outlive one run."""
    if explicit := os.environ.get("TVMMCU_CACHE"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "tvm-mcu"
    return Path.home() / ".cache" / "tvm-mcu"


def _host_compiler() -> str:
    for name in ("cc", "gcc"):
        if found := shutil.which(name):
            return found
    raise ToolchainError(
        "no host C compiler (cc or gcc) on PATH to build the QEMU instruction-count plugin; "
        "install one with: sudo apt-get install gcc"
    )


def ensure_plugin() -> Path:
    """Path of the compiled plugin, building it first if this source version is not cached.

    Safe to call from several processes at once: each builds into a private file and renames it
    into place.

    Raises
    ------
    ToolchainError
        No host compiler, or the compiler rejected the plugin source.
    """
    source_dir = importlib.resources.files(_PACKAGE) / "plugin"
    sources = {name: (source_dir / name).read_bytes() for name in _SOURCES}
    digest = hashlib.sha256()
    for name, text in sources.items():
        digest.update(name.encode() + b"\0" + text + b"\0")
    digest.update(" ".join(_CFLAGS).encode())
    target = cache_dir() / f"insn_count-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target

    compiler = _host_compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="insn-count-", dir=target.parent) as work:
        for name, text in sources.items():
            (Path(work) / name).write_bytes(text)
        built = Path(work) / target.name
        cmd = [compiler, *_CFLAGS, "-o", str(built), "insn_count.c"]
        logger.debug("building QEMU plugin: %s", cmd)
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ToolchainError(
                f"{compiler} failed to build the QEMU plugin insn_count.c (status {proc.returncode}):\n"
                f"{proc.stderr.strip()}"
            )
        os.replace(built, target)
    return target


if __name__ == "__main__":
    print(ensure_plugin())
