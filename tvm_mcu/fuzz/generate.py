"""Seeded random float32 ONNX CNNs: the models the fuzzer compiles.

``random_cnn(seed)`` draws a small CNN from ``np.random.default_rng(seed)`` alone, so a seed names a model:
the same seed gives byte-identical protobufs. The generator tracks every shape itself (``windows.py`` holds
ONNX's window arithmetic), so each node is valid by construction; the result passes
``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime.

What a model may hold (opsets 13 to 21): Conv with kernels 1, 3 and 5 (square or not), strides 1 to 3,
dilations, explicit symmetric or asymmetric pads or ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID, plain,
depthwise (with a channel multiplier) and grouped; MaxPool / AveragePool with pads, ``ceil_mode``,
``count_include_pad`` and (MaxPool) dilations; GlobalAveragePool, GlobalMaxPool; BatchNormalization;
Relu, Clip with any bounds (none, lower, upper, both), LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish;
residual Add (a branch or an earlier tensor), Concat; Add / Sub / Mul / Div by constants broadcast in
several ways; Pad (constant, reflect, edge); Reshape, Flatten, Transpose, Identity; a dense head
(Gemm with or without ``transB``, alpha, beta, bias) and Softmax; one to three outputs and an optional
second input.

Size: every activation stays within ``MAX_ELEMENTS`` floats and all weights within ``MAX_PARAMS``, so a
model compiles in seconds and fits the smallest board (lm3s6965evb: 64 KiB SRAM, 256 KiB flash).
Weights are He-scaled normals, so activations of a standard-normal input neither vanish nor explode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu.fuzz.windows import Window, conv_window, pool_window

T = TypeVar("T")

OPSETS = tuple(range(13, 22))
# 12 KiB of float32 per activation tensor: a few live at once still fit lm3s6965evb's 64 KiB.
MAX_ELEMENTS = 3072
# 48 KiB of float32 weights in all (lm3s6965evb has 256 KiB of flash).
MAX_PARAMS = 12288
_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")
_HARDSWISH_OPSET = 14
_RESHAPE_ALLOWZERO_OPSET = 14
_PAD_AXES_OPSET = 18


@attrs.frozen
class Tensor:
    """A value of the graph under construction; batch 1 is always its first dimension."""

    name: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


class _Builder:
    """Nodes, initializers and inputs of one model, with the seeded generator that draws them."""

    def __init__(self, rng: np.random.Generator, opset: int) -> None:
        self.rng = rng
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[Tensor] = []
        self.values: list[Tensor] = []  # node outputs, in order: candidates for skips and extra outputs
        self.params = 0
        self._count = 0

    # ------------------------------------------------------------------------------- drawing
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        p = None if weights is None else np.asarray(weights) / np.sum(weights)
        return options[int(self.rng.choice(len(options), p=p))]

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    # ------------------------------------------------------------------------------- emitting
    def _fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self._fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, gain: float = 2.0) -> str:
        """He-scaled normal weights (variance ``gain / fan_in``)."""
        self.params += int(np.prod(shape))
        w = self.rng.standard_normal(shape) * np.sqrt(gain / max(fan_in, 1))
        return self.const("w", w.astype(np.float32))

    def small(self, shape: tuple[int, ...], scale: float = 0.1) -> str:
        self.params += int(np.prod(shape))
        return self.const("b", (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def scalar(self, base: str, value: float) -> str:
        return self.const(base, np.array(value, dtype=np.float32))

    def input(self, shape: tuple[int, ...]) -> Tensor:
        t = Tensor("input" if not self.inputs else f"input_{len(self.inputs) + 1}", shape)
        self.inputs.append(t)
        return t

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attributes: Any) -> Tensor:
        name = self._fresh(op.lower())
        out = Tensor(f"{name}_out", tuple(int(d) for d in shape))
        self.nodes.append(helper.make_node(op, inputs, [out.name], name=name, **attributes))
        self.values.append(out)
        return out

    def room(self) -> int:
        return MAX_PARAMS - self.params

    def mark(self) -> tuple[int, int, int, int, int]:
        return len(self.nodes), len(self.inits), len(self.inputs), len(self.values), self.params

    def rollback(self, mark: tuple[int, int, int, int, int]) -> None:
        """Forget what a step emitted before it found it did not fit (no dead nodes stay behind)."""
        nodes, inits, inputs, values, self.params = mark
        del self.nodes[nodes:], self.inits[inits:], self.inputs[inputs:], self.values[values:]


# ----------------------------------------------------------------------------------- elementwise
def activation(g: _Builder, x: Tensor) -> Tensor:
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


def batch_norm(g: _Builder, x: Tensor) -> Tensor:
    c = x.shape[1]
    g.params += 4 * c
    scale = g.const("bn_scale", g.rng.uniform(0.5, 1.5, c).astype(np.float32))
    bias = g.const("bn_bias", (g.rng.standard_normal(c) * 0.1).astype(np.float32))
    mean = g.const("bn_mean", (g.rng.standard_normal(c) * 0.1).astype(np.float32))
    var = g.const("bn_var", g.rng.uniform(0.5, 1.5, c).astype(np.float32))
    eps = float(g.pick((1e-5, 1e-3)))
    return g.node("BatchNormalization", [x.name, scale, bias, mean, var], x.shape, epsilon=eps)


def const_arith(g: _Builder, x: Tensor) -> Tensor:
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
    g: _Builder,
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


def pool(g: _Builder, x: Tensor, *, keep_size: bool = False) -> Tensor | None:
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


def global_pool(g: _Builder, x: Tensor) -> Tensor:
    op = g.pick(("GlobalAveragePool", "GlobalMaxPool"), (3, 1))
    return g.node(op, [x.name], (1, x.shape[1], 1, 1))


# ----------------------------------------------------------------------------------- blocks
def conv_block(g: _Builder, x: Tensor) -> Tensor | None:
    """Conv, then maybe BatchNormalization, then maybe an activation."""
    act = g.chance(0.7)
    y = conv(g, x, gain=2.0 if act else 1.0)
    if y is None:
        return None
    if g.chance(0.3):
        y = batch_norm(g, y)
    return activation(g, y) if act else y


def residual(g: _Builder, x: Tensor) -> Tensor | None:
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


def concat(g: _Builder, x: Tensor) -> Tensor | None:
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


def pad(g: _Builder, x: Tensor) -> Tensor | None:
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


def transpose(g: _Builder, x: Tensor) -> Tensor | None:
    perm = g.pick(((0, 1, 3, 2), (0, 2, 1, 3), (0, 3, 2, 1), (0, 2, 3, 1), (0, 3, 1, 2)))
    shape = tuple(x.shape[p] for p in perm)
    if shape[1] > 24:  # too many channels for the convolutions that may follow
        return None
    return g.node("Transpose", [x.name], shape, perm=list(perm))


def reshape(g: _Builder, x: Tensor) -> Tensor | None:
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


def second_input(g: _Builder, x: Tensor) -> Tensor | None:
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


def identity(g: _Builder, x: Tensor) -> Tensor:
    return g.node("Identity", [x.name], x.shape)


def bn_or_act(g: _Builder, x: Tensor) -> Tensor:
    return batch_norm(g, x) if g.chance(0.4) else activation(g, x)


Step = Callable[[_Builder, Tensor], "Tensor | None"]
# (weight, step) over 4-D tensors; a step returns None when it does not fit the current shape.
_BODY: tuple[tuple[float, Step], ...] = (
    (6.0, conv_block),
    (3.0, pool),
    (2.0, residual),
    (1.5, concat),
    (1.0, bn_or_act),
    (1.0, const_arith),
    (1.0, pad),
    (0.5, transpose),
    (0.5, reshape),
    (0.4, identity),
    (0.4, second_input),
)


# ----------------------------------------------------------------------------------- head
def head(g: _Builder, x: Tensor) -> Tensor:
    """Nothing (a 4-D output, maybe a channel Softmax), or to 2-D by a global pool and/or Flatten /
    Reshape, then Gemm layers and maybe Softmax."""
    kind = g.pick(("none", "dense"), (1, 2))
    if kind == "none":
        if g.chance(0.2):
            return g.node("Softmax", [x.name], x.shape, axis=1)
        return x
    if x.elements > 256 or g.chance(0.6):
        x = global_pool(g, x)
    flat = (1, x.elements)
    if g.chance(0.6):
        x = g.node("Flatten", [x.name], flat, **({"axis": int(g.pick((1, 0)))} if g.chance(0.5) else {}))
    else:
        x = g.node(
            "Reshape", [x.name, g.const("shape", np.array(g.pick(((1, -1), (0, -1))), np.int64))], flat
        )
    for layer in range(int(g.pick((1, 2), (3, 1)))):
        n = int(g.pick((4, 5, 8, 10, 16)))
        f = x.shape[1]
        if f * n > g.room():
            break
        act = layer == 0 and g.chance(0.5)
        trans_b = g.chance(0.5)
        w = g.weight((n, f) if trans_b else (f, n), f, 2.0 if act else 1.0)
        a: dict[str, object] = {"transB": 1} if trans_b else {}
        if g.chance(0.2):
            a["alpha"] = g.uniform(0.5, 1.5)
        ins = [x.name, w]
        if g.chance(0.8):
            ins.append(g.small(g.pick(((n,), (1, n)))))
            if g.chance(0.2):
                a["beta"] = g.uniform(0.5, 1.5)
        x = g.node("Gemm", ins, (1, n), **a)
        if act:
            x = activation(g, x)
    if g.chance(0.4):
        x = g.node("Softmax", [x.name], x.shape, **({"axis": int(g.pick((1, -1)))} if g.chance(0.5) else {}))
    return x


# ----------------------------------------------------------------------------------- model
def random_cnn(seed: int) -> onnx.ModelProto:
    """The float32 ONNX CNN of ``seed`` (deterministic: the same seed gives byte-identical models)."""
    rng = np.random.default_rng(seed)
    g = _Builder(rng, opset=int(rng.choice(OPSETS)))
    c = int(g.pick((1, 2, 3, 4), (2, 1, 3, 1)))
    h = int(rng.integers(5, 21))
    w = h if g.chance(0.4) else int(rng.integers(5, 21))
    while c * h * w > 1536:
        h, w = max(5, h - 2), max(5, w - 2)
    x = g.input((1, c, h, w))
    steps = int(rng.integers(2, 8))
    weights = np.array([wt for wt, _ in _BODY])
    done = attempts = 0
    while done < steps and attempts < 4 * steps:
        attempts += 1
        step = _BODY[int(rng.choice(len(_BODY), p=weights / weights.sum()))][1]
        mark = g.mark()
        y = step(g, x)
        if y is None:
            g.rollback(mark)
        else:
            x, done = y, done + 1
    final = head(g, x)
    outputs = [final]
    extra = [v for v in g.values if v.name != final.name]
    for _ in range(int(g.pick((0, 1, 2), (6, 3, 1)))):
        if extra:
            outputs.append(extra.pop(int(rng.integers(0, len(extra)))))
    return _model(g, outputs, seed)


def _model(g: _Builder, outputs: list[Tensor], seed: int) -> onnx.ModelProto:
    if not g.nodes or outputs[0].name in {t.name for t in g.inputs}:
        g.node("Identity", [outputs[0].name], outputs[0].shape)
        outputs[0] = g.values[-1]
    graph = helper.make_graph(
        g.nodes,
        f"fuzz_{seed}",
        [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape)) for t in g.inputs],
        [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape)) for t in outputs],
        initializer=g.inits,
    )
    opset = helper.make_opsetid("", g.opset)
    model = helper.make_model(
        graph,
        opset_imports=[opset],
        ir_version=helper.find_min_ir_version_for([opset]),
        producer_name="tvm-mcu-fuzz",
    )
    onnx.checker.check_model(model, full_check=True)
    return model
