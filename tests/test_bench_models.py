"""The pruning benchmark's trained float models (bench/models) compile and match onnx.reference on QEMU.

MobileNetV2-style, as exported by torch with BatchNorm: its pointwise and depthwise kernels keep their
epilogue beside the reduction, a loop nest ExecuteInPlace cannot restage; the compiler now declines
those in-place options instead of failing (a regression).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tvm_mcu import api

MODELS = Path(__file__).resolve().parent.parent / "bench" / "models"


@pytest.mark.emulator
@pytest.mark.parametrize("name", ["mobilenetv2_fashion", "fashion_cnn_wide"])
def test_trained_benchmark_model_verifies_in_float(name: str, tmp_path: Path) -> None:
    v = api.verify(MODELS / f"{name}.onnx", "mps2-an386", tmp_path)
    assert v.passed, v.report.max_abs_error
