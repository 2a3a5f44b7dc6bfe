"""Which operators can overwrite one of their inputs with their output, and at what scratch cost.

Read from an operator's scheduled s_tir PrimFunc (after ScheduleForMcu), never from its name:

- ``elementwise``: one block reads the input at exactly the indices where it writes the output (same
  shape and type), so each element is read before its own slot is written. No scratch.
- ``depthwise``: output channel ``c`` reads input channel ``c`` only (same channel count): depthwise
  convolutions, pooling. Computing one channel plane at a time, in increasing ``c``, into a scratch
  plane, then copying it over the output, only ever overwrites input elements of channels already
  consumed (TinyEngine's in-place depthwise). With channels last (NHWC) the output's channel-``c``
  elements sit exactly on the input's; with channels first (NCHW, batch 1) output plane ``c`` lies
  within input planes ``0..c`` when it is no larger. Scratch: one output plane.
- ``pointwise``: a 1x1 convolution (no padding) with no more output than input channels, whose input
  pixel for output pixel ``(h, w)`` is at ``(>= h, >= w)``. Computing one output pixel into a scratch
  pixel, then copying it, only overwrites input pixels already consumed (NHWC; NCHW only at stride 1,
  where output element ``(c, p)`` sits on input element ``(c, p)``). Scratch: one output pixel.

The caller decides whether an input is dead after the operator; this module only answers whether the
kernel can be made safe to run with its output and that input at the same address.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from tvm_mcu import _tvm
from tvm_mcu.analysis.tir_access import free_vars, loads_of, sblocks_of, stores_to

_SPATIAL = 0
_REDUCE = 2


@attrs.frozen
class InPlace:
    """``kind`` as in the module docstring; ``param``: index of the input overwritten by the output;
    ``axis``: the channel axis (1 for NCHW, 3 for NHWC; -1 for element-wise)."""

    kind: str
    param: int
    scratch_bytes: int
    axis: int = -1


def _blocks(func: _tvm.PrimFunc) -> list[Any]:
    return [b for b in sblocks_of(func.body) if b.name_hint != "root"]


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in var.ty.shape)


def _dtype(var: Any) -> str:
    return str(var.ty.dtype)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * int(np.dtype(dtype).itemsize)


def _reads(block: Any, var: Any) -> bool:
    return any(r.source.same_as(var) for r in block.reads) or bool(loads_of(block.body, var))


def in_place_options(func: _tvm.PrimFunc, candidates: list[int]) -> list[InPlace]:
    """The ways ``func`` can overwrite the input parameter ``candidates[k]`` with its output (last param)."""
    params = list(func.params)
    out = params[-1]
    blocks = _blocks(func)
    # One block must write the output (an accumulator written in place has a second, init, block).
    writers = [b for b in blocks if stores_to(b.body, out)]
    if len(writers) != 1 or not isinstance(out.ty, _tvm.BufferType):
        return []
    writer = writers[0]
    options = []
    for k in candidates:
        x = params[k]
        if not isinstance(x.ty, _tvm.BufferType) or _dtype(x) != _dtype(out):
            continue
        readers = [b for b in blocks if _reads(b, x)]
        found = _classify(x, out, writer, readers)
        if (
            found is not None
            and not readers[0].same_as(writer)
            and not _elementwise_after(blocks, readers[0])
        ):
            # The reader's output reaches the output through another window or reduction (a chain of a
            # pointwise convolution into a depthwise one): an output pixel needs more than its own.
            found = None
        if found is None and _read_before_writer(func, x, writer, readers):
            # A fused chain reads the input early (all slices) and once more in its final epilogue.
            found = _classify(x, out, writer, [writer])
        if found is None:
            continue
        kind, axis = found
        oshape = _shape(out)
        scratch = 0
        if kind == "depthwise":  # one plane: the output without its channel axis
            scratch = _nbytes(tuple(d for i, d in enumerate(oshape) if i != axis), _dtype(out))
        elif kind == "pointwise":  # one pixel: the output's channels
            scratch = _nbytes((oshape[axis],), _dtype(out))
        if kind != "elementwise" and scratch >= _nbytes(oshape, _dtype(out)) // 2:
            continue  # staging most of the output gains little or nothing
        options.append(InPlace(kind, k, scratch, axis))
    return options


def _elementwise_after(blocks: list[Any], reader: Any) -> bool:
    """Every block besides ``reader`` is element-wise on the function's intermediates: no reduction,
    and each intermediate it loads (a buffer a block of the function writes) read at the indices it
    stores to. Then the output element at an index depends on the reader's result at that index only."""
    written = {w.source for b in blocks for w in b.writes}
    analyzer = _tvm.Analyzer()
    for b in blocks:
        if b.same_as(reader):
            continue
        kinds = {iv.var: int(iv.iter_type) for iv in b.iter_vars}
        if any(
            kind == _REDUCE and int(iv.dom.extent) > 1
            for iv, kind in zip(b.iter_vars, kinds.values(), strict=True)
        ):
            return False
        target = _written_buffer(b)
        stores = stores_to(b.body, target) if target is not None else []
        if len(stores) != 1:
            return False
        for iv in b.iter_vars:
            analyzer.bind(iv.var, _tvm.tvm.ir.Range(0, int(iv.dom.extent)))
        for buf in written:
            if buf.same_as(target):
                continue
            for ld in loads_of(b.body, buf):
                if len(ld.indices) != len(stores[0].indices) or not all(
                    analyzer.can_prove_equal(i, j) for i, j in zip(ld.indices, stores[0].indices, strict=True)
                ):
                    return False
    return True


def _top_level_index(func: _tvm.PrimFunc) -> dict[Any, int]:
    """Each block -> the index of the root-level statement containing it."""
    root = func.body.block if isinstance(func.body, _tvm.s_tir.SBlockRealize) else None
    if root is None:
        return {}
    body = root.body
    stmts = list(body.seq) if isinstance(body, _tvm.tirx.SeqStmt) else [body]
    index: dict[Any, int] = {}
    for k, stmt in enumerate(stmts):
        for b in sblocks_of(stmt):
            index[b] = k
    return index


def _read_before_writer(func: _tvm.PrimFunc, x: Any, writer: Any, readers: list[Any]) -> bool:
    """The writer reads ``x``, and every other reader sits in an earlier root-level loop nest: by the
    time the writer starts, those reads are over."""
    if len(readers) < 2 or not any(r.same_as(writer) for r in readers):
        return False
    index = _top_level_index(func)
    if writer not in index:
        return False
    others = [r for r in readers if not r.same_as(writer)]
    return all(r in index and index[r] < index[writer] for r in others)


def _classify(x: Any, out: Any, writer: Any, readers: list[Any]) -> tuple[str, int] | None:
    if len(readers) != 1:
        return None
    reader = readers[0]
    xs, os_ = _shape(x), _shape(out)
    kinds = {iv.var: int(iv.iter_type) for iv in reader.iter_vars}
    if reader.same_as(writer) and xs == os_ and _REDUCE not in kinds.values():
        (store,) = stores_to(writer.body, out)
        loads = loads_of(writer.body, x)
        analyzer = _tvm.Analyzer()
        for iv in writer.iter_vars:
            analyzer.bind(iv.var, _tvm.tvm.ir.Range(0, int(iv.dom.extent)))
        same = all(
            analyzer.can_prove_equal(a, b)
            for ld in loads
            for a, b in zip(ld.indices, store.indices, strict=True)
        )
        if loads and same:
            return "elementwise", -1
        return None
    extents = {iv.var: int(iv.dom.extent) for iv in reader.iter_vars}
    if _REDUCE not in kinds.values() or len(xs) != 4 or len(os_) != 4 or xs[0] != 1 or os_[0] != 1:
        return None
    # The reduction's accumulator is indexed by its spatial vars in output order.
    acc_stores = stores_to(reader.body, _written_buffer(reader))
    if len(acc_stores) != 1:
        return None
    acc = list(acc_stores[0].indices)
    if len(acc) != 4 or not all(isinstance(i, _tvm.tirx.Var) and kinds.get(i) == _SPATIAL for i in acc):
        return None
    loads = loads_of(reader.body, x)
    if not loads:
        return None
    unit = {v for v in kinds if extents[v] == 1}
    reduce_vars = {v for v, kd in kinds.items() if kd == _REDUCE and extents[v] > 1}
    found: list[tuple[str, int]] = []
    for axis in (3, 1):
        # Channels first: output plane c must fit within input planes 0..c.
        fits = axis == 3 or int(np.prod(os_[2:])) <= int(np.prod(xs[2:]))
        if fits and xs[axis] == os_[axis] and _channelwise(loads, acc, axis, unit):
            found.append(("depthwise", axis))
        # Channels first: only at stride 1 does output element (c, p) sit on input element (c, p).
        same_pixels = axis == 3 or xs[2:] == os_[2:]
        if same_pixels and os_[axis] <= xs[axis] and _pixelwise(loads, acc, axis, reduce_vars, extents):
            found.append(("pointwise", axis))
    if not found:
        return None
    # The least scratch: a pixel is smaller than a plane (an NHWC 1x1 conv is independent along rows too).
    return min(found, key=lambda f: _scratch_elems(os_, *f))


def _scratch_elems(shape: tuple[int, ...], kind: str, axis: int) -> int:
    if kind == "pointwise":
        return shape[axis]
    return int(np.prod([d for i, d in enumerate(shape) if i != axis]))


def _channelwise(loads: list[Any], acc: list[Any], axis: int, unit: set[Any]) -> bool:
    """Every load reads the accumulator's own channel, and no other axis depends on it."""
    vc = acc[axis]
    for ld in loads:
        idx = list(ld.indices)
        if free_vars(idx[axis]) - unit != {vc}:
            return False
        if not (_tvm.structural_equal(idx[axis], vc) or _unit_offset(idx[axis], vc)):
            return False
        if any(vc in free_vars(e) for i, e in enumerate(idx) if i != axis):
            return False
    return True


def _pixelwise(
    loads: list[Any], acc: list[Any], axis: int, reduce_vars: set[Any], extents: dict[Any, int]
) -> bool:
    """Every load reads a reduced channel at a pixel at or after the output's own, no window."""
    analyzer = _tvm.Analyzer()
    for v, extent in extents.items():
        analyzer.bind(v, _tvm.tvm.ir.Range(0, extent))
    for ld in loads:
        idx = list(ld.indices)
        if not (isinstance(idx[axis], _tvm.tirx.Var) and idx[axis] in reduce_vars):
            return False
        for i in range(1, 4):
            if i == axis:
                continue
            if free_vars(idx[i]) & reduce_vars or not analyzer.can_prove(idx[i] >= acc[i]):
                return False
    return True


def _written_buffer(block: Any) -> Any:
    return block.writes[0].source if len(block.writes) == 1 else None


def _unit_offset(expr: Any, var: Any) -> bool:
    """``expr`` is ``var`` plus variables of extent 1 (which are always 0), e.g. ``v_ff + v_rc``."""
    return isinstance(expr, _tvm.tirx.Add) and (expr.a.same_as(var) or expr.b.same_as(var))
