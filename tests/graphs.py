"""Small hand-made execution graphs for the planner and scheduler tests."""

from __future__ import annotations

from tvm_mcu.schedule.graph import Graph, Step, Tensor


def tensor(
    name: str, n: int, kind: str = "intermediate", alias_of: str | None = None, dtype: str = "int8"
) -> Tensor:
    return Tensor(name, (n,), dtype, kind, alias_of)


def graph(
    steps: list[Step],
    tensors: list[Tensor],
    inputs: tuple[str, ...] = ("x",),
    outputs: tuple[str, ...] = ("y",),
) -> Graph:
    return Graph({t.name: t for t in tensors}, tuple(steps), tuple(inputs), tuple(outputs), {})
