"""The layers and blocks the random CNN generator draws from: each takes the builder and the current tensor,
emits its nodes with drawn attributes (every output shape computed here, with ``windows.py``), and
returns the new tensor, or None when it does not fit the current shape or the size limits."""

from __future__ import annotations

import numpy as np

from tvm_mcu.fuzz.builder import MAX_ELEMENTS, Builder, Tensor
from tvm_mcu.fuzz.windows import Window, conv_window, pool_window

_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")
_HARDSWISH_OPSET = 14
_RESHAPE_ALLOWZERO_OPSET = 14
_PAD_AXES_OPSET = 18


# ----------------------------------------------------------------------------------- elementwise
def activation(g: Builder, x: Tensor) -> Tensor:
    """One activation, its attributes drawn."""
    ops = _ACTIVATIONS if g.opset >= _HARDSWISH_OPSET else _ACTIVATIONS[:-1]
    op = g.pick(ops, (3, 3, 1.5, 1, 1, 1, 1)[: len(ops)])
    if op == "Clip":
        lo = g.uniform(-3.0, 0.5)
        hi = lo + g.uniform(0.5, 6.0)
        bounds = g.pick(("both", "min", "max", "none"), (0.55, 0.2, 0.2, 0.05))
        ins = [
            x.name,
            g.scalar("clip_min", lo) if bounds in ("both", "min") else "",
            g.scalar("clip_max", hi) if bounds in ("both", "max") else "",
        ]
        while not ins[-1]:
            ins.pop()  # trailing optional inputs are left out
        return g.node("Clip", ins, x.shape)
    if op == "LeakyRelu":
        return g.node(op, [x.name], x.shape, alpha=g.uniform(0.01, 0.3))
    if op == "HardSigmoid":
        return g.node(op, [x.name], x.shape, alpha=g.uniform(0.1, 0.3), beta=g.uniform(0.3, 0.7))
    return g.node(op, [x.name], x.shape)


def batch_norm(g: Builder, x: Tensor) -> Tensor:
    c = x.shape[1]
    g.params += 4 * c
    scale = g.const("bn_scale", g.rng.uniform(0.5, 1.5, c).astype(np.float32))
    bias = g.const("bn_bias", (g.rng.standard_normal(c) * 0.1).astype(np.float32))
    mean = g.const("bn_mean", (g.rng.standard_normal(c) * 0.1).astype(np.float32))
    var = g.const("bn_var", g.rng.uniform(0.5, 1.5, c).astype(np.float32))
    eps = float(g.pick((1e-5, 1e-3)))
    return g.node("BatchNormalization", [x.name, scale, bias, mean, var], x.shape, epsilon=eps)


def const_arith(g: Builder, x: Tensor) -> Tensor:
    """Add / Sub / Mul / Div by a constant broadcast as a scalar, per channel or per element."""
    op = g.pick(("Mul", "Sub", "Add", "Div"), (3, 3, 2, 1))
    if len(x.shape) == 4:
        _, c, h, w = x.shape
        shape = g.pick(((), (c, 1, 1), (1, c, 1, 1), (1, 1, 1, w), (1, c, h, w)), (3, 3, 1, 1, 1))
    else:
        shape = g.pick(((), (x.shape[-1],)))
    if op in ("Mul", "Div"):
        value = g.rng.uniform(0.5, 1.5, shape) * g.rng.choice((-1.0, 1.0), shape)
    else:
        value = g.rng.standard_normal(shape) * 0.5
    g.params += int(np.prod(shape))
    k = g.const("k", np.asarray(value, dtype=np.float32))
    first = op == "Div" or g.chance(0.6)
    return g.node(op, [x.name, k] if first else [k, x.name], x.shape)


# ----------------------------------------------------------------------------------- windows
def _window_attrs(auto_pad: str, windows: tuple[Window, Window], explicit_pads: bool) -> dict[str, object]:
    a: dict[str, object] = {}
    if auto_pad != "NOTSET":
        a["auto_pad"] = auto_pad
    elif explicit_pads or any(w.pad_begin or w.pad_end for w in windows):
        a["pads"] = [windows[0].pad_begin, windows[1].pad_begin, windows[0].pad_end, windows[1].pad_end]
    return a


def conv(
    g: Builder,
    x: Tensor,
    *,
    keep_size: bool = False,
    kind: str | None = None,
    channels: int | None = None,
    gain: float = 2.0,
) -> Tensor | None:
    """Conv (plain, depthwise or grouped) with drawn kernel, stride, dilation and padding; ``channels``
    output channels if given (a depthwise one then keeps its input's), else drawn."""
    _, c, h, w = x.shape
    kind = kind or g.pick(("plain", "depthwise", "grouped"), (6, 2, 1.5))
    kh = g.pick((1, 3, 5), (3, 5, 2))
    kw = kh if g.chance(0.75) else g.pick((1, 3, 5), (3, 5, 2))
    auto_pad = g.pick(("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"), (6, 1.5, 1.5, 0 if keep_size else 1))
    wh = conv_window(g.rng, h, kh, auto_pad, keep_size=keep_size)
    ww = conv_window(g.rng, w, kw, auto_pad, keep_size=keep_size)
    if kind == "depthwise":
        multiplier = 1 if channels is not None else int(g.pick((1, 1, 2)))
        group, c_out = c, c * multiplier
    elif kind == "grouped" and c > 1:
        group = int(g.pick(tuple(d for d in range(2, c + 1) if c % d == 0)))
        c_out = group * int(g.rng.integers(1, max(2, 16 // group) + 1))
    else:
        group, c_out = 1, channels or int(g.pick((2, 4, 6, 8, 12, 16)))
    # Fewer output channels until the output and the weights fit (a multiple of the group stays valid).
    per_channel = (c // group) * wh.kernel * ww.kernel
    while c_out > group and (c_out * wh.out * ww.out > MAX_ELEMENTS or c_out * per_channel > g.room()):
        c_out -= group
    if c_out * wh.out * ww.out > MAX_ELEMENTS or c_out * per_channel > g.room():
        return None
    ins = [x.name, g.weight((c_out, c // group, wh.kernel, ww.kernel), per_channel, gain)]
    if g.chance(0.8):
        ins.append(g.small((c_out,)))
    a = _window_attrs(auto_pad, (wh, ww), g.chance(0.3))
    if wh.stride > 1 or ww.stride > 1 or g.chance(0.2):
        a["strides"] = [wh.stride, ww.stride]
    if wh.dilation > 1 or ww.dilation > 1 or g.chance(0.1):
        a["dilations"] = [wh.dilation, ww.dilation]
    if group > 1 or g.chance(0.1):
        a["group"] = group
    if g.chance(0.7):
        a["kernel_shape"] = [wh.kernel, ww.kernel]
    return g.node("Conv", ins, (1, c_out, wh.out, ww.out), **a)


def pool(g: Builder, x: Tensor, *, keep_size: bool = False) -> Tensor | None:
    """MaxPool or AveragePool with drawn kernel, stride, pads, ceil_mode (and dilations for MaxPool)."""
    _, c, h, w = x.shape
    op = g.pick(("MaxPool", "AveragePool"))
    if keep_size:
        a: dict[str, object] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
        if g.chance(0.3):
            a["ceil_mode"] = 1  # no effect at stride 1, but the attribute must still be read right
        if op == "AveragePool":
            a["count_include_pad"] = int(g.chance(0.5))
        return g.node(op, [x.name], x.shape, **a)
    kh = g.pick((2, 3, 1, 5), (5, 4, 0.5, 0.5))
    kw = kh if g.chance(0.7) else g.pick((2, 3, 1), (5, 4, 1))
    auto_pad = g.pick(("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"), (7, 1, 1, 1))
    ceil = auto_pad == "NOTSET" and g.chance(0.5)
    wh = pool_window(g.rng, h, kh, auto_pad, ceil=ceil, max_pool=op == "MaxPool")
    ww = pool_window(g.rng, w, kw, auto_pad, ceil=ceil, max_pool=op == "MaxPool")
    if ceil and (wh is None or ww is None):
        # ceil_mode would have a window start in the end padding on some axis: draw again without it.
        ceil = False
        wh = pool_window(g.rng, h, kh, auto_pad, ceil=False, max_pool=op == "MaxPool")
        ww = pool_window(g.rng, w, kw, auto_pad, ceil=False, max_pool=op == "MaxPool")
    if wh is None or ww is None or c * wh.out * ww.out > MAX_ELEMENTS:
        return None
    a = {"kernel_shape": [wh.kernel, ww.kernel], **_window_attrs(auto_pad, (wh, ww), g.chance(0.2))}
    if wh.stride > 1 or ww.stride > 1 or g.chance(0.3):
        a["strides"] = [wh.stride, ww.stride]
    if ceil:
        a["ceil_mode"] = 1
    if wh.dilation > 1 or ww.dilation > 1:
        a["dilations"] = [wh.dilation, ww.dilation]
    if op == "AveragePool" and g.chance(0.5):
        a["count_include_pad"] = int(g.chance(0.5))
    return g.node(op, [x.name], (1, c, wh.out, ww.out), **a)


def global_pool(g: Builder, x: Tensor) -> Tensor:
    op = g.pick(("GlobalAveragePool", "GlobalMaxPool"), (3, 1))
    return g.node(op, [x.name], (1, x.shape[1], 1, 1))


# ----------------------------------------------------------------------------------- blocks
def conv_block(g: Builder, x: Tensor) -> Tensor | None:
    """Conv, then maybe BatchNormalization, then maybe an activation."""
    act = g.chance(0.7)
    y = conv(g, x, gain=2.0 if act else 1.0)
    if y is None:
        return None
    if g.chance(0.3):
        y = batch_norm(g, y)
    return activation(g, y) if act else y


def residual(g: Builder, x: Tensor) -> Tensor | None:
    """x + f(x) where f keeps the shape (one or two size-keeping convs, or a size-keeping pool), or
    x + an earlier tensor of the same shape."""
    same = [v for v in g.values[:-1] if v.shape == x.shape and v.name != x.name]
    if same and g.chance(0.3):
        other = g.pick(tuple(same))
    else:
        y: Tensor | None = x
        for _ in range(int(g.pick((1, 2)))):
            kind = g.pick(("plain", "depthwise"), (3, 1))
            y = conv(g, y, keep_size=True, kind=kind, channels=x.shape[1], gain=1.0) if y else None
            if y is not None and g.chance(0.5):
                y = activation(g, y)
        if y is None or y.shape != x.shape:
            return None
        other = y
    ins = [x.name, other.name] if g.chance(0.5) else [other.name, x.name]
    out = g.node("Add", ins, x.shape)
    return activation(g, out) if g.chance(0.4) else out


def concat(g: Builder, x: Tensor) -> Tensor | None:
    """Concat on channels of two size-keeping branches of x, or of x and an earlier tensor of its size."""
    _, c, h, w = x.shape
    earlier = [v for v in g.values[:-1] if len(v.shape) == 4 and v.shape[2:] == (h, w) and v.name != x.name]
    if earlier and g.chance(0.3):
        parts = [x, g.pick(tuple(earlier))]
    else:
        a = conv(g, x, keep_size=True, kind="plain") if g.chance(0.7) else x
        b = pool(g, x, keep_size=True) if g.chance(0.4) else conv(g, x, keep_size=True)
        if a is None or b is None:
            return None
        parts = [a, b]
    channels = sum(p.shape[1] for p in parts)
    if channels * h * w > MAX_ELEMENTS:
        return None
    if g.chance(0.5):
        parts.reverse()
    return g.node("Concat", [p.name for p in parts], (1, channels, h, w), axis=int(g.pick((1, -3))))


def pad(g: Builder, x: Tensor) -> Tensor | None:
    """Pad (constant, reflect or edge) on the spatial axes, rarely on the channels too."""
    _, c, h, w = x.shape
    mode = g.pick(("constant", "reflect", "edge"), (2, 1.5, 1.5))
    limit = (min(h, w) - 1) if mode == "reflect" else 2
    if limit < 1:
        return None
    sp = [int(v) for v in g.rng.integers(0, min(limit, 2) + 1, size=4)]  # h0, w0, h1, w1
    ch = [int(v) for v in g.rng.integers(0, 2, size=2)] if mode == "constant" and g.chance(0.1) else [0, 0]
    shape = (1, c + ch[0] + ch[1], h + sp[0] + sp[2], w + sp[1] + sp[3])
    if int(np.prod(shape)) > MAX_ELEMENTS:
        return None
    a: dict[str, object] = {} if mode == "constant" and g.chance(0.5) else {"mode": mode}
    if g.opset >= _PAD_AXES_OPSET and ch == [0, 0] and g.chance(0.4):
        ins = [x.name, g.const("pads", np.array(sp, np.int64))]
        ins += ["", g.const("axes", np.array([2, 3], np.int64))]
    else:
        pads = [0, ch[0], sp[0], sp[1], 0, ch[1], sp[2], sp[3]]
        ins = [x.name, g.const("pads", np.array(pads, np.int64))]
    if mode == "constant" and g.chance(0.5):
        value = g.scalar("pad_value", g.uniform(-1.0, 1.0))
        ins = [*ins[:2], value, *ins[3:]] if len(ins) > 2 else [*ins, value]
    return g.node("Pad", ins, shape, **a)


def transpose(g: Builder, x: Tensor) -> Tensor | None:
    perm = g.pick(((0, 1, 3, 2), (0, 2, 1, 3), (0, 3, 2, 1), (0, 2, 3, 1), (0, 3, 1, 2)))
    shape = tuple(x.shape[p] for p in perm)
    if shape[1] > 24:  # too many channels for the convolutions that may follow
        return None
    return g.node("Transpose", [x.name], shape, perm=list(perm))


def reshape(g: Builder, x: Tensor) -> Tensor | None:
    """A 4-D reshape that reinterprets the layout (H and W exchanged, channels folded into rows...)."""
    _, c, h, w = x.shape
    options = [(1, c, w, h)]
    if c % 2 == 0:
        options.append((1, c // 2, 2 * h, w))
    if h % 2 == 0 and 2 * c <= 24:
        options.append((1, 2 * c, h // 2, w))
    shape = g.pick(tuple(options))
    if shape == x.shape:
        return None
    target = list(shape)
    if g.chance(0.5):
        target[int(g.rng.integers(1, 4))] = -1
    if g.chance(0.3) and target[1] == c:
        target[1] = 0  # copy the input's channel count (allowzero = 0)
    a = {"allowzero": 0} if g.opset >= _RESHAPE_ALLOWZERO_OPSET and g.chance(0.3) else {}
    return g.node("Reshape", [x.name, g.const("shape", np.array(target, np.int64))], shape, **a)


def second_input(g: Builder, x: Tensor) -> Tensor | None:
    """A second graph input joined to x by Add, Mul or Concat."""
    if len(g.inputs) > 1:
        return None
    _, c, h, w = x.shape
    op = g.pick(("Add", "Mul", "Concat"))
    if op == "Concat":
        c2 = int(g.rng.integers(1, 4))
        if (c + c2) * h * w > MAX_ELEMENTS:
            return None
        y = g.input((1, c2, h, w))
        return g.node("Concat", [x.name, y.name], (1, c + c2, h, w), axis=1)
    y = g.input(x.shape)
    return g.node(op, [x.name, y.name], x.shape)


def identity(g: Builder, x: Tensor) -> Tensor:
    return g.node("Identity", [x.name], x.shape)


def bn_or_act(g: Builder, x: Tensor) -> Tensor:
    return batch_norm(g, x) if g.chance(0.4) else activation(g, x)
