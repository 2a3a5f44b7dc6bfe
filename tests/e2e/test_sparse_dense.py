"""Dense layers pruned elsewhere run sparse: a PyTorch MLP whose ``nn.Linear`` weights were pruned
element by element (``torch.nn.utils.prune.l1_unstructured``), exported by ``torch.onnx.export`` and
quantised by ONNX Runtime's ``quantize_static`` (QDQ, int8). tvm-mcu stores the pruned layers as
element CSR, visits only the kept weights, and stays bit-exact with onnxruntime on cores with and
without the DSP extension (the MLPerf Tiny anomaly detector is such a network of dense layers). The
format saves flash, not time: at 20 % kept its kernel (one multiply per kept weight) runs about as many
instructions as the dense SIMD kernel (two multiply-accumulates per instruction, four outputs per pass)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.schedules import sample
from tests.zoo.ort_quantized import ort_quantize
from tvm_mcu import api

pytestmark = pytest.mark.emulator


def _pruned_mlp(directory: Path, amount: float, activations: str = "int8") -> Path:
    import torch  # installed by make test (the train extra)
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40), nn.ReLU(), nn.Linear(40, 10)
    ).eval()
    for layer in (model[0], model[2]):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")
    float_path = directory / "mlp_float.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 64),),
        str(float_path),
        input_names=["x"],
        output_names=["y"],
        dynamo=False,
    )
    return ort_quantize(onnx.load(str(float_path)), directory / "mlp_qdq.onnx", activations=activations)


@pytest.mark.parametrize(("board", "activations"), [("mps2-an386", "int8"), ("mps2-an385", "uint8")])
def test_element_pruned_dense_layers_run_sparse_and_bit_exact(
    board: str, activations: str, tmp_path: Path
) -> None:
    path = _pruned_mlp(tmp_path, amount=0.8, activations=activations)
    v = api.verify(path, board, tmp_path / "sparse", seed=3)
    assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
    rows = [op for op in v.report.ops if "element CSR" in op.weights_format]
    assert len(rows) == 2  # the two pruned layers; the last one is dense
    source = (tmp_path / "sparse" / "model.c").read_text()
    assert source.count("tvmmcu_esparse_dot_blob_") >= 2
    dense = api.compile_model(path, board, tmp_path / "dense", sparse=False)
    assert not any("CSR" in op.weights_format for op in dense.report.ops)
    # 20 % of the weights kept, 2 bytes each with its index: well under the dense bytes.
    assert v.report.stored_weights_bytes < 0.6 * dense.report.stored_weights_bytes
    assert v.report.flash_bytes < dense.report.flash_bytes


def test_a_dense_layer_too_full_for_element_csr_stays_dense(tmp_path: Path) -> None:
    path = _pruned_mlp(tmp_path, amount=0.3)  # 70 % kept: element CSR (2 B per weight) is larger
    c = api.compile_model(path, "mps2-an386", tmp_path / "out")
    assert not any("CSR" in op.weights_format for op in c.report.ops)
    assert c.report.layout == "as imported (no NCHW convolution)"


def _pruned_pointwise(directory: Path, activations: str) -> Path:
    """A MobileNetV2-style stack (3x3 stem, 1x1 expansion, depthwise 3x3, 1x1 projection), its two 1x1
    convolutions pruned element by element (80 %) by ``l1_unstructured``, quantised by ONNX Runtime."""
    import torch
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU(),
        nn.Conv2d(32, 24, 1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    ).eval()
    for layer in (model[2], model[6]):
        prune.l1_unstructured(layer, "weight", amount=0.8)
        prune.remove(layer, "weight")
    float_path = directory / "pointwise_float.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 9, 9),),
        str(float_path),
        input_names=["x"],
        output_names=["y"],
        dynamo=False,
    )
    return ort_quantize(onnx.load(str(float_path)), directory / "pointwise_qdq.onnx", activations=activations)


@pytest.mark.parametrize(("board", "activations"), [("mps2-an386", "int8"), ("mps2-an385", "uint8")])
def test_element_pruned_pointwise_convolutions_run_sparse_under_every_schedule(
    board: str, activations: str, tmp_path: Path
) -> None:
    """A 1x1 convolution's output channels are a dense layer's rows at each pixel: stored as element
    CSR and visited by the same kernel, bit-exact with onnxruntime under every schedule (the model is
    compiled channels-last by default: its weights are sparse enough to store compactly)."""
    from tvm_mcu import compiler
    from tvm_mcu.frontend import load_model

    path = _pruned_pointwise(tmp_path, activations)
    model = load_model(path)
    labels = [
        c.label for c in compiler.plan_schedules(model.mod, model_name=model.name, convert=True).candidates
    ]
    assert len(labels) >= 3
    dense = api.compile_model(path, board, tmp_path / "dense", sparse=False, channels_last=True)
    assert not any("CSR" in op.weights_format for op in dense.report.ops)
    # Every schedule on the M4; on the M3 (the portable element kernel) layer by layer (time).
    for k, label in enumerate(sample(labels) if board == "mps2-an386" else ["layer by layer"]):
        out = tmp_path / f"sparse_{k}"
        v = api.verify(path, board, out, seed=k, schedule=label)
        assert v.passed and v.report.max_abs_error == 0.0, (label, v.report.worst_difference)
        assert v.report.layout.startswith("channels-last"), v.report.layout
        # Both pointwise convolutions element CSR (one row when a chain holds both), but under
        # accumulating slices the projection, which sums slices of its input channels, not whole rows.
        pruned = (16 * 32,) if "accumulating" in label else (16 * 32, 32 * 24)
        assert any("element CSR" in op.weights_format for op in v.report.ops), label
        calls = (out / "model.c").read_text().count("tvmmcu_esparse_dot_blob_")
        assert calls >= len(pruned), label
        # 20 % of the int8 weights kept at 2 bytes each, with their rows: over 40 % of the bytes saved.
        saved = dense.report.stored_weights_bytes - v.report.stored_weights_bytes
        assert saved > 0.4 * sum(pruned), (label, saved)


def test_a_model_whose_only_kernel_is_element_sparse_links(tmp_path: Path) -> None:
    """Fuzz seed 139 (reduced): one Gemm over uint8 activations, stored element CSR, and no other call
    into the kernels' header: the library included the header only for ``tvmmcu_dot`` calls and the
    firmware failed to link (undefined ``tvmmcu_esparse_dot_blob_u8s8``)."""
    from tests.zoo.qdq_ops import _Q

    g = _Q("uint8", 139)
    x = g.input([1, 32], 0.05, 3)  # zero points as int8 (_Q adds 128)
    path = tmp_path / "gemm.onnx"
    y = g.op("Gemm", [x, g.weight((8, 32), sigma=30.0, zeros=0.8)], transB=1)
    path.write_bytes(g.model(y, 0.5, 9).SerializeToString())
    v = api.verify(path, "lm3s6965evb", tmp_path / "build", seed=139)
    source = (tmp_path / "build" / "model.c").read_text()
    assert "tvmmcu_esparse_dot_blob_u8s8(" in source and '#include "tvmmcu_dot.h"' in source
    assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
