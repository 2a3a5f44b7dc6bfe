"""Every model of the test zoo, compiled, run on every emulated board and verified against its reference.

ONNX models are compared with ``onnx.reference``, TFLite models with the ``tflite-micro`` interpreter,
on seeded random inputs; the float tolerance is 1e-4 (scaled by the output magnitude above 1).
"""

from __future__ import annotations

import pytest

from tests.zoo import ALL_MODELS, write_model
from tvm_mcu import api
from tvm_mcu.targets.board import list_boards

BOARDS = [b.name for b in list_boards()]


@pytest.mark.emulator
@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_verify_on_board(name, board, tmp_path):
    model = write_model(name, tmp_path)
    v = api.verify(model, board, tmp_path / "out", seed=7)
    r = v.report
    assert v.passed, f"{name} on {board}: max abs error {r.max_abs_error} > {r.tolerance}"
    assert r.instructions and r.instructions > 0
    assert r.stack_bytes is not None and 0 < r.stack_bytes < 4096
    # the arena never exceeds the sum of all intermediate tensors, and never beats its own lower bound
    intermediates = sum(op.output_bytes + op.scratch_bytes for op in r.ops)
    assert r.arena_lower_bound_bytes <= r.arena_bytes <= intermediates
    # the operators run in the order that minimises the whole tensors alive at once
    assert r.whole_buffer_peak_bytes == r.whole_buffer_bound_bytes
    # The firmware holds the weights as the library stores them (sparse ones compressed) and the code.
    assert (r.stored_weights_bytes > 0) == (r.weights_bytes > 0)
    assert r.stored_weights_bytes <= r.weights_bytes * 2 and r.flash_bytes > r.stored_weights_bytes
    assert r.library_warnings == (), "the generated library must build warning-free with -Wall -Wextra"
