"""HoistReductionInit: initialise an accumulator once, before its reduction loops, not behind a test."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import PrimFunc, TensorLoad, structural_equal, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.each_function import Needs, rewrite_each

ATTR_DONE = "tvmmcu.reduction_init_hoisted"


def _conjuncts(cond: Any) -> list[Any]:
    if isinstance(cond, tirx.And):
        return _conjuncts(cond.a) + _conjuncts(cond.b)
    return [cond]


def _nest(loop: Any) -> list[Any]:
    """``loop`` and the loops directly (alone) in its body, outermost first."""
    chain = [loop]
    while isinstance(chain[-1].body, tirx.For):
        chain.append(chain[-1].body)
    return chain


def _uses(expr: Any, variables: set[Any]) -> bool:
    found: list[Any] = []
    structural_walk(expr, (tirx.Var, lambda v: found.append(v) if v in variables else None))
    return bool(found)


def _reads_memory(expr: Any) -> bool:
    found: list[Any] = []
    structural_walk(expr, (TensorLoad, found.append))
    return bool(found)


def _first_iteration_test(cond: Any, chain: list[Any]) -> bool:
    """Whether ``cond`` is ``v0 == min0 && v1 == min1 && ...`` over exactly the loops of ``chain``."""
    tests = _conjuncts(cond)
    if len(tests) != len(chain):
        return False
    by_var = {loop.loop_var: loop for loop in chain}
    for test in tests:
        if not isinstance(test, tirx.EQ):
            return False
        loop = by_var.pop(test.a, None) if isinstance(test.a, tirx.Var) else None
        if loop is None or not structural_equal(test.b, loop.min):
            return False
    return not by_var


def _hoisted(loop: Any) -> Any | None:
    """``init; loop'`` when ``loop`` is the outermost of a perfect nest whose innermost body starts with
    ``if (first iteration of every loop of the nest) init``; None otherwise."""
    chain = _nest(loop)
    body = chain[-1].body
    if not isinstance(body, tirx.SeqStmt) or len(body.seq) < 2:
        return None
    first = body.seq[0]
    if not isinstance(first, tirx.IfThenElse) or first.else_case is not None:
        return None
    init = first.then_case
    if not isinstance(init, tirx.BufferStore) or not _first_iteration_test(first.condition, chain):
        return None
    loop_vars = {lp.loop_var for lp in chain}
    if any(_uses(i, loop_vars) for i in init.indices) or _uses(init.value, loop_vars):
        return None
    if _reads_memory(init.value):
        return None
    if any(not isinstance(lp.extent, tirx.IntImm) or int(lp.extent) <= 0 for lp in chain):
        return None  # a loop that may run no iteration: the init might never have happened
    if any(
        lp.kind not in (tirx.ForKind.SERIAL, tirx.ForKind.UNROLLED) or lp.step is not None for lp in chain
    ):
        return None
    rest = body.seq[1:]
    inner: Any = rest[0] if len(rest) == 1 else tirx.SeqStmt(list(rest))
    for lp in reversed(chain):
        inner = tirx.For(lp.loop_var, lp.min, lp.extent, lp.kind, inner, lp.thread_binding, lp.annotations)
    return tirx.SeqStmt([init, inner])


def _one(buffer: Any) -> bool:
    return [int(d) if isinstance(d, tirx.IntImm) else -1 for d in buffer.shape] == [1]


def _guarded_constant_inits(body: Any) -> dict[tuple[str, str], Any]:
    """(name, dtype) of the one-element buffers a store guarded by an ``if`` without ``else`` writes a
    constant into -> the first such store: accumulators a partial tile's test guards. By name, as the
    lowering leaves the allocation's buffer and the store's as distinct objects."""
    found: dict[tuple[str, str], Any] = {}

    def on_if(node: Any) -> None:
        store = node.then_case
        if (
            node.else_case is None
            and isinstance(store, tirx.BufferStore)
            and _one(store.buffer)
            and isinstance(store.value, tirx.IntImm | tirx.FloatImm)
        ):
            found.setdefault((store.buffer.name, str(store.buffer.dtype)), store)

    structural_walk(body, (tirx.IfThenElse, on_if))
    return found


def _initialised_at_allocation(body: Any) -> Any:
    """``body`` with each one-element buffer of :func:`_guarded_constant_inits` also given that constant
    right after its allocation: GCC cannot see that the guarded init and the guarded reads share their
    test (-Wmaybe-uninitialized); the store defines only what was undefined before."""
    found = _guarded_constant_inits(body)
    if not found:
        return body

    def on_seq(seq: Any) -> Any:
        items: list[Any] = []
        for s in seq.seq:
            items.append(s)
            if isinstance(s, tirx.AllocBuffer) and _one(s.buffer):
                init = found.get((s.buffer.name, str(s.buffer.dtype)))
                if init is not None:
                    items.append(tirx.BufferStore(s.buffer, init.value, list(init.indices)))
        return tirx.SeqStmt(items) if len(items) != len(seq.seq) else seq

    return structural_map(body, (tirx.SeqStmt, on_seq))


def hoist_reduction_inits(func: PrimFunc) -> PrimFunc:
    def on_for(loop: Any) -> Any:
        return _hoisted(loop) or loop

    body = structural_map(func.body, (tirx.For, on_for))
    return func.with_body(body).with_attr(ATTR_DONE, True)


@tvm.transform.module_pass(opt_level=0, name="HoistReductionInit")
class HoistReductionInit:
    """Move a reduction's initialisation out of its reduction loops.

    TVM's LowerInitBlock turns a block's ``T.init()`` into ``if (r0 == 0 && r1 == 0 ...) acc = init``
    inside the innermost reduction loop. The schedules decompose the reduction first where they can
    (``decompose_reduction``), but a block computed inside a row band has non-affine bindings (the
    band's row counters) and stays undecomposed: every multiply-accumulate then pays a compare and a
    branch, and GCC, which cannot prove the first iteration runs, warns that the accumulator "may be
    used uninitialized".

    Matches
        a perfect loop nest (each loop alone in its parent's body) whose innermost body is a sequence
        starting with ``if (v0 == min0 && ... && vk == mink) buf[i] = value`` testing exactly the
        nest's loop variables, each against its loop's start.
    Rewrites to
        ``buf[i] = value;`` followed by the nest without the ``if``.
    Declines when
        the store's index or value uses a loop variable of the nest, the value reads memory, a loop of
        the nest has a non-constant or non-positive extent (it might run no iteration), or a loop is
        not serial or unrolled; or the function already carries ``tvmmcu.reduction_init_hoisted``.
    Numerics
        unchanged: the store ran on the first iteration before anything else of the nest's body, and
        nothing it depends on changes inside the nest.
    Ordering
        after LowerOpaqueBlock and FlattenBuffer (loop nests with flat stores, the ``if`` explicit),
        before LoopPartition and UnrollLoop (which would copy the ``if`` into partitions).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(
            mod, ATTR_DONE, hoist_reduction_inits, name="HoistReductionInit", needs=Needs(flat=True)
        )


ATTR_INITIALISED = "tvmmcu.guarded_accumulators_initialised"


def initialise_guarded_accumulators(func: PrimFunc) -> PrimFunc:
    return func.with_body(_initialised_at_allocation(func.body)).with_attr(ATTR_INITIALISED, True)


@tvm.transform.module_pass(opt_level=0, name="InitGuardedAccumulators")
class InitGuardedAccumulators:
    """Give an accumulator that only guarded code initialises its initial value where it is allocated.

    A channel slice that may run past the last channel (accumulating slices of 2 over 3 channels) guards
    its accumulator's init, its updates and its reads by the same test; GCC cannot see that they share
    it and warns that the accumulator "may be used uninitialized" (-Wmaybe-uninitialized: the library
    must build warning-free).

    Matches
        a one-element buffer allocated in the function that an ``if`` without ``else`` stores a
        constant into (by name and dtype: the lowering leaves the allocation's buffer object and the
        store's distinct).
    Rewrites to
        the same allocation followed by a store of that constant (the first such store's), unguarded.
    Declines when
        no such store; or the function already carries ``tvmmcu.guarded_accumulators_initialised``.
    Numerics
        unchanged: the added store defines only values nothing read before (every read follows the
        guarded init on the paths that reach it).
    Ordering
        last among the lowering passes that reshape statements (after UnrollLoop, StmtSimplify and
        RemoveNoOp, which produce the guarded form), before ConvertSSA.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(
            mod,
            ATTR_INITIALISED,
            initialise_guarded_accumulators,
            name="InitGuardedAccumulators",
            needs=Needs(flat=True),
        )
