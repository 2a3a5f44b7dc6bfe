"""ExecuteInPlace and the in-place analysis: which kernels may overwrite an input, and the restaging."""

import numpy as np
import pytest
import tvm
from tvm import te, topi
from tvm.script import ir as I
from tvm.script import tirx as T

from tests import host
from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm, pipeline
from tvm_mcu.analysis.inplace import in_place_options
from tvm_mcu.passes.tir.execute_in_place import ExecuteInPlace
from tvm_mcu.passes.tir.schedule_for_mcu import ScheduleForMcu


@I.ir_module
class Pointwise:
    @T.prim_func(private=True, s_tir=True)
    def main(
        x: T.Buffer((1, 2, 3, 4), "float32"),
        w: T.Buffer((1, 1, 4, 2), "float32"),
        y: T.Buffer((1, 2, 3, 2), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tvmmcu.scheduled": True, "tvmmcu.in_place": "pointwise"})
        acc = T.sblock_alloc_buffer((1, 2, 3, 2))
        for n, h, wi, c in T.grid(1, 2, 3, 2):
            with T.sblock("acc_init"):
                v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                acc[v_n, v_h, v_w, v_c] = T.float32(0.0)
            for rc in range(4):
                with T.sblock("acc_update"):
                    v_n, v_h, v_w, v_c, v_rc = T.axis.remap("SSSSR", [n, h, wi, c, rc])
                    acc[v_n, v_h, v_w, v_c] = (
                        acc[v_n, v_h, v_w, v_c] + x[v_n, v_h, v_w, v_rc] * w[0, 0, v_rc, v_c]
                    )
            with T.sblock("relu"):
                v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                y[v_n, v_h, v_w, v_c] = T.max(acc[v_n, v_h, v_w, v_c], T.float32(0.0))


@I.ir_module
class Depthwise:
    @T.prim_func(private=True, s_tir=True)
    def main(
        x: T.Buffer((1, 3, 3, 4), "float32"),
        w: T.Buffer((3, 3, 4), "float32"),
        y: T.Buffer((1, 3, 3, 4), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tvmmcu.scheduled": True, "tvmmcu.in_place": "depthwise"})
        acc = T.sblock_alloc_buffer((1, 3, 3, 4))
        for n, h, wi, c in T.grid(1, 3, 3, 4):
            with T.sblock("acc_init"):
                v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                acc[v_n, v_h, v_w, v_c] = T.float32(0.0)
            for ry, rx in T.grid(3, 3):
                with T.sblock("acc_update"):
                    v_n, v_h, v_w, v_c, v_ry, v_rx = T.axis.remap("SSSSRR", [n, h, wi, c, ry, rx])
                    acc[v_n, v_h, v_w, v_c] = (
                        acc[v_n, v_h, v_w, v_c]
                        + T.if_then_else(
                            v_h + v_ry >= 1 and v_h + v_ry < 4 and v_w + v_rx >= 1 and v_w + v_rx < 4,
                            x[v_n, v_h + v_ry - 1, v_w + v_rx - 1, v_c],
                            T.float32(0.0),
                        )
                        * w[v_ry, v_rx, v_c]
                    )
            with T.sblock("relu"):
                v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                y[v_n, v_h, v_w, v_c] = T.max(acc[v_n, v_h, v_w, v_c], T.float32(0.0))


@I.ir_module
class PointwiseExpected:
    @T.prim_func(private=True, s_tir=True)
    def main(
        x: T.Buffer((1, 2, 3, 4), "float32"),
        w: T.Buffer((1, 1, 4, 2), "float32"),
        y: T.Buffer((1, 2, 3, 2), "float32"),
    ):
        T.func_attr(
            {
                "tirx.noalias": True,
                "tvmmcu.in_place": "pointwise",
                "tvmmcu.in_place_done": True,
                "tvmmcu.scheduled": True,
            }
        )
        # with T.sblock("root"):
        acc = T.sblock_alloc_buffer((1, 2, 3, 2))
        y_global = T.sblock_alloc_buffer((1, 2, 3, 2))
        for n, h, wi in T.grid(1, 2, 3):
            for c in range(2):
                with T.sblock("acc_init"):
                    v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                    T.reads()
                    T.writes(acc[v_n, v_h, v_w, v_c])
                    acc[v_n, v_h, v_w, v_c] = T.float32(0.0)
                for rc in range(4):
                    with T.sblock("acc_update"):
                        v_n, v_h, v_w, v_c, v_rc = T.axis.remap("SSSSR", [n, h, wi, c, rc])
                        T.reads(acc[v_n, v_h, v_w, v_c], x[v_n, v_h, v_w, v_rc], w[0, 0, v_rc, v_c])
                        T.writes(acc[v_n, v_h, v_w, v_c])
                        acc[v_n, v_h, v_w, v_c] = (
                            acc[v_n, v_h, v_w, v_c] + x[v_n, v_h, v_w, v_rc] * w[0, 0, v_rc, v_c]
                        )
                with T.sblock("relu"):
                    v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                    T.reads(acc[v_n, v_h, v_w, v_c])
                    T.writes(y_global[v_n, v_h, v_w, v_c])
                    y_global[v_n, v_h, v_w, v_c] = T.max(acc[v_n, v_h, v_w, v_c], T.float32(0.0))
            for ax0 in range(2):
                with T.sblock("y_global"):
                    v0 = T.axis.spatial(1, 0)
                    v1, v2, v3 = T.axis.remap("SSS", [h, wi, ax0])
                    T.reads(y_global[v0, v1, v2, v3])
                    T.writes(y[v0, v1, v2, v3])
                    y[v0, v1, v2, v3] = y_global[v0, v1, v2, v3]


# from tvm.script import tirx as T
# from tvm.tirx.layout import Axis


@I.ir_module
class DepthwiseExpected:
    @T.prim_func(private=True, s_tir=True)
    def main(
        x: T.Buffer((1, 3, 3, 4), "float32"),
        w: T.Buffer((3, 3, 4), "float32"),
        y: T.Buffer((1, 3, 3, 4), "float32"),
    ):
        T.func_attr(
            {
                "tirx.noalias": True,
                "tvmmcu.in_place": "depthwise",
                "tvmmcu.in_place_done": True,
                "tvmmcu.scheduled": True,
            }
        )
        # with T.sblock("root"):
        acc = T.sblock_alloc_buffer((1, 3, 3, 4))
        y_global = T.sblock_alloc_buffer((1, 3, 3, 4))
        for c in range(4):
            for n, h, wi in T.grid(1, 3, 3):
                with T.sblock("acc_init"):
                    v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                    T.reads()
                    T.writes(acc[v_n, v_h, v_w, v_c])
                    acc[v_n, v_h, v_w, v_c] = T.float32(0.0)
                for ry, rx in T.grid(3, 3):
                    with T.sblock("acc_update"):
                        v_n, v_h, v_w, v_c, v_ry, v_rx = T.axis.remap("SSSSRR", [n, h, wi, c, ry, rx])
                        T.reads(
                            acc[v_n, v_h, v_w, v_c],
                            x[v_n, v_h + v_ry - 1, v_w + v_rx - 1, v_c],
                            w[v_ry, v_rx, v_c],
                        )
                        T.writes(acc[v_n, v_h, v_w, v_c])
                        acc[v_n, v_h, v_w, v_c] = (
                            acc[v_n, v_h, v_w, v_c]
                            + T.if_then_else(
                                v_h + v_ry >= 1 and v_h + v_ry < 4 and v_w + v_rx >= 1 and v_w + v_rx < 4,
                                x[v_n, v_h + v_ry - 1, v_w + v_rx - 1, v_c],
                                T.float32(0.0),
                            )
                            * w[v_ry, v_rx, v_c]
                        )
                with T.sblock("relu"):
                    v_n, v_h, v_w, v_c = T.axis.remap("SSSS", [n, h, wi, c])
                    T.reads(acc[v_n, v_h, v_w, v_c])
                    T.writes(y_global[v_n, v_h, v_w, v_c])
                    y_global[v_n, v_h, v_w, v_c] = T.max(acc[v_n, v_h, v_w, v_c], T.float32(0.0))
            for ax0, ax1 in T.grid(3, 3):
                with T.sblock("y_global"):
                    v0 = T.axis.spatial(1, 0)
                    v1, v2, v3 = T.axis.remap("SSS", [ax0, ax1, c])
                    T.reads(y_global[v0, v1, v2, v3])
                    T.writes(y[v0, v1, v2, v3])
                    y[v0, v1, v2, v3] = y_global[v0, v1, v2, v3]


@pytest.mark.parametrize(
    "before,expected",
    [(Pointwise, PointwiseExpected), (Depthwise, DepthwiseExpected)],
    ids=["pointwise-pixel-staged", "depthwise-channel-outer"],
)
def test_structure(before, expected):
    _tvm.assert_structural_equal(ExecuteInPlace()(before), expected)


def test_idempotent_and_input_untouched():
    assert_idempotent_and_pure(ExecuteInPlace(), Pointwise)


def test_declines_unmarked_functions():
    unmarked = tvm.IRModule({"main": Pointwise["main"].without_attr("tvmmcu.in_place")})
    _tvm.assert_structural_equal(ExecuteInPlace()(unmarked), unmarked)


def _scheduled(*tensors):
    return ScheduleForMcu()(tvm.IRModule({"main": te.create_prim_func(list(tensors))}))["main"]


def _pointwise(c_in, c_out, stride=1, pad=0):
    x = te.placeholder((1, 4, 4, c_in), "float32", name="x")
    w = te.placeholder((1, 1, c_in, c_out), "float32", name="w")
    b = te.placeholder((c_out,), "float32", name="b")
    return _scheduled(x, w, b, topi.nn.relu(topi.nn.conv2d_nhwc(x, w, stride, pad, 1) + b))


def _depthwise(c, k=3, stride=1):
    x = te.placeholder((1, 6, 6, c), "float32", name="x")
    w = te.placeholder((k, k, c, 1), "float32", name="w")
    b = te.placeholder((c,), "float32", name="b")
    return _scheduled(x, w, b, topi.nn.depthwise_conv2d_nhwc(x, w, stride, k // 2, 1) + b)


def _dense_conv(c):
    x = te.placeholder((1, 6, 6, c), "float32", name="x")
    w = te.placeholder((3, 3, c, c), "float32", name="w")
    b = te.placeholder((c,), "float32", name="b")
    return _scheduled(x, w, b, topi.nn.conv2d_nhwc(x, w, 1, 1, 1) + b)


def _add():
    a = te.placeholder((1, 4, 4, 8), "float32", name="a")
    b = te.placeholder((1, 4, 4, 8), "float32", name="b")
    return _scheduled(a, b, topi.add(a, b))


def _transpose():
    a = te.placeholder((1, 4, 4, 8), "float32", name="a")
    return _scheduled(a, topi.transpose(a, (0, 2, 1, 3)))


@pytest.mark.parametrize(
    "func,candidates,kinds",
    [
        (_pointwise(8, 8), [0], ["pointwise"]),
        (_pointwise(8, 4, stride=2), [0], ["pointwise"]),
        (_depthwise(8), [0], ["depthwise"]),
        (_depthwise(8, k=5, stride=2), [0], ["depthwise"]),
        (_add(), [0, 1], ["elementwise", "elementwise"]),
    ],
    ids=["pointwise", "pointwise-stride2-narrowing", "depthwise", "depthwise-5x5-stride2", "add"],
)
def test_kernels_that_may_run_in_place(func, candidates, kinds):
    assert [o.kind for o in in_place_options(func, candidates)] == kinds


@pytest.mark.parametrize(
    "func",
    [_pointwise(8, 16), _pointwise(8, 8, pad=1), _dense_conv(8), _transpose()],
    ids=["pointwise-widening", "pointwise-padded", "3x3-dense-conv", "transpose"],
)
def test_kernels_that_may_not_run_in_place(func):
    assert in_place_options(func, [0]) == []


def _run_aliased(func, kind, arrays, tmp_path):
    """Lower ``func`` rescheduled for ``kind``, build it with host gcc, run it with output == input 0."""
    marked = tvm.IRModule({"main": func.with_attr("tvmmcu.in_place", kind)})
    lowered = pipeline.run(pipeline.operator_passes(symbol_prefix="k_"), marked)
    fn, ws = host.build_kernel(lowered, tmp_path, "k_main")
    buf = np.zeros(max(a.size for a in arrays[:1]), np.float32)
    buf[: arrays[0].size] = arrays[0].reshape(-1)
    host.call_kernel(fn, [buf, *arrays[1:], buf], ws)
    return buf


@pytest.mark.parametrize(
    "make,kind",
    [
        (lambda: _pointwise(8, 8), "pointwise"),
        (lambda: _pointwise(8, 4, stride=2), "pointwise"),
        (lambda: _depthwise(8), "depthwise"),
        (lambda: _depthwise(8, k=5, stride=2), "depthwise"),
    ],
    ids=["pointwise", "pointwise-stride2-narrowing", "depthwise", "depthwise-5x5-stride2"],
)
def test_aliased_run_matches_separate_buffers(make, kind, tmp_path):
    func = make()
    rng = np.random.default_rng(3)
    shapes = [tuple(int(d) for d in p.ty.shape) for p in func.params]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes[:-1]]
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target("llvm")
    )
    want = tvm.runtime.tensor(np.zeros(shapes[-1], np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], want)
    got = _run_aliased(func, kind, arrays, tmp_path)
    n = int(np.prod(shapes[-1]))
    np.testing.assert_array_equal(got[:n].reshape(shapes[-1]), want.numpy())
