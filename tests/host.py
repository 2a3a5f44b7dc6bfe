"""Run a generated C library on the host: build it with gcc as a shared object, call it through ctypes.

Shared by the tests that check numerics without the emulator (host gcc only).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from tvm_mcu.codegen import c_ops, model_c
from tvm_mcu.compiler import Compiled
from tvm_mcu.passes.tir import block_weights

CFLAGS = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
C_SOURCES = ("model.c",)


def operators_source(compiled: Compiled) -> str:
    """The operator kernels' C in model.c (from the first ``TVMMCU_OP`` definition to the driver)."""
    text = compiled.library.files["model.c"]
    start = text.index(f"\n{c_ops.OP_QUALIFIER} int32_t ")
    return text[start : text.index("int32_t tvmmcu_model_run(", start)]


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


def build_kernel(lowered: Any, directory: Path, symbol: str) -> tuple[Any, int]:
    """One lowered operator module (from ``pipeline.operator_passes``) as C, built by host gcc.

    Returns the ctypes function ``symbol`` (all pointer arguments, workspace last when it has one) and
    its workspace size. Each call builds under a fresh file name: dlopen hands back an already loaded
    library of the same path.
    """
    source = kernel_source(lowered)
    gcc = shutil.which("gcc")
    assert gcc is not None, "host gcc is missing (make setup installs it)"
    directory.mkdir(parents=True, exist_ok=True)
    n = len(list(directory.glob("kernel*.so")))
    c, so = directory / f"kernel{n}.c", directory / f"kernel{n}.so"
    c.write_text("#include <stdint.h>\n#include <stdbool.h>\n#include <math.h>\n" + _helpers(source) + source)
    subprocess.run([gcc, *CFLAGS, str(c), "-o", str(so), "-lm"], check=True)
    fn = getattr(ctypes.CDLL(str(so)), symbol)
    ws = int(lowered["main"].attrs["tvmmcu.workspace_bytes"])
    layout = lowered["main"].attrs.get(block_weights.ATTR_BLOCKED)
    return _Kernel(fn, {int(k): int(v) for k, v in layout.items()} if layout else {}), ws


class _Kernel:
    """A built kernel and the weights it reads blocked (BlockWeights): parameter position -> channel
    stride; :func:`call_kernel` hands it those arrays blocked, as the compiler stores them."""

    def __init__(self, fn: Any, blocked: dict[int, int]) -> None:
        self.fn = fn
        self.blocked = blocked

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def kernel_source(lowered: Any) -> str:
    """The C of a lowered operator module, as the library has it, but its operators exported (the
    library's are static to model.c): ctypes calls them."""
    return f"#define {c_ops.OP_QUALIFIER}\n" + c_ops.kernels_source(lowered)


def _helpers(source: str) -> str:
    """The text of the helper headers ``source`` calls (the library ships them as files)."""
    from tvm_mcu.passes.relax.integer import fixed_point
    from tvm_mcu.passes.tir import dot_kernels

    texts = []
    for module in (fixed_point, dot_kernels):
        if module.HELPER_PREFIX in source:
            texts.append(module.HEADER_TEXT)
    return "\n".join(texts)


def call_kernel(fn: Any, arrays: list[np.ndarray], workspace_bytes: int) -> None:
    """Call a kernel from :func:`build_kernel` on ``arrays`` (outputs included) and a workspace.

    The workspace starts as all-ones bytes (NaN as float, -1 as int8), as a reused arena holds stale
    values: a kernel reading scratch it never wrote gives wrong outputs instead of lucky zeros.
    """
    workspace = np.full(max(workspace_bytes, 8), 0xFF, np.uint8)
    blocked = getattr(fn, "blocked", {})
    given = [block_weights.block(a, blocked[k]) if k in blocked else a for k, a in enumerate(arrays)]
    ptrs = [a.ctypes.data for a in given] + [workspace.ctypes.data]
    raw = getattr(fn, "fn", fn)
    raw.argtypes = [ctypes.c_void_p] * len(ptrs)
    assert raw(*ptrs) == 0
