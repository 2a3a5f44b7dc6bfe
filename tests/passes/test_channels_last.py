"""ChannelsLast: NCHW convolutions, and the ops between them, compute NHWC; the interface is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from tvm.script import ir as I  # noqa: N812 (TVM's own spelling)
from tvm.script import relax as R  # noqa: N812

from tests.prune_helpers import run_llvm
from tvm_mcu import _tvm
from tvm_mcu._tvm import relax
from tvm_mcu.passes.relax.channels_last import ChannelsLast


@I.ir_module
class ConvPoolFlatten:
    @R.function
    def main(
        x: R.Tensor((1, 2, 6, 6), "float32"),
        w: R.Tensor((4, 2, 3, 3), "float32"),
        b: R.Tensor((1, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 36), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            a = R.add(c, b)
            r = R.nn.relu(a)
            p = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2])
            f = R.reshape(p, R.shape([1, 36]))
            R.output(f)
        return f


@I.ir_module
class ConvPoolFlattenExpected:
    @R.function
    def main(
        x: R.Tensor((1, 2, 6, 6), "float32"),
        w: R.Tensor((4, 2, 3, 3), "float32"),
        b: R.Tensor((1, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 36), "float32"):
        with R.dataflow():
            x_nhwc = R.permute_dims(x, axes=[0, 2, 3, 1])
            w_moved = R.permute_dims(w, axes=[0, 2, 3, 1])
            c = R.nn.conv2d(
                x_nhwc,
                w_moved,
                padding=[1, 1, 1, 1],
                data_layout="NHWC",
                kernel_layout="OHWI",
                out_layout="NHWC",
            )
            # A per-channel operand holds the same bytes in both layouts: a reshape.
            b_nhwc = R.reshape(b, R.shape([1, 1, 1, 4]))
            a = R.add(c, b_nhwc)
            r = R.nn.relu(a)
            p = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2], layout="NHWC", out_layout="NHWC")
            # Flatten's order is NCHW's: moved back first.
            p_nchw = R.permute_dims(p, axes=[0, 3, 1, 2])
            f = R.reshape(p_nchw, R.shape([1, 36]))
            R.output(f)
        return f


def test_conv_pool_flatten_before_expected():
    _tvm.assert_structural_equal(ChannelsLast()(ConvPoolFlatten), ConvPoolFlattenExpected)


@I.ir_module
class DepthwiseMeanOutput:
    @R.function
    def main(
        x: R.Tensor((1, 1, 5, 5), "float32"),
        w: R.Tensor((3, 1, 3, 3), "float32"),
        d: R.Tensor((3, 1, 3, 3), "float32"),
    ) -> R.Tuple(R.Tensor((1, 3), "float32"), R.Tensor((1, 3, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            e = R.nn.conv2d(c, d, padding=[1, 1, 1, 1], groups=3)
            s = R.nn.softmax(e, axis=1)
            m = R.mean(s, axis=[2, 3], keepdims=False)
            out = (m, e)
            R.output(out)
        return out


@I.ir_module
class DepthwiseMeanOutputExpected:
    @R.function
    def main(
        x: R.Tensor((1, 1, 5, 5), "float32"),
        w: R.Tensor((3, 1, 3, 3), "float32"),
        d: R.Tensor((3, 1, 3, 3), "float32"),
    ) -> R.Tuple(R.Tensor((1, 3), "float32"), R.Tensor((1, 3, 5, 5), "float32")):
        with R.dataflow():
            # One input channel: the same bytes in both layouts.
            x_nhwc = R.reshape(x, R.shape([1, 5, 5, 1]))
            w_moved = R.permute_dims(w, axes=[0, 2, 3, 1])
            c = R.nn.conv2d(
                x_nhwc,
                w_moved,
                padding=[1, 1, 1, 1],
                data_layout="NHWC",
                kernel_layout="OHWI",
                out_layout="NHWC",
            )
            # Depthwise weights as TFLite's, HWOI.
            d_moved = R.permute_dims(d, axes=[2, 3, 0, 1])
            e = R.nn.conv2d(
                c,
                d_moved,
                padding=[1, 1, 1, 1],
                groups=3,
                data_layout="NHWC",
                kernel_layout="HWOI",
                out_layout="NHWC",
            )
            s = R.nn.softmax(e, axis=3)
            # N, C kept in the same order: the result is NCHW's.
            m = R.mean(s, axis=[1, 2], keepdims=False)
            e_nchw = R.permute_dims(e, axes=[0, 3, 1, 2])
            out = (m, e_nchw)
            R.output(out)
        return out


def test_depthwise_softmax_mean_and_outputs_before_expected():
    _tvm.assert_structural_equal(ChannelsLast()(DepthwiseMeanOutput), DepthwiseMeanOutputExpected)


@I.ir_module
class AlreadyNHWC:
    @R.function
    def main(x: R.Tensor((1, 6, 6, 2), "float32"), w: R.Tensor((3, 3, 2, 4), "float32")) -> R.Tensor(
        (1, 6, 6, 4), "float32"
    ):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="HWIO")
            r = R.nn.relu(c)
            R.output(r)
        return r


def test_declines_a_channels_last_model():
    _tvm.assert_structural_equal(ChannelsLast()(AlreadyNHWC), AlreadyNHWC)


def _qdq_conv_model(reduce_keepdims: bool) -> _tvm.IRModule:
    """A QDQ-style model: dequantised constant weights (per output channel), a conv, a per-channel bias
    reshaped to (1, C, 1, 1), a reduction over H only (its kept axes change order between the layouts)."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 7, 6), "float32"))
    wq = rng.integers(-127, 128, size=(5, 3, 3, 3)).astype(np.int8)
    scales = (rng.random(5) * 0.02 + 0.01).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            w = bb.emit(
                relax.op.dequantize(
                    relax.const(wq), relax.const(scales), relax.const(np.zeros(5, np.int8)), axis=0
                )
            )
            c = bb.emit(relax.op.nn.conv2d(x, w, padding=[1, 1, 1, 1]))
            bias = bb.emit(
                relax.op.reshape(relax.const(rng.standard_normal(5).astype(np.float32)), (1, 5, 1, 1))
            )
            a = bb.emit(relax.op.add(c, bias))
            s = bb.emit(relax.op.sigmoid(a))
            out = bb.emit_output(relax.op.max(s, axis=[2], keepdims=reduce_keepdims))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("keepdims", [True, False])
def test_same_values_as_the_nchw_model(keepdims):
    before = _qdq_conv_model(keepdims)
    after = ChannelsLast()(before)
    convs = []
    _tvm.structural_walk(
        after["main"].body,
        (relax.Call, lambda c: convs.append(c) if _tvm.op_name(c) == "relax.nn.conv2d" else None),
    )
    assert [(str(c.attrs.data_layout), str(c.attrs.kernel_layout)) for c in convs] == [("NHWC", "OHWI")]
    # The dequantised weights are transposed at compile time, their per-channel axis with them.
    weight = {b.var: b.value for blk in after["main"].body.blocks for b in blk.bindings}[convs[0].args[1]]
    assert _tvm.op_name(weight) == "relax.dequantize" and int(weight.attrs.axis) == 0
    assert tuple(int(d) for d in weight.args[0].ty.shape) == (5, 3, 3, 3)
    assert _tvm.tensor_shape(after["main"].ret_ty) == _tvm.tensor_shape(before["main"].ret_ty)
    x = np.random.default_rng(1).standard_normal((1, 3, 7, 6)).astype(np.float32)
    (want,), (got,) = run_llvm(before, [x]), run_llvm(after, [x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bindings_keep_their_names_for_provenance():
    before = _qdq_conv_model(True)
    names_before = {_tvm.var_name(b.var) for blk in before["main"].body.blocks for b in blk.bindings}
    after = ChannelsLast()(before)
    names_after = {_tvm.var_name(b.var) for blk in after["main"].body.blocks for b in blk.bindings}
    assert names_before <= names_after
    assert all(n.endswith(("_nhwc", "_nchw", "_moved")) for n in names_after - names_before)
