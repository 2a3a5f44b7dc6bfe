"""Compressed weights (CompressWeights, ``compress="all"``): an int8 QDQ CNN with weights spread as trained
ones is bit-exact with the reference and with its uncompressed build on a core with the DSP extension and
one without, and under every schedule; a pruned one stores its compressed weights in under half their
bytes; the library is deterministic; a flash budget the weights cannot fit is refused saying by how
much."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.schedules import sample
from tests.zoo.qdq_ops import compress_cnn
from tvm_mcu import api, compiler
from tvm_mcu.errors import BadOptionError, BudgetError
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator


def _model(tmp_path: Path, zeros: float = 0.0) -> Path:
    path = tmp_path / f"compress_cnn_{zeros}.onnx"
    path.write_bytes(compress_cnn(zeros).SerializeToString())
    return path


def test_compressed_weights_are_bit_exact(tmp_path: Path) -> None:
    path = _model(tmp_path)
    board, options = "mps2-an386", {"seed": 1, "channels_last": True, "schedule": "layer by layer"}
    coded = api.verify(path, board, tmp_path / "coded", compress="all", **options)  # type: ignore[arg-type]
    plain = api.verify(path, board, tmp_path / "plain", **options)  # type: ignore[arg-type]
    # The core without the DSP extension: its kernels read the same scratch (the reference is the oracle);
    # half the weights zero, so most chunks are coded with zero flags.
    half = _model(tmp_path, 0.5)
    m3 = api.verify(half, "mps2-an385", tmp_path / "m3", compress="all", **options)  # type: ignore[arg-type]
    assert m3.passed and m3.report.max_abs_error == 0.0, m3.report.worst_difference
    assert m3.report.compressed_weights and all(r.ratio < 0.6 for r in m3.report.compressed_weights)
    for v in (coded, plain):
        assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
        assert v.report.library_warnings == ()
    assert all(np.array_equal(a, b) for a, b in zip(coded.outputs, plain.outputs, strict=True))
    rows = {r.weight: r for r in coded.report.compressed_weights}
    assert set(rows) == {"w2", "w6", "w8"}, rows  # the 3x3 over 8 channels, the 1x1, the dense layer
    assert all(0.6 < r.ratio < 0.8 for r in rows.values()), rows  # about 6 bits a value
    assert rows["w8"].decode_calls == 3  # the dense layer: each block of four channels once
    # The convolutions too (16 channels: four blocks): the blocks' loop runs outside the pixels'.
    assert rows["w2"].decode_calls == rows["w6"].decode_calls == 4, rows
    assert coded.report.stored_weights_bytes < plain.report.stored_weights_bytes
    assert plain.report.stored_weights_bytes - coded.report.stored_weights_bytes == sum(
        r.raw_bytes - r.stored_bytes for r in rows.values()
    )
    assert coded.report.flash_bytes < plain.report.flash_bytes
    assert coded.report.instructions > plain.report.instructions  # the decoding
    source = (tmp_path / "coded" / "model.c").read_text()
    assert "tvmmcu_rice_decode" in source and "Golomb-Rice coded" in source


def test_every_schedule_is_bit_exact_with_compressed_weights(tmp_path: Path) -> None:
    """Layer by layer, in place, channel slices (accumulating ones too) and row bands, each bit-exact
    on the M4 with some weights compressed (the dense layer's at least); the report names every weight
    asked for that a schedule leaves uncoded (one computing a channel at a time), saying why."""
    path = _model(tmp_path)
    model = load_model(path)
    plan = compiler.plan_schedules(model.mod, model_name=model.name, convert=True, compress="all")
    labels = [c.label for c in plan.candidates]
    assert {"in place", "partial execution", "row bands"} <= set(labels), labels
    declined: set[str] = set()
    for k, label in enumerate(sample(labels)[1:], start=1):
        v = api.verify(
            path, "mps2-an386", tmp_path / str(k), seed=k, schedule=label, compress="all", channels_last=True
        )
        assert v.report.schedule == label
        assert v.passed and v.report.max_abs_error == 0.0, (label, v.report.worst_difference)
        coded = {r.weight for r in v.report.compressed_weights}
        left = {r.weight: r.reason for r in v.report.not_compressed_weights}
        assert "w8" in coded and coded | set(left) == {"w2", "w6", "w8"} and not coded & set(left), label
        declined.update(left.values())
    assert any("one output channel at a time" in r for r in declined), declined


def test_pruned_weights_compress_below_0_4x_and_the_library_is_deterministic() -> None:
    """80 % zeros: each zero one bit (zero flags; plain Rice, its k set by the other values, would take
    about half the bytes). Stored dense (by default the sparse formats would take them)."""
    model = load_model_bytes(compress_cnn(0.8))
    first, second = (
        compiler.compile_module(
            model.mod, model_name="pruned", rounding="onnx", convert=True, compress="all", sparse=False
        )
        for _ in range(2)
    )
    assert first.library.files == second.library.files
    assert first.compressed and all(c.stored_bytes < 0.4 * c.raw_bytes for c in first.compressed)


def test_pruned_weights_take_the_smaller_of_their_code_and_a_sparse_format() -> None:
    """With the sparse formats on (the default): at 80 % zeros every weight codes smaller than its CSR and
    is stored coded; at 95 % the CSR of the 3x3 convolution and the dense layer is smaller and they stay
    sparse, the report saying so."""
    for zeros, coded in ((0.8, {"w2", "w6", "w8"}), (0.95, {"w6"})):
        model = load_model_bytes(compress_cnn(zeros))
        plain, packed = (
            compiler.compile_module(model.mod, model_name="m", rounding="onnx", convert=True, compress=c)
            for c in ("off", "all")
        )
        assert {c.weight for c in packed.compressed} == coded, (zeros, packed.compressed)
        left = {n.weight: n.reason for n in packed.not_compressed}
        assert set(left) == {"w2", "w6", "w8"} - coded, left
        assert all(r.startswith("stored sparse") for r in left.values()), left
        assert packed.stored_weights_bytes < plain.stored_weights_bytes


def test_a_flash_budget_the_weights_cannot_fit_is_refused() -> None:
    model = load_model_bytes(compress_cnn())
    plain = compiler.compile_module(model.mod, model_name="cnn", rounding="onnx", convert=True)
    with pytest.raises(BudgetError, match=r"over the flash budget of 1000 B by \d+ B"):
        compiler.compile_module(
            model.mod, model_name="cnn", rounding="onnx", convert=True, compress="auto", flash_budget=1000
        )
    # A budget compression meets: the fewest weights coded (the dense layer saves the most per decode).
    budget = plain.stored_weights_bytes - 500
    fit = compiler.compile_module(
        model.mod, model_name="cnn", rounding="onnx", convert=True, compress="auto", flash_budget=budget
    )
    assert fit.stored_weights_bytes <= budget and [c.weight for c in fit.compressed] == ["w8"]
    with pytest.raises(BadOptionError, match="needs a flash budget"):
        compiler.compile_module(model.mod, model_name="cnn", compress="auto")


def test_a_flash_budget_codes_first_the_weights_the_schedule_decodes_once() -> None:
    """The 3x3 convolution's weights code better (sigma 10) than the dense layer's (sigma 40), but the
    plain schedule (row bands) reads them once per output row: coding them would decode them per row or
    make layer by layer (more SRAM) the cheaper schedule. The dense layer's, decoded once, are coded
    first, and the budget they meet keeps the plain schedule and its SRAM."""
    model = load_model_bytes(compress_cnn(dense_sigma=40.0))
    plain = compiler.compile_module(model.mod, model_name="cnn", rounding="onnx", convert=True)
    assert plain.schedule == "row bands", plain.schedule
    saved = {c.name: c for c in compiler.compressible(plain.graph)}
    dense, conv = saved["w8"], saved["w2"]
    # Per decode instruction, the convolution saves more: a ranking by that alone codes it first.
    assert conv.saved / conv.decode_instructions > dense.saved / dense.decode_instructions
    assert conv.saved >= dense.saved
    budget = plain.stored_weights_bytes - dense.saved
    fit = compiler.compile_module(
        model.mod, model_name="cnn", rounding="onnx", convert=True, compress="auto", flash_budget=budget
    )
    assert [c.weight for c in fit.compressed] == ["w8"], fit.compressed
    assert fit.stored_weights_bytes <= budget
    assert fit.schedule == "row bands" and fit.plan.arena_bytes == plain.plan.arena_bytes


def load_model_bytes(proto: object) -> object:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        path.write_bytes(proto.SerializeToString())  # type: ignore[attr-defined]
        return load_model(path)
