"""The differentiable resource model against compiled firmware: SRAM, flash and MACs within 5 %."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from tests.prune_helpers import inference_model
from tvm_mcu import pipeline, resource_model
from tvm_mcu.analysis.channels import ChannelPlan, channel_groups
from tvm_mcu.frontend import load_model

BOARD = "mps2-an386"
DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"))


def _configs(plan: ChannelPlan, seed: int) -> list[dict[int, tuple[int, ...]]]:
    rng = np.random.default_rng(seed)
    out = [{g.gid: tuple(range(max(1, g.size * f // 4))) for g in plan.prunable} for f in (3, 2, 1)]
    out.append(
        {
            g.gid: tuple(sorted(rng.choice(g.size, int(rng.integers(1, g.size + 1)), replace=False)))
            for g in plan.prunable
        }
    )
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    imported = load_model(DEMO)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    plan = channel_groups(mod)
    work = tmp_path_factory.mktemp("demo")
    return imported, mod, plan, resource_model.build(mod, plan, imported, BOARD, workdir=work), work


def test_the_full_width_figures_are_the_compiled_ones(demo: tuple) -> None:
    imported, mod, plan, model, work = demo
    (c,) = resource_model.check(model, mod, imported, [{}], work)
    assert c.predicted.sram == c.compiled.sram and c.predicted.macs == c.compiled.macs
    assert c.predicted.flash == c.compiled.flash and c.predicted.schedule == c.compiled.schedule


@pytest.mark.emulator
def test_demo_predictions_are_within_5_percent_of_the_firmware(demo: tuple, tmp_path: Path) -> None:
    # int8 (float models: the zoo's below)
    imported, mod, plan, model, _ = demo
    checks = resource_model.check(model, mod, imported, _configs(plan, 1), tmp_path)
    for c in checks:
        assert c.predicted.macs == c.compiled.macs, c
        assert max(c.errors().values()) <= 0.05, c
    # The configurations really differ.
    assert len({c.compiled.flash for c in checks}) == len(checks)


@pytest.mark.emulator
@pytest.mark.parametrize("name", ["resnet_block", "mobilenet_block", "inception_concat", "conv_flatten_fc"])
def test_zoo_predictions_are_within_5_percent(name: str, tmp_path: Path) -> None:
    imported, mod = inference_model(name, tmp_path)
    plan = channel_groups(mod)
    model = resource_model.build(mod, plan, imported, BOARD, int8=False, workdir=tmp_path / "m")
    for c in resource_model.check(model, mod, imported, _configs(plan, 2), tmp_path):
        assert c.predicted.macs == c.compiled.macs, c
        assert max(c.errors().values()) <= 0.05, c


def test_gradients_follow_the_bottleneck(demo: tuple) -> None:
    import torch

    _, _, plan, model, _ = demo
    k = torch.tensor(model.full, requires_grad=True)
    model.sram(k).backward()
    assert k.grad is not None
    fd = model.gradient(model.full, "sram")
    np.testing.assert_allclose(k.grad.numpy(), fd, rtol=0.05, atol=1.0)
    # Only the groups with a tensor live at the peak cost SRAM there.
    _, step, buffers = model.bottleneck(model.full)
    assert step and buffers and (fd > 0).any()
    # Flash and MACs grow with every group.
    assert (model.gradient(model.full, "flash") > 0).all() and (model.gradient(model.full, "macs") > 0).all()


def test_pressure_over_a_quantum_steps_over_the_left_over_code(demo: tuple) -> None:
    """One channel off a full block of four adds the left-over channels' code (``remainder_code``): a
    step of one channel prices narrowing a group as raising flash where that code outweighs the
    channel's weights (int4 weights: the MobileNetV2-style model's groups of 64 and 96 channels never
    narrowed), a step of whole blocks does not (4 here; DiffPrune steps by its kept counts' quantum, 8
    at int4)."""
    _, _, _, model, _ = demo
    heavy = attrs.evolve(model, remainder_code=tuple(2000.0 for _ in model.groups))
    full = np.asarray(model.full, float)
    assert (heavy.pressure(full, "flash") < 0).all()
    per_block = heavy.pressure(full, "flash", 4)
    assert (per_block > 0).all()
    np.testing.assert_allclose(per_block, model.pressure(full, "flash", 4))


def test_the_whole_buffer_model_needs_more_sram(demo: tuple) -> None:
    _, _, _, model, _ = demo
    whole = model.restricted("whole")
    for f in (1.0, 0.5, 0.25):
        k = np.maximum(1, np.round(model.full * f))
        assert whole.figures(k).sram > model.figures(k).sram
        assert whole.figures(k).schedule == "layer by layer"
    with pytest.raises(ValueError):
        model.restricted("other")


def test_under_a_budget_the_model_predicts_the_fastest_schedule_that_fits(demo: tuple) -> None:
    """compile --sram-budget takes the fastest candidate within the budget, whatever its overhead: a
    roomy budget gets the layer-by-layer schedule (more SRAM, less code) that the default rule does not
    choose, a tight one the row bands."""
    imported, mod, plan, model, work = demo
    keep = {g.gid: tuple(range(max(1, g.size // 2))) for g in plan.prunable}
    k = model.counts(keep)
    peaks = {label: float(v) for label, v in model.within(1e9).sram_by_schedule(k).items()}
    roomy, tight = peaks["layer by layer"] * 1.02, min(peaks.values()) * 1.02
    assert tight < roomy
    checks = [resource_model.check(model.within(b), mod, imported, [keep], work)[0] for b in (roomy, tight)]
    for c, budget in zip(checks, (roomy, tight), strict=True):
        assert c.predicted.schedule == c.compiled.schedule, c
        assert c.compiled.sram <= budget and max(c.errors().values()) <= 0.05, c
    assert [c.compiled.schedule for c in checks] == ["layer by layer", model.figures(k).schedule]
    assert model.figures(k).schedule != "layer by layer"
    # SRAM under a budget is what can fit at all: the smallest peak of every candidate.
    assert float(model.within(roomy).sram(k)) == min(peaks.values())


def _int8_inverted_residuals() -> Any:
    """Two ReLU inverted residual blocks (expand, depthwise, project, add): int8 chains, in-place steps."""
    from tests.zoo.onnx_models import _Graph

    g = _Graph("inverted_residuals", seed=5)
    y = "x"
    for _ in range(2):
        h = g.op("Relu", [g.conv(y, 8, 32, 1)])
        h = g.op("Relu", [g.conv(h, 32, 32, 3, group=32, pads=[1, 1, 1, 1])])
        y = g.op("Add", [y, g.conv(h, 32, 8, 1)])
    return g.model([("x", [1, 8, 16, 16])], [(y, [1, 8, 16, 16])])


def test_every_candidate_schedule_reports_the_same_macs(tmp_path: Path) -> None:
    """Splitting and in-place execution add no MACs: the report counts a chain's operators, and an
    in-place clone's (a regression: int8 chains with in-place steps were missed)."""
    import onnx

    from tvm_mcu import compiler
    from tvm_mcu.ptq import quantize_onnx

    path = tmp_path / "m.onnx"
    onnx.save(_int8_inverted_residuals(), path)
    calib = {"x": np.random.default_rng(0).standard_normal((8, 8, 16, 16)).astype(np.float32)}
    quantize_onnx(path, calib, tmp_path / "q.onnx")
    q = load_model(tmp_path / "q.onnx")
    s = compiler.plan_schedules(q.mod, model_name="m", rounding="onnx")
    totals = {c.label: sum(s.macs[c.label].values()) for c in s.candidates}
    assert len(s.candidates) >= 3 and len(set(totals.values())) == 1, totals


def test_a_tied_peak_still_says_which_groups_to_narrow(demo: tuple) -> None:
    """Where two steps tie at the peak, no single channel lowers it (zero gradient); the pressure names
    the groups of both steps, so the pruning keeps going."""
    _, _, _, model, _ = demo
    whole = model.restricted("whole")
    tie = np.array([4.0, 16.0, 32.0])  # conv1 output (4 x 28 x 28) = conv2 output (16 x 14 x 14)
    assert not whole.gradient(tie, "sram").any()
    pressure = whole.pressure(tie, "sram")
    assert pressure[0] > 0 and pressure[1] > 0
    assert whole.figures(tie - np.array([1.0, 1.0, 0.0])).sram < whole.figures(tie).sram
