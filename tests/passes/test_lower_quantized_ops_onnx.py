"""LowerQuantizedOps on ONNX Runtime's QDQ dialect, one operator at a time, int8 and uint8 activations.

Each model (``tests/zoo/qdq_ops.py``) takes and returns the integer tensors; the compiled library runs
on the host and its integers must be within one step of onnxruntime's (ties: onnxruntime rounds the
float32 result, tvm-mcu the exact one), with integer code only.
"""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from tests import host
from tests.zoo.qdq_ops import QDQ_OPS
from tvm_mcu.compiler import compile_module
from tvm_mcu.frontend import load_model

CASES = [(name, dtype) for name in QDQ_OPS for dtype in ("int8", "uint8")]


def _ort(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def _inputs(specs: tuple, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        info = np.iinfo(np.dtype(s.dtype))
        a = rng.integers(info.min, info.max, s.shape, endpoint=True).astype(s.dtype)
        a.reshape(-1)[:2] = (info.min, info.max)  # the extremes always
        out.append(a)
    return out


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_operator_is_within_one_step_of_onnxruntime_in_integers_only(name, dtype, tmp_path):
    proto = QDQ_OPS[name](dtype)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())
    model = load_model(path)
    compiled = compile_module(
        model.mod, model_name=name, rounding="onnx", in_place=False, partial_execution=False
    )
    kernels = host.operators_source(compiled)
    assert not re.search(r"\b(float|double)\b", kernels), f"{name}: float code in the kernels"
    # TFLite's double rounding and its short paths are not ONNX's (a right-shift path there was wrong).
    assert not re.search(r"tvmmcu_fp_mbqm(_bounded|_right)?\(", kernels), f"{name}: TFLite rounding"
    lib = host.build_shared(compiled, tmp_path, name)
    for seed in (0, 1):
        inputs = _inputs(model.inputs, seed)
        got = host.run(lib, compiled, inputs)[0]
        want = _ort(path.read_bytes(), {s.name: a for s, a in zip(model.inputs, inputs, strict=True)})
        assert got.dtype == np.dtype(want.dtype) == np.dtype(dtype), (got.dtype, want.dtype)
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32).reshape(got.shape))
        assert int(diff.max(initial=0)) <= 1, (
            f"{name} {dtype} seed {seed}: {int((diff > 1).sum())} outputs off by more than one step"
        )
