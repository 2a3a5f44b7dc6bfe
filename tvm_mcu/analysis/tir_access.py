"""Who reads and writes what in a TIR statement: loads, stores and free variables, by walking the IR."""

from __future__ import annotations

from typing import Any

from tvm_mcu import _tvm


def loads_of(stmt: Any, var: Any) -> list[Any]:
    """Every load of buffer ``var`` in ``stmt``."""
    found: list[Any] = []
    _tvm.structural_walk(
        stmt, (_tvm.TensorLoad, lambda ld: found.append(ld) if ld.source.same_as(var) else None)
    )
    return found


def stores_to(stmt: Any, var: Any) -> list[Any]:
    """Every store into buffer ``var`` in ``stmt``."""
    found: list[Any] = []
    _tvm.structural_walk(
        stmt, (_tvm.tirx.BufferStore, lambda st: found.append(st) if st.buffer.same_as(var) else None)
    )
    return found


def free_vars(expr: Any) -> set[Any]:
    found: list[Any] = []
    _tvm.structural_walk(expr, (_tvm.tirx.Var, found.append))
    return set(found)


def sblocks_of(stmt: Any) -> list[Any]:
    """Every s_tir block in ``stmt`` (the root block included), outermost first."""
    found: list[Any] = []
    _tvm.structural_walk(stmt, (_tvm.s_tir.SBlock, found.append))
    return found
