"""The micro-kernels under every schedule: int8 TFLite models bit-exact with tflite-micro on a core with
the DSP extension (SMLAD, SMMULR) and one without, whichever schedule runs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.schedules import sample
from tests.zoo import write_model
from tvm_mcu import api, compiler
from tvm_mcu.frontend import load_model

pytestmark = pytest.mark.emulator


def _schedules(path: Path) -> list[str]:
    """The compiler's candidate schedules for the model (row bands of these blocks: test_int8.py)."""
    model = load_model(path)
    return [c.label for c in compiler.plan_schedules(model.mod, model_name=model.name).candidates]


@pytest.mark.parametrize(
    "name",
    [
        # int8_ds_cnn_block's operators and schedules are in its two-block chain's (test time)
        "int8_ds_cnn_two_blocks",
        "int8_sparse_conv_block",
        "int8_element_sparse_conv_block",
        "int8_resnet_block",
    ],
)
def test_every_schedule_is_bit_exact_on_the_kernels(name: str, tmp_path: Path) -> None:
    path = write_model(name, tmp_path)
    labels = _schedules(path)
    assert len(labels) >= 2
    for k, label in enumerate(sample(labels)):
        for board in ("mps2-an386", "mps2-an385") if k == 0 else ("mps2-an386",):
            v = api.verify(path, board, tmp_path / f"{k}_{board}", seed=k, schedule=label)
            assert v.report.schedule == label
            assert v.passed and v.report.max_abs_error == 0.0, (label, board, v.report.worst_difference)
            source = (tmp_path / f"{k}_{board}" / "model.c").read_text()
            assert "tvmmcu_dot" in source, label  # the convolutions run on the kernels
            # The pointwise and 3x3 convolutions' weights stored blocked, read so (dense ones).
            if k == 0 and "sparse" not in name:
                assert "tvmmcu_dot4b_" in source, label
                assert "blocked by four channels" in (tmp_path / f"{k}_{board}" / "model.c").read_text()


def test_a_tight_sram_budget_stays_bit_exact(tmp_path: Path) -> None:
    path = write_model("int8_ds_cnn_block", tmp_path)
    plain = api.compile_model(path, "mps2-an386", tmp_path / "plain", in_place=False, partial_execution=False)
    budget = plain.report.arena_bytes + plain.report.io_bytes - 1  # below what layer by layer needs
    tight = api.compile_model(path, "mps2-an386", tmp_path / "tight", sram_budget=budget)
    assert tight.report.arena_bytes + tight.report.io_bytes <= budget
    v = api.verify(path, "mps2-an386", tmp_path / "verify", seed=3, schedule=tight.report.schedule)
    assert v.passed and v.report.max_abs_error == 0.0


def _random_layers(seed: int) -> bytes:
    """A seeded random int8 TFLite network for the kernels: a convolution of random size, stride,
    padding and channel count (rarely a multiple of 4), a depthwise one, maybe another convolution with
    an output scale small enough for the requantisation to shift left, then a dense layer."""
    from tests.zoo.tflite_int8 import AF, SAME, VALID, Int8Writer

    rng = np.random.default_rng(1000 + seed)
    w = Int8Writer(seed=2000 + seed)
    h, wd = (int(v) for v in rng.integers(3, 12, 2))
    c = int(rng.integers(1, 11))
    zp = int(rng.integers(-128, 128))
    x = w.activation("input", (1, h, wd, c), float(rng.uniform(0.01, 0.1)), zp)
    acts = [AF.NONE, AF.RELU, AF.RELU6]
    k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    pad = SAME if rng.random() < 0.6 or min(h, wd) < max(k) else VALID
    # At least two channels into the depthwise layer: TVM's importer reads one channel's per-channel
    # weight scale as per-tensor and rejects its quantized dimension.
    y = w.conv2d("c1", x, int(rng.integers(2, 14)), k, int(rng.integers(1, 3)), pad, acts[rng.integers(3)])
    kd = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    y = w.depthwise(
        "dw", y, kd, int(rng.integers(1, 3)), int(rng.integers(1, 3)), SAME, acts[rng.integers(3)]
    )
    if rng.random() < 0.6:
        s, _ = w.params(y)
        # An output scale below the product of the scales: multipliers above one, a left shift.
        tiny = (s * float(rng.uniform(0.05, 0.5)), int(rng.integers(-20, 20)))
        y = w.conv2d("c2", y, int(rng.integers(1, 9)), (1, 1), 1, SAME, AF.NONE, out_params=tiny)
    _, oh, ow, oc = w.shape(y)
    y = w.fully_connected("fc", w.reshape("flat", y, (1, oh * ow * oc)), int(rng.integers(1, 11)))
    return w.finish([x], [y], f"kernels_{seed}")


# Seeds 106 and 108 (fuzz beyond the tests): a 60-input dense layer whose dot product's tail GCC warned
# about in one translation unit; the library must build warning-free.
KERNEL_SEEDS = (*range(24), 106, 108)


@pytest.mark.parametrize("seed", KERNEL_SEEDS)
def test_random_layers_are_bit_exact_with_tflite_micro(seed: int, tmp_path: Path) -> None:
    """The kernel fuzz sample: random shapes, strides, paddings, channel counts and zero points, on the
    Cortex-M4 (SMLAD, SMMULR) against the tflite-micro interpreter."""
    path = tmp_path / f"kernels_{seed}.tflite"
    path.write_bytes(_random_layers(seed))
    v = api.verify(path, "mps2-an386", tmp_path / "out", seed=seed)
    assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
    assert v.report.library_warnings == (), v.report.library_warnings


def random_sparse_layers(seed: int) -> bytes:
    """A seeded random int8 TFLite network whose convolutions keep a random fraction of their filterlets
    (stored sparse): a convolution of random map size (odd ones too), kernel, stride, padding and
    channel counts (multiples of 8 or not), then a 3x3 one, maybe strided, then a dense layer."""
    from tests.zoo.tflite_int8 import AF, SAME, VALID, Int8Writer

    rng = np.random.default_rng(3000 + seed)
    w = Int8Writer(seed=4000 + seed)
    h, wd = (int(v) for v in rng.integers(3, 15, 2))
    c = int(rng.choice([8, 12, 16, 20, 24]))  # at least MIN_DOT_TAPS: the sparse kernels read runs
    x = w.activation("input", (1, h, wd, c), float(rng.uniform(0.01, 0.1)), int(rng.integers(-128, 128)))
    k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    pad = SAME if rng.random() < 0.7 or min(h, wd) < max(k) else VALID
    acts = [AF.NONE, AF.RELU, AF.RELU6]
    out1 = int(rng.choice([8, 12, 16, 24]))
    keep1 = float(rng.uniform(0.1, 0.7))
    y = w.conv2d("c1", x, out1, k, int(rng.integers(1, 3)), pad, acts[rng.integers(3)], keep=keep1)
    y = w.conv2d(
        "c2",
        y,
        int(rng.integers(2, 17)),
        (3, 3),
        int(rng.integers(1, 3)),
        SAME,
        acts[rng.integers(3)],
        keep=float(rng.uniform(0.1, 0.7)),
    )
    _, oh, ow, oc = w.shape(y)
    y = w.fully_connected("fc", w.reshape("flat", y, (1, oh * ow * oc)), int(rng.integers(1, 11)))
    return w.finish([x], [y], f"sparse_{seed}")


# The sparse kernel fuzz sample (the same generator over 48 seeds beyond the tests: 0 differences).
SPARSE_SEEDS = tuple(range(8))


@pytest.mark.parametrize("seed", SPARSE_SEEDS)
def test_random_sparse_layers_are_bit_exact_with_tflite_micro(seed: int, tmp_path: Path) -> None:
    """Random filterlet-sparse convolutions, four pixels per call with the border staged, on the M4
    (SMLAD) for even seeds and the M3 (portable C) for odd ones, against the tflite-micro interpreter;
    each seed under one of the schedules the planner lists, in turn (row bands: four pixels of a row)."""
    path = tmp_path / f"sparse_{seed}.tflite"
    path.write_bytes(random_sparse_layers(seed))
    model = load_model(path)
    plan = compiler.plan_schedules(model.mod, model_name=model.name, convert=True)
    labels = [c.label for c in plan.candidates]
    board = "mps2-an386" if seed % 2 == 0 else "mps2-an385"
    v = api.verify(path, board, tmp_path / "out", seed=seed, schedule=labels[seed // 2 % len(labels)])
    assert v.passed and v.report.max_abs_error == 0.0, v.report.worst_difference
    assert v.report.library_warnings == (), v.report.library_warnings
    assert "filterlets kept (CSR)" in (tmp_path / "out" / "model.c").read_text()


@pytest.mark.parametrize("name", ["int8_ds_cnn_block", "int8_resnet_block"])
def test_halfword_weights_are_bit_exact_and_faster(name: str, tmp_path: Path) -> None:
    """``--weights int16``: the blocked kernels read pre-widened weights; still bit-exact with
    tflite-micro on the DSP path (M4) and the portable one (M3), fewer instructions, more flash."""
    path = write_model(name, tmp_path)
    plain = api.compile_model(path, "mps2-an386", tmp_path / "int8")
    assert plain.report.int16_weight_ops == ()
    for board in ("mps2-an386", "mps2-an385"):
        v = api.verify(path, board, tmp_path / f"int16_{board}", seed=5, weights="int16")
        assert v.passed and v.report.max_abs_error == 0.0, (board, v.report.worst_difference)
        assert v.report.int16_weight_ops, "no operator's weights were widened"
        source = (tmp_path / f"int16_{board}" / "model.c").read_text()
        assert "tvmmcu_dot4h_" in source and "as int16" in source
    inputs = api.model_inputs(load_model(path), input_path=None, seed=0)
    wide = api.run_compiled(tmp_path / "int16_mps2-an386", inputs)
    narrow = api.run_compiled(tmp_path / "int8", inputs)
    assert wide.report.instructions < narrow.report.instructions
    assert wide.report.flash_bytes > narrow.report.flash_bytes


def test_a_kernel_larger_than_its_input_builds_warning_free(tmp_path: Path) -> None:
    """Every window partial (a 5x5 kernel over a 3x3 input): the window kernel's whole-window path is
    dead, and GCC, seeing the arena's size in one translation unit, must not warn about it."""
    from tests.zoo.qdq_ops import QDQ_OPS

    path = tmp_path / "conv.onnx"
    path.write_bytes(QDQ_OPS["conv_larger_than_input"]("int8").SerializeToString())
    for board in ("mps2-an500", "mps2-an385"):
        v = api.verify(path, board, tmp_path / board, seed=1)
        assert v.passed, v.report.worst_difference
        assert v.report.library_warnings == (), v.report.library_warnings


def test_weights_pruned_elsewhere_are_stored_sparse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Convolutions whose weights keep 40 % and 55 % of their filterlets (zeros written by another tool)
    are stored as CSR over filterlets and run the sparse kernel: bit-exact, less flash than dense."""
    path = write_model("int8_sparse_conv_block", tmp_path)
    for board in ("mps2-an386", "mps2-an385"):
        v = api.verify(path, board, tmp_path / board, seed=4, schedule="layer by layer")
        assert v.passed and v.report.max_abs_error == 0.0, (board, v.report.worst_difference)
        source = (tmp_path / board / "model.c").read_text()
        assert source.count("filterlets kept (CSR)") == 2
        # Four pixels per call, the border's taps staged: no pixel left to the one-pixel kernel.
        assert source.count("tvmmcu_sparse4p_blob_s8s8(") == 4 and "tvmmcu_sparse_stage(" in source
        assert "tvmmcu_sparse1p" not in source
    monkeypatch.setattr(compiler, "SPARSE_MAX_KEPT", 0.0)
    monkeypatch.setattr(compiler, "ELEMENT_MAX_FLASH", 0.0)
    dense = api.compile_model(path, "mps2-an386", tmp_path / "dense", schedule="layer by layer")
    assert "tvmmcu_sparse1p" not in (tmp_path / "dense" / "model.c").read_text()
    sparse = api.compile_model(path, "mps2-an386", tmp_path / "sparse_again", schedule="layer by layer")
    assert sparse.report.flash_bytes == dense.report.flash_bytes  # the same switch, off: no sparse
    monkeypatch.undo()
    sparse = api.compile_model(path, "mps2-an386", tmp_path / "sparse", schedule="layer by layer")
    assert sparse.report.flash_bytes < dense.report.flash_bytes


def test_weights_pruned_element_wise_are_stored_element_sparse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A convolution keeping a quarter of its single weights (zeros anywhere) is stored as element CSR
    beside one stored as filterlet CSR: bit-exact on the M4 and M3, its array exactly the kept values,
    one index byte each and the row pointers, less flash than dense."""
    import re

    path = write_model("int8_element_sparse_conv_block", tmp_path)
    for board in ("mps2-an386", "mps2-an385"):
        v = api.verify(path, board, tmp_path / board, seed=6, schedule="layer by layer")
        assert v.passed and v.report.max_abs_error == 0.0, (board, v.report.worst_difference)
        source = (tmp_path / board / "model.c").read_text()
        assert source.count("filterlets kept (CSR)") == 1
        assert "tvmmcu_esparse4p_blob_s8s8(" in source and "tvmmcu_esparse1p_edge_s8s8(" in source
    found = re.search(
        r"int8\[(\d+),3,3,32\], (\d+) of \d+ values kept \(element CSR\) \*/\n.*_ecsr\[(\d+)\]", source
    )
    assert found is not None
    out_channels, kept, stored = (int(g) for g in found.groups())
    assert stored == kept + kept + 2 * (out_channels + 1)  # values, distances, row pointers (no bridge)
    sparse = api.compile_model(path, "mps2-an386", tmp_path / "sparse", schedule="layer by layer")
    monkeypatch.setattr(compiler, "ELEMENT_MAX_FLASH", 0.0)
    dense = api.compile_model(path, "mps2-an386", tmp_path / "dense", schedule="layer by layer")
    assert "esparse" not in (tmp_path / "dense" / "model.c").read_text()
    assert dense.report.flash_bytes - sparse.report.flash_bytes > out_channels * 9 * 32 - stored - 1024
