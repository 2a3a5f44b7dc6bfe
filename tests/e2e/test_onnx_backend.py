"""ONNX's own backend test cases (shipped in the onnx wheel) for every 2-D CNN case, on an emulated M4.

A case is a 2-D CNN case when its first graph input is a 4-D (NCHW) tensor. Each case is either compiled,
run on QEMU and compared with the expected outputs stored beside it, or refused with a TvmMcuError that
names the operator. Nothing may crash, and the pass count may not fall below what is documented.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tvm_mcu import api
from tvm_mcu.errors import TvmMcuError

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("pytorch-converted", "pytorch-operator")
BOARD = "mps2-an386"
# Every case must pass except these, which must be refused with a clear message (the regex it matches).
# Shrinking this table is progress; growing it is a regression.
REFUSED = {
    # TVM's prelu takes a 1-D slope; this case broadcasts a [3, 1, 1] slope.
    "test_PReLU_2d_multiparam": r"could not legalise .*prelu",
    # a batch of 20 inputs of 16x50x40 floats: 4.4 MB of I/O alone.
    "test_operator_conv": r"needs \d+ B of SRAM on mps2-an386 .* too many; the largest tensor is 'input_0'",
}


def _cnn_cases() -> list[Path]:
    cases = []
    for suite in SUITES:
        for case in sorted((DATA / suite).iterdir()):
            model = onnx.load(str(case / "model.onnx"), load_external_data=False)
            init = {t.name for t in model.graph.initializer}
            ins = [i for i in model.graph.input if i.name not in init]
            if ins and len(ins[0].type.tensor_type.shape.dim) == 4:
                cases.append(case)
    return cases


CASES = _cnn_cases()


def _load_pbs(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    out = []
    for f in files:
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        out.append(numpy_helper.to_array(t))
    return out


def run_case(case: Path, out_dir: Path) -> tuple[str, float]:
    """('pass', max error) or ('refused', 0) — or raise when the output is wrong."""
    data = case / "test_data_set_0"
    inputs, expected = _load_pbs(data, "input"), _load_pbs(data, "output")
    try:
        compiled = api.compile_model(case / "model.onnx", BOARD, out_dir)
    except TvmMcuError as exc:
        return f"refused: {exc}", 0.0
    outcome = api.run_compiled(
        compiled.out_dir, [x.astype(r.dtype) for x, r in zip(inputs, compiled.report.inputs, strict=True)]
    )
    err = max(api.max_abs_error(g, e) for g, e in zip(outcome.outputs, expected, strict=True))
    tol = api.tolerance_for(expected)
    assert err <= tol, f"{case.name}: max abs error {err} > {tol}"
    return "pass", err


@pytest.mark.emulator
@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_backend_case(case, tmp_path):
    verdict, _ = run_case(case, tmp_path)
    if case.name in REFUSED:
        assert verdict.startswith("refused: "), verdict
        assert re.search(REFUSED[case.name], verdict), verdict
    else:
        assert verdict == "pass", verdict


def test_selection_covers_the_2d_cnn_cases():
    assert len(CASES) == 43
    assert set(REFUSED) <= {c.name for c in CASES}
