"""BlockOutputChannels on float32: four output channels per float kernel call, float accumulators."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import BlockOutputChannels


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"),
        W: T.handle("float32", "global"),
        B: T.handle("float32", "global"),
        Y: T.handle("float32", "global"),
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "float32", data=X)
        W_1 = T.decl_buffer((512,), "float32", data=W)
        B_1 = T.decl_buffer((8,), "float32", data=B)
        Y_1 = T.decl_buffer((64,), "float32", data=Y)
        # A pointwise convolution of 16 input channels, HWIO weights (the 8 output channels contiguous,
        # 8 apart along the reduction), a bias and a ReLU (UseDotKernels' calls): two blocks of four.
        for p in range(4):
            for ff in range(8):
                acc = T.alloc_buffer((1,), "float32")
                acc[0] = T.float32(0)
                acc[0] = T.call_extern(
                    "float32",
                    "tvmmcu_dot_f32",
                    T.address_of(X_1[p * 16]),
                    T.address_of(W_1[ff]),
                    8,
                    16,
                    acc[0],
                )
                Y_1[p * 8 + ff] = T.max(acc[0] + B_1[ff], T.float32(0))
        # A window over one input channel, the taps inside known at run time, under a test.
        for p in range(4):
            for ff in range(8):
                acc = T.alloc_buffer((1,), "float32")
                acc[0] = T.float32(0)
                if p >= 1:
                    acc[0] = T.call_extern(
                        "float32",
                        "tvmmcu_dot_win_f32",
                        T.address_of(X_1[p * 2]),
                        8,
                        1,
                        T.address_of(W_1[ff + 128]),
                        24,
                        8,
                        3,
                        3,
                        0,
                        T.min(p, 3),
                        0,
                        3,
                        acc[0],
                    )
                Y_1[32 + p * 8 + ff] = acc[0]


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"),
        W: T.handle("float32", "global"),
        B: T.handle("float32", "global"),
        Y: T.handle("float32", "global"),
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.output_channels_blocked": True})
        X_1 = T.decl_buffer((64,), "float32", data=X)
        W_1 = T.decl_buffer((512,), "float32", data=W)
        B_1 = T.decl_buffer((8,), "float32", data=B)
        Y_1 = T.decl_buffer((64,), "float32", data=Y)
        for p in range(4):
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "float32")
                acc4[0] = T.float32(0)
                acc4[1] = T.float32(0)
                acc4[2] = T.float32(0)
                acc4[3] = T.float32(0)
                # The four channels' stride (1: neighbours) right after the weight pointer.
                T.call_extern(
                    "int32",
                    "tvmmcu_dot4_f32",
                    T.address_of(X_1[p * 16]),
                    T.address_of(W_1[ff_o * 4]),
                    1,
                    8,
                    16,
                    T.address_of(acc4[0]),
                )
                for ff_i in T.unroll(4):
                    Y_1[p * 8 + (ff_o * 4 + ff_i)] = T.max(acc4[ff_i] + B_1[ff_o * 4 + ff_i], T.float32(0))
        for p in range(4):
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "float32")
                acc4[0] = T.float32(0)
                acc4[1] = T.float32(0)
                acc4[2] = T.float32(0)
                acc4[3] = T.float32(0)
                if p >= 1:
                    T.call_extern(
                        "int32",
                        "tvmmcu_dot4_win_f32",
                        T.address_of(X_1[p * 2]),
                        8,
                        1,
                        T.address_of(W_1[ff_o * 4 + 128]),
                        1,
                        24,
                        8,
                        3,
                        3,
                        0,
                        T.min(p, 3),
                        0,
                        3,
                        T.address_of(acc4[0]),
                    )
                for ff_i in T.unroll(4):
                    Y_1[32 + p * 8 + (ff_o * 4 + ff_i)] = acc4[ff_i]


def test_four_float_channels_share_each_pass_over_the_data() -> None:
    _tvm.assert_structural_equal(BlockOutputChannels()(Before), Expected)


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(BlockOutputChannels(), Before)


@I.ir_module
class Declined:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), Y: T.handle("float32", "global")
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((64,), "float32", data=X)
        W_1 = T.decl_buffer((512,), "float32", data=W)
        Y_1 = T.decl_buffer((64,), "float32", data=Y)
        # A depthwise window: the data move with the channel.
        for ff in range(8):
            acc = T.alloc_buffer((1,), "float32")
            acc[0] = T.float32(0)
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_win_f32",
                T.address_of(X_1[ff]),
                24,
                8,
                T.address_of(W_1[ff]),
                24,
                8,
                3,
                3,
                0,
                3,
                0,
                3,
                acc[0],
            )
            Y_1[ff] = acc[0]
        # A float16 accumulator: no four-channel kernel accumulates in it.
        for ff in range(8):
            acch = T.alloc_buffer((1,), "float16")
            acch[0] = T.float16(0)
            acch[0] = T.call_extern(
                "float16", "tvmmcu_dot_f32", T.address_of(X_1[0]), T.address_of(W_1[ff]), 8, 16, acch[0]
            )
            Y_1[ff + 8] = T.Cast("float32", acch[0])


def test_declines_depthwise_windows_and_other_accumulators() -> None:
    after = BlockOutputChannels()(Declined)
    _tvm.assert_structural_equal(after["f"].body, Declined["f"].body)


def test_marked_weights_read_by_no_runs_call_are_blocked() -> None:
    """A weight the compiler marks for a sparse format but reads by no runs call (a dilated
    convolution's taps) stays dense: its loops take four channels per call as any other."""
    marked = _tvm.tvm.IRModule({"f": Before["f"].with_attr("tvmmcu.sparse_weights", {1: 8})})
    expected = Expected["f"].with_attr("tvmmcu.sparse_weights", {1: 8})
    _tvm.assert_structural_equal(BlockOutputChannels()(marked)["f"], expected)


def test_runs_over_marked_weights_stay_one_channel_per_call() -> None:
    """Declines: SparseFilterlets rewrites the runs calls over the marked weights one channel each."""
    from tests.passes.test_sparse_filterlets_float import Before as Runs

    blocked = BlockOutputChannels()(Runs)["f"]
    assert "tvmmcu_dot4_runs_f32" in blocked.script()
    marked = _tvm.tvm.IRModule({"f": Runs["f"].with_attr("tvmmcu.sparse_weights", {1: 4})})
    _tvm.assert_structural_equal(BlockOutputChannels()(marked)["f"].body, Runs["f"].body)
    # Another parameter marked: the runs calls read no marked weight, so they are blocked.
    other = _tvm.tvm.IRModule({"f": Runs["f"].with_attr("tvmmcu.sparse_weights", {2: 4})})
    _tvm.assert_structural_equal(
        BlockOutputChannels()(other)["f"], blocked.with_attr("tvmmcu.sparse_weights", {2: 4})
    )
