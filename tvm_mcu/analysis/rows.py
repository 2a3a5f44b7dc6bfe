"""Rows of an operator's kernel: which axis of its 4-D tensors holds the rows, and how many rows of its
input one row of its output reads (its window's height). The row-chain search (schedule/partial.py)
reads both; passes/tir/row_bands.py runs the chains."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tvm_mcu import _tvm
from tvm_mcu.analysis.tir_access import free_vars, sblocks_of

# s_tir block iter var kinds (IterVar.iter_type).
_SPATIAL = 0
_REDUCE = 2


def row_axis(func: _tvm.PrimFunc) -> int | None:
    """The axis of the rows of an operator's 4-D tensors, from its convolution or pooling blocks'
    layout (TOPI names them ``conv2d_nhwc``, ``depthwise_conv2d_nchw``, ...); None when none says."""
    names = [b.name_hint.lower() for b in sblocks_of(func.body)]
    axes = {1 if "nhwc" in n else 2 for n in names if "nhwc" in n or "nchw" in n}
    return axes.pop() if len(axes) == 1 else None


def _row_reads(func: _tvm.PrimFunc, axis: int) -> Iterator[tuple[Any, set[Any], dict[Any, int]]]:
    """(input row index, the block's spatial iter vars, its reduce iter vars -> extent) of each 4-D
    load in a reduction block whose row index moves with an output row (not a weight's rows)."""
    for block in sblocks_of(func.body):
        reduce = {iv.var: int(iv.dom.extent) for iv in block.iter_vars if int(iv.iter_type) == _REDUCE}
        spatial = {iv.var for iv in block.iter_vars if int(iv.iter_type) == _SPATIAL}
        if not reduce:
            continue
        loads: list[Any] = []
        _tvm.structural_walk(block.body, (_tvm.TensorLoad, loads.append))
        for ld in loads:
            if len(ld.indices) == 4 and free_vars(ld.indices[axis]) & spatial:
                yield ld.indices[axis], spatial, reduce


def _step(row: Any, var: Any) -> Any:
    """How far ``row`` moves when ``var`` grows by one (an IntImm when constant)."""
    one = _tvm.tirx.const(1, str(var.ty.dtype))
    return _tvm.Analyzer().simplify(_subst(row, var, var + one) - row)


def window_rows(func: _tvm.PrimFunc, axis: int) -> int | None:
    """Rows of its input that one output row of the operator reads: 3 for a 3x3 convolution or pooling
    at any stride, 1 for a pointwise one, ``(k - 1) * dilation + 1`` in general.

    Read off the reduction blocks: an input row index that moves with an output row (a spatial iter
    var) and with the window (reduce iter vars, e.g. ``yy * 2 + ry - 1``) spans one row plus each
    reduce var's extent less one times its coefficient. None when no reduction reads rows that way,
    or an index is not affine in the window.
    """
    found: list[int] = []
    for row, _, reduce in _row_reads(func, axis):
        used = free_vars(row)
        span = 1
        for var, extent in reduce.items():
            if var not in used:
                continue
            step = _step(row, var)
            if not isinstance(step, _tvm.tirx.IntImm):
                return None
            span += abs(int(step)) * (extent - 1)
        found.append(span)
    return max(found) if found else None


def skips_rows(func: _tvm.PrimFunc, axis: int) -> bool:
    """Whether some row of the operator's input is read by no output row: its reduction blocks step an
    input row index by more rows per output row (the stride) than one output row reads (the window),
    e.g. a 1x1 convolution of stride 2. A row chain cannot take it as a consumer: its line buffer
    shifts by the stride past rows its producer computed (fuzz seed 580: wrong outputs)."""
    window = window_rows(func, axis)
    if window is None:
        return False
    for row, spatial, _ in _row_reads(func, axis):
        for var in spatial & free_vars(row):
            step = _step(row, var)
            if isinstance(step, _tvm.tirx.IntImm) and abs(int(step)) > window:
                return True
    return False


def _subst(expr: Any, var: Any, value: Any) -> Any:
    return _tvm.structural_map(expr, [(_tvm.tirx.Var, lambda v: value if v.same_as(var) else v)])
