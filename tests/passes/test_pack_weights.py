"""PackWeights: blocked weights whose values fit int4 read two per byte by the nibble kernels, those that fit
int2 four per byte by the crumb kernels."""

from __future__ import annotations

from typing import Any

from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tests.passes.test_block_weights import Before as Unblocked
from tests.passes.test_block_weights import RunsBlocked
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import BlockWeights, PackWeights, WidenWeights
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED
from tvm_mcu.passes.tir.pack_weights import ATTR_CRUMBS, ATTR_INT2, ATTR_INT4, ATTR_PACKED


def _marked(mod: Any, positions: list[int], int2: list[int] | None = None) -> Any:
    """``mod`` with ``f``'s parameters at ``positions`` marked int4 (and those at ``int2`` int2), as the
    compiler marks them."""
    funcs = {}
    for gv, f in mod.functions_items():
        f = f.with_attr(ATTR_INT4, positions)
        funcs[gv] = f.with_attr(ATTR_INT2, int2) if int2 else f
    return _tvm.IRModule(funcs)


@I.ir_module
class RunsPacked:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.blocked_weights": {},
                "tvmmcu.int4_weights": [1],
                "tvmmcu.nibble_weights": {1: 72},
                "tvmmcu.dot_kernels": True,
                "tvmmcu.output_channels_blocked": True,
                "tvmmcu.weights_blocked": True,
                "tvmmcu.weights_packed": True,
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
            # The same call on nibbles: the 8 values from blocked value i are the word at byte i / 2.
            T.call_extern(
                "int32",
                "tvmmcu_dot4q_runs_s8s4",
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
                T.address_of(W_1[ff_o * 144]),
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


def test_blocked_runs_read_nibbles() -> None:
    _tvm.assert_structural_equal(PackWeights()(_marked(RunsBlocked, [1])), RunsPacked)


def test_every_blocked_call_of_a_marked_parameter_reads_nibbles() -> None:
    after = PackWeights()(_marked(BlockWeights()(Unblocked), [1]))["f"]
    source = after.script()
    assert "tvmmcu_dot4q_s8s4" in source and "tvmmcu_dot4q_sum_s4" in source
    assert "tvmmcu_dot4b_" not in source
    # BlockWeights' &W[ff_o * 96 + r * 32] halved.
    assert "W_1[ff_o * 48 + r * 16]" in source
    assert {int(k): int(v) for k, v in after.attrs[ATTR_PACKED].items()} == {1: 24}
    assert not after.attrs[ATTR_BLOCKED]


@I.ir_module
class RunsCrumbs:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.blocked_weights": {},
                "tvmmcu.int4_weights": [1],
                "tvmmcu.int2_weights": [1],
                "tvmmcu.nibble_weights": {},
                "tvmmcu.crumb_weights": {1: 72},
                "tvmmcu.dot_kernels": True,
                "tvmmcu.output_channels_blocked": True,
                "tvmmcu.weights_blocked": True,
                "tvmmcu.weights_packed": True,
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
            # The same call on crumbs: the block from blocked value i (a multiple of 32) is the two
            # words at byte i / 4.
            T.call_extern(
                "int32",
                "tvmmcu_dot4c_runs_s8s2",
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
                T.address_of(W_1[ff_o * 72]),
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


def test_blocked_runs_marked_int2_read_crumbs() -> None:
    _tvm.assert_structural_equal(PackWeights()(_marked(RunsBlocked, [1], [1])), RunsCrumbs)


def test_every_blocked_call_of_an_int2_parameter_reads_crumbs() -> None:
    after = PackWeights()(_marked(BlockWeights()(Unblocked), [1], [1]))["f"]
    source = after.script()
    assert "tvmmcu_dot4c_s8s2" in source and "tvmmcu_dot4c_sum_s2" in source
    assert "tvmmcu_dot4b_" not in source and "tvmmcu_dot4q_" not in source
    # BlockWeights' &W[ff_o * 96 + r * 32] quartered.
    assert "W_1[ff_o * 24 + r * 8]" in source
    assert {int(k): int(v) for k, v in after.attrs[ATTR_CRUMBS].items()} == {1: 24}
    assert not after.attrs[ATTR_PACKED] and not after.attrs[ATTR_BLOCKED]


@I.ir_module
class NotWholeBlocks:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.blocked_weights": {1: 16},
                "tvmmcu.int4_weights": [1],
                "tvmmcu.int2_weights": [1],
            }
        )
        X_1 = T.decl_buffer((16,), "int8", data=X)
        W_1 = T.decl_buffer((64,), "int8", data=W)
        Y_1 = T.decl_buffer((8,), "int32", data=Y)
        for k in range(2):
            acc4 = T.alloc_buffer((4,), "int32")
            # Blocked value 16 * k: a multiple of 8, not of 32; its crumbs would start mid-word.
            T.call_extern(
                "int32",
                "tvmmcu_dot4b_s8s8",
                T.address_of(X_1[k * 8]),
                T.address_of(W_1[k * 16]),
                8,
                T.address_of(acc4[0]),
            )
            Y_1[k] = acc4[0]


def test_an_int2_parameter_not_read_at_whole_blocks_stays_nibbles() -> None:
    after = PackWeights()(NotWholeBlocks)["f"]
    source = after.script()
    assert "tvmmcu_dot4q_s8s4" in source and "tvmmcu_dot4c_" not in source
    assert {int(k): int(v) for k, v in after.attrs[ATTR_PACKED].items()} == {1: 16}
    assert ATTR_CRUMBS not in after.attrs


@I.ir_module
class ReadElsewhere:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.blocked_weights": {1: 8}, "tvmmcu.int4_weights": [1]})
        X_1 = T.decl_buffer((8,), "int8", data=X)
        W_1 = T.decl_buffer((32,), "int8", data=W)
        Y_1 = T.decl_buffer((4,), "int32", data=Y)
        acc4 = T.alloc_buffer((4,), "int32")
        T.call_extern(
            "int32", "tvmmcu_dot4b_s8s8", T.address_of(X_1[0]), T.address_of(W_1[0]), 8, T.address_of(acc4[0])
        )
        Y_1[0] = acc4[0]
        # A read BlockWeights would not have left: the weights must stay bytes.
        Y_1[1] = T.Cast("int32", W_1[3])


def _declines(mod: Any) -> None:
    after = PackWeights()(mod)
    _tvm.assert_structural_equal(after["f"].body, mod["f"].body)
    assert ATTR_PACKED not in after["f"].attrs


def test_declines_parameters_not_marked_int4() -> None:
    _declines(RunsBlocked)


def test_declines_a_marked_parameter_that_is_not_blocked() -> None:
    _declines(_marked(RunsBlocked, [0]))


def test_declines_weights_read_otherwise() -> None:
    _declines(ReadElsewhere)


def test_declines_weights_already_widened() -> None:
    """WidenWeights took every blocked parameter: none is both halfwords and nibbles."""
    _declines(WidenWeights()(_marked(RunsBlocked, [1])))


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(PackWeights(), _marked(RunsBlocked, [1]))
