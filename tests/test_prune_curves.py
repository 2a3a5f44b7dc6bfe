"""The pruning curves' code paths: a stored-weights budget, the sparse search measured channels-last
(the written model compiles to the figures the search held), the curves section on a tiny model, and
the done-when claims computed from rows."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import attrs
import pytest

from tests.prune_helpers import digits_cnn
from tvm_mcu import api
from tvm_mcu.errors import BudgetError
from tvm_mcu.prune import Budget, Resources, parse_budget, prune_model
from tvm_mcu.ptq import quantize_onnx

BOARD = "mps2-an386"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_a_weights_budget_is_parsed_and_held() -> None:
    assert parse_budget("weights=2KiB") == Budget(weights=2048)
    r = Resources(100, 5000, 10, "s", "", weights=3000)
    assert r.excess(Budget(weights=2048)) == [("weights", 3000, 2048)]
    assert r.excess(Budget(weights=3000)) == []


@pytest.mark.parametrize("granularity", ["filterlet", "unstructured"], ids=["filterlet", "unstructured"])
def test_sparse_search_measured_channels_last_meets_a_weights_budget(
    granularity: str, tmp_path: Path
) -> None:
    model = digits_cnn(tmp_path / "model.onnx")
    full = prune_model(
        model,
        board=BOARD,
        budget=Budget(weights=10**9),
        out_path=tmp_path / "same.onnx",
        granularity=granularity,
        channels_last=True,
    )
    # Half of conv2's int8 weights (16 x 8 x 3 x 3) below the original's stored weights.
    budget = Budget(weights=full.before.weights - 16 * 8 * 9 // 2)
    out = tmp_path / "pruned.onnx"
    result = prune_model(
        model,
        board=BOARD,
        budget=budget,
        out_path=out,
        granularity=granularity,
        importance="magnitude",
        channels_last=True,
    )
    assert budget.weights is not None
    assert result.channels_last
    # Measured, not counted: the figures held are the written model's as compiled channels-last, but
    # for the MACs (the report counts them dense; the sparse kernels visit the kept weights) and the
    # cost model's instructions, which follow the kept MACs.
    assert result.measured is not None
    held = attrs.evolve(result.after, macs=result.measured.macs, instructions=result.measured.instructions)
    assert held == result.measured
    assert result.after.macs < result.measured.macs
    assert result.after.instructions < result.measured.instructions
    assert result.after.weights <= budget.weights < result.before.weights
    assert result.after.flash < result.before.flash
    # Compiled again from the written file: the stored weights are what the search measured.
    rng = __import__("numpy").random.default_rng(0)
    q = tmp_path / "q.onnx"
    quantize_onnx(out, {"x": rng.standard_normal((8, 1, 8, 8)).astype("float32")}, q)
    report = api.compile_model(q, BOARD, tmp_path / "build", channels_last=True).report
    assert report.stored_weights_bytes == result.after.weights
    assert any("CSR" in op.weights_format for op in report.ops)


def _point(g: str, k: int, acc: float, instructions: int) -> object:
    from prune_bench import Deployed
    from prune_curves import Point

    return Point(g, k, 1000 // max(k, 1), Deployed(0.9, acc, 1, 2, 3, instructions, "s", 4, 300), 0.0, 0.0, 3)


def test_claims_are_computed_from_the_rows() -> None:
    from prune_curves import claims

    rows = [
        _point(g, k, acc, n)
        for k in (4, 8, 16, 32)
        for g, acc, n in (
            ("channel", 0.80, 50),
            ("mixed", 0.82, 40),
            ("filterlet", 0.7, 30),
            ("unstructured", 0.9, 35),
        )
    ]
    text = "\n".join(claims(rows))  # type: ignore[arg-type]
    assert "every budget: **holds**" in text
    assert "1 point better than channel at 1/16 and 1/32: **holds**" in text
    assert "filterlet needs fewer instructions than unstructured at every budget: **holds**" in text
    assert "mixed needs fewer instructions than unstructured at every budget: **does not hold**" in text
    # Mixed 0.5 point better only at 1/32: the margin claim fails there.
    rows[-3] = _point("mixed", 32, 0.805, 40)
    assert "1/16 and 1/32: **does not hold**" in "\n".join(claims(rows))  # type: ignore[arg-type]
    assert "no filterlet was cut" not in text
    # Mixed the very network channel pruned at every budget (a model without filterlets): said why.
    same = [p for p in rows if p.granularity != "mixed"]
    same += [attrs.evolve(p, granularity="mixed") for p in rows if p.granularity == "channel"]
    assert "no filterlet was cut" in "\n".join(claims(same))  # type: ignore[arg-type]


@pytest.mark.emulator
def test_curves_section_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import prune_curves
    from prune_curves import CURVES_HEADING, CurveModel, curves_section

    # Two granularities make the section's rows, plots and claims (each granularity's search has its
    # own tests: test_prune_sparse, and the measured searches below).
    monkeypatch.setattr(prune_curves, "GRANULARITIES", prune_curves.GRANULARITIES[::2])

    model = digits_cnn(tmp_path / "digits_cnn.onnx")
    m = CurveModel("digits CNN", model, 1, 200, 20, 2, data="digits")
    emitted: list[list[str]] = []
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = curves_section(tmp_path / "work", docs, models=[m], fractions=(2,), emit=emitted.append)
    assert lines[1] == CURVES_HEADING
    rows = [line for line in lines if line.startswith("| digits CNN |")]
    assert len(rows) == 3, rows  # the original, channel and mixed at 1/2
    assert len(emitted) >= 3  # a row at a time
    assert (docs / "pruning_curves_digits_cnn_weights.png").stat().st_size > 1000
    assert (docs / "pruning_curves_digits_cnn_instructions.png").is_file()
    assert any("mixed at least as accurate" in line for line in lines)
    # Beside the int8 accuracy: the predictions that differ from onnxruntime's (the largest step).
    assert all(re.fullmatch(r"\d+ \(\d+\)", row.split(" | ")[6]) for row in rows if "cannot" not in row)
    assert any("checked against the host build's) on the first 20 test images" in line for line in lines)


@pytest.mark.emulator
def test_deploy_every_image_is_the_firmwares_accuracy_checked_on_qemu(tmp_path: Path) -> None:
    from prune_bench import deploy

    from tvm_mcu.train.data import load_dataset

    model = digits_cnn(tmp_path / "digits_cnn.onnx")
    ds = load_dataset("digits", (1, 1, 8, 8))
    d = deploy(model, ds, tmp_path, channels_last=True, images=5, every_image=True)
    assert (d.images, d.tested) == (5, len(ds.x_test)) == (5, 359)
    assert d.instructions > 0
    assert d.ort_acc is not None and abs(d.ort_acc - d.int8_acc) <= d.ort_differ / 359
    assert 0 <= d.ort_steps <= 1  # a tiny CNN: at most a step from onnxruntime's float32 rounding
    # Without every_image: the accuracy on QEMU's images only, as the methods section measures it.
    q = deploy(model, ds, tmp_path / "qemu", channels_last=True, images=5)
    assert (q.images, q.tested, q.ort_acc) == (5, 5, None)
    assert q.instructions == d.instructions


@pytest.mark.emulator
def test_deploy_every_image_stops_when_the_host_build_is_not_the_firmware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prune_bench import deploy

    from tvm_mcu.errors import VerificationError
    from tvm_mcu.targets import host
    from tvm_mcu.train.data import load_dataset

    real = host.run_host_library

    def off_by_one(lib: object, packed: bytes, nbytes: int) -> bytes:
        out = bytearray(real(lib, packed, nbytes))  # type: ignore[arg-type]
        out[0] = (out[0] + 1) % 256
        return bytes(out)

    monkeypatch.setattr(host, "run_host_library", off_by_one)
    model = digits_cnn(tmp_path / "digits_cnn.onnx")
    ds = load_dataset("digits", (1, 1, 8, 8))
    with pytest.raises(VerificationError, match="test image 0 the firmware's outputs on QEMU differ"):
        deploy(model, ds, tmp_path, channels_last=True, images=3, every_image=True)


def _pointwise_cnn(path: Path) -> Path:
    """conv 3x3 (1 -> 8), Relu, conv 1x1 (8 -> 16), Relu, global pool, Gemm to 10 on 8x8 inputs: no
    weight the compiler stores sparse (one input channel; a 1x1 window). Seeded."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="pointwise"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "pointwise_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [init("w1", 8, 1, 3, 3), init("w2", 16, 8, 1, 1), init("wf", 10, 16)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_mixed_with_nothing_stored_sparse_prunes_channels_only(tmp_path: Path) -> None:
    model = _pointwise_cnn(tmp_path / "model.onnx")
    kwargs = {"board": BOARD, "granularity": "mixed", "importance": "magnitude", "channels_last": True}
    full = prune_model(model, budget=Budget(weights=10**9), out_path=tmp_path / "same.onnx", **kwargs)  # type: ignore[arg-type]
    budget = Budget(weights=full.before.weights * 2 // 3)
    result = prune_model(model, budget=budget, out_path=tmp_path / "p.onnx", search_steps=4, **kwargs)  # type: ignore[arg-type]
    assert result.sparsity == {}
    assert any(kept < of for kept, of in result.widths.values())
    assert budget.weights is not None and result.after.weights <= budget.weights
    # Filterlets alone have nothing to zero here: refused, naming what the compiler stores sparse.
    with pytest.raises(BudgetError, match="store sparse"):
        prune_model(
            model, budget=budget, out_path=tmp_path / "f.onnx", **{**kwargs, "granularity": "filterlet"}
        )  # type: ignore[arg-type]


def test_the_curves_training_budget_is_set_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import run_bench

    seen: list[object] = []

    def section(tmp: Path, docs: Path, *, models: list[object], emit: object) -> list[str]:
        seen.extend(models)
        return ["", run_bench.CURVES_HEADING, ""]

    monkeypatch.setattr(run_bench, "curves_section", section)
    out = ["--pruning-curves", "--out", str(tmp_path / "BENCH.md")]
    flags = ["--curves-epochs", "1", "--curves-images", "2,000", "--curves-qemu-images", "20"]
    assert run_bench.main([*out, "--curves-models", "mobilenetv2_fashion", *flags]) == 0
    assert run_bench.main(out) == 0
    got = [(m.path.stem, m.epochs, m.limit, m.images) for m in seen]  # type: ignore[attr-defined]
    assert got == [
        ("mobilenetv2_fashion", 1, 2000, 20),
        ("fashion_cnn_wide", 8, None, 300),  # the defaults of a real run
        ("mobilenetv2_fashion", 4, 15_000, 300),
    ]
    # A misspelt model is refused, not silently skipped.
    assert run_bench.main([*out, "--curves-models", "fashion_cnn"]) == 2
    assert "no model ['fashion_cnn']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_bench.main([*out, "--curves-epochs", "0"])


def test_bits_curves_claims_judge_dominance_and_the_size_at_the_original_accuracy() -> None:
    from bits_curves import Point as BitsPoint
    from bits_curves import claims as bits_claims
    from prune_bench import Deployed

    def point(method: str, k: int, acc: float, weights: int) -> BitsPoint:
        d = Deployed(acc, acc, 1000, 2000, 100, 1000, "s", weights)
        return BitsPoint(method, k, weights, d, acc, "8", 0.0, 0.0)

    base = point("original", 0, 0.90, 96_000)
    found = bits_claims(
        [
            base,
            *(point("int8 width", k, 0.897 - 0.01 * k, 96_000 // k) for k in (2, 4)),
            *(point("int4 width", k, 0.896 - 0.005 * k, 96_000 // k) for k in (2, 4)),
            *(point("joint (udc)", k, 0.899 - 0.004 * k, 96_000 // k) for k in (2, 4)),
            *(point("joint + zeros, coded", k, 0.890 - 0.004 * k, 96_000 // k) for k in (2, 4)),
        ]
    )
    assert "**holds**" in found[0] and "1/2 +0.5" in found[0] and "1/4 +0.7" in found[0]
    # At 0.90 - 0.5 point (0.895) no point of these reaches it.
    assert "cannot be judged" in found[1] and "joint (udc) none" in found[1]
    # Each joint search judged on its own: the coded one is behind int4 width at 1/2 (0.882 < 0.886).
    assert (
        found[2].startswith("joint + zeros, coded at least as accurate") and "**does not hold**" in found[2]
    )
    assert len(found) == 4
    worse = bits_claims([base, point("int8 width", 2, 0.9, 40_000), point("joint (udc)", 2, 0.899, 30_000)])
    # Against the width-only methods that ran at a budget (here int8 width alone): behind it by 0.1.
    assert "**does not hold**" in worse[0] and "1/2 -0.1" in worse[0]
    assert "1.33x smaller" in worse[1] and "**does not hold**" in worse[1]


def test_bits_curves_plot_draws_every_method(tmp_path: Path) -> None:
    """One line per method of METHODS (five with int2 width; the markers once ran out at four)."""
    pytest.importorskip("matplotlib")
    from bits_curves import METHODS
    from bits_curves import Point as BitsPoint
    from bits_curves import plot as bits_plot
    from prune_bench import Deployed

    points = [
        BitsPoint(
            m, k, 96_000 // k, Deployed(0.9, 0.9, 1000, 2000, 100, 1000, "s", 96_000 // k), 0.9, "8", 0.0, 0.0
        )
        for m, _ in METHODS
        for k in (2, 4)
    ]
    link = bits_plot(points, "model", "stem", tmp_path)
    assert "bits_curves_stem.png" in link and (tmp_path / "bits_curves_stem.png").stat().st_size > 1000


def test_bits_curves_rows_read_back_as_they_were_written() -> None:
    """``--bits-methods`` keeps the other methods' rows and reads their points back for the claims and
    the plot: a row of ``_row`` parses to the figures it shows."""
    from bits_curves import Point as BitsPoint
    from bits_curves import _kept_row, _row, parse_row
    from prune_bench import Deployed

    d = Deployed(0.91, 0.9066, 1000, 36_164, 100, 12_283_470, "s", 24_104, ort_differ=2, ort_steps=1)
    p = BitsPoint("joint + zeros, coded", 4, 24_134, d, 0.9101, "8,4,2,8", 812.4, 3.6)
    row = _row("CNN 32/64/128", p)
    back = parse_row(row)
    assert back is not None
    assert (back.method, back.k, back.budget, back.bits, back.trained_acc) == (
        p.method,
        4,
        24_134,
        "8,4,2,8",
        0.9101,
    )
    got = back.deployed
    assert (got.int8_acc, got.weights, got.flash, got.instructions) == (0.9066, 24_104, 36_164, 12_283_470)
    assert (got.ort_differ, got.ort_steps, back.train_s, back.search_s) == (2, 1, 812.0, 4.0)
    assert parse_row("| CNN 32/64/128 | 1/16 | int2 width | 6,033 | cannot meet: too small ||||||||") is None
    old = ["| x |", row, "| CNN 32/64/128 | 1/8 | joint + zeros, coded | 12,067 | 8 |"]
    assert _kept_row(old, "CNN 32/64/128", 4, "joint + zeros, coded") == row
    assert _kept_row(old, "CNN 32/64/128", 2, "joint + zeros, coded") is None
