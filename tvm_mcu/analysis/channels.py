"""Channel dependency groups of a float CNN in Relax: which channels must be pruned together.

Every channel of every activation tensor is a node; each operator's rule unites the nodes its
semantics couple (a convolution's outputs with the bias added to them, the activation applied to them
and the next layer's inputs; a depthwise convolution's inputs with its outputs; the branches of a
residual add) and records the constants indexed by them (weights, biases, folded norms). Concat maps
offsets, and a flatten into a fully connected layer maps each channel to its block of features, by the
same nodes repeated. A class of united nodes is one prunable unit; the units that occur in exactly the
same tensors form a *group* (the outputs of one layer, or of every layer a residual add joins).

Units touching the model's output, an operator without a rule, or a use the rules cannot follow are
pinned, with the reason recorded: never guessed. Reads the inference form of a model
(:func:`tvm_mcu.pipeline.inference_passes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from tvm_mcu import _tvm, ops
from tvm_mcu._tvm import relax


@attrs.frozen
class Info:
    """The channel axis of a tensor and the node of each position along it (repeated for flattened
    blocks)."""

    axis: int
    nodes: tuple[int, ...]


@attrs.frozen
class Site:
    """Constant argument ``arg`` of binding ``binding`` is indexed by ``nodes`` along ``axis``.

    ``produces``: the axis holds the output channels of a convolution or dense layer (the weights whose
    magnitude ranks those channels)."""

    binding: int
    arg: int
    axis: int
    nodes: tuple[int, ...]
    produces: bool = False


@attrs.frozen
class Group:
    """Units (united channel classes) that occur in the same tensors; pruned by choosing how many to keep."""

    gid: int
    label: str
    units: tuple[int, ...]  # class roots, in channel order of the first tensor they occur in
    tensors: tuple[str, ...]
    reason: str = ""  # why the group cannot be pruned; "" when it can

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def prunable(self) -> bool:
        return not self.reason


@attrs.frozen
class ChannelPlan:
    """The analysis result: groups, and what the pruning pass and the resource model need to apply it."""

    groups: tuple[Group, ...]
    infos: dict[int, Info] = attrs.field(repr=False)  # binding index -> channel info of its value
    sites: tuple[Site, ...] = attrs.field(repr=False)
    unit_of: dict[int, int] = attrs.field(repr=False)  # node -> class root
    names: tuple[str, ...] = attrs.field(repr=False)  # binding index -> variable name
    depthwise: frozenset[int] = attrs.field(repr=False)  # bindings whose ``groups`` follows the channels

    @property
    def prunable(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def group_of_unit(self) -> dict[int, int]:
        return {u: g.gid for g in self.groups for u in g.units}

    def __str__(self) -> str:
        lines = [f"{'group':>5}  {'channels':>8}  {'prunable':<8}  label / tensors / reason"]
        for g in self.groups:
            what = "yes" if g.prunable else "no"
            lines.append(f"{g.gid:>5}  {g.size:>8}  {what:<8}  {g.label}: {', '.join(g.tensors)}")
            if g.reason:
                lines.append(f"{'':>27}  ({g.reason})")
        return "\n".join(lines)


def bindings(func: Any) -> list[Any]:
    return [b for block in func.body.blocks for b in block.bindings]


def unique_names(binds: list[Any]) -> tuple[str, ...]:
    """Binding variable names, made unique as TVMScript prints them (``lv7``, ``lv7_1``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for b in binds:
        base = _tvm.var_name(b.var)
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(base if k == 0 else f"{base}_{k}")
    return tuple(out)


class _Ctx:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pins: dict[int, str] = {}
        self.infos: dict[Any, Info] = {}
        self.sites: list[Site] = []
        self.depthwise: set[int] = set()

    def fresh(self, n: int) -> tuple[int, ...]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return tuple(range(start, start + n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, xs: tuple[int, ...], ys: tuple[int, ...]) -> None:
        for a, b in zip(xs, ys, strict=True):
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def pin(self, nodes: tuple[int, ...], reason: str) -> None:
        for n in nodes:
            self.pins.setdefault(n, reason)

    def info(self, expr: Any) -> Info | None:
        return self.infos.get(expr) if isinstance(expr, _tvm.RelaxVar) else None


def _shape(expr: Any) -> tuple[int, ...]:
    return _tvm.tensor_shape(expr.ty)


def _is_const(expr: Any) -> bool:
    return isinstance(expr, _tvm.RelaxConst)


def _tensor_args(call: Any) -> list[Any]:
    return [a for a in call.args if isinstance(a, _tvm.RelaxVar)]


def _pin_args(ctx: _Ctx, call: Any, reason: str) -> None:
    for a in _tensor_args(call):
        info = ctx.info(a)
        if info is not None:
            ctx.pin(info.nodes, reason)


def _conv2d(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    x, w = call.args
    a = call.attrs
    data_axis = str(a.data_layout).index("C")
    out_axis = str(a.out_layout or a.data_layout).index("C")
    k_out, k_in = str(a.kernel_layout).index("O"), str(a.kernel_layout).index("I")
    xi = ctx.info(x)
    if not _is_const(w):
        _pin_args(ctx, call, f"convolution '{name}' has a non-constant weight")
        return None
    groups, cin, cout = int(a.groups), _shape(x)[data_axis], _shape(w)[k_out]
    if xi is not None and xi.axis != data_axis:
        ctx.pin(xi.nodes, f"convolution '{name}' reads its channels along another axis")
        xi = None
    if groups == 1:
        if xi is not None:
            ctx.sites.append(Site(i, 1, k_in, xi.nodes))
        out = ctx.fresh(cout)
        ctx.sites.append(Site(i, 1, k_out, out, produces=True))
        return Info(out_axis, out)
    if groups == cin == cout:
        out = xi.nodes if xi is not None else ctx.fresh(cout)
        if xi is None:
            ctx.pin(out, f"depthwise convolution '{name}' of a tensor without a known channel axis")
        ctx.sites.append(Site(i, 1, k_out, out, produces=True))
        ctx.depthwise.add(i)
        return Info(out_axis, out)
    reason = f"grouped convolution '{name}' (groups={groups}) couples channels in blocks"
    if xi is not None:
        ctx.pin(xi.nodes, reason)
    out = ctx.fresh(cout)
    ctx.pin(out, reason)
    return Info(out_axis, out)


def _same(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    """Elementwise on one tensor: the output has the input's channels."""
    return ctx.info(call.args[0])


def _pool(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    xi = ctx.info(call.args[0])
    if xi is not None and str(call.attrs.layout).index("C") != xi.axis:
        ctx.pin(xi.nodes, f"pooling '{name}' runs over the channel axis")
        return None
    return xi


def _pad(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    xi = ctx.info(call.args[0])
    widths = [int(w) for w in call.attrs.pad_width]
    if xi is not None and (widths[2 * xi.axis] or widths[2 * xi.axis + 1]):
        ctx.pin(xi.nodes, f"pad '{name}' adds channels")
        return None
    return xi


def _binary(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    """Broadcasting elementwise op: tensors of full channel size are united; constants are sliced."""
    shapes = [_shape(a) for a in call.args]
    rank = max(len(s) for s in shapes)
    ref: tuple[int, Info] | None = None  # (axis in output rank, info)
    for a, s in zip(call.args, shapes, strict=True):
        info = ctx.info(a)
        if info is not None and s[info.axis] == len(info.nodes) and len(info.nodes) > 1:
            ref = (info.axis + rank - len(s), info)
            break
    if ref is None:
        _pin_args(ctx, call, f"'{name}' combines tensors without a known channel axis")
        return None
    axis, rinfo = ref
    for k, (a, s) in enumerate(zip(call.args, shapes, strict=True)):
        lead = rank - len(s)
        dim = s[axis - lead] if axis >= lead else 1
        if _is_const(a):
            if dim == len(rinfo.nodes):
                ctx.sites.append(Site(i, k, axis - lead, rinfo.nodes))
            elif dim != 1:
                ctx.pin(rinfo.nodes, f"'{name}' broadcasts a constant across channels")
            continue
        info = ctx.info(a)
        if dim == 1:
            continue
        if info is None or info.axis + lead != axis or len(info.nodes) != len(rinfo.nodes):
            ctx.pin(rinfo.nodes, f"'{name}' combines channels with a tensor of another channel layout")
            if info is not None:
                ctx.pin(info.nodes, f"'{name}' combines channels with a tensor of another channel layout")
            continue
        ctx.union(info.nodes, rinfo.nodes)
    return Info(axis, rinfo.nodes)


def _reduce(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    """mean / max / min / sum over some axes: channels pass through unless the channel axis is reduced."""
    xi = ctx.info(call.args[0])
    if xi is None:
        return None
    rank = len(_shape(call.args[0]))
    axes = [int(a) % rank for a in call.attrs.axis] if call.attrs.axis is not None else list(range(rank))
    if xi.axis in axes:
        kind = (_tvm.op_name(call) or "").removeprefix("relax.")
        ctx.pin(xi.nodes, f"{kind} '{name}' reduces over the channel axis")
        return None
    keep = bool(call.attrs.keepdims)
    return Info(xi.axis if keep else xi.axis - sum(1 for a in axes if a < xi.axis), xi.nodes)


def _softmax(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    xi = ctx.info(call.args[0])
    if xi is not None and int(call.attrs.axis) % len(_shape(call.args[0])) == xi.axis:
        ctx.pin(xi.nodes, f"softmax '{name}' normalises over the channels")
    return xi


def _permute(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    xi = ctx.info(call.args[0])
    if xi is None:
        return None
    rank = len(_shape(call.args[0]))
    axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(rank))[::-1]
    return Info(axes.index(xi.axis), xi.nodes)


def _reshape(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    """Follows the channel index through the row-major reshape; it must vary along one output axis."""
    xi = ctx.info(call.args[0])
    if xi is None:
        return None
    in_shape, out_shape = _shape(call.args[0]), _tvm.tensor_shape(call.ty)
    channel = np.indices(in_shape)[xi.axis].reshape(out_shape)
    for j in range(len(out_shape)):
        line = np.take(channel, np.arange(out_shape[j]), axis=j)
        # The channel index along axis j, with every other index 0; it must be the same everywhere.
        first = line[tuple(0 if d != j else slice(None) for d in range(len(out_shape)))]
        shape = [1] * len(out_shape)
        shape[j] = out_shape[j]
        if np.array_equal(channel, np.broadcast_to(first.reshape(shape), out_shape)):
            return Info(j, tuple(xi.nodes[int(c)] for c in first))
    ctx.pin(xi.nodes, f"reshape '{name}' mixes the channel axis with others")
    return None


def _concat(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    parts = list(call.args[0].fields)
    rank = len(_shape(parts[0]))
    axis = int(call.attrs.axis) % rank
    infos = [ctx.info(p) for p in parts]
    if all(inf is not None and inf.axis == axis for inf in infos):
        return Info(axis, tuple(n for inf in infos for n in inf.nodes))  # type: ignore[union-attr]
    known = [inf for inf in infos if inf is not None]
    if len(known) == len(infos) and all(
        inf.axis == known[0].axis and len(inf.nodes) == len(known[0].nodes) for inf in known
    ):
        # Joined along another axis: every part carries the same channels.
        for inf in known[1:]:
            ctx.union(inf.nodes, known[0].nodes)
        return Info(known[0].axis, known[0].nodes)
    for inf in known:
        ctx.pin(inf.nodes, f"concat '{name}' joins tensors of different channel layouts")
    return None


def _matmul(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    x, w = call.args
    if not _is_const(w) or len(_shape(w)) != 2:
        _pin_args(ctx, call, f"matmul '{name}' has no constant 2-D weight")
        return None
    xi = ctx.info(x)
    if xi is not None:
        if xi.axis == len(_shape(x)) - 1:
            ctx.sites.append(Site(i, 1, 0, xi.nodes))
        else:
            ctx.pin(xi.nodes, f"matmul '{name}' contracts an axis other than the channels")
    out = ctx.fresh(_shape(w)[1])
    ctx.sites.append(Site(i, 1, 1, out, produces=True))
    return Info(len(_shape(x)) - 1, out)


def _prelu(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    """A slope per channel (sliced with them) or one slope for all."""
    x, slope = call.args
    xi = ctx.info(x)
    if xi is None:
        return None
    n_slope = int(np.prod(_shape(slope)))
    if n_slope > 1:
        if int(call.attrs.axis) % len(_shape(x)) != xi.axis or not _is_const(slope):
            ctx.pin(xi.nodes, f"prelu '{name}' has slopes along another axis than the channels")
            return None
        ctx.sites.append(Site(i, 1, 0, xi.nodes))
    return xi


def _squeeze(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    xi = ctx.info(call.args[0])
    if xi is None:
        return None
    shape = _shape(call.args[0])
    axes = (
        [int(a) % len(shape) for a in call.attrs.axis]
        if call.attrs.axis is not None
        else [k for k, d in enumerate(shape) if d == 1]
    )
    if xi.axis in axes:
        ctx.pin(xi.nodes, f"squeeze '{name}' removes the channel axis")
        return None
    return Info(xi.axis - sum(1 for a in axes if a < xi.axis), xi.nodes)


def _expand_dims(ctx: _Ctx, i: int, name: str, call: Any) -> Info | None:
    xi = ctx.info(call.args[0])
    if xi is None:
        return None
    rank = len(_shape(call.args[0])) + len(call.attrs.axis)
    new = sorted(int(a) % rank for a in call.attrs.axis)
    axis = xi.axis
    for a in new:  # each new axis at or before the channel axis moves it along
        if a <= axis:
            axis += 1
    return Info(axis, xi.nodes)


Rule = Callable[[_Ctx, int, str, Any], Info | None]
# The rules the operator registry (tvm_mcu.ops) names.
RULES: dict[str, Rule] = ops.rules("channels", globals())


def channel_groups(mod: _tvm.IRModule) -> ChannelPlan:
    """The channel groups of ``main`` (a float model in inference form); pure, deterministic."""
    func = mod["main"]
    ctx = _Ctx()
    binds = bindings(func)
    names = unique_names(binds)
    # What messages and labels call a binding: the ONNX node it came from, when the importer said.
    shown = tuple(_tvm.provenance_name(func, b.var) or n for b, n in zip(binds, names, strict=True))
    index = {b.var: i for i, b in enumerate(binds)}
    for p in func.params:
        shape = _shape(p)
        # The input's channels cannot change; axis 1 (NCHW, or features) is only a label for the reason.
        if len(shape) >= 2:
            ctx.infos[p] = Info(1, ctx.fresh(shape[1]))
            ctx.pin(ctx.infos[p].nodes, f"model input '{_tvm.var_name(p)}'")
    ret = func.body.body
    returned = [ret] if not isinstance(ret, relax.Tuple) else list(ret.fields)
    tuples = {b.var: list(b.value.fields) for b in binds if isinstance(b.value, relax.Tuple)}
    outputs = [f for r in returned for f in tuples.get(r, [r])]
    for i, b in enumerate(binds):
        value, name = b.value, shown[i]
        info: Info | None = None
        if isinstance(value, _tvm.RelaxVar):
            info = ctx.info(value)
        elif isinstance(value, relax.Call) and _tvm.op_name(value) in RULES:
            info = RULES[str(_tvm.op_name(value))](ctx, i, name, value)
        elif isinstance(value, relax.Call):
            op = _tvm.op_name(value) or "a call to a function"
            why = ops.refusal("channels", op) if _tvm.op_name(value) else None
            _pin_args(ctx, value, f"no channel rule for {op} ('{name}')" + (f": {why}" if why else ""))
        elif b.var not in returned:
            for v in _vars_in(value):
                inf = ctx.info(v)
                if inf is not None:
                    ctx.pin(inf.nodes, f"'{name}' is a {type(value).__name__}")
        if info is not None:
            ctx.infos[b.var] = info
    for k, out in enumerate(outputs):
        inf = ctx.info(out)
        if inf is not None:
            node = _tvm.provenance(func, out) if isinstance(out, _tvm.RelaxVar) else None
            # Without the ONNX node, the output's place (never the importer's internal name).
            where = f"of {node}" if node else (f"{k + 1} of {len(outputs)}" if len(outputs) > 1 else "")
            ctx.pin(inf.nodes, f"model output {where}".rstrip())
    return _plan(func, ctx, binds, names, index)


def _vars_in(expr: Any) -> list[Any]:
    found: list[Any] = []
    _tvm.structural_walk(expr, (_tvm.RelaxVar, found.append))
    return found


def _plan(
    func: Any, ctx: _Ctx, binds: list[Any], names: tuple[str, ...], index: dict[Any, int]
) -> ChannelPlan:
    """The groups of ``ctx``'s channel units; a group's label is the ONNX node (``Conv 'conv_7'``) or
    the Relax op and binding (``nn.conv2d 'lv5'``) of its first tensor, unique within the plan."""
    unit_of = {n: ctx.find(n) for n in range(len(ctx.parent))}
    infos = {index[v]: inf for v, inf in ctx.infos.items() if v in index}
    # Model inputs take the negative indices -1, -2, ... (their channels are never pruned).
    label_of = dict(enumerate(names))
    seen = dict(infos)
    for k, (v, inf) in enumerate((v, inf) for v, inf in ctx.infos.items() if v not in index):
        label_of[-1 - k] = _tvm.var_name(v)
        seen[-1 - k] = inf
    where: dict[int, list[int]] = {}  # unit -> tensors whose channels it spans, in order
    order: dict[int, tuple[int, int]] = {}  # unit -> (first tensor, position) it occurs at
    for i in sorted(seen):
        for pos, n in enumerate(seen[i].nodes):
            u = unit_of[n]
            if not where.setdefault(u, []) or where[u][-1] != i:
                where[u].append(i)
            order.setdefault(u, (i, pos))
    # Units that occur in no tensor (a convolution whose output is unused) still have weight sites.
    for s in ctx.sites:
        for pos, n in enumerate(s.nodes):
            order.setdefault(unit_of[n], (len(binds) + s.binding, pos))
            where.setdefault(unit_of[n], [])
    reasons: dict[int, str] = {}
    for n, reason in sorted(ctx.pins.items()):
        reasons.setdefault(unit_of[n], reason)
    by_sig: dict[tuple[int, ...], list[int]] = {}
    for u in sorted(order, key=lambda u: order[u]):
        by_sig.setdefault(tuple(where[u]), []).append(u)
    groups = []
    used: set[str] = set()
    for gid, (sig, units) in enumerate(by_sig.items()):
        first = sig[0] if sig else order[units[0]][0] - len(binds)
        if first < 0:
            label = f"input '{label_of[first]}'"
        else:
            node = _tvm.provenance(func, binds[first].var)
            op = binds[first].value
            kind = (_tvm.op_name(op) or "").removeprefix("relax.") if isinstance(op, relax.Call) else "value"
            label = node or f"{kind} '{names[first]}'"
        if label in used:
            label = f"{label} #{gid}"
        used.add(label)
        reason = next((reasons[u] for u in units if u in reasons), "")
        groups.append(Group(gid, label, tuple(units), tuple(label_of[i] for i in sig), reason))
    return ChannelPlan(tuple(groups), infos, tuple(ctx.sites), unit_of, names, frozenset(ctx.depthwise))


def magnitudes(mod: _tvm.IRModule, plan: ChannelPlan) -> dict[int, float]:
    """Each unit's L1 norm of the weights producing it (summed over the layers a residual add joins)."""
    binds = bindings(mod["main"])
    score: dict[int, float] = {}
    for s in plan.sites:
        if not s.produces:
            continue
        w = np.abs(_tvm.const_value(binds[s.binding].value.args[s.arg]))
        per = np.moveaxis(w, s.axis, 0).reshape(w.shape[s.axis], -1).sum(axis=1)
        for pos, n in enumerate(s.nodes):
            u = plan.unit_of[n]
            score[u] = score.get(u, 0.0) + float(per[pos])
    return score
