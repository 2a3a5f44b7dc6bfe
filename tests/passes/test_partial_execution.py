"""GroupChains + PartialExecution: a chain computed a slice of channels at a time (Pex)."""

import numpy as np
import pytest
import tvm
from tvm import te, topi

from tvm_mcu import _tvm, pipeline
from tvm_mcu.passes.relax.group_chains import ATTR_PARTIAL
from tvm_mcu.passes.tir.partial_execution import PartialExecution, parse_spec


def _chain(layout: str):
    """conv 3x3 + bias -> max pool 2x2 -> relu: the producer, then per-channel operators."""
    if layout == "NCHW":
        x = te.placeholder((1, 3, 12, 12), "float32", name="x")
        w = te.placeholder((8, 3, 3, 3), "float32", name="w")
        b = te.placeholder((1, 8, 1, 1), "float32", name="b")
        y = topi.nn.conv2d_nchw(x, w, 1, 1, 1) + b
        y = topi.nn.pool2d(y, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout="NCHW")
    else:
        x = te.placeholder((1, 12, 12, 3), "float32", name="x")
        w = te.placeholder((3, 3, 3, 8), "float32", name="w")
        b = te.placeholder((8,), "float32", name="b")
        y = topi.nn.conv2d_nhwc(x, w, 1, 1, 1) + b
        y = topi.nn.pool2d(y, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout="NHWC")
    y = topi.nn.relu(y)
    return te.create_prim_func([x, w, b, y])


def _tagged(layout: str, slice_: int) -> tvm.IRModule:
    axis = 1 if layout == "NCHW" else 3
    func = _chain(layout).with_attr(ATTR_PARTIAL, f"channels:axis={axis}:slice={slice_}")
    return tvm.IRModule({"main": func})


def _run(func, arrays):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=tvm.target.Target("llvm"))
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _loops_at_root(func) -> list[int]:
    extents: list[int] = []
    body = func.body.block.body
    while isinstance(body, tvm.tirx.For):
        extents.append(int(body.extent))
        body = body.body
    return extents


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("slice_", [1, 2, 8])
def test_chain_runs_slice_by_slice_and_is_bit_exact(layout: str, slice_: int) -> None:
    before = _tagged(layout, slice_)
    after = PartialExecution()(before)
    # One loop over the slices around the whole chain.
    assert _loops_at_root(after["main"])[:1] == [8 // slice_]
    rng = np.random.default_rng(5)
    params = before["main"].params
    arrays = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32") for p in params]
    want = _run(before["main"].without_attr(ATTR_PARTIAL), arrays)
    got = _run(after["main"], arrays)
    np.testing.assert_array_equal(got, want)
    # The 12x12x8 conv output never exists: the scratch is one slice of it.
    lowered = pipeline.run(pipeline.operator_passes(symbol_prefix="t_"), after)
    assert int(lowered["main"].attrs["tvmmcu.workspace_bytes"]) == 12 * 12 * slice_ * 4


def test_declines_untagged_and_is_idempotent() -> None:
    plain = tvm.IRModule({"main": _chain("NCHW")})
    _tvm.assert_structural_equal(PartialExecution()(plain), plain)
    tagged = _tagged("NCHW", 2)
    snapshot = tagged.script()
    once = PartialExecution()(tagged)
    _tvm.assert_structural_equal(PartialExecution()(once), once)
    assert tagged.script() == snapshot


def test_parse_spec() -> None:
    assert parse_spec("channels:axis=1:slice=4") == {"mode": "channels", "axis": 1, "slice": 4}


def _expand_project(layout: str, dtype: str):
    """pointwise 4->16 + relu (producer, per-channel epilogue) -> depthwise 3x3 -> pointwise 16->4."""
    nchw = layout == "NCHW"
    shape = (1, 4, 6, 6) if nchw else (1, 6, 6, 4)
    x = te.placeholder(shape, dtype, name="x")
    if nchw:
        w1 = te.placeholder((16, 4, 1, 1), dtype, name="w1")
        wd = te.placeholder((16, 1, 3, 3), dtype, name="wd")
        w2 = te.placeholder((4, 16, 1, 1), dtype, name="w2")
        y = topi.nn.relu(topi.nn.conv2d_nchw(x, w1, 1, 0, 1))
        y = topi.nn.depthwise_conv2d_nchw(y, wd, 1, 1, 1)
        y = topi.nn.conv2d_nchw(y, w2, 1, 0, 1)
    else:
        w1 = te.placeholder((1, 1, 4, 16), dtype, name="w1")
        wd = te.placeholder((3, 3, 16, 1), dtype, name="wd")
        w2 = te.placeholder((1, 1, 16, 4), dtype, name="w2")
        y = topi.nn.relu(topi.nn.conv2d_nhwc(x, w1, 1, 0, 1, out_dtype=dtype))
        y = topi.nn.depthwise_conv2d_nhwc(y, wd, 1, 1, 1, out_dtype=dtype)
        y = topi.nn.conv2d_nhwc(y, w2, 1, 0, 1, out_dtype=dtype)
    return te.create_prim_func([x, w1, wd, w2, y])


@pytest.mark.parametrize("layout,dtype", [("NCHW", "float32"), ("NHWC", "int32")])
def test_accumulating_chain_is_bit_exact_and_small(layout: str, dtype: str) -> None:
    axis = 1 if layout == "NCHW" else 3
    func = _expand_project(layout, dtype).with_attr(
        ATTR_PARTIAL, f"channels:axis={axis}:slice=2:accumulate=1"
    )
    after = PartialExecution()(tvm.IRModule({"main": func}))
    rng = np.random.default_rng(2)
    arrays = []
    for p in func.params:
        shape = [int(d) for d in p.ty.shape]
        a = rng.standard_normal(shape) if dtype == "float32" else rng.integers(-8, 8, shape)
        arrays.append(a.astype(dtype))
    want = _run(func.without_attr(ATTR_PARTIAL), arrays)
    got = _run(after["main"], arrays)
    np.testing.assert_array_equal(got, want)
    lowered = pipeline.run(pipeline.operator_passes(symbol_prefix="t_"), after)
    # Whole: two 6x6x16 intermediates (4,608 B). Split: two slices of 2 channels + the accumulator.
    assert int(lowered["main"].attrs["tvmmcu.workspace_bytes"]) <= 2 * 6 * 6 * 2 * 4 + 6 * 6 * 4 * 4 + 16
