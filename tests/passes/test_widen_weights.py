"""WidenWeights: the blocked kernels' weights stored as halfwords in the order SMLAD reads them."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tests.passes.test_block_weights import Before as Unblocked
from tests.passes.test_block_weights import RunsBlocked
from tvm_mcu import _tvm
from tvm_mcu.passes.tir import BlockWeights, WidenWeights
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, block
from tvm_mcu.passes.tir.widen_weights import ATTR_WIDENED, HALF_ORDER, widen


@I.ir_module
class RunsWidened:
    @T.prim_func(s_tir=True)
    def f(X: T.handle("int8", "global"), W: T.handle("int8", "global"), Y: T.handle("int32", "global")):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.blocked_weights": {},
                "tvmmcu.halfword_weights": {1: 72},
                "tvmmcu.dot_kernels": True,
                "tvmmcu.output_channels_blocked": True,
                "tvmmcu.weights_blocked": True,
                "tvmmcu.weights_widened": True,
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
            # The same call on halfwords: blocked value i starts at byte 2 * i of the int8 parameter.
            T.call_extern(
                "int32",
                "tvmmcu_dot4h_runs_s8s16",
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
                T.address_of(W_1[ff_o * 288 * 2]),
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


def test_blocked_runs_read_halfwords() -> None:
    _tvm.assert_structural_equal(WidenWeights()(RunsBlocked), RunsWidened)


def test_every_blocked_call_of_a_function_is_widened() -> None:
    after = WidenWeights()(BlockWeights()(Unblocked))["f"]
    source = after.script()
    assert "tvmmcu_dot4h_s8s16" in source and "tvmmcu_dot4h_sum_s16" in source
    assert "tvmmcu_dot4b_" not in source
    assert {int(k): int(v) for k, v in after.attrs[ATTR_WIDENED].items()} == {1: 24}
    assert not after.attrs[ATTR_BLOCKED]


def test_declines_functions_without_blocked_weights() -> None:
    after = WidenWeights()(Unblocked)
    _tvm.assert_structural_equal(after["f"].body, Unblocked["f"].body)
    assert ATTR_WIDENED not in after["f"].attrs


def test_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(WidenWeights(), RunsBlocked)


def test_the_halfwords_pair_with_the_data_as_smlad_reads_them() -> None:
    """Each word of the halfword layout holds the two weights SMLAD multiplies with the data word's
    SXTB16 halves (bytes 0 and 2, then 1 and 3), so sum(x * w) comes out unchanged."""
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (8, 16)).astype(np.int8)  # 8 channels of 16 values
    x = rng.integers(-128, 128, 16).astype(np.int64)
    h = widen(w, 16).reshape(-1)
    assert h.dtype == np.int16 and h.size == w.size
    b = block(w, 16).reshape(-1)
    for c0 in (0, 4):  # each block of four channels
        for j in range(4):
            acc = 0
            for blk in range(2):
                base = c0 * 16 + blk * 32 + j * 8
                halves = h[base : base + 8].astype(np.int64)
                xs = x[blk * 8 : blk * 8 + 8]
                # SXTB16: (x0, x2), (x1, x3), (x4, x6), (x5, x7) against words 0..3 of halfwords.
                pairs = [xs[[0, 2]], xs[[1, 3]], xs[[4, 6]], xs[[5, 7]]]
                acc += sum(int(p @ halves[2 * k : 2 * k + 2]) for k, p in enumerate(pairs))
                assert list(halves) == list(b[base : base + 8][HALF_ORDER])
            assert acc == int(x @ w[c0 + j].astype(np.int64))
