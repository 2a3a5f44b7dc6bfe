"""Filterlet-sparse convolutions four pixels at a time, border and odd maps included, bit-exact with
onnxruntime under every schedule on a core with the DSP extension and one without.

The model is PyTorch's, its 3x3 convolutions pruned by ``torch.nn.utils.prune`` with a filterlet mask
and quantised by ONNX Runtime (QDQ, per-channel int8 weights, int8 or uint8 activations), compiled
channels-last. Its maps are odd (9x9 -> 5x5, 14x14 -> 7x7: blocks of four pixels across two rows and a
pixel or more left over), with input channels not a multiple of 8 (12, 20: the kernels' portable path)
and of 8 (16: the SIMD one), and a strided one (every block staged). A dilated convolution, pruned too,
stays dense: its taps are not runs of the window (no ``tvmmcu_dot_runs_*`` call for SparseFilterlets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.schedules import sample
from tests.zoo.ort_quantized import ort_quantize
from tvm_mcu import api, compiler
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator

KEEP = 0.4  # the fraction of filterlets the mask keeps


def pruned_float(directory: Path, size: int) -> Path:
    """The float ONNX model: PyTorch's, its 3x3 convolutions after the first pruned with a filterlet
    mask (``torch.nn.utils.prune.custom_from_mask``, then made permanent), written by PyTorch's exporter."""
    import torch
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(size)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 20, 3, padding=1),  # 12 input channels: not a multiple of 8
        nn.ReLU(),
        nn.Conv2d(20, 16, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),  # size -> (size + 1) // 2
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    ).eval()
    rng = np.random.default_rng(size)
    for conv in (model[2], model[4], model[6], model[8]):
        o, i, kh, kw = conv.weight.shape
        keep = rng.random((o, 1, kh, kw)) < KEEP
        keep[0, 0, 0, 0] = True  # no convolution loses every filterlet
        mask = torch.tensor(np.broadcast_to(keep, (o, i, kh, kw)).astype(np.float32))
        prune.custom_from_mask(conv, "weight", mask)
        prune.remove(conv, "weight")
    float_path = directory / "pruned_float.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, size, size),),
        str(float_path),
        input_names=["x"],
        output_names=["y"],
        dynamo=False,
    )
    return float_path


def _pruned_qdq(directory: Path, size: int, activations: str) -> Path:
    float_path = pruned_float(directory, size)
    return ort_quantize(onnx.load(str(float_path)), directory / "pruned_qdq.onnx", activations=activations)


@pytest.mark.parametrize(
    ("size", "activations"), [(9, "int8"), (14, "uint8")], ids=["9x9-int8", "14x14-uint8"]
)
def test_blocks_of_four_pixels_are_bit_exact_under_every_schedule(
    size: int, activations: str, tmp_path: Path
) -> None:
    path = _pruned_qdq(tmp_path, size, activations)
    model = load_model(path)
    labels = [
        c.label for c in compiler.plan_schedules(model.mod, model_name=model.name, convert=True).candidates
    ]
    assert len(labels) >= 2
    kind = "s8s8" if activations == "int8" else "u8s8"
    for k, label in enumerate(sample(labels)):
        for board in ("mps2-an386", "mps2-an385") if k == 0 else ("mps2-an386",):
            out = tmp_path / f"{k}_{board}"
            v = api.verify(path, board, out, seed=k, schedule=label, channels_last=True)
            assert v.passed and v.report.max_abs_error == 0.0, (label, board, v.report.worst_difference)
            assert v.report.library_warnings == (), v.report.library_warnings
            source = (out / "model.c").read_text()
            assert source.count("filterlets kept (CSR)") == 3, label  # all but the dilated one
            if label in ("layer by layer", "row bands"):
                # Every sparse convolution four pixels per call (a last block for the H * W % 4 pixels
                # left; a row band's step: of its row), no pixel through the one-pixel kernel. Channel
                # slices (partial execution) fix the channel outside: one pixel per call.
                blocks = source.count(f"tvmmcu_sparse4p_blob_{kind}(")
                assert blocks >= 4 and source.count("tvmmcu_sparse_stage(") == blocks, label
                assert "tvmmcu_sparse1p" not in source, label
    assert "layer by layer" in labels


def test_an_element_sparse_convolution_without_an_inside_row_is_bit_exact(tmp_path: Path) -> None:
    """Fuzz seed 71 (reduced): a 3x5 convolution of stride 2 over 3 rows padded by one above and below,
    60 % of its weights zero (element CSR): neither output row's window lies inside, and the four-pixel
    kernel took the clipped 2-row windows of the second for inside (wrong by up to 0.96)."""
    from tests.zoo.qdq_ops import _Q

    g = _Q("int8", 71)
    x = g.input([1, 8, 3, 8], 0.05, 3)
    w = g.weight((2, 8, 3, 5), sigma=30.0, zeros=0.6)
    path = tmp_path / "strided.onnx"
    path.write_bytes(
        g.model(g.op("Conv", [x, w], pads=[1, 0, 1, 0], strides=[2, 1]), 0.5, 9).SerializeToString()
    )
    v = api.verify(path, "mps2-an385", tmp_path / "build", seed=71, channels_last=True)
    assert "tvmmcu_esparse1p_" in (tmp_path / "build" / "model.c").read_text()  # element CSR
    assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference


def test_an_element_sparse_convolution_with_every_window_inside_builds_without_warnings(
    tmp_path: Path,
) -> None:
    """Fuzz seed 384 (reduced): an unpadded 3x3 convolution, 60 % of its weights zero (element CSR):
    every window lies inside, the inside test folded away and left the one-pixel branch's accumulator
    declared and unused (-Wunused-variable: the library must build warning-free)."""
    from tests.zoo.qdq_ops import _Q

    g = _Q("int8", 384)
    x = g.input([1, 12, 4, 6], 0.05, 3)
    w = g.weight((2, 12, 3, 3), sigma=30.0, zeros=0.6)
    path = tmp_path / "inside.onnx"
    path.write_bytes(g.model(g.op("Conv", [x, w]), 0.5, 4).SerializeToString())
    v = api.verify(path, "mps2-an521", tmp_path / "build", seed=384, channels_last=True)
    assert "tvmmcu_esparse4p_" in (tmp_path / "build" / "model.c").read_text()  # four pixels a call
    assert v.report.library_warnings == ()
    assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
