"""One torch rule per Relax operator: how :class:`~tvm_mcu.train.bridge.RelaxModule` evaluates a call.

``RULES`` maps a Relax op name to a :class:`Rule`: a function ``(args, attrs) -> Tensor`` and the exact
set of attribute names it reads. ``args`` are the call's arguments evaluated (tensors; a list of tensors
for a tuple argument; Python numbers for prim values; a tuple of ints for a shape), ``attrs`` the call's
attributes as plain Python values (``_tvm.attr_values``). A rule that meets an attribute value it cannot
reproduce exactly raises :class:`NoRule`; ``RelaxModule`` evaluates every binding once when it is built,
so that happens at construction, never in the middle of training.

Axis 0 is the batch axis everywhere: the Relax graph has batch 1, training runs batches of N. Rules keep
every sample independent and refuse attributes that would mix samples (a softmax, mean, concat or
permutation over axis 0, a reshape whose leading dimension is not the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from tvm_mcu import ops
from tvm_mcu.train import require_torch

require_torch()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

Args = Sequence[Any]
Attrs = Mapping[str, Any]


class NoRule(Exception):
    """An attribute value the torch rule cannot reproduce exactly; the message names it."""


@attrs.frozen
class Rule:
    fn: Callable[[Args, Attrs], Any]
    # Exactly the attribute names ``fn`` reads: a call with any other attribute (a field added by a TVM
    # upgrade, say) is refused rather than silently ignored.
    attrs: frozenset[str]


def _reads(*attrs: str) -> Callable[[Callable[[Args, Attrs], Any]], Any]:
    """Declares the attribute names a rule reads (all of them: any other is refused)."""

    def mark(fn: Callable[[Args, Attrs], Any]) -> Callable[[Args, Attrs], Any]:
        fn.reads = frozenset(attrs)  # type: ignore[attr-defined]
        return fn

    return mark


def _expect(a: Attrs, **wanted: str) -> None:
    for key, value in wanted.items():
        if a[key] != value:
            raise NoRule(f"{key} '{a[key]}' (supported: {value})")


def _float32(a: Attrs) -> None:
    if a["out_dtype"] not in (None, "", "void", "float32"):
        raise NoRule(f"out_dtype '{a['out_dtype']}' (supported: float32)")


def _axis(axis: int, ndim: int, what: str) -> int:
    axis = axis % ndim
    if axis == 0:
        raise NoRule(f"{what} over axis 0, the batch axis")
    return axis


def _padding(a: Attrs) -> tuple[int, int, int, int]:
    """Relax 2-D padding as (top, left, bottom, right)."""
    pad = tuple(a["padding"])
    if len(pad) != 4:
        raise NoRule(f"padding {pad} (expected [top, left, bottom, right])")
    return pad  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- elementwise
def _binary(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[Args, Attrs], Any]:
    # numpy broadcasting, as Relax; scalar constants arrive as 0-d tensors.
    @_reads()
    def fn(args: Args, a: Attrs) -> torch.Tensor:
        return f(args[0], args[1])

    return fn


def _unary(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Args, Attrs], Any]:
    @_reads()
    def fn(args: Args, a: Attrs) -> torch.Tensor:
        return f(args[0])

    return fn


_add, _subtract, _multiply, _divide = (_binary(f) for f in (torch.add, torch.sub, torch.mul, torch.div))
_maximum, _minimum, _power = (_binary(f) for f in (torch.maximum, torch.minimum, torch.pow))
_tanh, _exp, _log, _sqrt = (_unary(f) for f in (torch.tanh, torch.exp, torch.log, torch.sqrt))
_abs, _negative, _erf = (_unary(f) for f in (torch.abs, torch.neg, torch.erf))
_silu = _unary(F.silu)
_gelu = _unary(F.gelu)  # the exact (erf) form, as Relax's


@_reads()
def _relu(args: Args, a: Attrs) -> torch.Tensor:
    return F.relu(args[0])


@_reads()
def _sigmoid(args: Args, a: Attrs) -> torch.Tensor:
    return torch.sigmoid(args[0])


@_reads("alpha")
def _leakyrelu(args: Args, a: Attrs) -> torch.Tensor:
    return F.leaky_relu(args[0], float(a["alpha"]))


@_reads()
def _clip(args: Args, a: Attrs) -> torch.Tensor:
    x, lo, hi = args
    if not isinstance(lo, int | float) or not isinstance(hi, int | float):
        raise NoRule("bounds that are not constants")
    return torch.clamp(x, float(lo), float(hi))


@_reads("axis")
def _softmax(args: Args, a: Attrs) -> torch.Tensor:
    x = args[0]
    return F.softmax(x, dim=_axis(a["axis"], x.ndim, "softmax"))


# ------------------------------------------------------------------------------------- convolution
@_reads(
    *(
        "strides",
        "padding",
        "dilation",
        "groups",
        "data_layout",
        "kernel_layout",
        "out_layout",
        "out_dtype",
    )
)
def _conv2d(args: Args, a: Attrs) -> torch.Tensor:
    _expect(a, data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW")
    _float32(a)
    x, w = args
    top, left, bottom, right = _padding(a)
    if (top, left) == (bottom, right):
        pad: tuple[int, int] = (top, left)
    else:
        x, pad = F.pad(x, (left, right, top, bottom)), (0, 0)
    return F.conv2d(x, w, None, tuple(a["strides"]), pad, tuple(a["dilation"]), int(a["groups"]))


@_reads("out_dtype")
def _matmul(args: Args, a: Attrs) -> torch.Tensor:
    _float32(a)
    return torch.matmul(args[0], args[1])


# ------------------------------------------------------------------------------------- pooling
_POOL_ATTRS = (
    "pool_size",
    "strides",
    "dilation",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "layout",
    "out_layout",
)


def _pool_extent(size: int, k: int, s: int, d: int, before: int, after: int, ceil: bool) -> tuple[int, int]:
    """(output size, extra padding after the explicit one) of one pooled axis, as Relax infers it.

    Relax's ceil_mode adds ``stride - 1`` to the numerator and keeps every window (the last may start in
    the right padding); the extra padding makes a floor-mode pool over the padded axis give that count.
    """
    span = d * (k - 1) + 1
    out = (size + before + after - span + (s - 1 if ceil else 0)) // s + 1
    return out, max(0, (out - 1) * s + span - (size + before + after))


def _pool_geometry(
    x: torch.Tensor, a: Attrs
) -> tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int]]:
    """Padding (left, right, top, bottom) including the ceil_mode extra, output (h, w), extra (h, w)."""
    _expect(a, layout="NCHW", out_layout="NCHW")
    top, left, bottom, right = _padding(a)
    (kh, kw), (sh, sw), (dh, dw) = a["pool_size"], a["strides"], a["dilation"]
    ceil = bool(a["ceil_mode"])
    oh, eh = _pool_extent(x.shape[2], kh, sh, dh, top, bottom, ceil)
    ow, ew = _pool_extent(x.shape[3], kw, sw, dw, left, right, ceil)
    return (left, right + ew, top, bottom + eh), (oh, ow), (eh, ew)


def _window_sum(x: torch.Tensor, a: Attrs) -> torch.Tensor:
    """Sum over each pooling window of an already padded tensor (a depthwise conv by ones: any dilation)."""
    c = x.shape[1]
    ones = torch.ones((c, 1, *a["pool_size"]), dtype=x.dtype, device=x.device)
    return F.conv2d(x, ones, None, tuple(a["strides"]), 0, tuple(a["dilation"]), c)


@_reads(*_POOL_ATTRS)
def _max_pool2d(args: Args, a: Attrs) -> torch.Tensor:
    # count_include_pad has no meaning for a max pool; padding is -inf, so it never wins.
    x = args[0]
    pads, out, _ = _pool_geometry(x, a)
    y = F.max_pool2d(
        F.pad(x, pads, value=float("-inf")),
        tuple(a["pool_size"]),
        tuple(a["strides"]),
        0,
        tuple(a["dilation"]),
    )
    assert tuple(y.shape[2:]) == out, (tuple(y.shape), out)
    return y


@_reads(*_POOL_ATTRS)
def _avg_pool2d(args: Args, a: Attrs) -> torch.Tensor:
    # The divisor counts the window's elements inside the input, plus those in the explicit padding
    # when count_include_pad; never the ceil_mode extra (TVM's topi pool and ONNX AveragePool agree).
    x = args[0]
    pads, out, (eh, ew) = _pool_geometry(x, a)
    sums = _window_sum(F.pad(x, pads), a)
    left, right, top, bottom = pads
    if a["count_include_pad"]:
        h, w = x.shape[2] + top + bottom - eh, x.shape[3] + left + right - ew
        mask = F.pad(x.new_ones((1, 1, h, w)), (0, ew, 0, eh))
    else:
        mask = F.pad(x.new_ones((1, 1, *x.shape[2:])), pads)
    y = sums / _window_sum(mask, a)
    assert tuple(y.shape[2:]) == out, (tuple(y.shape), out)
    return y


@_reads("output_size", "layout", "out_layout")
def _adaptive_avg_pool2d(args: Args, a: Attrs) -> torch.Tensor:
    # torch's windows are TVM's: [floor(i * in / out), ceil((i + 1) * in / out)).
    _expect(a, layout="NCHW", out_layout="NCHW")
    x = args[0]
    size = a["output_size"]
    if size is None:
        size = tuple(x.shape[2:])
    elif len(size) == 1:
        size = (size[0], size[0])
    return F.adaptive_avg_pool2d(x, tuple(size))


@_reads("axis", "keepdims")
def _mean(args: Args, a: Attrs) -> torch.Tensor:
    x = args[0]
    if a["axis"] is None:
        raise NoRule("axis None (a mean over every axis, the batch axis included)")
    axes = tuple(_axis(ax, x.ndim, "mean") for ax in a["axis"])
    return torch.mean(x, dim=axes, keepdim=bool(a["keepdims"]))


# ------------------------------------------------------------------------------------- layout
@_reads()
def _reshape(args: Args, a: Attrs) -> torch.Tensor:
    x, shape = args
    if not isinstance(shape, tuple) or not shape or shape[0] != 1:
        raise NoRule(f"target shape {shape} (the leading dimension must be the batch, 1)")
    return x.reshape(x.shape[0], *shape[1:])


@_reads("axes")
def _permute_dims(args: Args, a: Attrs) -> torch.Tensor:
    x = args[0]
    axes = a["axes"]
    if axes is None or axes[0] % x.ndim != 0:
        raise NoRule(f"axes {axes} (the batch axis 0 must stay first)")
    return x.permute(*axes)


@_reads("axis")
def _concat(args: Args, a: Attrs) -> torch.Tensor:
    parts = args[0]
    if a["axis"] is None:
        raise NoRule("axis None (concatenation of flattened tensors)")
    return torch.cat(list(parts), dim=_axis(a["axis"], parts[0].ndim, "concat"))


@_reads("pad_width", "pad_value", "pad_mode")
def _pad(args: Args, a: Attrs) -> torch.Tensor:
    mode = str(a["pad_mode"])
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise NoRule(f"pad_mode={mode!r}")
    x = args[0]
    widths = tuple(a["pad_width"])
    if len(widths) != 2 * x.ndim:
        raise NoRule(f"pad_width {widths} for a tensor of rank {x.ndim}")
    pairs = [widths[2 * i : 2 * i + 2] for i in range(x.ndim)]
    if any(pairs[0]):
        raise NoRule(f"pad_width {widths} (pads the batch axis)")
    # Relax: (before, after) per axis from the first; torch: from the last axis backwards.
    flat = [w for pair in reversed(pairs) for w in pair]
    if mode == "constant":
        return F.pad(x, flat, value=float(a["pad_value"]))
    # torch pads only the spatial axes (the last ndim - 2) in these modes, the same as Relax's TOPI
    # kernels for pads within the axis' size.
    if any(pairs[1]) or not 3 <= x.ndim <= 5:
        raise NoRule(f"pad_mode={mode!r} on the channel axis or a rank-{x.ndim} tensor")
    return F.pad(x, flat[: 2 * (x.ndim - 2)], mode=mode)


@_reads("axis")
def _prelu(args: Args, a: Attrs) -> torch.Tensor:
    x, slope = args
    axis = _axis(a["axis"], x.ndim, "prelu")
    shaped = slope.reshape((-1,) + (1,) * (x.ndim - 1 - axis)) if slope.numel() > 1 else slope.reshape(())
    return torch.where(x < 0, x * shaped, x)


def _reduction(f: Callable[..., torch.Tensor], what: str) -> Callable[[Args, Attrs], Any]:
    @_reads("axis", "keepdims")
    def fn(args: Args, a: Attrs) -> torch.Tensor:
        x = args[0]
        if a["axis"] is None:
            raise NoRule(f"{what} over every axis (the batch axis included)")
        axes = tuple(_axis(ax, x.ndim, what) for ax in a["axis"])
        return f(x, axes, bool(a["keepdims"]))

    return fn


_sum = _reduction(lambda x, axes, keep: torch.sum(x, dim=axes, keepdim=keep), "sum")
_max = _reduction(lambda x, axes, keep: torch.amax(x, dim=axes, keepdim=keep), "max")
_min = _reduction(lambda x, axes, keep: torch.amin(x, dim=axes, keepdim=keep), "min")


@_reads("axis")
def _log_softmax(args: Args, a: Attrs) -> torch.Tensor:
    x = args[0]
    return F.log_softmax(x, dim=_axis(a["axis"], x.ndim, "log-softmax"))


@_reads("axis")
def _squeeze(args: Args, a: Attrs) -> torch.Tensor:
    x = args[0]
    if a["axis"] is None:
        raise NoRule("axis None (would squeeze a batch of 1)")
    axes = sorted((_axis(ax, x.ndim, "squeeze") for ax in a["axis"]), reverse=True)
    for ax in axes:
        x = x.squeeze(ax)
    return x


@_reads("axis")
def _expand_dims(args: Args, a: Attrs) -> torch.Tensor:
    x = args[0]
    rank = x.ndim + len(a["axis"])
    for ax in sorted(int(v) % rank for v in a["axis"]):
        if ax == 0:
            raise NoRule("a new axis 0 (before the batch axis)")
        x = x.unsqueeze(ax)
    return x


RULES: dict[str, Rule] = {op: Rule(fn, fn.reads) for op, fn in ops.rules("train", globals()).items()}
