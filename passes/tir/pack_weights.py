"""PackWeights: blocked weights whose values fit int4 stored two per byte, unpacked inside the kernels."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import Analyzer, PrimFunc, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, block
from tvm_mcu.passes.tir.dot_kernels import DOT4B, DOT4Q, RUNS4B, RUNS4Q, SUM4B, SUM4Q
from tvm_mcu.passes.tir.each_function import (
    extern_name,
    parameter_owners,
    pointer_load,
    read_only_by_kernels,
    rewrite_each,
)
from tvm_mcu.passes.tir.nibble_kernels import NIBBLE_AT

ATTR_DONE = "tvmmcu.weights_packed"
# On the function, set by the compiler: positions of the weight parameters whose every value, in every
# step calling the function, lies in [INT4_MIN, INT4_MAX].
ATTR_INT4 = "tvmmcu.int4_weights"
# On the function: parameter position -> channel stride S of the blocked weights it holds packed
# (``pack``); those positions leave ``tvmmcu.blocked_weights``.
ATTR_PACKED = "tvmmcu.nibble_weights"

INT4_MIN, INT4_MAX = -8, 7

# The blocked kernel -> (its packed form, where its weight pointer is among its arguments).
_PACKED = {
    **{DOT4B[k]: (DOT4Q[k], 1) for k in DOT4B},
    **{SUM4B[k]: (SUM4Q[k], 0) for k in SUM4B},
    **{RUNS4B[k]: (RUNS4Q[k], 3) for k in RUNS4B},
}


def fits_int4(values: np.ndarray) -> bool:
    """Whether ``values`` are integers (int8 constants, as imported) all in [-8, 7]."""
    return (
        values.dtype == np.int8
        and values.size > 0
        and int(values.min()) >= INT4_MIN
        and int(values.max()) <= INT4_MAX
    )


def pack(weights: np.ndarray, stride: int) -> np.ndarray:
    """``weights`` (int8, every value in [-8, 7]) blocked (:func:`~tvm_mcu.passes.tir.block_weights.
    block`), each 8 values of a channel one little-endian word of nibbles, value ``r`` in nibble
    ``NIBBLE_AT[r]``: ``tvmmcu_dot4q_*``'s layout, flat uint8, half the bytes."""
    if not fits_int4(weights):
        raise ValueError("pack: the weights are not int8 values in [-8, 7]")
    # NIBBLE_AT is an involution: nibble q holds value NIBBLE_AT[q].
    nibbles = block(weights, stride).reshape(-1, 8)[:, NIBBLE_AT].astype(np.uint8) & 0xF
    return np.ascontiguousarray(nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).reshape(-1)


def _has_division(expr: Any) -> bool:
    found: list[Any] = []
    structural_walk(expr, (tirx.FloorDiv, found.append))
    return bool(found)


def pack_weights(func: PrimFunc) -> PrimFunc:
    found = func.attrs if func.attrs is not None else {}
    blocked = {int(k): int(v) for k, v in (found.get(ATTR_BLOCKED) or {}).items()}
    wanted = {int(k) for k in (found.get(ATTR_INT4) or [])}
    chosen = read_only_by_kernels(func, blocked.keys() & wanted, {n: at for n, (_, at) in _PACKED.items()})
    if not chosen:
        return func.with_attr(ATTR_DONE, True)
    owners = parameter_owners(func)
    ana = Analyzer()

    def rewrite(call: Any) -> Any:
        name = extern_name(call)
        if name not in _PACKED:
            return call
        packed, at = _PACKED[name]
        args = list(call.args[1:])
        load = pointer_load(args[at])
        if load is None or owners.get(load.source, load.source) not in chosen:
            return call
        index = load.indices[0]
        # The parameter keeps its int8 type: blocked value i (a multiple of 8) is in byte i / 2. The
        # lowering is done (LowerIntrin ran): a division left unsimplified is written as the shift it
        # is for an offset into the weights (i >= 0).
        two = tirx.IntImm(str(index.ty), 2)
        half = ana.simplify(tirx.floordiv(index, two))
        if _has_division(half):
            half = tirx.shift_right(index, tirx.IntImm(str(index.ty), 1))
        args[at] = tirx.address_of(tirx.BufferLoad(load.source, [half]))
        return tirx.call_extern(str(call.ty), packed, *args)

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    moved = {k: blocked[k] for k in chosen.values()}
    rest = {k: s for k, s in blocked.items() if k not in moved}
    out = func.with_body(body).with_attr(ATTR_DONE, True).with_attr(ATTR_PACKED, moved)
    return out.with_attr(ATTR_BLOCKED, rest)


@tvm.transform.module_pass(opt_level=0, name="PackWeights")
class PackWeights:
    """Store blocked weights whose every value lies in [-8, 7] as int4, two per byte, for half their flash.

    Matches
        functions whose weights BlockWeights blocked (``tvmmcu.blocked_weights``) and whose parameters
        the compiler marked int4 (``tvmmcu.int4_weights``: every value, in every step calling the
        function, in [-8, 7]): the ``tvmmcu_dot4b_*``, ``tvmmcu_dot4b_sum_s8`` and
        ``tvmmcu_dot4b_runs_*`` calls reading those parameters, their only readers.
    Rewrites to
        ``tvmmcu_dot4q_*`` / ``tvmmcu_dot4q_sum_s4`` / ``tvmmcu_dot4q_runs_*`` with the weight pointer
        ``&W[i / 2]`` (the parameter stays an int8 pointer; the 8 values of a channel from blocked value
        ``i``, a multiple of 8, are the word at byte ``i / 2``), and moves those positions from
        ``tvmmcu.blocked_weights`` to ``tvmmcu.nibble_weights``: the compiler stores those constants
        :func:`pack`-ed.
    Declines when
        nothing is blocked, no blocked parameter is marked int4, a marked parameter is read by anything
        but a blocked kernel's weight pointer (it stays blocked int8), or the function already carries
        ``tvmmcu.weights_packed``.
    Numerics
        bit-exact: the same int8 products and sums; the DSP kernels sum products scaled by 4096 over at
        most 256 values (below 2**31, no overflow) and shift the sum back exactly, then wrap modulo
        2**32 as the C loop does (``nibble_kernels``).
    Ordering
        after BlockWeights (its attribute and calls), on the chosen schedule's lowered operators, as
        WidenWeights; a parameter is packed or widened, never both: WidenWeights widens what is left in
        ``tvmmcu.blocked_weights``. It changes no workspace, scratch or schedule: flash, and a few
        instructions per call (the flush of the scaled sums).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, pack_weights)
