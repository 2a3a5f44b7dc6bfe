"""tvm-mcu prune --granularity filterlet|mixed|unstructured: whole filterlets, exact zeros through
fine-tuning, export and int8 quantisation, budgets met, clear refusals; the counting and ranking rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.prune_helpers import digits_cnn, torch_digits_cnn, write_digits_model
from tvm_mcu import cli, pipeline
from tvm_mcu.analysis.sparsity import WeightSite, compact_bytes, stored_bytes, weight_sites
from tvm_mcu.errors import BadOptionError, BudgetError
from tvm_mcu.frontend import load_model
from tvm_mcu.passes.tir.sparse_kernels import compress_blob
from tvm_mcu.prune import Budget, prune_model
from tvm_mcu.prune_sparse import Ranking, least_pruning
from tvm_mcu.ptq import quantize_onnx

BOARD = "mps2-an386"
# Below the digits CNN's dense flash on BOARD (7,668 B): filterlet pruning must remove some.
FLASH_BUDGET = 7400


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _conv_weights(path: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Each Conv node's weight and ``group`` in the model at ``path``, by node name."""
    model = onnx.load(str(path))
    inits = _initializers(path)
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            out[n.name] = (inits[n.input[1]], group)
    return out


def _int8_conv_weights(path: Path) -> dict[str, np.ndarray]:
    """Each Conv node's int8 weight in a QDQ model: the initializer its weight DequantizeLinear reads."""
    model = onnx.load(str(path))
    inits = _initializers(path)
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and dq.get(n.input[1]) in inits:
            out[n.name] = inits[dq[n.input[1]]]
    return out


CASES = [
    # (model, granularity, importance, epochs): a hand-built model and a torch-exported one.
    ("onnx-helper", "filterlet", "taylor", 2),
    ("onnx-helper", "unstructured", "magnitude", 0),
    ("torch-export", "filterlet", "magnitude", 1),
    ("torch-export", "mixed", "taylor", 2),  # channels by DiffPrune, then filterlets gradually
]


@pytest.mark.parametrize(("source", "granularity", "importance", "epochs"), CASES, ids=lambda v: str(v))
def test_sparse_pruning_meets_the_budget_with_exact_zeros_that_survive_fine_tuning_and_int8(
    source: str, granularity: str, importance: str, epochs: int, tmp_path: Path
) -> None:
    if source == "torch-export":
        pytest.importorskip("torch")
        model = torch_digits_cnn(tmp_path / "model.onnx")
    else:
        model = digits_cnn(tmp_path / "model.onnx")
    first = prune_model(
        model,
        board=BOARD,
        budget=Budget(flash=10**9),
        out_path=tmp_path / "same.onnx",
        granularity=granularity,
    )
    # 1/4 of the convolution weights' bytes below the original flash; mixed also a tighter SRAM.
    conv_bytes = sum(w.size for w, _ in _conv_weights(model).values())
    budget = Budget(flash=first.before.flash - conv_bytes // 4)
    if granularity == "mixed":
        # Channels for 10 % of the SRAM; then a flash budget below what those channels leave, which
        # only filterlets meet.
        sram = int(first.before.sram * 0.9)
        channels = prune_model(
            model,
            board=BOARD,
            budget=Budget(sram=sram),
            out_path=tmp_path / "c.onnx",
            granularity=granularity,
            search_steps=3,
        )
        budget = Budget(flash=channels.after.flash - conv_bytes // 4, sram=sram)
    out = tmp_path / "pruned.onnx"
    data = "digits" if importance == "taylor" or epochs else None
    result = prune_model(
        model,
        board=BOARD,
        budget=budget,
        out_path=out,
        granularity=granularity,
        importance=importance,
        data=data,
        epochs=epochs,
        train_limit=256,
        search_steps=3,
    )
    assert result.granularity == granularity and result.importance == importance
    assert result.after.flash <= budget.flash < result.before.flash
    assert result.measured is not None and result.after.sram == result.measured.sram
    if granularity == "mixed":
        assert budget.sram is not None and result.after.sram <= budget.sram < result.before.sram
        assert any(kept < of for kept, of in result.widths.values())
    else:
        assert all(kept == of for kept, of in result.widths.values())
    assert (result.training is not None) == (epochs > 0)
    assert (
        result.training is None or len(result.training.seconds_per_epoch) == result.training.epochs == epochs
    )
    if granularity == "mixed":
        assert "channels by DiffPrune" in result.search
    assert any(kept < of for kept, of in result.sparsity.values()), result.sparsity

    written = _conv_weights(out)
    zero_filterlets = 0
    for name, (w, group) in written.items():
        zeros = w == 0
        if granularity == "unstructured":
            continue
        if w.shape[2] * w.shape[3] == 1 or group > 1:
            assert not zeros.any(), f"{name} has no filterlets and keeps every weight"
            continue
        whole = zeros.all(axis=1)  # (O, kh, kw): the filterlets that are all zero
        # Filterlets are whole: no zero outside an all-zero filterlet (the seeded weights have none).
        assert np.array_equal(zeros, np.broadcast_to(whole[:, None], w.shape)), name
        assert not whole.reshape(len(w), -1).all(axis=1).any(), (
            f"{name}: an output channel lost every filterlet"
        )
        zero_filterlets += int(whole.sum())
    if granularity == "unstructured":
        assert sum(int(np.count_nonzero(w == 0)) for w, _ in written.values()) > 0
    else:
        assert zero_filterlets > 0

    # Quantised: every float zero is an int8 zero (symmetric weights, zero point 0).
    rng = np.random.default_rng(0)
    calib = {"x": rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)}
    quantize_onnx(out, calib, tmp_path / "q.onnx")
    q = _int8_conv_weights(tmp_path / "q.onnx")
    assert set(q) == set(written)
    for name, (w, _) in written.items():
        assert q[name].dtype == np.int8 and q[name].shape == w.shape
        assert np.all(q[name][w == 0] == 0), name


def test_sparse_zeros_are_counted_exactly_in_the_reported_fractions(tmp_path: Path) -> None:
    """The per-layer kept fractions are the written model's: every reported count of kept filterlets
    is the number of not-all-zero filterlets in the written ONNX."""
    model = digits_cnn(tmp_path / "model.onnx")
    out = tmp_path / "pruned.onnx"
    result = prune_model(
        model,
        board=BOARD,
        budget=Budget(flash=FLASH_BUDGET),
        out_path=out,
        granularity="filterlet",
        importance="magnitude",
    )
    # The written model's nodes have new names; its convolutions are in the original's order.
    written = [w for w, _ in _conv_weights(out).values()]
    assert list(result.sparsity) == ["Conv 'conv1'", "Conv 'conv2'"]
    for w, (kept, of) in zip(written, result.sparsity.values(), strict=False):
        assert of == w.shape[0] * w.shape[2] * w.shape[3]
        assert kept == int((w != 0).any(axis=1).sum()) < of
    assert result.after.flash <= FLASH_BUDGET


def test_the_cli_reports_granularity_and_kept_fractions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    budget = f"flash={FLASH_BUDGET}"
    args = ["prune", str(model), "--board", BOARD, "--budget", budget, "-o", str(tmp_path / "p.onnx")]
    assert cli.main([*args, "--granularity", "filterlet", "--importance", "magnitude"]) == 0
    text = capsys.readouterr().out
    assert "(filterlet, magnitude, int8 figures)" in text
    assert "Conv 'conv2'" in text and "filterlets (" in text and "counted" in text
    assert cli.main([*args, "--granularity", "unstructured", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["granularity"] == "unstructured" and report["importance"] == "magnitude"
    fractions = {k: v["fraction"] for k, v in report["sparsity"].items()}
    assert set(fractions) == {"Conv 'conv1'", "Conv 'conv2'", "Conv 'pointwise'", "Gemm 'fc'"}
    assert all(v["unit"] == "elements" for v in report["sparsity"].values())
    assert min(fractions.values()) < 1.0 and report["after"]["flash"] <= FLASH_BUDGET


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"granularity": "filterlet", "method": "l1"}, r"--method l1 ranks the channels .* drop --method"),
        ({"granularity": "unstructured", "method": "uniform"}, r"ranks elements by --importance"),
        ({"granularity": "channel", "importance": "taylor"}, r"--importance taylor ranks filterlets"),
        ({"granularity": "filterlet", "importance": "taylor"}, r"--importance taylor needs --data"),
        ({"granularity": "blocks"}, r"unknown granularity 'blocks'"),
        ({"granularity": "mixed", "importance": "random"}, r"unknown importance 'random'"),
    ],
    ids=[
        "filterlet+method",
        "unstructured+method",
        "channel+importance",
        "taylor-without-data",
        "granularity",
        "importance",
    ],
)
def test_bad_option_combinations_are_refused_clearly(
    options: dict[str, str], match: str, tmp_path: Path
) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    with pytest.raises(BadOptionError, match=match):
        prune_model(model, board=BOARD, budget=Budget(flash=1), out_path=tmp_path / "x.onnx", **options)  # type: ignore[arg-type]


def test_the_cli_refuses_a_method_with_filterlets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    args = ["prune", str(model), "--board", BOARD, "--budget", "flash=8000", "-o", str(tmp_path / "p.onnx")]
    assert cli.main([*args, "--granularity", "filterlet", "--method", "l1"]) == 1
    assert "--method l1 ranks the channels of --granularity channel" in capsys.readouterr().err


def test_filterlets_cannot_meet_an_sram_budget(tmp_path: Path) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    with pytest.raises(BudgetError, match=r"leaves every activation as it is: prune channels"):
        prune_model(
            model, board=BOARD, budget=Budget(sram=100), out_path=tmp_path / "x.onnx", granularity="filterlet"
        )


def test_a_budget_beyond_one_filterlet_per_channel_names_the_shortfall(tmp_path: Path) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    with pytest.raises(
        BudgetError, match=r"even with one filterlet per output channel left in 2 layers, flash"
    ):
        prune_model(
            model,
            board=BOARD,
            budget=Budget(flash=1000),
            out_path=tmp_path / "x.onnx",
            granularity="filterlet",
        )


# ------------------------------------------------------------------------------------------ counting
def _site(shape: tuple[int, ...], filterlets: bool = True) -> WeightSite:
    return WeightSite(0, 1, "w", "conv2d", shape, 0, 1, filterlets)


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.75, 1.0])
def test_filterlet_bytes_are_the_compilers_blob(kept: float) -> None:
    """The counted filterlet format is byte for byte the blob the compiler stores
    (sparse_kernels.compress_blob, OHWI)."""
    rng = np.random.default_rng(0)
    o, i, kh, kw = 12, 8, 3, 3
    filterlet = rng.uniform(size=(o, kh, kw)) < kept
    filterlet[:, 0, 0] = True
    mask = np.broadcast_to(filterlet[:, None], (o, i, kh, kw))
    w = np.where(mask, rng.integers(1, 100, (o, i, kh, kw)), 0).astype(np.int8)
    assert compact_bytes(_site(w.shape), mask, "filterlet", 1) == compress_blob(w.transpose(0, 2, 3, 1)).size


@pytest.mark.parametrize("kept", [0.1, 0.5, 0.75])
def test_float_filterlet_bytes_are_the_compilers_blob(kept: float) -> None:
    """Float32 weights too: the counted filterlet format is the compiler's float blob (int16 rows, uint8
    taps, then 4 B per kept value), and what it stores (compiler._sparse_format) when it pays."""
    from tvm_mcu import compiler

    rng = np.random.default_rng(1)
    o, i, kh, kw = 12, 8, 3, 3
    filterlet = rng.uniform(size=(o, kh, kw)) < kept
    filterlet[:, 0, 0] = True
    mask = np.broadcast_to(filterlet[:, None], (o, i, kh, kw))
    w = np.where(mask, rng.standard_normal((o, i, kh, kw)), 0).astype(np.float32)
    ohwi = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    assert compact_bytes(_site(w.shape), mask, "filterlet", 4) == compress_blob(ohwi).size
    assert compiler._sparse_format(ohwi) is not None


@pytest.mark.parametrize("density", [0.02, 0.2, 0.6])
def test_int8_element_bytes_are_the_compilers_blob(density: float) -> None:
    """Counted element CSR is the compiler's blob of the weights in its stored order (OHWI), sparse
    enough at 2 % for distances over 255 columns and their bridging entries."""
    from tvm_mcu.passes.tir import sparse_element_kernels

    site = _site((8, 40, 3, 3), filterlets=True)  # 360 columns per output channel
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random(site.shape) < density
    weights = np.where(mask, rng.integers(1, 127, site.shape), 0).astype(np.int8)
    blob = sparse_element_kernels.compress_blob(np.ascontiguousarray(weights.transpose(0, 2, 3, 1)))
    assert compact_bytes(site, mask, "unstructured", 1) == blob.size


def test_float_element_csr_takes_the_narrowest_indices() -> None:
    site = _site((4, 16, 4, 4), filterlets=False)  # 256 columns: uint8 column indices
    mask = np.zeros(site.shape, bool)
    mask[:, :, 0, 0] = True  # 64 kept
    assert compact_bytes(site, mask, "unstructured", 4) == 64 * (4 + 1) + 5 * 2
    wide = _site((4, 17, 4, 4), filterlets=False)  # 272 columns: uint16
    mask = np.zeros(wide.shape, bool)
    mask[:, :, 0, 0] = True  # 68 kept
    assert compact_bytes(wide, mask, "unstructured", 4) == 68 * (4 + 2) + 5 * 2
    # Dense is kept where the compact form is no smaller.
    full = np.ones(site.shape, bool)
    assert stored_bytes(site, full, "unstructured", 4) == 4 * 256 * 4


def _model_sites(tmp_path: Path) -> tuple[WeightSite, ...]:
    imported = load_model(digits_cnn(tmp_path / "model.onnx"))
    return weight_sites(pipeline.run(pipeline.inference_passes(), imported.mod))


def test_weight_sites_know_which_layers_have_filterlets(tmp_path: Path) -> None:
    sites = {s.label: s for s in _model_sites(tmp_path)}
    assert {k: s.filterlets for k, s in sites.items()} == {
        "Conv 'conv1'": True,
        "Conv 'conv2'": True,
        "Conv 'pointwise'": False,
        "Gemm 'fc'": False,
    }
    assert sites["Gemm 'fc'"].out_channels == 10 and sites["Conv 'conv2'"].pixels == 64


# ------------------------------------------------------------------------------------------- ranking
def _ranking(scale: float = 1.0, seed: int = 0) -> tuple[Ranking, tuple[WeightSite, ...]]:
    rng = np.random.default_rng(seed)
    sites = (_site((6, 4, 3, 3)), WeightSite(1, 1, "b", "conv2d", (5, 4, 3, 3), 0, 1, True))
    scores = {sites[0].key: rng.uniform(size=(6, 3, 3)), sites[1].key: scale * rng.uniform(size=(5, 3, 3))}
    return Ranking(sites, scores, "filterlet", "taylor"), sites


def test_ranking_never_empties_a_channel_and_prunes_monotonically() -> None:
    ranking, sites = _ranking()
    kept = []
    for n in range(ranking.total + 1):
        masks = ranking.masks(n)
        per_channel = [m.any(axis=1).reshape(len(m), -1).sum(axis=1) for m in masks.values()]
        assert all((c >= 1).all() for c in per_channel)
        kept.append(sum(int(c.sum()) for c in per_channel))
    assert kept[0] == ranking.total and kept[-1] == 6 + 5  # one filterlet per output channel at the end
    assert kept == sorted(kept, reverse=True)


def test_ranking_normalises_each_layer_by_its_mean() -> None:
    """Scaling one layer's scores (a deeper layer's smaller gradients) does not change the global cut."""
    plain, _ = _ranking(1.0)
    scaled, _ = _ranking(1e-3)
    for n in (10, 40, 80):
        for key, mask in plain.masks(n).items():
            assert np.array_equal(mask, scaled.masks(n)[key])
    # Without normalisation the scaled layer would have been cut first: it is not, half-way.
    half = scaled.masks(plain.total // 2)
    assert 0 < sum(int(m.any(axis=1).sum()) for m in half.values()) < plain.total
    assert all(m.any(axis=1).sum() > 0.25 * m[:, 0].size for m in half.values())


def test_least_pruning_finds_the_smallest_level_that_fits() -> None:
    calls: list[int] = []

    def fits(n: int) -> bool:
        calls.append(n)
        return n >= 37

    assert least_pruning(fits, 100) == 37
    assert len(calls) <= 8
    assert least_pruning(lambda n: True, 100) == 0


@pytest.mark.parametrize(
    ("hint", "most_calls"),
    [(37, 2), (36, 2), (40, 6), (30, 6), (0, 13), (99, 13)],
    ids=["exact", "one-short", "above", "below", "zero", "last"],
)
def test_least_pruning_from_a_hint_brackets_the_answer_in_few_calls(hint: int, most_calls: int) -> None:
    calls: list[int] = []

    def fits(n: int) -> bool:
        calls.append(n)
        return n >= 37

    assert least_pruning(fits, 1000, hint) == 37
    assert len(calls) <= most_calls, calls


def _pointwise_digits(path: Path) -> Path:
    """A MobileNetV2-style digits classifier by onnx.helper, with no convolution that has filterlets:
    1x1 (1 -> 16), Relu, depthwise 3x3, Relu, 1x1 (16 -> 16), Relu, global average pool, Gemm."""
    from onnx import helper

    rng = np.random.default_rng(3)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="expand"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16, name="depthwise"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [init("w1", 16, 1, 1, 1), init("b1", 16), init("w2", 16, 1, 3, 3), init("b2", 16)]
    inits += [init("w3", 16, 16, 1, 1), init("b3", 16), init("wf", 10, 16), init("bf", 10)]
    return write_digits_model(path, "pointwise_digits", nodes, inits)


@pytest.mark.parametrize("thirds", [1, 2])
def test_mixed_without_filterlets_runs_diffprune_once(
    thirds: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model with only 1x1 and depthwise convolutions (MobileNetV2's kind) has no filterlet to prune:
    mixed is DiffPrune's channels to the budget, trained once. It trained them to twice the budget
    first, then found no filterlet to take the rest and trained again (1/3 of the weights here; 2.5x
    channel's time on the MobileNetV2-style model in docs/BENCHMARKS_PRUNING.md); and a budget the
    original met within twice (2/3 here) left the channels uncut and was refused."""
    from tvm_mcu import prune

    model = _pointwise_digits(tmp_path / "model.onnx")
    calls: list[Budget] = []
    diff = prune._diff

    def counted(job: object, budget: Budget, *args: object, **kwargs: object) -> object:
        calls.append(budget)
        return diff(job, budget, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prune, "_diff", counted)
    full = prune_model(model, board=BOARD, budget=Budget(flash=10**9), out_path=tmp_path / "same.onnx")
    budget = Budget(weights=full.before.weights * thirds // 3)
    result = prune_model(
        model,
        board=BOARD,
        budget=budget,
        out_path=tmp_path / "pruned.onnx",
        granularity="mixed",
        importance="magnitude",
        channels_last=True,
        data="digits",
        epochs=4,
        train_limit=256,
    )
    assert len(calls) == 1, calls
    assert result.after.weights <= budget.weights < result.before.weights
    assert "channels by DiffPrune (2 epochs) to the budget" in result.search, result.search
    assert result.training is not None and result.training.epochs == 4
    assert not any(kept < of for kept, of in result.sparsity.values())


def test_pruning_trains_with_batchnorm_back_and_exports_what_it_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DiffPrune and the fine-tuning after it train with a BatchNorm on every convolution that has a
    bias (``trainable``), quantisation-aware at int2 here, and the float model the quantiser calibrates
    on, norms folded, is the network trained: its int2 layer's weights are ternary per output channel
    (the quantised weights, not the free ones the straight-through estimator updates) and its test
    accuracy is the one the training reports."""
    from tvm_mcu import prune
    from tvm_mcu.train.bridge import RelaxModule
    from tvm_mcu.train.data import load_dataset
    from tvm_mcu.train.loop import evaluate

    model = _pointwise_digits(tmp_path / "model.onnx")
    counts: list[int] = []
    renormalise = RelaxModule.renormalise

    def counted(self: RelaxModule, x: np.ndarray) -> int:
        counts.append(renormalise(self, x))
        return counts[-1]

    calibrated: list[tuple[object, dict[tuple[int, int], int]]] = []
    written = prune._written_at_bits

    def captured(mod: object, *args: object) -> bytes:
        calibrated.append((mod, dict(args[-1])))  # type: ignore[call-overload]
        return written(mod, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RelaxModule, "renormalise", counted)
    monkeypatch.setattr(prune, "_written_at_bits", captured)
    out = tmp_path / "pruned.onnx"
    budget = Budget(weights=900)  # 1,200 B stored with the project int2 (biases and scales included)
    result = prune_model(
        model,
        board=BOARD,
        budget=budget,
        out_path=out,
        data="digits",
        epochs=2,
        train_limit=256,
        weights="int2",
    )
    assert counts == [3, 3], counts  # expand, depthwise, project: while gating, then fine-tuning
    assert result.after.weights <= budget.weights < result.before.weights
    assert result.training is not None
    ((mod, bits),) = calibrated
    assert 2 in bits.values(), bits
    consts = RelaxModule(mod)  # type: ignore[arg-type]
    for (binding, arg), b in bits.items():
        if b != 2:
            continue
        w = dict(consts.named_parameters())[f"b{binding}_{arg}"].detach().numpy()
        for o, channel in enumerate(w.reshape(len(w), -1)):
            kept = np.abs(channel[channel != 0])
            assert kept.size and np.ptp(kept) <= 1e-6 * kept.max(), (binding, o, np.unique(channel))
    ds = load_dataset("digits", load_model(model).inputs[0].shape, limit=256)
    assert evaluate(consts, ds.x_test, ds.y_test) == pytest.approx(result.training.accuracy_after, abs=1e-9)
