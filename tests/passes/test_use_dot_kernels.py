"""UseDotKernels: integer reductions over contiguous operands become dot-product micro-kernel calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import tirx as T

from tests import host
from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm, pipeline
from tvm_mcu.passes.tir import UseDotKernels
from tvm_mcu.passes.tir.dot_kernels import HEADER_TEXT


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        U: T.handle("uint8", "global"),
        W: T.handle("int8", "global"),
        C: T.handle("int32", "global"),
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((80,), "int8", data=X)
        U_1 = T.decl_buffer((64,), "uint8", data=U)
        W_1 = T.decl_buffer((128,), "int8", data=W)
        C_1 = T.decl_buffer((28,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        # A dense layer: data and weights both run along k.
        for o in range(4):
            acc[0] = 0
            for k in range(16):
                acc[0] = acc[0] + T.Cast("int32", X_1[o * 16 + k]) * T.Cast("int32", W_1[o * 32 + k + 3])
            C_1[o] = acc[0]
        # A window that may lie in the padding (which holds 7): uint8 data, the weight first.
        for o in range(4):
            acc[0] = 0
            for ry in range(3):
                for k in range(16):
                    acc[0] = acc[0] + T.Cast("int32", W_1[ry * 16 + k]) * T.Cast(
                        "int32", T.if_then_else(o + ry >= 1, U_1[(o + ry) * 16 + k - 16], T.uint8(7))
                    )
            C_1[o + 4] = acc[0]
        # A row of taps that runs into the padding (which holds -5) on either side.
        for o in range(4):
            acc[0] = 0
            for k in range(8):
                acc[0] = acc[0] + T.Cast(
                    "int32",
                    T.if_then_else(T.And(o * 3 + k >= 2, o * 3 + k < 12), X_1[o * 3 + k - 2], T.int8(-5)),
                ) * T.Cast("int32", W_1[k + 64])
            C_1[o] = acc[0]
        # A depthwise 3x3 window over a 5x4x4 NHWC input padded by one (the padding holds 3).
        for y, x, c in T.grid(5, 4, 4):
            acc[0] = 0
            for ry in range(3):
                for rx in range(3):
                    acc[0] = acc[0] + T.Cast(
                        "int32",
                        T.if_then_else(
                            T.And(T.And(y + ry >= 1, y + ry < 6), T.And(x + rx >= 1, x + rx < 5)),
                            X_1[(y + ry) * 16 + (x + rx) * 4 + c - 20],
                            T.int8(3),
                        ),
                    ) * T.Cast("int32", W_1[ry * 12 + rx * 4 + c + 80])
            C_1[8 + y * 4 + x] = acc[0]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        U: T.handle("uint8", "global"),
        W: T.handle("int8", "global"),
        C: T.handle("int32", "global"),
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((80,), "int8", data=X)
        U_1 = T.decl_buffer((64,), "uint8", data=U)
        W_1 = T.decl_buffer((128,), "int8", data=W)
        C_1 = T.decl_buffer((28,), "int32", data=C)
        acc = T.alloc_buffer((1,), "int32")
        for o in range(4):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_s8s8",
                T.address_of(X_1[o * 16]),
                T.address_of(W_1[o * 32 + 3]),
                16,
                acc[0],
            )
            C_1[o] = acc[0]
        for o in range(4):
            acc[0] = 0
            for ry in range(3):
                if o + ry >= 1:
                    acc[0] = T.call_extern(
                        "int32",
                        "tvmmcu_dot_u8s8",
                        T.address_of(U_1[(o + ry) * 16 - 16]),
                        T.address_of(W_1[ry * 16]),
                        16,
                        acc[0],
                    )
                else:
                    acc[0] = T.call_extern(
                        "int32", "tvmmcu_dot_sum_s8", T.address_of(W_1[ry * 16]), 16, 7, acc[0]
                    )
            C_1[o + 4] = acc[0]
        # The taps inside, [lo, hi), in one dot product; the padding's on either side.
        for o in range(4):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_s8s8",
                T.address_of(X_1[o * 3 - 2 + T.min(T.max(0, 2 - o * 3), 8)]),
                T.address_of(W_1[64 + T.min(T.max(0, 2 - o * 3), 8)]),
                T.max(T.min(8, 12 - o * 3), T.min(T.max(0, 2 - o * 3), 8)) - T.min(T.max(0, 2 - o * 3), 8),
                acc[0],
            )
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_sum_s8", T.address_of(W_1[64]), T.min(T.max(0, 2 - o * 3), 8), -5, acc[0]
            )
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_sum_s8",
                T.address_of(W_1[64 + T.max(T.min(8, 12 - o * 3), T.min(T.max(0, 2 - o * 3), 8))]),
                8 - T.max(T.min(8, 12 - o * 3), T.min(T.max(0, 2 - o * 3), 8)),
                -5,
                acc[0],
            )
            C_1[o] = acc[0]
        # The taps inside: rows [y0, y1), columns [x0, x1); x points at tap (y0, x0).
        for y, x, c in T.grid(5, 4, 4):
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(
                    X_1[
                        16 * y
                        + 4 * x
                        + c
                        - 20
                        + T.min(T.max(0, 1 - y), 3) * 16
                        + T.min(T.max(0, 1 - x), 3) * 4
                    ]
                ),
                16,
                4,
                T.address_of(W_1[c + 80]),
                12,
                4,
                3,
                3,
                T.min(T.max(0, 1 - y), 3),
                T.max(T.min(3, 6 - y), T.min(T.max(0, 1 - y), 3)),
                T.min(T.max(0, 1 - x), 3),
                T.max(T.min(3, 5 - x), T.min(T.max(0, 1 - x), 3)),
                3,
                acc[0],
            )
            C_1[8 + y * 4 + x] = acc[0]


def test_contiguous_reductions_become_kernel_calls() -> None:
    _tvm.assert_structural_equal(UseDotKernels()(Before), Expected)


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        V: T.handle("int16", "global"),
        C: T.handle("int32", "global"),
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((256,), "int8", data=W)
        V_1 = T.decl_buffer((64,), "int16", data=V)
        C_1 = T.decl_buffer((8,), "int32", data=C)
        acc = T.alloc_buffer((4,), "int32")
        # Strided weights (a HWIO layout): no contiguous vector.
        for k in range(16):
            acc[0] = acc[0] + T.Cast("int32", X_1[k]) * T.Cast("int32", W_1[k * 16])
        # int16 weights (a subtracted weight zero point): no kernel.
        for k in range(16):
            acc[0] = acc[0] + T.Cast("int32", X_1[k]) * T.Cast("int32", V_1[k])
        # The accumulator moves with the loop.
        for k in range(4):
            acc[k] = acc[k] + T.Cast("int32", X_1[k]) * T.Cast("int32", W_1[k])
        # The padding test is no range of the loop.
        for k in range(16):
            acc[0] = acc[0] + T.Cast("int32", T.if_then_else(k % 2 == 0, X_1[k], T.int8(0))) * T.Cast(
                "int32", W_1[k]
            )
        # Something else happens in the loop.
        for k in range(16):
            acc[0] = acc[0] + T.Cast("int32", X_1[k]) * T.Cast("int32", W_1[k])
            C_1[1] = acc[0]
        # The loop does not start at 0.
        for k in range(2, 16):
            acc[0] = acc[0] + T.Cast("int32", X_1[k]) * T.Cast("int32", W_1[k])
        C_1[0] = acc[0]


def test_declines_what_the_kernels_do_not_compute() -> None:
    after = UseDotKernels()(Declined)
    _tvm.assert_structural_equal(after["f"].body, Declined["f"].body)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(UseDotKernels(), Before)


def _conv_nhwc(shape, kernel, strides, pads, zp, data_dtype="int8", dilation=(1, 1), epilogue=False):
    """An int8 NHWC convolution with OHWI weights (the layout the int8 lowering gives; O = 0: a
    depthwise one, HWOI as TFLite's), padding holding the zero point: the loop nest the pass sees in a
    compiled model. ``epilogue``: each accumulator then goes through an element-wise step, as through
    a requantisation (the accumulator becomes one element and BlockOutputChannels blocks the channels)."""
    from tvm import te, topi

    n, h, w, c = shape
    o, kh, kw = kernel
    x = te.placeholder(shape, data_dtype, name="x")
    depthwise = o == 0
    wt = te.placeholder((kh, kw, c, 1) if depthwise else (o, kh, kw, c), "int8", name="w")
    top, left, bottom, right = pads
    padded = topi.nn.pad(
        x, [0, top, left, 0], [0, bottom, right, 0], pad_value=_tvm.tirx.const(zp, data_dtype)
    )
    groups, layout = (c, "HWOI") if depthwise else (1, "OHWI")
    acc = topi.nn.conv(padded, wt, strides, 0, dilation, groups, "NHWC", layout, out_dtype="int32")
    if epilogue:
        out = te.compute(acc.shape, lambda *i: acc(*i) * 3 + 1, name="epilogue")
        return te.create_prim_func([x, wt, out])
    return te.create_prim_func([x, wt, acc])


CASES = [
    # (input NHWC, (O, KH, KW), strides, pads (t, l, b, r), zero point, data dtype)
    ((1, 5, 4, 64), (8, 1, 1), (1, 1), (0, 0, 0, 0), -128, "int8"),
    ((1, 6, 7, 13), (5, 3, 3), (1, 1), (1, 1, 1, 1), 5, "int8"),
    ((1, 7, 6, 6), (3, 3, 2), (2, 1), (2, 0, 1, 1), -3, "int8"),
    ((1, 5, 5, 7), (4, 3, 3), (1, 2), (1, 2, 0, 1), 131, "uint8"),
    ((1, 4, 9, 1), (6, 2, 4), (1, 2), (1, 1, 0, 2), 83, "int8"),
    # Depthwise (O = 0): windows of taps a channel apart.
    ((1, 7, 5, 6), (0, 3, 3), (1, 1), (1, 1, 1, 1), -128, "int8"),
    ((1, 6, 6, 5), (0, 3, 3), (2, 2), (0, 0, 1, 1), 200, "uint8"),
    # A row of 3 channels x 5 taps (too short for dot products): a window too.
    ((1, 6, 6, 3), (4, 5, 5), (1, 1), (2, 2, 2, 2), 9, "int8"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"c{c[0][3]}o{c[1][0]}k{c[1][1]}x{c[1][2]}" for c in CASES])
def test_convolutions_stay_bit_exact_on_the_host(case, tmp_path: Path) -> None:
    """The lowered convolution with and without the pass, built by host gcc (the portable C path of
    the kernels), on random data at the extremes: the same int32 accumulators."""
    shape, kernel, strides, pads, zp, dtype = case
    func = _conv_nhwc(shape, kernel, strides, pads, zp, dtype)
    mod = tvm.IRModule({"main": func})
    passes = pipeline.operator_passes(symbol_prefix="k_")
    without = [p for p in passes if p.info.name != "UseDotKernels"]
    assert len(without) == len(passes) - 1
    rng = np.random.default_rng(sum(shape) + kernel[1])
    info = np.iinfo(np.dtype(dtype))
    x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    w_shape = [int(d) for d in func.params[1].ty.shape]
    w = rng.integers(-128, 127, w_shape, endpoint=True).astype(np.int8)
    outs = []
    for chosen in (without, passes):
        lowered = pipeline.run(chosen, mod)
        calls = "tvmmcu_dot_" in host.kernel_source(lowered)
        assert calls == (chosen is passes)
        fn, ws = host.build_kernel(lowered, tmp_path, "k_main")
        out = np.zeros([int(d) for d in func.params[-1].ty.shape], np.int32)
        host.call_kernel(fn, [x, w, out], ws)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    assert np.any(outs[0] != 0)


@I.ir_module
class RunsBefore:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((36,), "int32", data=Y)
        # A 3x3 NHWC convolution of 8 input channels over a 3x3 input padded by one (padding holds -3),
        # four output channels: each tap a run of 8 contiguous input channels.
        for yy, xx, ff in T.grid(3, 3, 4):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            for ry, rx, rc in T.grid(3, 3, 8):
                acc[0] = acc[0] + T.Cast(
                    "int32",
                    T.if_then_else(
                        yy + ry >= 1 and yy + ry < 4 and xx + rx >= 1 and xx + rx < 4,
                        X_1[(yy + ry - 1) * 24 + (xx + rx - 1) * 8 + rc],
                        T.int8(-3),
                    ),
                ) * T.Cast("int32", W_1[ff * 72 + ry * 24 + rx * 8 + rc])
            Y_1[yy * 12 + xx * 4 + ff] = acc[0]


@I.ir_module
class RunsExpected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((36,), "int32", data=Y)
        for yy, xx, ff in T.grid(3, 3, 4):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            # One call for the window: the taps inside start at (y0, x0) = (max(0, 1 - yy), ...).
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_runs_s8s8",
                T.address_of(
                    X_1[
                        24 * (yy - 1)
                        + 8 * (xx - 1)
                        + T.min(T.max(0, 1 - yy), 3) * 24
                        + T.min(T.max(0, 1 - xx), 3) * 8
                    ]
                ),
                24,
                8,
                T.address_of(W_1[ff * 72]),
                24,
                8,
                3,
                3,
                8,
                T.min(T.max(0, 1 - yy), 3),
                T.max(T.min(3, 4 - yy), T.min(T.max(0, 1 - yy), 3)),
                T.min(T.max(0, 1 - xx), 3),
                T.max(T.min(3, 4 - xx), T.min(T.max(0, 1 - xx), 3)),
                -3,
                acc[0],
            )
            Y_1[yy * 12 + xx * 4 + ff] = acc[0]


def test_a_window_of_channel_runs_is_one_call() -> None:
    _tvm.assert_structural_equal(UseDotKernels()(RunsBefore), RunsExpected)


@I.ir_module
class RgbBefore:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((27,), "int8", data=X)
        W_1 = T.decl_buffer((54,), "int8", data=W)
        Y_1 = T.decl_buffer((18,), "int32", data=Y)
        # A 3x3 NHWC convolution of an RGB input (3 channels) over a 3x3 image padded by one (padding
        # holds -3), two output channels: each kernel row's taps are 9 contiguous values.
        for yy, xx, ff in T.grid(3, 3, 2):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            for ry, rx, rc in T.grid(3, 3, 3):
                acc[0] = acc[0] + T.Cast(
                    "int32",
                    T.if_then_else(
                        yy + ry >= 1 and yy + ry < 4 and xx + rx >= 1 and xx + rx < 4,
                        X_1[(yy + ry - 1) * 9 + (xx + rx - 1) * 3 + rc],
                        T.int8(-3),
                    ),
                ) * T.Cast("int32", W_1[ff * 27 + ry * 9 + rx * 3 + rc])
            Y_1[yy * 6 + xx * 2 + ff] = acc[0]


@I.ir_module
class RgbExpected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((27,), "int8", data=X)
        W_1 = T.decl_buffer((54,), "int8", data=W)
        Y_1 = T.decl_buffer((18,), "int32", data=Y)
        for yy, xx, ff in T.grid(3, 3, 2):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            # Rows of 9 taps x channels (rx >= 1 - xx became k >= 3 * (1 - xx)), one window call.
            acc[0] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(
                    X_1[
                        9 * (yy - 1)
                        + 3 * (xx - 1)
                        + T.min(T.max(0, 1 - yy), 3) * 9
                        + T.min(T.max(0, 3 - xx * 3), 9)
                    ]
                ),
                9,
                1,
                T.address_of(W_1[ff * 27]),
                9,
                1,
                3,
                9,
                T.min(T.max(0, 1 - yy), 3),
                T.max(T.min(3, 4 - yy), T.min(T.max(0, 1 - yy), 3)),
                T.min(T.max(0, 3 - xx * 3), 9),
                T.max(T.min(9, 12 - xx * 3), T.min(T.max(0, 3 - xx * 3), 9)),
                -3,
                acc[0],
            )
            Y_1[yy * 6 + xx * 2 + ff] = acc[0]


def test_kernel_rows_of_an_rgb_input_are_one_window_of_rows() -> None:
    _tvm.assert_structural_equal(UseDotKernels()(RgbBefore), RgbExpected)


LENGTHS = range(38)
W_ROWS = 41  # the four-channel kernels' weight stride: odd, so rows start at every alignment
WINDOWS = [  # (kh, kw, x strides, w strides, taps inside y0, y1, x0, x1)
    (3, 3, (20, 4), (9, 3), (0, 3, 0, 3)),
    (3, 3, (20, 4), (9, 3), (1, 3, 0, 2)),
    (3, 3, (20, 4), (9, 3), (0, 0, 0, 0)),
    (10, 4, (10, 1), (4, 1), (4, 10, 1, 4)),
    (10, 4, (10, 1), (4, 1), (0, 10, 0, 4)),  # rows of whole words (KWS's first convolution)
    (10, 4, (10, 1), (4, 1), (0, 7, 0, 3)),
    (3, 8, (12, 1), (8, 1), (1, 3, 2, 7)),
    (3, 9, (20, 1), (9, 1), (1, 3, 3, 9)),  # a kernel row of an RGB input: 2 words and a tap
    (3, 6, (20, 1), (6, 1), (0, 3, 0, 4)),
    (2, 5, (7, 2), (5, 1), (0, 2, 2, 5)),
    (3, 6, (6, 1), (6, 1), (1, 3, 0, 6)),  # rows that follow each other: one run (taps x channels)
    (3, 6, (6, 1), (6, 1), (0, 3, 0, 6)),
]
W_ALIGNED = 40  # a weight stride keeping every row word-aligned: the eight-a-step LDRD loop
W_WINDOWS = 44  # the four-channel windows' weight stride
BLOCKED_LENGTHS = range(0, 49, 8)  # the blocked kernels' counts (multiples of 8)
COPY_LENGTHS = range(0, 41, 5)  # the copies' byte counts
STAGED = 44  # bytes around each staged window (the largest has 40 taps)
RUNS_WINDOWS = [  # (kh, kw, n, x strides, taps inside y0, y1, x0, x1): taps of n contiguous values
    (2, 2, 8, (40, 12), (0, 2, 0, 2)),
    (2, 2, 8, (40, 12), (1, 2, 0, 1)),
    (2, 2, 8, (40, 8), (0, 2, 1, 2)),
    (1, 3, 16, (60, 16), (0, 1, 0, 3)),  # the taps' data follow each other: one run
    (1, 3, 16, (60, 16), (0, 1, 1, 3)),
    (2, 2, 8, (40, 8), (0, 0, 0, 0)),  # all padding
]
W_RUNS = 44  # the unblocked four-channel runs kernel's channel stride
# Every length at every byte offset of the data, the weights at the mirrored offset; the four-channel
# kernels; windows inside and at borders. The input: 128 data bytes, then 192 weight bytes.
KERNELS_C = (
    """\
#include "model.h"
#include "tvmmcu_dot.h"

static const int32_t windows[][12] = {WINDOWS};
static const int32_t runs[][11] = {RUNS};

int32_t tvmmcu_model_run(const void *input, void *output)
{
    const int8_t *x = (const int8_t *)input;
    const int8_t *w = x + 128;
    const int16_t *wh = (const int16_t *)(const void *)(x + 320);
    int32_t *out = (int32_t *)output;
    for (int32_t n = 0; n < 38; ++n) {
        for (int32_t off = 0; off < 4; ++off) {
            *out++ = tvmmcu_dot_s8s8(x + off, w + 3 - off, n, 1000 * n + off);
            *out++ = tvmmcu_dot_u8s8((const uint8_t *)x + off, w + 3 - off, n, -1000 * n - off);
            *out++ = tvmmcu_dot_sum_s8(w + 3 - off, n, 131, n);
            int32_t acc[4] = {n, -n, off, 7};
            tvmmcu_dot4_s8s8(x + off, w + off, {W_ROWS}, n, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
            tvmmcu_dot4_u8s8((const uint8_t *)x + off, w + off, {W_ROWS}, n, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
            tvmmcu_dot4_sum_s8(w + off, {W_ROWS}, n, -77, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
            tvmmcu_dot4_s8s8(x + off, w + off, {W_ALIGNED}, n, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
        }
    }
    for (unsigned k = 0; k < sizeof windows / sizeof windows[0]; ++k) {
        const int32_t *c = windows[k];
        const int8_t *at = x + 8 + c[8] * c[2] + c[10] * c[3];
        *out++ = tvmmcu_dot_win_s8s8(at, c[2], c[3], w, c[4], c[5], c[0], c[1], c[8], c[9], c[10], c[11],
                                     -9, 5);
        *out++ = tvmmcu_dot_win_u8s8((const uint8_t *)at, c[2], c[3], w, c[4], c[5], c[0], c[1], c[8], c[9],
                                     c[10], c[11], 200, -5);
        int32_t acc[4] = {5, -6, 7, -8};
        tvmmcu_dot4_win_s8s8(at, c[2], c[3], w, {W_WINDOWS}, c[4], c[5], c[0], c[1], c[8], c[9], c[10],
                             c[11], -9, acc);
        for (int j = 0; j < 4; ++j) *out++ = acc[j];
        tvmmcu_dot4_win_u8s8((const uint8_t *)at, c[2], c[3], w, {W_WINDOWS}, c[4], c[5], c[0], c[1], c[8],
                             c[9], c[10], c[11], 200, acc);
        for (int j = 0; j < 4; ++j) *out++ = acc[j];
    }
    /* Staged windows (StageWindows): the kh x kw taps row after row, the padding value outside,
       nothing written past them; the padding as an int8 and as a uint8 value. */
    for (unsigned k = 0; k < sizeof windows / sizeof windows[0]; ++k) {
        const int32_t *c = windows[k];
        const int8_t *at = x + 8 + c[8] * c[2] + c[10] * c[3];
        for (int32_t pad = -9; pad <= 200; pad += 209) {
            uint8_t staged[STAGED];
            for (int j = 0; j < STAGED; ++j) staged[j] = 99;
            tvmmcu_dot_stage8(staged, at, c[2], c[3], c[0], c[1], c[8], c[9], c[10], c[11], pad);
            for (int j = 0; j < STAGED; ++j) *out++ = staged[j];
        }
    }
    /* Copies: the 128 data bytes' first n bytes a word at a time, and scattered 3 bytes apart. */
    for (int32_t n = 0; n <= 40; n += 5) {
        int8_t buf[160];
        for (int j = 0; j < 160; ++j) buf[j] = (int8_t)(j - 80);
        tvmmcu_dot_copy8(buf + 1, x + 3, n);
        tvmmcu_dot_scatter8(buf + 42, 3, x, n);
        for (int j = 0; j < 160; j += 4) {
            *out++ = (int32_t)buf[j] + 256 * buf[j + 1] + 65536 * buf[j + 2] - 16777216 * buf[j + 3];
        }
    }
    /* Blocked weights (BlockWeights' layout): the 192 weight bytes as four channels of 48 values. */
    for (int32_t n = 0; n <= 48; n += 8) {
        for (int32_t off = 0; off < 4; ++off) {
            int32_t acc[4] = {n, -n, off, -7};
            tvmmcu_dot4b_s8s8(x + off, w, n, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
            tvmmcu_dot4b_u8s8((const uint8_t *)x + off, w, n, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
            tvmmcu_dot4b_sum_s8(w, n, 93, acc);
            for (int j = 0; j < 4; ++j) *out++ = acc[j];
            /* The same weights pre-widened to halfwords (WidenWeights' layout), after the bytes. */
            int32_t acch[4] = {n, -n, off, -7};
            tvmmcu_dot4h_s8s16(x + off, wh, n, acch);
            for (int j = 0; j < 4; ++j) *out++ = acch[j];
            tvmmcu_dot4h_u8s16((const uint8_t *)x + off, wh, n, acch);
            for (int j = 0; j < 4; ++j) *out++ = acch[j];
            tvmmcu_dot4h_sum_s16(wh, n, 93, acch);
            for (int j = 0; j < 4; ++j) *out++ = acch[j];
        }
    }
    /* Windows of runs (each tap n values; the weights' taps follow each other): one channel, four
       channels ws apart, four channels blocked. */
    for (unsigned k = 0; k < sizeof runs / sizeof runs[0]; ++k) {
        const int32_t *c = runs[k];
        const int8_t *at = x + 8 + c[7] * c[3] + c[9] * c[4];
        *out++ = tvmmcu_dot_runs_s8s8(at, c[3], c[4], w, c[1] * c[2], c[2], c[0], c[1], c[2], c[7], c[8],
                                      c[9], c[10], -9, 5);
        *out++ = tvmmcu_dot_runs_u8s8((const uint8_t *)at, c[3], c[4], w, c[1] * c[2], c[2], c[0], c[1], c[2],
                                      c[7], c[8], c[9], c[10], 200, -5);
        int32_t acc[4] = {5, -6, 7, -8};
        tvmmcu_dot4_runs_s8s8(at, c[3], c[4], w, {W_RUNS}, c[1] * c[2], c[2], c[0], c[1], c[2], c[7], c[8],
                              c[9], c[10], -9, acc);
        for (int j = 0; j < 4; ++j) *out++ = acc[j];
        int32_t accb[4] = {5, -6, 7, -8};
        tvmmcu_dot4b_runs_s8s8(at, c[3], c[4], w, c[0], c[1], c[2], c[7], c[8], c[9], c[10], -9, accb);
        for (int j = 0; j < 4; ++j) *out++ = accb[j];
        tvmmcu_dot4b_runs_u8s8((const uint8_t *)at, c[3], c[4], w, c[0], c[1], c[2], c[7], c[8], c[9], c[10],
                               200, accb);
        for (int j = 0; j < 4; ++j) *out++ = accb[j];
        int32_t acch[4] = {5, -6, 7, -8};
        tvmmcu_dot4h_runs_s8s16(at, c[3], c[4], wh, c[0], c[1], c[2], c[7], c[8], c[9], c[10], -9, acch);
        for (int j = 0; j < 4; ++j) *out++ = acch[j];
        tvmmcu_dot4h_runs_u8s16((const uint8_t *)at, c[3], c[4], wh, c[0], c[1], c[2], c[7], c[8], c[9],
                                c[10], 200, acch);
        for (int j = 0; j < 4; ++j) *out++ = acch[j];
    }
    /* The same windows with constant sizes and taps, as SplitBorders leaves them: unrolled. */
    {KNOWN}
    return 0;
}
""".replace("{W_ROWS}", str(W_ROWS))
    .replace("STAGED", str(STAGED))
    .replace("{W_ALIGNED}", str(W_ALIGNED))
    .replace("{W_WINDOWS}", str(W_WINDOWS))
    .replace("{W_RUNS}", str(W_RUNS))
    .replace(
        "{RUNS}",
        "{"
        + ", ".join(
            "{" + ", ".join(str(v) for v in (kh, kw, n, *xs, 0, 0, *t)) + "}"
            for kh, kw, n, xs, t in RUNS_WINDOWS
        )
        + "}",
    )
    .replace(
        "{KNOWN}",
        "\n    ".join(
            f"*out++ = tvmmcu_dot_win_s8s8(x + {8 + t[0] * xs[0] + t[2] * xs[1]}, {xs[0]}, {xs[1]}, w, "
            f"{ws[0]}, {ws[1]}, {kh}, {kw}, {t[0]}, {t[1]}, {t[2]}, {t[3]}, -9, 5);\n    "
            f"{{ int32_t acc[4] = {{5, -6, 7, -8}}; "
            f"tvmmcu_dot4_win_s8s8(x + {8 + t[0] * xs[0] + t[2] * xs[1]}, {xs[0]}, {xs[1]}, w, {W_WINDOWS}, "
            f"{ws[0]}, {ws[1]}, {kh}, {kw}, {t[0]}, {t[1]}, {t[2]}, {t[3]}, -9, acc); "
            f"for (int j = 0; j < 4; ++j) *out++ = acc[j]; }}"
            for kh, kw, xs, ws, t in WINDOWS
        ),
    )
    .replace(
        "{WINDOWS}",
        "{"
        + ", ".join(
            "{" + ", ".join(str(v) for v in (kh, kw, *xs, *ws, 0, 0, *t)) + "}"
            for kh, kw, xs, ws, t in WINDOWS
        )
        + "}",
    )
)


def _expected_kernels(data: np.ndarray) -> np.ndarray:
    x, w = data[:128].astype(np.int64), data[128:].astype(np.int64)
    u = data[:128].view(np.uint8).astype(np.int64)
    out: list[int] = []
    for n in LENGTHS:
        for off in range(4):
            xs, us, ws = x[off : off + n], u[off : off + n], w[3 - off : 3 - off + n]
            out += [1000 * n + off + xs @ ws, -1000 * n - off + us @ ws, n + 131 * ws.sum()]
            rows = [w[off + j * W_ROWS : off + j * W_ROWS + n] for j in range(4)]
            acc = [n + x[off : off + n] @ rows[0], -n + x[off : off + n] @ rows[1]]
            acc += [off + x[off : off + n] @ rows[2], 7 + x[off : off + n] @ rows[3]]
            out += acc
            acc = [a + u[off : off + n] @ r for a, r in zip(acc, rows, strict=True)]
            out += acc
            acc = [a - 77 * r.sum() for a, r in zip(acc, rows, strict=True)]
            out += acc
            out += [
                a + x[off : off + n] @ w[off + j * W_ALIGNED : off + j * W_ALIGNED + n]
                for j, a in enumerate(acc)
            ]

    def window(values: np.ndarray, weights: np.ndarray, shape: tuple, pad: int, acc: int) -> int:
        kh, kw, (xsy, xsx), (wsy, wsx), (y0, y1, x0, x1) = shape
        total = acc
        for ry in range(kh):
            for rx in range(kw):
                inside = y0 <= ry < y1 and x0 <= rx < x1
                total += weights[ry * wsy + rx * wsx] * (values[8 + ry * xsy + rx * xsx] if inside else pad)
        return total

    four = [w[j * W_WINDOWS :] for j in range(4)]
    for shape in WINDOWS:
        out += [window(x, w, shape, -9, 5), window(u, w, shape, 200, -5)]
        acc = [window(x, wj, shape, -9, a) for wj, a in zip(four, (5, -6, 7, -8), strict=True)]
        out += acc
        out += [window(u, wj, shape, 200, a) for wj, a in zip(four, acc, strict=True)]
    for kh, kw, (xsy, xsx), _, (y0, y1, x0, x1) in WINDOWS:
        for pad in (-9, 200):
            staged = np.full(STAGED, 99, np.int64)
            for ry in range(kh):
                for rx in range(kw):
                    inside = y0 <= ry < y1 and x0 <= rx < x1
                    staged[ry * kw + rx] = u[8 + ry * xsy + rx * xsx] if inside else pad % 256
            out += list(staged)
    for n in COPY_LENGTHS:
        buf = np.arange(-80, 80, dtype=np.int64).astype(np.int8).astype(np.int64)
        buf[1 : 1 + n] = x[3 : 3 + n]
        buf[42 : 42 + 3 * n : 3] = x[:n]
        out += [
            int(buf[j] + 256 * buf[j + 1] + 65536 * buf[j + 2] - 16777216 * buf[j + 3])
            for j in range(0, 160, 4)
        ]
    blocked = w[:192].reshape(6, 4, 8)  # [n / 8][channel][8]
    for n in BLOCKED_LENGTHS:
        for off in range(4):
            rows = [blocked[: n // 8, j, :].reshape(-1) for j in range(4)]
            acc = [a + x[off : off + n] @ r for a, r in zip((n, -n, off, -7), rows, strict=True)]
            blocked_out = list(acc)
            acc = [a + u[off : off + n] @ r for a, r in zip(acc, rows, strict=True)]
            blocked_out += acc
            blocked_out += [a + 93 * r.sum() for a, r in zip(acc, rows, strict=True)]
            out += blocked_out * 2  # int8 and halfword weights alike

    def runs(values: np.ndarray, tap_weights: Any, shape: tuple, pad: int, acc: int) -> int:
        kh, kw, n, (xsy, xsx), (y0, y1, x0, x1) = shape
        total = acc
        for ry in range(kh):
            for rx in range(kw):
                wt = tap_weights(ry * kw + rx, n)
                if y0 <= ry < y1 and x0 <= rx < x1:
                    at = 8 + ry * xsy + rx * xsx
                    total += int(values[at : at + n] @ wt)
                else:
                    total += pad * int(wt.sum())
        return total

    def plain(channel: int) -> Any:
        return lambda t, n: w[channel * W_RUNS + t * n : channel * W_RUNS + (t + 1) * n]

    def blocked_channel(channel: int) -> Any:  # tap t's n values: 4 * n * t into the blocked layout
        def get(t: int, n: int) -> np.ndarray:
            base = 4 * n * t
            return np.concatenate(
                [w[base + 32 * c + 8 * channel : base + 32 * c + 8 * channel + 8] for c in range(n // 8)]
            )

        return get

    for shape in RUNS_WINDOWS:
        out += [runs(x, lambda t, n: w[t * n : (t + 1) * n], shape, -9, 5)]
        out += [runs(u, lambda t, n: w[t * n : (t + 1) * n], shape, 200, -5)]
        out += [runs(x, plain(j), shape, -9, a) for j, a in enumerate((5, -6, 7, -8))]
        acc = [runs(x, blocked_channel(j), shape, -9, a) for j, a in enumerate((5, -6, 7, -8))]
        unsigned = [runs(u, blocked_channel(j), shape, 200, a) for j, a in enumerate(acc)]
        out += (acc + unsigned) * 2  # int8 and halfword weights alike
    for shape in WINDOWS:  # the constant ones
        out.append(window(x, w, shape, -9, 5))
        out += [window(x, wj, shape, -9, a) for wj, a in zip(four, (5, -6, 7, -8), strict=True)]
    return np.array(out, np.int64).astype(np.int32)


def _kernel_data() -> np.ndarray:
    """128 data bytes, 192 weight bytes, then those weights as halfwords in WidenWeights' order (the
    192 bytes as 6 blocks of 4 channels x 8 values)."""
    from tvm_mcu.passes.tir.widen_weights import HALF_ORDER

    rng = np.random.default_rng(7)
    data = rng.integers(-128, 128, 320).astype(np.int8)
    data[:6], data[128:134] = -128, -128  # the largest products
    data[6:9] = 127
    halfwords = data[128:].reshape(6, 4, 8)[:, :, HALF_ORDER].astype("<i2")
    return np.concatenate([data, halfwords.reshape(-1).view(np.int8)])


def _kernel_lib(directory: Path) -> tuple[Path, int]:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    n_out = 4 * (
        len(LENGTHS) * 4 * 19
        + 15 * len(WINDOWS)
        + len(BLOCKED_LENGTHS) * 4 * 24
        + 22 * len(RUNS_WINDOWS)
        + 40 * len(COPY_LENGTHS)
        + 2 * STAGED * len(WINDOWS)
    )
    directory.mkdir(parents=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=320 + 384, outputs=n_out))
    (directory / "model.c").write_text(KERNELS_C)
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory, n_out


def test_the_kernels_are_exact_in_plain_c(tmp_path: Path) -> None:
    """The portable path (the host, as on Cortex-M3) against numpy at every length and alignment."""
    import ctypes
    import shutil
    import subprocess

    lib, n_out = _kernel_lib(tmp_path / "lib")
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    data = _kernel_data()
    out = np.zeros(n_out // 4, np.int32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(data.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    np.testing.assert_array_equal(out, _expected_kernels(data))


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an385", "mps2-an521"])
def test_the_kernels_are_exact_on_every_core(board: str, tmp_path: Path) -> None:
    """SMLAD on SXTB16/UXTB16 pairs (Cortex-M4, M7) and the plain loop (M3, the M33 built without DSP)
    against numpy, the extremes of int8 and uint8 included, at every alignment."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    lib, n_out = _kernel_lib(tmp_path / "lib")
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    data = _kernel_data()
    result = run_firmware(fw, data.tobytes(), n_out)
    np.testing.assert_array_equal(np.frombuffer(result.output, np.int32), _expected_kernels(data))


@I.ir_module
class CopyBefore:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("int8", "global"), W: T.handle("int8", "global")):
        T.func_attr({"global_symbol": "f"})
        A_1 = T.decl_buffer((320,), "int8", data=A)
        W_1 = T.decl_buffer((64,), "int8", data=W)
        # An in-place pointwise convolution's staged pixel written back; a strided copy stays.
        for p in range(5):
            for c in range(64):
                A_1[p * 64 + c] = W_1[c]
            for c in range(4):
                A_1[p * 64 + c * 16] = W_1[c]


@I.ir_module
class CopyExpected:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("int8", "global"), W: T.handle("int8", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        A_1 = T.decl_buffer((320,), "int8", data=A)
        W_1 = T.decl_buffer((64,), "int8", data=W)
        for p in range(5):
            T.call_extern("int32", "tvmmcu_dot_copy8", T.address_of(A_1[p * 64]), T.address_of(W_1[0]), 64)
            for c in range(4):
                A_1[p * 64 + c * 16] = W_1[c]


def test_a_staged_copy_back_is_a_word_copy() -> None:
    _tvm.assert_structural_equal(UseDotKernels()(CopyBefore), CopyExpected)


@I.ir_module
class ScatterBefore:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("int8", "global"), W: T.handle("int8", "global")):
        T.func_attr({"global_symbol": "f"})
        A_1 = T.decl_buffer((800,), "int8", data=A)
        W_1 = T.decl_buffer((25,), "int8", data=W)
        # A depthwise convolution's staged 5x5 plane of channel 3 written back between the 32 channels.
        for y in range(5):
            for x in range(5):
                A_1[y * 160 + x * 32 + 3] = W_1[y * 5 + x]


@I.ir_module
class ScatterExpected:
    @T.prim_func(s_tir=True)
    def f(A: T.handle("int8", "global"), W: T.handle("int8", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        A_1 = T.decl_buffer((800,), "int8", data=A)
        W_1 = T.decl_buffer((25,), "int8", data=W)
        T.call_extern("int32", "tvmmcu_dot_scatter8", T.address_of(A_1[3]), 32, T.address_of(W_1[0]), 25)


def test_a_staged_plane_written_back_between_channels_is_one_scatter() -> None:
    _tvm.assert_structural_equal(UseDotKernels()(ScatterBefore), ScatterExpected)
