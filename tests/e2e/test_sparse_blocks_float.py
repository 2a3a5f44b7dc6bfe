"""Float32 filterlet-sparse convolutions: bit-identical to the dense float build of the same pruned
model, and within float tolerance of onnx.reference, under every schedule, on a core with an FPU (fused
multiply-adds) and one without (soft float).

The model is PyTorch's (``test_sparse_blocks.pruned_float``: its 3x3 convolutions after the first pruned
by ``torch.nn.utils.prune.custom_from_mask`` with a filterlet mask, exported to ONNX, not quantised),
compiled channels-last: odd maps (9x9 -> 5x5, 14x14 -> 7x7: blocks of four pixels across two rows and
pixels left over), 12 and 20 input channels (not a multiple of 8: the kernels' tail) and 16, a strided
convolution (every block staged) and a dilated one, which stays dense (no runs call) and keeps its
four-channel kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_sparse_blocks import pruned_float
from tests.schedules import sample
from tvm_mcu import api, compiler
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator

BOARDS = ("mps2-an386", "mps2-an385")  # Cortex-M4F (VFMA) and Cortex-M3 (soft float)


@pytest.mark.parametrize("size", [9, 14], ids=["9x9", "14x14"])
def test_float_sparse_is_bit_identical_to_dense_under_every_schedule(size: int, tmp_path: Path) -> None:
    path = pruned_float(tmp_path, size)
    model = load_model(path)
    labels = [
        c.label for c in compiler.plan_schedules(model.mod, model_name=model.name, convert=True).candidates
    ]
    assert "layer by layer" in labels and len(labels) >= 2
    for k, label in enumerate(sample(labels)):
        # Both cores for the 9x9 model layer by layer; otherwise each schedule on one, in turn (time).
        boards = BOARDS if (size == 9 and label == "layer by layer") else (BOARDS[(k + size) % 2],)
        for board in boards:
            runs = {}
            for sparse in (False, True):
                out = tmp_path / f"{k}_{board}_{'sparse' if sparse else 'dense'}"
                v = api.verify(path, board, out, seed=k, schedule=label, sparse=sparse, channels_last=True)
                assert v.passed, (label, board, sparse, v.report.worst_difference)
                assert v.report.library_warnings == (), v.report.library_warnings
                runs[sparse] = (v, (out / "model.c").read_text())
            (dense, dense_c), (sparse_v, sparse_c) = runs[False], runs[True]
            assert [a.tobytes() for a in sparse_v.outputs] == [a.tobytes() for a in dense.outputs], (
                label,
                board,
            )
            # Three of the four pruned convolutions stored sparse, as float filterlet CSR; the
            # dilated one dense, none in the dense build.
            assert sparse_c.count("filterlets kept (CSR)") == 3, label
            assert "filterlets kept (CSR)" not in dense_c
            rows = [op for op in sparse_v.report.ops if op.filterlets is not None]
            stored = [op for op in rows if "filterlet CSR" in op.weights_format]
            assert len(stored) == 3 or label != "layer by layer", [op.weights_format for op in rows]
            if label == "layer by layer":
                # Every sparse convolution four pixels per call (a last block for the H * W % 4 pixels
                # left); the dilated one four channels per call.
                blocks = sparse_c.count("tvmmcu_sparse4p_blob_f32(")
                assert blocks >= 3 and sparse_c.count("tvmmcu_sparse_stage_f32(") == blocks, label
                assert "tvmmcu_sparse1p_blob_f32" not in sparse_c
                assert "tvmmcu_dot4_f32(" in sparse_c  # the dilated convolution's taps, blocked
            else:
                assert "tvmmcu_sparse4p_blob_f32(" in sparse_c or "tvmmcu_sparse1p_blob_f32(" in sparse_c


def test_float_sparse_saves_flash(tmp_path: Path) -> None:
    """The float sparse layers store the kept filterlets' float values plus their int16 indices."""
    path = pruned_float(tmp_path, 9)
    options = {"schedule": "layer by layer", "channels_last": True}
    dense = api.compile_model(path, "mps2-an386", tmp_path / "d", sparse=False, **options).report
    sparse = api.compile_model(path, "mps2-an386", tmp_path / "s", **options).report
    by_name = {op.name: op for op in dense.ops}
    stored = [op for op in sparse.ops if op.weights_format.startswith("filterlet CSR")]
    assert len(stored) == 3
    for op in stored:
        kept_values = op.weights_bytes - op.index_bytes
        channels = op.filterlets // 9
        # The bias stays dense beside the CSR (4 B per channel): values = kept filterlets x n x 4 + bias.
        assert op.index_bytes <= 2 * op.filterlets_kept + 2 * (channels + 1) + 7
        assert op.weights_bytes < by_name[op.name].weights_bytes
        assert kept_values % 4 == 0
    saved = sum(by_name[op.name].weights_bytes - op.weights_bytes for op in stored)
    assert dense.stored_weights_bytes - sparse.stored_weights_bytes == saved > 0
