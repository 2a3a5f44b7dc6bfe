"""BlockWeights: weights read four output channels at a time, stored so one pointer walks them."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import BlockOutputChannels, BlockWeights, UseDotKernels
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, block


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        C: T.handle("int32", "global"),
        Y: T.handle("int8", "global"),
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((192,), "int8", data=W)
        C_1 = T.decl_buffer((8,), "int32", data=C)
        Y_1 = T.decl_buffer((64,), "int8", data=Y)
        # BlockOutputChannels' calls: eight output channels of three taps of 8 input channels (S = 24).
        for p in range(4):
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "int32")
                acc4[0] = 0
                acc4[1] = 0
                acc4[2] = 0
                acc4[3] = 0
                for r in range(3):
                    if p + r >= 1:
                        T.call_extern(
                            "int32",
                            "tvmmcu_dot4_s8s8",
                            T.address_of(X_1[p * 8 + r * 8 - 8]),
                            T.address_of(W_1[ff_o * 96 + r * 8]),
                            24,
                            8,
                            T.address_of(acc4[0]),
                        )
                    else:
                        T.call_extern(
                            "int32",
                            "tvmmcu_dot4_sum_s8",
                            T.address_of(W_1[ff_o * 96 + r * 8]),
                            24,
                            8,
                            -3,
                            T.address_of(acc4[0]),
                        )
                for ff_i in range(4):
                    Y_1[p * 8 + (ff_o * 4 + ff_i)] = T.Cast(
                        "int8", T.max(T.min(acc4[ff_i] + C_1[ff_o * 4 + ff_i], 127), -128)
                    )


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        C: T.handle("int32", "global"),
        Y: T.handle("int8", "global"),
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.weights_blocked": True, "tvmmcu.blocked_weights": {1: 24}})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((192,), "int8", data=W)
        C_1 = T.decl_buffer((8,), "int32", data=C)
        Y_1 = T.decl_buffer((64,), "int8", data=Y)
        for p in range(4):
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "int32")
                acc4[0] = 0
                acc4[1] = 0
                acc4[2] = 0
                acc4[3] = 0
                for r in range(3):
                    if p + r >= 1:
                        T.call_extern(
                            "int32",
                            "tvmmcu_dot4b_s8s8",
                            T.address_of(X_1[p * 8 + r * 8 - 8]),
                            T.address_of(W_1[ff_o * 96 + r * 32]),
                            8,
                            T.address_of(acc4[0]),
                        )
                    else:
                        T.call_extern(
                            "int32",
                            "tvmmcu_dot4b_sum_s8",
                            T.address_of(W_1[ff_o * 96 + r * 32]),
                            8,
                            -3,
                            T.address_of(acc4[0]),
                        )
                for ff_i in range(4):
                    Y_1[p * 8 + (ff_o * 4 + ff_i)] = T.Cast(
                        "int8", T.max(T.min(acc4[ff_i] + C_1[ff_o * 4 + ff_i], 127), -128)
                    )


def test_four_channels_weights_are_walked_by_one_pointer() -> None:
    _tvm.assert_structural_equal(BlockWeights()(Before), Expected)


def test_the_layout_puts_each_channels_value_where_the_kernel_reads_it() -> None:
    """Channel c (a multiple of 4) + j, value r: at c * S + 4 * (r - r % 8) + 8 * j + r % 8."""
    rng = np.random.default_rng(0)
    stride = 24
    w = rng.integers(-128, 128, (8, 3, 8)).astype(np.int8)  # O=8, 3 taps x 8 input channels
    b = block(w, stride).reshape(-1)
    flat = w.reshape(8, stride)
    for c in range(8):
        for r in range(stride):
            base = (c - c % 4) * stride + 4 * (r - r % 8)
            assert b[base + 8 * (c % 4) + r % 8] == flat[c, r]
    assert block(w, stride).shape == w.shape


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((192,), "int8", data=W)
        Y_1 = T.decl_buffer((8,), "int32", data=Y)
        acc4 = T.alloc_buffer((4,), "int32")
        for ff_o in range(2):
            # Read at a stride of 24, but 4 values into a channel: not a block of 8.
            T.call_extern(
                "int32",
                "tvmmcu_dot4_s8s8",
                T.address_of(X_1[0]),
                T.address_of(W_1[ff_o * 96 + 4]),
                24,
                8,
                T.address_of(acc4[0]),
            )
            Y_1[ff_o] = acc4[0]
        # The weights read one by one too (the channels past the last block).
        Y_1[7] = T.Cast("int32", W_1[191])


@I.ir_module
class ReadElsewhere:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((192,), "int8", data=W)
        Y_1 = T.decl_buffer((8,), "int32", data=Y)
        acc4 = T.alloc_buffer((4,), "int32")
        for ff_o in range(2):
            T.call_extern(
                "int32",
                "tvmmcu_dot4_s8s8",
                T.address_of(X_1[0]),
                T.address_of(W_1[ff_o * 96]),
                24,
                8,
                T.address_of(acc4[0]),
            )
            Y_1[ff_o] = acc4[0]
        Y_1[7] = T.Cast("int32", W_1[191])


def test_declines_weights_read_otherwise() -> None:
    for mod in (Declined, ReadElsewhere):
        after = BlockWeights()(mod)
        _tvm.assert_structural_equal(after["f"].body, mod["f"].body)
        assert ATTR_BLOCKED not in after["f"].attrs


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(BlockWeights(), Before)


@I.ir_module
class RunsBlocked:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.blocked_weights": {1: 72},
                "tvmmcu.dot_kernels": True,
                "tvmmcu.output_channels_blocked": True,
                "tvmmcu.weights_blocked": True,
            }
        )
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((36,), "int32", data=Y)
        for yy, xx, ff_o in T.grid(3, 3, 1):
            acc4 = T.alloc_buffer((4,), "int32")
            acc4[0] = 0
            acc4[1] = 0
            acc4[2] = 0
            acc4[3] = 0
            # The taps' strides gone: tap t's weights are 4 * 8 * t into the blocked channels.
            T.call_extern(
                "int32",
                "tvmmcu_dot4b_runs_s8s8",
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
                T.address_of(W_1[ff_o * 288]),
                3,
                3,
                8,
                T.min(T.max(0, 1 - yy), 3),
                T.max(T.min(3, 4 - yy), T.min(T.max(0, 1 - yy), 3)),
                T.min(T.max(0, 1 - xx), 3),
                T.max(T.min(3, 4 - xx), T.min(T.max(0, 1 - xx), 3)),
                -3,
                T.address_of(acc4[0]),
            )
            for ff_i in T.unroll(4):
                Y_1[yy * 12 + xx * 4 + (ff_o * 4 + ff_i)] = acc4[ff_i]


def test_a_window_of_runs_reads_its_taps_blocked() -> None:
    from tests.passes.test_use_dot_kernels import RunsBefore

    after = BlockWeights()(BlockOutputChannels()(UseDotKernels()(RunsBefore)))
    _tvm.assert_structural_equal(after, RunsBlocked)
