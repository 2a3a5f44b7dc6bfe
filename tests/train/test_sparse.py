"""Sparse pruning's training side: Taylor importance sees what magnitude cannot; masks hold through
fine-tuning; gradual pruning reaches exactly the searched masks, weakest filterlets first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

import torch  # noqa: E402

from tests.prune_helpers import digits_cnn  # noqa: E402
from tvm_mcu import pipeline  # noqa: E402
from tvm_mcu.analysis.sparsity import weight_sites  # noqa: E402
from tvm_mcu.frontend import load_model  # noqa: E402
from tvm_mcu.prune_sparse import Ranking, element_scores, pruning_ranks, unit_scores  # noqa: E402
from tvm_mcu.train.bridge import RelaxModule  # noqa: E402
from tvm_mcu.train.data import Dataset  # noqa: E402
from tvm_mcu.train.loop import train  # noqa: E402
from tvm_mcu.train.sparse import GRADUAL_UPDATES, GradualMasks, MaskHold  # noqa: E402


def _corner_model(path: Path) -> Path:
    """Conv 3x3 without padding (1 -> 2 channels) on 8x8, global average pool, Gemm to 2 classes.

    The taps with ky = 0 or kx = 0 carry large weights (1.0) and the others small ones (0.1). The data
    below are zero but for the bottom-right 2x2 corner, which the taps with ky = 0 or kx = 0 never
    read (tap (ky, kx) reads rows ky..ky+5 and columns kx..kx+5): their gradient is exactly zero.
    """
    w = np.full((2, 1, 3, 3), 0.1, np.float32)
    w[:, :, 0, :] = 1.0
    w[:, :, :, 0] = 1.0
    w[1] *= -1.0
    fc = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc"),
        ],
        "corner",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def test_taylor_and_magnitude_prune_different_filterlets_where_they_should(tmp_path: Path) -> None:
    imported = load_model(_corner_model(tmp_path / "corner.onnx"))
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    sites = tuple(s for s in weight_sites(mod) if s.filterlets)
    assert len(sites) == 1
    rng = np.random.default_rng(0)
    x = np.zeros((64, 1, 8, 8), np.float32)
    x[:, :, 6:, 6:] = rng.uniform(0.5, 1.0, (64, 1, 2, 2))
    y = rng.integers(0, 2, 64)
    data = Dataset("corner", x, y, x, y)
    keys = [sites[0].key]

    def pruned(importance: str, n: int) -> set[tuple[int, int, int]]:
        scores = unit_scores(sites, "filterlet", element_scores(mod, keys, importance, data, 0))
        mask = Ranking(sites, scores, "filterlet", importance).masks(n)[keys[0]]
        return {(o, ky, kx) for o, ky, kx in zip(*np.nonzero(~mask.any(axis=1)), strict=True)}

    blind = {(o, ky, kx) for o in range(2) for ky in range(3) for kx in range(3) if ky == 0 or kx == 0}
    small = {(o, ky, kx) for o in range(2) for ky in range(1, 3) for kx in range(1, 3)}
    # Magnitude drops the small filterlets the data use; Taylor the large ones the data never reach.
    assert pruned("magnitude", 8) == small
    by_taylor = pruned("taylor", 8)
    assert len(by_taylor) == 8 and by_taylor <= blind
    # The Taylor scores are what makes the difference: exactly zero for the blind taps only.
    element = element_scores(mod, keys, "taylor", data, 0)[keys[0]].sum(axis=1)
    assert all(element[t] == 0 for t in blind) and all(element[t] > 0 for t in small)


def test_masks_hold_through_fine_tuning(tmp_path: Path) -> None:
    """Adam at a high rate, several epochs: the masked weights stay exactly +0.0 while the others move;
    without MaskHold the same run moves them off zero (so the check can fail)."""
    imported = load_model(digits_cnn(tmp_path / "model.onnx"))
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    sites = weight_sites(mod)
    rng = np.random.default_rng(0)
    masks = {s.key: rng.uniform(size=s.shape) < 0.5 for s in sites}
    x = rng.uniform(0, 1, (96, 1, 8, 8)).astype(np.float32)
    data = Dataset("random", x, rng.integers(0, 10, 96), x[:8], rng.integers(0, 10, 8))

    def trained(hold: bool) -> dict[tuple[int, int], np.ndarray]:
        module = RelaxModule(mod)
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        keeper = MaskHold(module, masks) if hold else None
        if keeper is None:  # the same starting point: masked weights zeroed once
            with torch.no_grad():
                for s in sites:
                    getattr(module, f"b{s.binding}_{s.arg}").masked_fill_(
                        torch.from_numpy(~masks[s.key]), 0.0
                    )
        train(module, data, epochs=3, batch_size=32, lr=1e-2, progress=False, on_step=keeper)
        params = dict(module.named_parameters())
        moved = [not torch.equal(before[n], params[n]) for n in before]
        assert any(moved)
        return {s.key: params[f"b{s.binding}_{s.arg}"].detach().numpy() for s in sites}

    held = trained(hold=True)
    for s in sites:
        w = held[s.key]
        assert np.all(w[~masks[s.key]] == 0) and not np.signbit(w[~masks[s.key]]).any(), s.label
        assert np.count_nonzero(w[masks[s.key]]) == np.count_nonzero(masks[s.key])
    free = trained(hold=False)
    assert any(np.count_nonzero(free[s.key][~masks[s.key]]) > 0 for s in sites)


def test_gradual_masks_prune_weakest_first_on_a_cubic_schedule_and_end_at_the_masks(tmp_path: Path) -> None:
    """Filterlets of the digits CNN ranked by magnitude, 60 % zeroed: during the first half of training
    the zeroed filterlets of each layer are exactly its weakest (by the ranking) in the number the
    cubic schedule gives, never fewer than before; from the half on, exactly the searched masks, held
    at +0.0 while the kept weights train."""
    imported = load_model(digits_cnn(tmp_path / "model.onnx"))
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    sites = tuple(s for s in weight_sites(mod) if s.filterlets)
    assert sites
    keys = [s.key for s in sites]
    ranking = Ranking(
        sites,
        unit_scores(sites, "filterlet", element_scores(mod, keys, "magnitude", None, 0)),
        "filterlet",
        "magnitude",
    )
    masks = ranking.masks(int(0.6 * ranking.total))
    ranks = pruning_ranks(ranking, masks)
    for s in sites:  # ranks cover exactly the pruned filterlets, whole, weakest first
        assert np.array_equal(ranks[s.key] < 0, masks[s.key])
        r = ranks[s.key][:, 0]
        gone = r >= 0
        by_rank = np.argsort(r[gone])
        assert np.all(np.diff(ranking.scores[s.key][gone][by_rank]) >= 0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (320, 1, 8, 8)).astype(np.float32)
    data = Dataset("random", x, rng.integers(0, 10, 320), x[:8], rng.integers(0, 10, 8))
    module = RelaxModule(mod)
    epochs, batch = 4, 32
    steps = epochs * 10 // 2
    gradual = GradualMasks(module, ranks, steps)
    params = dict(module.named_parameters())
    seen: list[dict[tuple[int, int], int]] = []

    def on_step(epoch: int, step: int) -> None:
        gradual(epoch, step)
        done = len(seen)
        zero: dict[tuple[int, int], int] = {}
        for s in sites:
            w = params[f"b{s.binding}_{s.arg}"].detach().numpy()
            units = int((ranks[s.key][:, 0] >= 0).sum())
            m = units if done + 1 >= steps else round(units * gradual.fraction(done))
            # exactly the m weakest are zero (a kept weight trained to exactly 0.0 would be a fluke)
            assert np.array_equal(~w.any(axis=1), (ranks[s.key][:, 0] >= 0) & (ranks[s.key][:, 0] < m))
            zero[s.key] = m
        seen.append(zero)

    train(module, data, epochs=epochs, batch_size=batch, lr=1e-2, progress=False, on_step=on_step)
    gradual.remove()
    assert len(seen) == epochs * 10
    for k in keys:
        counts = [z[k] for z in seen]
        final = int((ranks[k][:, 0] >= 0).sum())
        assert counts == sorted(counts) and counts[0] < final and counts[steps - 1] == final
        assert counts[-1] == final and 0 < counts[steps // 2] < final
        # cubic: most of the cut early (at half the pruning steps, 1 - 0.5**3 = 87.5 % of it)
        assert counts[steps // 2 - 1] >= 0.8 * final
    assert gradual.fraction(0) < gradual.fraction(steps // 2) < gradual.fraction(steps - 1) == 1.0
    assert len({gradual.fraction(i) for i in range(steps)}) <= GRADUAL_UPDATES + 1
    for s in sites:
        w = params[f"b{s.binding}_{s.arg}"].detach().numpy()
        assert np.all(w[~masks[s.key]] == 0) and not np.signbit(w[~masks[s.key]]).any()
        assert np.count_nonzero(w[masks[s.key]]) == np.count_nonzero(masks[s.key])
