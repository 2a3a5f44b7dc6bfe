"""PackWeights: blocked weights whose values fit int4 stored two per byte (int2: four per byte), unpacked
inside the kernels."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import Analyzer, PrimFunc, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, CHANNELS, block, provably_multiple
from tvm_mcu.passes.tir.crumb_kernels import CRUMB_AT
from tvm_mcu.passes.tir.dot_kernels import (
    BLOCK_VALUES,
    DOT4B,
    DOT4C,
    DOT4Q,
    RUNS4B,
    RUNS4C,
    RUNS4Q,
    SUM4B,
    SUM4C,
    SUM4Q,
)
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
# The same for int2: positions whose every value lies in [INT2_MIN, INT2_MAX] (a subset of ATTR_INT4's),
# and those stored four per byte (``pack2``).
ATTR_INT2 = "tvmmcu.int2_weights"
ATTR_CRUMBS = "tvmmcu.crumb_weights"

INT4_MIN, INT4_MAX = -8, 7
INT2_MIN, INT2_MAX = -2, 1

# The blocked kernel -> (its packed form, where its weight pointer is among its arguments).
_PACKED = {
    **{DOT4B[k]: (DOT4Q[k], 1) for k in DOT4B},
    **{SUM4B[k]: (SUM4Q[k], 0) for k in SUM4B},
    **{RUNS4B[k]: (RUNS4Q[k], 3) for k in RUNS4B},
}
_CRUMBS = {
    **{DOT4B[k]: DOT4C[k] for k in DOT4B},
    **{SUM4B[k]: SUM4C[k] for k in SUM4B},
    **{RUNS4B[k]: RUNS4C[k] for k in RUNS4B},
}
# Values of a block (four channels' BLOCK_VALUES): a kernel's weight pointer is at a multiple of it.
_BLOCK = CHANNELS * BLOCK_VALUES


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


def fits_int2(values: np.ndarray) -> bool:
    """Whether ``values`` are integers (int8 constants, as imported) all in [-2, 1]."""
    return fits_int4(values) and int(values.min()) >= INT2_MIN and int(values.max()) <= INT2_MAX


def pack2(weights: np.ndarray, stride: int) -> np.ndarray:
    """``weights`` (int8, every value in [-2, 1]) blocked, each block (four channels' 8 values) two
    little-endian words of 2-bit crumbs, channels 0 and 1 in the first, 2 and 3 in the second, value
    ``r`` of a word's first channel in crumb ``CRUMB_AT[r]`` and of its second in ``CRUMB_AT[r] - 1``:
    ``tvmmcu_dot4c_*``'s layout (``crumb_kernels``), flat uint8, a quarter of the bytes."""
    if not fits_int2(weights):
        raise ValueError("pack2: the weights are not int8 values in [-2, 1]")
    crumbs = block(weights, stride).reshape(-1, 2, 2, BLOCK_VALUES).astype(np.uint32) & 3
    shifts = (2 * CRUMB_AT).astype(np.uint32)
    words = (crumbs[:, :, 0, :] << shifts).sum(axis=-1) | (crumbs[:, :, 1, :] << (shifts - 2)).sum(axis=-1)
    return np.ascontiguousarray(words.astype("<u4").reshape(-1)).view(np.uint8)


def _has_division(expr: Any) -> bool:
    found: list[Any] = []
    structural_walk(expr, (tirx.FloorDiv, found.append))
    return bool(found)


def _whole_blocks(func: PrimFunc, params: set[Any], owners: dict[Any, Any], ana: Any) -> set[Any]:
    """The ``params`` every blocked kernel call of which provably points at a whole block (a multiple
    of ``_BLOCK`` values): their crumb words are then word-aligned at byte ``i / 4``."""
    bad: set[Any] = set()

    def visit(call: Any) -> None:
        name = extern_name(call)
        if name in _PACKED:
            load = pointer_load(call.args[1 + _PACKED[name][1]])
            if load is not None and not provably_multiple(load.indices[0], _BLOCK, ana):
                bad.add(owners.get(load.source, load.source))

    structural_walk(func.body, (tvm.ir.Call, visit))
    return params - bad


def _offset(index: Any, per_byte: int, ana: Any) -> Any:
    """Byte ``index / per_byte`` (a power of two) of blocked value ``index``. The lowering is done
    (LowerIntrin ran): a division left unsimplified is written as the shift it is for an offset into the
    weights (``index >= 0``)."""
    dtype = str(index.ty)
    out = ana.simplify(tirx.floordiv(index, tirx.IntImm(dtype, per_byte)))
    if _has_division(out):
        out = tirx.shift_right(index, tirx.IntImm(dtype, per_byte.bit_length() - 1))
    return out


def pack_weights(func: PrimFunc) -> PrimFunc:
    found = func.attrs if func.attrs is not None else {}
    blocked = {int(k): int(v) for k, v in (found.get(ATTR_BLOCKED) or {}).items()}
    wanted = {int(k) for k in (found.get(ATTR_INT4) or [])}
    chosen = read_only_by_kernels(func, blocked.keys() & wanted, {n: at for n, (_, at) in _PACKED.items()})
    if not chosen:
        return func.with_attr(ATTR_DONE, True)
    owners = parameter_owners(func)
    ana = Analyzer()
    two_bit = {int(k) for k in (found.get(ATTR_INT2) or [])}
    crumbs = _whole_blocks(func, {p for p, k in chosen.items() if k in two_bit}, owners, ana)

    def rewrite(call: Any) -> Any:
        name = extern_name(call)
        if name not in _PACKED:
            return call
        packed, at = _PACKED[name]
        args = list(call.args[1:])
        load = pointer_load(args[at])
        owner = owners.get(load.source, load.source) if load is not None else None
        if load is None or owner not in chosen:
            return call
        # The parameter keeps its int8 type: blocked value i (a multiple of 8) is in byte i / 2, or,
        # as crumbs, i / 4 (i a multiple of 32).
        per_byte = 4 if owner in crumbs else 2
        args[at] = tirx.address_of(tirx.BufferLoad(load.source, [_offset(load.indices[0], per_byte, ana)]))
        return tirx.call_extern(str(call.ty), _CRUMBS[name] if owner in crumbs else packed, *args)

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    moved = {k: blocked[k] for p, k in chosen.items() if p not in crumbs}
    quartered = {k: blocked[k] for p, k in chosen.items() if p in crumbs}
    rest = {k: s for k, s in blocked.items() if k not in moved and k not in quartered}
    out = func.with_body(body).with_attr(ATTR_DONE, True).with_attr(ATTR_PACKED, moved)
    if quartered:
        out = out.with_attr(ATTR_CRUMBS, quartered)
    return out.with_attr(ATTR_BLOCKED, rest)


@tvm.transform.module_pass(opt_level=0, name="PackWeights")
class PackWeights:
    """Store blocked weights whose every value lies in [-8, 7] as int4, two per byte, for half their flash;
    those in [-2, 1] as int2, four per byte, for a quarter.

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
        :func:`pack`-ed. Parameters also marked int2 (``tvmmcu.int2_weights``: every value in [-2, 1])
        whose every call points at a whole block (blocked value ``i`` provably a multiple of 32) go to
        ``tvmmcu_dot4c_*`` / ``tvmmcu_dot4c_sum_s2`` / ``tvmmcu_dot4c_runs_*`` with ``&W[i / 4]`` and
        to ``tvmmcu.crumb_weights`` instead, stored :func:`pack2`-ed (two words of crumbs per block).
    Declines when
        nothing is blocked, no blocked parameter is marked int4, a marked parameter is read by anything
        but a blocked kernel's weight pointer (it stays blocked int8), or the function already carries
        ``tvmmcu.weights_packed``; an int2 parameter a call of which is not provably at a whole block
        stays int4.
    Numerics
        bit-exact: the same int8 products and sums; the DSP kernels sum products scaled by 4096 over at
        most 256 values (below 2**31, no overflow) and shift the sum back exactly, then wrap modulo
        2**32 as the C loop does (``nibble_kernels``); the crumb kernels scale by 16384 under the same
        bound (``crumb_kernels``).
    Ordering
        after BlockWeights (its attribute and calls), on the chosen schedule's lowered operators, as
        WidenWeights; a parameter is packed or widened, never both: WidenWeights widens what is left in
        ``tvmmcu.blocked_weights``. It changes no workspace, scratch or schedule: flash, and a few
        instructions per call (the flush of the scaled sums).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, pack_weights)
