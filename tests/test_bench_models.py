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


def test_pruning_measures_the_schedule_a_budgeted_compile_picks(tmp_path: Path) -> None:
    """At its narrowest the CNN fits 1/8 of its int8 SRAM only with row bands, whose instruction
    overhead there is above what the compiler takes unbudgeted: measured unbudgeted, the budget was
    refused as impossible. Pruning measures with the budget, as the user then compiles."""
    from tvm_mcu import pipeline, resource_model
    from tvm_mcu.frontend import load_model
    from tvm_mcu.prune import Budget, prune_model

    budget = Budget(sram=13_338 // 8)
    out = tmp_path / "pruned.onnx"
    result = prune_model(
        MODELS / "fashion_cnn_wide.onnx", board="mps2-an386", budget=budget, method="l1", out_path=out
    )
    assert result.after.sram <= budget.sram and result.after.schedule == "row bands"
    imported = load_model(out)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    q = resource_model.deployable(mod, imported, tmp_path, int8=True, tag="q")
    budgeted = api.compile_model(q, "mps2-an386", tmp_path / "budgeted", sram_budget=budget.sram)
    assert budgeted.report.arena_bytes + budgeted.report.io_bytes == result.after.sram
