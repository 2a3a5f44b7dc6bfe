"""PruneChannels: removes planned channels from weights, biases and shapes; exact on zero channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.prune_helpers import inference_model, random_inputs, run_llvm, zero_channels
from tests.zoo import ONNX_MODELS
from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.analysis.channels import channel_groups
from tvm_mcu.errors import BadOptionError
from tvm_mcu.passes.relax.prune_channels import PruneChannels


def _conv_relu_conv(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, w1.shape[1], 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, _tvm.relax_const(w1), padding=[1, 1, 1, 1]), name_hint="c1")
            y = bb.emit(relax.op.add(y, _tvm.relax_const(b1)), name_hint="b1")
            y = bb.emit(relax.op.nn.relu(y), name_hint="r1")
            y = bb.emit(relax.op.nn.conv2d(y, _tvm.relax_const(w2)), name_hint="c2")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_prunes_outputs_of_one_conv_and_inputs_of_the_next() -> None:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    before = _conv_relu_conv(w1, b1, w2)
    plan = channel_groups(before)
    (group,) = plan.prunable
    assert (group.size, group.tensors) == (4, ("c1", "b1", "r1"))
    after = PruneChannels(keep={group.gid: [0, 2]})(before)
    expected = _conv_relu_conv(w1[[0, 2]], b1[:, [0, 2]], w2[:, [0, 2]])
    # The pass re-emits the output through an output binding; compare the computing bindings.
    after_binds = [b.value for blk in after["main"].body.blocks for b in blk.bindings][:4]
    expected_binds = [b.value for blk in expected["main"].body.blocks for b in blk.bindings][:4]
    for got, want in zip(after_binds, expected_binds, strict=True):
        _tvm.assert_structural_equal(got.args[1:], want.args[1:], map_free_vars=True)
    assert _tvm.tensor_shape(after["main"].ret_ty) == (1, 3, 6, 6)


def test_keeping_every_channel_returns_the_module_unchanged() -> None:
    rng = np.random.default_rng(1)
    mod = _conv_relu_conv(
        rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        np.zeros((1, 4, 1, 1), np.float32),
        rng.standard_normal((3, 4, 1, 1)).astype(np.float32),
    )
    plan = channel_groups(mod)
    assert PruneChannels(keep={plan.prunable[0].gid: [0, 1, 2, 3]})(mod).same_as(mod)
    assert PruneChannels(keep={})(mod).same_as(mod)


def test_the_input_module_is_not_mutated(tmp_path: Path) -> None:
    _, mod = inference_model("resnet_block", tmp_path)
    text = mod.script(show_meta=True)
    plan = channel_groups(mod)
    PruneChannels(keep={g.gid: [0] for g in plan.prunable})(mod)
    assert mod.script(show_meta=True) == text


@pytest.mark.parametrize("name", [*ONNX_MODELS], ids=str)
def test_pruning_zero_channels_is_bit_identical(name: str, tmp_path: Path) -> None:
    """Every other channel of every prunable group zeroed, then pruned: the same outputs, bit for bit."""
    imported, mod = inference_model(name, tmp_path)
    plan = channel_groups(mod)
    keep = {g.gid: list(range(0, g.size, 2)) for g in plan.prunable}
    zeroed = zero_channels(mod, plan, keep)
    pruned = PruneChannels(keep=keep)(zeroed)
    xs = random_inputs(imported)
    for got, want in zip(run_llvm(pruned, xs), run_llvm(zeroed, xs), strict=True):
        assert np.array_equal(got, want)
    if keep:
        # Something was removed: the pruned model has fewer constants' elements.
        def size(m: tvm.IRModule) -> int:
            found: list[int] = []
            _tvm.structural_walk(
                m["main"], (_tvm.RelaxConst, lambda c: found.append(_tvm.const_value(c).size))
            )
            return sum(found)

        assert size(pruned) < size(zeroed)


def test_depthwise_groups_follow_the_channels(tmp_path: Path) -> None:
    _, mod = inference_model("mobilenet_block", tmp_path)
    plan = channel_groups(mod)
    (group,) = plan.prunable
    pruned = PruneChannels(keep={group.gid: list(range(5))})(mod)
    groups = [
        int(b.value.attrs.groups)
        for blk in pruned["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, relax.Call) and _tvm.op_name(b.value) == "relax.nn.conv2d"
    ]
    assert groups == [1, 5, 1]


def test_flatten_into_dense_drops_each_channels_block_of_features(tmp_path: Path) -> None:
    _, mod = inference_model("conv_flatten_fc", tmp_path)
    plan = channel_groups(mod)
    conv2 = next(g for g in plan.groups if g.label == "Conv 'conv_8'")
    pruned = PruneChannels(keep={conv2.gid: [1, 3]})(mod)
    shapes = [_tvm.tensor_shape(b.var.ty) for blk in pruned["main"].body.blocks for b in blk.bindings]
    # 2 channels of 3x3 flattened: 18 features; the dense weight keeps the matching 18 rows.
    assert (1, 18) in shapes
    weights = [
        _tvm.const_value(b.value.args[1]).shape
        for blk in pruned["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, relax.Call) and _tvm.op_name(b.value) == "relax.matmul"
    ]
    assert weights[0] == (18, 12)


@pytest.mark.parametrize(
    ("keep", "match"),
    [
        ({99: [0]}, "no channel group 99"),
        ({1: []}, "at least one"),
        ({1: [0, 0]}, "distinct"),
        ({1: [6]}, "0..5"),
        ({4: [0]}, "cannot be pruned: model output"),
        ({0: [0]}, "cannot be pruned: model input"),
    ],
    ids=["unknown-group", "empty", "repeated", "out-of-range", "pinned-output", "pinned-input"],
)
def test_bad_keep_is_a_clear_error(keep: dict[int, list[int]], match: str, tmp_path: Path) -> None:
    _, mod = inference_model("conv_flatten_fc", tmp_path)
    with pytest.raises(BadOptionError, match=match):
        PruneChannels(keep=keep)(mod)


def test_composes_in_a_users_sequential(tmp_path: Path) -> None:
    _, mod = inference_model("conv_flatten_fc", tmp_path)
    seq = tvm.transform.Sequential([PruneChannels(keep={1: [0, 1, 2]}), relax.transform.FoldConstant()])
    out = seq(mod)
    assert (1, 3, 6, 6) in [
        _tvm.tensor_shape(b.var.ty) for blk in out["main"].body.blocks for b in blk.bindings
    ]
