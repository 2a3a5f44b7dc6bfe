"""Row bands (PartialExecution row mode + RollRowBuffers): conv chains a row at a time, line buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te, topi

from tests import host
from tvm_mcu import _tvm, pipeline
from tvm_mcu.analysis.rows import row_axis, window_rows
from tvm_mcu.analysis.tir_access import free_vars
from tvm_mcu.passes.relax.group_chains import ATTR_PARTIAL
from tvm_mcu.passes.tir.partial_execution import PartialExecution
from tvm_mcu.passes.tir.row_bands import RollRowBuffers, split_rows

# (output channels, kernel, stride, depthwise) per convolution; ReLU between them.
Spec = list[tuple[int, int, int, bool]]


def _conv(x, layout: str, cin: int, cout: int, k: int, s: int, dw: bool, name: str):
    pad = k // 2
    if layout == "NCHW":
        if dw:
            w = te.placeholder((cin, 1, k, k), "float32", name=name)
            return topi.nn.depthwise_conv2d_nchw(x, w, s, pad, 1), w
        w = te.placeholder((cout, cin, k, k), "float32", name=name)
        return topi.nn.conv2d_nchw(x, w, s, pad, 1), w
    if dw:
        w = te.placeholder((k, k, cin, 1), "float32", name=name)
        return topi.nn.depthwise_conv2d_nhwc(x, w, s, pad, 1), w
    w = te.placeholder((k, k, cin, cout), "float32", name=name)
    return topi.nn.conv2d_nhwc(x, w, s, pad, 1), w


def _chain(layout: str, spec: Spec, *, pool: bool = False):
    c, h = 3, 16
    x = te.placeholder((1, c, h, h) if layout == "NCHW" else (1, h, h, c), "float32", name="x")
    y, weights = x, []
    for i, (cout, k, s, dw) in enumerate(spec):
        y, w = _conv(y, layout, c, c if dw else cout, k, s, dw, f"w{i}")
        weights.append(w)
        c = c if dw else cout
        if i < len(spec) - 1 or pool:
            y = topi.nn.relu(y)
    if pool:
        y = topi.nn.pool2d(y, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout=layout)
    return te.create_prim_func([x, *weights, y])


def _reference(func, arrays: list[np.ndarray]) -> np.ndarray:
    lib = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target("llvm")
    )
    shape = [int(d) for d in func.params[-1].ty.shape]
    out = tvm.runtime.tensor(np.zeros(shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def _run_lowered(func, arrays: list[np.ndarray], tmp_path: Path) -> tuple[np.ndarray, int]:
    """Our operator pipeline (RollRowBuffers included), unpacked C built by host gcc, run once."""
    lowered = pipeline.run(pipeline.operator_passes(symbol_prefix="k_"), tvm.IRModule({"main": func}))
    fn, ws = host.build_kernel(lowered, tmp_path, "k_main")
    out = np.zeros([int(d) for d in func.params[-1].ty.shape], np.float32)
    host.call_kernel(fn, [*arrays, out], ws)
    return out, ws


def _arrays(func) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal([int(d) for d in p.ty.shape]).astype(np.float32) for p in func.params[:-1]]


CHAINS: dict[str, Spec] = {
    "3x3-3x3": [(8, 3, 1, False), (8, 3, 1, False)],
    "3x3s2-1x1": [(8, 3, 2, False), (16, 1, 1, False)],
    "inverted-residual": [(8, 1, 1, False), (8, 3, 1, True), (4, 1, 1, False)],
    "strided-depthwise": [(8, 3, 2, False), (16, 1, 1, False), (16, 3, 2, True), (8, 1, 1, False)],
    "5x5-3x3": [(4, 5, 1, False), (8, 3, 1, False)],
}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_row_bands_are_bit_exact(layout: str, name: str, tmp_path: Path) -> None:
    func = _chain(layout, CHAINS[name])
    arrays = _arrays(func)
    got, _ = _run_lowered(split_rows(func, 2 if layout == "NCHW" else 1), arrays, tmp_path)
    np.testing.assert_array_equal(got, _reference(func, arrays))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_intermediates_are_line_buffers_of_the_window_rows(layout: str, tmp_path: Path) -> None:
    # 3x3 -> 3x3 (stride 1): the 16x16x8 float intermediate (8,192 B) is 3 rows of 16x8 floats.
    func = _chain(layout, CHAINS["3x3-3x3"])
    _, ws = _run_lowered(split_rows(func, 2 if layout == "NCHW" else 1), _arrays(func), tmp_path)
    assert ws == 3 * 16 * 8 * 4
    # 5x5 -> 3x3: the first intermediate keeps 3 rows (the 3x3's window), not 5.
    func = _chain(layout, CHAINS["5x5-3x3"])
    _, ws = _run_lowered(split_rows(func, 2 if layout == "NCHW" else 1), _arrays(func), tmp_path)
    assert ws == 3 * 16 * 4 * 4


def test_chain_ending_in_pooling_is_bit_exact(tmp_path: Path) -> None:
    func = _chain("NHWC", CHAINS["3x3-3x3"], pool=True)
    arrays = _arrays(func)
    got, ws = _run_lowered(split_rows(func, 1), arrays, tmp_path)
    np.testing.assert_array_equal(got, _reference(func, arrays))
    # Two line buffers of 3 and 2 rows (the pool's window), 16x8 floats each.
    assert ws == (3 + 2) * 16 * 8 * 4


def test_partial_execution_dispatches_row_mode() -> None:
    func = _chain("NHWC", CHAINS["3x3-3x3"]).with_attr(ATTR_PARTIAL, "rows:axis=1")
    after = PartialExecution()(tvm.IRModule({"main": func}))
    script = after["main"].script()
    assert "tvmmcu.band" in script and "tvmmcu.ring" in script
    # Idempotent: a scheduled chain is left alone.
    _tvm.assert_structural_equal(PartialExecution()(after), after)


def test_roll_row_buffers_declines_functions_without_bands() -> None:
    mod = tvm.IRModule({"main": _chain("NHWC", CHAINS["3x3-3x3"])})
    _tvm.assert_structural_equal(RollRowBuffers()(mod), mod)


def test_a_chain_with_one_output_row_is_refused() -> None:
    x = te.placeholder((1, 8, 8, 3), "float32", name="x")
    w = te.placeholder((3, 3, 3, 4), "float32", name="w")
    y = topi.nn.conv2d_nhwc(x, w, 1, 1, 1)
    y = topi.nn.pool2d(y, (8, 8), (8, 8), (1, 1), (0, 0, 0, 0), "avg", layout="NHWC")
    with pytest.raises(ValueError, match="one row"):
        split_rows(te.create_prim_func([x, w, y]), 1)


def test_row_axis_reads_the_layout_of_the_kernel() -> None:
    assert row_axis(_chain("NHWC", CHAINS["3x3-3x3"])) == 1
    assert row_axis(_chain("NCHW", CHAINS["3x3-3x3"])) == 2
    x = te.placeholder((1, 8, 8, 3), "float32", name="x")
    y = topi.nn.relu(x)
    assert row_axis(te.create_prim_func([x, y])) is None


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_padded_conv_after_pooling_is_bit_exact(layout: str, tmp_path: Path) -> None:
    """conv -> relu -> max pool -> padded conv: the padding after the pool is not the pool's epilogue
    (its border reads nothing from the pool); computed under the pool's loops it lost its columns."""
    x = te.placeholder((1, 3, 16, 16) if layout == "NCHW" else (1, 16, 16, 3), "float32", name="x")
    y, w0 = _conv(x, layout, 3, 8, 3, 1, False, "w0")
    y = topi.nn.pool2d(topi.nn.relu(y), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout=layout)
    y, w1 = _conv(y, layout, 8, 8, 3, 1, False, "w1")
    func = te.create_prim_func([x, w0, w1, y])
    arrays = _arrays(func)
    got, _ = _run_lowered(split_rows(func, 2 if layout == "NCHW" else 1), arrays, tmp_path)
    np.testing.assert_array_equal(got, _reference(func, arrays))


def test_window_loop_extents_are_not_expressions_of_the_loops_around_them() -> None:
    """A window loop's bounds are read from one-element buffers. As expressions of the enclosing
    window loops (whose bounds are expressions of theirs), RemoveNoOp relaxed each extent over every
    loop around it, recursively: compile time exponential in the chain's depth."""
    func = split_rows(_chain("NCHW", CHAINS["strided-depthwise"]), 2)
    lowered = pipeline.run(pipeline.operator_passes(symbol_prefix="k_"), tvm.IRModule({"main": func}))
    loops: list = []
    for f in lowered.functions.values():
        _tvm.structural_walk(f.body, (_tvm.tirx.For, loops.append))
    loop_vars = {lp.loop_var for lp in loops}
    windows = [lp for lp in loops if not isinstance(lp.extent, _tvm.tirx.IntImm)]
    assert len(windows) >= 3  # one per operator but the last
    for lp in loops:
        assert not free_vars(lp.extent) & loop_vars, lp.extent


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "rows"),
    [(3, 1, 1, 3), (3, 2, 1, 3), (1, 1, 1, 1), (1, 2, 1, 1), (5, 1, 1, 5), (3, 1, 2, 5)],
    ids=["3x3", "3x3-stride2", "1x1", "1x1-stride2", "5x5", "3x3-dilation2"],
)
def test_window_rows_is_the_input_rows_one_output_row_reads(
    kernel: int, stride: int, dilation: int, rows: int
) -> None:
    x = te.placeholder((1, 4, 16, 16), "float32", name="x")
    w = te.placeholder((4, 4, kernel, kernel), "float32", name="w")
    y = topi.nn.conv2d_nchw(x, w, stride, kernel // 2 * dilation, dilation)
    assert window_rows(te.create_prim_func([x, w, y]), 2) == rows


def test_window_rows_of_pooling_and_of_an_elementwise_kernel() -> None:
    x = te.placeholder((1, 16, 16, 4), "float32", name="x")
    pool = topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout="NHWC")
    assert window_rows(te.create_prim_func([x, pool]), 1) == 2
    assert window_rows(te.create_prim_func([x, topi.nn.relu(x)]), 1) is None
