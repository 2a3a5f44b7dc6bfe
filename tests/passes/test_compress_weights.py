"""CompressWeights: blocked int8 weights the compiler marked are decoded per block of four channels into a
scratch buffer before the blocked kernels read it."""

from __future__ import annotations

from typing import Any

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tests.passes.test_block_weights import Before as Unblocked
from tests.passes.test_block_weights import RunsBlocked
from tests.passes.test_pack_weights import ReadElsewhere
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import BlockWeights, CompressWeights
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED
from tvm_mcu.passes.tir.compress_weights import ATTR_COMPRESSED, ATTR_WANTED
from tvm_mcu.passes.tir.each_function import substitute


def _marked(mod: Any, positions: list[int]) -> Any:
    """``mod`` with ``f``'s parameters at ``positions`` marked for compression, as the compiler marks them."""
    return _tvm.IRModule({gv: f.with_attr(ATTR_WANTED, positions) for gv, f in mod.functions_items()})


@I.ir_module
class RunsCompressed:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "tvmmcu.blocked_weights": {},
                "tvmmcu.compress_weights": [1],
                "tvmmcu.compressed_weights": {1: 72},
                "tvmmcu.dot_kernels": True,
                "tvmmcu.output_channels_blocked": True,
                "tvmmcu.weights_blocked": True,
                "tvmmcu.weights_compressed": True,
            }
        )
        # The scratch: the chunk index it holds (8 bytes), then one chunk of 4 * 72 values.
        W_chunk = T.alloc_buffer((296,), "int8")
        T.call_extern("int32", "tvmmcu_rice_reset", T.address_of(W_chunk[0]))
        X_1 = T.decl_buffer((72,), "int8", data=X)
        W_1 = T.decl_buffer((288,), "int8", data=W)
        Y_1 = T.decl_buffer((36,), "int32", data=Y)
        for yy, xx, ff_o in T.grid(3, 3, 1):
            acc4 = T.alloc_buffer((4,), "int32")
            acc4[0] = 0
            acc4[1] = 0
            acc4[2] = 0
            acc4[3] = 0
            # Chunk ff_o * 288 / 288 (ff_o is 0) decoded; the call reads the scratch from byte 8.
            T.call_extern(
                "int32", "tvmmcu_rice_decode", T.address_of(W_1[0]), 0, 288, T.address_of(W_chunk[0])
            )
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
                T.address_of(W_chunk[8]),
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


def test_blocked_runs_read_a_decoded_chunk() -> None:
    _tvm.assert_structural_equal(CompressWeights()(_marked(RunsBlocked, [1])), RunsCompressed)


def test_every_blocked_call_of_a_marked_parameter_reads_the_scratch() -> None:
    after = CompressWeights()(_marked(BlockWeights()(Unblocked), [1]))["f"]
    source = after.script()
    # BlockWeights' &W[ff_o * 96 + r * 32] (the data's and the padding's calls): chunk ff_o of 96 values,
    # offset r * 32 in it, after the scratch's 8 bytes; decoded once per block, before the pixels' loop
    # (the blocks' loop moved outside it).
    assert source.count("T.address_of(W_1[0]), ff_o, 96") == 1
    assert source.count("W_chunk[r * 32 + 8]") == 2
    assert source.index("for ff_o in range(2)") < source.index("for p in range(4)")
    assert "T.address_of(W_1[ff_o" not in source
    assert {int(k): int(v) for k, v in after.attrs[ATTR_COMPRESSED].items()} == {1: 24}
    assert not after.attrs[ATTR_BLOCKED]


def _declines(mod: Any) -> None:
    after = CompressWeights()(mod)
    _tvm.assert_structural_equal(after["f"].body, mod["f"].body)
    assert ATTR_COMPRESSED not in after["f"].attrs


def test_declines_parameters_not_marked() -> None:
    _declines(RunsBlocked)


def test_declines_a_marked_parameter_that_is_not_blocked() -> None:
    _declines(_marked(RunsBlocked, [0]))


def test_declines_weights_read_otherwise() -> None:
    _declines(_marked(ReadElsewhere, [1]))


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(CompressWeights(), _marked(RunsBlocked, [1]))


@I.ir_module
class PixelsThenBlocks:
    """A window staged per pixel, then the loop over blocks of four channels (StageWindows' nest)."""

    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"tvmmcu.blocked_weights": {1: 8}, "tvmmcu.compress_weights": [1]})
        X_1 = T.decl_buffer((32,), "int8", data=X)
        W_1 = T.decl_buffer((64,), "int8", data=W)
        Y_1 = T.decl_buffer((32,), "int32", data=Y)
        for p in range(4):
            window = T.alloc_buffer((8,), "int8")
            T.call_extern(
                "int32",
                "tvmmcu_dot_stage8",
                T.address_of(window[0]),
                T.address_of(X_1[p * 8]),
                8,
                1,
                1,
                8,
                0,
                1,
                0,
                8,
                0,
            )
            for ff_o in range(2):
                acc4 = T.alloc_buffer((4,), "int32")
                T.call_extern(
                    "int32",
                    "tvmmcu_dot4b_s8s8",
                    T.address_of(window[0]),
                    T.address_of(W_1[ff_o * 32]),
                    8,
                    T.address_of(acc4[0]),
                )
                for ff_i in range(4):
                    Y_1[p * 8 + ff_o * 4 + ff_i] = acc4[ff_i]


@I.ir_module
class BlocksThenPixels:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "tvmmcu.blocked_weights": {},
                "tvmmcu.compress_weights": [1],
                "tvmmcu.compressed_weights": {1: 8},
                "tvmmcu.weights_compressed": True,
            }
        )
        W_chunk = T.alloc_buffer((40,), "int8")
        T.call_extern("int32", "tvmmcu_rice_reset", T.address_of(W_chunk[0]))
        X_1 = T.decl_buffer((32,), "int8", data=X)
        W_1 = T.decl_buffer((64,), "int8", data=W)
        Y_1 = T.decl_buffer((32,), "int32", data=Y)
        # The blocks' loop outside the pixels': each chunk decoded once, the window staged per block.
        for ff_o in range(2):
            T.call_extern(
                "int32", "tvmmcu_rice_decode", T.address_of(W_1[0]), ff_o, 32, T.address_of(W_chunk[0])
            )
            for p in range(4):
                window = T.alloc_buffer((8,), "int8")
                T.call_extern(
                    "int32",
                    "tvmmcu_dot_stage8",
                    T.address_of(window[0]),
                    T.address_of(X_1[p * 8]),
                    8,
                    1,
                    1,
                    8,
                    0,
                    1,
                    0,
                    8,
                    0,
                )
                acc4 = T.alloc_buffer((4,), "int32")
                T.call_extern(
                    "int32",
                    "tvmmcu_dot4b_s8s8",
                    T.address_of(window[0]),
                    T.address_of(W_chunk[8]),
                    8,
                    T.address_of(acc4[0]),
                )
                for ff_i in range(4):
                    Y_1[p * 8 + ff_o * 4 + ff_i] = acc4[ff_i]


def test_the_blocks_loop_moves_outside_the_pixels_loop() -> None:
    _tvm.assert_structural_equal(CompressWeights()(PixelsThenBlocks), BlocksThenPixels)


def _variant(**changes: Any) -> Any:
    """PixelsThenBlocks with its function's attributes or its output store changed."""
    func = PixelsThenBlocks["f"]
    if "attr" in changes:
        func = func.with_attr(*changes["attr"])
    if "store" in changes:

        def store(st: Any) -> Any:
            return changes["store"](st)

        func = func.with_body(_tvm.structural_map(func.body, (_tvm.tirx.BufferStore, store)))
    return _tvm.IRModule({"f": func})


def _kept_per_pixel(mod: Any) -> None:
    """The pixels' loop stays outside: each pixel decodes its blocks (a no-op for one block)."""
    source = CompressWeights()(mod)["f"].script()
    assert source.index("for p in range(4)") < source.index("for ff_o in range(2)")
    assert source.index("for ff_o in range(2)") < source.index("tvmmcu_rice_decode")


def test_declines_to_move_the_blocks_of_an_operator_in_place() -> None:
    _kept_per_pixel(_variant(attr=("tvmmcu.in_place", "pointwise")))


def test_declines_to_move_the_blocks_when_the_output_is_read_or_written_twice() -> None:
    def accumulate(st: Any) -> Any:  # Y[i] += acc: the output read back
        return _tvm.tirx.BufferStore(
            st.buffer, _tvm.tirx.BufferLoad(st.buffer, st.indices) + st.value, st.indices
        )

    pixel = PixelsThenBlocks["f"].body.seq[-1].loop_var  # the loop over pixels

    def overwrite(st: Any) -> Any:  # every pixel into the same eight values: Y[ff_o * 4 + ff_i]
        (index,) = st.indices
        return _tvm.tirx.BufferStore(
            st.buffer, st.value, [substitute(index, pixel, _tvm.tirx.IntImm("int32", 0))]
        )

    _kept_per_pixel(_variant(store=accumulate))
    _kept_per_pixel(_variant(store=overwrite))
