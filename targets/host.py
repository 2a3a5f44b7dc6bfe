"""Run a generated C library on the host: built by the host's gcc as a shared object, called through
ctypes. No emulator: for checks of the numbers only (instruction counts need QEMU)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tvm_mcu.errors import FirmwareError, ToolchainError

CFLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")
C_SOURCES = ("model.c",)


def build_host_library(lib_dir: Path, name: str = "model") -> ctypes.CDLL:
    """Build the library written in ``lib_dir`` (model.c) and load it."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ToolchainError("the host C compiler gcc is not on PATH; install with: sudo apt-get install gcc")
    so = lib_dir / f"lib{name}.so"
    cmd = [gcc, *CFLAGS, "-I", str(lib_dir), *(str(lib_dir / f) for f in C_SOURCES), "-o", str(so), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FirmwareError(f"the host build of {lib_dir} failed: {proc.stderr.strip()[:500]}")
    lib = ctypes.CDLL(str(so))  # RTLD_LOCAL: each library's symbols stay its own
    lib.tvmmcu_model_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tvmmcu_model_run.restype = ctypes.c_int32
    return lib


def run_host_library(lib: ctypes.CDLL, packed_input: bytes, output_nbytes: int) -> bytes:
    """One call of ``tvmmcu_model_run``: the packed inputs in, the packed outputs out (8-byte aligned
    buffers, as model.h requires)."""
    inp = np.zeros(max(1, -(-len(packed_input) // 8)), np.uint64)
    inp.view(np.uint8)[: len(packed_input)] = np.frombuffer(packed_input, np.uint8)
    out = np.full(max(1, -(-output_nbytes // 8)), np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64)
    status = lib.tvmmcu_model_run(inp.ctypes.data, out.ctypes.data)
    if status != 0:
        raise FirmwareError(f"tvmmcu_model_run returned {status}")
    return out.view(np.uint8)[:output_nbytes].tobytes()
