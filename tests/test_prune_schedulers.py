"""The filterlet schedulers of ``tvm-mcu prune``: DTMM's annealing over per-layer ratios and filterlet
gates trained with budget losses, against the global order; the ``instructions=`` budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.prune_helpers import digits_cnn
from tvm_mcu import cli
from tvm_mcu.analysis.sparsity import (
    WeightSite,
    counted_saving,
    dense_instructions,
    filterlet_figures,
    instructions,
    stored_bytes,
)
from tvm_mcu.errors import BadOptionError
from tvm_mcu.prune import Budget, parse_budget, prune_model
from tvm_mcu.prune_anneal import Anneal, Figures, anneal, layer

BOARD = "mps2-an386"


def _site(binding: int, o: int, i: int, pixels: int) -> WeightSite:
    return WeightSite(binding, 1, f"conv{binding}", "conv2d", (o, i, 3, 3), 0, pixels, True)


def _figures(sites: list[WeightSite], masks: dict[tuple[int, int], np.ndarray]) -> dict[str, float]:
    """The counted figures of ``masks`` from the mask-based counting (the reference for the count-based
    tables the annealing uses)."""
    dense_macs = sum(s.pixels * int(np.prod(s.shape)) for s in sites)
    saving = counted_saving(tuple(sites), masks, "filterlet", 1)
    return {
        "flash": 100_000 - saving.flash,
        "macs": dense_macs - saving.macs,
        "instructions": sum(dense_instructions(s, 1) for s in sites) - saving.instructions,
    }


def test_count_based_figures_match_the_mask_based_counting() -> None:
    rng = np.random.default_rng(0)
    site = _site(0, 16, 8, 49)
    for kept in (16, 40, 100, 144):
        on = np.zeros(16 * 9, bool)
        on[rng.permutation(16 * 9)[:kept]] = True
        mask = np.broadcast_to(on.reshape(16, 1, 3, 3), site.shape)
        b, m, ins = filterlet_figures(site, kept, 1)
        assert b == stored_bytes(site, mask, "filterlet", 1)
        assert ins == pytest.approx(instructions(site, mask, "filterlet", 1))
        assert m == (site.pixels * kept * 8 if b < 16 * 8 * 9 else site.pixels * 16 * 8 * 9)


def test_annealing_meets_every_budget_and_spends_it_where_filterlets_are_cheap() -> None:
    # Two layers with the same scores: "cheap" has 8 input channels at a small map, "dear" 32 at a
    # large one. Under an instructions budget the global order (equal scores: no preference) would cut
    # both alike; the annealing keeps more of the cheap layer's filterlets.
    cheap, dear = _site(0, 16, 8, 16), _site(1, 16, 32, 196)
    sites = [cheap, dear]
    scores = {s.key: np.ones((16, 3, 3)) for s in sites}
    layers = [layer(s, scores[s.key]) for s in sites]
    full = _figures(sites, {})
    limits = {"instructions": full["instructions"] * 0.4, "flash": 100_000 - 2_000}
    masks, search = anneal(layers, Figures(full, limits), itemsize=1, seed=0)
    got = _figures(sites, masks)
    assert got["instructions"] <= limits["instructions"] and got["flash"] <= limits["flash"]
    kept = {k: int(m.any(axis=1).sum()) for k, m in masks.items()}
    assert kept[cheap.key] / 144 > kept[dear.key] / 144
    assert all(m.reshape(16, -1).any(axis=1).all() for m in masks.values())  # no channel emptied
    assert search.moves == search.temperatures * 100 and search.accepted > 0
    # Nothing left on the table: one more filterlet anywhere would break a budget.
    a = Anneal(layers, Figures(full, limits), 1)
    counts = [kept[cheap.key], kept[dear.key]]
    for i in range(2):
        if counts[i] < 144:
            more = list(counts)
            more[i] += 1
            assert a.excess(more) > 0
    again, _ = anneal(layers, Figures(full, limits), itemsize=1, seed=0)
    assert all(np.array_equal(masks[k], again[k]) for k in masks)  # seeded: repeatable


def test_annealing_refuses_a_budget_beyond_its_deepest_cut() -> None:
    site = _site(0, 8, 8, 16)
    lay = layer(site, np.ones((8, 3, 3)))
    full = _figures([site], {})
    with pytest.raises(ValueError, match="deepest cut"):
        anneal([lay], Figures(full, {"flash": 100}), itemsize=1)


def test_parse_budget_reads_instructions() -> None:
    assert parse_budget("instructions=5M,flash=8KiB") == Budget(flash=8192, instructions=5_000_000)
    with pytest.raises(BadOptionError, match="instructions=5M"):
        parse_budget("cycles=5M")


@pytest.mark.parametrize(
    ("scheduler", "channels_last"), [("anneal", False), ("gates", False), ("anneal", True)]
)
def test_schedulers_meet_flash_and_instruction_budgets_with_exact_zeros(
    scheduler: str, channels_last: bool, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    model = digits_cnn(tmp_path / "model.onnx")
    # The budgets below the original's figures in the layout it is compiled in (channels-last: the
    # SIMD and four-pixel sparse kernels' code, more flash than the NCHW loops).
    first = prune_model(
        model,
        board=BOARD,
        budget=Budget(flash=10**9),
        out_path=tmp_path / "same.onnx",
        granularity="filterlet",
        channels_last=channels_last,
    )
    budget = Budget(flash=first.before.flash - 600, instructions=int(first.before.instructions * 0.7))
    result = prune_model(
        model,
        board=BOARD,
        budget=budget,
        out_path=tmp_path / "pruned.onnx",
        granularity="filterlet",
        scheduler=scheduler,
        data="digits",
        epochs=2,
        train_limit=256,
        channels_last=channels_last,
    )
    assert not result.after.excess(budget)
    if channels_last:  # held to the measured figures: the compiler stores the zeros sparse
        assert result.measured is not None and result.after.flash == result.measured.flash
    assert result.after.instructions < first.before.instructions
    assert result.scheduler == scheduler and result.search.startswith(
        {"anneal": "annealing", "gates": "gates"}[scheduler]
    )
    assert result.training is not None and len(result.training.seconds_per_epoch) == 2
    # Every conv keeps at least one filterlet per output channel; something was zeroed.
    assert all(kept > 0 for kept, _ in result.sparsity.values())
    assert sum(of - kept for kept, of in result.sparsity.values()) > 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"granularity": "channel", "scheduler": "anneal"}, r"--scheduler anneal spreads a filterlet cut"),
        ({"granularity": "unstructured", "scheduler": "gates"}, r"drop --scheduler"),
        (
            {"granularity": "filterlet", "scheduler": "gates", "importance": "magnitude"},
            r"needs --data and --epochs 2",
        ),
        ({"granularity": "filterlet", "scheduler": "sa"}, r"unknown scheduler 'sa'"),
    ],
    ids=["channel", "unstructured", "gates-without-training", "unknown"],
)
def test_scheduler_options_are_refused_clearly(options: dict[str, str], match: str, tmp_path: Path) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    with pytest.raises(BadOptionError, match=match):
        prune_model(model, board=BOARD, budget=Budget(flash=1), out_path=tmp_path / "x.onnx", **options)  # type: ignore[arg-type]


def test_the_cli_prices_instructions_and_says_what_the_scheduler_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    args = [
        "prune",
        str(model),
        "--board",
        BOARD,
        "-o",
        str(tmp_path / "p.onnx"),
        "--granularity",
        "filterlet",
    ]
    assert cli.main([*args, "--budget", "instructions=150k", "--scheduler", "anneal"]) == 0
    out = capsys.readouterr().out
    assert "instr" in out and "150,000" in out and "estimated by the kernels' cost model" in out
    assert "annealing: 66 temperatures" in out
