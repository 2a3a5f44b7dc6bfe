"""A fixed sample of fuzz cases, compiled, run on the emulated boards and compared with the reference
through the fuzzer's own runner: each must pass, or be refused with one clean line.

The seeds were picked by feature coverage (a greedy cover of ``test_generate.REQUIRED`` over seeds
0..299 with ``features``), not by whether they pass today: together the float seeds hold every required
feature, and the int8 seeds, spread over the three quantisers, most of them again.
``test_generate.test_sample_covers_the_features`` keeps that true when the generator changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tvm_mcu import api
from tvm_mcu.fuzz import random_cnn
from tvm_mcu.fuzz.quantize import PRUNE
from tvm_mcu.fuzz.run import PASS, PRUNE_SHARE, REFUSED, Case, board_for, execute
from tvm_mcu.targets.board import development_boards

FLOAT_SEEDS = (126, 260, 132, 68, 69, 87, 172, 11, 22, 122, 12, 182)
INT8_CASES = (
    (230, "tvm-mcu"),
    (44, "ort-s8"),
    (125, "tvm-mcu"),
    (200, "ort-u8"),
    (192, "ort-s8"),
    (210, "tvm-mcu"),
    (7, "ort-s8"),
    (119, "ort-u8"),
    # onnxruntime's int4 weights: the packed kernels (opset 21 Q/DQ; com.microsoft's below it).
    (1001, "ort-s4"),
    (1010, "ort-u4"),
    # onnxruntime's int8 weights requantised to int2 (a 1x1 convolution's four per byte: the crumbs).
    (1001, "ort-s2"),
)
# Float seeds through `tvm-mcu prune` (the "prune" kind): one pruned for SRAM, one with nothing to prune.
PRUNE_SEEDS = (2, 10, 11)
BOARDS = tuple(b.name for b in development_boards())
CASES = [Case(s, "float", board_for(s, 0, BOARDS)) for s in FLOAT_SEEDS] + [
    Case(s, v, board_for(s, k, BOARDS)) for k, (s, v) in enumerate(INT8_CASES)
]


@pytest.mark.emulator
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.name}-{c.board}")
def test_sample_case(case: Case, tmp_path: Path) -> None:
    outcome = execute(case, random_cnn(case.seed).SerializeToString(deterministic=True), tmp_path)
    clean_refusal = outcome.verdict == REFUSED and not outcome.bad_message
    assert outcome.verdict == PASS or clean_refusal, (
        f"{outcome.verdict}: {outcome.message}\n{outcome.bad_message}\n{outcome.detail}"
    )


def _weights(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


@pytest.mark.emulator
def test_a_pruned_seed_is_narrower_and_verifies(tmp_path: Path) -> None:
    """Seed 2 (its SRAM peak sits on tensors pruning cannot narrow: pruned to 80 % of its MACs): fewer
    weights and MACs, and the pruned model matches the reference on the board."""
    seed = PRUNE_SEEDS[0]
    case = Case(seed, PRUNE, board_for(seed, 0, BOARDS))
    original = random_cnn(seed)
    outcome = execute(case, original.SerializeToString(deterministic=True), tmp_path)
    assert outcome.verdict == PASS, f"{outcome.verdict}: {outcome.message}\n{outcome.detail}"
    pruned = onnx.load(tmp_path / "pruned.onnx")
    assert _weights(pruned) < _weights(original)
    before = api.compile_model(tmp_path / "model.onnx", case.board, tmp_path / "b0").report
    after = api.compile_model(tmp_path / "pruned.onnx", case.board, tmp_path / "b1").report
    assert after.macs <= PRUNE_SHARE * before.macs


def test_a_seed_with_nothing_to_prune_is_refused_in_one_line(tmp_path: Path) -> None:
    """Seed 10: every channel group is pinned (its input, its output); one line, each group's reason."""
    seed = PRUNE_SEEDS[1]
    case = Case(seed, PRUNE, board_for(seed, 0, BOARDS))
    outcome = execute(case, random_cnn(seed).SerializeToString(deterministic=True), tmp_path)
    assert outcome.verdict == REFUSED and not outcome.bad_message, outcome.bad_message
    assert "no prunable channel group (input 'input': model input 'input'; " in outcome.message


def test_a_pinned_output_without_an_onnx_node_is_named_by_its_place(tmp_path: Path) -> None:
    """Seed 11: a model output the importer made (no ONNX node behind its variable) was named by its
    Relax variable ('lv9'): the refusal now gives its place among the outputs."""
    seed = PRUNE_SEEDS[2]
    case = Case(seed, PRUNE, board_for(seed, 0, BOARDS))
    outcome = execute(case, random_cnn(seed).SerializeToString(deterministic=True), tmp_path)
    assert outcome.verdict == REFUSED and not outcome.bad_message, outcome.bad_message
    assert "model output 1 of 2" in outcome.message and "'lv" not in outcome.message


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("seed", "variant", "board"),
    [
        (127, "ort-u8", "mps2-an500"),
        (135, "tvm-mcu", "lm3s6965evb"),
        (139, "ort-u8", "lm3s6965evb"),
        (71, "tvm-mcu", "mps2-an385"),
    ],
)
def test_compressed_weight_cases(seed: int, variant: str, board: str, tmp_path: Path) -> None:
    """``--compress-weights all`` cases (each model's weights 60 % zeros first): each stores weights coded
    and matches the reference. Seed 139's dense layer, stored element-sparse (before coding was preferred
    at this sparsity) and calling nothing else from the kernels' header, failed to link: the header was
    included only for ``tvmmcu_dot`` calls. Seed 71 found the wrong outputs of
    ``test_sparse_blocks.test_an_element_sparse_convolution_without_an_inside_row_is_bit_exact``."""
    case = Case(seed, variant, board, "all")
    outcome = execute(case, random_cnn(seed).SerializeToString(deterministic=True), tmp_path)
    assert outcome.verdict == PASS, f"{outcome.verdict}: {outcome.message}\n{outcome.detail}"
    assert outcome.coded_weights > 0, outcome.coded_weights


@pytest.mark.emulator
def test_an_all_padding_window_call_points_into_its_buffer(tmp_path: Path) -> None:
    """Fuzz seed 5302: a 3x3 convolution dilated 2 over a 2x2 input, pads (2, 1, 0, 2); after
    SplitBorders a kernel row is all padding, and its window call passed &lv2[-20], a pointer the kernel
    never reads but C may not form (GCC: -Warray-bounds in model.c, a failed case). The padding call
    now passes the buffer's start."""
    case = Case(5302, "tvm-mcu", "mps2-an386", "all")
    outcome = execute(case, random_cnn(5302).SerializeToString(deterministic=True), tmp_path)
    assert outcome.verdict == PASS, f"{outcome.verdict}: {outcome.message}\n{outcome.detail}"
