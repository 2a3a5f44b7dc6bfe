"""The joint search with zeros (``prune --method udc --compress-weights all``): channels and bits, then
the weakest weights zeroed where Golomb-Rice coding makes a zero cost a bit, only as far as zeros pay at
the widths found."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import pytest

pytest.importorskip("torch")

from tests.prune_helpers import int4_initializers  # noqa: E402
from tvm_mcu import api, pipeline, prune_sparse  # noqa: E402
from tvm_mcu.analysis.channels import channel_groups  # noqa: E402
from tvm_mcu.errors import BadOptionError  # noqa: E402
from tvm_mcu.frontend import load_model  # noqa: E402
from tvm_mcu.prune import Budget, _Job, prune_model  # noqa: E402
from tvm_mcu.prune_bits import fixed_widths  # noqa: E402
from tvm_mcu.prune_sparse import UDC_SPLIT, zeros_split  # noqa: E402

BOARD = "mps2-an386"
DEMO = Path(str(resources.files("tvm_mcu") / "data" / "demo" / "fashion_cnn.onnx"))


def _coded(out: Path, images: int) -> Any:
    """The demo CNN pruned by the joint search with zeros, Golomb-Rice coded, to 1,500 B of stored
    weights (2 epochs on ``images`` images), written to ``out``."""
    return prune_model(
        DEMO,
        board=BOARD,
        budget=Budget(weights=1500),
        method="udc",
        compress_weights="all",
        out_path=out,
        workdir=out.parent / "work",
        data="fashion-mnist",
        epochs=2,
        train_limit=images,
    )


@pytest.mark.emulator
def test_the_joint_search_with_zeros_meets_the_budget_coded_and_runs_exactly(tmp_path: Path) -> None:
    """``--method udc --compress-weights all``: channels and bits to 1.5x the budget, the channels again
    at the widths found from the original weights, then the weakest weights zeroed until the model
    compiled with its weights Golomb-Rice coded fits; the written QDQ model, compiled so, stores what
    was measured and matches the reference."""
    out = tmp_path / "pruned.onnx"
    result = _coded(out, 2000)
    assert result.after.weights <= 1500 and result.granularity == "unstructured"
    zeroed = {layer: of - kept for layer, (kept, of) in result.sparsity.items()}
    assert sum(zeroed.values()) > 0, result.sparsity
    assert "joint search" in result.search and "zeroed" in result.search
    # The search (1 epoch), the channels again at the widths found from the original weights (1), the
    # zeros (1).
    assert "then channels again at those bits from the original weights (1 epochs)" in result.search
    assert result.training is not None and result.training.epochs == 3
    assert len(result.training.seconds_per_epoch) == 3
    assert int4_initializers(out) == list(result.bits.values()).count(4)
    checked = api.verify(out, BOARD, tmp_path / "verify", compress="all")
    assert checked.passed and checked.report.max_abs_error == 0.0, checked.report.worst_difference
    assert checked.report.stored_weights_bytes == result.after.weights
    assert checked.report.compressed_weights
    with pytest.raises(BadOptionError, match="drop --float"):
        prune_model(
            DEMO, board=BOARD, budget=Budget(weights=1500), out_path=out, int8=False, compress_weights="all"
        )


@pytest.mark.emulator
def test_zeros_are_asked_less_of_narrow_weights(tmp_path: Path) -> None:
    """The channels at the joint search's widths stay above the budget only by what UDC_MAX_ZEROS zeros
    take off those widths' coded bytes (measured): on the demo CNN 0.73x of its stored weights at int8,
    0.89x at int4, 0.98x at int2 (ternary values already cost about what a zero flag does). A fixed
    UDC_SPLIT asked int4 MobileNetV2-style layers for 94.5 % zeros and the training collapsed to chance."""
    imported = load_model(DEMO)
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    job = _Job(mod, channel_groups(mod), imported, BOARD, tmp_path, True, channels_last=True, compress="all")
    splits = {
        w: zeros_split(attrs.evolve(job, bits=fixed_widths(w, mod) or None), mod)
        for w in ("int8", "int4", "int2")
    }
    assert 1.0 < splits["int2"] < splits["int4"] < splits["int8"] <= UDC_SPLIT, splits
    assert splits["int4"] < 1.2, splits  # far less than the 1.5 a fixed split asks


@pytest.mark.emulator
def test_zeros_that_would_take_too_little_leave_the_joint_search_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where zeros would take less than UDC_MIN_SPLIT leaves them at the widths found (here: any share,
    the threshold raised), nothing is zeroed: the joint search again to the budget and its network
    trained at its widths, as --method udc does (MobileNetV2-style at 1/4: 49 % zeros for the last
    206 B had cost 15 points)."""
    monkeypatch.setattr(prune_sparse, "UDC_MIN_SPLIT", 10.0)
    out = tmp_path / "pruned.onnx"
    result = _coded(out, 1000)
    assert result.after.weights <= 1500
    assert result.sparsity == {} and "no zeros" in result.search, result.search
    # The search to 1.5x the budget (1 epoch), the search to the budget (1), the training at its widths (2).
    assert result.training is not None and result.training.epochs == 4
    assert "then trained at its widths from the original weights (2 epochs)" in result.search
    assert int4_initializers(out) == list(result.bits.values()).count(4)
