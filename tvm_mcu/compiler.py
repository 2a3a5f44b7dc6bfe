"""From an imported Relax module to a C library: graph passes, operator lowering, memory plan, emission."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from tvm_mcu import _tvm, pipeline
from tvm_mcu.analysis import inplace as analysis_inplace
from tvm_mcu.analysis import rows as rows_of
from tvm_mcu.analysis.inplace import InPlace
from tvm_mcu.analysis.macs import step_macs
from tvm_mcu.analysis.peak import PeakResult, best_order_peak, whole_buffer_peak
from tvm_mcu.codegen import c_ops, model_c
from tvm_mcu.errors import BadOptionError, BudgetError, UnsupportedOpError
from tvm_mcu.passes.relax.channels_last import ChannelsLast
from tvm_mcu.passes.relax.group_chains import ATTR_PARTIAL, CHAIN_PREFIX, GroupChains
from tvm_mcu.passes.relax.integer import fixed_point
from tvm_mcu.passes.relax.lower_quantized_ops import ATTR_FLOAT_OPS
from tvm_mcu.passes.relax.make_integer_interface import io_quantization
from tvm_mcu.passes.tir import (
    block_weights,
    compress_weights,
    dot_kernels,
    pack_weights,
    rice_kernels,
    sparse_element_kernels,
    sparse_elements,
    sparse_filterlets,
    sparse_kernels,
    unpack_int4_weights,
    widen_weights,
)
from tvm_mcu.passes.tir.each_function import extern_name, parameter_owners, pointer_load
from tvm_mcu.passes.tir.execute_in_place import ATTR_AXIS as ATTR_IN_PLACE_AXIS
from tvm_mcu.passes.tir.execute_in_place import ATTR_KIND as ATTR_IN_PLACE
from tvm_mcu.passes.tir.execute_in_place import make_in_place
from tvm_mcu.passes.tir.pack_weights import PackWeights
from tvm_mcu.passes.tir.partial_execution import PartialExecution
from tvm_mcu.passes.tir.schedule_for_mcu import ScheduleForMcu
from tvm_mcu.passes.tir.use_dot_kernels import MIN_DOT_TAPS
from tvm_mcu.passes.tir.widen_weights import WidenWeights
from tvm_mcu.schedule import choice, cost, inplace, partial
from tvm_mcu.schedule.graph import Graph, extract_graph, reorder
from tvm_mcu.schedule.memory import MemoryPlan, plan_memory

logger = logging.getLogger(__name__)


@attrs.frozen
class OpInfo:
    """One operator of the compiled model, as the report lists it."""

    name: str
    kind: str
    callee: str
    macs: int
    output_bytes: int
    scratch_bytes: int
    weights: tuple[model_c.WeightStorage, ...] = ()  # per weight parameter, in the step's input order


# How the weights of the SIMD kernels may be stored (compile_module's ``weights``): "auto" packs those
# whose every value fits int4 two per byte and keeps the others int8, "int8" keeps every one as given,
# "int16" widens every one to halfwords.
WEIGHT_WIDTHS = ("auto", "int8", "int16")


@attrs.frozen
class Compiled:
    """Everything a compilation produces, before anything is written to disk."""

    graph: Graph
    plan: MemoryPlan
    library: model_c.Library
    ops: tuple[OpInfo, ...]
    seconds: float
    # Whole tensors live at once (inputs and outputs included): for this order, and for the best order.
    whole_buffer_peak: int
    whole_buffer_bound: PeakResult
    # Quantised models: (scale, zero point) of each int8 input and output the caller converts, if any.
    io_quantization: dict[str, list[list[float]]] | None = None
    float_ops: tuple[str, ...] = ()
    # The operators whose weights are stored pre-widened to int16 (``weights="int16"``), and those with
    # weights stored as int4, two per byte (``weights="auto"``, values in [-8, 7]), or as int2, four per
    # byte (values in [-2, 1]).
    int16_weight_ops: tuple[str, ...] = ()
    int4_weight_ops: tuple[str, ...] = ()
    int2_weight_ops: tuple[str, ...] = ()
    # The bytes model.c stores for the weights: each weight once per layout its steps read it in; of
    # those, the per-channel constants' (the int32 [C, 3] arrays: bias, multiplier, shift).
    stored_weights_bytes: int = 0
    stored_constants_bytes: int = 0
    # The schedule picked (tvm_mcu.schedule.choice), bytes live at each of its steps (arena + I/O), and
    # the plain layer-by-layer schedule's at the same steps (for a chain, the most over its operators).
    schedule: str = "layer by layer"
    profile: tuple[int, ...] = ()
    profile_before: tuple[int, ...] = ()
    sram_budget: int | None = None
    # How the convolutions compute and why ("NCHW, as imported", "channels-last: ...").
    layout: str = ""
    # The weights stored Golomb-Rice coded (CompressWeights), one row per step and weight, and the flash
    # budget the stored weights had to fit.
    compressed: tuple[CompressedLayer, ...] = ()
    flash_budget: int | None = None
    # The weights asked to be stored coded that are not, each with why (:func:`_not_compressed`).
    not_compressed: tuple[NotCompressed, ...] = ()


@attrs.frozen
class NotCompressed:
    """A weight of a step asked to be stored Golomb-Rice coded that the schedule leaves as it was."""

    step: str
    weight: str
    reason: str


@attrs.frozen
class CompressedLayer:
    """One weight of one step stored Golomb-Rice coded."""

    step: str
    weight: str
    raw_bytes: int  # blocked int8 (what the kernels read)
    stored_bytes: int  # the blob: offsets, chunks, padding
    # Calls of tvmmcu_rice_decode per inference (each decodes a chunk unless the scratch holds it), from
    # the lowered loops' trip counts; None where one is read at run time (row bands).
    decode_calls: int | None


def _primfuncs(mod: _tvm.IRModule) -> dict[str, _tvm.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, _tvm.PrimFunc)}


def in_place_options(funcs: dict[str, _tvm.PrimFunc], graph: Graph) -> dict[str, list[InPlace]]:
    """For each callee, the inputs its kernel could overwrite (scheduled PrimFuncs, activation inputs)."""
    options: dict[str, list[InPlace]] = {}
    for step in graph.steps:
        if step.kind == "copy" or step.callee in options:
            continue
        acts = [k for k, n in enumerate(step.inputs) if graph.tensors[n].kind != "weight"]
        func = funcs[step.callee]
        options[step.callee] = [
            o for o in analysis_inplace.in_place_options(func, acts) if _restageable(func, o, step.name)
        ]
    return options


def _restageable(func: _tvm.PrimFunc, option: InPlace, step: str) -> bool:
    """Whether ExecuteInPlace can restage this kernel's loop nest: a kernel whose loops are not one
    chain (its epilogue beside the reduction) cannot move its pixel loops out, and a channel axis of
    extent 1 has no channel loop to move."""
    try:
        make_in_place(func, option.kind, option.axis)
    except (_tvm.s_tir.ScheduleError, _tvm.tvm.error.InternalError, ValueError) as exc:
        # TVM's schedule refuses the move, or the moved loops would leave a scratch tensor of the kernel
        # outside them (InternalError: ill-formed TIR): this kernel cannot be restaged.
        logger.info("in place declined for %s (%s): %s", step, option.kind, str(exc).splitlines()[0])
        return False
    return True


def lower_operators(
    funcs: dict[str, _tvm.PrimFunc],
    graphs: list[Graph],
    lowered_already: dict[str, _tvm.PrimFunc] | None = None,
) -> tuple[_tvm.IRModule, list[Graph]]:
    """Lower the PrimFuncs the graphs call to unpacked TIR; record each step's workspace size.

    Steps that run in place call a clone of their operator marked for ExecuteInPlace.
    ``lowered_already``: functions lowered before (by the same passes), taken as they are.
    """
    done = lowered_already or {}
    funcs = dict(funcs)
    for graph in graphs:
        for clone, (original, kind, axis) in inplace.in_place_callees(graph).items():
            funcs[clone] = funcs[original].with_attr(ATTR_IN_PLACE, kind).with_attr(ATTR_IN_PLACE_AXIS, axis)
    used = {s.callee for g in graphs for s in g.steps if s.kind != "copy"}
    prims = _tvm.IRModule({_tvm.GlobalVar(name): funcs[name] for name in sorted(used - set(done))})
    fresh = pipeline.run(pipeline.operator_passes(symbol_prefix=c_ops.OP_PREFIX), prims)
    lowered = _tvm.IRModule(
        {
            **{gv: f for gv, f in fresh.functions_items()},
            **{_tvm.GlobalVar(name): done[name] for name in sorted(used & set(done))},
        }
    )
    ws = {gv.name_hint: int(f.attrs["tvmmcu.workspace_bytes"]) for gv, f in lowered.functions_items()}
    out = []
    for graph in graphs:
        steps = tuple(attrs.evolve(s, workspace_bytes=ws.get(s.callee, 0)) for s in graph.steps)
        out.append(attrs.evolve(graph, steps=steps))
    return lowered, out


def _only(lowered: _tvm.IRModule, graph: Graph) -> _tvm.IRModule:
    used = {s.callee for s in graph.steps if s.kind != "copy"}
    return _tvm.IRModule({gv: f for gv, f in lowered.functions_items() if gv.name_hint in used})


def _weight_parameters(graph: Graph) -> dict[str, set[int]]:
    """Operator symbol -> positions of the parameters every call of it passes a weight in."""
    out: dict[str, set[int]] = {}
    for step in graph.steps:
        if step.kind == "copy":
            continue
        weights = {k for k, n in enumerate(step.inputs) if graph.tensors[n].kind == "weight"}
        symbol = c_ops.OP_PREFIX + step.callee
        out[symbol] = out[symbol] & weights if symbol in out else weights
    return out


def _blocked_weights(lowered: _tvm.IRModule) -> dict[str, dict[int, model_c.Blocked]]:
    """Callee -> parameter position -> how it reads those weights blocked: the channel stride
    (BlockWeights) and the width, int8 as given, halfwords (WidenWeights) or nibbles (PackWeights)."""
    out: dict[str, dict[int, model_c.Blocked]] = {}
    for gv, func in lowered.functions_items():
        found = dict(func.attrs) if func.attrs is not None else {}
        layout: dict[int, model_c.Blocked] = {}
        for attr, width in (
            (block_weights.ATTR_BLOCKED, "int8"),
            (widen_weights.ATTR_WIDENED, "int16"),
            (pack_weights.ATTR_PACKED, "int4"),
            (pack_weights.ATTR_CRUMBS, "int2"),
            (compress_weights.ATTR_COMPRESSED, "rice"),
        ):
            layout.update(
                {int(k): model_c.Blocked(int(v), width) for k, v in (found.get(attr) or {}).items()}
            )
        if layout:
            out[gv.name_hint] = layout
    return out


def _every_call(graph: Graph, holds: Callable[[str], bool]) -> dict[str, set[int]]:
    """Callee -> positions of the parameters in which every step calling it passes a weight (a name of
    ``graph.weights``) that ``holds``."""
    out: dict[str, set[int]] = {}
    for step in graph.steps:
        if step.kind == "copy":
            continue
        fits = {k for k, n in enumerate(step.inputs) if n in graph.weights and holds(n)}
        out[step.callee] = out[step.callee] & fits if step.callee in out else fits
    return out


def _int4_parameters(graph: Graph) -> dict[str, set[int]]:
    """Callee -> positions of the parameters every call of it passes int8 weights in [-8, 7] in."""
    return _every_call(
        graph, lambda n: graph.tensors[n].kind == "weight" and pack_weights.fits_int4(graph.weights[n])
    )


def depthwise_weights(funcs: dict[str, _tvm.PrimFunc], graph: Graph) -> frozenset[str]:
    """The int8 weights of the depthwise convolutions: steps with weights whose output channel ``c``
    reads input channel ``c`` only (the in-place analysis's "depthwise" kind), ``funcs`` scheduled."""
    out: set[str] = set()
    for step in graph.steps:
        if step.kind == "copy" or step.callee not in funcs:
            continue
        weights = [
            n
            for n in step.inputs
            if graph.tensors[n].kind == "weight" and str(graph.weights.get(n, np.zeros(0)).dtype) == "int8"
        ]
        acts = [k for k, n in enumerate(step.inputs) if graph.tensors[n].kind != "weight"]
        if weights and any(
            o.kind == "depthwise" for o in analysis_inplace.in_place_options(funcs[step.callee], acts)
        ):
            out.update(weights)
    return frozenset(out)


def _unpack_marks(graph: Graph, names: frozenset[str]) -> dict[str, list[int]]:
    """Callee -> positions of the weights UnpackInt4Weights stores two per byte: every step calling it
    passes one of ``names`` (the depthwise convolutions' weights) there, int8 values in [-8, 7], at most
    ``unpack_int4_weights.MAX_VALUES`` of them (the scratch is SRAM)."""
    out = _every_call(
        graph,
        lambda n: (
            n in names
            and graph.weights[n].size <= unpack_int4_weights.MAX_VALUES
            and pack_weights.fits_int4(graph.weights[n])
        ),
    )
    return {callee: sorted(p) for callee, p in out.items() if p}


def _mark_unpack(
    funcs: dict[str, _tvm.PrimFunc], graph: Graph, names: frozenset[str], only: list[str] | None = None
) -> None:
    """Mark ``funcs`` (the dict's entries) for UnpackInt4Weights: ``names``' positions in ``graph``."""
    for callee, positions in _unpack_marks(graph, names).items():
        if callee in funcs and (only is None or callee in only):
            funcs[callee] = funcs[callee].with_attr(unpack_int4_weights.ATTR_WANTED, positions)


def _int2_parameters(graph: Graph) -> dict[str, set[int]]:
    """Callee -> positions of the parameters every call of it passes int8 weights in [-2, 1] in."""
    return _every_call(
        graph, lambda n: graph.tensors[n].kind == "weight" and pack_weights.fits_int2(graph.weights[n])
    )


def _pack_int4(lowered: _tvm.IRModule, graph: Graph) -> _tvm.IRModule:
    """``lowered`` with the blocked weights that fit int4 packed (PackWeights; those that fit int2 four
    per byte), the parameters marked from ``graph``'s constants."""
    wanted = _int4_parameters(graph)
    two_bit = _int2_parameters(graph)
    funcs = {}
    for gv, f in lowered.functions_items():
        if isinstance(f, _tvm.PrimFunc) and wanted.get(gv.name_hint):
            f = f.with_attr(pack_weights.ATTR_INT4, sorted(wanted[gv.name_hint]))
            if two_bit.get(gv.name_hint):
                f = f.with_attr(pack_weights.ATTR_INT2, sorted(two_bit[gv.name_hint]))
        funcs[gv] = f
    return pipeline.run([PackWeights()], _tvm.IRModule(funcs))


# Which weights ``compile_module(compress=...)`` stores Golomb-Rice coded: "off" none, "all" every one that
# shrinks, "auto" the fewest that bring the stored weights under ``flash_budget``.
COMPRESS_MODES = ("off", "auto", "all")
# Instructions per decoded byte of tvmmcu_rice_decode (the cost model's: schedule/cost.py).
DECODE_INSTRUCTIONS_PER_BYTE = cost.DECODE_PER_BYTE


@attrs.frozen
class Compressible:
    """A weight CompressWeights could store Golomb-Rice coded, with what that saves and costs."""

    name: str
    raw_bytes: int  # as stored otherwise: int8 blocked, or int4 packed two per byte
    stored_bytes: int  # the blob
    decodes: int  # chunks decoded per inference, estimated (each once: layer by layer, not in place)
    chunk_bytes: int

    @property
    def saved(self) -> int:
        return self.raw_bytes - self.stored_bytes

    @property
    def decode_instructions(self) -> float:
        return self.decodes * self.chunk_bytes * DECODE_INSTRUCTIONS_PER_BYTE


def compressible(graph: Graph, weights: str = "auto") -> list[Compressible]:
    """The int8 weights of the convolutions and dense layers whose Golomb-Rice blob is smaller than their
    stored form (``weights="auto"``: int4 packed where every value fits), in first-use order. Which ones
    the kernels read blocked is known only after lowering: CompressWeights declines the others."""
    out: dict[str, Compressible] = {}
    for step in graph.steps:
        if step.kind not in ("conv2d", "chain", "dense"):
            continue
        for name in step.inputs:
            w = graph.weights.get(name) if graph.tensors[name].kind == "weight" else None
            if w is None or str(w.dtype) != "int8" or w.ndim not in (2, 4) or w.shape[0] % 4:
                continue
            stride = w.size // w.shape[0]
            if stride % 8:
                continue
            chunk = 4 * stride
            raw = 2 * w.nbytes if weights == "int16" else int(_dense_bytes(w, weights == "auto"))
            stored = rice_kernels.encoded_bytes(w, chunk)
            if stored >= raw:
                continue
            # CompressWeights moves the loop over blocks of channels outside the pixels' loops: each
            # chunk decoded once per visit (a row band's rows, an operator in place decode more).
            decodes = w.shape[0] // 4
            prior = out.get(name)
            out[name] = Compressible(name, raw, stored, decodes + (prior.decodes if prior else 0), chunk)
    return list(out.values())


def _compress_marks(graph: Graph, names: frozenset[str]) -> dict[str, list[int]]:
    """Callee -> positions of the parameters every step calling it passes one of ``names`` in."""
    if not names:
        return {}
    return {callee: sorted(p) for callee, p in _every_call(graph, names.__contains__).items() if p}


def _compressed_weights(lowered: _tvm.IRModule) -> dict[str, dict[int, int]]:
    """Callee -> parameter position -> channel stride of the weights CompressWeights stores coded."""
    out: dict[str, dict[int, int]] = {}
    for gv, func in lowered.functions_items():
        found = func.attrs.get(compress_weights.ATTR_COMPRESSED) if func.attrs is not None else None
        if found:
            out[gv.name_hint] = {int(k): int(v) for k, v in found.items()}
    return out


# A convolution's weights are stored sparse (CSR over filterlets, visited by the sparse kernel) when at
# most this fraction of their filterlets hold a non-zero value: the flash saved then outweighs the index
# (1 B per kept filterlet, 2 per channel) and the sparse kernel's cost per kept MAC.
SPARSE_MAX_KEPT = 0.75
# Weights pruned element by element (zeros anywhere) are stored as element CSR (visited by the element
# kernel, sparse_element_kernels) when its flash is below this fraction of the dense weights' (2 B per
# kept weight: fewer than about half of them kept), the unstructured baseline at its least flash.
ELEMENT_MAX_FLASH = 1.0
# Filterlet CSR is taken over element CSR up to this many bytes more: its kernel costs about half the
# instructions per kept MAC (bench --only sparse).
FILTERLET_SLACK_BYTES = 16


def may_store_sparse(kernel_taps: int, in_channels: int) -> bool:
    """Whether a convolution weight with ``kernel_taps`` (kh * kw) taps of ``in_channels`` input channels
    per group can be stored sparse at all: the sparse kernels are the runs kernel's (several taps, at
    least ``MIN_DOT_TAPS`` input channels); any other (a first convolution on one input channel, a
    1x1 or depthwise convolution, a dense layer) is stored dense whatever its zeros (a 1x1 one or a
    dense layer may be stored element-sparse: :func:`may_store_elements`)."""
    return kernel_taps > 1 and in_channels >= MIN_DOT_TAPS


def may_store_elements(kernel_taps: int, in_channels: int) -> bool:
    """Whether such a convolution weight can be stored element-sparse (element CSR): the runs kernel's
    (:func:`may_store_sparse`), and a 1x1 convolution's of at least ``MIN_DOT_TAPS`` input channels (per
    pixel, its output channels' rows are a dense layer's: SparseElements' dot rows)."""
    return may_store_sparse(kernel_taps, in_channels) or (kernel_taps == 1 and in_channels >= MIN_DOT_TAPS)


def _float_sparse_format(w: np.ndarray) -> str | None:
    """The mark for float32 OHWI convolution weights: filterlet CSR (float values,
    ``sparse_float_kernels``) where at most ``SPARSE_MAX_KEPT`` of the filterlets are kept and the blob
    is smaller than the dense weights (the int8 rule); None: dense. Only finite weights: a kept weight's
    product with the staged padding must be zero. No element CSR: its kernels are integer only."""
    if not np.isfinite(w).all() or float(sparse_kernels.filterlets_kept(w).mean()) > SPARSE_MAX_KEPT:
        return None
    return sparse_filterlets.ATTR_WANTED if sparse_kernels.compress_blob(w).size < w.nbytes else None


def _dense_bytes(w: np.ndarray, pack: bool) -> float:
    """The bytes int8 weights ``w`` take stored dense: one a value, or with ``pack`` (``weights="auto"``)
    packed where every value fits, int4 two per byte and int2 four (PackWeights: where the blocked kernels
    read them; a sparse format must beat that to be taken)."""
    if pack and str(w.dtype) == "int8" and pack_weights.fits_int4(w):
        return w.size / (4 if pack_weights.fits_int2(w) else 2)
    return float(w.nbytes)


def _sparse_format(w: np.ndarray, pack: bool = True) -> str | None:
    """The mark (SparseFilterlets' or SparseElements' wanted attribute) of the sparse format storing the
    int8 or float32 OHWI convolution weights ``w`` (taps of at least ``MIN_DOT_TAPS`` input channels:
    the runs kernel's) in the least flash, filterlets preferred within ``FILTERLET_SLACK_BYTES`` (float32:
    :func:`_float_sparse_format`); None: dense, which ``pack`` may store int4 or int2
    (:func:`_dense_bytes`): a sparse format is taken only below that."""
    if not (w.ndim == 4 and may_store_sparse(w.shape[1] * w.shape[2], w.shape[3])):
        return None
    if str(w.dtype) == "float32":
        return _float_sparse_format(w)
    if str(w.dtype) != "int8":
        return None
    dense = _dense_bytes(w, pack)
    flash: dict[str, int] = {}
    if float(sparse_kernels.filterlets_kept(w).mean()) <= SPARSE_MAX_KEPT:
        size = int(sparse_kernels.compress_blob(w).size)
        if size < dense:
            flash[sparse_filterlets.ATTR_WANTED] = size
    if 2 * np.count_nonzero(w) < ELEMENT_MAX_FLASH * dense:  # else element CSR cannot be smaller
        try:
            size = sparse_element_kernels.blob_bytes(w)
        except ValueError:  # more entries than its row pointers hold
            size = w.size
        if size < ELEMENT_MAX_FLASH * dense:
            flash[sparse_elements.ATTR_WANTED] = size
    filterlets = flash.get(sparse_filterlets.ATTR_WANTED)
    elements = flash.get(sparse_elements.ATTR_WANTED)
    if filterlets is not None and (elements is None or filterlets <= elements + FILTERLET_SLACK_BYTES):
        return sparse_filterlets.ATTR_WANTED
    return sparse_elements.ATTR_WANTED if elements is not None else None


def _conv_sparse_format(w: np.ndarray, pack: bool = True) -> str | None:
    """The mark for a convolution's int8 or float32 OHWI weights: :func:`_sparse_format`, or for a 1x1
    convolution (:func:`may_store_elements`) its ``[O, n]`` rows' (:func:`_dense_sparse_format`: int8
    only)."""
    if w.ndim == 4 and w.shape[1] * w.shape[2] == 1:
        if not may_store_elements(1, w.shape[3]):
            return None
        return _dense_sparse_format(w.reshape(w.shape[0], -1), pack)
    return _sparse_format(w, pack)


def _dense_sparse_format(w: np.ndarray, pack: bool = True) -> str | None:
    """The mark for a dense layer's int8 ``[O, n]`` weights: element CSR where its flash is below the
    dense weights' (``ELEMENT_MAX_FLASH``, of :func:`_dense_bytes`: packed with ``pack``; a filterlet of a
    dense layer is its whole row, a channel)."""
    if not (w.ndim == 2 and str(w.dtype) == "int8"):
        return None
    dense = _dense_bytes(w, pack)
    if 2 * np.count_nonzero(w) >= ELEMENT_MAX_FLASH * dense:
        return None
    try:
        size = sparse_element_kernels.blob_bytes(w)
    except ValueError:  # more entries than its row pointers hold
        return None
    return sparse_elements.ATTR_WANTED if size < ELEMENT_MAX_FLASH * dense else None


def _sparse_bytes(mark: str, w: np.ndarray) -> int:
    """The bytes of int8 or float32 weights ``w`` (OHWI, or a dense layer's [O, n]) in the sparse format
    ``mark`` names."""
    if mark == sparse_filterlets.ATTR_WANTED:
        return int(sparse_kernels.compress_blob(w).size)
    return int(
        sparse_element_kernels.blob_bytes(
            w.reshape(w.shape[0], -1) if w.ndim == 4 and w.shape[1] * w.shape[2] == 1 else w
        )
    )


def _coded_smaller(w: np.ndarray, mark: str) -> bool:
    """Whether int8 weights ``w`` take no more bytes Golomb-Rice coded (CompressWeights' chunks of four
    channels) than in the sparse format ``mark``: pruned weights asked to be compressed are then stored
    coded (their zeros a bit each) rather than sparse."""
    if str(w.dtype) != "int8":
        return False
    return rice_kernels.encoded_bytes(w, 4 * (w.size // w.shape[0])) <= _sparse_bytes(mark, w)


def _sparse_candidates(
    graph: Graph, convolutions: bool = True, compress: frozenset[str] = frozenset(), pack: bool = True
) -> dict[str, dict[str, dict[int, int]]]:
    """Callee -> mark (:func:`_sparse_format`) -> parameter position -> output channels of the
    convolution and dense weights stored sparse, in the same format in every step that calls the callee.
    ``convolutions=False`` (an NCHW model: the sparse kernels read channels-last windows): dense layers
    only. ``compress``: weights to store Golomb-Rice coded where that is no larger (:func:`_coded_smaller`):
    not sparse then."""
    found: dict[tuple[str, int], tuple[str, int]] = {}
    refused: set[tuple[str, int]] = set()
    for step in graph.steps:
        if step.kind not in (("conv2d", "chain", "dense") if convolutions else ("dense",)):
            continue
        for k, name in enumerate(step.inputs):
            t = graph.tensors[name]
            w = graph.weights.get(name) if t.kind == "weight" else None
            if w is None:
                continue
            mark = _dense_sparse_format(w, pack) if step.kind == "dense" else _conv_sparse_format(w, pack)
            if mark is not None and name in compress and _coded_smaller(w, mark):
                mark = None
            key = (step.callee, k)
            if mark is None or key in refused or found.get(key, (mark, 0))[0] != mark:
                refused.add(key)
                found.pop(key, None)
            else:
                found[key] = (mark, int(w.shape[0]))
    out: dict[str, dict[str, dict[int, int]]] = {}
    for (callee, k), (mark, channels) in found.items():
        out.setdefault(callee, {}).setdefault(mark, {})[k] = channels
    return out


def _marked(func: _tvm.PrimFunc, marks: dict[str, dict[int, int]]) -> _tvm.PrimFunc:
    for mark, wanted in sorted(marks.items()):
        func = func.with_attr(mark, wanted)
    return func


def _positions_marked(lowered: _tvm.IRModule, attr: str) -> dict[str, set[int]]:
    """Callee -> the parameter positions its function's ``attr`` lists: the weights SparseFilterlets or
    SparseElements (their ATTR_SPARSE) made it read sparse, UnpackInt4Weights (ATTR_UNPACKED) unpacks."""
    out: dict[str, set[int]] = {}
    for gv, func in lowered.functions_items():
        found = func.attrs.get(attr) if func.attrs is not None else None
        if found:
            out[gv.name_hint] = {int(k) for k in found}
    return out


def _nchw_conv_weights(mod: _tvm.IRModule) -> list[tuple[str, np.ndarray]]:
    """(node, OHWI weights) of the model's NCHW convolutions (groups 1) whose weights are constants or
    the dequantisation of int8 constants (ONNX QDQ), as imported, in order."""
    func = mod["main"]
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    out = []
    for block in func.body.blocks:
        for b in block.bindings:
            call = b.value
            if not (isinstance(call, _tvm.relax.Call) and _tvm.op_name(call) == "relax.nn.conv2d"):
                continue
            a = call.attrs
            if (str(a.data_layout), str(a.kernel_layout), int(a.groups)) != ("NCHW", "OIHW", 1):
                continue
            w = values.get(call.args[1], call.args[1])
            zero_point: Any = 0
            if isinstance(w, _tvm.relax.Call) and _tvm.op_name(w) == "relax.dequantize":
                zp = values.get(w.args[2], w.args[2])
                if not isinstance(zp, _tvm.RelaxConst):
                    continue
                zero_point = _tvm.const_value(zp).astype(np.int32)
                w = values.get(w.args[0], w.args[0])
            if not isinstance(w, _tvm.RelaxConst):
                continue
            weights = _tvm.const_value(w)
            if np.ndim(zero_point) or np.any(zero_point):
                # uint8 (or asymmetric) weights: the integer lowering takes the zero point out, so the
                # values the kernels store are the differences (ONNX Runtime's QUInt4: 0..15 less 8).
                centred = weights.astype(np.int32) - np.reshape(zero_point, (-1,) + (1,) * 3)
                narrow = centred.size and int(centred.min()) >= -128 and int(centred.max()) <= 127
                weights = centred.astype(np.int8) if narrow else centred
            node = _tvm.provenance(func, b.var) or _tvm.var_name(b.var)
            out.append((node, np.ascontiguousarray(weights.transpose(0, 2, 3, 1))))
    return out


def sparse_reason(mod: _tvm.IRModule, pack: bool = True) -> str | None:
    """Why an NCHW model should compute channels-last by default: its first int8 or float32 convolution
    whose weights a sparse format would store (:func:`_conv_sparse_format`, against the dense weights
    packed with ``pack``; only the channels-last kernels read the sparse formats), named; None when there
    is none."""
    for node, ohwi in _nchw_conv_weights(mod):
        mark = _conv_sparse_format(ohwi, pack)
        if mark is not None:
            if mark == sparse_filterlets.ATTR_WANTED:
                kept = float(sparse_kernels.filterlets_kept(ohwi).mean())
                return f"{node} keeps {kept:.0%} of its filterlets"
            return f"{node} keeps {np.count_nonzero(ohwi) / ohwi.size:.0%} of its weights"
    return None


def int4_reason(mod: _tvm.IRModule) -> str | None:
    """Why an NCHW model should compute channels-last when packing int4 weights: its first int8
    convolution whose weights all lie in [-8, 7], named (only the channels-last kernels read packed
    weights); None when there is none."""
    for node, ohwi in _nchw_conv_weights(mod):
        if pack_weights.fits_int4(ohwi):
            return f"the weights of {node} fit int4"
    return None


def channels_last(mod: _tvm.IRModule, convert: bool = False) -> bool:
    """Whether the model's convolutions compute channels-last (NHWC), where the SIMD kernels apply: as
    imported (TFLite) or, with ``convert``, after ChannelsLast (ONNX)."""
    if convert:
        mod = ChannelsLast()(mod)
    return _conv_layouts(mod) == {"NHWC"}


def _conv_layouts(mod: _tvm.IRModule) -> set[str]:
    """The data layouts of the model's convolutions."""
    return {
        str(b.value.attrs.data_layout)
        for func in mod.functions.values()
        if isinstance(func, _tvm.relax.Function)
        for block in func.body.blocks
        for b in block.bindings
        if isinstance(b.value, _tvm.relax.Call) and _tvm.op_name(b.value) == "relax.nn.conv2d"
    }


def _staging_overhead(graph: Graph, macs: dict[str, int], costs: cost.Costs) -> float:
    """Estimated extra instructions of the in-place kernels' staging copies, relative to the MACs'."""
    staged = sum(
        int(np.prod(graph.tensors[s.output].shape, dtype=np.int64))
        for s in graph.steps
        if s.in_place in ("depthwise", "pointwise")
    )
    return staged * costs.per_staged_element / costs.instructions(macs)


def _ordered_graph(fused: _tvm.IRModule) -> tuple[Graph, PeakResult]:
    """The execution graph, its operators in the order that minimises the whole tensors alive at once
    (exact search; the graph's own order when the search space is too large)."""
    graph = extract_graph(fused)
    bound = best_order_peak(graph)
    return (reorder(graph, bound.order) if bound.exact else graph), bound


def _split(
    fused: _tvm.IRModule,
    chains: list[partial.Chain],
    *,
    in_place: bool,
    prefix: str,
    sparse: bool = False,
    compress: frozenset[str] = frozenset(),
    unpack: frozenset[str] = frozenset(),
    pack: bool = True,
) -> tuple[Graph, dict[str, _tvm.PrimFunc], dict[str, int], dict[str, _tvm.PrimFunc]]:
    """The graph with ``chains`` fused and run a slice of channels at a time (then in place).
    ``sparse``: the chains' convolutions with sparse weights are marked for SparseFilterlets;
    ``compress``: the weights to mark for CompressWeights (:func:`_compress_marks`); ``unpack``: the
    depthwise weights to mark for UnpackInt4Weights (:func:`_unpack_marks`); ``pack``: the weights that
    fit int4 or int2 are stored packed (a sparse format must beat that, :func:`_dense_bytes`)."""
    split = pipeline.run([GroupChains([(list(c.steps), c.spec) for c in chains], prefix=prefix)], fused)
    graph, _ = _ordered_graph(split)
    funcs = _primfuncs(pipeline.run([PartialExecution(), ScheduleForMcu(inline_padding=True)], split))
    chained = sorted(name for name, f in funcs.items() if ATTR_PARTIAL in (f.attrs or {}))
    if sparse:  # before the chains are lowered, here
        for callee, marks in _sparse_candidates(graph, compress=compress, pack=pack).items():
            if callee in chained:
                funcs[callee] = _marked(funcs[callee], marks)
    for callee, positions in _compress_marks(graph, compress).items():
        if callee in chained:
            funcs[callee] = funcs[callee].with_attr(compress_weights.ATTR_WANTED, positions)
    _mark_unpack(funcs, graph, unpack, only=chained)
    # The chains are lowered here: a chain the lowering cannot take (row bands finish inside it, in
    # RollRowBuffers; a TVM check may fail on a restructured chain) declines this candidate with its
    # reason instead of failing the compile. The lowered chains are kept for lower_operators.
    try:
        done = pipeline.run(
            pipeline.operator_passes(symbol_prefix=c_ops.OP_PREFIX),
            _tvm.IRModule({_tvm.GlobalVar(n): funcs[n] for n in chained}),
        )
    except (_tvm.TVMError, ValueError) as exc:
        raise ValueError(_tvm.error_summary(exc)) from exc
    lowered = {gv.name_hint: f for gv, f in done.functions_items()}
    macs = step_macs(split, graph)  # before in-place clones rename the callees
    if in_place:
        graph, _ = inplace.choose(graph, in_place_options(funcs, graph))
    return partial.annotate(graph, chains), funcs, macs, lowered


def _chain_macs(graph: Graph, split_macs: dict[str, int], macs: dict[str, int]) -> dict[str, int]:
    """MACs per step of a split graph: a chain does its operators' MACs (splitting adds none; reading
    them off the fused chain's TIR misses blocks the split restructured)."""
    return {
        s.name: sum(macs.get(m, 0) for m in s.chain) if s.chain else split_macs.get(s.name, 0)
        for s in graph.steps
    }


def _profile_by_step(base: choice.Candidate, graph: Graph) -> tuple[int, ...]:
    """The layer-by-layer live bytes at each step of ``graph`` (a chain: the most over its members)."""
    profile = choice.profile(base.graph, base.plan)
    live = dict(zip((s.name for s in base.graph.steps), profile, strict=True))
    out = []
    for i, step in enumerate(graph.steps):
        known = [live[m] for m in step.chain or (step.name,) if m in live]
        # A step renamed by the regrouping (e.g. the model output): the same position from the end.
        out.append(max(known) if known else profile[len(profile) - (len(graph.steps) - i)])
    return tuple(out)


# The in-place candidate that also overwrites model inputs and writes model outputs over dead inputs
# (``io_in_arena`` only).
IN_PLACE_IO = "in place (inputs and outputs too)"


@attrs.frozen
class Schedules:
    """The candidate schedules of a model, before one is chosen and emitted."""

    fused: _tvm.IRModule
    graph: Graph  # layer by layer, in the order with the smallest whole-buffer peak
    bound: PeakResult
    whole_peak: int
    candidates: tuple[choice.Candidate, ...]
    macs: dict[str, dict[str, int]]  # candidate label -> MACs per step
    lowered: _tvm.IRModule


def plan_schedules(
    mod: _tvm.IRModule,
    *,
    model_name: str,
    allow_float: bool = False,
    rounding: str = "tflite",
    in_place: bool = True,
    partial_execution: bool = True,
    sparse: bool = True,
    convert: bool = False,
    io_in_arena: bool = False,
    compress: frozenset[str] | str = frozenset(),
    weights: str = "auto",
) -> Schedules:
    """Graph passes, then every candidate schedule with its memory plan (see :func:`compile_module`).

    ``io_in_arena``: the memory plans hold the model's inputs and outputs. The candidates (order,
    in-place steps, chains) are the caller convention's, so each plan, and the one chosen, needs no
    more SRAM than with the caller's buffers (:func:`tvm_mcu.schedule.memory.plan_memory`), plus one,
    ``IN_PLACE_IO``, whose in-place steps may also overwrite a model input or write a model output.
    ``compress``: names of the weights CompressWeights stores Golomb-Rice coded where the blocked kernels
    read them (each candidate's memory plan counts the decode scratch); "all": every one that shrinks
    against its form with ``weights`` (:func:`compressible`)."""
    try:
        passes = pipeline.graph_passes(allow_float=allow_float, rounding=rounding, channels_last=convert)
        fused = pipeline.run(passes, mod)
    except (AssertionError, _tvm.TVMError, ValueError, TypeError) as exc:
        if _tvm.is_internal_error(exc):
            raise
        # TVM's legalisation rejects some attribute combinations its importer accepted.
        raise UnsupportedOpError(
            f"TVM could not legalise {model_name}: {_tvm.error_summary(exc)}; the model uses an operator "
            "variant tvm-mcu cannot compile"
        ) from exc
    graph, bound = _ordered_graph(fused)
    if isinstance(compress, str):
        compress = (
            frozenset(c.name for c in compressible(graph, weights)) if compress == "all" else frozenset()
        )
    whole_peak = whole_buffer_peak(graph)
    macs = step_macs(fused, graph)
    last = channels_last(mod, convert)
    costs = cost.for_model(graph, last)
    funcs = _primfuncs(pipeline.run([ScheduleForMcu(inline_padding=True)], fused))
    options = in_place_options(funcs, graph)
    # The depthwise weights stored int4 two per byte where they fit (UnpackInt4Weights).
    unpack = depthwise_weights(funcs, graph) if weights == "auto" else frozenset()
    # Candidate schedules, cheapest first: (label, graph, MACs per step, estimated extra instructions
    # besides in-place staging).
    plans: list[tuple[str, Graph, dict[str, int], float]] = [("layer by layer", graph, macs, 0.0)]
    if in_place:
        shared, chosen = inplace.choose(graph, options)
        if chosen:
            plans.append(("in place", shared, macs, 0.0))
        if io_in_arena:
            # With the inputs and outputs in the arena an operator may also overwrite a model input or
            # write a model output over its dead input: one more candidate, the others kept as they are.
            io_shared, io_chosen = inplace.choose(graph, options, io_in_arena=True)
            if io_chosen != chosen:
                plans.append((IN_PLACE_IO, io_shared, macs, 0.0))
    chain_lowered: dict[str, _tvm.PrimFunc] = {}  # chains lowered by _split, for lower_operators
    if partial_execution:
        seen: list[list[partial.Chain]] = []
        # Accumulating chains re-read their consumer's accumulator once per slice: wider slices cost
        # less time and more memory, so each width is a candidate.
        for accumulate, width in ((False, 1), *((True, w) for w in partial.ACCUMULATE_SLICES)):
            chains = [
                attrs.evolve(c, slice=width) if c.accumulate else c
                for c in partial.find_chains(graph, options, accumulate=accumulate)
            ]
            if not chains or chains in seen:
                continue
            seen.append(chains)
            label = "partial execution" + (f" (accumulating, {width}-channel slices)" if accumulate else "")
            try:
                split_graph, split_funcs, split_macs, split_lowered = _split(
                    fused,
                    chains,
                    in_place=in_place,
                    prefix=f"{CHAIN_PREFIX}{len(seen) - 1}_",
                    sparse=sparse and last,
                    compress=compress,
                    unpack=unpack,
                    pack=weights == "auto",
                )
            except ValueError as exc:
                logger.info("partial execution declined: %s", exc)
                continue
            chain_lowered.update(split_lowered)
            funcs = {**funcs, **split_funcs}
            split_macs = _chain_macs(split_graph, split_macs, macs)
            extra = partial.overhead(chains, macs, costs)
            plans.append((label, split_graph, split_macs, extra))
        row_axes = {s.callee: rows_of.row_axis(funcs[s.callee]) for s in graph.steps if s.callee in funcs}
        rows = partial.find_row_chains(
            graph,
            row_axes,
            lambda callee, axis: rows_of.window_rows(funcs[callee], axis),
            macs=macs,
            costs=costs,
            skips=lambda callee, axis: rows_of.skips_rows(funcs[callee], axis),
        )
        if rows:
            try:
                split_graph, split_funcs, split_macs, split_lowered = _split(
                    fused,
                    rows,
                    in_place=in_place,
                    prefix=f"{CHAIN_PREFIX}_rows_",
                    sparse=sparse and last,
                    compress=compress,
                    unpack=unpack,
                    pack=weights == "auto",
                )
            except ValueError as exc:
                logger.info("row bands declined: %s", exc)
            else:
                chain_lowered.update(split_lowered)
                funcs = {**funcs, **split_funcs}
                split_macs = _chain_macs(split_graph, split_macs, macs)
                extra = partial.row_overhead(rows, graph, macs, costs)
                plans.append(("row bands", split_graph, split_macs, extra))
    if sparse:
        # Marked last: the splits above hand back every function of their module, unmarked. Chains too:
        # SparseFilterlets rewrites the convolutions' calls inside them.
        for plan_graph in [g for _, g, _, _ in plans]:
            for callee, marks in _sparse_candidates(plan_graph, last, compress, weights == "auto").items():
                if callee in funcs:
                    funcs[callee] = _marked(funcs[callee], marks)
    if compress:
        for plan_graph in [g for _, g, _, _ in plans]:
            for callee, positions in _compress_marks(plan_graph, compress).items():
                if callee in funcs:
                    funcs[callee] = funcs[callee].with_attr(compress_weights.ATTR_WANTED, positions)
    for plan_graph in [g for _, g, _, _ in plans]:
        _mark_unpack(funcs, plan_graph, unpack)
    lowered, graphs = lower_operators(funcs, [g for _, g, _, _ in plans], chain_lowered)
    # Decoding compressed weights: what a schedule decodes beyond layer by layer's once per inference.
    decode = {label: cost.decode_instructions(g, graph, compress) for label, g, _, _ in plans}
    candidates = tuple(
        choice.Candidate(
            label,
            g,
            plan_memory(g, io_in_arena=io_in_arena),
            _staging_overhead(g, m, costs)
            + extra
            + (decode[label] - decode["layer by layer"]) / costs.instructions(macs),
        )
        for (label, _, m, extra), g in zip(plans, graphs, strict=True)
    )
    return Schedules(
        fused, graph, bound, whole_peak, candidates, {label: m for label, _, m, _ in plans}, lowered
    )


def compile_module(
    mod: _tvm.IRModule,
    *,
    model_name: str,
    compress: str = "off",
    flash_budget: int | None = None,
    **options: Any,
) -> Compiled:
    """Compile an imported Relax module (float or integer) to a C library with a static memory plan
    (:func:`compile_once`'s ``options``), storing weights Golomb-Rice coded as ``compress`` says.

    ``compress``: "off" (the default) stores none so; "all" every convolution and dense weight the
    blocked kernels read whose blob is smaller than its stored form (CompressWeights: decoded per block
    of four channels into a scratch buffer in the workspace; bit-exact, more instructions); "auto" the
    ones saving the most bytes per added decode instruction until the stored weights fit
    ``flash_budget``, those the schedule chosen without coding decodes once per inference first (the
    others, read in a row band or in place, would change the schedule or decode per row or pixel).
    ``flash_budget``: bytes the stored weights (model.c's weight arrays, the report's
    ``stored_weights_bytes``) must fit; BudgetError, saying by how much they are over, when they do not
    ("auto": even with every compressible weight coded).
    """
    if compress not in COMPRESS_MODES:
        raise BadOptionError(f"compress must be one of {', '.join(COMPRESS_MODES)}, got {compress!r}")
    if compress == "auto" and flash_budget is None:
        raise BadOptionError(
            "compress='auto' (--compress-weights auto) needs a flash budget (--flash-budget)"
        )
    if flash_budget is not None and flash_budget <= 0:
        raise BadOptionError(f"the flash budget must be a positive number of bytes, got {flash_budget}")
    first = compile_once(
        mod, model_name=model_name, compress="all" if compress == "all" else frozenset(), **options
    )
    if flash_budget is None:
        return first
    if first.stored_weights_bytes <= flash_budget:
        return attrs.evolve(first, flash_budget=flash_budget)
    over = first.stored_weights_bytes - flash_budget
    if compress == "off":
        raise BudgetError(
            f"{model_name}: the stored weights take {first.stored_weights_bytes} B, over the flash budget of "
            f"{flash_budget} B by {over} B; --compress-weights auto stores some Golomb-Rice coded"
        )
    candidates = compressible(first.graph, str(options.get("weights", "auto")))
    if compress == "all":
        candidates = []  # every one is coded already
    # First the weights the schedule chosen without coding decodes once per inference (coding them keeps
    # that schedule and its SRAM); a weight it reads in a row band or in place would be decoded once per
    # output row or pixel, or make another schedule cheaper (more SRAM). Among each, the most bytes saved
    # per added decode instruction first.
    once = cost.decoded_once(first.graph, frozenset(c.name for c in candidates))
    ranked = sorted(
        candidates, key=lambda c: (c.name not in once, -c.saved / max(c.decode_instructions, 1.0), c.name)
    )
    chosen: list[str] = []
    left = first.stored_weights_bytes
    for c in ranked:
        if left <= flash_budget:
            break
        chosen.append(c.name)
        left -= c.saved
    if left > flash_budget:
        raise BudgetError(
            f"{model_name}: the stored weights take {left} B even with every weight the kernels read "
            f"blocked Golomb-Rice coded, over the flash budget of {flash_budget} B by "
            f"{left - flash_budget} B; prune the model (tvm-mcu prune) or quantise its weights to int4"
        )
    result = compile_once(mod, model_name=model_name, compress=frozenset(chosen), **options)
    if result.stored_weights_bytes > flash_budget:
        raise BudgetError(
            f"{model_name}: the stored weights take {result.stored_weights_bytes} B with "
            f"{len(result.compressed)} weights Golomb-Rice coded (the kernels read the others unblocked), "
            f"over the flash budget of {flash_budget} B by {result.stored_weights_bytes - flash_budget} B"
        )
    return attrs.evolve(result, flash_budget=flash_budget)


def compile_once(
    mod: _tvm.IRModule,
    *,
    model_name: str,
    allow_float: bool = False,
    rounding: str = "tflite",
    in_place: bool = True,
    partial_execution: bool = True,
    sram_budget: int | None = None,
    strict_budget: bool = True,
    schedule: str | None = None,
    weights: str = "auto",
    sparse: bool = True,
    convert: bool | None = None,
    io_in_arena: bool = False,
    compress: frozenset[str] | str = frozenset(),
) -> Compiled:
    """Compile an imported Relax module (float or integer) to a C library with a static memory plan.

    ``rounding``: how int8 requantisations round, "tflite" (TFLite Micro's arithmetic, for TFLite
    models) or "onnx" (one rounding half to even, for ONNX QDQ models). ``in_place``: let operators
    overwrite dead inputs where that is exact (see :mod:`tvm_mcu.schedule.inplace`).
    ``partial_execution``: consider running chains a slice of channels at a time
    (:mod:`tvm_mcu.schedule.partial`). ``sram_budget``:
    bytes of arena plus input and output buffers the schedule must fit (see
    :mod:`tvm_mcu.schedule.choice`); BudgetError names the bottleneck when no schedule does.
    ``strict_budget=False``: when no schedule fits, take the default choice instead (the compiled
    figures of a model still over its budget, as pruning measures them).
    ``schedule``: the label of the candidate to take instead of choosing (benchmarks, tests);
    BadOptionError lists the candidates when the model has no such schedule. ``weights``: how the weights
    the blocked SIMD kernels read are stored: "auto" (the default) as int4, two per byte, where every
    value of a weight lies in [-8, 7] (PackWeights: half their flash, about the same instructions,
    bit-exact), else as the model has them; "int8": as the model has them; "int16": pre-widened to
    halfwords (WidenWeights: twice their flash, fewer instructions). The report lists the operators with
    int4 or int16 weights. ``sparse=False``: every weight stored dense, even where most filterlets are
    zero (to measure what the sparse formats save). ``convert=True``: an NCHW (ONNX) model's convolutions
    compute channels-last on the SIMD kernels (ChannelsLast; the interface stays NCHW); ``False``: they
    stay NCHW; ``None`` (the default): channels-last when an int8 or float32 convolution's weights are
    sparse enough to store compactly (:func:`sparse_reason`: only the channels-last kernels read the
    sparse formats) or, with ``weights="auto"``, fit int4 (:func:`int4_reason`: only they read packed
    weights), else NCHW. The choice and its reason are in ``Compiled.layout``. ``io_in_arena``: the
    model's inputs and outputs live in the arena (TFLite Micro's convention): ``tvmmcu_model_run(void)``,
    and ``tvmmcu_model_input(k)`` / ``tvmmcu_model_output(k)`` give where the caller writes and reads
    them; an input's bytes are reused once it is dead. ``sram_budget`` then counts the arena alone.
    ``compress``: the names of the weights to store Golomb-Rice coded, or "all" (:func:`plan_schedules`).
    """
    if weights not in WEIGHT_WIDTHS:
        raise BadOptionError(f"weights must be one of {', '.join(WEIGHT_WIDTHS)}, got {weights!r}")
    t0 = time.perf_counter()
    layout = _layout(mod, convert, sparse, pack=weights == "auto", coded=bool(compress))
    convert = layout.startswith("channels-last") and not channels_last(mod)
    sched = plan_schedules(
        mod,
        model_name=model_name,
        allow_float=allow_float,
        rounding=rounding,
        in_place=in_place,
        partial_execution=partial_execution,
        sparse=sparse,
        convert=convert,
        io_in_arena=io_in_arena,
        compress=compress,
        weights=weights,
    )
    fused, bound, whole_peak, lowered = sched.fused, sched.bound, sched.whole_peak, sched.lowered
    candidates = list(sched.candidates)
    if schedule is not None:
        named = [c for c in candidates if c.label == schedule]
        if not named:
            raise BadOptionError(
                f"{model_name} has no '{schedule}' schedule; its candidates are: "
                + ", ".join(c.label for c in candidates)
            )
        picked = named[0]
    elif sram_budget is not None and not strict_budget and choice.fits(candidates, sram_budget) is None:
        picked = choice.choose(candidates, budget=None, model_name=model_name)
        sram_budget = None  # not met: the report must not claim it
    else:
        picked = choice.choose(candidates, budget=sram_budget, model_name=model_name)
    graph, plan = picked.graph, picked.plan
    macs = sched.macs[picked.label]
    lowered = _only(lowered, graph)
    if weights == "int16":
        lowered = pipeline.run([WidenWeights()], lowered)
    elif weights == "auto":
        lowered = _pack_int4(lowered, graph)
    widened = {
        gv.name_hint
        for gv, f in lowered.functions_items()
        if f.attrs is not None and widen_weights.ATTR_WIDENED in f.attrs
    }
    packed = {
        gv.name_hint
        for gv, f in lowered.functions_items()
        if f.attrs is not None and f.attrs.get(pack_weights.ATTR_PACKED)
    }
    crumbs = {
        gv.name_hint
        for gv, f in lowered.functions_items()
        if f.attrs is not None and f.attrs.get(pack_weights.ATTR_CRUMBS)
    }
    kernels = c_ops.kernels_source(lowered, readonly=_weight_parameters(graph))
    blocked = _blocked_weights(lowered)
    stored = _positions_marked(lowered, sparse_filterlets.ATTR_SPARSE)
    elements = _positions_marked(lowered, sparse_elements.ATTR_SPARSE)
    nibbles = _positions_marked(lowered, unpack_int4_weights.ATTR_UNPACKED)
    # The headers of helpers the kernels call (each only when called).
    headers = {
        header: text
        for prefixes, header, text in (
            ((fixed_point.HELPER_PREFIX,), fixed_point.HEADER_NAME, fixed_point.HEADER_TEXT),
            (dot_kernels.HEADER_PREFIXES, dot_kernels.HEADER_NAME, dot_kernels.HEADER_TEXT),
        )
        if any(p in kernels for p in prefixes)
    }
    files = {
        "model.h": model_c.emit_model_h(graph, plan, model_name=model_name),
        "model.c": model_c.emit_model_c(
            graph,
            plan,
            model_name=model_name,
            op_prefix=c_ops.OP_PREFIX,
            ops=kernels,
            includes=tuple(headers),
            blocked=blocked,
            sparse=stored,
            elements=elements,
            nibbles=nibbles,
        ),
    }
    files.update({header: model_c.BANNER + text for header, text in headers.items()})
    ops = tuple(
        OpInfo(
            s.name,
            s.kind,
            s.callee,
            macs.get(s.name, 0),
            graph.tensors[s.output].nbytes,
            s.workspace_bytes,
            tuple(
                model_c.weight_storage(
                    graph.weights[name], model_c.step_layout(s.callee, k, blocked, stored, elements, nibbles)
                )
                for k, name in enumerate(s.inputs)
                if graph.tensors[name].kind == "weight" and name in graph.weights
            ),
        )
        for s in graph.steps
    )
    seconds = time.perf_counter() - t0
    logger.info(
        "compiled %s: %d steps, arena %d B in %.2f s", model_name, len(ops), plan.arena_bytes, seconds
    )
    float_ops = fused["main"].attrs.get(ATTR_FLOAT_OPS) if fused["main"].attrs is not None else None
    return Compiled(
        graph,
        plan,
        model_c.Library(files),
        ops,
        seconds,
        whole_peak,
        bound,
        io_quantization(fused),
        tuple(str(o) for o in float_ops) if float_ops is not None else (),
        schedule=picked.label,
        profile=tuple(choice.profile(graph, plan)),
        profile_before=_profile_by_step(candidates[0], graph),
        sram_budget=sram_budget,
        int16_weight_ops=tuple(st.name for st in graph.steps if st.callee in widened),
        int4_weight_ops=tuple(st.name for st in graph.steps if st.callee in packed or st.callee in nibbles),
        int2_weight_ops=tuple(st.name for st in graph.steps if st.callee in crumbs),
        stored_weights_bytes=model_c.stored_weights_bytes(graph, blocked, stored, elements, nibbles),
        stored_constants_bytes=model_c.stored_weights_bytes(
            graph, blocked, stored, elements, nibbles, constants=True
        ),
        layout=layout,
        compressed=_compressed_layers(graph, lowered),
        not_compressed=_not_compressed(graph, lowered, compress, weights),
    )


def _decode_calls(func: _tvm.PrimFunc) -> dict[int, int | None]:
    """Parameter position -> calls of tvmmcu_rice_decode on its weights one call of ``func`` makes: each
    call's enclosing loops' trip counts multiplied; None where a trip count is read at run time (a row
    band's rows)."""
    owners = parameter_owners(func)
    position = {p: k for k, p in enumerate(func.params)}
    total: dict[int, int | None] = {}

    def visit(stmt: Any, trips: int | None) -> None:
        if isinstance(stmt, _tvm.tirx.For):
            extent = _tvm.Analyzer().simplify(stmt.extent)
            n = int(extent) if isinstance(extent, _tvm.tirx.IntImm) else None
            visit(stmt.body, trips * n if trips is not None and n is not None else None)
            return
        if isinstance(stmt, _tvm.tirx.Evaluate):
            if extern_name(stmt.value) == compress_weights.DECODE:
                load = pointer_load(stmt.value.args[1])
                owner = owners.get(load.source, load.source) if load is not None else None
                if owner in position:
                    k = position[owner]
                    before = total.get(k, 0)
                    total[k] = before + trips if before is not None and trips is not None else None
            return
        for child in _children(stmt):
            visit(child, trips)

    visit(func.body, 1)
    return total


def _children(stmt: Any) -> list[Any]:
    if isinstance(stmt, _tvm.tirx.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, _tvm.tirx.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    body = getattr(stmt, "body", None)
    return [body] if body is not None else []


def _compressed_layers(graph: Graph, lowered: _tvm.IRModule) -> tuple[CompressedLayer, ...]:
    """The report's rows of the weights CompressWeights stores coded, per step."""
    found = _compressed_weights(lowered)
    funcs = _primfuncs(lowered)
    calls = {callee: _decode_calls(funcs[callee]) for callee in found}
    rows = []
    for step in graph.steps:
        for k, stride in sorted(found.get(step.callee, {}).items()):
            name = step.inputs[k]
            w = graph.weights[name]
            rows.append(
                CompressedLayer(
                    step.name,
                    name,
                    int(w.nbytes),
                    rice_kernels.encoded_bytes(w, 4 * stride),
                    calls[step.callee].get(k, 0),
                )
            )
    return tuple(rows)


def _not_compressed(
    graph: Graph, lowered: _tvm.IRModule, compress: frozenset[str] | str, weights: str
) -> tuple[NotCompressed, ...]:
    """The weights of ``compress`` (names, or "all": :func:`compressible`'s) the lowered steps do not read
    coded, with why: CompressWeights codes only weights the blocked kernels read four output channels at a
    time, which a schedule computing one channel at a time (a channel-sliced chain) does not use."""
    if isinstance(compress, str):
        compress = (
            frozenset(c.name for c in compressible(graph, weights)) if compress == "all" else frozenset()
        )
    coded = _compressed_weights(lowered)
    blocked = _blocked_weights(lowered)
    sparse: dict[str, set[int]] = {}
    for attr in (sparse_filterlets.ATTR_SPARSE, sparse_elements.ATTR_SPARSE):
        for callee, positions in _positions_marked(lowered, attr).items():
            sparse.setdefault(callee, set()).update(positions)
    rows = []
    for step in graph.steps:
        for k, name in enumerate(step.inputs):
            if name not in compress or k in coded.get(step.callee, {}):
                continue
            if k in sparse.get(step.callee, set()):
                reason = "stored sparse (filterlet or element CSR), in fewer bytes than its Golomb-Rice code"
            elif k in blocked.get(step.callee, {}):
                reason = "its kernels read it blocked but CompressWeights left it (an internal limit)"
            else:
                reason = (
                    "the schedule reads it one output channel at a time (a channel-sliced chain, or a "
                    "kernel without a blocked form); only weights read in blocks of four channels are coded"
                )
            rows.append(NotCompressed(step.name, name, reason))
    return tuple(rows)


def _layout(
    mod: _tvm.IRModule, convert: bool | None, sparse: bool, pack: bool = False, coded: bool = False
) -> str:
    """How ``compile_module`` lays out the convolutions for ``convert`` (its docstring), and why;
    ``pack``: int4 weights would be packed; ``coded``: weights are to be stored Golomb-Rice coded."""
    if channels_last(mod):
        return "channels-last, as imported"
    if not _conv_layouts(mod):
        return "as imported (no NCHW convolution)"
    if convert:
        return "channels-last (asked for)"
    reason = sparse_reason(mod, pack) if convert is None and sparse else None
    if reason is not None:
        return f"channels-last: {reason}, and only the channels-last kernels read sparse weights"
    reason = int4_reason(mod) if convert is None and pack else None
    if reason is not None:
        return f"channels-last: {reason}, and only the channels-last kernels read packed weights"
    if convert is None and coded:
        return "channels-last: weights stored Golomb-Rice coded, which only the channels-last kernels decode"
    if convert is False:
        return "as imported (channels-last not asked for)"
    return "as imported (--channels-last would move NCHW convolutions to the SIMD kernels)"
