"""Weights that sparse pruning may zero, and what their zeros are worth in flash and MACs.

A *weight site* is the constant weight of a 2-D convolution (OIHW, the inference form) or of a dense
layer (``matmul`` by a constant ``[in, out]``). A convolution with a window of more than one tap and
``groups == 1`` has *filterlets* (DTMM, Han et al. 2024): output filter ``o``'s weights at one tap
across all input channels, ``W[o, :, ky, kx]`` (``W[o, ky, kx, :]`` once the compiler stores it OHWI).
A 1x1 convolution's filterlet is its whole filter (channel pruning's unit) and a depthwise filterlet
is one weight, so neither has filterlets of its own; every site has elements.

Counting (:func:`stored_bytes`, :func:`kept_macs`) prices a weight as it would be stored compactly:

- ``filterlet``: DTMM's CSR over filterlets, the layout of
  :func:`tvm_mcu.passes.tir.sparse_kernels.compress_blob`: int16 row pointers (one per output channel,
  plus one), a uint8 tap per kept filterlet, zeros to a multiple of 8 bytes, then the kept filterlets'
  values (input channels x value size each): about 1 B per kept filterlet and 2 B per output channel.
- ``unstructured``: CSR over elements, rows the output channels and columns the rest of the weight
  (``kh * kw * I`` or the dense layer's inputs). int8, the compiler's format
  (:mod:`tvm_mcu.passes.tir.sparse_element_kernels`): per kept value the value and its one-byte
  distance from the previous one (a zero entry bridging each 255 columns of a longer gap), and a
  uint16 row pointer per row plus one. Float weights (no element kernel yet): a column index per kept
  value (uint8 when the columns fit 256, else uint16) and row pointers (uint16 when the kept count
  fits 65535, else uint32).

A weight is counted compact only where that is smaller than dense; its MACs are then the kept weights'
(the sparse kernel visits nothing else), and dense otherwise. Its instructions are priced by the one cost
model (:mod:`tvm_mcu.schedule.cost`): the sparse kernel's per kept MAC and per output where it is
stored compact, the dense kernels' per MAC otherwise. Read-only: nothing here changes a module.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np

from tvm_mcu import _tvm
from tvm_mcu.analysis.channels import bindings, unique_names
from tvm_mcu.schedule import cost

# A weight site's mask: True where the weight is kept (the weight's shape).
Masks = Mapping[tuple[int, int], np.ndarray]


@attrs.frozen
class WeightSite:
    """Constant argument ``arg`` of binding ``binding``: a convolution's or dense layer's weight."""

    binding: int
    arg: int
    label: str  # the ONNX node it came from ("Conv 'conv2'"), else the binding's name
    op: str  # "conv2d" or "dense"
    shape: tuple[int, ...]
    out_axis: int  # the output channels' axis: 0 (OIHW) or 1 (dense [in, out])
    pixels: int  # output positions per output channel: MACs per weight
    filterlets: bool  # kh * kw > 1 and groups == 1

    @property
    def key(self) -> tuple[int, int]:
        return (self.binding, self.arg)

    @property
    def out_channels(self) -> int:
        return self.shape[self.out_axis]

    @property
    def columns(self) -> int:
        """Weights per output channel (a CSR row)."""
        return int(np.prod(self.shape)) // self.out_channels

    def units(self, granularity: str) -> int:
        """How many prunable units the weight has: filterlets (O * kh * kw) or elements."""
        if granularity == "filterlet":
            return self.shape[0] * self.shape[2] * self.shape[3]
        return int(np.prod(self.shape))


def weight_sites(mod: _tvm.IRModule) -> tuple[WeightSite, ...]:
    """Every convolution (OIHW, NCHW output) and dense layer of ``main`` with a constant weight.

    A convolution in another layout is left out: the inference form is NCHW/OIHW, and a site whose
    filterlet axes are not known is never guessed at.
    """
    func = mod["main"]
    binds = bindings(func)
    names = unique_names(binds)
    sites = []
    for i, b in enumerate(binds):
        call = b.value
        op = _tvm.op_name(call) if isinstance(call, _tvm.RelaxCall) else None
        if op not in ("relax.nn.conv2d", "relax.matmul") or not isinstance(call.args[1], _tvm.RelaxConst):
            continue
        shape = tuple(int(d) for d in _tvm.const_value(call.args[1]).shape)
        out = _tvm.tensor_shape(b.var.ty)
        label = _tvm.provenance(func, b.var) or f"{op} '{names[i]}'"
        if op == "relax.nn.conv2d":
            a = call.attrs
            if (str(a.kernel_layout), str(a.out_layout or a.data_layout)) != ("OIHW", "NCHW"):
                continue
            groups = int(a.groups)
            pixels = int(np.prod(out)) // out[1]
            sites.append(
                WeightSite(i, 1, label, "conv2d", shape, 0, pixels, shape[2] * shape[3] > 1 and groups == 1)
            )
        elif len(shape) == 2:
            sites.append(WeightSite(i, 1, label, "dense", shape, 1, int(np.prod(out)) // shape[1], False))
    return tuple(sites)


def filterlet_kept(mask: np.ndarray) -> np.ndarray:
    """Per (output channel, tap) of an OIHW mask: True when the filterlet keeps any weight."""
    return np.asarray(mask.any(axis=1))


def kept_units(site: WeightSite, mask: np.ndarray | None, granularity: str) -> int:
    if mask is None:
        return site.units(granularity)
    return int(filterlet_kept(mask).sum() if granularity == "filterlet" else np.count_nonzero(mask))


def dense_bytes(site: WeightSite, itemsize: int) -> int:
    return int(np.prod(site.shape)) * itemsize


def compact_bytes(site: WeightSite, mask: np.ndarray, granularity: str, itemsize: int) -> int:
    """The weight in its compact format (module docstring), whether or not that is smaller than dense."""
    if granularity == "filterlet":
        kept = int(filterlet_kept(mask).sum())
        head = 2 * (site.out_channels + 1) + kept
        return head + (-head % 8) + kept * site.shape[1] * itemsize
    if itemsize == 1:
        # The compiler's element CSR (an int8 value and a one-byte distance per entry, bridges over
        # distances beyond 255), over each output channel's weights in its stored order: OHWI for a
        # convolution, a row of the [out, in] weights for a dense layer.
        from tvm_mcu.passes.tir import sparse_element_kernels

        stored = np.moveaxis(mask, 1, -1) if site.op == "conv2d" else np.asarray(mask).T
        try:
            return sparse_element_kernels.blob_bytes(np.ascontiguousarray(stored).astype(np.int8))
        except ValueError:  # more entries than its row pointers hold: not storable so
            return dense_bytes(site, itemsize) + 1
    nnz = int(np.count_nonzero(mask))
    column = 1 if site.columns <= 1 << 8 else 2
    row = 2 if nnz < 1 << 16 else 4
    return nnz * (itemsize + column) + (site.out_channels + 1) * row


def stored_bytes(site: WeightSite, mask: np.ndarray | None, granularity: str, itemsize: int) -> int:
    """Bytes of the weight as stored: compact where that is smaller, else dense."""
    dense = dense_bytes(site, itemsize)
    if mask is None or granularity not in ("filterlet", "unstructured"):
        return dense
    return min(dense, compact_bytes(site, mask, granularity, itemsize))


def kept_macs(site: WeightSite, mask: np.ndarray | None, granularity: str, itemsize: int) -> int:
    """MACs of the layer: the kept weights' where the weight is stored compact, else every weight's."""
    dense = int(np.prod(site.shape))
    if mask is None or stored_bytes(site, mask, granularity, itemsize) == dense_bytes(site, itemsize):
        return site.pixels * dense
    return site.pixels * int(np.count_nonzero(mask))


def dense_instructions(site: WeightSite, itemsize: int) -> float:
    """The layer's instructions with its weights dense (the cost model's dense layer)."""
    return cost.conv_layer(itemsize).instructions(
        site.pixels * int(np.prod(site.shape)), site.pixels * site.out_channels
    )


def instructions(site: WeightSite, mask: np.ndarray | None, granularity: str, itemsize: int) -> float:
    """The layer's instructions as the cost model prices its kernel (module docstring)."""
    if mask is None or stored_bytes(site, mask, granularity, itemsize) == dense_bytes(site, itemsize):
        return dense_instructions(site, itemsize)
    outputs = site.pixels * site.out_channels
    return cost.SPARSE[granularity].instructions(kept_macs(site, mask, granularity, itemsize), outputs)


def filterlet_figures(site: WeightSite, kept: int, itemsize: int) -> tuple[int, int, float]:
    """(bytes, MACs, instructions) of a filterlet site keeping ``kept`` filterlets, whichever they are:
    what :func:`stored_bytes`, :func:`kept_macs` and :func:`instructions` give for any such mask, from
    the count alone (a search over per-layer ratios prices thousands of candidates)."""
    dense = dense_bytes(site, itemsize)
    head = 2 * (site.out_channels + 1) + kept
    compact = head + (-head % 8) + kept * site.shape[1] * itemsize
    if compact >= dense:
        return dense, site.pixels * int(np.prod(site.shape)), dense_instructions(site, itemsize)
    macs = site.pixels * kept * site.shape[1]
    return compact, macs, cost.SPARSE["filterlet"].instructions(macs, site.pixels * site.out_channels)


@attrs.frozen
class Saving:
    """What a set of masks saves against the dense weights, as counted (module docstring)."""

    flash: int
    macs: int
    instructions: float = 0.0


def counted_saving(
    sites: tuple[WeightSite, ...],
    masks: Masks,
    granularity: str,
    itemsize: int,
) -> Saving:
    """Bytes, MACs and instructions the compact storage of ``masks`` saves against storing every site
    dense."""
    flash = macs = 0
    instr = 0.0
    for s in sites:
        mask = masks.get(s.key)
        flash += dense_bytes(s, itemsize) - stored_bytes(s, mask, granularity, itemsize)
        macs += s.pixels * int(np.prod(s.shape)) - kept_macs(s, mask, granularity, itemsize)
        instr += dense_instructions(s, itemsize) - instructions(s, mask, granularity, itemsize)
    return Saving(flash, macs, instr)
