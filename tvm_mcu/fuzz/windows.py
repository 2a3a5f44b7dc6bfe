"""Sliding-window geometry for the random CNN generator: kernel, stride, dilation and padding per axis.

The generator tracks every shape itself (it never asks shape inference), so these functions are the one
place where ONNX's output-size rules are written down. Each draws the attributes of one window with the
generator's seeded ``rng`` and returns them with the output size they give.

Pooling with ``ceil_mode`` is only drawn where the ONNX specification and onnxruntime agree on the output
size: onnxruntime (like PyTorch) drops a last window that starts in the end padding, the specification's
formula (and ``onnx.checker``'s shape inference) keeps it.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

# ONNX auto_pad values; NOTSET means explicit ``pads`` (or none, which is all zeros).
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@attrs.frozen
class Window:
    """One spatial axis of a convolution or pooling window."""

    kernel: int
    stride: int
    dilation: int
    pad_begin: int  # explicit pads only (auto_pad NOTSET); 0 otherwise
    pad_end: int
    out: int

    @property
    def extent(self) -> int:
        """The span of the dilated kernel."""
        return self.dilation * (self.kernel - 1) + 1


def out_size(size: int, extent: int, stride: int, pad_total: int, auto_pad: str, ceil: bool = False) -> int:
    """ONNX's output size of one window axis (0 or less when the window does not fit)."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return math.ceil(size / stride)
    if auto_pad == "VALID":
        return (size - extent) // stride + 1 if size >= extent else 0
    span = size + pad_total - extent
    if span < 0:
        return 0
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def same_stride(size: int, extent: int, stride: int) -> int:
    """``stride``, or 1 when SAME padding would need a negative total pad (a stride longer than the
    window skips input), which onnxruntime refuses."""
    return stride if (math.ceil(size / stride) - 1) * stride + extent >= size else 1


def _pick(rng: np.random.Generator, values: tuple[int, ...], weights: tuple[float, ...]) -> int:
    p = np.asarray(weights, dtype=np.float64)
    return int(values[int(rng.choice(len(values), p=p / p.sum()))])


def conv_window(
    rng: np.random.Generator, size: int, kernel: int, auto_pad: str, *, keep_size: bool = False
) -> Window:
    """A convolution window of ``kernel`` over an axis of ``size``; it always fits (the kernel's dilation,
    then the kernel itself, shrink until it does). ``keep_size``: stride 1 and ``out == size``."""
    stride = 1 if keep_size else _pick(rng, (1, 2, 3), (0.6, 0.3, 0.1))
    # onnxruntime refuses dilations with auto_pad SAME_*.
    same = auto_pad in ("SAME_UPPER", "SAME_LOWER")
    dilation = 1 if kernel == 1 or same else _pick(rng, (1, 2, 3), (0.8, 0.15, 0.05))
    while True:
        extent = dilation * (kernel - 1) + 1
        if same:
            stride = same_stride(size, extent, stride)
            return Window(kernel, stride, dilation, 0, 0, out_size(size, extent, stride, 0, auto_pad))
        if keep_size:
            # Explicit pads summing to extent - 1, split anywhere (asymmetric included).
            begin = int(rng.integers(0, extent)) if rng.random() < 0.4 else (extent - 1) // 2
            return Window(kernel, stride, dilation, begin, extent - 1 - begin, size)
        if auto_pad == "VALID":
            begin = end = 0
        elif rng.random() < 0.6:
            begin = end = int(rng.integers(0, extent))
        else:
            begin, end = (int(v) for v in rng.integers(0, extent, size=2))
        out = out_size(size, extent, stride, begin + end, auto_pad)
        if out >= 1:
            return Window(kernel, stride, dilation, begin, end, out)
        if dilation > 1:
            dilation -= 1
        else:
            kernel = max(1, kernel - 2)


def pool_window(
    rng: np.random.Generator, size: int, kernel: int, auto_pad: str, *, ceil: bool, max_pool: bool
) -> Window | None:
    """A pooling window over an axis of ``size`` (pads smaller than the kernel, as onnxruntime requires),
    or None when ``kernel`` does not fit or ``ceil`` would make the specification and onnxruntime
    disagree."""
    stride = _pick(rng, (1, 2, 3), (0.35, 0.5, 0.15))
    # onnxruntime's SAME padding ignores dilations: dilated windows take explicit pads only.
    dilated = max_pool and kernel > 1 and auto_pad in ("NOTSET", "VALID")
    dilation = _pick(rng, (1, 2), (0.85, 0.15)) if dilated else 1
    extent = dilation * (kernel - 1) + 1
    if auto_pad == "NOTSET":
        if rng.random() < 0.5:
            begin = end = 0
        else:
            begin, end = (int(v) for v in rng.integers(0, kernel, size=2))
    else:
        begin = end = 0
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        stride = same_stride(size, extent, stride)
    out = out_size(size, extent, stride, begin + end, auto_pad, ceil)
    if out < 1:
        return None
    if ceil and (out - 1) * stride >= size + begin:
        return None
    return Window(kernel, stride, dilation, begin, end, out)
