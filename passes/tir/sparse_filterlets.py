"""SparseFilterlets: a convolution whose weights are stored sparse (CSR over filterlets) visits only the
kept ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from tvm_mcu._tvm import Analyzer, PrimFunc, TensorLoad, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.dot_kernels import RUNS
from tvm_mcu.passes.tir.each_function import extern_name, parameter_owners, pointer_load, rewrite_each
from tvm_mcu.passes.tir.float_kernels import RUNS_F32
from tvm_mcu.passes.tir.sparse_float_kernels import SPARSE1P_BLOB_F32, SPARSE4P_BLOB_F32
from tvm_mcu.passes.tir.sparse_kernels import SPARSE1P_BLOB, SPARSE4P_BLOB
from tvm_mcu.passes.tir.sparse_pixel_blocks import flat_blocks, row_blocks

ATTR_DONE = "tvmmcu.filterlets_done"
# Set by the compiler before lowering: parameter position -> output channels, for the weights it will
# store sparse when every read of them becomes a sparse call (the compiler reads ATTR_SPARSE after).
ATTR_WANTED = "tvmmcu.sparse_weights"
# Set by this pass: the parameter positions whose reads all became sparse calls -> output channels.
ATTR_SPARSE = "tvmmcu.sparse_filterlets"

_RUNS_ARGS = ("x", "xsy", "xsx", "w", "wsy", "wsx", "kh", "kw", "n", "y0", "y1", "x0", "x1", "pad", "acc")
# The float runs kernel's: the weights' stride along a run (wc) after the taps', no padding value (zero).
_RUNS_F32_ARGS = ("x", "xsy", "xsx", "w", "wsy", "wsx", "wc", "kh", "kw", "n", "y0", "y1", "x0", "x1", "acc")
# The runs kernels SparseFilterlets rewrites, keyed by (data dtype, weight dtype).
_ALL_RUNS = {**RUNS, **RUNS_F32}


def runs_args(call: Any) -> dict[str, Any]:
    """A runs call's arguments by name: the float kernel's with ``pad`` 0 (its padding is 0.0, zero
    bits) and the integer kernel's with ``wc`` 1 (its runs are contiguous in the weights)."""
    if extern_name(call) in RUNS_F32.values():
        a = dict(zip(_RUNS_F32_ARGS, call.args[1:], strict=True))
        return {**a, "pad": tirx.IntImm("int32", 0)}
    return {**dict(zip(_RUNS_ARGS, call.args[1:], strict=True)), "wc": tirx.IntImm("int32", 1)}


@attrs.frozen
class SparseKernels:
    """The kernels of one sparse format, each keyed by (data dtype, weight dtype) as ``RUNS``: the
    one-pixel kernel replacing a runs call, its four-pixel kernel and (``row_blocks`` only) its
    never-inlined border copy; ``contiguous_taps``: the format needs a window row's taps back to back
    (xsx == n); ``anywhere``: the four-pixel kernel takes any four pixels, their windows crossing the
    border or not (``sparse_pixel_blocks.flat_blocks``), else four of a row whose windows lie inside
    (``row_blocks``)."""

    one: dict[tuple[str, str], str]
    four: dict[tuple[str, str], str]
    edge: dict[tuple[str, str], str] = attrs.field(factory=dict)
    contiguous_taps: bool = False
    anywhere: bool = False

    def of_runs(self, name: str) -> str | None:
        found = (self.one[key] for key, runs in _ALL_RUNS.items() if runs == name and key in self.one)
        return next(found, None)

    def four_of(self, name: str) -> str | None:
        return next((self.four[key] for key, one in self.one.items() if one == name), None)

    def edge_of(self, name: str) -> str | None:
        return next((self.edge[key] for key, one in self.one.items() if one == name), None)


FILTERLETS = SparseKernels(
    {**SPARSE1P_BLOB, **SPARSE1P_BLOB_F32}, {**SPARSE4P_BLOB, **SPARSE4P_BLOB_F32}, anywhere=True
)


def _sparse_call(call: Any, owner_of: Any, wanted: dict[Any, int], kernels: SparseKernels) -> Any | None:
    """The sparse call replacing a runs call over a wanted parameter's weights, or None."""
    a = runs_args(call)
    load = pointer_load(a["w"])
    if load is None or owner_of(load.source) not in wanted:
        return None
    if not all(isinstance(a[k], tirx.IntImm) for k in ("wsy", "wsx", "wc", "kh", "kw", "n")):
        return None
    if int(a["wc"]) != 1:
        return None  # a run's weights not contiguous: no filterlet (HWIO float weights)
    kh, kw, n = int(a["kh"]), int(a["kw"]), int(a["n"])
    if kernels.contiguous_taps and not (isinstance(a["xsx"], tirx.IntImm) and int(a["xsx"]) == n):
        return None
    # A channel's filterlets follow each other tap after tap (OHWI): the weight pointer is channel o's.
    if int(a["wsx"]) != n or int(a["wsy"]) != kw * n:
        return None
    index = load.indices[0]
    dtype = str(index.ty)
    per_channel = tirx.IntImm(dtype, kh * kw * n)
    ana = Analyzer()
    if not ana.can_prove(tirx.floormod(index, per_channel) == 0):
        return None
    channel = ana.simplify(tirx.floordiv(index, per_channel))
    blob = tirx.address_of(tirx.BufferLoad(load.source, [tirx.IntImm(dtype, 0)]))
    out_channels = tirx.IntImm("int32", wanted[owner_of(load.source)])
    channel = channel if str(channel.ty) == "int32" else tirx.Cast("int32", channel)
    args = [a["x"], a["xsy"], a["xsx"], a["kw"], blob, out_channels, channel, a["n"]]
    args += [a["y0"], a["y1"], a["x0"], a["x1"], a["pad"], a["acc"]]
    one = kernels.of_runs(extern_name(call))
    assert one is not None  # the caller matched a runs call
    return tirx.call_extern(str(call.ty), one, *args)


def wanted_parameters(
    func: PrimFunc, wanted_attr: str
) -> tuple[dict[Any, int], dict[Any, int], Callable[[Any], Any]] | None:
    """What ``func``'s attribute ``wanted_attr`` (parameter position -> output channels) asks for:
    (parameter -> its position, wanted parameter -> output channels, buffer -> the parameter whose
    memory it views); None when it names no parameter."""
    wanted_positions = func.attrs.get(wanted_attr) if func.attrs is not None else None
    if not wanted_positions:
        return None
    position = {p: k for k, p in enumerate(func.params)}
    by_position = {int(k): int(v) for k, v in wanted_positions.items()}
    wanted = {p: by_position[k] for p, k in position.items() if k in by_position}
    owners = parameter_owners(func)

    def owner_of(buffer: Any) -> Any:
        return owners.get(buffer, buffer)

    return position, wanted, owner_of


def read_only_sparse(
    body: Any, wanted: dict[Any, int], owner_of: Callable[[Any], Any], rewritten: dict[Any, int]
) -> set[Any] | None:
    """All or nothing per parameter: the rewritten parameters when each is read in ``body`` only by its
    ``rewritten[p]`` sparse calls' blob pointers, else None (some read was left dense)."""
    reads: dict[Any, int] = {}

    def count(load: Any) -> None:
        owner = owner_of(load.source)
        if owner in wanted:
            reads[owner] = reads.get(owner, 0) + 1

    structural_walk(body, (TensorLoad, count))
    complete = {p for p in wanted if p in rewritten and reads.get(p, 0) == rewritten[p]}
    return complete if complete and complete == set(rewritten) else None


def rewrite_sparse(
    func: PrimFunc, *, wanted_attr: str, done: str, stored: str, kernels: SparseKernels
) -> PrimFunc:
    """``func`` with the runs calls over the parameters its attribute ``wanted_attr`` names rewritten
    to ``kernels`` (all or nothing per parameter), marked ``done``, and ``stored`` = {position: output
    channels} of the parameters now read only so: SparseFilterlets' rewrite, for any sparse format."""
    found = wanted_parameters(func, wanted_attr)
    if found is None:
        return func.with_attr(done, True)
    position, wanted, owner_of = found
    rewritten: dict[Any, int] = {}
    windows: dict[Any, set[tuple[int, int]]] = {}  # parameter -> the (kh, kw) of its runs calls

    def rewrite(call: Any) -> Any:
        if kernels.of_runs(extern_name(call)) is None:
            return call
        sparse = _sparse_call(call, owner_of, wanted, kernels)
        if sparse is None:
            return call
        load = pointer_load(call.args[4])
        assert load is not None  # _sparse_call matched it
        owner = owner_of(load.source)
        rewritten[owner] = rewritten.get(owner, 0) + 1
        a = runs_args(call)
        windows.setdefault(owner, set()).add((int(a["kh"]), int(a["kw"])))
        return sparse

    body = structural_map(func.body, (tvm.ir.Call, rewrite))
    complete = read_only_sparse(body, wanted, owner_of, rewritten)
    if complete is None:
        return func.with_attr(done, True)  # some read was left dense: keep the dense kernel

    def window_of(blob: Any) -> tuple[int, int] | None:
        load = pointer_load(blob)
        found = windows.get(owner_of(load.source), set()) if load is not None else set()
        return next(iter(found)) if len(found) == 1 else None

    # Four pixels per call in a layer by layer loop nest.
    if kernels.anywhere:

        def blocks(loop: Any) -> Any:
            return flat_blocks(loop, kernels.four_of, window_of) or loop

        def row_band_blocks(loop: Any) -> Any:
            return flat_blocks(loop, kernels.four_of, window_of, row=True) or loop

        # Whole layers first (blocks across rows), then the one-row nests left (row bands' steps).
        body = structural_map(body, (tirx.For, blocks))
        blocks = row_band_blocks

    else:

        def blocks(loop: Any) -> Any:
            return row_blocks(loop, kernels.four_of, kernels.edge_of, window_of) or loop

    body = structural_map(body, (tirx.For, blocks))
    return (
        func.with_body(body)
        .with_attr(done, True)
        .with_attr(stored, {position[p]: wanted[p] for p in complete})
    )


def sparse_filterlets(func: PrimFunc) -> PrimFunc:
    return rewrite_sparse(
        func, wanted_attr=ATTR_WANTED, done=ATTR_DONE, stored=ATTR_SPARSE, kernels=FILTERLETS
    )


@tvm.transform.module_pass(opt_level=0, name="SparseFilterlets")
class SparseFilterlets:
    """Visit only the kept filterlets of a convolution whose weights the compiler stores sparse.

    Matches
        functions whose attribute ``tvmmcu.sparse_weights`` (parameter position -> output channels, set
        by the compiler where the weights' zero filterlets pay) names a weight parameter read by runs
        calls (``tvmmcu_dot_runs_*``: one pixel, one output channel, a window of taps each a run of ``n``
        input channels, the channel's taps following each other: OHWI weights): int8 data and weights
        (``_s8s8``, ``_u8s8``) or float32 (``tvmmcu_dot_runs_f32`` with the weights' stride along a
        run ``wc`` = 1).
    Rewrites to
        ``tvmmcu_sparse1p_blob_*(x, xsy, xsx, kw, &W[0], O, o, n, y0, y1, x0, x1, pad, acc)``: the
        parameter holds the CSR blob (``sparse_kernels.compress_blob``: int8 values, or float32 values
        for ``tvmmcu_sparse1p_blob_f32``, whose ``pad`` is 0), channel ``o`` is the call's weight offset
        over ``kh * kw * n``; records ``tvmmcu.sparse_filterlets`` = {position: O} for the compiler to
        store the blob. Then a ``for yy: for xx: for o`` nest (layer by layer), or a ``for xx: for o``
        nest left (a row band's step, its row set outside), runs four consecutive pixels of the
        flattened output per call (``sparse_pixel_blocks.flat_blocks``): ``tvmmcu_sparse_setup`` once
        per nest, per block ``tvmmcu_sparse_stage`` (a pointer per tap to the four pixels' data: in
        place where they lie inside one pixel stride apart, padding rows where outside for all four,
        else staged; float data: ``tvmmcu_sparse_stage_f32``, which also returns the taps outside for
        all four for the kernel to skip), per block and channel ``tvmmcu_sparse4p_blob_*`` and the
        epilogue once per pixel; the ``H * W % 4`` last pixels from a block of the last four (only the
        new ones stored). Scratch: the state (``4 * (1 + kh * kw) + b * (3 * ps + n)`` bytes) and the
        stage buffer (``8 * kh * kw + 4 * copies * b * ps`` bytes, ps the input values from one window
        to the next, copies the most taps a block of the nest stages, ``b`` bytes per value);
        HoistScratchToWorkspace moves both to the arena. A nest with the output channel fixed outside
        (a channel slice) keeps one pixel per call.
    Declines when
        a read of the parameter is anything else, its offset is not provably a whole channel, or a
        float call's ``wc`` is not 1 (HWIO weights: a filterlet is not contiguous) (then nothing changes
        and the weights stay dense), or the function carries ``tvmmcu.filterlets_done``. The four-pixel
        blocks alone are declined (the one-pixel calls stay) as ``flat_blocks`` says, and for float data
        whose accumulator does not start at a constant other than ``-0.0``.
    Numerics
        int8: unchanged, a pruned filterlet's products are zero; the kept ones are summed as the runs
        kernel sums them (integers: any order), the padding taps as ``pad`` times their weights.
        float32: bit-identical to the dense float kernels for finite data and weights (the compiler
        stores only finite weights sparse): each channel adds its kept filterlets in tap order, each in
        channel order, the dense order without the pruned filterlets, whose products ``x * +-0.0`` add
        exactly nothing to an accumulator that is not ``-0.0`` (adds from ``+0.0`` never make one); the
        same ``acc += x * w`` contracted to a fused multiply-add in both kernels or neither. The
        padding's taps are left out (one pixel, skipped taps) or add ``+-0.0`` (staged zeros).
        Data holding an infinity or NaN at a pruned filterlet's tap: the dense sum is NaN, this one not.
    Ordering
        after UseDotKernels and SplitBorders (it rewrites their calls, as many as SplitBorders made);
        BlockOutputChannels leaves the loops of runs calls over marked weights alone (the sparse kernel
        is per channel).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, sparse_filterlets)
