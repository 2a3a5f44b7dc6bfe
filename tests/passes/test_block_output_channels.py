"""BlockOutputChannels: four output channels' dot products per pass over the data."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm
from tvm_mcu._tvm import tvm
from tvm_mcu.passes.tir import BlockOutputChannels


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
        W_1 = T.decl_buffer((512,), "int8", data=W)
        C_1 = T.decl_buffer((8,), "int32", data=C)
        Y_1 = T.decl_buffer((64,), "int8", data=Y)
        # Eight output channels of a 1-D convolution over three taps of 8 channels, padded on the left
        # (UseDotKernels' calls): two blocks of four channels.
        for p in range(4):
            for ff in range(8):
                acc = T.alloc_buffer((1,), "int32")
                acc[0] = 0
                for r in range(3):
                    if p + r >= 1:
                        acc[0] = T.call_extern(
                            "int32",
                            "tvmmcu_dot_s8s8",
                            T.address_of(X_1[p * 8 + r * 8 - 8]),
                            T.address_of(W_1[ff * 24 + r * 8]),
                            8,
                            acc[0],
                        )
                    else:
                        acc[0] = T.call_extern(
                            "int32", "tvmmcu_dot_sum_s8", T.address_of(W_1[ff * 24 + r * 8]), 8, -3, acc[0]
                        )
                Y_1[p * 8 + ff] = T.Cast("int8", T.max(T.min(acc[0] + C_1[ff], 127), -128))


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("int8", "global"),
        W: T.handle("int8", "global"),
        C: T.handle("int32", "global"),
        Y: T.handle("int8", "global"),
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.output_channels_blocked": True})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((512,), "int8", data=W)
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
                            "tvmmcu_dot4_s8s8",
                            T.address_of(X_1[p * 8 + r * 8 - 8]),
                            T.address_of(W_1[ff_o * 4 * 24 + r * 8]),
                            24,
                            8,
                            T.address_of(acc4[0]),
                        )
                    else:
                        T.call_extern(
                            "int32",
                            "tvmmcu_dot4_sum_s8",
                            T.address_of(W_1[ff_o * 4 * 24 + r * 8]),
                            24,
                            8,
                            -3,
                            T.address_of(acc4[0]),
                        )
                for ff_i in T.unroll(4):  # unrolled: the accumulators stay in registers
                    Y_1[p * 8 + (ff_o * 4 + ff_i)] = T.Cast(
                        "int8", T.max(T.min(acc4[ff_i] + C_1[ff_o * 4 + ff_i], 127), -128)
                    )


def test_four_channels_share_each_pass_over_the_data() -> None:
    _tvm.assert_structural_equal(BlockOutputChannels()(Before), Expected)


def test_the_channels_beyond_the_last_block_keep_their_loop() -> None:
    """Six channels: one block of four, then the original loop over channels 4 and 5."""
    pixel = Before["f"].body.seq[-1]  # for p
    channels = pixel.body
    six = _tvm.tirx.For(
        channels.loop_var, channels.min, _tvm.tirx.IntImm("int32", 6), channels.kind, channels.body
    )
    after = BlockOutputChannels()(_tvm.tvm.IRModule({"f": Before["f"].with_body(six)}))["f"].body
    blocks, remainder = after.seq
    assert int(blocks.extent) == 1 and "tvmmcu_dot4_s8s8" in blocks.script()
    assert (int(remainder.min), int(remainder.extent)) == (4, 2)
    _tvm.assert_structural_equal(remainder.body, channels.body)


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((256,), "int8", data=X)
        W_1 = T.decl_buffer((512,), "int8", data=W)
        Y_1 = T.decl_buffer((64,), "int32", data=Y)
        # The data depends on the channel (a depthwise convolution).
        for ff in range(8):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[ff * 8]), T.address_of(W_1[ff * 8]), 8, acc[0]
            )
            Y_1[ff] = acc[0]
        # A test on the channel.
        for ff in range(8):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            if ff < 5:
                acc[0] = T.call_extern(
                    "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[0]), T.address_of(W_1[ff * 8]), 8, acc[0]
                )
            Y_1[ff + 8] = acc[0]
        # The reduction writes something else too.
        for ff in range(8):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[0]), T.address_of(W_1[ff * 8]), 8, acc[0]
            )
            Y_1[63] = acc[0]
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[8]), T.address_of(W_1[ff * 8]), 8, acc[0]
            )
            Y_1[ff + 16] = acc[0]
        # Two calls whose weights move differently with the channel.
        for ff in range(8):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[0]), T.address_of(W_1[ff * 8]), 8, acc[0]
            )
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[8]), T.address_of(W_1[ff * 16]), 8, acc[0]
            )
            Y_1[ff + 24] = acc[0]
        # Fewer than four channels.
        for ff in range(3):
            acc = T.alloc_buffer((1,), "int32")
            acc[0] = 0
            acc[0] = T.call_extern(
                "int32", "tvmmcu_dot_s8s8", T.address_of(X_1[0]), T.address_of(W_1[ff * 8]), 8, acc[0]
            )
            Y_1[ff + 32] = acc[0]


@I.ir_module
class WindowBefore:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((100,), "int8", data=X)
        W_1 = T.decl_buffer((320,), "int8", data=W)
        Y_1 = T.decl_buffer((80,), "int32", data=Y)
        # A 10 x 4 window over one input channel (KWS's first convolution), clipped at the top.
        for p in range(10):
            for ff in range(8):
                acc = T.alloc_buffer((1,), "int32")
                acc[0] = 0
                acc[0] = T.call_extern(
                    "int32",
                    "tvmmcu_dot_win_s8s8",
                    T.address_of(X_1[p * 10]),
                    10,
                    1,
                    T.address_of(W_1[ff * 40]),
                    4,
                    1,
                    10,
                    4,
                    T.max(3 - p, 0),
                    10,
                    0,
                    4,
                    -128,
                    acc[0],
                )
                Y_1[p * 8 + ff] = acc[0]


@I.ir_module
class WindowExpected:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.output_channels_blocked": True})
        X_1 = T.decl_buffer((100,), "int8", data=X)
        W_1 = T.decl_buffer((320,), "int8", data=W)
        Y_1 = T.decl_buffer((80,), "int32", data=Y)
        for p in range(10):
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "int32")
                acc4[0] = 0
                acc4[1] = 0
                acc4[2] = 0
                acc4[3] = 0
                T.call_extern(
                    "int32",
                    "tvmmcu_dot4_win_s8s8",
                    T.address_of(X_1[p * 10]),
                    10,
                    1,
                    T.address_of(W_1[ff_o * 4 * 40]),
                    40,
                    4,
                    1,
                    10,
                    4,
                    T.max(3 - p, 0),
                    10,
                    0,
                    4,
                    -128,
                    T.address_of(acc4[0]),
                )
                for ff_i in T.unroll(4):
                    Y_1[p * 8 + (ff_o * 4 + ff_i)] = acc4[ff_i]


def test_a_window_of_four_channels_reads_its_taps_once() -> None:
    _tvm.assert_structural_equal(BlockOutputChannels()(WindowBefore), WindowExpected)


def test_declines_what_is_not_one_pixels_channels() -> None:
    after = BlockOutputChannels()(Declined)
    _tvm.assert_structural_equal(after["f"].body, Declined["f"].body)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(BlockOutputChannels(), Before)


def test_dots_over_element_sparse_weights_stay_one_channel_per_call() -> None:
    """Declines: SparseElements rewrites a dense layer's dot calls over its marked weights one channel
    each. The same weights marked for filterlets (whose pass rewrites runs calls only) are blocked."""
    elements = tvm.IRModule({"f": Before["f"].with_attr("tvmmcu.sparse_element_weights", {1: 8})})
    _tvm.assert_structural_equal(BlockOutputChannels()(elements)["f"].body, Before["f"].body)
    filterlets = tvm.IRModule({"f": Before["f"].with_attr("tvmmcu.sparse_weights", {1: 8})})
    expected = Expected["f"].with_attr("tvmmcu.sparse_weights", {1: 8})
    _tvm.assert_structural_equal(BlockOutputChannels()(filterlets)["f"], expected)
