"""The one cost model (tvm_mcu/schedule/cost.py): every estimate of instructions comes from it."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest

from tests.zoo import write_model
from tests.zoo.qdq_ops import QDQ_OPS
from tvm_mcu import compiler, resource_model
from tvm_mcu.frontend import load_model
from tvm_mcu.schedule import choice, cost, partial
from tvm_mcu.schedule.graph import Graph, Step, Tensor


def _costs(path: Path) -> cost.Costs:
    model = load_model(path)
    sched = compiler.plan_schedules(model.mod, model_name=model.name)
    return cost.for_model(sched.graph, compiler.channels_last(model.mod))


def test_the_simd_kernels_cost_applies_to_channels_last_int8_models_only(tmp_path: Path) -> None:
    assert _costs(write_model("int8_ds_cnn_block", tmp_path)) == cost.INT8  # TFLite: NHWC, int8
    assert _costs(write_model("mobilenet_block", tmp_path)) == cost.FLOAT  # float
    qdq = tmp_path / "conv.onnx"
    qdq.write_bytes(QDQ_OPS["conv_uint8_weights"]("int8").SerializeToString())
    assert _costs(qdq) == cost.INT8_NCHW  # ONNX QDQ: NCHW convolutions keep TVM's loops
    assert cost.INT8.per_mac < cost.FLOAT.per_mac < cost.INT8_NCHW.per_mac


def test_no_other_module_holds_its_own_instruction_constants() -> None:
    """The scheduler, the row-chain cutter and the resource model read cost.py (the numbers drifted
    apart when each had a copy)."""
    for module in (choice, partial, resource_model, compiler):
        names = [n for n in vars(module) if n.startswith("INSTR_PER") or n == "CHAIN_OVERHEAD"]
        assert names == [], (module.__name__, names)


def test_estimates_scale_with_the_kernels_cost() -> None:
    macs = {"a": 1000, "b": 3000}
    assert cost.INT8.instructions(macs) == 4000 * cost.INT8.per_mac
    assert cost.FLOAT.instructions({}) == cost.FLOAT.per_mac  # at least one MAC's


def test_compressed_weights_decode_once_per_visit_of_their_block_loop() -> None:
    """Layer by layer once per inference; in a row band once per output row; in place once per pixel."""
    w = np.zeros((8, 3, 3, 16), "int8")  # 1,152 bytes
    tensors = {
        "x": Tensor("x", (1, 6, 5, 16), "int8", "input"),
        "w": Tensor("w", w.shape, "int8", "weight"),
        "y": Tensor("y", (1, 6, 5, 8), "int8", "output"),
    }
    conv = Step("conv", "f", ("x", "w"), "y", "conv2d")
    layers = Graph(tensors, (conv,), ("x",), ("y",), {"w": w})
    once = cost.decode_instructions(layers, layers, frozenset({"w"}))
    assert once == w.nbytes * cost.DECODE_PER_BYTE
    rows = attrs.evolve(layers, steps=(attrs.evolve(conv, kind="chain", partial="rows:axis=1"),))
    assert cost.decode_instructions(rows, layers, frozenset({"w"})) == pytest.approx(6 * once)
    in_place = attrs.evolve(layers, steps=(attrs.evolve(conv, in_place="pointwise"),))
    assert cost.decode_instructions(in_place, layers, frozenset({"w"})) == pytest.approx(30 * once)
    assert cost.decode_instructions(layers, layers, frozenset()) == 0.0
    # What a flash budget codes first: the weights the schedule decodes once.
    assert cost.decoded_once(layers, frozenset({"w"})) == {"w"}
    assert cost.decoded_once(rows, frozenset({"w"})) == cost.decoded_once(in_place, frozenset({"w"})) == set()
