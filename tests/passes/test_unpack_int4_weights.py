"""UnpackInt4Weights: a marked weight no blocked kernel reads (a depthwise window's) is unpacked from int4
into a scratch at the function's start, and every read of it reads the scratch at the same index."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tests.passes.test_block_weights import RunsBlocked
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import UnpackInt4Weights
from tvm_mcu.passes.tir.unpack_int4_weights import ATTR_UNPACKED, ATTR_WANTED, pack_flat, unpack_flat


def _marked(mod: Any, positions: list[int]) -> Any:
    """``mod`` with ``f``'s parameters at ``positions`` marked, as the compiler marks them."""
    return _tvm.IRModule({gv: f.with_attr(ATTR_WANTED, positions) for gv, f in mod.functions_items()})


# A depthwise 3x3 window over 4 channels (NHWC data 4x4, HWC weights), one output pixel per channel.
@I.ir_module
class Depthwise:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((36,), "int8", data=W)
        Y_1 = T.decl_buffer((4,), "int32", data=Y)
        for c in range(4):
            Y_1[c] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[c]),
                16,
                4,
                T.address_of(W_1[c]),
                12,
                4,
                3,
                3,
                0,
                3,
                0,
                3,
                0,
                0,
            )


@I.ir_module
class DepthwiseUnpacked:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.dot_kernels": True,
                "tvmmcu.unpack_int4_weights": [1],
                "tvmmcu.int4_unpacked": True,
                "tvmmcu.unpacked_int4_weights": {1: 36},
            }
        )
        # 36 values rounded up to 40 (8 a word of nibbles), unpacked from the 20 stored bytes.
        W_int8 = T.alloc_buffer((40,), "int8")
        W_int4 = T.decl_buffer((20,), "int8", data=W)
        T.call_extern("int32", "tvmmcu_dot_unpack4", T.address_of(W_int4[0]), 40, T.address_of(W_int8[0]))
        X_1 = T.decl_buffer((64,), "int8", data=X)
        W_1 = T.decl_buffer((36,), "int8", data=W)  # noqa: F841 (the view stays declared, unread)
        Y_1 = T.decl_buffer((4,), "int32", data=Y)
        for c in range(4):
            Y_1[c] = T.call_extern(
                "int32",
                "tvmmcu_dot_win_s8s8",
                T.address_of(X_1[c]),
                16,
                4,
                T.address_of(W_int8[c]),
                12,
                4,
                3,
                3,
                0,
                3,
                0,
                3,
                0,
                0,
            )


def test_a_depthwise_window_reads_the_unpacked_scratch() -> None:
    _tvm.assert_structural_equal(UnpackInt4Weights()(_marked(Depthwise, [1])), DepthwiseUnpacked)


def test_is_idempotent_and_pure() -> None:
    assert_idempotent_and_pure(UnpackInt4Weights(), _marked(Depthwise, [1]))


def _declines(mod: Any) -> None:
    after = UnpackInt4Weights()(mod)
    _tvm.assert_structural_equal(after["f"].body, mod["f"].body)
    assert ATTR_UNPACKED not in after["f"].attrs


def test_declines_parameters_not_marked() -> None:
    _declines(Depthwise)


def test_declines_a_blocked_parameter() -> None:
    """PackWeights stores the blocked kernels' weights."""
    _declines(_marked(RunsBlocked, [1]))


@I.ir_module
class Written:
    @T.prim_func(s_tir=True)
    def f(W: T.handle("int8", "global"), Y: T.handle("int8", "global")):
        T.func_attr({"global_symbol": "f"})
        W_1 = T.decl_buffer((8,), "int8", data=W)
        Y_1 = T.decl_buffer((8,), "int8", data=Y)
        for i in range(8):
            Y_1[i] = W_1[i]
            W_1[i] = T.int8(0)


def test_declines_a_parameter_stored_to() -> None:
    _declines(_marked(Written, [0]))


@pytest.mark.parametrize("n", [1, 8, 36, 77], ids=lambda n: f"{n}-values")
def test_pack_flat_round_trips_in_half_the_bytes(n: int) -> None:
    values = np.random.default_rng(0).integers(-8, 8, n).astype(np.int8)
    stored = pack_flat(values)
    assert stored.dtype == np.uint8 and stored.size == -(-n // 8) * 4
    assert np.array_equal(unpack_flat(stored, n), values)


def test_pack_flat_refuses_values_outside_int4() -> None:
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_flat(np.array([8], np.int8))
