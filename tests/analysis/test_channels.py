"""Channel dependency groups: one rule per op kind, pinned groups carry their reason, the plan prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prune_helpers import inference_model
from tvm_mcu._tvm import relax
from tvm_mcu.analysis.channels import channel_groups

# name -> (size, prunable, reason fragment) of each group, in plan order.
EXPECTED = {
    "resnet_block": [
        (3, False, "model input 'x'"),
        # The stem conv, both convs' outputs the first residual add joins, and the block's output.
        (8, True, ""),
        (8, True, ""),
        (16, True, ""),
        # The second block: its 3x3 conv and the 1x1 projection shortcut, joined by the add.
        (16, True, ""),
        (10, False, "model output"),
    ],
    "inception_concat": [
        (8, False, "model input 'x'"),
        # Concat maps offsets: each branch is its own group, and the concat output is the model's.
        (4, False, "model output"),
        (4, True, ""),
        (6, False, "model output"),
        (2, False, "model output"),
        (2, False, "model output"),
    ],
    "mobilenet_block": [
        # The projection conv's outputs are added to the model input: one group with it, pinned.
        (8, False, "model input 'x'"),
        # Expand conv, depthwise conv: one group (depthwise couples its inputs and outputs).
        (16, True, ""),
    ],
    "conv_grouped_depthwise": [
        (4, False, "model input 'x'"),
        (8, False, "grouped convolution 'conv_3' (groups=2)"),
        (6, False, "model output"),
    ],
    "conv_flatten_fc": [
        (2, False, "model input 'x'"),
        (6, True, ""),
        (4, True, ""),
        (12, True, ""),
        (5, False, "model output"),
    ],
    "gemm_head": [
        (8, False, "model input 'x'"),
        (16, True, ""),
        (10, False, "softmax 'softmax_10' normalises over the channels"),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=str)
def test_groups_of_zoo_models(name: str, tmp_path: Path) -> None:
    _, mod = inference_model(name, tmp_path)
    plan = channel_groups(mod)
    got = [(g.size, g.prunable, g.reason) for g in plan.groups]
    assert [(s, p) for s, p, _ in got] == [(s, p) for s, p, _ in EXPECTED[name]]
    for (_, _, reason), (_, _, fragment) in zip(got, EXPECTED[name], strict=True):
        assert fragment in reason and (fragment or not reason)


def test_flatten_maps_each_channel_to_its_block_of_features(tmp_path: Path) -> None:
    _, mod = inference_model("conv_flatten_fc", tmp_path)
    plan = channel_groups(mod)
    flat = next(info for info in plan.infos.values() if len(info.nodes) == 36)
    units = [plan.unit_of[n] for n in flat.nodes]
    # 4 channels of 3x3, row-major: 9 consecutive features per channel.
    assert [len(set(units[k * 9 : (k + 1) * 9])) for k in range(4)] == [1, 1, 1, 1]
    assert len(set(units)) == 4


def test_the_plan_is_deterministic_and_prints(tmp_path: Path) -> None:
    _, mod = inference_model("resnet_block", tmp_path)
    first, second = channel_groups(mod), channel_groups(mod)
    assert str(first) == str(second)
    text = str(first)
    assert "model output of Gemm 'gemm_60'" in text and "prunable" in text.splitlines()[0]


def test_an_op_without_a_rule_ends_its_group_with_the_reason() -> None:
    import numpy as np

    from tvm_mcu import _tvm

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 4, 4), "float32"))
    w = _tvm.relax_const(np.ones((4, 2, 1, 1), np.float32))
    w2 = _tvm.relax_const(np.ones((3, 4, 1, 1), np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w), name_hint="conv")
            y = bb.emit(relax.op.variance(y, axis=[2, 3], keepdims=True), name_hint="act")
            y = bb.emit(relax.op.nn.conv2d(y, w2), name_hint="conv2")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    plan = channel_groups(bb.get())
    conv = next(g for g in plan.groups if g.label == "nn.conv2d 'conv'")
    assert not conv.prunable
    assert (
        conv.reason
        == "no channel rule for relax.variance ('act'): a variance (instance normalisation) has no rule"
    )
