"""DiffPrune: gated training is the pruned network, budgets are met by the model, CLI end to end."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import attrs
import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from tests.prune_helpers import inference_model, random_inputs  # noqa: E402
from tvm_mcu import cli, pipeline, resource_model  # noqa: E402
from tvm_mcu.analysis.channels import channel_groups, magnitudes  # noqa: E402
from tvm_mcu.frontend import load_model  # noqa: E402
from tvm_mcu.passes.relax.prune_channels import PruneChannels  # noqa: E402
from tvm_mcu.train.bridge import RelaxModule, write_back  # noqa: E402
from tvm_mcu.train.data import load_dataset  # noqa: E402
from tvm_mcu.train.diffprune import (  # noqa: E402
    FLOOR_OF_UNIFORM,
    PRUNE_LR_HARD,
    PRUNE_LR_MILD,
    Gates,
    diffprune,
    fill_to,
    min_width,
    prune_lr,
    remove_to,
)
from tvm_mcu.train.loop import evaluate  # noqa: E402

BOARD = "mps2-an386"
DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"))


@pytest.mark.parametrize("name", ["resnet_block", "mobilenet_block", "conv_flatten_fc", "inception_concat"])
def test_gated_module_computes_the_pruned_network(name: str, tmp_path: Path) -> None:
    imported, mod = inference_model(name, tmp_path)
    plan = channel_groups(mod)
    gates = Gates(plan, tuple(g.gid for g in plan.prunable if g.size >= 2))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        gates.theta.copy_(torch.from_numpy(rng.uniform(-1, 1, len(gates.theta)).astype(np.float32)))
    gates.begin_step()
    keep = gates.keep()
    assert any(len(keep[g.gid]) < g.size for g in gates.groups)
    gated = RelaxModule(mod, taps=gates.taps())
    x = [torch.from_numpy(a) for a in random_inputs(imported)]
    with torch.no_grad():
        want = gated(*x)
    pruned = RelaxModule(PruneChannels(keep=keep)(write_back(mod, gated)))
    with torch.no_grad():
        got = pruned(*x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # Masks only where the channels are mixed or leave the model: the same network, fewer masks.
    fewer = gates.taps(gated.readers())
    assert 0 < len(fewer) < len(gated.taps), (len(fewer), len(gated.taps))
    gated.taps = fewer
    with torch.no_grad():
        np.testing.assert_allclose(gated(*x).numpy(), got.numpy(), rtol=1e-5, atol=1e-5)


def test_readers_are_the_bindings_that_use_a_value(tmp_path: Path) -> None:
    _, mod = inference_model("resnet_block", tmp_path)
    module = RelaxModule(mod)
    readers = module.readers()
    ops = module.binding_ops()
    assert set(readers) == set(range(len(ops)))
    assert readers[len(ops) - 1] == (-1,)  # the last binding is main's output
    # Every reader comes later; the residual add's input is read twice (the block and the add).
    assert all(r == -1 or r > b for b, rs in readers.items() for r in rs)
    assert any(len(rs) >= 2 for rs in readers.values())


def test_the_learning_rate_while_pruning_grows_with_the_cut() -> None:
    assert prune_lr(1.0) == prune_lr(0.5) == pytest.approx(PRUNE_LR_MILD)
    assert prune_lr(1 / 8) == prune_lr(1 / 100) == pytest.approx(PRUNE_LR_HARD)
    between = [prune_lr(c) for c in (0.45, 0.3, 0.25, 0.2, 0.13)]
    assert between == sorted(between) and between[0] > PRUNE_LR_MILD and between[-1] < PRUNE_LR_HARD
    assert prune_lr(1 / 4) == pytest.approx((PRUNE_LR_MILD * PRUNE_LR_HARD) ** 0.5)  # log-linear
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="positive ratio"):
            prune_lr(bad)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    imported = load_model(DEMO)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    plan = channel_groups(mod)
    model = resource_model.build(mod, plan, imported, BOARD, workdir=tmp_path_factory.mktemp("rm"))
    return imported, mod, plan, model


def test_diffprune_meets_the_budget_by_the_model_while_training(demo: tuple) -> None:
    imported, mod, plan, model = demo
    full = model.figures(model.full)
    budget = {"sram": 0.7 * full.sram, "macs": 0.5 * full.macs}
    ds = load_dataset("fashion-mnist", imported.inputs[0].shape, limit=12000)
    module = RelaxModule(mod)
    gates, log = diffprune(
        module, plan, model, ds, budget, epochs=1, progress=False, prior=magnitudes(mod, plan)
    )
    k = model.counts(log.keep)
    got = model.figures(k)
    assert got.sram <= budget["sram"] and got.macs <= budget["macs"]
    assert log.lr == prune_lr(0.5)  # the deepest cut of the budget (MACs to 1/2) sets the rate
    # Pruned while training: the widths shrink step by step, not at the end. The last entry is the
    # step the target reached the budget, where fill_to may give back what the budget leaves.
    widths = [sum(h[4]) for h in log.history]
    shrinking = widths[:-1]
    assert (
        len(shrinking) >= 3 and widths[0] < model.full.sum() and shrinking == sorted(shrinking, reverse=True)
    )
    _, sram, _, macs, _ = log.history[-1]  # the structure the gates froze at meets the budget
    assert sram <= budget["sram"] and macs <= budget["macs"]
    # The trained, gated network is exactly the cut one.
    acc_gated = evaluate(module, ds.x_test, ds.y_test)
    module.taps = {}
    cut = RelaxModule(PruneChannels(keep=log.keep)(write_back(mod, module)))
    assert evaluate(cut, ds.x_test, ds.y_test) == acc_gated
    assert acc_gated > 0.3  # well above chance after one short epoch of pruning (accuracy: make bench)


@pytest.mark.emulator
def test_cli_diff_meets_an_int8_budget_as_compiled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "diff.onnx"
    # The flash budget leaves room for the int8 micro-kernels' code (the narrowest model needs 12,308 B).
    args = ["prune", str(DEMO), "--board", BOARD, "--budget", "sram=3000,flash=13KiB", "--method", "diff"]
    data = ["--data", "fashion-mnist", "--train-images", "8000", "--epochs", "2"]
    code = cli.main([*args, *data, "-o", str(out), "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["method"] == "diff"
    assert report["after"]["sram"] <= 3000 and report["after"]["flash"] <= 13 * 1024
    t = report["training"]
    assert t["epochs"] == 2 and len(t["seconds_per_epoch"]) == 2
    assert t["accuracy_after"] > 0.8


def test_fill_to_spends_what_the_budget_leaves_on_the_highest_gates(demo: tuple) -> None:
    _, _, plan, model = demo
    gates = Gates(plan, model.groups)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        gates.theta.copy_(torch.from_numpy(rng.uniform(-2, -0.5, len(gates.theta)).astype(np.float32)))
        gates.theta[[0, 1]] = 1.0  # two units on; everything else off
    low, full = model.figures(gates.hard_counts()).sram, model.figures(model.full).sram
    budget = {"sram": (low + full) / 2}
    off_theta = gates.theta.detach().clone()
    added = fill_to(gates, model, budget)
    assert added > 0
    assert model.figures(gates.hard_counts()).sram <= budget["sram"]
    on = (((gates.theta.detach() > 0) | (gates.held > 0)) & (gates.alive > 0)).numpy()
    # Each unit left off would break the budget on its own, or its group is full.
    for i in np.flatnonzero(~on):
        gates.theta.data[i], gates.alive[i] = 1.0, 1.0
        assert model.figures(gates.hard_counts()).sram > budget["sram"]
        gates.theta.data[i] = off_theta[i]
    # Within a group, the units switched on are those whose gates were highest.
    for gi in range(len(gates.groups)):
        units = np.flatnonzero(gates.owner.numpy() == gi)
        on_theta = off_theta[units][on[units]]
        off = off_theta[units][~on[units]]
        if len(on_theta) and len(off):
            assert float(on_theta.min()) >= float(off.max())


def test_a_group_whose_gates_all_fall_keeps_its_floor_unless_the_budget_needs_it(demo: tuple) -> None:
    _, _, plan, model = demo
    gates = Gates(plan, model.groups, floor=min_width(1 / 16))
    assert min_width(1 / 16) == pytest.approx(FLOOR_OF_UNIFORM / 4)
    size = [len(g.units) for g in gates.groups]
    gi = int(np.argmax(size))
    units = np.flatnonzero(gates.owner.numpy() == gi)
    floor = gates.floors[gi]
    assert floor == math.ceil(FLOOR_OF_UNIFORM / 4 * size[gi]) and floor > 1
    with torch.no_grad():
        gates.theta[units] = torch.linspace(-3.0, -2.0, len(units))  # the whole group priced off
    gates.hold_floors()
    k = gates.hard_counts()
    assert k[gi] == floor
    # The units held are the group's strongest, and the forward masks are what is counted.
    held = np.flatnonzero(gates.held.numpy()[units] > 0)
    assert list(held) == list(range(len(units) - floor, len(units)))
    assert float(gates.mask().detach()[units].sum()) == floor
    # A budget the other groups can meet leaves the floor alone ...
    full = model.figures(model.full)
    reachable = {"flash": float(model.figures(k).flash) * 0.97}
    remove_to(gates, model, reachable)
    assert gates.hard_counts()[gi] == floor
    # ... one they cannot meet lowers it.
    remove_to(gates, model, {"flash": 0.01 * float(full.flash)})
    assert gates.hard_counts()[gi] < floor


def test_a_stored_weights_budget_is_met_whatever_the_code_does(demo: tuple) -> None:
    """A stored-weights budget is priced by the weights alone. Where narrowing a group changes the code
    (a schedule chosen at the narrower width, channels left over beyond blocks of four: 2,000 B a group
    here, more than any of its channels' weights), flash goes up as the weights go down; priced through
    flash, no group was worth narrowing and the cut stopped at full width (MobileNetV2-style at int4,
    1/16: 2,952 B of 2,796 after every try)."""
    from types import SimpleNamespace

    from tvm_mcu.prune import Budget, _model_limits

    _, _, plan, model = demo
    heavy = attrs.evolve(model, remainder_code=tuple(2000.0 for _ in model.groups))
    full = heavy.figures(heavy.full)
    assert (heavy.pressure(heavy.full, "flash") < 0).all()
    before = SimpleNamespace(weights=int(full.weights))
    limits = _model_limits(Budget(weights=int(full.weights / 4)), before, heavy)  # type: ignore[arg-type]
    gates = Gates(plan, heavy.groups)
    assert remove_to(gates, heavy, limits) > 0
    k = gates.hard_counts()
    assert heavy.figures(k).weights <= full.weights / 4
    assert heavy.figures(k).flash > full.flash - 3 * full.weights / 4  # the flash it was translated to
