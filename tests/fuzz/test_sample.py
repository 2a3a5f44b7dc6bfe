"""A fixed sample of fuzz cases, compiled, run on the emulated boards and compared with the reference
through the fuzzer's own runner: each must pass, or be refused with one clean line.

The seeds were picked by feature coverage (a greedy cover of ``test_generate.REQUIRED`` over seeds
0..299 with ``features``), not by whether they pass today: together the float seeds hold every required
feature, and the int8 seeds, spread over the three quantisers, most of them again.
``test_generate.test_sample_covers_the_features`` keeps that true when the generator changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tvm_mcu.fuzz import random_cnn
from tvm_mcu.fuzz.run import PASS, REFUSED, Case, board_for, execute
from tvm_mcu.targets.board import list_boards

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
)
BOARDS = tuple(b.name for b in list_boards())
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
