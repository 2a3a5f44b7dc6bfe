"""SplitBorders on float windows: split where at most ``WINDOW_UNROLL_TAPS`` taps, left whole above."""

from __future__ import annotations

import pytest
from tvm.script import tirx as T

from tvm_mcu import _tvm
from tvm_mcu.passes.tir import SplitBorders


def _row_window(kw: int) -> _tvm.tvm.IRModule:
    """A 1 x kw float depthwise window along 24 pixels padded by kw // 2 on each side, as UseDotKernels
    leaves it (the taps inside clamped)."""
    pad = kw // 2

    @T.prim_func(s_tir=True)
    def f(
        X: T.handle("float32", "global"), W: T.handle("float32", "global"), C: T.handle("float32", "global")
    ):
        T.func_attr({"global_symbol": "f"})
        X_1 = T.decl_buffer((128,), "float32", data=X)
        W_1 = T.decl_buffer((32,), "float32", data=W)
        C_1 = T.decl_buffer((24,), "float32", data=C)
        acc = T.alloc_buffer((1,), "float32")
        for x in range(24):
            acc[0] = T.float32(0)
            acc[0] = T.call_extern(
                "float32",
                "tvmmcu_dot_win_f32",
                T.address_of(X_1[x * 4 - pad * 4 + T.min(T.max(0, pad - x), kw) * 4]),
                0,
                4,
                T.address_of(W_1[0]),
                0,
                1,
                1,
                kw,
                0,
                1,
                T.min(T.max(0, pad - x), kw),
                T.max(T.min(kw, 24 + pad - x), T.min(T.max(0, pad - x), kw)),
                acc[0],
            )
            C_1[x] = acc[0]

    return _tvm.tvm.IRModule({"f": f})


@pytest.mark.parametrize(("kw", "pieces"), [(3, 3), (5, 3), (17, 1)], ids=["taps3", "taps5", "taps17"])
def test_float_windows_split_up_to_the_unrolled_size(kw: int, pieces: int) -> None:
    """3 and 5 taps: left border, interior, right border, the interior's taps constant; 17 taps (more
    than WINDOW_UNROLL_TAPS, which the kernel would not unroll): one loop, as before."""
    before = _row_window(kw)
    body = SplitBorders()(before)["f"].body
    loops = [
        s
        for s in (body.seq if isinstance(body, _tvm.tirx.SeqStmt) else [body])
        if isinstance(s, _tvm.tirx.For)
    ]
    assert len(loops) == pieces
    if pieces == 1:
        _tvm.assert_structural_equal(body, before["f"].body)
    else:
        interior = loops[1].body.seq[1].value  # acc[0] = tvmmcu_dot_win_f32(...)
        taps = [int(a) for a in interior.args[-5:-1]]
        assert taps == [0, 1, 0, kw]
