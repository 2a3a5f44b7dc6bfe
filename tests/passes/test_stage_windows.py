"""StageWindows: an output pixel's window copied once for every block of four output channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tvm.script import ir as I
from tvm.script import tirx as T

from tests import host
from tests.passes import assert_idempotent_and_pure
from tests.passes.test_use_dot_kernels import _conv_nhwc
from tvm_mcu import _tvm, pipeline
from tvm_mcu._tvm import tirx, tvm
from tvm_mcu.passes.tir import StageWindows
from tvm_mcu.passes.tir.each_function import extern_name


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        Y: T.handle("int32", "global"),
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((60,), "int8", data=X)
        W_1 = T.decl_buffer((96,), "int8", data=W)
        Y_1 = T.decl_buffer((24,), "int32", data=Y)
        # BlockOutputChannels' loop: a 2 x 4 window over one input channel (KWS's first layer), eight
        # output channels in two blocks, rows padded at the top.
        for yy, xx, ff_o in T.grid(2, 3, 2):
            acc4 = T.alloc_buffer((4,), "int32")
            acc4[0] = 0
            acc4[1] = 0
            acc4[2] = 0
            acc4[3] = 0
            T.call_extern(
                "int32",
                "tvmmcu_dot4_win_s8s8",
                T.address_of(X_1[yy * 20 + xx * 2 + T.max(0, 1 - yy) * 10]),
                10,
                1,
                T.address_of(W_1[ff_o * 32]),
                8,
                4,
                1,
                2,
                4,
                T.max(0, 1 - yy),
                2,
                0,
                4,
                -3,
                T.address_of(acc4[0]),
            )
            for ff_i in T.unroll(4):
                Y_1[yy * 12 + xx * 4 + ff_i] = acc4[ff_i]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        Y: T.handle("int32", "global"),
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.windows_staged": True})
        X_1 = T.decl_buffer((60,), "int8", data=X)
        W_1 = T.decl_buffer((96,), "int8", data=W)
        Y_1 = T.decl_buffer((24,), "int32", data=Y)
        for yy, xx in T.grid(2, 3):
            # The window staged once per pixel, the padding value in its top row where it lies outside.
            window = T.alloc_buffer((8,), "int8")
            T.call_extern(
                "int32",
                "tvmmcu_dot_stage8",
                T.address_of(window[0]),
                T.address_of(X_1[yy * 20 + xx * 2 + T.max(0, 1 - yy) * 10]),
                10,
                1,
                2,
                4,
                T.max(0, 1 - yy),
                2,
                0,
                4,
                -3,
            )
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "int32")
                acc4[0] = 0
                acc4[1] = 0
                acc4[2] = 0
                acc4[3] = 0
                # Each block: one contiguous dot product over the 8 staged taps.
                T.call_extern(
                    "int32",
                    "tvmmcu_dot4_s8s8",
                    T.address_of(window[0]),
                    T.address_of(W_1[ff_o * 32]),
                    8,
                    8,
                    T.address_of(acc4[0]),
                )
                for ff_i in T.unroll(4):
                    Y_1[yy * 12 + xx * 4 + ff_i] = acc4[ff_i]


def test_a_window_read_by_every_block_is_staged_once_per_pixel() -> None:
    _tvm.assert_structural_equal(StageWindows()(Before), Expected)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(StageWindows(), Before)


_ARGS = ("x", "xsy", "xsx", "w", "ws", "wsy", "wsx", "kh", "kw", "y0", "y1", "x0", "x1", "pad", "acc")


def _loop(name: str) -> Any:
    found: list[Any] = []
    _tvm.structural_walk(
        Before["f"].body, (tirx.For, lambda f: found.append(f) if f.loop_var.name == name else None)
    )
    return found[0]


def _variant(blocks: int | None = None, **change: Any) -> tvm.IRModule:
    """``Before`` with the window call's arguments changed (by name) or ``blocks`` blocks of channels."""

    def edit(call: Any) -> Any:
        if extern_name(call) != "tvmmcu_dot4_win_s8s8":
            return call
        args = list(call.args[1:])
        for key, value in change.items():
            args[_ARGS.index(key)] = value
        return tirx.call_extern("int32", "tvmmcu_dot4_win_s8s8", *args)

    def resize(loop: Any) -> Any:
        if blocks is None or loop.loop_var.name != "ff_o":
            return loop
        return tirx.For(loop.loop_var, loop.min, tirx.IntImm("int32", blocks), loop.kind, loop.body)

    func = Before["f"]
    body = _tvm.structural_map(func.body, [(tvm.ir.Call, edit), (tirx.For, resize)])
    return tvm.IRModule({"f": func.with_body(body)})


def test_declines_windows_it_cannot_stage() -> None:
    declined = {
        "weights with a gap between rows": _variant(wsy=tirx.IntImm("int32", 5)),
        "a window that moves with the block": _variant(y0=_loop("ff_o").loop_var),
        "one block of channels": _variant(blocks=1),
    }
    for why, mod in declined.items():
        after = StageWindows()(mod)
        assert _tvm.structural_equal(after["f"].body, mod["f"].body), why


def test_an_in_place_operator_storing_to_its_parameters_keeps_its_window_kernel() -> None:
    mod = tvm.IRModule({"f": Before["f"].with_attr("tvmmcu.in_place", "depthwise")})
    after = StageWindows()(mod)
    _tvm.assert_structural_equal(after["f"].body, mod["f"].body)


STAGED_CASES = [
    # (input NHWC, (O, KH, KW), strides, pads (t, l, b, r), zero point, data dtype)
    ((1, 12, 7, 1), (12, 4, 4), (2, 2), (1, 1, 2, 2), 83, "int8"),  # one input channel, 3 blocks
    ((1, 9, 10, 1), (8, 10, 4), (2, 2), (4, 1, 5, 2), -128, "int8"),  # KWS's first layer's window
    ((1, 7, 7, 3), (8, 3, 3), (2, 2), (1, 1, 1, 1), 131, "uint8"),  # RGB rows (3 x 9 fused taps)
]


@pytest.mark.parametrize(
    "case", STAGED_CASES, ids=[f"c{c[0][3]}o{c[1][0]}k{c[1][1]}x{c[1][2]}" for c in STAGED_CASES]
)
def test_staged_convolutions_stay_bit_exact(case: tuple, tmp_path: Path) -> None:
    """The compiled convolution with the window staged (the whole operator pipeline) against TVM's
    loops without the dot kernels, built by host gcc, at the extremes of the data type."""
    shape, kernel, strides, pads, zp, dtype = case
    func = _conv_nhwc(shape, kernel, strides, pads, zp, dtype, epilogue=True)
    mod = tvm.IRModule({"main": func})
    passes = pipeline.operator_passes(symbol_prefix="k_")
    without = [p for p in passes if p.info.name not in ("UseDotKernels", "StageWindows")]
    rng = np.random.default_rng(sum(shape) + kernel[1])
    info = np.iinfo(np.dtype(dtype))
    x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    x.reshape(-1)[:4] = info.min
    w_shape = [int(d) for d in func.params[1].ty.shape]
    w = rng.integers(-128, 127, w_shape, endpoint=True).astype(np.int8)
    w.reshape(-1)[:4] = -128
    outs = []
    for chosen in (without, passes):
        lowered = pipeline.run(chosen, mod)
        source = host.kernel_source(lowered)
        assert ("tvmmcu_dot_stage8" in source) == (chosen is passes)
        fn, ws = host.build_kernel(lowered, tmp_path, "k_main")
        out = np.zeros([int(d) for d in func.params[-1].ty.shape], np.int32)
        host.call_kernel(fn, [x, w, out], ws)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    assert np.any(outs[0] != 0)
