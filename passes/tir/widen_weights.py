"""WidenWeights: blocked int8 weights stored pre-widened to halfwords (``--weights int16``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import PrimFunc, TensorLoad, structural_map, tirx, tvm
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED, block
from tvm_mcu.passes.tir.dot_kernels import DOT4B, DOT4H, RUNS4B, RUNS4H, SUM4B, SUM4H
from tvm_mcu.passes.tir.each_function import extern_name, rewrite_each

ATTR_DONE = "tvmmcu.weights_widened"
# On the function: parameter position -> channel stride S of the blocked weights it holds as halfwords
# (``widen``); those positions leave ``tvmmcu.blocked_weights``.
ATTR_WIDENED = "tvmmcu.halfword_weights"

# The blocked kernel -> (its halfword form, where its weight pointer is among its arguments).
_HALF = {
    **{DOT4B[k]: (DOT4H[k], 1) for k in DOT4B},
    **{SUM4B[k]: (SUM4H[k], 0) for k in SUM4B},
    **{RUNS4B[k]: (RUNS4H[k], 3) for k in RUNS4B},
}
# Within each 8 values of a channel, where value i sits: the order SMLAD pairs the data's SXTB16
# halves (bytes 0 and 2, then 1 and 3) with weight halfwords.
HALF_ORDER = np.array([0, 2, 1, 3, 4, 6, 5, 7])


def widen(weights: np.ndarray, stride: int) -> np.ndarray:
    """``weights`` blocked (:func:`~tvm_mcu.passes.tir.block_weights.block`) and each 8 values of a
    channel put in ``HALF_ORDER``, as int16: ``tvmmcu_dot4h_*``'s layout, twice the bytes."""
    blocked = block(weights, stride).reshape(-1, 8)
    return np.ascontiguousarray(blocked[:, HALF_ORDER].astype(np.int16)).reshape(weights.shape)


def widen_weights(func: PrimFunc) -> PrimFunc:
    blocked = func.attrs.get(ATTR_BLOCKED) if func.attrs is not None else None
    if not blocked:
        return func.with_attr(ATTR_DONE, True)

    def rewrite(call: Any) -> Any:
        name = extern_name(call)
        if name not in _HALF:
            return call
        half, at = _HALF[name]
        args = list(call.args[1:])
        pointer = args[at]
        load = pointer.args[0] if isinstance(pointer, tvm.ir.Call) and pointer.args else None
        if not isinstance(load, TensorLoad) or len(load.indices) != 1:
            raise ValueError(f"WidenWeights: {name}'s weight argument is not &W[i]: {pointer}")
        index = load.indices[0]
        # The parameter keeps its int8 type: value i of the blocked layout starts at byte 2 * i.
        args[at] = tirx.address_of(tirx.BufferLoad(load.source, [index * tirx.IntImm(str(index.ty), 2)]))
        return tirx.call_extern(str(call.ty), half, *args)

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    out = func.with_body(body).with_attr(ATTR_DONE, True).with_attr(ATTR_WIDENED, blocked)
    return out.with_attr(ATTR_BLOCKED, {})


@tvm.transform.module_pass(opt_level=0, name="WidenWeights")
class WidenWeights:
    """Store the weights the blocked kernels read as halfwords, so no instruction widens them.

    Matches
        functions whose weights BlockWeights blocked (``tvmmcu.blocked_weights``): their
        ``tvmmcu_dot4b_*``, ``tvmmcu_dot4b_sum_s8`` and ``tvmmcu_dot4b_runs_*`` calls, the only
        readers of those parameters.
    Rewrites to
        ``tvmmcu_dot4h_*`` / ``tvmmcu_dot4h_sum_s16`` / ``tvmmcu_dot4h_runs_*`` with the weight pointer
        ``&W[2 * i]`` (the parameter stays an int8 pointer; the halfword of blocked value ``i`` starts
        at byte ``2 * i``), and moves the positions from ``tvmmcu.blocked_weights`` to
        ``tvmmcu.halfword_weights``: the compiler stores those constants :func:`widen`-ed.
    Declines when
        nothing is blocked, or the function already carries ``tvmmcu.weights_widened``.
    Numerics
        unchanged: the same int8 values, sign-extended at compile time instead of by SXTB16, in the
        same products and sums.
    Ordering
        after BlockWeights (its attribute and calls), on the chosen schedule's lowered operators; it
        changes no workspace, scratch or schedule, only flash and instructions.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, widen_weights)
