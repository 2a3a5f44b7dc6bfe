"""CompressWeights: blocked int8 weights stored Golomb-Rice coded, a block of four channels decoded into a
small scratch buffer before the kernels read it, the loop over blocks moved outside the pixels' loops
where that is safe (one decode per block per visit of the operator)."""

from __future__ import annotations

from typing import Any

from tvm_mcu._tvm import (
    Analyzer,
    PrimFunc,
    TensorLoad,
    detect_linear_equation,
    structural_equal,
    structural_map,
    structural_walk,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, CHANNELS
from tvm_mcu.passes.tir.dot_kernels import DOT, DOT4B, RUNS, RUNS4B, STAGE, SUM, SUM4B, WINDOW
from tvm_mcu.passes.tir.each_function import (
    extern_name,
    parameter_owners,
    pointer_load,
    read_only_by_kernels,
    rewrite_each,
    uses,
)
from tvm_mcu.passes.tir.rice_kernels import SCRATCH_TAG_BYTES

ATTR_DONE = "tvmmcu.weights_compressed"
# On the function, set by the compiler: positions of the weight parameters to store compressed.
ATTR_WANTED = "tvmmcu.compress_weights"
# On the function: parameter position -> channel stride S of the blocked weights it holds compressed, in
# chunks of 4 * S values (``rice_kernels.encode``); those positions leave ``tvmmcu.blocked_weights``.
ATTR_COMPRESSED = "tvmmcu.compressed_weights"

DECODE = "tvmmcu_rice_decode"
RESET = "tvmmcu_rice_reset"

# The blocked kernel -> where its weight pointer is among its arguments.
_WEIGHT_AT = {
    **{n: 1 for n in DOT4B.values()},
    **{n: 0 for n in SUM4B.values()},
    **{n: 3 for n in RUNS4B.values()},
}


def _split(index: Any, chunk: int, ana: Any) -> tuple[Any, Any]:
    """(chunk number, offset in the chunk) of blocked value ``index``: the terms whose coefficients are
    multiples of ``chunk`` and the others where the offset provably lies in [0, chunk), else
    ``index // chunk`` and ``index % chunk``."""
    dtype = str(index.ty)
    found: list[Any] = []
    structural_walk(
        index, (tirx.Var, lambda v: found.append(v) if not any(v.same_as(f) for f in found) else None)
    )
    coeffs = detect_linear_equation(index, found) if found else [index]
    size = tirx.IntImm(dtype, chunk)
    if len(coeffs) == len(found) + 1 and all(isinstance(c, tirx.IntImm) for c in coeffs):
        number: Any = tirx.IntImm(dtype, 0)
        offset: Any = tirx.IntImm(dtype, 0)
        for var, c in zip(found, coeffs[:-1], strict=True):
            if int(c) % chunk == 0:
                number = number + tirx.IntImm(dtype, int(c) // chunk) * var
            else:
                offset = offset + c * var
        blocks, rest = divmod(int(coeffs[-1]), chunk)
        number = ana.simplify(number + tirx.IntImm(dtype, blocks))
        offset = ana.simplify(offset + tirx.IntImm(dtype, rest))
        if ana.can_prove(offset >= 0) and ana.can_prove(offset < size):
            return number, offset
    return ana.simplify(tirx.floordiv(index, size)), ana.simplify(tirx.floormod(index, size))


def _bind_loops(func: PrimFunc, ana: Any) -> None:
    """Tell the analyzer each loop variable's range (loop variables are distinct: SplitBorders' copies
    take fresh ones); one bound twice is left unbound."""
    seen: dict[Any, int] = {}

    def count(loop: Any) -> None:
        seen[loop.loop_var] = seen.get(loop.loop_var, 0) + 1

    structural_walk(func.body, (tirx.For, count))

    def bind(loop: Any) -> None:
        if seen[loop.loop_var] == 1:
            ana.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))

    structural_walk(func.body, (tirx.For, bind))


# Extern calls the interchange knows: position of the argument each writes through (the others are read).
_WRITES_AT = {
    **{n: -1 for n in _WEIGHT_AT},  # the blocked kernels' accumulators
    STAGE: 0,  # StageWindows' window
}
# Kernels that read through their pointers and return a value (the single-channel dot products).
_READ_ONLY = frozenset(n for table in (DOT, SUM, RUNS, WINDOW) for n in table.values())
_IN_PLACE = "tvmmcu.in_place"


def _memory(buf: Any, owners: dict[Any, Any]) -> Any:
    """What identifies ``buf``'s memory: the parameter a flat view declares it over, else itself."""
    return owners.get(buf, buf)


def _items(stmt: Any) -> list[Any]:
    return list(stmt.seq) if isinstance(stmt, tirx.SeqStmt) else [stmt]


def _is_for(stmt: Any) -> bool:
    return isinstance(stmt, tirx.For)


def _plain_loop(loop: Any) -> bool:
    return loop.kind == tirx.ForKind.SERIAL and loop.thread_binding is None and loop.step is None


def _defined(stmt: Any) -> list[Any]:
    found: list[Any] = []
    structural_walk(
        stmt,
        [(tirx.For, lambda f: found.append(f.loop_var)), (tirx.Bind, lambda b: found.append(b.var))],
    )
    return found


def _injective(index: Any, extents: dict[Any, Any], ana: Any) -> bool:
    """Whether ``index`` (flat) takes a different value in each iteration of the loops ``extents`` (loop
    variable -> extent): linear in them with constant coefficients that nest as mixed-radix digits (each
    larger than the span of the smaller ones), a variable with a coefficient 0 iterating once."""
    loop_vars = list(extents)
    coeffs = detect_linear_equation(index, loop_vars) if loop_vars else []
    if len(coeffs) != len(loop_vars) + 1:
        return False
    digits: list[tuple[int, int | None]] = []
    for var, c in zip(loop_vars, coeffs[:-1], strict=True):
        c = ana.simplify(c)
        extent = ana.simplify(extents[var])
        n = int(extent) if isinstance(extent, tirx.IntImm) else None
        if not isinstance(c, tirx.IntImm):
            return False
        if int(c) == 0:
            if n != 1:
                return False
            continue
        digits.append((abs(int(c)), n))
    digits.sort(key=lambda d: d[0])
    span = 0
    for c, n in digits:
        if c <= span:
            return False
        if n is None:
            # A trip count read at run time: only the largest digit may have one.
            if (c, n) != digits[-1]:
                return False
            continue
        span += c * (n - 1)
    return True


def _accesses(stmt: Any, owners: dict[Any, Any]) -> tuple[set[Any], dict[Any, list[Any]], set[Any], bool]:
    """(memories read, memory -> the stores into it, memories written through kernels' pointers, whether
    every extern call taking a pointer is a kernel whose written pointer is known) of ``stmt``."""
    reads: set[Any] = set()
    stores: dict[Any, list[Any]] = {}
    pointed: set[Any] = set()
    known = [True]

    def on_call(call: Any) -> None:
        name = extern_name(call)
        if not name or not any(pointer_load(a) is not None for a in call.args[1:]):
            return
        if name in _WRITES_AT:
            load = pointer_load(call.args[1 + _WRITES_AT[name] % (len(call.args) - 1)])
            if load is None:
                known[0] = False
            else:
                pointed.add(_memory(load.source, owners))
        elif name not in _READ_ONLY:
            known[0] = False

    structural_walk(
        stmt,
        [
            (TensorLoad, lambda ld: reads.add(_memory(ld.source, owners))),
            (tirx.BufferStore, lambda st: stores.setdefault(_memory(st.buffer, owners), []).append(st)),
            (tvm.ir.Call, on_call),
        ],
    )
    return reads, stores, pointed, known[0]


def _around(region: Any, store: Any) -> dict[Any, Any]:
    """Loop variable -> extent of the loops of ``region`` (itself included) around ``store``."""
    out: dict[Any, Any] = {}

    def visit(stmt: Any, loops: list[Any]) -> bool:
        if stmt.same_as(store):
            out.update({lp.loop_var: lp.extent for lp in loops})
            return True
        inner = [*loops, stmt] if isinstance(stmt, tirx.For) else loops
        return any(visit(child, inner) for child in _children(stmt))

    visit(region, [])
    return out


def _independent(region: Any, staging: list[Any], block: Any, owners: dict[Any, Any], ana: Any) -> bool:
    """Whether the iterations of loop ``region`` (body: ``staging`` statements, then ``block``, the loop
    over blocks of channels) may run in any order, ``staging`` again before each block: the staging
    writes only buffers it allocates, which ``block`` does not write; ``block``'s body writes through
    pointers only buffers it allocates, and stores only into those and into buffers nothing in the
    region reads, each from one store whose index differs in every iteration of the region's loops;
    every extern call taking a pointer is a kernel whose written pointer is known."""
    private: set[Any] = set()
    staged: set[Any] = set()
    structural_walk(block.body, (tirx.AllocBuffer, lambda a: private.add(_memory(a.buffer, owners))))
    for st in staging:
        structural_walk(st, (tirx.AllocBuffer, lambda a: staged.add(_memory(a.buffer, owners))))
    reads, stores, pointed, known = _accesses(region.body, owners)
    whiles: list[Any] = []
    structural_walk(region.body, (tirx.While, whiles.append))
    if not known or whiles:  # a while loop's iterations are not counted by the store's index
        return False
    staging_stores: set[Any] = set()
    staging_pointed: set[Any] = set()
    for st in staging:
        _, s_stores, s_pointed, _ = _accesses(st, owners)
        staging_stores |= set(s_stores)
        staging_pointed |= s_pointed
    _, b_stores, b_pointed, _ = _accesses(block.body, owners)
    if not (staging_stores | staging_pointed) <= staged or not b_pointed <= private:
        return False
    if set(b_stores) & staged:
        return False
    lets: list[Any] = []
    structural_walk(region.body, (tirx.Bind, lambda b: lets.append(b.var)))
    for m in set(stores) - private - staged:
        if m in reads or m in pointed or len(stores[m]) != 1:
            return False
        (store,) = stores[m]
        index = store.indices[0] if len(store.indices) == 1 else None
        if (
            index is None
            or any(uses(index, v) for v in lets)
            or not _injective(index, _around(region, store), ana)
        ):
            return False
    return True


def _interchange(
    body: Any, blocks: dict[Any, list[Any]], owners: dict[Any, Any], ana: Any
) -> tuple[Any, set[Any]]:
    """``body`` with each loop over blocks of channels (``blocks``: its variable -> the variables its
    chunk numbers read) moved outside the loops around it while their iterations are independent
    (:func:`_independent`); the variables of the loops moved."""
    moved: set[Any] = set()

    def block_of(stmt: Any) -> tuple[list[Any], Any] | None:
        """(staging, block loop) when ``stmt`` is a block loop, perhaps after staging statements."""
        items = _items(stmt)
        last = items[-1]
        if not (_is_for(last) and last.loop_var in blocks and _plain_loop(last)):
            return None
        found: list[Any] = []
        for s in items[:-1]:
            structural_walk(s, (tirx.For, lambda f: found.append(f) if f.loop_var in blocks else None))
        if found:
            return None
        return items[:-1], last

    def hoist(loop: Any) -> Any:
        if not _plain_loop(loop) or loop.annotations:
            return loop
        found = block_of(loop.body)
        if found is None:
            return loop
        staging, block = found
        inside = [loop.loop_var, *_defined(tirx.SeqStmt(staging) if staging else tirx.Evaluate(0))]
        bounds = [block.min, block.extent]
        if any(uses(e, v) for e in bounds for v in inside):
            return loop
        if any(v.same_as(loop.loop_var) for v in blocks[block.loop_var]):
            return loop
        reads: list[Any] = []
        for e in bounds:
            structural_walk(e, (TensorLoad, reads.append))
        if reads or not _independent(loop, staging, block, owners, ana):
            return loop
        inner = tirx.For(
            loop.loop_var,
            loop.min,
            loop.extent,
            loop.kind,
            tirx.SeqStmt([*staging, *_items(block.body)]) if staging else block.body,
            loop.thread_binding,
            loop.annotations,
        )
        moved.add(block.loop_var)
        return tirx.For(
            block.loop_var,
            block.min,
            block.extent,
            block.kind,
            inner,
            block.thread_binding,
            block.annotations,
        )

    return structural_map(body, (tirx.For, hoist)), moved


def _children(stmt: Any) -> list[Any]:
    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, tirx.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    body = getattr(stmt, "body", None)
    return [body] if isinstance(body, tirx.Stmt) else []


class _Calls:
    """The blocked kernel calls reading the chosen parameters, each with its chunk number and the loop
    over blocks of channels it belongs to: the innermost loop around it whose variable the number reads
    (None: a number no enclosing loop moves)."""

    def __init__(
        self, body: Any, chosen: dict[Any, int], sizes: dict[Any, int], owners: dict[Any, Any], ana: Any
    ):
        # (call, owner, the buffer it reads the weights through, chunk number, offset in it, block loop var)
        self.found: list[tuple[Any, Any, Any, Any, Any, Any]] = []
        self._chosen, self._sizes, self._owners, self._ana = chosen, sizes, owners, ana
        self._visit(body, [])

    def of(self, call: Any) -> tuple[Any, Any, Any, Any, Any] | None:
        return next(((o, s, n, f, b) for c, o, s, n, f, b in self.found if c.same_as(call)), None)

    def blocks(self) -> dict[Any, list[Any]]:
        """Block loop variable -> the variables its calls' chunk numbers read."""
        out: dict[Any, list[Any]] = {}
        for _, _, _, number, _, var in self.found:
            if var is not None:
                out.setdefault(var, []).extend(_defined_in(number))
        return out

    def _visit(self, stmt: Any, loops: list[Any]) -> None:
        if isinstance(stmt, tirx.Evaluate):
            call = stmt.value
            name = extern_name(call)
            if name not in _WEIGHT_AT:
                return
            load = pointer_load(call.args[1 + _WEIGHT_AT[name]])
            owner = self._owners.get(load.source, load.source) if load is not None else None
            if owner not in self._chosen:
                return
            number, offset = _split(load.indices[0], self._sizes[owner], self._ana)
            var = next((lp for lp in reversed(loops) if uses(number, lp)), None)
            self.found.append((call, owner, load.source, number, offset, var))
            return
        inner = [*loops, stmt.loop_var] if isinstance(stmt, tirx.For) else loops
        for child in _children(stmt):
            self._visit(child, inner)


def _lets(stmt: Any) -> list[Any]:
    found: list[Any] = []
    structural_walk(stmt, (tirx.Bind, lambda b: found.append(b.var)))
    return found


def _defined_in(expr: Any) -> list[Any]:
    found: list[Any] = []
    structural_walk(
        expr, (tirx.Var, lambda v: found.append(v) if not any(v.same_as(f) for f in found) else None)
    )
    return found


def compress_weights(func: PrimFunc) -> PrimFunc:
    found = func.attrs if func.attrs is not None else {}
    blocked = {int(k): int(v) for k, v in (found.get(ATTR_BLOCKED) or {}).items()}
    wanted = {int(k) for k in (found.get(ATTR_WANTED) or [])}
    chosen = read_only_by_kernels(func, blocked.keys() & wanted, _WEIGHT_AT)
    if not chosen:
        return func.with_attr(ATTR_DONE, True)
    owners = parameter_owners(func)
    ana = Analyzer()
    _bind_loops(func, ana)
    scratch: dict[Any, Any] = {}
    sizes: dict[Any, int] = {}
    for p, k in sorted(chosen.items(), key=lambda item: item[1]):
        sizes[p] = CHANNELS * blocked[k]
        scratch[p] = tirx.decl_buffer(
            (SCRATCH_TAG_BYTES + sizes[p],), "int8", name=f"{p.name}_chunk", layout=None
        )
    body = func.body
    if _IN_PLACE not in found:
        body, _ = _interchange(body, _Calls(body, chosen, sizes, owners, ana).blocks(), owners, ana)
    calls = _Calls(body, chosen, sizes, owners, ana)
    # Block loop -> its decodes, placed first in its body: one per parameter whose calls in the loop all
    # read one chunk number (else each call decodes before it).
    per_loop: dict[Any, dict[Any, list[tuple[Any, Any]]]] = {}
    for _, owner, source, number, _, var in calls.found:
        if var is not None and not any(uses(number, v) for v in _lets(body)):
            per_loop.setdefault(var, {}).setdefault(owner, []).append((source, number))
    at_loop = {
        var: {o: ns[0] for o, ns in by.items() if all(structural_equal(n, ns[0][1]) for _, n in ns)}
        for var, by in per_loop.items()
    }

    def at(buf: Any, i: Any) -> Any:
        return tirx.address_of(tirx.BufferLoad(buf, [i]))

    def decode(owner: Any, source: Any, number: Any) -> Any:
        i32 = str(number.ty)
        return tirx.Evaluate(
            tirx.call_extern(
                "int32",
                DECODE,
                at(source, tirx.IntImm(i32, 0)),
                number,
                tirx.IntImm("int32", sizes[owner]),
                at(scratch[owner], tirx.IntImm(i32, 0)),
            )
        )

    def rewrite_call(stmt: Any) -> Any:
        info = calls.of(stmt.value)
        if info is None:
            return stmt
        owner, source, number, offset, var = info
        call = stmt.value
        name = extern_name(call)
        args = list(call.args[1:])
        i32 = str(offset.ty)
        args[_WEIGHT_AT[name]] = at(
            scratch[owner], ana.simplify(offset + tirx.IntImm(i32, SCRATCH_TAG_BYTES))
        )
        new = tirx.Evaluate(tirx.call_extern(str(call.ty), name, *args))
        if var is not None and owner in at_loop.get(var, {}):
            return new
        return tirx.SeqStmt([decode(owner, source, number), new])

    def rewrite_loop(loop: Any) -> Any:
        decodes = at_loop.get(loop.loop_var)
        if not decodes:
            return loop
        first = [
            decode(o, source, n)
            for o, (source, n) in sorted(decodes.items(), key=lambda item: chosen[item[0]])
        ]
        return tirx.For(
            loop.loop_var,
            loop.min,
            loop.extent,
            loop.kind,
            tirx.SeqStmt([*first, *_items(loop.body)]),
            loop.thread_binding,
            loop.annotations,
        )

    body = structural_map(body, [(tirx.Evaluate, rewrite_call), (tirx.For, rewrite_loop)])
    zero = tirx.IntImm("int32", 0)
    prologue = [
        s
        for buf in scratch.values()
        for s in (tirx.AllocBuffer(buf), tirx.Evaluate(tirx.call_extern("int32", RESET, at(buf, zero))))
    ]
    moved = {k: blocked[k] for k in chosen.values()}
    rest = {k: s for k, s in blocked.items() if k not in moved}
    out = func.with_body(tirx.SeqStmt([*prologue, body])).with_attr(ATTR_DONE, True)
    return out.with_attr(ATTR_COMPRESSED, moved).with_attr(ATTR_BLOCKED, rest)


@tvm.transform.module_pass(opt_level=0, name="CompressWeights")
class CompressWeights:
    """Store blocked int8 weights Golomb-Rice coded, one chunk per block of four output channels, for
    less flash where it is the wall: each chunk is decoded into a small scratch buffer before the kernels
    read it, as an NPU's weight decoder does, once per block of channels per visit of the operator where
    the loop over blocks can be moved outside the loops over pixels.

    Matches
        functions whose weights BlockWeights blocked (``tvmmcu.blocked_weights``, stride ``S``) and whose
        parameters the compiler marked (``tvmmcu.compress_weights``): the ``tvmmcu_dot4b_*``,
        ``tvmmcu_dot4b_sum_s8`` and ``tvmmcu_dot4b_runs_*`` calls reading those parameters, their only
        readers. A call reads ``4 * S`` consecutive blocked values at most (four channels), one chunk;
        its block loop is the innermost loop around it whose variable its chunk number reads.
    Rewrites to
        first, a convolution's nest ``for pixel: [staging;] for block: body`` (any depth of pixel loops)
        to ``for block: for pixel: [staging;] body``, loop by loop outward while the move is safe (see
        Declines): the staging (StageWindows' window copy) then runs once per pixel and block, a
        copy of ``kh * kw`` values where a decode costs ~31 instructions per byte of ``4 S``. Then a
        scratch buffer ``W_chunk`` of ``8 + 4 * S`` bytes per parameter (``tvmmcu_rice_reset`` at the
        function's start: it holds no chunk) and ``tvmmcu_rice_decode(&W[0], i / (4 S), 4 S,
        &W_chunk[0])`` first in the body of each block loop (before each call instead where the calls
        of one loop read different chunks of a parameter, or the number reads a variable bound inside
        the loop, or no loop moves it); the calls read ``&W_chunk[8 + i % (4 S)]`` instead of
        ``&W[i]`` (a decode whose chunk the scratch holds costs a compare). Those positions move from
        ``tvmmcu.blocked_weights`` to ``tvmmcu.compressed_weights``: the compiler stores those
        constants :func:`~tvm_mcu.passes.tir.rice_kernels.encode`-d. The scratch is operator scratch:
        HoistScratchToWorkspace places it in the memory plan, so every schedule (row bands, channel
        slices, in place) counts it in SRAM.
    Declines when
        nothing is blocked, no blocked parameter is marked, a marked parameter is read by anything but a
        blocked kernel's weight pointer (it stays as it is), or the function already carries
        ``tvmmcu.weights_compressed``. The block loop stays inside a pixel loop (each visit of that loop
        decodes every chunk again) when the function runs in place (``tvmmcu.in_place``: its output may
        be its input's memory), the pixel loop is not a plain serial loop without annotations (a row
        band's), its body holds more than staging before the block loop (anything after it, another
        block loop, stores into buffers it does not allocate: a row band's line buffers and row
        counters), the block loop's bounds or chunk number read the pixel loop, or the iterations are
        not provably independent: the block body writes the staging's buffers, stores into a buffer
        the nest reads (accumulation, line buffers) or from more than one store, or at an index that
        is not an injective linear function of the loops around it (mixed-radix coefficients), or an
        extern call takes a pointer whose writes are not known (only the blocked kernels' accumulator,
        the staging's window and the read-only dot products are). Under row bands the loop moves
        outside the pixels of one row: a decode per block per row.
    Numerics
        bit-exact: the decoder is lossless, the kernels read the same blocked values, and the moved
        iterations are independent, so their order changes nothing. Instructions: the plain kernels'
        plus a decode of each chunk per visit of the block loop (~31 instructions per stored byte); a
        staged window copied once per pixel and block instead of once per pixel.
    Ordering
        after BlockWeights and SplitBorders (the calls, and all their copies), before StorageRewrite and
        HoistScratchToWorkspace (which place the scratch) and before PackWeights and WidenWeights (a
        compressed parameter is neither packed nor widened).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, compress_weights)
