"""Run a generated C library on the host: build it with gcc as a shared object, call it through ctypes.

Shared by the tests that check numerics without the emulator (host gcc only).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tvm_mcu.codegen import model_c
from tvm_mcu.compiler import Compiled

CFLAGS = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
C_SOURCES = ("model.c", "model_ops.c")


def build_shared(compiled: Compiled, directory: Path, name: str) -> ctypes.CDLL:
    """Write the library, build it (warnings are errors) and load it."""
    gcc = shutil.which("gcc")
    assert gcc is not None, "host gcc is missing (make setup installs it)"
    src = directory / "lib"
    model_c.write_library(compiled.library, src, plan_json=compiled.plan.to_json())
    so = src / f"lib{name}.so"
    cmd = [gcc, *CFLAGS, "-I", str(src), *(str(src / f) for f in C_SOURCES), "-o", str(so), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"gcc failed for {name}:\n{proc.stderr}"
    lib = ctypes.CDLL(str(so))  # RTLD_LOCAL: each model's symbols stay its own
    lib.tvmmcu_model_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tvmmcu_model_run.restype = ctypes.c_int32
    return lib


def aligned_bytes(nbytes: int, fill: int) -> np.ndarray:
    """A uint8 view of a uint64 array: 8-byte aligned, as model.h requires."""
    words = np.empty(max(1, -(-nbytes // 8)), np.uint64)
    view = words.view(np.uint8)
    view[:] = fill
    return view


def pack(slots: tuple[model_c.IoSlot, ...], arrays: list[np.ndarray]) -> np.ndarray:
    buf = aligned_bytes(model_c.packed_bytes(slots), 0)
    for slot, a in zip(slots, arrays, strict=True):
        assert a.shape == slot.shape and a.dtype == np.dtype(slot.dtype), (slot, a.shape, a.dtype)
        raw = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)
        buf[slot.offset : slot.offset + slot.nbytes] = raw
    return buf


def unpack(slots: tuple[model_c.IoSlot, ...], buf: np.ndarray) -> list[np.ndarray]:
    return [
        buf[s.offset : s.offset + s.nbytes].view(np.dtype(s.dtype)).reshape(s.shape).copy() for s in slots
    ]


def call(lib: ctypes.CDLL, packed_in: np.ndarray, out_bytes: int) -> np.ndarray:
    out = aligned_bytes(out_bytes, 0xFF)  # all-ones bytes are NaN as float32: unwritten outputs show
    status = lib.tvmmcu_model_run(packed_in.ctypes.data, out.ctypes.data)
    assert status == 0, f"tvmmcu_model_run failed at step {status}"
    return out


def run(lib: ctypes.CDLL, compiled: Compiled, inputs: list[np.ndarray]) -> list[np.ndarray]:
    graph = compiled.graph
    ins, outs = model_c.io_slots(graph, graph.inputs), model_c.io_slots(graph, graph.outputs)
    return unpack(outs, call(lib, pack(ins, inputs), model_c.packed_bytes(outs)))
