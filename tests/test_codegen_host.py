"""The generated C library on the host: every zoo model builds warning-free and matches its reference.

Needs only host gcc (installed by ``make setup``), no emulator. Each model is compiled once per module
(a cached fixture); the library is built as a shared object and ``tvmmcu_model_run`` is called through
ctypes with inputs packed as ``model.h`` documents. Float outputs must match the independent reference
(``onnx.reference`` / the tflite-micro interpreter) within 1e-4, scaled by the output's magnitude above 1.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import pytest

from tests import host
from tests.zoo import ALL_MODELS, write_model
from tvm_mcu.codegen import model_c
from tvm_mcu.compiler import Compiled, compile_module
from tvm_mcu.frontend import ImportedModel, load_model, random_inputs
from tvm_mcu.reference import reference_outputs
from tvm_mcu.schedule.memory import workspace_name

LIBRARY_FILES = {"model.h", "model.c"}
FLOAT_ATOL = 1e-4


@attrs.frozen
class Build:
    model: ImportedModel
    compiled: Compiled
    directory: Path


BuildFn = Callable[[str], Build]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> BuildFn:
    """Import and compile a zoo model once for the whole module."""
    cache: dict[str, Build] = {}

    def get(name: str) -> Build:
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            model = load_model(write_model(name, directory))
            cache[name] = Build(model, compile_module(model.mod, model_name=name), directory)
        return cache[name]

    return get


def _host_library(b: Build) -> ctypes.CDLL:
    lib = host.build_shared(b.compiled, b.directory, b.model.name)
    assert {p.name for p in (b.directory / "lib").iterdir()} >= LIBRARY_FILES
    return lib


_pack, _unpack, _run = host.pack, host.unpack, host.call


@pytest.mark.parametrize("name", ALL_MODELS, ids=ALL_MODELS)
def test_host_library_matches_reference(name: str, build: BuildFn) -> None:
    b = build(name)
    graph = b.compiled.graph
    ins = model_c.io_slots(graph, graph.inputs)
    outs = model_c.io_slots(graph, graph.outputs)
    assert [(s.shape, s.dtype) for s in ins] == [(t.shape, t.dtype) for t in b.model.inputs]
    assert [(s.shape, s.dtype) for s in outs] == [(t.shape, t.dtype) for t in b.model.outputs]
    assert all(s.offset % model_c.IO_ALIGN == 0 for s in (*ins, *outs))
    header = b.compiled.library.files["model.h"]
    assert f"#define TVMMCU_INPUT_BYTES {model_c.packed_bytes(ins)}\n" in header
    assert f"#define TVMMCU_OUTPUT_BYTES {model_c.packed_bytes(outs)}\n" in header
    for label, slots in (("INPUT", ins), ("OUTPUT", outs)):
        for k, s in enumerate(slots):
            assert f"#define TVMMCU_{label}{k}_OFFSET {s.offset}\n" in header

    lib = _host_library(b)
    inputs = random_inputs(b.model, seed=0)
    packed = _pack(ins, inputs)
    first = _run(lib, packed, model_c.packed_bytes(outs))
    got = _unpack(outs, first)
    want = [np.asarray(r) for r in reference_outputs(b.model, inputs)]

    assert len(got) == len(want)
    tol = FLOAT_ATOL * max(1.0, max(float(np.max(np.abs(w))) for w in want))
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"output {k}: {g.shape} vs reference {w.shape}"
        assert np.all(np.isfinite(g)), f"output {k} has non-finite values (unwritten?)"
        err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
        assert err <= tol, f"output {k} '{outs[k].name}': max abs error {err:.3g} > {tol:.3g}"
    # The static arena carries no state from one call to the next.
    assert np.array_equal(_run(lib, packed, model_c.packed_bytes(outs)), first)


# Compiles every zoo model in a fresh interpreter with another hash seed and prints the files' digests.
_REPLAY = """
import hashlib, json, sys, tempfile
from pathlib import Path
from tests import host
from tests.zoo import ALL_MODELS, write_model
from tvm_mcu.compiler import compile_module
from tvm_mcu.frontend import load_model
out, tmp = {}, Path(tempfile.mkdtemp())
for name in ALL_MODELS:
    try:
        c = compile_module(load_model(write_model(name, tmp)).mod, model_name=name)
    except Exception as exc:  # reported per model by the test
        out[name] = f"{type(exc).__name__}: {exc}"
        continue
    files = {**c.library.files, "memory_plan.json": json.dumps(c.plan.to_json(), sort_keys=True)}
    out[name] = {f: hashlib.sha256(t.encode()).hexdigest() for f, t in sorted(files.items())}
json.dump(out, sys.stdout)
"""


Replayed = dict[str, dict[str, str] | str]  # model -> {file: sha256}, or the error of the second compilation


@pytest.fixture(scope="module")
def replayed() -> Replayed:
    """Digests of every zoo model's library, compiled again in another process (other hash seed)."""
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _REPLAY],
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", ALL_MODELS, ids=ALL_MODELS)
def test_compilation_is_deterministic(name: str, build: BuildFn, replayed: Replayed) -> None:
    compiled = build(name).compiled
    # int8 models also ship the fixed-point helpers their kernels call
    assert (
        LIBRARY_FILES
        <= set(compiled.library.files)
        <= LIBRARY_FILES | {"tvmmcu_fixed_point.h", "tvmmcu_dot.h"}
    )
    plan_json = json.dumps(compiled.plan.to_json(), sort_keys=True)
    files = {**compiled.library.files, "memory_plan.json": plan_json}
    other = replayed[name]
    assert isinstance(other, dict), f"the second compilation failed: {other}"
    for file, text in files.items():
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert digest == other[file], f"{file} differs between two compilations"


@pytest.mark.parametrize("name", ALL_MODELS, ids=ALL_MODELS)
def test_memory_plan_is_within_its_bounds(name: str, build: BuildFn) -> None:
    compiled = build(name).compiled
    graph, plan = compiled.graph, compiled.plan

    def rounded(n: int) -> int:
        return -(-n // plan.align) * plan.align

    # No worse than giving every intermediate tensor and every operator workspace a block of its own.
    naive = sum(rounded(t.nbytes) for t in graph.tensors.values() if t.kind == "intermediate")
    naive += sum(rounded(s.workspace_bytes) for s in graph.steps)
    assert plan.lower_bound <= plan.arena_bytes <= naive

    names = {b.name for b in plan.buffers}
    arena_tensors = {graph.storage_root(n) for n, where in plan.placement.items() if where == "arena"}
    assert arena_tensors | {workspace_name(s.name) for s in graph.steps if s.workspace_bytes} == names
    for buf in plan.buffers:
        assert buf.offset % plan.align == 0 and buf.offset + buf.size <= plan.arena_bytes, buf
    for i, a in enumerate(plan.buffers):  # buffers live at the same step never share bytes
        for c in plan.buffers[i + 1 :]:
            if a.overlaps_in_time(c):
                assert a.offset + a.size <= c.offset or c.offset + c.size <= a.offset, (a, c)
