"""A differentiable model of a pruned CNN's resources on the board: peak SRAM, flash and MACs as functions
of the number of channels each prunable group keeps.

The model is read off the compiler, not re-derived: the float model is compiled the way it will be
deployed (exported, quantised for int8, every candidate schedule planned) once at full width and once
per prunable group with that group halved. Every shape the compiler produces is affine in the kept
channel counts, because a channel axis holds the channels of the groups flowing through it (a flatten
holds each channel's block of features). Two compiles per group therefore give, exactly:

- each dimension of each weight tensor, so flash = code (read from the full-width firmware) + the sum
  over weights of the product of their dimensions (multilinear). The kernels run four output channels
  at a time, so a group whose kept count is no multiple of 4 adds the code of the channels left over:
  the model with the group at such a count (half, one less when that is a multiple of 4) is built
  once, and its extra code is added whenever the group keeps such a count;
- each iteration extent of each multiply-reduce block, so MACs = the sum of their products;
- the size of each buffer of each candidate schedule's memory plan (the operator order, in-place
  decisions and partial-execution splits of the full-width compile), so the bytes live at each step
  are affine, a schedule's peak is their maximum (times the plan's packing ratio), and SRAM is the
  smallest peak among the candidates the compiler would choose from (those within its instruction
  overhead), plus the caller's input and output buffers.

With ``schedules="whole"`` the SRAM term is the layer-by-layer schedule's (whole tensors, best order):
the plain peak that pruning would target without partial execution. Under an SRAM budget
(:meth:`ResourceModel.within`, as ``compile --sram-budget``) the compiler takes the fastest candidate
that fits, any overhead allowed: SRAM is then the smallest peak among all candidates (can it fit), and
the figures are those of the fastest candidate within the budget.

Evaluated on a numpy array it gives figures; on a torch tensor of (soft) kept counts it gives a
differentiable loss term. :func:`check` compares its predictions with compiled firmware.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np

from tvm_mcu import _tvm, compiler
from tvm_mcu.analysis.channels import ChannelPlan
from tvm_mcu.analysis.macs import mac_blocks
from tvm_mcu.frontend import ImportedModel, load_model
from tvm_mcu.passes.relax.prune_channels import PruneChannels
from tvm_mcu.passes.tir.block_output_channels import BLOCK as CHANNEL_BLOCK
from tvm_mcu.schedule import choice, cost
from tvm_mcu.schedule.graph import dtype_bytes
from tvm_mcu.schedule.memory import live_profile

logger = logging.getLogger(__name__)

SCHEDULES = ("compiler", "whole")
LAYER_BY_LAYER = "layer by layer"


@attrs.frozen
class Affine:
    """``base + coef @ (k - full)``: one dimension or size as a function of the kept counts ``k``."""

    base: float
    coef: np.ndarray = attrs.field(eq=False)

    def __call__(self, dk: Any) -> Any:
        return self.base + _dot(self.coef, dk)


@attrs.frozen
class Product:
    """``scale * prod(factors)``: a weight's bytes or a block's MACs."""

    scale: float
    factors: tuple[Affine, ...]

    def __call__(self, dk: Any) -> Any:
        out: Any = self.scale
        for f in self.factors:
            out = out * f(dk)
        return out


@attrs.frozen
class ScheduleModel:
    """One candidate schedule: the bytes live at each step, affine in ``k`` (rows: steps)."""

    label: str
    live_base: np.ndarray = attrs.field(eq=False)  # (steps,)
    live_coef: np.ndarray = attrs.field(eq=False)  # (steps, groups)
    packing: float  # the full-width plan's (arena + I/O) over its peak live bytes
    step_names: tuple[str, ...]
    buffers: tuple[tuple[str, int, int], ...]  # (name, first step, last step) of each arena buffer
    buffer_sizes: tuple[Affine, ...]
    io: Affine
    # The compiler's estimate of extra instructions over the layer-by-layer schedule: a fixed fraction
    # per chain of the model's instructions, plus copies and passes affine in the channel counts.
    chains: int
    extra: Affine  # besides the accumulating passes
    # Accumulating chains: (consumer step, slice); each re-enters the consumer's output once per slice,
    # cost.Costs.per_accumulator_pass instructions per MAC of the consumer over the slice (multilinear).
    accumulate: tuple[tuple[str, int], ...]
    code_bytes: int  # flash besides the weights, from this schedule's full-width firmware

    def live(self, dk: Any) -> Any:
        return _add(self.live_base, _dot(self.live_coef, dk))


@attrs.frozen
class Figures:
    sram: float
    flash: float
    macs: float
    schedule: str
    weights: float  # the weights' bytes as the model prices them (compiled: Report.weights_bytes)


@attrs.frozen
class ResourceModel:
    """Resources as functions of the kept channels of each prunable group (``groups``, in order)."""

    groups: tuple[int, ...]
    labels: tuple[str, ...]
    full: np.ndarray = attrs.field(eq=False)
    weights: tuple[Product, ...]
    mac_blocks: tuple[Product, ...]
    block_steps: tuple[str, ...]  # the step (layer by layer) of each MAC block
    schedules: tuple[ScheduleModel, ...]
    board: str
    int8: bool
    costs: cost.Costs  # the compiler's cost model for this model's kernels (schedule/cost.py)
    # Per group, the code bytes its channels left over beyond blocks of four add (its probe's firmware).
    remainder_code: tuple[float, ...] = ()
    # The SRAM budget the model is compiled with (``compile --sram-budget``), None: the default rule.
    sram_budget: float | None = None

    def within(self, sram_budget: float | None) -> ResourceModel:
        """The model of compiles with ``sram_budget``: the fastest candidate that fits is chosen."""
        return attrs.evolve(self, sram_budget=sram_budget)

    def counts(self, keep: Mapping[int, tuple[int, ...]] | None) -> np.ndarray:
        """Kept channels per group (in ``groups`` order) of a PruneChannels ``keep``."""
        keep = keep or {}
        return np.array(
            [len(keep[g]) if g in keep else n for g, n in zip(self.groups, self.full, strict=True)], float
        )

    def restricted(self, schedules: str) -> ResourceModel:
        """The model whose SRAM term is the compiler's choice ("compiler") or whole buffers ("whole")."""
        if schedules not in SCHEDULES:
            raise ValueError(f"schedules must be one of {SCHEDULES}")
        if schedules == "compiler":
            return self
        return attrs.evolve(self, schedules=tuple(s for s in self.schedules if s.label == LAYER_BY_LAYER))

    def flash(self, k: Any) -> Any:
        """Weights plus the code of the schedule the compiler would choose at ``k``."""
        fixed = np.asarray(k.detach().numpy() if _is_torch(k) else k, float)
        left_over = np.mod(np.round(fixed), CHANNEL_BLOCK) != 0
        remainder = self.remainder_code or (0.0,) * len(self.groups)
        code = self.schedule(fixed).code_bytes + sum(
            c for c, r in zip(remainder, left_over, strict=True) if r
        )
        return code + self.stored(k)

    def stored(self, k: Any) -> Any:
        """The stored weights' bytes at ``k`` (the ``weights`` resource): :meth:`flash` without the
        code, so narrowing any group never raises it. Priced through flash, a stored-weights budget
        read the code of the schedule the compiler would choose: MobileNetV2-style at int4, taking its
        second group from 16 channels to 8 changes that schedule and adds 1,700 B of code, so the group
        was never narrowed and DiffPrune stopped at 2,952 B of a 2,796 B budget at 1/16."""
        dk = k - _like(self.full, k)
        return _sum([w(dk) for w in self.weights])

    def macs(self, k: Any) -> Any:
        dk = k - _like(self.full, k)
        return _sum([b(dk) for b in self.mac_blocks])

    def overhead(self, s: ScheduleModel, k: np.ndarray) -> float:
        """The compiler's estimate of ``s``'s extra instructions at ``k``, a fraction of the model's."""
        k = np.asarray(k, float)
        costs = self.costs
        total = max(float(self.macs(k)), 1.0) * costs.per_mac
        acc = sum(costs.per_accumulator_pass * self.step_macs(k, c) / n for c, n in s.accumulate)
        return s.chains * costs.chain_overhead + (float(s.extra(k - self.full)) + acc) / total

    def eligible(self, k: np.ndarray) -> list[ScheduleModel]:
        """The candidates the compiler chooses among at ``k``: within its instruction overhead (under a
        budget, every candidate: the compiler takes any that fits)."""
        if self.sram_budget is not None:
            return list(self.schedules)
        ratio = {s.label: self.overhead(s, k) for s in self.schedules}
        within = [s for s in self.schedules if ratio[s.label] <= choice.MAX_OVERHEAD]
        return within or [min(self.schedules, key=lambda s: ratio[s.label])]

    def step_macs(self, k: np.ndarray, step: str) -> float:
        dk = np.asarray(k, float) - self.full
        pairs = zip(self.mac_blocks, self.block_steps, strict=True)
        return float(sum(b(dk) for b, st in pairs if st == step))

    def sram_by_schedule(self, k: Any) -> dict[str, Any]:
        """The peak (arena + I/O) of each candidate the compiler would choose among at ``k``."""
        fixed = np.asarray(k.detach().numpy() if _is_torch(k) else k, float)
        dk = k - _like(self.full, k)
        return {s.label: _max(s.live(dk)) * s.packing for s in self.eligible(fixed)}

    def sram(self, k: Any) -> Any:
        """The smallest peak among the candidate schedules (the compiler picks the smallest)."""
        per = list(self.sram_by_schedule(k).values())
        return per[0] if len(per) == 1 else _min(per)

    def schedule(self, k: np.ndarray) -> ScheduleModel:
        """The candidate the compiler would compile at ``k``: the smallest peak among the eligible ones;
        under a budget, the fastest that fits (the smallest peak when none does)."""
        k = np.asarray(k, float)
        per = {label: float(v) for label, v in self.sram_by_schedule(k).items()}
        by_label = {s.label: s for s in self.schedules}
        if self.sram_budget is not None:
            fits = [by_label[label] for label, v in per.items() if v <= self.sram_budget]
            if fits:
                return min(fits, key=lambda s: (self.overhead(s, k), per[s.label]))
        return by_label[min(per, key=lambda x: per[x])]

    def figures(self, k: np.ndarray) -> Figures:
        k = np.asarray(k, float)
        s = self.schedule(k)
        sram = float(_max(s.live(k - self.full)) * s.packing)
        return Figures(sram, float(self.flash(k)), float(self.macs(k)), s.label, float(self.stored(k)))

    def bottleneck(self, k: np.ndarray) -> tuple[str, str, list[tuple[str, float]]]:
        """(schedule, step, [(buffer, bytes)...] largest first) where the SRAM peak falls at ``k``."""
        k = np.asarray(k, float)
        dk = k - self.full
        s = self.schedule(k)
        live = s.live(dk)
        step = int(np.argmax(live))
        bufs = [
            (name, float(size(dk)))
            for (name, first, last), size in zip(s.buffers, s.buffer_sizes, strict=True)
            if first <= step <= last
        ]
        return s.label, s.step_names[step], sorted(bufs, key=lambda b: -b[1])

    def pressure(self, k: np.ndarray, resource: str, step: int = 1) -> np.ndarray:
        """Per group, how much narrowing it lowers ``resource`` at ``k``: for SRAM, the bytes per channel
        at every step tied at the peak (where the peak is a tie, no single group lowers it alone); else
        per channel over ``step`` channels (:meth:`gradient`)."""
        if resource != "sram":
            return self.gradient(k, resource, step)
        k = np.asarray(k, float)
        s = self.schedule(k)
        live = s.live(k - self.full)
        tied = live >= live.max() - 0.5
        return np.asarray(s.live_coef[tied].clip(min=0).sum(axis=0) * s.packing, float)

    def gradient(self, k: np.ndarray, resource: str, step: int = 1) -> np.ndarray:
        """d resource / d kept channels of each group: finite differences of ``step`` channels, per
        channel. A cut whose kept counts are multiples of ``step`` (int4 weights pack in whole blocks)
        is priced across such a step: one channel off a full block adds the left-over channels' code
        (``remainder_code``), which outweighs an int4 channel's weights, and read so the groups of 64
        and 96 channels of the MobileNetV2-style model never narrowed (DiffPrune's fit stopped at
        8,460 B of stored weights at int4, where its narrowest network meets 2,796 B)."""
        f: Callable[[np.ndarray], float] = {
            "sram": lambda x: float(self.sram(x)),
            "flash": lambda x: float(self.flash(x)),
            "weights": lambda x: float(self.stored(x)),
            "macs": lambda x: float(self.macs(x)),
        }[resource]
        k = np.asarray(k, float)
        base = f(k)
        # No group is priced below one channel: a step at most down to one, at least one channel.
        steps = np.clip(np.minimum(step, k - 1), 1, None)
        return np.array([(base - f(k - steps[i] * np.eye(len(k))[i])) / steps[i] for i in range(len(k))])


def site_weights(
    plan: ChannelPlan, groups: tuple[int, ...], shapes: Mapping[tuple[int, int], tuple[int, ...]]
) -> dict[tuple[int, int], Product]:
    """The elements of each constant weight (binding, argument) -> shape, as a :class:`Product` of the
    kept counts of ``groups``: an axis the plan indexes by channels keeps, of each group, the channels'
    share of its positions (a flattened feature axis holds several per channel); the others keep their
    size. Its bytes at ``b`` bits are ``b / 8`` of it. Exact at full width, and at any width where a
    group's channels occur equally often on the axis (every case the plan makes)."""
    at = {gid: i for i, gid in enumerate(groups)}
    size = {g.gid: len(g.units) for g in plan.groups}
    of_unit = plan.group_of_unit()
    indexed: dict[tuple[int, int], dict[int, tuple[int, ...]]] = {}
    for site in plan.sites:
        indexed.setdefault((site.binding, site.arg), {})[site.axis] = site.nodes
    out: dict[tuple[int, int], Product] = {}
    for key, shape in sorted(shapes.items()):
        factors = []
        for axis, n in enumerate(shape):
            coef = np.zeros(len(groups))
            for node in indexed.get(key, {}).get(axis, ()):
                gid = of_unit.get(plan.unit_of[node])
                if gid in at:
                    coef[at[gid]] += 1.0 / size[gid]
            factors.append(Affine(float(n), coef))
        out[key] = Product(1.0, tuple(factors))
    return out


# Array helpers that work for numpy arrays and torch tensors alike.


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _like(a: np.ndarray, x: Any) -> Any:
    if _is_torch(x):
        import torch

        return torch.as_tensor(a, dtype=x.dtype)
    return a


def _dot(a: np.ndarray, dk: Any) -> Any:
    """``a @ dk`` for a vector or a matrix ``a``."""
    return _like(a, dk) @ dk


def _add(a: np.ndarray, x: Any) -> Any:
    return _like(a, x) + x


def _max(x: Any) -> Any:
    return x.max()


def _min(xs: list[Any]) -> Any:
    if _is_torch(xs[0]):
        import torch

        return torch.stack(xs).min()
    return min(xs)


def _sum(xs: list[Any]) -> Any:
    total: Any = 0.0
    for x in xs:
        total = total + x
    return total


# Building the model by probing the compiler.


def export(mod: _tvm.IRModule, imported: ImportedModel) -> Any:
    """``mod`` (inference form of ``imported``) as an ONNX ModelProto with the original's interface."""
    from tvm_mcu.frontend.onnx_export import export_onnx

    return export_onnx(
        mod,
        input_names=[s.name for s in imported.inputs],
        output_names=[s.name for s in imported.outputs],
        model_name=imported.name,
    )


def deployable(
    mod: _tvm.IRModule,
    imported: ImportedModel,
    workdir: Path,
    *,
    int8: bool,
    tag: str,
    bits: Mapping[tuple[int, int], int] | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write ``mod`` as the ONNX file that would be deployed (quantised with seeded data for int8, or
    ``calibration``). ``bits``: the weights' widths, 4 or 8 per constant (binding, argument) of ``mod``
    (``train.bits``): those at 4 are written int4 (int8 activations, every other weight int8)."""
    from tvm_mcu.ptq import quantize_onnx

    path = workdir / f"{tag}.onnx"
    proto = export(mod, imported)
    path.write_bytes(proto.SerializeToString())
    if not int8:
        return path
    if calibration is None:
        rng = np.random.default_rng(0)
        calibration = {
            s.name: rng.standard_normal((8, *s.shape[1:])).astype(np.float32) for s in imported.inputs
        }
    qpath = workdir / f"{tag}_int8.onnx"
    if bits and any(b != 8 for b in bits.values()):
        given = initializer_bits(mod, proto, bits)
        quantize_onnx(path, calibration, qpath, weights="mixed", weight_bits=given)
    else:
        quantize_onnx(path, calibration, qpath)
    return qpath


def initializer_bits(mod: _tvm.IRModule, proto: Any, bits: Mapping[tuple[int, int], int]) -> dict[str, int]:
    """``bits`` by the name of the initializer ``export`` wrote each weight as: the one holding its
    values (a dense layer's transposed, as Gemm's B)."""
    from onnx import numpy_helper

    from tvm_mcu.analysis.channels import bindings

    binds = bindings(mod["main"])
    inits = [(i.name, numpy_helper.to_array(i)) for i in proto.graph.initializer]
    out: dict[str, int] = {}
    for (b, a), width in sorted(bits.items()):
        value = _tvm.const_value(binds[b].value.args[a])
        names = [
            n
            for n, v in inits
            if n not in out and any(v.shape == w.shape and np.array_equal(v, w) for w in (value, value.T))
        ]
        if not names:
            raise AssertionError(
                f"the exported model holds no initializer equal to the weight of binding {b}"
            )
        out[names[0]] = width
    return out


@attrs.frozen
class _Probe:
    weights: dict[str, tuple[int, ...]]
    itemsize: dict[str, int]
    blocks: dict[str, list[tuple[int, ...]]]  # step -> extents of each MAC block
    buffers: dict[str, dict[str, int]]  # schedule label -> buffer -> bytes
    io: dict[str, int]
    extra: dict[str, float]  # schedule label -> estimated extra instructions besides accumulating passes
    accumulate: dict[str, tuple[tuple[str, int], ...]]  # schedule label -> (consumer step, slice)
    candidates: tuple[choice.Candidate, ...]
    costs: cost.Costs


def _probe(path: Path) -> _Probe:
    model = load_model(path)
    s = compiler.plan_schedules(model.mod, model_name=model.name, rounding="onnx")
    funcs = {gv.name_hint: f for gv, f in s.fused.functions_items() if isinstance(f, _tvm.PrimFunc)}
    weights = {n: t.shape for n, t in s.graph.tensors.items() if t.kind == "weight"}
    itemsize = {n: dtype_bytes(t.dtype) for n, t in s.graph.tensors.items()}
    blocks = {st.name: mac_blocks(funcs[st.callee]) for st in s.graph.steps if st.callee in funcs}
    buffers = {c.label: {b.name: b.size for b in c.plan.buffers} for c in s.candidates}
    io = {c.label: c.io_bytes for c in s.candidates}
    macs = s.macs[LAYER_BY_LAYER]
    costs = cost.for_model(s.graph, compiler.channels_last(model.mod))
    total = costs.instructions(macs)
    extra = {
        c.label: (c.extra_instructions - _chains(c) * costs.chain_overhead) * total
        - sum(costs.per_accumulator_pass * macs[n] / k for n, k in _accumulating(c, macs))
        for c in s.candidates
    }
    accumulate = {c.label: _accumulating(c, macs) for c in s.candidates}
    return _Probe(weights, itemsize, blocks, buffers, io, extra, accumulate, s.candidates, costs)


def _get(d: Mapping[str, float], key: str) -> float | None:
    return float(d[key]) if key in d else None


def _accumulating(c: choice.Candidate, macs: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """(consumer step, slice) of each accumulating chain of ``c`` (the compiler's overhead terms)."""
    out = []
    for st in c.graph.steps:
        spec = dict(part.split("=", 1) for part in st.partial.split(":")[1:] if "=" in part)
        if spec.get("accumulate") == "1":
            consumer = next(n for n in reversed(st.chain) if macs.get(n, 0))
            out.append((consumer, int(spec["slice"])))
    return tuple(out)


def _chains(c: choice.Candidate) -> int:
    return sum(1 for st in c.graph.steps if st.chain)


def _affine(base: float, probed: list[float | None], delta: np.ndarray) -> Affine:
    """From the value at full width and, per group, the value with that group ``delta`` narrower
    (None: the probe has no such value, taken as not depending on the group)."""
    coef = np.array([0.0 if v is None else (base - v) / d for v, d in zip(probed, delta, strict=True)])
    return Affine(float(base), coef)


def build(
    mod: _tvm.IRModule,
    plan: ChannelPlan,
    imported: ImportedModel,
    board: str,
    *,
    int8: bool = True,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ResourceModel:
    """Probe the compiler at full width and with each prunable group halved (see the module doc)."""
    from tvm_mcu import api

    groups = tuple(g for g in plan.prunable if g.size >= 2)
    full = np.array([g.size for g in groups], float)
    narrow = np.array([g.size // 2 for g in groups], float)
    delta = full - narrow
    with tempfile.TemporaryDirectory(prefix="tvm-mcu-resources-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        base_path = deployable(mod, imported, work, int8=int8, tag="full")
        base = _probe(base_path)
        flash = {}
        for i, c in enumerate(base.candidates):
            built = api.compile_model(base_path, board, work / f"code{i}", schedule=c.label)
            flash[c.label] = built.report.flash_bytes
        default = api.compile_model(base_path, board, work / "code").report
        probes = []
        probe_code = []
        for i, g in enumerate(groups):
            if progress:
                progress(f"resource model: probing group {g.gid} ({g.label}), {i + 1} of {len(groups)}")
            keep = {g.gid: tuple(range(int(narrow[i])))}
            path = deployable(PruneChannels(keep=keep)(mod), imported, work, int8=int8, tag=f"probe{g.gid}")
            probes.append(_probe(path))
            labels = {c.label for c in probes[-1].candidates}
            left_over = _left_over_width(g.size)
            if left_over != int(narrow[i]):
                keep = {g.gid: tuple(range(left_over))}
                path = deployable(
                    PruneChannels(keep=keep)(mod), imported, work, int8=int8, tag=f"code{g.gid}"
                )
            probe_report = api.compile_model(
                path,
                board,
                work / f"code_probe{g.gid}",
                schedule=default.schedule if default.schedule in labels else None,
            ).report
            probe_code.append(float(probe_report.flash_bytes - probe_report.weights_bytes))

    def dims(get: Callable[[_Probe], tuple[int, ...] | None]) -> tuple[Affine, ...]:
        ref = get(base)
        assert ref is not None
        shapes = [sh if sh is not None and len(sh) == len(ref) else None for sh in map(get, probes)]
        return tuple(
            _affine(n, [None if sh is None else float(sh[axis]) for sh in shapes], delta)
            for axis, n in enumerate(ref)
        )

    def weight(n: str) -> Callable[[_Probe], tuple[int, ...] | None]:
        return lambda p: p.weights.get(n)

    weights = tuple(Product(float(base.itemsize[n]), dims(weight(n))) for n in sorted(base.weights))
    blocks, block_steps = [], []
    for step, blist in sorted(base.blocks.items()):
        for j in range(len(blist)):
            block_steps.append(step)

            def block(p: _Probe, step: str = step, j: int = j) -> tuple[int, ...] | None:
                b = p.blocks.get(step, [])
                return b[j] if j < len(b) else None

            blocks.append(Product(1.0, dims(block)))
    weight_bytes = sum(w(np.zeros(len(groups))) for w in weights)
    schedules = []
    for c in base.candidates:
        names = [b.name for b in c.plan.buffers]
        sizes = []
        for b in c.plan.buffers:
            seen = [p.buffers.get(c.label, {}).get(b.name) for p in probes]
            sizes.append(_affine(b.size, [None if v is None else float(v) for v in seen], delta))
        io = _affine(c.io_bytes, [_get(p.io, c.label) for p in probes], delta)
        extra = _affine(base.extra[c.label], [_get(p.extra, c.label) for p in probes], delta)
        steps = len(c.graph.steps)
        incidence = np.zeros((steps, len(names)))
        for j, b in enumerate(c.plan.buffers):
            incidence[b.start : b.end + 1, j] = 1.0
        base_sizes = np.array([s.base for s in sizes]).reshape(len(names))
        live_base = incidence @ base_sizes + io.base
        coef = np.array([s.coef for s in sizes]).reshape(len(names), len(groups))
        live_coef = incidence @ coef + io.coef
        peak = max(live_profile(c.plan.buffers, steps)) + c.io_bytes
        assert abs(peak - float(live_base.max())) < 1e-6
        schedules.append(
            ScheduleModel(
                c.label,
                live_base,
                live_coef,
                c.sram_bytes / peak,
                tuple(s.name for s in c.graph.steps),
                tuple((b.name, b.start, b.end) for b in c.plan.buffers),
                tuple(sizes),
                io,
                _chains(c),
                extra,
                base.accumulate[c.label],
                int(flash[c.label] - weight_bytes),
            )
        )
    return ResourceModel(
        tuple(g.gid for g in groups),
        tuple(g.label for g in groups),
        full,
        weights,
        tuple(blocks),
        tuple(block_steps),
        tuple(schedules),
        board,
        int8,
        base.costs,
        remainder_code=tuple(
            max(0.0, c - float(default.flash_bytes - default.weights_bytes)) for c in probe_code
        ),
    )


class Bitwidths(Protocol):
    """Which weights are int8 now: a number per weight of ``keys`` (1 int8, 0 int4 or int2, the part of
    the bytes ``low_part`` says), as a torch tensor with gradients for a loss (``grad=True``) or as numpy
    for figures."""

    keys: list[tuple[int, int]]

    def int8(self, grad: bool) -> Any: ...

    def low_part(self, grad: bool) -> Any:
        """Per weight, the part of its int8 bytes its width below int8 stores (1/2 int4, 1/4 int2)."""
        ...


@attrs.frozen
class BitsModel(ResourceModel):
    """The resource model with each layer's weight bitwidth: stored weights (and flash) less half the
    int8 bytes of every int4 weight stored packed (two per byte), three quarters of every int2 one (four
    per byte).
    ``elements``: each gated weight's elements as a function of the kept channels (:func:`site_weights`);
    ``packed``: the weights whose kernels read int4 packed (the others are stored a byte each whatever
    their bits)."""

    elements: Mapping[tuple[int, int], Product] = attrs.field(factory=dict, eq=False)
    packed: frozenset[tuple[int, int]] = frozenset()
    bitwidths: Bitwidths | None = attrs.field(default=None, eq=False)

    def stored(self, k: Any) -> Any:
        out = super().stored(k)
        if self.bitwidths is None:
            return out
        dk = k - _like(self.full, k)
        int8 = self.bitwidths.int8(_is_torch(k))
        low = self.bitwidths.low_part(_is_torch(k))
        saved = [
            (1 - low[i]) * (1 - int8[i]) * self.elements[key](dk)
            for i, key in enumerate(self.bitwidths.keys)
            if key in self.packed and key in self.elements
        ]
        return out - _sum(saved) if saved else out


def with_bits(
    model: ResourceModel,
    elements: Mapping[tuple[int, int], Product],
    packed: frozenset[tuple[int, int]],
    bitwidths: Bitwidths,
) -> BitsModel:
    """``model`` pricing flash by ``bitwidths`` (see :class:`BitsModel`)."""
    fields = {f.name: getattr(model, f.name) for f in attrs.fields(type(model)) if f.init}
    fields.update(elements=elements, packed=packed, bitwidths=bitwidths)
    return BitsModel(**fields)


def _left_over_width(size: int) -> int:
    """A kept count whose firmware holds the code of channels left over beyond blocks of
    ``CHANNEL_BLOCK``: half, one less when that is a multiple of ``CHANNEL_BLOCK``."""
    half = size // 2
    return half - 1 if half % CHANNEL_BLOCK == 0 and half > 1 else half


@attrs.frozen
class Check:
    """One configuration: predicted and compiled figures."""

    widths: tuple[int, ...]
    predicted: Figures
    compiled: Figures

    def errors(self) -> dict[str, float]:
        return {
            r: abs(getattr(self.predicted, r) - getattr(self.compiled, r)) / getattr(self.compiled, r)
            for r in ("sram", "flash", "macs", "weights")
        }


def check(
    model: ResourceModel,
    mod: _tvm.IRModule,
    imported: ImportedModel,
    configs: list[dict[int, tuple[int, ...]]],
    workdir: Path,
) -> list[Check]:
    """Compile each ``keep`` configuration for the board (with the model's SRAM budget, if any) and
    compare with the model's predictions."""
    from tvm_mcu import api

    out = []
    for i, keep in enumerate(configs):
        k = model.counts(keep)
        path = deployable(PruneChannels(keep=keep)(mod), imported, workdir, int8=model.int8, tag=f"check{i}")
        budget = None if model.sram_budget is None else int(model.sram_budget)
        r = api.compile_model(path, model.board, workdir / f"check{i}_build", sram_budget=budget).report
        sram, weights = float(r.arena_bytes + r.io_bytes), float(r.weights_bytes)
        compiled = Figures(sram, float(r.flash_bytes), float(r.macs), r.schedule, weights)
        out.append(Check(tuple(int(x) for x in k), model.figures(k), compiled))
    return out
