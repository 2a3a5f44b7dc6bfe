"""BlockWeights: a weight tensor read only four output channels at a time is laid out for that."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import (
    Analyzer,
    PrimFunc,
    TensorLoad,
    detect_linear_equation,
    structural_map,
    structural_walk,
    tirx,
    tvm,
)
from tvm_mcu.passes.tir.dot_kernels import BLOCK_VALUES, DOT4, DOT4B, RUNS4, RUNS4B, SUM4, SUM4B
from tvm_mcu.passes.tir.each_function import extern_name, parameter_owners, rewrite_each

ATTR_DONE = "tvmmcu.weights_blocked"
# On the function: parameter position -> the stride S between output channels of the weights it holds,
# for each weight parameter laid out blocked (``block``).
ATTR_BLOCKED = "tvmmcu.blocked_weights"

# The four-channel kernel -> (its blocked form, where its weight pointer is among its arguments, how
# many stride arguments follow it: the channel stride, and for the runs kernel the taps' two).
_BLOCKED = {
    **{name: (DOT4B[key], 1, 1) for key, name in DOT4.items()},
    **{SUM4[k]: (SUM4B[k], 0, 1) for k in SUM4},
    **{name: (RUNS4B[key], 3, 3) for key, name in RUNS4.items()},
}


def _stride_and_count(call: Any) -> tuple[Any, Any] | None:
    """(channel stride, values read per channel or per tap) of a four-channel kernel call; None for a
    runs call whose taps do not follow each other in the weights (wsx = n, wsy = kw * n)."""
    name = extern_name(call)
    _, at, strides = _BLOCKED[name]
    args = call.args[1:]
    if strides == 1:
        return args[at + 1], args[at + 2]
    wsy, wsx, kw, n = args[at + 2], args[at + 3], args[at + 5], args[at + 6]
    if not all(isinstance(v, tirx.IntImm) for v in (wsy, wsx, kw, n)):
        return None
    if int(wsx) != int(n) or int(wsy) != int(kw) * int(n):
        return None
    return args[at + 1], n


CHANNELS = 4


def block(weights: np.ndarray, stride: int) -> np.ndarray:
    """``weights`` (O output channels of ``stride`` values each, O a multiple of 4, ``stride`` of 8)
    blocked: for each four channels and each 8 values of the reduction, the four channels' 8 values in
    turn. The same values, the same size."""
    flat = np.ascontiguousarray(weights).reshape(-1, stride)
    out = flat.shape[0]
    blocks = flat.reshape(out // CHANNELS, CHANNELS, stride // BLOCK_VALUES, BLOCK_VALUES)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3)).reshape(weights.shape)


def _weight_load(call: Any, at: int) -> Any | None:
    """``W[i]`` of the call's weight pointer ``&W[i]``, or None."""
    pointer = call.args[1 + at]
    if not (isinstance(pointer, tvm.ir.Call) and str(getattr(pointer.op, "name", "")) == "tirx.address_of"):
        return None
    load = pointer.args[0]
    return load if isinstance(load, TensorLoad) and len(load.indices) == 1 else None


def provably_multiple(expr: Any, k: int, ana: Any) -> bool:
    """Whether ``expr`` is provably a multiple of ``k``: by the analyzer, or term by term (a product
    with a constant multiple of ``k``, sums, differences, minima and maxima of multiples, casts), which
    covers the clamped bounds of a padded row."""
    if isinstance(expr, tirx.IntImm):
        return int(expr) % k == 0
    if isinstance(expr, tirx.Mul):
        return any(isinstance(f, tirx.IntImm) and int(f) % k == 0 for f in (expr.a, expr.b)) or (
            provably_multiple(expr.a, k, ana) or provably_multiple(expr.b, k, ana)
        )
    if isinstance(expr, tirx.Add | tirx.Sub | tirx.Min | tirx.Max):
        return provably_multiple(expr.a, k, ana) and provably_multiple(expr.b, k, ana)
    if isinstance(expr, tirx.Cast):
        return provably_multiple(expr.value, k, ana)
    return bool(ana.can_prove(tirx.floormod(expr, tirx.IntImm(str(expr.ty), k)) == 0))


def _blockable(func: PrimFunc, owners: dict[Any, Any]) -> dict[Any, int]:
    """The parameters every read of which is a four-channel kernel's weight pointer at a multiple of 8
    values into a channel, over a multiple of 8 values, with one channel stride S (a multiple of 8), and
    whose flat view holds a multiple of 4 channels: parameter -> S."""
    ana = Analyzer()
    strides: dict[Any, set[int]] = {}
    bad: set[Any] = set()
    by_kernels: dict[Any, int] = {}
    reads: dict[Any, int] = {}
    sizes: dict[Any, int] = {}

    def count(load: Any) -> None:
        owner = owners.get(load.source, load.source)
        reads[owner] = reads.get(owner, 0) + 1
        shape = load.source.shape
        if len(shape) == 1 and isinstance(shape[0], tirx.IntImm):
            sizes[owner] = int(shape[0])

    def visit(call: Any) -> None:
        name = extern_name(call)
        if name not in _BLOCKED:
            return
        at = _BLOCKED[name][1]
        load = _weight_load(call, at)
        if load is None:
            return
        owner = owners.get(load.source, load.source)
        by_kernels[owner] = by_kernels.get(owner, 0) + 1
        found = _stride_and_count(call)
        stride, n = found if found is not None else (None, None)
        if (
            found is not None
            and isinstance(stride, tirx.IntImm)
            and int(stride) % BLOCK_VALUES == 0
            and provably_multiple(load.indices[0], BLOCK_VALUES, ana)
            and provably_multiple(n, BLOCK_VALUES, ana)
        ):
            strides.setdefault(owner, set()).add(int(stride))
        else:
            bad.add(owner)

    structural_walk(func.body, (TensorLoad, count))
    structural_walk(func.body, (tvm.ir.Call, visit))
    out: dict[Any, int] = {}
    for owner, found in strides.items():
        # Read elsewhere too (the channels past the last block, another kernel), or strides differ.
        if owner in bad or len(found) != 1 or reads.get(owner, 0) != by_kernels[owner]:
            continue
        (stride,) = found
        if sizes.get(owner, 0) % (CHANNELS * stride) == 0:
            out[owner] = stride
    return out


def _moved(index: Any, stride: int) -> Any:
    """The blocked position of flat weight index ``i = c * S + r`` (``c`` a multiple of 4, ``r < S``):
    ``c * S + 4 * r``. Where ``i`` is linear in its variables, the terms whose coefficients are
    multiples of ``4 * S`` make ``c * S`` and the others ``r``; else ``i + 3 * (i mod S)``."""
    dtype = str(index.ty)
    found: list[Any] = []
    structural_walk(
        index, (tirx.Var, lambda v: found.append(v) if not any(v.same_as(f) for f in found) else None)
    )
    coeffs = detect_linear_equation(index, found) if found else [index]
    whole = CHANNELS * stride
    if len(coeffs) == len(found) + 1 and all(isinstance(c, tirx.IntImm) for c in coeffs):
        channel: Any = tirx.IntImm(dtype, 0)
        value: Any = tirx.IntImm(dtype, 0)
        for var, c in zip(found, coeffs[:-1], strict=True):
            if int(c) % whole == 0:
                channel = channel + c * var
            else:
                value = value + c * var
        blocks, rest = divmod(int(coeffs[-1]), whole)
        channel = channel + tirx.IntImm(dtype, blocks * whole)
        value = value + tirx.IntImm(dtype, rest)
        return Analyzer().simplify(channel + value * tirx.IntImm(dtype, CHANNELS))
    s = tirx.IntImm(dtype, stride)
    return Analyzer().simplify(index + tirx.floormod(index, s) * tirx.IntImm(dtype, CHANNELS - 1))


def block_weights(func: PrimFunc) -> PrimFunc:
    owners = parameter_owners(func)
    position = {p: k for k, p in enumerate(func.params)}
    chosen = {p: s for p, s in _blockable(func, owners).items() if p in position}
    if not chosen:
        return func.with_attr(ATTR_DONE, True)

    def rewrite(call: Any) -> Any:
        name = extern_name(call)
        if name not in _BLOCKED:
            return call
        blocked, at, strides = _BLOCKED[name]
        load = _weight_load(call, at)
        if load is None or owners.get(load.source, load.source) not in chosen:
            return call
        owner = owners.get(load.source, load.source)
        moved = _moved(load.indices[0], chosen[owner])
        args = list(call.args[1:])
        args[at] = tirx.address_of(tirx.BufferLoad(load.source, [moved]))
        del args[at + 1 : at + 1 + strides]  # the channel stride (and the taps' strides)
        return tirx.call_extern(str(call.ty), blocked, *args)

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    layout = {position[p]: s for p, s in chosen.items()}
    return func.with_body(body).with_attr(ATTR_DONE, True).with_attr(ATTR_BLOCKED, layout)


@tvm.transform.module_pass(opt_level=0, name="BlockWeights")
class BlockWeights:
    """Lay out the weights the four-channel kernels read so that one pointer walks all four channels.

    Matches
        a weight parameter (in the function's ``buffer_map``) of ``O x S`` values, ``O`` a multiple of
        4, whose every read is the weight pointer ``&W[i]`` of a ``tvmmcu_dot4_*``,
        ``tvmmcu_dot4_sum_s8`` or ``tvmmcu_dot4_runs_*`` call (BlockOutputChannels') with channel stride
        ``S`` (a multiple of 8, the same in every call), ``i`` and the count (the run length) provably
        multiples of 8, a runs call's taps following each other in the weights (``wsx = n``,
        ``wsy = kw * n``).
    Rewrites to
        ``tvmmcu_dot4b_*(x, &W[i + 3 * (i mod S)], n, acc)`` (``tvmmcu_dot4b_sum_s8`` and
        ``tvmmcu_dot4b_runs_*`` likewise, the stride arguments gone) and records
        ``tvmmcu.blocked_weights = {parameter position: S}``: the compiler stores that constant blocked
        (:func:`block`), for each four channels and each 8 values of the reduction the four channels'
        8 values in turn, so channel ``c``'s value ``r`` sits at ``c * S + 4 * r`` for ``c`` a multiple
        of 4.
    Declines when
        the weights are read anywhere else (the channels past the last block of four, another kernel),
        with several strides, at an offset or over a count not provably a multiple of 8, or ``O`` is
        not a multiple of 4; or the function already carries ``tvmmcu.weights_blocked``.
    Numerics
        unchanged: the same products in the same order per channel.
    Ordering
        after BlockOutputChannels (it rewrites that pass's calls), before SplitBorders (whose copies of
        a loop must share one layout) and MakeUnpackedAPI (parameter positions are the step's).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, block_weights)
