"""The micro-kernels under every schedule: int8 TFLite models bit-exact with tflite-micro on a core with
the DSP extension (SMLAD, SMMULR) and one without, whichever schedule runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.zoo import write_model
from tvm_mcu import api, compiler
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator


def _schedules(path: Path) -> list[str]:
    """The compiler's candidate schedules for the model (row bands of these blocks: test_int8.py)."""
    model = load_model(path)
    return [c.label for c in compiler.plan_schedules(model.mod, model_name=model.name).candidates]


@pytest.mark.parametrize("name", ["int8_ds_cnn_block", "int8_resnet_block"])
def test_every_schedule_is_bit_exact_on_the_kernels(name: str, tmp_path: Path) -> None:
    path = write_model(name, tmp_path)
    labels = _schedules(path)
    assert len(labels) >= 2
    for k, label in enumerate(labels):
        for board in ("mps2-an386", "mps2-an385") if k == 0 else ("mps2-an386",):
            v = api.verify(path, board, tmp_path / f"{k}_{board}", seed=k, schedule=label)
            assert v.report.schedule == label
            assert v.passed and v.report.max_abs_error == 0.0, (label, board, v.report.worst_difference)
            source = (tmp_path / f"{k}_{board}" / "model_ops.c").read_text()
            assert "tvmmcu_dot" in source, label  # the convolutions run on the kernels


def test_a_tight_sram_budget_stays_bit_exact(tmp_path: Path) -> None:
    path = write_model("int8_ds_cnn_block", tmp_path)
    plain = api.compile_model(path, "mps2-an386", tmp_path / "plain", in_place=False, partial_execution=False)
    budget = plain.report.arena_bytes + plain.report.io_bytes - 1  # below what layer by layer needs
    tight = api.compile_model(path, "mps2-an386", tmp_path / "tight", sram_budget=budget)
    assert tight.report.arena_bytes + tight.report.io_bytes <= budget
    v = api.verify(path, "mps2-an386", tmp_path / "verify", seed=3, schedule=tight.report.schedule)
    assert v.passed and v.report.max_abs_error == 0.0
