"""int4 weights: an int8 QDQ model whose convolution and dense weights hold values in [-8, 7] stores the
weights the blocked kernels read two per byte (PackWeights, ``weights="auto"``, the default), bit-exact
with the reference and with the same model built with its weights as bytes, on a core with the DSP
extension and one without, under every schedule; those weights take half their bytes in the ELF. int2
weights (values in [-2, 1]) the same, four per byte, a quarter of the bytes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.schedules import sample
from tests.zoo.qdq_ops import int4_cnn
from tvm_mcu import api, compiler
from tvm_mcu.frontend import load_model
from tvm_mcu.targets.elf import read_elf

pytestmark = pytest.mark.emulator


def _model(tmp_path: Path, bits: int = 4) -> Path:
    path = tmp_path / f"int{bits}_cnn.onnx"
    path.write_bytes(int4_cnn(bits).SerializeToString())
    return path


def _weight_symbols(out_dir: Path, suffix: str) -> dict[tuple[str, str], int]:
    """(weight, channel stride) -> bytes in the firmware of the weights stored as ``suffix`` (``_q``
    packed int4, ``_b`` blocked int8)."""
    image = read_elf(out_dir / api.FIRMWARE_DIR / "firmware.elf")
    pattern = re.compile(rf"tvmmcu_weight_(.+?){suffix}(\d*)$")
    found = {}
    for name, symbol in image.symbols.items():
        m = pattern.match(name)
        if m:
            found[(m.group(1), m.group(2))] = symbol.size
    return found


def _packed_and_plain(path: Path, board: str, tmp_path: Path, bits: int) -> tuple[Any, Any]:
    """``path`` verified as compiled (its weights packed) and with its weights as bytes, on the same
    kernels (channels-last asked for: the packed weights chose it) and the same schedule (the depthwise
    scratch of UnpackInt4Weights may tip the choice): both bit-exact, without warnings, with identical
    outputs."""
    packed = api.verify(path, board, tmp_path / f"int{bits}", seed=bits)
    plain = api.verify(
        path,
        board,
        tmp_path / "int8",
        seed=bits,
        weights="int8",
        channels_last=True,
        schedule=packed.report.schedule,
    )
    for v in (packed, plain):
        assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
        assert v.report.library_warnings == ()
    assert packed.report.schedule == plain.report.schedule
    assert all(np.array_equal(a, b) for a, b in zip(packed.outputs, plain.outputs, strict=True))
    return packed, plain


@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385"])
def test_int4_weights_are_packed_bit_exact_and_half_the_bytes(board: str, tmp_path: Path) -> None:
    path = _model(tmp_path)
    packed, plain = _packed_and_plain(path, board, tmp_path, 4)
    assert packed.report.layout.startswith("channels-last: the weights of")
    assert packed.report.int4_weight_ops and plain.report.int4_weight_ops == ()
    source = (tmp_path / "int4" / "model.c").read_text()
    assert "tvmmcu_dot4q_runs_s8s4" in source and "as int4 two per byte" in source
    assert "tvmmcu_dot4b_" not in source  # every blocked weight fits int4
    nibbles = _weight_symbols(tmp_path / "int4", "_q")
    blocked = _weight_symbols(tmp_path / "int8", "_b")
    assert len(nibbles) == 3 and nibbles.keys() == blocked.keys()  # the 3x3, 1x1 and dense weights
    assert all(2 * size == blocked[key] for key, size in nibbles.items()), (nibbles, blocked)
    # The firmware shrinks by those bytes, less the nibble kernels' extra code (inlined in each
    # operator: about 100 B each on the M4, 300 B on the M3).
    assert plain.report.flash_bytes > packed.report.flash_bytes
    # The depthwise weights (UnpackInt4Weights): 144 values in 72 bytes, unpacked into a scratch of 144
    # in the workspace once per call.
    depthwise = _weight_symbols(tmp_path / "int4", "_n")
    assert depthwise == {("w4", ""): 72}, depthwise
    assert "tvmmcu_dot_unpack4" in source and "unpacked into a scratch per call" in source
    stored = plain.report.stored_weights_bytes - packed.report.stored_weights_bytes
    assert stored == sum(nibbles.values()) + 72
    # The per-channel constants (int32 [C, 3]: 12 B a channel) stay as they are.
    assert (
        packed.report.stored_constants_bytes == plain.report.stored_constants_bytes == 12 * (8 + 16 * 3 + 12)
    )
    depthwise_ops = [o.name for o in packed.report.ops if "int4 unpacked per call" in o.weights_format]
    assert len(depthwise_ops) == 1 and set(depthwise_ops) <= set(packed.report.int4_weight_ops)


@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385"])
def test_int2_weights_are_packed_bit_exact_and_a_quarter_of_the_bytes(board: str, tmp_path: Path) -> None:
    path = _model(tmp_path, 2)
    packed, plain = _packed_and_plain(path, board, tmp_path, 2)
    source = (tmp_path / "int2" / "model.c").read_text()
    assert "tvmmcu_dot4c_runs_s8s2" in source and "as int2 four per byte" in source
    assert "tvmmcu_dot4b_" not in source and "tvmmcu_dot4q_" not in source
    crumbs = _weight_symbols(tmp_path / "int2", "_c")
    blocked = _weight_symbols(tmp_path / "int8", "_b")
    assert len(crumbs) == 3 and crumbs.keys() == blocked.keys()  # the 3x3, 1x1 and dense weights
    assert all(4 * size == blocked[key] for key, size in crumbs.items()), (crumbs, blocked)
    assert len(packed.report.int2_weight_ops) == 3 and plain.report.int2_weight_ops == ()
    # The depthwise weights stay int4, unpacked into the workspace per call (72 B).
    assert _weight_symbols(tmp_path / "int2", "_n") == {("w4", ""): 72}
    stored = plain.report.stored_weights_bytes - packed.report.stored_weights_bytes
    assert stored == 3 * sum(crumbs.values()) + 72


@pytest.mark.parametrize("bits", [4, 2])
def test_every_schedule_is_bit_exact_with_packed_weights(bits: int, tmp_path: Path) -> None:
    """Layer by layer, in place, channel slices (accumulating ones over 1 or 2 input channels a slice
    leave the 1x1 convolution's weights unblocked, as bytes) and row bands, each bit-exact on the M4 (the
    nibbles' or crumbs' SMLAD path), the first on the M3 too; each packs some weights (the dense layer's
    at least)."""
    path = _model(tmp_path, bits)
    model = load_model(path)
    plan = compiler.plan_schedules(model.mod, model_name=model.name, convert=True)
    labels = [c.label for c in plan.candidates]
    assert {"in place", "partial execution", "row bands"} <= set(labels), labels
    for k, label in enumerate(sample(labels)):
        for board in ("mps2-an386", "mps2-an385") if k == 0 else ("mps2-an386",):
            v = api.verify(path, board, tmp_path / f"{k}_{board}", seed=k, schedule=label)
            assert v.report.schedule == label
            assert v.passed and v.report.max_abs_error == 0.0, (label, board, v.report.worst_difference)
            assert v.report.int4_weight_ops if bits == 4 else v.report.int2_weight_ops, label
            # The depthwise weights two per byte, unpacked into the workspace, in every schedule.
            assert "tvmmcu_dot_unpack4(" in (tmp_path / f"{k}_{board}" / "model.c").read_text(), label


def test_the_library_is_deterministic_with_int4_weights(tmp_path: Path) -> None:
    path = _model(tmp_path)
    model = load_model(path)
    first, second = (
        compiler.compile_module(
            load_model(path).mod if k else model.mod, model_name=model.name, rounding="onnx"
        )
        for k in range(2)
    )
    assert first.int4_weight_ops
    assert first.library.files == second.library.files
