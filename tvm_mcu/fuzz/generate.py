"""Seeded random float32 ONNX CNNs: the models the fuzzer compiles.

``random_cnn(seed)`` draws a small CNN from ``np.random.default_rng(seed)`` alone, so a seed names a model:
the same seed gives byte-identical protobufs. The generator tracks every shape itself (``builder.py``: the
graph under construction and the size limits; ``layers.py``: the layers and blocks, which draw their
attributes; ``windows.py``: ONNX's window arithmetic), so each node is valid by construction; the result
passes ``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime. This file holds the body's
table of steps, the dense head and the model's assembly.

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

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from tvm_mcu.fuzz.builder import MAX_ELEMENTS, MAX_PARAMS, OPSETS, Builder, Tensor
from tvm_mcu.fuzz.layers import (
    activation,
    bn_or_act,
    concat,
    const_arith,
    conv_block,
    global_pool,
    identity,
    pad,
    pool,
    reshape,
    residual,
    second_input,
    transpose,
)

__all__ = ["MAX_ELEMENTS", "MAX_PARAMS", "OPSETS", "random_cnn"]

Step = Callable[[Builder, Tensor], "Tensor | None"]
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
def head(g: Builder, x: Tensor) -> Tensor:
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
    g = Builder(rng, opset=int(rng.choice(OPSETS)))
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


def _model(g: Builder, outputs: list[Tensor], seed: int) -> onnx.ModelProto:
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
