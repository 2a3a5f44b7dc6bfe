"""PruneChannels: physically remove planned channel groups' channels from a float CNN in Relax."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tvm_mcu import _tvm
from tvm_mcu._tvm import relax, tvm
from tvm_mcu.analysis.channels import ChannelPlan, bindings, channel_groups
from tvm_mcu.errors import BadOptionError


def removed_units(plan: ChannelPlan, keep: Mapping[int, Sequence[int]]) -> set[int]:
    """The units (class roots) ``keep`` drops: for each group id, the channel indices kept."""
    by_id = {g.gid: g for g in plan.groups}
    gone: set[int] = set()
    for gid, kept in sorted(keep.items()):
        group = by_id.get(gid)
        if group is None:
            raise BadOptionError(f"no channel group {gid}; the plan has groups 0..{len(plan.groups) - 1}")
        idx = sorted({int(k) for k in kept})
        if len(idx) != len(kept) or not idx or idx[0] < 0 or idx[-1] >= group.size:
            raise BadOptionError(
                f"group {gid} ({group.label}) keeps {list(kept)}: give distinct channel indices in "
                f"0..{group.size - 1}, at least one"
            )
        if len(idx) < group.size and not group.prunable:
            raise BadOptionError(f"group {gid} ({group.label}) cannot be pruned: {group.reason}")
        gone |= {u for k, u in enumerate(group.units) if k not in idx}
    return gone


def _kept(plan: ChannelPlan, nodes: tuple[int, ...], gone: set[int]) -> np.ndarray:
    return np.array([plan.unit_of[n] not in gone for n in nodes], dtype=bool)


@tvm.transform.module_pass(opt_level=0, name="PruneChannels")
class PruneChannels:
    """Remove channels from a float CNN: weights, biases, folded norms and shapes, as the plan couples them.

    ``keep`` maps a channel group id of :func:`tvm_mcu.analysis.channels.channel_groups` (of the module
    the pass receives) to the indices of the channels it keeps; groups not named keep every channel.

    Matches
        ``main`` of a float model in inference form (:func:`tvm_mcu.pipeline.inference_passes`).
    Rewrites to
        the same bindings with every constant indexed by a removed channel sliced along that axis (a
        convolution's or dense layer's output and input axes, per-channel biases and scales), depthwise
        convolutions' ``groups`` and reshapes' target shapes following their channel counts; every type
        re-inferred.
    Declines when
        ``keep`` removes nothing: the module is returned unchanged. A group that cannot be pruned, or
        indices out of range, are a BadOptionError.
    Numerics
        exact when the removed channels are zero (their producers' weights and biases are zero): the
        remaining sums are the same sums without zero terms, so outputs are bit-identical.
    Ordering
        after ``inference_passes``; before anything that legalises or fuses.
    """

    def __init__(self, *, keep: Mapping[int, Sequence[int]]) -> None:
        self.keep = {int(g): tuple(int(k) for k in v) for g, v in keep.items()}

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        plan = channel_groups(mod)
        gone = removed_units(plan, self.keep)
        if not gone:
            return mod
        return _apply(mod, plan, gone)


def _apply(mod: tvm.IRModule, plan: ChannelPlan, gone: set[int]) -> tvm.IRModule:
    func = mod["main"]
    sites: dict[tuple[int, int], list[Any]] = {}
    for s in plan.sites:
        sites.setdefault((s.binding, s.arg), []).append(s)
    bb = relax.BlockBuilder(
        tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}, attrs=mod.attrs)
    )
    remap: dict[Any, Any] = {}

    def sub(expr: Any) -> Any:
        if isinstance(expr, relax.Tuple):
            # A fresh tuple: a mapped one would keep its old type (concat would see the old channels).
            return relax.Tuple([sub(f) for f in expr.fields])
        return _tvm.structural_map(expr, [(_tvm.RelaxVar, lambda v: remap.get(v, v))])

    attrs = dict(func.attrs) if func.attrs is not None else {}
    with _tvm.building_function(bb, "main", list(func.params), attrs=attrs):
        with bb.dataflow():
            for i, b in enumerate(bindings(func)):
                value = b.value
                if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                    args = []
                    for k, a in enumerate(value.args):
                        if isinstance(a, _tvm.RelaxConst) and (i, k) in sites:
                            arr = _tvm.const_value(a)
                            for s in sites[(i, k)]:
                                arr = np.compress(_kept(plan, s.nodes, gone), arr, axis=s.axis)
                            args.append(_tvm.relax_const(np.ascontiguousarray(arr)))
                        else:
                            args.append(sub(a))
                    new = _rebuild(value, args, plan, i, gone)
                else:
                    new = sub(value)
                remap[b.var] = bb.emit(new, name_hint=_tvm.var_name(b.var))
            ret = func.body.body
            out = bb.emit_output(sub(ret))
        bb.emit_func_output(out)
    return bb.get()


def _rebuild(call: Any, args: list[Any], plan: ChannelPlan, i: int, gone: set[int]) -> Any:
    """A fresh call (so every type is inferred again) with the shape-carrying attributes updated."""
    op = _tvm.op_name(call)
    info = plan.infos.get(i)
    if op == "relax.reshape" and info is not None:
        shape = [int(d) for d in call.args[1].values]
        shape[info.axis] = int(_kept(plan, info.nodes, gone).sum())
        return relax.op.reshape(args[0], shape)
    if op == "relax.nn.conv2d" and i in plan.depthwise and info is not None:
        a = call.attrs
        return relax.op.nn.conv2d(
            args[0],
            args[1],
            strides=[int(v) for v in a.strides],
            padding=[int(v) for v in a.padding],
            dilation=[int(v) for v in a.dilation],
            groups=int(_kept(plan, info.nodes, gone).sum()),
            data_layout=str(a.data_layout),
            kernel_layout=str(a.kernel_layout),
            out_layout=str(a.out_layout) if a.out_layout else None,
            out_dtype=None if str(a.out_dtype) in ("", "void", "None") else str(a.out_dtype),
        )
    return _tvm.call_with_args(call, args)
