"""``tvm-mcu prune``: fit a float CNN to a board's budgets by removing channel groups, then fine-tune.

The model goes to Relax (inference form), :func:`tvm_mcu.analysis.channels.channel_groups` finds the
prunable groups, a search picks how many channels each keeps, :class:`PruneChannels` removes them, and
the result is written back as ONNX (which ``tvm-mcu quantize`` and ``compile`` read unchanged).

Resources are *measured*, not estimated: every candidate width is exported, quantised with seeded
calibration data (int8 deployment, the default; scales do not change shapes, schedules or sizes),
compiled by the same compiler with its own schedule choice, and built for the board. SRAM is the arena
plus the input and output buffers (the stack comes on top and is measured when the model runs), flash
is the firmware's text + rodata + data, MACs are the compiled operators'.

Methods (the same budget and epochs for each):
  ``diff``     DiffPrune (:mod:`tvm_mcu.train.diffprune`): gates trained with the task loss and budget
               losses from the differentiable resource model (:mod:`tvm_mcu.resource_model`), pruning
               while the model trains (the first half of the epochs), then fine-tuning (the second).
               Without data (``epochs=0``) it falls back to ``l1``.
  ``l1``       L1-norm filter pruning (Li et al., 2017): every group keeps the same fraction of its
               channels, those whose producing weights have the largest L1 norms. (A single global
               threshold on relative norms left MobileNetV2-style groups with 1 of 96 channels and a
               network stuck at chance that fine-tuning could not revive.)
  ``uniform``  every group keeps the same fraction of its channels, the first ones (width scaling).
``l1`` and ``uniform`` search their level by bisection on measured candidates, then fine-tune.

Those prune channels (``granularity="channel"``, the default). ``filterlet``, ``mixed`` and
``unstructured`` zero filterlets or single weights instead, ranked by ``importance``
(:mod:`tvm_mcu.prune_sparse`, which says which figures their search holds to the budget).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import numpy as np

from tvm_mcu import _tvm, api, ops, pipeline, resource_model, speculative
from tvm_mcu.analysis.channels import ChannelPlan, channel_groups, magnitudes
from tvm_mcu.distributed import Workers
from tvm_mcu.errors import BadOptionError, BudgetError, UnsupportedOpError
from tvm_mcu.frontend import ImportedModel, load_model
from tvm_mcu.outputs import output_file
from tvm_mcu.passes.relax.prune_channels import PruneChannels
from tvm_mcu.progress import Bar
from tvm_mcu.schedule import cost
from tvm_mcu.schedule.choice import parse_bytes

if TYPE_CHECKING:
    from tvm_mcu.train.bridge import RelaxModule
    from tvm_mcu.train.diffprune import Gates

logger = logging.getLogger(__name__)
T = TypeVar("T")

METHODS = ("diff", "l1", "uniform", "udc")
# Bisection steps of the search; each measures one candidate (export, quantise, compile, build).
SEARCH_STEPS = 9


@attrs.frozen
class Budget:
    sram: int | None = None
    flash: int | None = None
    macs: int | None = None
    # Instructions of one inference as the cost model prices the kernels (tvm_mcu.schedule.cost: the
    # channels-last SIMD kernels, dense or sparse); QEMU's count of the result is reported beside it.
    instructions: int | None = None
    # The weights as the compiler stores them (Report.stored_weights_bytes: dense, blocked or sparse),
    # apart from the code: a budget in flash has the code and runtime as a floor that a deep cut of the
    # weights cannot go under, this one is the weights alone.
    weights: int | None = None


_PART_NAMES = {"export": "writing ONNX", "train": "training", "int8": "the int8 build"}


def _check_ops(name: str, mod: _tvm.IRModule, parts: tuple[str, ...]) -> None:
    """Refuse, before any work, a model with an op that some part of ``parts`` has no rule for; each
    refusal names the ONNX node(s) the op came from when the importer recorded them."""
    func = mod["main"]
    nodes: dict[str, list[str]] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            node = _tvm.provenance(func, b.var)

            def seen(call: Any, node: str | None = node) -> None:
                listed = nodes.setdefault(_tvm.op_name(call) or "", [])
                if node and node not in listed:
                    listed.append(node)

            _tvm.structural_walk(b.value, (_tvm.RelaxCall, seen))
    refused = ops.refusals(parts, sorted(set(nodes) - {""}))
    if refused:
        listed = "; ".join(
            f"{_where(op, nodes[op])} ({_PART_NAMES[part]}): {reason}" for op, part, reason in refused
        )
        raise UnsupportedOpError(f"prune cannot take {name}: {listed}")


def _where(op: str, nodes: list[str]) -> str:
    """``Pad 'p1'`` (relax.call_tir), or the op alone when no ONNX node is known."""
    if not nodes:
        return op
    more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
    return f"{', '.join(nodes[:3])}{more} ({op})"


def parse_budget(text: str) -> Budget:
    """``"sram=24KiB,flash=64KiB,macs=2M,weights=8KiB,instructions=5M"`` (any subset) -> Budget; MACs
    and instructions take k/M/G (powers of 1000); ``weights`` are the stored weight bytes
    (:class:`Budget`)."""
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key not in ("sram", "flash", "macs", "weights", "instructions") or not value:
            raise BadOptionError(
                f"cannot read budget {part!r}: write e.g. sram=24KiB,flash=64KiB,macs=2M,weights=8KiB,"
                "instructions=5M"
            )
        if key in values:
            raise BadOptionError(f"budget {key} given twice")
        try:
            values[key] = _count(value) if key in ("macs", "instructions") else parse_bytes(value)
        except ValueError as exc:
            raise BadOptionError(f"budget {key}: {exc}") from exc
    if not values:
        raise BadOptionError(
            "empty budget: give at least one of sram=, flash=, macs=, weights=, instructions="
        )
    return Budget(**values)


def _count(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", text)
    if m is None:
        raise ValueError(f"cannot read {text!r} as a count; write e.g. 2M, 500k or 1500000")
    return int(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()])


@attrs.frozen
class Resources:
    """Measured figures of one compiled candidate."""

    sram: int  # arena + inputs/outputs
    flash: int  # firmware text + rodata + data
    macs: int
    schedule: str
    bottleneck: str = ""  # the largest activation of the compiled graph ("a conv2d output of 900 B")
    weights: int = 0  # the weights as stored (Report.stored_weights_bytes), part of ``flash``
    # Estimated by the cost model (Budget.instructions), not measured: the dense kernels' per MAC, less
    # what sparse storage saves as counted (prune_sparse.candidate_figures).
    instructions: int = 0

    def excess(self, budget: Budget) -> list[tuple[str, int, int]]:
        """(resource, value, limit) for each budget exceeded."""
        pairs = (
            ("sram", self.sram, budget.sram),
            ("flash", self.flash, budget.flash),
            ("macs", self.macs, budget.macs),
            ("instructions", self.instructions, budget.instructions),
            ("weights", self.weights, budget.weights),
        )
        return [(k, v, lim) for k, v, lim in pairs if lim is not None and v > lim]


@attrs.frozen
class Training:
    """Fine-tuning after pruning: held-out accuracy of the original, the pruned and the fine-tuned model."""

    data: str
    epochs: int
    accuracy_before: float
    accuracy_pruned: float
    accuracy_after: float
    seconds_per_epoch: tuple[float, ...]
    test_samples: int


@attrs.frozen
class PruneResult:
    keep: dict[int, tuple[int, ...]]
    plan: ChannelPlan
    before: Resources
    after: Resources  # the figures held to the budget (sparse granularities: flash and MACs counted)
    method: str  # channel: diff, l1 or uniform; sparse granularities: the importance
    widths: dict[str, tuple[int, int]]  # group label -> (kept, of)
    training: Training | None = None
    granularity: str = "channel"
    importance: str = ""  # taylor or magnitude (sparse granularities)
    # Sparse granularities: layer -> (kept, of) filterlets (filterlet, mixed) or elements (unstructured).
    sparsity: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    # Sparse granularities: the written model as the compiler builds it today (see prune_sparse).
    measured: Resources | None = None
    scheduler: str = "global"  # filterlet, mixed: how the cut was spread over the layers
    search: str = ""  # what the scheduler did, one line
    channels_last: bool = False  # every figure compiled channels-last (sparse: measured, not counted)
    # Measurement rounds (one compile each serially; up to --workers at once, speculated) and compiles.
    rounds: int = 0
    compiles: int = 0
    # ``--weights int4`` / ``--method udc``: each layer's weight width in the written QDQ model.
    bits: dict[str, int] = attrs.field(factory=dict)

    @property
    def unit(self) -> str:
        """What ``sparsity`` counts: "filterlets", "elements", or "" for channel pruning."""
        from tvm_mcu.prune_sparse import UNIT, UNIT_NAME

        return UNIT_NAME[UNIT[self.granularity]] if self.granularity in UNIT else ""


def result_json(result: PruneResult, budget: Budget) -> dict[str, object]:
    sparse = result.granularity != "channel"
    return {
        "method": result.method,
        "granularity": result.granularity,
        "importance": result.importance or None,
        "budget": attrs.asdict(budget),
        "before": attrs.asdict(result.before),
        "after": attrs.asdict(result.after),
        # Which figures "after" holds: flash and MACs counted in the compact formats, or all measured.
        "after_figures": "counted flash and MACs, measured SRAM"
        if sparse and not result.channels_last
        else "measured",
        "channels_last": result.channels_last,
        "measured": attrs.asdict(result.measured) if result.measured else None,
        "widths": {k: list(v) for k, v in result.widths.items()},
        "sparsity": {
            k: {"kept": kept, "of": of, "fraction": kept / of if of else 1.0, "unit": result.unit}
            for k, (kept, of) in result.sparsity.items()
        },
        "scheduler": result.scheduler if sparse else None,
        "search": result.search or None,
        "plan": str(result.plan),
        "training": attrs.asdict(result.training) if result.training else None,
        "weight_bits": dict(result.bits) or None,
    }


def training_lines(result: PruneResult) -> list[str]:
    t = result.training
    if t is None:
        if result.granularity != "channel":
            return [
                f"no fine-tuning (--epochs 0): {result.unit} chosen by {result.importance} importance alone"
            ]
        return ["no fine-tuning (--epochs 0): channels chosen by weight magnitude alone"]
    per = ", ".join(f"{s:.1f}" for s in t.seconds_per_epoch)
    return [
        f"accuracy on {t.test_samples} held-out {t.data} samples: {t.accuracy_before:.4f} before, "
        f"{t.accuracy_pruned:.4f} pruned, {t.accuracy_after:.4f} after {t.epochs} epochs of fine-tuning",
        f"seconds per epoch: {per}",
    ]


def keep_channels(
    plan: ChannelPlan, score: dict[int, float], method: str, level: float, quantum: int = 1
) -> dict[int, tuple[int, ...]]:
    """Channels kept per prunable group at ``level`` in [0, 1] (1 keeps everything), a multiple of
    ``quantum`` (or all)."""
    keep = {}
    for g in plan.prunable:
        # level 1 keeps all; level 0 keeps one channel per group (one quantum).
        k = max(1, int(round(level * g.size)))
        k = min(g.size, -(-k // quantum) * quantum)
        if method == "uniform":
            keep[g.gid] = tuple(range(k))
            continue
        s = np.array([score.get(u, 0.0) for u in g.units])
        strongest = np.argsort(-s, kind="stable")[:k]  # ties: the first channels
        keep[g.gid] = tuple(sorted(int(c) for c in strongest))
    return keep


@attrs.frozen
class Compile:
    """How every candidate of a pruning run is compiled and built for ``board``.

    With ``sram_budget`` the compiler takes the fastest schedule that fits it, as ``tvm-mcu compile
    --sram-budget`` would (without, it may prefer a faster schedule that needs more SRAM); when none
    fits, the figures of its default choice. ``channels_last``: compiled NHWC (``compile
    --channels-last``), where the compiler stores convolution weights with zeros sparse (filterlet or
    element CSR), so flash, stored weights and MACs are those of the sparse storage; NCHW (the
    default) stores every weight dense.
    """

    board: str
    int8: bool
    sram_budget: int | None = None
    channels_last: bool = False
    # Some weights int4 or int2: the compiler's own layout choice (channels-last, where packed weights are
    # read), as the written model compiles by default.
    int4: bool = False
    # ``compile --compress-weights``: "all" measures the weights stored Golomb-Rice coded.
    compress: str = "off"


def compiled_figures(path: str, build: str, how: Compile) -> Resources:
    """The figures of the deployable ONNX model at ``path`` compiled and built in ``build``: the part of
    :meth:`_Job.measure` that a worker runs (a Ray task with ``--workers``: plain arguments, no TVM
    object)."""
    compiled = api.compile_model(
        Path(path),
        how.board,
        Path(build),
        sram_budget=how.sram_budget,
        strict_budget=False,
        channels_last=True if how.channels_last else (None if how.int4 else False),
        compress=how.compress,
    )
    r = compiled.report
    biggest = max(r.ops, key=lambda o: o.output_bytes, default=None)
    return Resources(
        r.arena_bytes + r.io_bytes,
        r.flash_bytes,
        r.macs,
        r.schedule,
        f"a {biggest.kind} output of {biggest.output_bytes} B" if biggest else "",
        weights=r.stored_weights_bytes,
        instructions=round(r.macs * dense_per_mac(how.int8)),
    )


def dense_per_mac(int8: bool) -> float:
    """The dense kernels' instructions per MAC (the cost model's, channels-last: where the SIMD and
    sparse kernels run)."""
    return cost.INT8.per_mac if int8 else cost.FLOAT.per_mac


class Tally:
    """What a pruning run measured: rounds (one compile each serially, up to the workers' width at once
    with ``--workers``), compiles, and the workdir tags taken (a tag used again gets a suffix, so
    candidates compiled at once never share files)."""

    def __init__(self) -> None:
        self.rounds = 0
        self.compiles = 0
        self.tags: set[str] = set()

    def fresh(self, tag: str) -> str:
        unique, k = tag, 1
        while unique in self.tags:
            k += 1
            unique = f"{tag}_{k}"
        self.tags.add(unique)
        return unique


@attrs.frozen
class _Job:
    """What every step of one pruning run shares: the model in inference form, its plan, the board."""

    mod: _tvm.IRModule = attrs.field(eq=False)
    plan: ChannelPlan
    imported: ImportedModel
    board: str
    work: Path
    int8: bool
    distill: bool = False
    sram_budget: int | None = None  # compile for it (the schedule a deployment with the budget gets)
    seed: int = 0  # of every training run (sample order, initial state): a run is repeatable
    channels_last: bool = False  # compile NHWC, sparse weights stored sparse (measure)
    progress: bool = False  # a progress bar of the measured search on a terminal
    # Where the compiles run (serial, or Ray tasks: --workers, --ray-address), and what they counted.
    workers: Workers = attrs.field(factory=Workers, eq=False)
    tally: Tally = attrs.field(factory=Tally, eq=False)
    # The weights' widths every candidate is quantised to (``--weights int4``), by (binding, argument);
    # None: int8.
    bits: Mapping[tuple[int, int], int] | None = attrs.field(default=None, eq=False)
    # ``prune --compress-weights``: every candidate compiled with its weights Golomb-Rice coded.
    compress: str = "off"

    @property
    def quantum(self) -> int:
        """Kept channel counts are multiples of this: int4 weights pack only in whole blocks."""
        from tvm_mcu.prune_bits import QUANTUM

        return QUANTUM if self.bits else 1

    def measure(
        self, mod: _tvm.IRModule, tag: str, bits: Mapping[tuple[int, int], int] | None = None
    ) -> Resources:
        """Export ``mod`` to ONNX, quantise it (int8), compile and build it (:meth:`measure_all`)."""
        return self.measure_all([(mod, tag)], bits)[0]

    def measure_all(
        self,
        candidates: Sequence[tuple[_tvm.IRModule, str]],
        bits: Mapping[tuple[int, int], int] | None = None,
    ) -> list[Resources]:
        """The figures of each (module, tag), in one round: exported to ONNX and quantised with seeded
        calibration data (int8; weights at ``bits``, by default the job's) here, one after another,
        each compiled and built (:class:`Compile`) by a worker as soon as it is written (serially: in
        turn). The tag names its files in the workdir."""
        widths = self.bits if bits is None else bits
        int4 = any(b < 8 for b in (widths or {}).values())
        how = Compile(self.board, self.int8, self.sram_budget, self.channels_last, int4, self.compress)
        handles = []
        for mod, tag in candidates:
            tag = self.tally.fresh(tag)
            path = resource_model.deployable(
                mod, self.imported, self.work, int8=self.int8, tag=tag, bits=widths
            )
            build = str(self.work / f"{tag}_build")
            handles.append(self.workers.submit(compiled_figures, str(path), build, how))
        self.tally.rounds += 1
        self.tally.compiles += len(handles)
        return self.workers.gather(handles)

    @property
    def width(self) -> int:
        """Candidates measured at once (the speculative searches' width)."""
        return self.workers.width


def _describe(excess: list[tuple[str, int, int]]) -> str:
    return "; ".join(f"{k} {v:,} > {lim:,} ({v - lim:,} over)" for k, v, lim in excess)


def prune_model(
    model_path: Path,
    *,
    board: str,
    budget: Budget,
    method: str | None = None,
    out_path: Path,
    int8: bool = True,
    workdir: Path | None = None,
    data: str | None = None,
    epochs: int = 0,
    search_steps: int = SEARCH_STEPS,
    train_limit: int | None = None,
    sram_model: str = "compiler",
    progress: bool = False,
    resources: resource_model.ResourceModel | None = None,
    distill: bool = False,
    seed: int = 0,
    granularity: str = "channel",
    importance: str | None = None,
    scheduler: str | None = None,
    channels_last: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
    weights: str = "int8",
    compress_weights: str = "off",
) -> PruneResult:
    """Prune the float ONNX model at ``model_path`` until its compiled figures meet ``budget`` on
    ``board``; write the pruned (and, with ``epochs`` on ``data``, fine-tuned) model to ``out_path``.

    ``sram_model`` (diff only): "compiler" prices SRAM by the schedule the compiler would choose
    (partial execution included, the Pex co-design); "whole" by the layer-by-layer whole-buffer peak.
    ``resources``: the model's resource model built before (``resource_model.build``), to reuse.
    ``distill``: every training run of the pruned network (any method) learns from the original's
    outputs as well as the labels (knowledge distillation).
    ``seed``: of every training run (sample order and torch's state); the same seed gives the same model.
    ``granularity``: "channel" (``method``: diff by default, l1, uniform), or "filterlet", "mixed",
    "unstructured" ranked by ``importance`` ("taylor", the default with ``data``; "magnitude");
    :func:`tvm_mcu.prune_sparse.check_options` refuses a method with a sparse granularity and an
    importance with channels.
    ``channels_last``: every candidate is compiled NHWC (``compile --channels-last``), as the model is
    then to be deployed; sparse granularities are then held to the measured flash of the compiler's
    sparse storage rather than to counted figures (:func:`tvm_mcu.prune_sparse.candidate_figures`).
    ``workers`` / ``ray_address``: the candidates are compiled and built as Ray tasks
    (:mod:`tvm_mcu.distributed`; the ``distributed`` extra), on a local Ray with ``workers`` CPUs or on
    the cluster at ``ray_address`` (then ``workdir`` must be on storage every node sees), and the
    bisections measure that many candidates a round (:mod:`tvm_mcu.speculative`): the same result as
    serially, in fewer rounds (``PruneResult.rounds``). Neither: serial, in this process.
    ``weights="int4"``: the model is deployed with int4 weights (``tvm-mcu quantize --weights int4``),
    budgeted and trained as such; ``weights="int2"``: int2 (ternary) where the compiler stores them four
    per byte (:func:`tvm_mcu.prune_bits.all_int2`), likewise; ``method="udc"``: the channels and each
    layer's width (int8, int4 or int2) searched together (:mod:`tvm_mcu.prune_bits`). Both write the quantised
    (QDQ) model, calibrated on ``data``, and train the network as quantised at its widths.
    ``compress_weights="all"``: the model is deployed with ``compile --compress-weights all``; every
    candidate is measured so (stored weights Golomb-Rice coded), and ``method="udc"`` then searches
    each layer's share of zero weights too (:func:`tvm_mcu.prune_sparse.udc_sparse`: zeros cost a bit
    each when coded).
    """
    from tvm_mcu import prune_bits
    from tvm_mcu.prune_sparse import UDC_IMPORTANCE, check_options, check_scheduler, default_scheduler

    method, importance = check_options(granularity, method, importance, data)
    if scheduler is None:
        scheduler = default_scheduler(granularity, data, epochs)
    check_scheduler(granularity, scheduler, data, epochs)
    prune_bits.check(method, weights, int8, granularity, data, epochs)
    if compress_weights not in ("off", "all"):
        raise BadOptionError(f"--compress-weights is off or all, got {compress_weights!r}")
    if compress_weights == "all" and not int8:
        raise BadOptionError("--compress-weights codes int8 weights: drop --float")
    if granularity == "channel" and budget.instructions is not None:
        # Channels keep the dense kernels, whose instructions the cost model prices per MAC: the
        # instructions budget is a MACs budget for the channel search.
        cap = int(budget.instructions / dense_per_mac(int8))
        budget = attrs.evolve(budget, macs=min(cap, budget.macs or cap), instructions=None)
    if granularity == "channel" and method not in METHODS:
        raise BadOptionError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    out_path = output_file(Path(out_path))
    if epochs > 0 and data is None:
        raise BadOptionError("training (--epochs N) needs --data")
    imported = load_model(Path(model_path))
    if imported.format != "onnx":
        raise BadOptionError(f"{model_path}: prune takes a float ONNX model (then quantise the result)")
    if any(s.dtype != "float32" for s in imported.inputs) or _is_quantized(imported.mod):
        raise BadOptionError(f"{model_path} is quantised: prune the float model, then quantise the result")
    mod = pipeline.run(pipeline.inference_passes(), imported.mod)
    if method == "diff" and epochs == 0:
        method = "l1"  # no data to train the gates on: weight magnitude alone
    # Every op must be exportable (the result is written as ONNX), trainable when it is trained, and have
    # an integer lowering when the figures are int8: checked now, not after the search.
    trains = epochs > 0 or importance == "taylor"  # Taylor importance needs the model's gradients
    parts = ("export", *(("train",) if trains else ()), *(("int8",) if int8 else ()))
    _check_ops(imported.name, mod, parts)
    plan = channel_groups(mod)
    with (
        tempfile.TemporaryDirectory(prefix="tvm-mcu-prune-") as tmp,
        Workers(workers=workers, address=ray_address) as pool,
    ):
        pool.preload(__name__)  # while the original is exported and measured
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        job = _Job(
            mod, plan, imported, board, work, int8, distill, budget.sram, seed, channels_last, progress, pool
        )
        if weights != "int8":
            job = attrs.evolve(job, bits=prune_bits.fixed_widths(weights, mod))
        if compress_weights != "off":
            job = attrs.evolve(job, compress=compress_weights)
        before = job.measure(mod, "original", bits={})  # as the user has it: int8
        start = job.measure(mod, "original_int4") if job.bits else before
        training: Training | None = None
        sparse = None
        search = ""
        chosen: dict[tuple[int, int], int] = dict(job.bits or {})
        if not start.excess(budget):
            keep, best, after = {g.gid: tuple(range(g.size)) for g in plan.prunable}, mod, start
            if epochs:
                best, training = _fine_tune(job, mod, data, epochs, train_limit)
        elif not plan.prunable:
            pinned = "; ".join(f"{g.label}: {g.reason}" for g in plan.groups[:6])
            more = f"; and {len(plan.groups) - 6} more" if len(plan.groups) > 6 else ""
            raise BudgetError(
                f"{imported.name} misses its budget ({_describe(before.excess(budget))}) and has no "
                f"prunable channel group ({pinned}{more})"
            )
        elif granularity != "channel":
            from tvm_mcu.prune_sparse import prune_sparse

            sparse = prune_sparse(
                job,
                budget,
                before,
                granularity,
                importance,
                data,
                epochs,
                train_limit,
                search_steps,
                scheduler,
                resources,
            )
            keep, best, after, training = sparse.keep, sparse.mod, sparse.after, sparse.training
        else:
            # The joint search may put any layer to int4, or int2 where the kernels read it: the narrowest
            # network is that one.
            _narrowest(attrs.evolve(job, bits=prune_bits.all_int2(mod)) if method == "udc" else job, budget)
            if method == "udc" and job.compress == "all":
                from tvm_mcu.prune_sparse import udc_sparse

                sparse, chosen = udc_sparse(
                    job, budget, before, data or "", epochs, train_limit, search_steps, resources
                )
                keep, best, after, training = sparse.keep, sparse.mod, sparse.after, sparse.training
            elif method == "udc":
                keep, best, after, training, chosen, search = _udc(
                    job, budget, before, data or "", epochs, train_limit, sram_model, progress, resources
                )
            elif method == "diff":
                mode = "fixed" if job.bits else None
                keep, best, after, training, chosen = _diff(
                    job,
                    budget,
                    before,
                    data or "",
                    epochs,
                    train_limit,
                    sram_model,
                    progress,
                    resources,
                    bits_mode=mode,
                )
            else:
                keep, best, after = _bisect(job, budget, method, search_steps)
                if epochs:
                    best, training = _fine_tune(job, best, data, epochs, train_limit)
        if chosen:
            written = _written_at_bits(best, imported, work, data, train_limit, chosen)
        else:
            written = resource_model.export(best, imported).SerializeToString()
    Path(out_path).write_bytes(written)
    widths = {g.label: (len(keep.get(g.gid, g.units)), g.size) for g in plan.prunable}
    rounds, compiles = job.tally.rounds, job.tally.compiles
    if granularity == "channel" and sparse is None:
        return PruneResult(
            keep,
            plan,
            before,
            after,
            method,
            widths,
            training,
            channels_last=channels_last,
            rounds=rounds,
            compiles=compiles,
            bits=prune_bits.describe(best, chosen),
            search=search,
        )
    udc = granularity == "channel"  # the joint search with element sparsity (udc_sparse)
    return PruneResult(
        keep,
        plan,
        before,
        after,
        method if udc else importance,
        widths,
        training,
        "unstructured" if udc else granularity,
        UDC_IMPORTANCE if udc else importance,
        sparse.sparsity if sparse else {},
        sparse.measured if sparse else after,
        sparse.scheduler if sparse else scheduler,
        sparse.search if sparse else "",
        channels_last or udc,
        rounds,
        compiles,
        bits=prune_bits.describe(best, chosen) if udc else {},
    )


def _written_at_bits(
    mod: _tvm.IRModule,
    imported: ImportedModel,
    work: Path,
    data: str | None,
    limit: int | None,
    bits: Mapping[tuple[int, int], int],
) -> bytes:
    """``mod`` quantised with its weights at ``bits``, calibrated on the first training inputs."""
    from tvm_mcu.prune_bits import calibration
    from tvm_mcu.train.data import load_dataset

    assert data is not None  # prune_bits.check
    ds = load_dataset(data, imported.inputs[0].shape, limit=limit)
    feeds = {imported.inputs[0].name: calibration(ds.x_train)}
    path = resource_model.deployable(
        mod, imported, work, int8=True, tag="result", bits=bits, calibration=feeds
    )
    return path.read_bytes()


def _narrowest(job: _Job, budget: Budget) -> None:
    """BudgetError when even one channel per prunable group misses the budget."""
    keep = {g.gid: tuple(range(min(g.size, job.quantum))) for g in job.plan.prunable}
    r = job.measure(PruneChannels(keep=keep)(job.mod), "narrowest")
    if r.excess(budget):
        raise BudgetError(
            f"{job.imported.name} cannot meet the budget on {job.board} at any width: with every prunable "
            f"group at its narrowest, {_describe(r.excess(budget))}; the largest activation is "
            f"{r.bottleneck} (schedule: {r.schedule})"
        )


Keep = dict[int, tuple[int, ...]]


Level = tuple[str, float]  # a candidate of a level search: its workdir tag, its level


def level_search(steps: int) -> Generator[Level, bool, Level]:
    """The search of :func:`_bisect` (:mod:`tvm_mcu.speculative`): the narrowest level first (the answer
    when no level fits; its verdict is unused), then :func:`bisection`."""
    narrowest = ("level0", 0.0)
    yield narrowest
    return (yield from bisection(narrowest, steps, "step"))


def bisection(narrowest: Level, steps: int, prefix: str) -> Generator[Level, bool, Level]:
    """Bisection of the level between ``narrowest``, known to fit, and 1: ``steps`` candidates tagged
    ``prefix`` and the step; the widest that fits (``narrowest`` when none does)."""
    best, lo, hi = narrowest, narrowest[1], 1.0
    for step in range(steps):
        point = (f"{prefix}{step}", (lo + hi) / 2)
        if (yield point):
            best, lo = point, point[1]
        else:
            hi = point[1]
    return best


def _bisect(job: _Job, budget: Budget, method: str, steps: int) -> tuple[Keep, _tvm.IRModule, Resources]:
    """The widest level of ``method`` whose measured figures meet the budget: bisection, ``steps``
    candidates after the narrowest, speculated ``job.width`` candidates a round (:mod:`speculative`)."""
    score = magnitudes(job.mod, job.plan)
    seen: dict[Level, tuple[Keep, _tvm.IRModule, Resources]] = {}

    rounds = speculative.bisection_rounds(steps + 1, job.width)
    with Bar(rounds, f"prune {method}", enabled=None if job.progress else False) as bar:

        def judge(points: list[Level]) -> list[bool]:
            keeps = [keep_channels(job.plan, score, method, level, job.quantum) for _, level in points]
            pruned = [PruneChannels(keep=keep)(job.mod) for keep in keeps]
            figures = job.measure_all([(p, tag) for p, (tag, _) in zip(pruned, points, strict=True)])
            for point, keep, p, r in zip(points, keeps, pruned, figures, strict=True):
                seen[point] = keep, p, r
                logger.info("prune %s level %.3f: %s", method, point[1], r)
            fits = [not r.excess(budget) for r in figures]
            bar.update(note=f"level {points[0][1]:.3f} {'fits' if fits[0] else 'over'}")
            return fits

        best = speculative.run(lambda: level_search(steps), judge, job.width)
    return seen[best]


# Fine-tuning after pruning (every method): Adam, cosine decay from this rate. Measured with BatchNorm
# folded in (before ``trainable`` put it back; not measured again since); the default 1e-3 recovered
# slowly: Fashion-MNIST CNN 32/64/128 cut to 3/15/31 channels, 2 epochs of 30k images: 0.62 at 1e-3,
# 0.71 at 3e-3, 0.76 at 1e-2, 0.72 at 3e-2.
FINE_TUNE_LR = 1e-2

# Batch size of fine-tuning (train()'s default, named for GradualMasks' step count).
TRAIN_BATCH = 128

# Attempts at tightening the model's budget when the compiled figures still miss the real one.
MAX_TIGHTEN = 6
# The cut's search stops once the widest scale that fits is this close to the narrowest that misses.
FIT_TOLERANCE = 0.05


def _diff(
    job: _Job,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: int,
    limit: int | None,
    sram_model: str,
    progress: bool,
    resources: resource_model.ResourceModel | None,
    fine_tune: bool = True,
    bits_mode: str | None = None,
) -> tuple[Keep, _tvm.IRModule, Resources, Training, dict[tuple[int, int], int]]:
    """DiffPrune for the first half of the epochs, then fine-tuning of the cut network (without
    ``fine_tune``, DiffPrune for all ``epochs`` and the cut network as it is); and the weights' widths.

    ``bits_mode``: "search" (``--method udc``): a bit gate per layer trained with the channel gates;
    "fixed": every layer at the job's widths (``--weights int4`` / ``int2``: priced and trained so);
    None: int8."""
    from tvm_mcu.train import require_torch

    require_torch()
    from tvm_mcu.train.bridge import write_back
    from tvm_mcu.train.data import load_dataset
    from tvm_mcu.train.diffprune import diffprune
    from tvm_mcu.train.loop import evaluate, train

    mod, plan, imported = job.mod, job.plan, job.imported
    resources = _resources_for(job, resources)
    # Candidates are compiled with the SRAM budget (see _Job.measure): model that choice.
    model = resources.restricted(sram_model).within(budget.sram)
    limits = _model_limits(budget, before, model)
    ds = load_dataset(data, imported.inputs[0].shape, limit=limit)
    module = trainable(mod, ds)
    acc_before, teacher = _teacher(job, ds)
    prune_epochs = max(1, epochs // 2) if fine_tune else epochs
    bit_gates = None
    from tvm_mcu.prune_bits import QUANTUM

    if bits_mode is not None:
        from tvm_mcu.prune_bits import gated_model

        bit_gates, model = gated_model(
            module, plan, model, mod, fixed=job.bits if bits_mode == "fixed" else None
        )
    gates, log = diffprune(
        module,
        plan,
        model,
        ds,
        limits,
        epochs=prune_epochs,
        progress=progress,
        prior=magnitudes(mod, plan),
        teacher=teacher,
        seed=job.seed,
        bits=bit_gates,
        quantum=QUANTUM if bit_gates is not None else 1,
    )
    acc_pruned = evaluate(module, ds.x_test, ds.y_test)
    module.taps = {}
    if bit_gates is not None:
        bit_gates.begin_step()  # the widths the gates hold now, which settle_weights quantises at
    module.settle_weights()  # the weights as trained at their widths (the quantiser calibrates on them)
    trained = write_back(mod, module)
    keep, pruned, after, attempts = _fit_compiled(job, budget, gates, trained, model, limits, bit_gates)
    chosen = bit_gates.bits() if bit_gates is not None else {}
    seconds = list(log.train.seconds)
    fine = trainable(pruned, ds)
    if chosen:
        from tvm_mcu.train.bits import hold_bits

        hold_bits(fine, chosen)  # trained as deployed: quantisation-aware
    acc_after = acc_pruned if attempts == 1 else evaluate(fine, ds.x_test, ds.y_test)
    if epochs > prune_epochs:
        tlog = train(
            fine,
            ds,
            epochs=epochs - prune_epochs,
            lr=FINE_TUNE_LR,
            progress=progress,
            teacher=teacher,
            seed=job.seed,
        )
        seconds += tlog.seconds
        acc_after = evaluate(fine, ds.x_test, ds.y_test)
        fine.settle_weights()
        pruned = write_back(pruned, fine)
    training = Training(data, epochs, acc_before, acc_pruned, acc_after, tuple(seconds), int(len(ds.y_test)))
    return keep, pruned, after, training, chosen


def _resources_for(job: _Job, resources: resource_model.ResourceModel | None) -> resource_model.ResourceModel:
    """``resources`` if it models ``job``'s board and arithmetic, else the job's model's, built now."""
    if resources is not None and resources.board == job.board and resources.int8 == job.int8:
        return resources
    return resource_model.build(
        job.mod,
        job.plan,
        job.imported,
        job.board,
        int8=job.int8,
        workdir=job.work / "resources",
        progress=(lambda m: logger.info("%s", m)),
    )


@attrs.frozen
class _Retrained:
    """UDC's two runs (:func:`_search_then_train`): the network trained at the widths found."""

    keep: Keep
    mod: _tvm.IRModule
    after: Resources
    training: Training  # both runs'
    bits: dict[tuple[int, int], int]
    found_weights: int  # the stored weight bytes the search's own network had


@attrs.frozen
class _Found:
    """The joint search's network (:func:`_joint_search`): its widths, figures and training."""

    mod: _tvm.IRModule
    after: Resources
    training: Training
    bits: dict[tuple[int, int], int]


def _joint_search(
    job: _Job,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: int,
    limit: int | None,
    sram_model: str,
    progress: bool,
    resources: resource_model.ResourceModel | None,
) -> _Found:
    """UDC's joint search: DiffPrune's channel gates and a bit gate per layer for ``epochs``
    (``bits_mode`` "search", no fine-tuning), the cut fitted to ``budget`` as compiled; it gives each
    layer's width."""
    from tvm_mcu.prune_bits import describe

    _, mod, after, training, found = _diff(
        job,
        budget,
        before,
        data,
        epochs,
        limit,
        sram_model,
        progress,
        resources,
        fine_tune=False,
        bits_mode="search",
    )
    logger.info("prune udc: the search found %s", describe(mod, found))
    return _Found(mod, after, training, found)


def _train_at_widths(
    job: _Job,
    found: _Found,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: int,
    limit: int | None,
    sram_model: str,
    progress: bool,
    resources: resource_model.ResourceModel | None,
    fine_tune: bool,
) -> _Retrained:
    """DiffPrune from the original weights for ``epochs`` to ``budget`` (fine-tuning the second half as
    ``fine_tune`` says), every layer held at the width ``found`` and trained quantised so (``bits_mode``
    "fixed", as ``--weights int4`` holds int4), as UDC trains the architecture its search found."""
    from tvm_mcu.prune_sparse import both_runs

    keep, pruned, after, second, chosen = _diff(
        attrs.evolve(job, bits=found.bits),
        budget,
        before,
        data,
        epochs,
        limit,
        sram_model,
        progress,
        resources,
        fine_tune=fine_tune,
        bits_mode="fixed",
    )
    return _Retrained(keep, pruned, after, both_runs(found.training, second), chosen, found.after.weights)


def _search_then_train(
    job: _Job,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: tuple[int, int],
    limit: int | None,
    sram_model: str,
    progress: bool,
    resources: resource_model.ResourceModel | None,
    fine_tune: bool,
) -> _Retrained:
    """UDC's joint search (:func:`_joint_search`, ``epochs[0]``), then the network it found trained from
    the start at its widths (:func:`_train_at_widths`, ``epochs[1]``), both to ``budget``."""
    resources = _resources_for(job, resources)  # built once for both runs
    found = _joint_search(job, budget, before, data, epochs[0], limit, sram_model, progress, resources)
    return _train_at_widths(
        job, found, budget, before, data, epochs[1], limit, sram_model, progress, resources, fine_tune
    )


def _udc(
    job: _Job,
    budget: Budget,
    before: Resources,
    data: str,
    epochs: int,
    limit: int | None,
    sram_model: str,
    progress: bool,
    resources: resource_model.ResourceModel | None,
) -> tuple[Keep, _tvm.IRModule, Resources, Training, dict[tuple[int, int], int], str]:
    """``--method udc``: :func:`_search_then_train`, the search for half the epochs, the network found
    trained for all of them. The search alone trains the network it settles on for the fine-tuning half
    only: its bits are decided once the gates reach the budget, at the end of the gating half. Measured
    on the Fashion-MNIST CNN at 1/16 of its stored weights (8 epochs on 60,000 images), the search found
    int2 width's network (8,2,2,8 bits, widths 8/24/64) and trained it to 0.8861, where ``--weights
    int2`` trains the same network to 0.8952. Trained so, the joint search is at least as accurate
    (int8) as int8, int4 and int2 width at 1/2 to 1/16 of the CNN's stored weights
    (docs/BENCHMARKS_PRUNING.md: +0.5, +0.2, +0.0, +0.4 points over the best of them, with mixed widths
    such as 8,4,2,8). (As :func:`_diff`, and a line saying what the search did; the training record
    counts both runs' epochs and time.)"""
    search_epochs = max(1, epochs // 2)
    run = _search_then_train(
        job, budget, before, data, (search_epochs, epochs), limit, sram_model, progress, resources, True
    )
    search = (
        f"channels and bits by the joint search ({search_epochs} epochs, {run.found_weights:,} B stored), "
        f"then trained at those bits from the original weights ({epochs} epochs)"
    )
    return run.keep, run.mod, run.after, run.training, run.bits, search


def _model_limits(budget: Budget, before: Resources, model: resource_model.ResourceModel) -> dict[str, float]:
    """The budget as the resource model's targets (sram, flash, weights, macs). A stored-weights budget
    is the model's stored weights at full width less the bytes to remove, so a difference between the
    model's figure and the compiled one does not move the cut; the compiled figures are checked against
    the real budget (``_fit_compiled``)."""
    limits = {k: float(v) for k, v in attrs.asdict(budget).items() if v is not None}
    if budget.weights is not None:
        limits["weights"] = float(model.stored(model.full)) - (before.weights - budget.weights)
    return limits


def _fit_compiled(
    job: _Job,
    budget: Budget,
    gates: Gates,
    trained: _tvm.IRModule,
    model: resource_model.ResourceModel,
    limits: dict[str, float],
    bits: Any = None,
) -> tuple[Keep, _tvm.IRModule, Resources, int]:
    """Cut the trained network at its gates; when the compiled figures miss the budget (the model's
    estimate was low), the widest cut that fits (:func:`widest_fit`). Each try restarts from the gates
    DiffPrune left, cuts the lowest units to the scaled targets and spends what they leave
    (``fill_to``); the gates are left at the last try. The cut, its module, its figures, the compiles.
    """
    from tvm_mcu.train.diffprune import fill_bits, fill_to, remove_to

    theta, alive = gates.theta.detach().clone(), gates.alive.clone()
    widths = (bits.theta.detach().clone(), bits.theta2.detach().clone()) if bits is not None else None

    def cut(
        scale: float, missed: frozenset[str], attempt: int
    ) -> tuple[tuple[Keep, _tvm.IRModule], Resources]:
        if attempt:
            gates.theta.data.copy_(theta)
            gates.alive.copy_(alive)
            gates.hold_floors()
            if bits is not None and widths is not None:
                bits.theta.data.copy_(widths[0])
                bits.theta2.data.copy_(widths[1])
            target = {r: v * (scale if r in missed else 1.0) for r, v in limits.items()}
            remove_to(gates, model, target)
            if bits is not None:
                fill_bits(bits, model, gates, target)
            fill_to(gates, model, target)
        keep = gates.keep()
        pruned = PruneChannels(keep=keep)(trained)
        chosen = bits.bits() if bits is not None else None
        return (keep, pruned), job.measure(pruned, f"diff{attempt}", chosen)

    try:
        (keep, pruned), after, tries = widest_fit(cut, budget)
    except BudgetError as e:
        raise BudgetError(
            f"DiffPrune could not bring {job.imported.name} within its budget on {job.board} ({e})"
        ) from None
    return keep, pruned, after, tries


def widest_fit(
    cut: Callable[[float, frozenset[str], int], tuple[T, Resources]], budget: Budget
) -> tuple[T, Resources, int]:
    """Search the scale of the missed resources' targets whose cut fits ``budget`` and is widest.

    ``cut(scale, missed, attempt)`` cuts to the targets of the resources in ``missed`` scaled by
    ``scale`` and returns the cut and its compiled figures. The first try is the unscaled cut; after
    a miss the scale shrinks by the size of the miss until a cut fits, then bisects between the
    widest scale that fitted and the narrowest that missed, to FIT_TOLERANCE or MAX_TIGHTEN tries.
    (Scaling only by the miss overshoots when the model is far off: MobileNetV2-style at 1/8 SRAM,
    predicted 4,126 B and compiled 6,682 B, it ended at 3,146 B of a 4,131 B budget; the search finds
    4,042 B.) The widest cut that fitted, its figures and the number of tries; BudgetError when none
    fitted.
    """
    missed: frozenset[str] = frozenset()
    fit: tuple[T, Resources] | None = None
    lo, hi, scale = 0.0, None, 1.0
    excess: list[tuple[str, int, int]] = []
    attempt = 0
    for attempt in range(MAX_TIGHTEN):
        payload, after = cut(scale, missed, attempt)
        excess = after.excess(budget)
        logger.info("DiffPrune cut %d at %.3f of the budget: %s", attempt, scale, after)
        if not excess:
            fit, lo = (payload, after), scale
            if hi is None or hi - lo < FIT_TOLERANCE:
                break
            scale = (lo + hi) / 2
            continue
        hi = scale
        missed |= {r for r, _, _ in excess}
        scale = (lo + hi) / 2 if fit else scale * min(lim / value for _, value, lim in excess) * 0.995
    if fit is None:
        raise BudgetError(f"{_describe(excess)} after {MAX_TIGHTEN} tries")
    return fit[0], fit[1], attempt + 1


def trainable(mod: _tvm.IRModule, ds: Any) -> RelaxModule:
    """``mod`` as a torch module to train, BatchNorm put back on its convolutions
    (``RelaxModule.renormalise``; folded again by ``write_back``).

    Measured on the pruning runs (int8 accuracy on 10,000 test images, one run each): MobileNetV2-style
    (4 epochs on 15,000 images) at 1/2 and 1/4 of its stored weights, int8 width 0.8649 -> 0.8917 and
    0.8241 -> 0.8661, int4 width at 1/4 0.7381 -> 0.8569; Fashion-MNIST CNN int8 width at 1/8 0.9065 ->
    0.9106. int2 width (every 1x1 layer ternary) at 1/4 fell to 0.43 until the weights written back were
    the quantised ones trained (``RelaxModule.settle_weights``): 0.7871 folded -> 0.8713."""
    from tvm_mcu.train.bridge import RelaxModule

    module = RelaxModule(mod)
    module.renormalise(ds.x_train)
    return module


def _teacher(job: _Job, ds: Any) -> tuple[float, Any]:
    """The original's test accuracy, and its logits on the training set when the job distills."""
    from tvm_mcu.train.bridge import RelaxModule
    from tvm_mcu.train.loop import evaluate, predict

    original = RelaxModule(job.mod)
    return evaluate(original, ds.x_test, ds.y_test), predict(original, ds.x_train) if job.distill else None


def _fine_tune(
    job: _Job,
    pruned: _tvm.IRModule,
    data: str | None,
    epochs: int,
    limit: int | None,
    masks: Mapping[tuple[int, int], np.ndarray] | None = None,
    ranks: Mapping[tuple[int, int], np.ndarray] | None = None,
) -> tuple[_tvm.IRModule, Training]:
    """Train ``pruned`` for ``epochs``; ``masks`` (weight site -> True where kept) stay zero throughout.

    With ``ranks`` (:class:`tvm_mcu.train.sparse.GradualMasks`; ``pruned`` then still holds the weights
    to prune) the masks ``ranks < 0`` are applied gradually over the first half of the training steps
    and held over the second, as DiffPrune prunes over the first half of its epochs and fine-tunes over
    the second; the pruned accuracy is the one-shot cut's."""
    from tvm_mcu.train import require_torch

    require_torch()
    from tvm_mcu.train.bridge import RelaxModule, write_back
    from tvm_mcu.train.data import load_dataset
    from tvm_mcu.train.loop import evaluate, train

    assert data is not None
    ds = load_dataset(data, job.imported.inputs[0].shape, limit=limit)
    acc_before, teacher = _teacher(job, ds)
    module = trainable(pruned, ds)
    hold: Any = None
    if ranks:
        from tvm_mcu.prune_sparse import apply_masks
        from tvm_mcu.train.sparse import GradualMasks

        one_shot = {k: np.asarray(r) < 0 for k, r in ranks.items()}
        acc_pruned = evaluate(RelaxModule(apply_masks(pruned, one_shot)), ds.x_test, ds.y_test)
        steps = (len(ds.x_train) + TRAIN_BATCH - 1) // TRAIN_BATCH
        hold = GradualMasks(module, ranks, max(1, epochs * steps // 2))
    else:
        acc_pruned = evaluate(module, ds.x_test, ds.y_test)
    if job.bits:
        from tvm_mcu.train.bits import hold_bits

        hold_bits(module, job.bits)  # trained as deployed (--weights int4): quantisation-aware
    if masks and not ranks:
        from tvm_mcu.train.sparse import MaskHold

        hold = MaskHold(module, masks)
    log = train(
        module,
        ds,
        epochs=epochs,
        lr=FINE_TUNE_LR,
        teacher=teacher,
        seed=job.seed,
        on_step=hold,
        batch_size=TRAIN_BATCH,
    )
    if hold is not None:
        hold.remove()
    acc_after = evaluate(module, ds.x_test, ds.y_test)
    module.settle_weights()
    tuned = write_back(pruned, module)
    return tuned, Training(
        data, epochs, acc_before, acc_pruned, acc_after, tuple(log.seconds), int(len(ds.y_test))
    )


def _is_quantized(mod: _tvm.IRModule) -> bool:
    found: list[str] = []
    _tvm.structural_walk(
        mod["main"],
        (_tvm.relax.Call, lambda c: found.append(str(_tvm.op_name(c))) if _tvm.op_name(c) else None),
    )
    return any(op in ("relax.quantize", "relax.dequantize") for op in found)
