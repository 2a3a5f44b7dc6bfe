"""ONNX models (NCHW) compute channels-last on the SIMD kernels, and weights pruned elsewhere run sparse.

The model is PyTorch's: a CNN whose two 3x3 convolutions were pruned by ``torch.nn.utils.prune`` with a
filterlet mask (whole ``W[o, :, ky, kx]`` zeroed), exported by ``torch.onnx.export`` and quantised by
ONNX Runtime's ``quantize_static`` (QDQ, int8 per channel). tvm-mcu must store the pruned convolutions
as CSR over filterlets and stay bit-exact with onnxruntime under every schedule, on a core with the DSP
extension and one without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.schedules import sample
from tests.zoo.ort_quantized import demo_model, ort_quantize
from tvm_mcu import api, compiler
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator

KEEP = 0.3  # the fraction of filterlets the mask keeps


def _torch_pruned_qdq(directory: Path) -> Path:
    import torch  # installed by make test (the train extra)
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 24, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    ).eval()
    rng = np.random.default_rng(0)
    for conv in (model[2], model[5]):
        o, i, kh, kw = conv.weight.shape
        keep = rng.random((o, 1, kh, kw)) < KEEP
        mask = torch.tensor(np.broadcast_to(keep, (o, i, kh, kw)).astype(np.float32))
        prune.custom_from_mask(conv, "weight", mask)
        prune.remove(conv, "weight")
    float_path = directory / "pruned_float.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 16, 16),),
        str(float_path),
        input_names=["x"],
        output_names=["y"],
        dynamo=False,
    )
    return ort_quantize(onnx.load(str(float_path)), directory / "pruned_qdq.onnx", activations="int8")


def test_torch_pruned_onnx_runs_sparse_and_bit_exact_under_every_schedule(tmp_path: Path) -> None:
    path = _torch_pruned_qdq(tmp_path)
    model = load_model(path)
    labels = [
        c.label for c in compiler.plan_schedules(model.mod, model_name=model.name, convert=True).candidates
    ]
    assert len(labels) >= 2
    for k, label in enumerate(sample(labels)):
        for board in ("mps2-an386", "mps2-an385") if k == 0 else ("mps2-an386",):
            out = tmp_path / f"{k}_{board}"
            v = api.verify(path, board, out, seed=k, schedule=label, channels_last=True)
            assert v.passed and v.report.max_abs_error == 0.0, (label, board, v.report.worst_difference)
            source = (out / "model.c").read_text()
            assert "tvmmcu_dot" in source, label  # channels-last: the convolutions run on the kernels
            assert source.count("filterlets kept (CSR)") == 2, label
            rows = [op for op in v.report.ops if "filterlet CSR" in op.weights_format]
            assert rows, label
            for op in rows:  # the report's per-layer columns: kept filterlets and index bytes
                assert op.filterlets is not None and op.filterlets_kept is not None
                assert 0 < op.filterlets_kept < op.filterlets * 0.5
                assert op.index_bytes > 0
    dense = api.compile_model(
        path, "mps2-an386", tmp_path / "dense", schedule=labels[0], sparse=False, channels_last=True
    )
    sparse = api.compile_model(
        path, "mps2-an386", tmp_path / "sparse", schedule=labels[0], channels_last=True
    )
    assert "filterlet CSR" not in {op.weights_format for op in dense.report.ops}
    assert sparse.report.stored_weights_bytes < 0.5 * dense.report.stored_weights_bytes
    assert sparse.report.flash_bytes < dense.report.flash_bytes


def test_an_nchw_model_runs_on_the_dot_kernels(tmp_path: Path) -> None:
    """The demo model (ONNX, NCHW, QDQ) with --channels-last: under half the instructions of the NCHW
    loops (8.3 per MAC on mps2-an386), at the same arena."""
    path = ort_quantize(demo_model(), tmp_path / "demo_qdq.onnx", activations="int8")
    nchw = api.verify(path, "mps2-an386", tmp_path / "nchw", seed=1)
    v = api.verify(path, "mps2-an386", tmp_path / "demo", seed=1, channels_last=True)
    assert v.passed and v.report.max_abs_error == 0.0
    assert "tvmmcu_dot" in (tmp_path / "demo" / "model.c").read_text()
    assert v.report.instructions is not None and nchw.report.instructions is not None
    assert v.report.instructions < 0.5 * nchw.report.instructions
    assert v.report.arena_bytes == nchw.report.arena_bytes  # one input channel: the move is a reshape


def test_a_sparse_onnx_model_goes_channels_last_by_default_and_says_why(tmp_path: Path) -> None:
    """Without --channels-last, filterlet-sparse int8 weights move the model to the channels-last
    kernels (the only ones reading sparse formats); --no-channels-last keeps it NCHW and dense; a dense
    model stays NCHW. The report says which and why."""
    path = _torch_pruned_qdq(tmp_path)
    auto = api.compile_model(path, "mps2-an386", tmp_path / "auto")
    assert auto.report.layout.startswith("channels-last: ")
    assert "keeps 3" in auto.report.layout or "keeps 2" in auto.report.layout  # about KEEP of them
    assert any("filterlet CSR" in op.weights_format for op in auto.report.ops)
    nchw = api.compile_model(path, "mps2-an386", tmp_path / "nchw", channels_last=False)
    assert nchw.report.layout.startswith("as imported (channels-last not asked for)")
    assert not any("CSR" in op.weights_format for op in nchw.report.ops)
    assert auto.report.stored_weights_bytes < 0.5 * nchw.report.stored_weights_bytes
    demo = ort_quantize(demo_model(), tmp_path / "demo_qdq.onnx", activations="int8")
    dense = api.compile_model(demo, "mps2-an386", tmp_path / "demo")
    assert dense.report.layout.startswith("as imported (--channels-last would move")
