"""UnpackInt4Weights: small weights no blocked kernel reads (depthwise convolutions') stored int4 two per
byte, unpacked whole into a workspace scratch once per operator call; every reader then reads the scratch
at the same index."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mcu._tvm import PrimFunc, TensorLoad, structural_map, structural_walk, tirx, tvm
from tvm_mcu.passes.tir.block_weights import ATTR_BLOCKED
from tvm_mcu.passes.tir.compress_weights import ATTR_COMPRESSED
from tvm_mcu.passes.tir.each_function import parameter_owners, rewrite_each
from tvm_mcu.passes.tir.pack_weights import fits_int4
from tvm_mcu.passes.tir.sparse_elements import ATTR_SPARSE as ATTR_SPARSE_ELEMENTS
from tvm_mcu.passes.tir.sparse_filterlets import ATTR_SPARSE as ATTR_SPARSE_FILTERLETS

ATTR_DONE = "tvmmcu.int4_unpacked"
# On the function, set by the compiler: positions of the weight parameters whose every value, in every
# step calling the function, lies in [-8, 7], small enough for a scratch copy (``MAX_VALUES``).
ATTR_WANTED = "tvmmcu.unpack_int4_weights"
# On the function: parameter position -> its number of values, stored :func:`pack_flat`-ed.
ATTR_UNPACKED = "tvmmcu.unpacked_int4_weights"

UNPACK = "tvmmcu_dot_unpack4"
# Values decoded per step of the unpacking loop (one word of nibbles): the scratch and the stored
# weights are padded to a multiple of it.
GROUP = 8
# The compiler marks depthwise convolutions' weights of at most this many values: the scratch is SRAM
# (a 3x3 depthwise convolution over 455 channels, a 5x5 one over 163).
MAX_VALUES = 4096


def padded(n: int) -> int:
    return -(-n // GROUP) * GROUP


def pack_flat(values: np.ndarray) -> np.ndarray:
    """``values`` (int8, every one in [-8, 7]) flat in their order, zero-padded to a multiple of 8, each 8
    one little-endian word: value ``r < 4`` in the low nibble of byte ``r``, value ``r + 4`` in its high
    nibble (``tvmmcu_dot_unpack4``'s layout), flat uint8, half the bytes."""
    if not fits_int4(values):
        raise ValueError("pack_flat: the weights are not int8 values in [-8, 7]")
    flat = np.zeros(padded(values.size), np.int8)
    flat[: values.size] = values.reshape(-1)
    nibbles = flat.reshape(-1, 2, 4).astype(np.uint8) & 0xF
    return np.ascontiguousarray(nibbles[:, 0, :] | (nibbles[:, 1, :] << 4)).reshape(-1)


def unpack_flat(stored: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` values of :func:`pack_flat`'s ``stored`` bytes (what the C decoder writes)."""
    words = np.asarray(stored, np.uint8).reshape(-1, 4)
    lo, hi = (words & 0xF).astype(np.int8), (words >> 4).astype(np.int8)
    out = np.stack([lo, hi], axis=1).reshape(-1)
    return np.where(out > 7, out - 16, out).astype(np.int8)[:n]


def _chosen(func: PrimFunc, wanted: set[int], taken: set[int]) -> dict[Any, tuple[int, Any]]:
    """Parameter -> (position, a flat int8 view of it) of the wanted parameters not taken by another
    storage whose every use is a load through a view declared over it (no store, no bare pointer)."""
    owners = parameter_owners(func)
    candidates = {func.params[k]: k for k in wanted - taken if k < len(func.params)}
    views: dict[Any, Any] = {}
    bad: set[Any] = set()

    def on_load(load: Any) -> None:
        owner = owners.get(load.source)
        if owner in candidates:
            if str(load.source.dtype) != "int8" or len(load.indices) != 1:
                bad.add(owner)
            views.setdefault(owner, load.source)

    def on_store(store: Any) -> None:
        bad.add(owners.get(store.buffer, store.buffer))

    def on_var(var: Any) -> None:
        if var in candidates:
            mentions[var] = mentions.get(var, 0) + 1

    mentions: dict[Any, int] = {}
    structural_walk(func.body, [(TensorLoad, on_load), (tirx.BufferStore, on_store), (tirx.Var, on_var)])
    declared: dict[Any, int] = {}
    for owner in owners.values():
        declared[owner] = declared.get(owner, 0) + 1
    # A parameter mentioned beyond its views' declarations is used as a bare pointer somewhere.
    return {
        p: (k, views[p])
        for p, k in candidates.items()
        if p in views and p not in bad and mentions.get(p, 0) <= declared.get(p, 0)
    }


def unpack_int4_weights(func: PrimFunc) -> PrimFunc:
    found = func.attrs if func.attrs is not None else {}
    wanted = {int(k) for k in (found.get(ATTR_WANTED) or [])}
    taken: set[int] = set()
    for attr in (ATTR_BLOCKED, ATTR_COMPRESSED):
        taken |= {int(k) for k in (found.get(attr) or {})}
    for attr in (ATTR_SPARSE_FILTERLETS, ATTR_SPARSE_ELEMENTS):
        marks = found.get(attr)
        if marks is not None:
            taken |= {int(k) for k in (marks.keys() if hasattr(marks, "keys") else marks)}
    chosen = _chosen(func, wanted, taken) if wanted else {}
    if not chosen:
        return func.with_attr(ATTR_DONE, True)
    owners = parameter_owners(func)
    scratch: dict[Any, Any] = {}
    counts: dict[int, int] = {}
    for p, (k, _) in sorted(chosen.items(), key=lambda item: item[1][0]):
        # The weight's values: its largest view (FlattenBuffer's flat one spans it all).
        n = max(int(np.prod([int(d) for d in b.shape])) for b, o in owners.items() if o.same_as(p))
        counts[k] = n
        scratch[p] = tirx.decl_buffer((padded(n),), "int8", name=f"{p.name}_int8", layout=None)

    def rewrite(load: Any) -> Any:
        owner = owners.get(load.source)
        if owner not in scratch:
            return load
        return tirx.BufferLoad(scratch[owner], list(load.indices))

    body = structural_map(func.body, (TensorLoad, rewrite))
    # What each view is declared over (the parameter's pointer, as FlattenBuffer binds it).
    bindings: dict[Any, Any] = {}

    def bind(decl: Any) -> None:
        bindings.setdefault(decl.buffer, decl.data)

    structural_walk(func.body, (tirx.DeclBuffer, bind))
    zero = tirx.IntImm("int32", 0)
    prologue: list[Any] = []
    for p, (k, view) in sorted(chosen.items(), key=lambda item: item[1][0]):
        # The stored nibbles through a view of their own: the body's views are declared inside it.
        stored = tirx.decl_buffer((padded(counts[k]) // 2,), "int8", name=f"{p.name}_int4", layout=None)
        prologue += [
            tirx.AllocBuffer(scratch[p]),
            tirx.DeclBuffer(stored, data=bindings[view]),
            tirx.Evaluate(
                tirx.call_extern(
                    "int32",
                    UNPACK,
                    tirx.address_of(tirx.BufferLoad(stored, [zero])),
                    tirx.IntImm("int32", padded(counts[k])),
                    tirx.address_of(tirx.BufferLoad(scratch[p], [zero])),
                )
            ),
        ]
    out = func.with_body(tirx.SeqStmt([*prologue, body])).with_attr(ATTR_DONE, True)
    return out.with_attr(ATTR_UNPACKED, counts)


@tvm.transform.module_pass(opt_level=0, name="UnpackInt4Weights")
class UnpackInt4Weights:
    """Store small weights whose every value lies in [-8, 7] and that no blocked kernel reads (a depthwise
    convolution's, a first convolution's over few input channels) as int4, two per byte, for half their
    flash: the whole weight is unpacked into a workspace scratch once per operator call, before anything
    reads it, so every kernel and loop reading it stays as it is.

    Matches
        functions with parameters the compiler marked (``tvmmcu.unpack_int4_weights``: every value, in
        every step calling the function, in [-8, 7]; at most ``MAX_VALUES`` values) that no other
        storage took (not in ``tvmmcu.blocked_weights``, ``tvmmcu.compressed_weights``,
        ``tvmmcu.sparse_filterlets`` or ``tvmmcu.sparse_elements``: PackWeights, CompressWeights and the
        sparse passes store those) and whose every use is an int8 load through a flat view declared over
        the parameter (plain loads, or ``&W[i]`` handed to a kernel: the window kernels, a staged
        plane's loop).
    Rewrites to
        a scratch ``W_int8`` of ``n`` int8 values (``n`` the weight's values rounded up to a multiple of
        8) allocated first in the function, filled by ``tvmmcu_dot_unpack4(&W_int4[0], n, &W_int8[0])``
        (``W_int4``: an int8 view of the parameter, ``n / 2`` bytes); every load ``V[i]`` of a view
        ``V`` of the parameter becomes ``W_int8[i]``. The position moves to
        ``tvmmcu.unpacked_int4_weights`` (position -> values): the compiler stores that constant
        :func:`pack_flat`-ed. The scratch is operator scratch: HoistScratchToWorkspace places it in the
        workspace, so the memory plan of every schedule (row bands, channel slices, in place) counts
        its ``n`` bytes in SRAM for that step.
    Declines when
        no parameter is marked, a marked parameter is blocked, compressed or sparse, is stored to, is
        read through a view of another type or with more than one index, is used other than through
        its views (a bare pointer), or the function already carries ``tvmmcu.int4_unpacked``.
    Numerics
        bit-exact: the scratch holds the very int8 values of the weight (the decoder sign-extends each
        nibble), read at the same indices. Instructions: about 12 per 8 values unpacked, once per call
        (each operator is called once per inference in every schedule).
    Ordering
        after BlockWeights, CompressWeights and the sparse passes (their attributes say what they
        took), before StorageRewrite and HoistScratchToWorkspace (which place the scratch).
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_each(mod, ATTR_DONE, unpack_int4_weights)
