"""UseDotKernels on float32: reductions over float data and weights become float kernel calls, the zero
padding's taps left out; the float kernels against numpy on the host and on every core."""

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
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), C: T.handle("float32", "global")
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((80,), "float32", data=X)
        W_1 = T.decl_buffer((128,), "float32", data=W)
        C_1 = T.decl_buffer((60,), "float32", data=C)
        acc = T.alloc_buffer((1,), "float32")
        # A dense layer, its weights laid out (K, O): the output channels between the values of k.
        for o in range(4):
            acc[0] = T.float32(0)
            for k in range(16):
                acc[0] = acc[0] + X_1[o * 16 + k] * W_1[k * 4 + o]
            C_1[o] = acc[0]
        # A row of taps that runs into the zero padding on either side.
        for o in range(4):
            acc[0] = T.float32(0)
            for k in range(8):
                acc[0] = (
                    acc[0]
                    + T.if_then_else(T.And(o * 3 + k >= 2, o * 3 + k < 12), X_1[o * 3 + k - 2], T.float32(0))
                    * W_1[k + 64]
                )
            C_1[o + 4] = acc[0]
        # A depthwise 3x3 window over a 5x4x4 NHWC input padded by one.
        for y, x, c in T.grid(5, 4, 4):
            acc[0] = T.float32(0)
            for ry in range(3):
                for rx in range(3):
                    acc[0] = (
                        acc[0]
                        + T.if_then_else(
                            T.And(T.And(y + ry >= 1, y + ry < 6), T.And(x + rx >= 1, x + rx < 5)),
                            X_1[(y + ry) * 16 + (x + rx) * 4 + c - 20],
                            T.float32(0),
                        )
                        * W_1[ry * 12 + rx * 4 + c + 80]
                    )
            C_1[8 + y * 4 + x] = acc[0]
        # A 2x2 convolution of 4 input channels (HWIO weights, 2 output channels) padded at the top.
        for y, x, o in T.grid(2, 3, 2):
            acc[0] = T.float32(0)
            for ry, rx, rc in T.grid(2, 2, 4):
                acc[0] = (
                    acc[0]
                    + T.if_then_else(y + ry >= 1, X_1[(y + ry) * 16 + (x + rx) * 4 + rc - 16], T.float32(0))
                    * W_1[ry * 16 + rx * 8 + rc * 2 + o]
                )
            C_1[28 + y * 6 + x * 2 + o] = acc[0]
        # A staged plane written back between the channels, and a staged pixel copied back.
        for y, x in T.grid(2, 4):
            X_1[y * 16 + x * 4 + 1] = C_1[y * 4 + x]
        for c in range(16):
            X_1[c + 64] = C_1[c + 40]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), C: T.handle("float32", "global")
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((80,), "float32", data=X)
        W_1 = T.decl_buffer((128,), "float32", data=W)
        C_1 = T.decl_buffer((60,), "float32", data=C)
        acc = T.alloc_buffer((1,), "float32")
        for o in range(4):
            acc[0] = T.float32(0)
            # The weights' stride along the reduction (4) before the count.
            acc[0] = T.call_extern(
                "float32", "tvmmcu_dot_f32", T.address_of(X_1[o * 16]), T.address_of(W_1[o]), 4, 16, acc[0]
            )
            C_1[o] = acc[0]
        # The taps inside, [lo, hi), only: the padding adds nothing.
        for o in range(4):
            acc[0] = T.float32(0)
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_f32",
                T.address_of(X_1[o * 3 - 2 + T.min(T.max(0, 2 - o * 3), 8)]),
                T.address_of(W_1[64 + T.min(T.max(0, 2 - o * 3), 8)]),
                1,
                T.max(T.min(8, 12 - o * 3), T.min(T.max(0, 2 - o * 3), 8)) - T.min(T.max(0, 2 - o * 3), 8),
                acc[0],
            )
            C_1[o + 4] = acc[0]
        for y, x, c in T.grid(5, 4, 4):
            acc[0] = T.float32(0)
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_win_f32",
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
                acc[0],
            )
            C_1[8 + y * 4 + x] = acc[0]
        for y, x, o in T.grid(2, 3, 2):
            acc[0] = T.float32(0)
            # The input channels' stride in the weights (2) after the taps'.
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_runs_f32",
                T.address_of(X_1[16 * y + 4 * x - 16 + T.min(T.max(0, 1 - y), 2) * 16 + 0 * 4]),
                16,
                4,
                T.address_of(W_1[o]),
                16,
                8,
                2,
                2,
                2,
                4,
                T.min(T.max(0, 1 - y), 2),
                T.max(2, T.min(T.max(0, 1 - y), 2)),
                0,  # no test on rx: all its taps
                2,
                acc[0],
            )
            C_1[28 + y * 6 + x * 2 + o] = acc[0]
        T.call_extern("int32", "tvmmcu_dot_scatter_f32", T.address_of(X_1[1]), 4, T.address_of(C_1[0]), 8)
        T.call_extern("int32", "tvmmcu_dot_scatter_f32", T.address_of(X_1[64]), 1, T.address_of(C_1[40]), 16)


def test_float_reductions_become_kernel_calls() -> None:
    _tvm.assert_structural_equal(UseDotKernels()(Before), Expected)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(UseDotKernels(), Before)


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"),
        W: T.handle("float32", "global"),
        H: T.handle("float16", "global"),
        C: T.handle("float32", "global"),
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "float32", data=X)
        W_1 = T.decl_buffer((256,), "float32", data=W)
        H_1 = T.decl_buffer((64,), "float16", data=H)
        C_1 = T.decl_buffer((8,), "float32", data=C)
        acc = T.alloc_buffer((4,), "float32")
        acch = T.alloc_buffer((1,), "float16")
        # Padding that holds 1.0 adds to the sum: no tap may be left out.
        for k in range(16):
            acc[0] = acc[0] + T.if_then_else(k >= 2, X_1[k - 2], T.float32(1)) * W_1[k]
        # Neither operand contiguous along the loop.
        for k in range(16):
            acc[0] = acc[0] + X_1[k * 2] * W_1[k * 3]
        # float16: no kernel.
        for k in range(16):
            acch[0] = acch[0] + H_1[k] * H_1[k + 16]
        # The accumulator moves with the loop.
        for k in range(4):
            acc[k] = acc[k] + X_1[k] * W_1[k]
        # The padding test is no range of the loop.
        for k in range(16):
            acc[0] = acc[0] + T.if_then_else(k % 2 == 0, X_1[k], T.float32(0)) * W_1[k]
        # Something else happens in the loop.
        for k in range(16):
            acc[0] = acc[0] + X_1[k] * W_1[k]
            C_1[1] = acc[0]
        # The loop does not start at 0.
        for k in range(2, 16):
            acc[0] = acc[0] + X_1[k] * W_1[k]
        # A copy too short for a call, and one within a buffer.
        for k in range(4):
            C_1[k] = X_1[k]
        for k in range(16):
            X_1[k + 32] = X_1[k]
        C_1[0] = acc[0]


def test_declines_what_the_float_kernels_do_not_compute() -> None:
    after = UseDotKernels()(Declined)
    _tvm.assert_structural_equal(after["f"].body, Declined["f"].body)


def _conv_nhwc_f32(shape, kernel, strides, pads, relu=False):
    """A float32 NHWC convolution with HWIO weights (O = 0: depthwise, HWOI), zero padding, optionally
    a bias and a ReLU fused after it (an intermediate accumulator, as in a compiled model)."""
    from tvm import te, topi

    n, h, w, c = shape
    o, kh, kw = kernel
    x = te.placeholder(shape, "float32", name="x")
    depthwise = o == 0
    wt = te.placeholder((kh, kw, c, 1) if depthwise else (kh, kw, c, o), "float32", name="w")
    top, left, bottom, right = pads
    padded = topi.nn.pad(x, [0, top, left, 0], [0, bottom, right, 0], pad_value=0.0)
    groups, layout = (c, "HWOI") if depthwise else (1, "HWIO")
    out = topi.nn.conv(padded, wt, strides, 0, (1, 1), groups, "NHWC", layout, out_dtype="float32")
    if not relu:
        return te.create_prim_func([x, wt, out])
    bias = te.placeholder((int(out.shape[3]),), "float32", name="b")
    act = topi.nn.relu(topi.add(out, bias))
    return te.create_prim_func([x, wt, bias, act])


CASES = [
    # (input NHWC, (O, KH, KW), strides, pads (t, l, b, r), bias and ReLU)
    ((1, 5, 4, 16), (8, 1, 1), (1, 1), (0, 0, 0, 0), True),  # pointwise
    ((1, 6, 7, 5), (6, 3, 3), (1, 1), (1, 1, 1, 1), True),  # 3x3 of 5 channels, 6 outputs
    ((1, 9, 6, 1), (8, 4, 3), (2, 2), (2, 1, 1, 0), True),  # one input channel (KWS's first layer)
    ((1, 7, 5, 6), (0, 3, 3), (1, 1), (1, 1, 1, 1), False),  # depthwise
    ((1, 6, 6, 5), (0, 3, 3), (2, 2), (0, 0, 1, 1), True),
    ((1, 6, 6, 3), (4, 5, 5), (1, 1), (2, 2, 2, 2), False),
]


@pytest.mark.parametrize(
    "case", CASES, ids=[f"c{c[0][3]}o{c[1][0]}k{c[1][1]}x{c[1][2]}{'r' * c[4]}" for c in CASES]
)
def test_float_convolutions_stay_within_rounding_on_the_host(case, tmp_path: Path) -> None:
    """The lowered float convolution with and without the pass, built by host gcc: the kernels add the
    same products in the same order per channel (the padding's zeros left out), so the outputs agree to
    float32 rounding."""
    shape, kernel, strides, pads, relu = case
    func = _conv_nhwc_f32(shape, kernel, strides, pads, relu)
    mod = tvm.IRModule({"main": func})
    passes = pipeline.operator_passes(symbol_prefix="k_")
    without = [p for p in passes if p.info.name != "UseDotKernels"]
    assert len(without) == len(passes) - 1
    rng = np.random.default_rng(sum(shape) + kernel[1])
    arrays = [rng.standard_normal([int(d) for d in p.ty.shape]).astype(np.float32) for p in func.params[:-1]]
    outs = []
    for chosen in (without, passes):
        lowered = pipeline.run(chosen, mod)
        source = host.kernel_source(lowered)
        assert ("tvmmcu_dot" in source) == (chosen is passes)
        if chosen is passes and relu and kernel[0] >= 4:
            assert "tvmmcu_dot4_" in source  # four output channels per call
        fn, ws = host.build_kernel(lowered, tmp_path, "k_main")
        out = np.full([int(d) for d in func.params[-1].ty.shape], np.nan, np.float32)
        host.call_kernel(fn, [*arrays, out], ws)
        outs.append(out)
    assert np.all(np.isfinite(outs[1])) and np.any(outs[0] != 0)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


# The float kernels in C against numpy: every count, strides, windows inside and at borders, with sizes
# and taps known when compiling (unrolled) and not. The input: 128 data floats, then 256 weight floats.
DOTS = [(n, wk) for n in range(19) for wk in (1, 4)]
WINDOWS = [  # (kh, kw, x strides, w strides, taps inside y0, y1, x0, x1)
    (3, 3, (20, 4), (9, 3), (0, 3, 0, 3)),
    (3, 3, (20, 4), (9, 3), (1, 3, 0, 2)),
    (3, 3, (20, 4), (9, 3), (0, 0, 0, 0)),
    (10, 4, (10, 1), (16, 4), (4, 10, 1, 4)),
    (10, 4, (10, 1), (16, 4), (0, 10, 0, 4)),  # whole rows (KWS's first convolution's interior)
    (10, 4, (10, 1), (16, 4), (2, 7, 0, 4)),
    (5, 5, (12, 2), (10, 2), (1, 4, 2, 5)),
]
RUNS = [  # (kh, kw, n, x strides, w strides along ry, rx, rc, taps inside)
    (2, 2, 4, (24, 4), (16, 8, 2), (0, 2, 0, 2)),
    (2, 2, 4, (24, 4), (16, 8, 2), (1, 2, 0, 1)),
    (3, 3, 3, (20, 3), (27, 9, 3), (0, 3, 1, 3)),
    (2, 2, 4, (24, 4), (16, 8, 2), (0, 0, 0, 0)),  # all padding
]
SCATTERS = [(n, stride) for n in (0, 5, 8, 13) for stride in (1, 3)]
W4 = 2  # the four-channel kernels' channel stride (HWIO weights have 1; 2 checks the scaling)
N_OUT = 5 * len(DOTS) + 15 * len(WINDOWS) + 5 * len(RUNS) + 64 * len(SCATTERS)


def _c_rows(rows: list[tuple[int, ...]]) -> str:
    return "{" + ", ".join("{" + ", ".join(str(v) for v in r) + "}" for r in rows) + "}"


def _window_at(kh: int, kw: int, xs: tuple[int, int], t: tuple[int, int, int, int]) -> int:
    return 8 + t[0] * xs[0] + t[2] * xs[1]


def _known_windows() -> str:
    """The windows' calls with constant sizes and taps (as SplitBorders leaves them), and with
    constant sizes but taps read at run time (the whole rows, the whole small window)."""
    lines = []
    for k, (kh, kw, xs, ws, t) in enumerate(WINDOWS):
        at = f"x + {_window_at(kh, kw, xs, t)}"
        args = f"{kh}, {kw}, {t[0]}, {t[1]}, {t[2]}, {t[3]}"
        lines.append(
            f"*out++ = tvmmcu_dot_win_f32({at}, {xs[0]}, {xs[1]}, w, {ws[0]}, {ws[1]}, {args}, 0.5f);"
        )
        lines.append(
            f"{{ float acc[4] = {{0.5f, -1.0f, 2.0f, 0.0f}}; "
            f"tvmmcu_dot4_win_f32({at}, {xs[0]}, {xs[1]}, w, {W4}, {ws[0]}, {ws[1]}, {args}, acc); "
            "for (int j = 0; j < 4; ++j) *out++ = acc[j]; }"
        )
        # Through volatile reads: GCC would fold the constant table's values into known taps.
        lines.append(f"taps[0] = windows[{k}][8]; taps[1] = windows[{k}][9]; taps[2] = windows[{k}][10];")
        lines.append(f"taps[3] = windows[{k}][11];")
        taps = "taps[0], taps[1], taps[2], taps[3]"
        lines.append(
            f"{{ float acc[4] = {{0.5f, -1.0f, 2.0f, 0.0f}}; "
            f"tvmmcu_dot4_win_f32({at}, {xs[0]}, {xs[1]}, w, {W4}, {ws[0]}, {ws[1]}, {kh}, {kw}, {taps}, "
            "acc); "
            "for (int j = 0; j < 4; ++j) *out++ = acc[j]; }"
        )
        lines.append(
            f"*out++ = tvmmcu_dot_win_f32({at}, {xs[0]}, {xs[1]}, w, {ws[0]}, {ws[1]}, {kh}, {kw}, {taps}, "
            "0.5f);"
        )
    return "\n    ".join(lines)


KERNELS_C = """\
#include "model.h"
#include "tvmmcu_dot.h"

static const int32_t dots[][2] = {DOTS};
static const int32_t windows[][12] = {WINDOWS};
static const int32_t runs[][14] = {RUNS};
static const int32_t scatters[][2] = {SCATTERS};

int32_t tvmmcu_model_run(const void *input, void *output)
{
    const float *x = (const float *)input;
    const float *w = x + 128;
    float *out = (float *)output;
    for (unsigned k = 0; k < sizeof dots / sizeof dots[0]; ++k) {
        const int32_t n = dots[k][0], wk = dots[k][1];
        *out++ = tvmmcu_dot_f32(x + n % 3, w + 1, wk, n, 0.25f * (float)n);
        float acc[4] = {0.5f, -0.5f, 1.0f, (float)n};
        tvmmcu_dot4_f32(x + n % 3, w + 2, {W4}, wk, n, acc);
        for (int j = 0; j < 4; ++j) *out++ = acc[j];
    }
    volatile int32_t taps[4];
    /* Sizes and taps read at run time: the general loops. */
    for (unsigned k = 0; k < sizeof windows / sizeof windows[0]; ++k) {
        const int32_t *c = windows[k];
        const float *at = x + 8 + c[8] * c[2] + c[10] * c[3];
        *out++ = tvmmcu_dot_win_f32(at, c[2], c[3], w, c[4], c[5], c[0], c[1], c[8], c[9], c[10], c[11],
                                    0.5f);
        float acc[4] = {0.5f, -1.0f, 2.0f, 0.0f};
        tvmmcu_dot4_win_f32(at, c[2], c[3], w, {W4}, c[4], c[5], c[0], c[1], c[8], c[9], c[10], c[11], acc);
        for (int j = 0; j < 4; ++j) *out++ = acc[j];
    }
    {KNOWN}
    for (unsigned k = 0; k < sizeof runs / sizeof runs[0]; ++k) {
        const int32_t *c = runs[k];
        const float *at = x + 8 + c[10] * c[3] + c[12] * c[4];
        *out++ = tvmmcu_dot_runs_f32(at, c[3], c[4], w, c[5], c[6], c[7], c[0], c[1], c[2], c[10], c[11],
                                     c[12], c[13], -0.5f);
        float acc[4] = {0.5f, -1.0f, 2.0f, 0.0f};
        tvmmcu_dot4_runs_f32(at, c[3], c[4], w, {W4}, c[5], c[6], c[7], c[0], c[1], c[2], c[10], c[11], c[12],
                             c[13], acc);
        for (int j = 0; j < 4; ++j) *out++ = acc[j];
    }
    for (unsigned k = 0; k < sizeof scatters / sizeof scatters[0]; ++k) {
        float buf[64];
        for (int j = 0; j < 64; ++j) buf[j] = (float)(-1 - j);
        tvmmcu_dot_scatter_f32(buf + 1, scatters[k][1], x + 2, scatters[k][0]);
        for (int j = 0; j < 64; ++j) *out++ = buf[j];
    }
    return 0;
}
"""
KERNELS_C = (
    KERNELS_C.replace("{W4}", str(W4))
    .replace("{DOTS}", _c_rows(DOTS))
    .replace("{WINDOWS}", _c_rows([(kh, kw, *xs, *ws, 0, 0, *t) for kh, kw, xs, ws, t in WINDOWS]))
    .replace("{RUNS}", _c_rows([(kh, kw, n, *xs, *ws, 0, 0, *t) for kh, kw, n, xs, ws, t in RUNS]))
    .replace("{SCATTERS}", _c_rows(SCATTERS))
    .replace("{KNOWN}", _known_windows())
)


def _window(x: np.ndarray, w: np.ndarray, xs: Any, ws: Any, t: Any, j: int, n: int = 1, wc: int = 0) -> float:
    """Channel j's sum over the taps [y0, y1) x [x0, x1) inside (each a run of n values), in float64."""
    total = 0.0
    for ry in range(t[0], t[1]):
        for rx in range(t[2], t[3]):
            for c in range(n):
                total += x[8 + ry * xs[0] + rx * xs[1] + c] * w[j * W4 + ry * ws[0] + rx * ws[1] + c * wc]
    return total


def _expected_kernels(data: np.ndarray) -> np.ndarray:
    x, w = data[:128].astype(np.float64), data[128:].astype(np.float64)
    out: list[float] = []
    acc4 = (0.5, -1.0, 2.0, 0.0)
    for n, wk in DOTS:
        xs = x[n % 3 : n % 3 + n]
        out.append(0.25 * n + float(xs @ w[1 : 1 + n * wk : wk][:n]))
        sums = [float(xs @ w[2 + j * W4 : 2 + j * W4 + n * wk : wk][:n]) for j in range(4)]
        out += [a + s for a, s in zip((0.5, -0.5, 1.0, n), sums, strict=True)]
    # Sizes and taps read at run time: one call of each kernel per window; constant sizes: each kernel
    # with constant taps, then with taps read at run time.
    for known in (False, True):
        for _kh, _kw, xs, ws, t in WINDOWS:
            one = 0.5 + _window(x, w, xs, ws, t, 0)
            four = [a + _window(x, w, xs, ws, t, j) for j, a in enumerate(acc4)]
            out += [one, *four, *four, one] if known else [one, *four]
    for _kh, _kw, n, xs, ws, t in RUNS:
        out.append(-0.5 + _window(x, w, xs, ws[:2], t, 0, n, ws[2]))
        out += [a + _window(x, w, xs, ws[:2], t, j, n, ws[2]) for j, a in enumerate(acc4)]
    for n, stride in SCATTERS:
        buf = [float(-1 - j) for j in range(64)]
        for k in range(n):
            buf[1 + k * stride] = x[2 + k]
        out += buf
    assert len(out) == N_OUT
    return np.array(out)


def _kernel_data() -> np.ndarray:
    return np.random.default_rng(11).standard_normal(384).astype(np.float32)


def _kernel_lib(directory: Path) -> Path:
    from tests.targets.test_firmware_on_emulator import MODEL_H

    directory.mkdir(parents=True)
    (directory / "model.h").write_text(MODEL_H.format(inputs=4 * 384, outputs=4 * N_OUT))
    (directory / "model.c").write_text(KERNELS_C)
    (directory / "tvmmcu_dot.h").write_text(HEADER_TEXT)
    return directory


def test_the_float_kernels_match_numpy_in_plain_c(tmp_path: Path) -> None:
    """The kernels built by host gcc (ISO C: no fused multiply-add) against numpy in float64."""
    import ctypes
    import shutil
    import subprocess

    lib = _kernel_lib(tmp_path / "lib")
    gcc = shutil.which("gcc")
    assert gcc is not None
    so = tmp_path / "k.so"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(lib)]
    subprocess.run([gcc, *flags, str(lib / "model.c"), "-o", str(so)], check=True)
    data = _kernel_data()
    out = np.full(N_OUT, np.nan, np.float32)
    ctypes.CDLL(str(so)).tvmmcu_model_run(ctypes.c_void_p(data.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    np.testing.assert_allclose(out, _expected_kernels(data), rtol=1e-5, atol=1e-5)


@pytest.mark.emulator
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500", "mps2-an385", "mps2-an521"])
def test_the_float_kernels_match_numpy_on_every_core(board: str, tmp_path: Path) -> None:
    """VFMA on the FPU of the Cortex-M4F and M7, soft float on the M3 and on the M33 of mps2-an521:
    numpy's sums to float32 rounding, with sizes and taps known when compiling and not."""
    from tvm_mcu.targets import build_firmware, load_board, run_firmware

    lib = _kernel_lib(tmp_path / "lib")
    fw = build_firmware(lib, load_board(board), tmp_path / "fw")
    assert fw.warnings == ()
    data = _kernel_data()
    result = run_firmware(fw, data.tobytes(), 4 * N_OUT)
    got = np.frombuffer(result.output, np.float32)
    np.testing.assert_allclose(got, _expected_kernels(data), rtol=1e-5, atol=1e-5)
