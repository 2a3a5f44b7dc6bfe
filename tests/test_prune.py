"""tvm-mcu prune: budgets read, met as compiled, refused clearly when impossible; pruned models compile and
verify on the emulated board against onnx.reference."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from tests.zoo import INT8_MODELS, write_model
from tvm_mcu import api, cli, pipeline, resource_model
from tvm_mcu.errors import BadOptionError, BudgetError, UnsupportedOpError
from tvm_mcu.frontend import load_model
from tvm_mcu.passes.relax.prune_channels import PruneChannels
from tvm_mcu.prune import MAX_TIGHTEN, Budget, Resources, parse_budget, prune_model, widest_fit

BOARD = "mps2-an386"
DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"))
# L1 pruning of the demo model to a MAC budget, budgeted as float (no quantisation): quick.
L1_DEMO = {"board": BOARD, "budget": Budget(macs=250_000), "int8": False, "search_steps": 3, "method": "l1"}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("sram=24KiB,flash=64KiB,macs=2M", Budget(24 * 1024, 64 * 1024, 2_000_000)),
        ("macs=500k", Budget(macs=500_000)),
        (" flash = 1MiB ", Budget(flash=1 << 20)),
    ],
    ids=["all", "macs-only", "spaces"],
)
def test_budgets_parse(text: str, want: Budget) -> None:
    assert parse_budget(text) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty budget"),
        ("ram=3k", "cannot read budget"),
        ("sram=3k,sram=4k", "twice"),
        ("macs=lots", "count"),
    ],
    ids=["empty", "unknown-resource", "repeated", "bad-count"],
)
def test_bad_budgets_are_clear_errors(text: str, match: str) -> None:
    with pytest.raises(BadOptionError, match=match):
        parse_budget(text)


# Zoo models with prunable groups: residual adds, concat, depthwise, flatten -> fully connected.
PRUNABLE = ["resnet_block", "inception_concat", "mobilenet_block", "conv_flatten_fc", "gemm_head"]


@pytest.mark.emulator
@pytest.mark.parametrize("name", PRUNABLE, ids=str)
def test_pruned_zoo_models_meet_the_budget_and_verify_on_the_board(name: str, tmp_path: Path) -> None:
    path = write_model(name, tmp_path)
    first = prune_model(
        path, board=BOARD, budget=Budget(macs=10**12), out_path=tmp_path / "same.onnx", int8=False
    )
    budget = Budget(macs=int(first.before.macs * 0.6))
    out = tmp_path / f"{name}_pruned.onnx"
    result = prune_model(path, board=BOARD, budget=budget, out_path=out, int8=False, search_steps=3)
    assert result.after.macs <= budget.macs < result.before.macs
    assert any(kept < of for kept, of in result.widths.values())
    v = api.verify(out, BOARD, tmp_path / "verify")
    assert v.passed, v.report.max_abs_error


@pytest.mark.emulator
def test_int8_budget_is_met_as_compiled_and_the_cli_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo_pruned.onnx"
    code = cli.main(["prune", str(DEMO), "--board", BOARD, "--budget", "sram=3000,macs=300k", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "of 32 channels" in text and "int8 figures" in text
    # The written model, quantised and compiled on its own, has the figures the command reported.
    compiled = api.compile_model(out, BOARD, tmp_path / "float")
    assert compiled.report.macs <= 300_000


@pytest.mark.emulator
def test_an_impossible_budget_names_the_shortfall(tmp_path: Path) -> None:
    with pytest.raises(
        BudgetError, match=r"cannot meet the budget on mps2-an386 at any width: .*sram .* over"
    ):
        prune_model(DEMO, board=BOARD, budget=Budget(sram=500), out_path=tmp_path / "x.onnx")


def test_a_quantised_model_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from tvm_mcu.ptq import quantize_onnx

    calib = {"input": np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)}
    quantize_onnx(DEMO, calib, tmp_path / "q.onnx")
    with pytest.raises(BadOptionError, match="is quantised: prune the float model"):
        prune_model(tmp_path / "q.onnx", board=BOARD, budget=Budget(macs=1), out_path=tmp_path / "x.onnx")


def test_a_tflite_model_is_refused(tmp_path: Path) -> None:
    path = write_model(INT8_MODELS[0], tmp_path)
    with pytest.raises(BadOptionError, match="prune takes a float ONNX model"):
        prune_model(path, board=BOARD, budget=Budget(macs=1), out_path=tmp_path / "x.onnx")


def test_an_op_without_an_export_rule_is_refused_at_the_start_naming_its_node(tmp_path: Path) -> None:
    """Tile compiles (TVM imports it as a TIR kernel) but cannot be written back to ONNX: prune refuses
    before any measurement, naming the ONNX node, not only the Relax op."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    reps = onnx.numpy_helper.from_array(np.array([1, 1, 2, 1], np.int64), "reps")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Tile", ["c", "reps"], ["y"], name="t1"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 6])],
        [w, reps],
    )
    path = tmp_path / "tile.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    api.compile_model(path, BOARD, tmp_path / "build")  # compile takes it
    with pytest.raises(
        UnsupportedOpError, match=r"prune cannot take tile: Tile 't1' \(relax.call_tir\) \(writing ONNX\)"
    ):
        prune_model(path, board=BOARD, budget=Budget(sram=1), out_path=tmp_path / "x.onnx", int8=False)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("name", ["mobilenet_block", "resnet_block"])
def test_l1_keeps_the_same_fraction_of_every_group_by_weight_norm(name: str, tmp_path: Path) -> None:
    """Li et al.'s L1-norm filter pruning: per group, the strongest channels; never a group cut to one
    channel while others keep most of theirs (which a global threshold did, leaving a dead network)."""
    from tests.prune_helpers import inference_model
    from tvm_mcu.analysis.channels import channel_groups, magnitudes
    from tvm_mcu.prune import keep_channels

    _, mod = inference_model(name, tmp_path)
    plan = channel_groups(mod)
    score = magnitudes(mod, plan)
    for level in (0.0, 0.3, 0.5, 1.0):
        l1 = keep_channels(plan, score, "l1", level)
        uniform = keep_channels(plan, score, "uniform", level)
        for g in plan.prunable:
            assert len(l1[g.gid]) == len(uniform[g.gid]) == max(1, round(level * g.size))
            kept = [score.get(g.units[c], 0.0) for c in l1[g.gid]]
            dropped = [score.get(u, 0.0) for c, u in enumerate(g.units) if c not in l1[g.gid]]
            assert min(kept) >= max(dropped, default=0.0)
            assert list(l1[g.gid]) == sorted(l1[g.gid])
    # The scores really rank: some group keeps other channels than the first ones.
    half = keep_channels(plan, score, "l1", 0.5)
    assert any(half[g.gid] != tuple(range(len(half[g.gid]))) for g in plan.prunable)


def test_an_unknown_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadOptionError, match="unknown pruning method 'random'"):
        prune_model(DEMO, board=BOARD, budget=Budget(macs=1), out_path=tmp_path / "x.onnx", method="random")


@pytest.mark.emulator
def test_fine_tuning_recovers_accuracy_and_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "tuned.onnx"
    result = prune_model(
        DEMO,
        out_path=out,
        **L1_DEMO,
        data="fashion-mnist",
        epochs=2,
        train_limit=6000,
    )
    t = result.training
    assert t is not None and t.epochs == 2 and len(t.seconds_per_epoch) == 2
    assert t.accuracy_before > 0.85
    assert t.accuracy_after > t.accuracy_pruned
    # The fine-tuned weights are the ones written: the model differs from the magnitude-only cut.
    imported = load_model(DEMO)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    plain = resource_model.export(PruneChannels(keep=result.keep)(mod), imported).SerializeToString()
    assert out.read_bytes() != plain
    assert len(out.read_bytes()) == len(plain)  # the same cut, other weights


def test_the_seed_makes_training_repeatable_and_changes_it(tmp_path: Path) -> None:
    def tuned(seed: int, name: str) -> bytes:
        out = tmp_path / name
        prune_model(
            DEMO,
            out_path=out,
            # The seed is the training's: the search only has to be the same (the narrowest width).
            **{**L1_DEMO, "search_steps": 0},
            data="fashion-mnist",
            epochs=1,
            train_limit=2000,
            seed=seed,
        )
        return out.read_bytes()

    first = tuned(0, "a.onnx")
    assert tuned(0, "b.onnx") == first
    assert tuned(1, "c.onnx") != first


def test_widest_fit_searches_past_an_overshooting_miss() -> None:
    # Compiled SRAM against the scale of the model's target, far off at the top (the model predicted a
    # schedule the compiler could not use there): 6,682 B at 1.0, then about proportional.
    def sram(scale: float) -> int:
        return 6682 if scale > 0.95 else int(5100 * scale)

    tried: list[float] = []

    def cut(scale: float, missed: frozenset[str], attempt: int):
        assert attempt == len(tried) and (missed == frozenset({"sram"})) == (attempt > 0)
        tried.append(scale)
        return scale, Resources(sram(scale), 1000, 10, "s", "")

    budget = Budget(sram=4131, flash=2000)
    scale, after, tries = widest_fit(cut, budget)
    assert after.sram <= 4131 and tries == len(tried) <= MAX_TIGHTEN
    # Scaling by the miss alone stops at tried[1] (3,146 B); the search goes on to the widest that fits.
    assert sram(tried[1]) < 3200 and after.sram > 3900
    assert scale == max(s for s in tried if sram(s) <= 4131)
    # Nothing fits: one error with the figures.
    with pytest.raises(BudgetError, match=r"sram 6,682 > 10 \(6,672 over\) after"):
        widest_fit(lambda s, m, a: (s, Resources(6682, 1, 1, "s", "")), Budget(sram=10))
