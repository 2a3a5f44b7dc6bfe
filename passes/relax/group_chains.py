"""GroupChains: fuse a chain of operator calls of ``main`` into one PrimFunc, tagged for partial execution."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, tvm

# Set on the fused PrimFunc of each chain: how the partial-execution schedule splits it, e.g.
# "channels:axis=1:slice=2" (see passes/tir/partial_execution.py).
ATTR_PARTIAL = "tvmmcu.partial"
CHAIN_PREFIX = "fused_chain"


def _sub(expr: Any, remap: list[tuple[Any, Any]]) -> Any:
    for old, new in remap:
        if expr.same_as(old):
            return new
    return expr


def _slot(arg: Any, args: list[Any], chain: list[Any]) -> int:
    """Where a call's argument comes from: parameter ``k`` (>= 0) or chain binding ``k`` (-k - 1)."""
    for k, b in enumerate(chain):
        if arg.same_as(b.var):
            return -k - 1
    return next(k for k, a in enumerate(args) if a.same_as(arg))


def _retarget(value: Any, remap: list[tuple[Any, Any]], ty: Any) -> Any:
    if isinstance(value, _tvm.RelaxCall) and _tvm.op_name(value) == "relax.call_tir":
        return relax.call_tir(value.args[0], [_sub(a, remap) for a in value.args[1].fields], ty)
    if isinstance(value, _tvm.RelaxCall):
        return relax.Call(value.op, [_sub(a, remap) for a in value.args], value.attrs)
    if isinstance(value, relax.Tuple):
        return relax.Tuple([_sub(f, remap) for f in value.fields])
    if isinstance(value, relax.TupleGetItem):
        return relax.TupleGetItem(_sub(value.tuple_value, remap), value.index)
    return _sub(value, remap)


def group_chains(
    mod: tvm.IRModule, chains: list[tuple[list[str], str]], *, prefix: str = CHAIN_PREFIX
) -> tvm.IRModule:
    """Fuse each chain (binding names of ``main``, consecutive data flow) into ``<prefix><k>``."""
    if not chains:
        return mod
    main = mod["main"]
    bindings = [b for block in main.body.blocks for b in block.bindings]
    by_name = {_tvm.var_name(b.var): b for b in bindings}
    counts = Counter(_tvm.var_name(b.var) for b in bindings)
    repeated = {n for n, k in counts.items() if k > 1}
    bb = relax.BlockBuilder(
        tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}, attrs=mod.attrs)
    )
    plans = []
    made: dict[tuple[Any, ...], str] = {}  # identical chains share one function (as BlockBuilder would)
    for names, spec in chains:
        missing = [n for n in names if n not in by_name or n in repeated]
        if missing:
            # The execution graph renames bindings whose names repeat (lv1 -> lv1_1).
            raise ValueError(f"no binding named {', '.join(missing)} in main: the chain cannot be grouped")
        chain = [by_name[n] for n in names]
        inside = {b.var for b in chain}
        args: list[Any] = []
        for b in chain:
            for a in b.value.args[1].fields:
                if a not in inside and not any(a.same_as(x) for x in args):
                    args.append(a)
        key = (
            tuple(b.value.args[0].name_hint for b in chain),
            tuple(str(a.ty) for a in args),
            tuple(tuple(_slot(a, args, chain) for a in b.value.args[1].fields) for b in chain),
            spec,
        )
        if key not in made:
            fname = f"{prefix}{len(made)}"
            made[key] = fname
            params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(args)]
            with bb.function(fname, params, attrs={"Primitive": True}, private=True):
                with bb.dataflow():
                    remap: list[tuple[Any, Any]] = list(zip(args, params, strict=True))
                    for b in chain:
                        v = bb.emit(_retarget(b.value, remap, b.var.ty), name_hint=_tvm.var_name(b.var))
                        remap.append((b.var, v))
                    out = bb.emit_output(remap[-1][1])
                bb.emit_func_output(out)
        plans.append((made[key], chain, args, spec))
    grouped = bb.get()
    bb2 = relax.BlockBuilder(grouped)
    starts = {id(p[1][0]): p for p in plans}
    members = {b.var for p in plans for b in p[1]}
    attrs = dict(main.attrs) if main.attrs is not None else {}
    with bb2.function("main", list(main.params), attrs=attrs, private=False):
        with bb2.dataflow():
            remap = []
            for b in bindings:
                plan = starts.get(id(b))
                if plan is not None:
                    fname, chain, args, _ = plan
                    gv = grouped.get_global_var(fname)
                    v = bb2.emit(
                        relax.Call(gv, [_sub(a, remap) for a in args]), name_hint=_tvm.var_name(chain[-1].var)
                    )
                    remap.append((chain[-1].var, v))
                    continue
                if b.var in members:
                    continue
                v = bb2.emit(_retarget(b.value, remap, b.var.ty), name_hint=_tvm.var_name(b.var))
                remap.append((b.var, v))
            out = bb2.emit_output(_retarget(main.body.body, remap, None))
        bb2.emit_func_output(out)
    fused = relax.transform.DeadCodeElimination()(relax.transform.FuseTIR()(bb2.get()))
    for fname, _, _, spec in plans:
        gv = fused.get_global_var(fname)
        if ATTR_PARTIAL not in (fused[gv].attrs or {}):
            fused[gv] = fused[gv].with_attr(ATTR_PARTIAL, spec)
    return fused


@tvm.transform.module_pass(opt_level=0, name="GroupChains")
class GroupChains:
    """Fuse chains of operator calls into single PrimFuncs tagged for partial execution.

    Matches
        ``main`` after FuseOps/FuseTIR (one ``R.call_tir`` per operator) and the chains the scheduler
        chose: each a list of binding names whose outputs feed only the next binding of the chain.
    Rewrites to
        one call to ``fused_chain<k>`` per chain, a PrimFunc (by FuseTIR) computing the whole chain,
        carrying ``tvmmcu.partial`` (how PartialExecution will split it).
    Declines when
        no chain is given.
    Numerics
        bit-exact: the chain's blocks are the operators' own.
    Ordering
        after the graph pipeline (needs fused operators), before PartialExecution and lowering.
    """

    def __init__(self, chains: list[tuple[list[str], str]], *, prefix: str = CHAIN_PREFIX) -> None:
        self._chains = chains
        self._prefix = prefix

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return group_chains(mod, self._chains, prefix=self._prefix)
