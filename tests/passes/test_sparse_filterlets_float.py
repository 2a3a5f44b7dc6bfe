"""SparseFilterlets on float32: the float runs calls over weights stored sparse visit only their kept
filterlets, four pixels per call where the accumulator starts at a constant other than -0.0."""

from __future__ import annotations

import pytest
from tvm.script import ir as I
from tvm.script import tirx as T

from tests.passes import assert_idempotent_and_pure
from tvm_mcu import _tvm
from tvm_mcu._tvm import tvm
from tvm_mcu.passes.tir import SparseFilterlets
from tvm_mcu.passes.tir.sparse_filterlets import ATTR_SPARSE, ATTR_WANTED


def _wanted(mod: tvm.IRModule, wanted: dict[int, int]) -> tvm.IRModule:
    return tvm.IRModule({"f": mod["f"].with_attr(ATTR_WANTED, wanted)})


@I.ir_module
class Before:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), Y: T.handle("float32", "global")
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((72,), "float32", data=X)
        W_1 = T.decl_buffer((288,), "float32", data=W)
        Y_1 = T.decl_buffer((36,), "float32", data=Y)
        # A 3x3 convolution of 8 input channels into 4, padding 1, OHWI weights (wc = 1), a ReLU.
        for yy, xx, ff in T.grid(3, 3, 4):
            acc = T.alloc_buffer((1,), "float32")
            acc[0] = T.float32(0)
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_runs_f32",
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
                1,
                3,
                3,
                8,
                T.min(T.max(0, 1 - yy), 3),
                T.max(T.min(3, 4 - yy), T.min(T.max(0, 1 - yy), 3)),
                T.min(T.max(0, 1 - xx), 3),
                T.max(T.min(3, 4 - xx), T.min(T.max(0, 1 - xx), 3)),
                acc[0],
            )
            Y_1[yy * 12 + xx * 4 + ff] = T.max(acc[0], T.float32(0))


@I.ir_module
class Expected:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), Y: T.handle("float32", "global")
    ):
        T.func_attr(
            {
                "global_symbol": "f",
                "tvmmcu.dot_kernels": True,
                "tvmmcu.sparse_weights": {1: 4},
                "tvmmcu.filterlets_done": True,
                "tvmmcu.sparse_filterlets": {1: 4},
            }
        )
        X_1 = T.decl_buffer((72,), "float32", data=X)
        W_1 = T.decl_buffer((288,), "float32", data=W)
        Y_1 = T.decl_buffer((36,), "float32", data=Y)
        # The tap offsets and four padding rows of 8 floats 32 bytes apart (128 bytes: 32 words); a
        # pointer per tap and the most taps a block stages (7), four pixels of 32 bytes each. The
        # set-up and the staging count bytes.
        sparse_state = T.alloc_buffer((42,), "int32")
        sparse_windows = T.alloc_buffer((968,), "uint8")
        T.call_extern("int32", "tvmmcu_sparse_setup", T.address_of(sparse_state[0]), 3, 3, 96, 32, 32, 32, 0)
        for pb in range(2):
            # The float staging returns the taps outside at all four pixels, which the kernel skips.
            outside: T.let[T.int32] = T.call_extern(
                "int32",
                "tvmmcu_sparse_stage_f32",
                T.address_of(sparse_windows[0]),
                T.address_of(X_1[0]),
                pb * 4 // 3 * 96 + pb % 3 * 32 - 128,
                pb * 128 - 96,
                pb * 128 - 64,
                pb * 4 // 3 * 96 + pb % 3 * 32 - 32,
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - pb * 4 // 3), 3),
                    T.min(T.max(4 - pb * 4 // 3, T.max(0, 1 - pb * 4 // 3)), 3),
                    T.max(0, 1 - pb % 3),
                    T.min(3, 4 - pb % 3),
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - (pb * 4 + 1) // 3), 3),
                    T.min(T.max(4 - (pb * 4 + 1) // 3, T.max(0, 1 - (pb * 4 + 1) // 3)), 3),
                    T.max(0, 1 - (pb * 4 + 1) % 3),
                    T.min(3, 4 - (pb * 4 + 1) % 3),
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 1 - (pb * 4 + 2) // 3), 3),
                    T.min(T.max(4 - (pb * 4 + 2) // 3, T.max(0, 1 - (pb * 4 + 2) // 3)), 3),
                    T.max(0, 1 - (pb * 4 + 2) % 3),
                    T.min(3, 4 - (pb * 4 + 2) % 3),
                    3,
                ),
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse_inside",
                    T.min(T.max(0, 0 - pb * 4 // 3), 3),
                    T.min(T.max(3 - pb * 4 // 3, T.max(0, 0 - pb * 4 // 3)), 3),
                    T.max(0, 1 - pb % 3),
                    T.min(3, 4 - pb % 3),
                    3,
                ),
                T.address_of(sparse_state[0]),
                9,
                32,
                32,
            )
            for ff in range(4):
                acc4 = T.alloc_buffer((4,), "float32")
                acc4[0] = T.float32(0)
                acc4[1] = T.float32(0)
                acc4[2] = T.float32(0)
                acc4[3] = T.float32(0)
                T.call_extern(
                    "int32",
                    "tvmmcu_sparse4p_blob_f32",
                    T.address_of(sparse_windows[0]),
                    outside,
                    32,
                    T.address_of(W_1[0]),
                    4,
                    ff,
                    8,
                    T.address_of(acc4[0]),
                )
                for p in T.unroll(4):
                    Y_1[(pb * 4 + p) // 3 * 12 + (pb * 4 + p) % 3 * 4 + ff] = T.max(acc4[p], T.float32(0))
        # The last pixel (2, 2) from a block of the last four pixels (5-8), only its output stored.
        outside: T.let[T.int32] = T.call_extern(
            "int32",
            "tvmmcu_sparse_stage_f32",
            T.address_of(sparse_windows[0]),
            T.address_of(X_1[0]),
            32,
            64,
            96,
            128,
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 3, 0, 2, 3),
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 2, 1, 3, 3),
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 2, 0, 3, 3),
            T.call_extern("int32", "tvmmcu_sparse_inside", 0, 2, 0, 2, 3),
            T.address_of(sparse_state[0]),
            9,
            32,
            32,
        )
        for ff in range(4):
            acc4 = T.alloc_buffer((4,), "float32")
            acc4[0] = T.float32(0)
            acc4[1] = T.float32(0)
            acc4[2] = T.float32(0)
            acc4[3] = T.float32(0)
            T.call_extern(
                "int32",
                "tvmmcu_sparse4p_blob_f32",
                T.address_of(sparse_windows[0]),
                outside,
                32,
                T.address_of(W_1[0]),
                4,
                ff,
                8,
                T.address_of(acc4[0]),
            )
            for p in T.unroll(3, 4):
                Y_1[(p + 5) // 3 * 12 + (p + 2) % 3 * 4 + ff] = T.max(acc4[p], T.float32(0))


def test_float_runs_over_sparse_weights_visit_the_kept_filterlets() -> None:
    _tvm.assert_structural_equal(SparseFilterlets()(_wanted(Before, {1: 4})), Expected)


def test_float_functions_without_sparse_weights_are_unchanged() -> None:
    after = SparseFilterlets()(Before)
    _tvm.assert_structural_equal(after["f"].body, Before["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def test_float_idempotent_and_input_untouched() -> None:
    assert_idempotent_and_pure(SparseFilterlets(), _wanted(Before, {1: 4}))


@I.ir_module
class Hwio:
    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), Y: T.handle("float32", "global")
    ):
        T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
        X_1 = T.decl_buffer((72,), "float32", data=X)
        W_1 = T.decl_buffer((288,), "float32", data=W)
        Y_1 = T.decl_buffer((36,), "float32", data=Y)
        # HWIO weights: channel ff's run of input channels 4 apart (wc = 4), no filterlet is contiguous.
        for yy, xx, ff in T.grid(3, 3, 4):
            acc = T.alloc_buffer((1,), "float32")
            acc[0] = T.float32(0)
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_runs_f32",
                T.address_of(X_1[24 * yy + 8 * xx]),
                24,
                8,
                T.address_of(W_1[ff]),
                96,
                32,
                4,
                3,
                3,
                8,
                0,
                1,
                0,
                1,
                acc[0],
            )
            Y_1[yy * 12 + xx * 4 + ff] = acc[0]


def test_float_runs_over_hwio_weights_stay_dense() -> None:
    """Declines: a run's weights are not contiguous (wc != 1), so the channel holds no filterlet."""
    after = SparseFilterlets()(_wanted(Hwio, {1: 4}))
    _tvm.assert_structural_equal(after["f"].body, Hwio["f"].body)
    assert ATTR_SPARSE not in after["f"].attrs


def _with_init(init: float | None) -> tvm.IRModule:
    """Before with its accumulator starting at ``init`` (None: at the bias, a parameter's value)."""
    func = Before["f"]

    @I.ir_module
    class Biased:
        @T.prim_func(s_tir=True)
        def f(
            X: T.handle("float32", "global"),
            W: T.handle("float32", "global"),
            Y: T.handle("float32", "global"),
            B: T.handle("float32", "global"),
        ):
            T.func_attr({"global_symbol": "f", "tvmmcu.dot_kernels": True})
            X_1 = T.decl_buffer((72,), "float32", data=X)
            W_1 = T.decl_buffer((288,), "float32", data=W)
            Y_1 = T.decl_buffer((36,), "float32", data=Y)
            B_1 = T.decl_buffer((4,), "float32", data=B)
            for yy, xx, ff in T.grid(3, 3, 4):
                acc = T.alloc_buffer((1,), "float32")
                acc[0] = B_1[ff]
                acc[0] = T.call_extern(
                    "float32",
                    "tvmmcu_dot_runs_f32",
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
                    1,
                    3,
                    3,
                    8,
                    T.min(T.max(0, 1 - yy), 3),
                    T.max(T.min(3, 4 - yy), T.min(T.max(0, 1 - yy), 3)),
                    T.min(T.max(0, 1 - xx), 3),
                    T.max(T.min(3, 4 - xx), T.min(T.max(0, 1 - xx), 3)),
                    acc[0],
                )
                Y_1[yy * 12 + xx * 4 + ff] = acc[0]

    if init is None:
        return Biased

    def constant(store: object) -> object:
        if isinstance(store, _tvm.tirx.BufferStore) and isinstance(store.value, _tvm.tirx.FloatImm):
            return _tvm.tirx.BufferStore(store.buffer, _tvm.tirx.FloatImm("float32", init), store.indices)
        return store

    body = _tvm.structural_map(func.body, (_tvm.tirx.BufferStore, constant))
    return tvm.IRModule({"f": func.with_body(body)})


@pytest.mark.parametrize("init", [-0.0, None], ids=["minus-zero", "bias"])
def test_float_accumulators_not_starting_clear_stay_one_pixel_at_a_time(init: float | None) -> None:
    """Declines the blocks (not the sparse calls): the four-pixel kernel adds +-0.0 for a padding tap,
    which turns an accumulator of -0.0 into +0.0 where the dense kernel leaves it."""
    after = SparseFilterlets()(_wanted(_with_init(init), {1: 4}))
    script = after.script()
    assert script.count("tvmmcu_sparse1p_blob_f32") == 1
    assert "tvmmcu_sparse4p" not in script and "tvmmcu_sparse_stage" not in script
    assert dict(after["f"].attrs[ATTR_SPARSE]) == {1: 4}


def test_a_clear_constant_start_takes_the_blocks() -> None:
    """The same accumulator starting at a constant other than -0.0 (+0.0 and 1.5) is blocked."""
    for init in (0.0, 1.5):
        script = SparseFilterlets()(_wanted(_with_init(init), {1: 4})).script()
        assert "tvmmcu_sparse4p_blob_f32" in script and "tvmmcu_sparse1p" not in script
