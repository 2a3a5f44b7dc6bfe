"""Every model of the test zoo, compiled, run on every emulated board and verified against its reference.

ONNX models are compared with ``onnx.reference``, TFLite models with the ``tflite-micro`` interpreter,
on seeded random inputs; the float tolerance is 1e-4 (scaled by the output magnitude above 1).
"""

from __future__ import annotations

import pytest

from tests.zoo import ALL_MODELS, write_model
from tvm_mcu import api
from tvm_mcu.targets.board import list_boards

# The emulated development boards (each its own QEMU machine); the real boards' profiles run on those
# machines, with their own limits (below).
BOARDS = [b.name for b in list_boards() if b.qemu_machine == b.name]
REAL_BOARDS = [b.name for b in list_boards() if b.qemu_machine != b.name]
# Every model on the Cortex-M4F and the Cortex-M3 (hardware and soft float, DSP and portable kernels);
# each on one of the other development boards in turn (M7, M33, the 64 KiB LM3S6965): every board sees
# a third of the zoo, and make test stays within its time (the fuzzer rotates over every board).
_EVERY = ("mps2-an386", "mps2-an385")
_OTHERS = [b for b in BOARDS if b not in _EVERY]
CASES = [(name, board) for name in ALL_MODELS for board in _EVERY if board in BOARDS] + [
    (name, _OTHERS[k % len(_OTHERS)]) for k, name in enumerate(ALL_MODELS) if _OTHERS
]


@pytest.mark.emulator
@pytest.mark.parametrize(("name", "board"), CASES)
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


# Every real board with an int8 model; a float one on an M4F and an M7 board (time).
REAL_CASES = [("int8_resnet_block", b) for b in REAL_BOARDS] + [
    ("mobilenet_block", b) for b in ("nucleo-l4r5zi", "stm32f746g-disco")
]


@pytest.mark.emulator
@pytest.mark.parametrize(("name", "board"), REAL_CASES)
def test_real_board_profiles_run_on_their_cores_machine(name, board, tmp_path):
    """A real board's profile builds for its core and runs on the QEMU machine with that core, linked
    into the board's own flash and SRAM sizes: the same outputs as the development board's build."""
    from tvm_mcu.targets.board import load_board

    model = write_model(name, tmp_path)
    b = load_board(board)
    v = api.verify(model, board, tmp_path / "out", seed=7)
    assert v.passed, (name, board, v.report.worst_difference)
    dev = api.verify(model, b.qemu_machine, tmp_path / "dev", seed=7)
    assert v.report.max_abs_error == dev.report.max_abs_error
    assert (tmp_path / "out" / "model.c").read_bytes() == (tmp_path / "dev" / "model.c").read_bytes()
    assert v.report.flash_bytes <= b.flash_bytes and b.clock_hz > 0


def test_a_model_too_big_for_a_real_board_is_refused_naming_its_limit(tmp_path):
    """The nRF52840's 256 KiB of SRAM: an activation of 300 KB does not fit, and the error says so."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tvm_mcu.errors import BudgetError

    w = numpy_helper.from_array(np.full((8, 3, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 96, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 96, 96])],
        [w],
    )
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(BudgetError, match=r"on nrf52840dk .* but the board has 262144 B"):
        api.compile_model(path, "nrf52840dk", tmp_path / "out")
    api.compile_model(path, "nucleo-l4r5zi", tmp_path / "fits")  # 640 KiB: it fits
