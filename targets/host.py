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
    if io_in_arena(lib):
        lib.tvmmcu_model_run.argtypes = []
        for which in ("input", "output"):
            getattr(lib, f"tvmmcu_model_{which}").argtypes = [ctypes.c_uint32]
            getattr(lib, f"tvmmcu_model_{which}").restype = ctypes.c_void_p
            getattr(lib, f"tvmmcu_model_{which}_bytes").argtypes = [ctypes.c_uint32]
            getattr(lib, f"tvmmcu_model_{which}_bytes").restype = ctypes.c_uint32
    else:
        lib.tvmmcu_model_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tvmmcu_model_run.restype = ctypes.c_int32
    return lib


def io_in_arena(lib: ctypes.CDLL) -> bool:
    """Whether the library holds its inputs and outputs in its arena (compiled with ``--io-in-arena``)."""
    return hasattr(lib, "tvmmcu_model_input")


def _tensors(lib: ctypes.CDLL, which: str) -> list[tuple[int, int, int]]:
    """(packed offset, arena address, bytes) of each input or output of an ``io_in_arena`` library, in
    the packed layout of model.h (each at an 8-byte-aligned offset)."""
    out, at, k = [], 0, 0
    while (address := getattr(lib, f"tvmmcu_model_{which}")(k)) is not None:
        at = -(-at // 8) * 8
        n = int(getattr(lib, f"tvmmcu_model_{which}_bytes")(k))
        out.append((at, int(address), n))
        at, k = at + n, k + 1
    return out


def _run_in_arena(lib: ctypes.CDLL, packed_input: bytes, output_nbytes: int) -> bytes:
    for offset, address, n in _tensors(lib, "input"):
        ctypes.memmove(address, packed_input[offset : offset + n], n)
    status = lib.tvmmcu_model_run()
    if status != 0:
        raise FirmwareError(f"tvmmcu_model_run returned {status}")
    out = bytearray(output_nbytes)
    for offset, address, n in _tensors(lib, "output"):
        out[offset : offset + n] = ctypes.string_at(address, n)
    return bytes(out)


def run_host_library(lib: ctypes.CDLL, packed_input: bytes, output_nbytes: int) -> bytes:
    """One call of ``tvmmcu_model_run``: the packed inputs in, the packed outputs out (8-byte aligned
    buffers, as model.h requires; a library holding them in its arena is given them through
    ``tvmmcu_model_input``/``_output``)."""
    if io_in_arena(lib):
        return _run_in_arena(lib, packed_input, output_nbytes)
    inp = np.zeros(max(1, -(-len(packed_input) // 8)), np.uint64)
    inp.view(np.uint8)[: len(packed_input)] = np.frombuffer(packed_input, np.uint8)
    out = np.full(max(1, -(-output_nbytes // 8)), np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64)
    status = lib.tvmmcu_model_run(inp.ctypes.data, out.ctypes.data)
    if status != 0:
        raise FirmwareError(f"tvmmcu_model_run returned {status}")
    return out.view(np.uint8)[:output_nbytes].tobytes()
