"""The static memory planner: lifetimes, views, workspaces, offsets, and the whole-buffer bounds."""

import numpy as np
import pytest

from tests import graphs
from tvm_mcu.analysis.peak import best_order_peak, whole_buffer_peak
from tvm_mcu.schedule.graph import Graph, Step
from tvm_mcu.schedule.memory import live_lower_bound, plan_memory

_graph, _t = graphs.graph, graphs.tensor


def chain(sizes):
    """x -> a0 -> a1 -> ... -> y, one step each."""
    names = ["x"] + [f"a{i}" for i in range(len(sizes) - 2)] + ["y"]
    kinds = ["input"] + ["intermediate"] * (len(sizes) - 2) + ["output"]
    tensors = [_t(n, s, k) for n, s, k in zip(names, sizes, kinds, strict=True)]
    steps = [Step(names[i + 1], "f", (names[i],), names[i + 1], "op") for i in range(len(names) - 1)]
    return _graph(steps, tensors)


def test_chain_reuses_memory_and_meets_lower_bound():
    g = chain([100, 800, 400, 800, 8])
    plan = plan_memory(g, align=8)
    # a0 and a1 are live together, then a1 and a2: 800 + 400 at most
    assert plan.lower_bound == 1200
    assert plan.arena_bytes == 1200
    assert plan.placement["x"] == "input:0" and plan.placement["y"] == "output:0"


def test_views_share_storage_and_extend_lifetime():
    tensors = [
        _t("x", 64, "input"),
        _t("a", 64),
        _t("v", 64, "alias", alias_of="a"),
        _t("b", 64),
        _t("y", 64, "output"),
    ]
    steps = [
        Step("a", "f", ("x",), "a", "op"),
        Step("b", "f", ("x",), "b", "op"),
        Step("y", "f", ("v", "b"), "y", "op"),
    ]
    plan = plan_memory(_graph(steps, tensors))
    names = {b.name for b in plan.buffers}
    assert names == {"a", "b"}  # the view owns no memory
    a = next(b for b in plan.buffers if b.name == "a")
    assert (a.start, a.end) == (0, 2)  # read through its view at step 2
    assert plan.placement["v"] == "arena"
    assert plan.arena_bytes == 128


def test_workspace_is_live_only_during_its_step():
    g = chain([16, 256, 256, 16])
    steps = list(g.steps)
    steps[1] = Step(steps[1].name, "f", steps[1].inputs, steps[1].output, "op", workspace_bytes=100)
    g = Graph(g.tensors, tuple(steps), g.inputs, g.outputs, {})
    plan = plan_memory(g, align=8)
    ws = next(b for b in plan.buffers if b.name.endswith(".workspace"))
    assert (ws.start, ws.end, ws.size) == (1, 1, 104)
    assert plan.arena_bytes == 256 + 256 + 104


def test_output_view_places_its_source_in_the_output_buffer():
    tensors = [_t("x", 32, "input"), _t("a", 32), _t("y", 32, "output", alias_of="a")]
    steps = [Step("a", "f", ("x",), "a", "op")]
    plan = plan_memory(_graph(steps, tensors))
    assert plan.placement["a"] == "output:0"
    assert plan.arena_bytes == 0


@pytest.mark.parametrize("seed", range(5), ids=lambda s: f"seed{s}")
def test_random_graphs_never_overlap_live_buffers(seed):
    rng = np.random.default_rng(seed)
    n = 12
    tensors = [_t("x", int(rng.integers(8, 512)), "input")]
    steps = []
    for i in range(n):
        name = "y" if i == n - 1 else f"t{i}"
        tensors.append(_t(name, int(rng.integers(8, 512)), "output" if i == n - 1 else "intermediate"))
        k = int(rng.integers(1, 3))
        pool = ["x"] + [f"t{j}" for j in range(i)]
        ins = tuple(sorted(set(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist())))
        steps.append(Step(name, "f", ins, name, "op", workspace_bytes=int(rng.integers(0, 3)) * 24))
    g = _graph(steps, tensors)
    plan = plan_memory(g, align=8)
    bufs = plan.buffers
    for i, a in enumerate(bufs):
        for b in bufs[i + 1 :]:
            if a.overlaps_in_time(b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    assert plan.lower_bound <= plan.arena_bytes <= sum(b.size for b in bufs)
    assert live_lower_bound(bufs, len(steps)) == plan.lower_bound


def _branches() -> Graph:
    """x feeds a big branch (big -> s1) and a small one (small -> s2); y joins them."""
    tensors = [
        _t("x", 10, "input"),
        _t("big", 1000),
        _t("s1", 10),
        _t("small", 100),
        _t("s2", 10),
        _t("y", 10, "output"),
    ]
    steps = [
        Step("small", "f", ("x",), "small", "op"),
        Step("big", "f", ("x",), "big", "op"),
        Step("s1", "f", ("big",), "s1", "op"),
        Step("s2", "f", ("small",), "s2", "op"),
        Step("y", "f", ("s1", "s2"), "y", "op"),
    ]
    return _graph(steps, tensors)


def test_best_order_beats_the_given_order_on_branches():
    # Running the big branch first frees it early.
    g = _branches()
    given = whole_buffer_peak(g)
    best = best_order_peak(g)
    assert best.exact
    assert given == 10 + 100 + 1000  # small is still alive while big is produced
    assert best.peak_bytes == 10 + 1000 + 10 < given
    assert whole_buffer_peak(g, best.order) == best.peak_bytes


def test_reorder_runs_the_best_order_and_rejects_a_broken_one():
    from tvm_mcu.schedule.graph import reorder

    g = _branches()
    best = best_order_peak(g)
    g2 = reorder(g, best.order)
    assert whole_buffer_peak(g2) == best.peak_bytes == 1020 < whole_buffer_peak(g)
    assert plan_memory(g2).arena_bytes < plan_memory(g).arena_bytes
    with pytest.raises(ValueError, match="before its inputs"):
        reorder(g, (2, 0, 1, 3, 4))
    with pytest.raises(ValueError, match="not a permutation"):
        reorder(g, (0, 1, 2))
