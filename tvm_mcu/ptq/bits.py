"""The weight width of each layer: ``--weights int8`` (every layer), ``int4`` or ``mixed``.

Each weighted op (Conv, Gemm, MatMul) is measured on the calibration data: its float output ``y`` against
the output with its weights int4 (and int8) as the QDQ model would store them, the op's input and every
other layer float. ``SQNR = 10 log10(sum y^2 / sum (y - y_q)^2)`` in dB over all samples, so a layer's
figure does not depend on the choice made for the others; one run of the float model with a copy of
each weighted op per width gives them all.

- ``int4``: every Conv/Gemm/MatMul weight int4, depthwise convolutions included;
- ``mixed``: int4 where the layer's int4 SQNR is at least ``int4_sqnr_db`` (default
  :data:`DEFAULT_INT4_SQNR_DB`), int8 elsewhere, depthwise convolutions by the same rule.

``int8_depthwise=True`` keeps depthwise convolutions int8 in both modes. Trained depthwise filters are
said to be the layers of a MobileNet most sensitive to weight quantisation (a few large taps per 9-weight
filter set the scale), but on the MobileNetV2-style Fashion-MNIST model (bench/models; PTQ on 256
training images, onnxruntime on 2,000 test images) ``--weights int4`` scores 0.9150 with int4 depthwise
weights and 0.9145 with them int8 (int8 model: 0.9275); its depthwise layers' int4 SQNR (21.1-23.0 dB) is
like the other layers' (16.0-23.3 dB), so int4 is the default and ``mixed`` treats them like any layer.
The compiler stores them two per byte too (``compile --weights auto``: UnpackInt4Weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import numpy as np
import onnx
from onnx import helper, numpy_helper

from tvm_mcu.errors import BadOptionError
from tvm_mcu.ptq.calibrate import _runner
from tvm_mcu.ptq.common import (
    DEFAULT_INT4_SQNR_DB,
    INT4_QMAX,
    WEIGHT_CHOICES,
    WEIGHT_QMAX,
    WEIGHTED,
)
from tvm_mcu.ptq.plan import _Graph
from tvm_mcu.ptq.prepare import _all_names, _attr, _fresh
from tvm_mcu.ptq.write import activation_params, quantized_weight


@attrs.frozen
class LayerBits:
    """The weight width chosen for one weighted op, with the SQNRs (dB) it was chosen on."""

    node: str  # the op's name (its first output when unnamed)
    op: str
    weight: str  # the weight initializer of the float model
    bits: int  # 4 or 8
    sqnr_int4_db: float
    sqnr_int8_db: float
    reason: str


def is_depthwise(node: onnx.NodeProto, g: _Graph) -> bool:
    w = g.inits.get(node.input[1])
    return node.op_type == "Conv" and int(_attr(node, "group", 1)) > 1 and w is not None and w.shape[1] == 1


def choose(
    model: onnx.ModelProto,
    g: _Graph,
    roles: list[tuple[str, str]],
    ranges: Mapping[str, tuple[float, float]],
    feeds: list[dict[str, np.ndarray]],
    *,
    weights: str,
    per_channel: bool,
    int4_sqnr_db: float = DEFAULT_INT4_SQNR_DB,
    given: Mapping[str, int] | None = None,
    int8_depthwise: bool = False,
) -> tuple[LayerBits, ...]:
    """The width of every weighted op (none for ``int8``: nothing is measured, the model is as before).

    ``given`` (with ``weights="mixed"``): the bits of each weight initializer, chosen elsewhere (the
    joint search of ``tvm-mcu prune --method udc``); weights it does not name are int8.
    ``int8_depthwise``: depthwise convolutions int8 whatever ``weights`` says (``given`` still rules)."""
    if weights not in WEIGHT_CHOICES:
        raise BadOptionError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if (
        isinstance(int4_sqnr_db, bool)
        or not isinstance(int4_sqnr_db, int | float)
        or math.isnan(int4_sqnr_db)
    ):
        raise BadOptionError(f"int4_sqnr_db must be a number of dB, got {int4_sqnr_db!r}")
    if not isinstance(int8_depthwise, bool):
        raise BadOptionError(f"int8_depthwise must be True or False, got {int8_depthwise!r}")
    if weights == "int8":
        if given is not None:
            raise BadOptionError("per-layer weight bits are given with weights='mixed', not 'int8'")
        return ()
    if given is not None and (weights != "mixed" or any(b not in (2, 4, 8) for b in given.values())):
        raise BadOptionError(f"per-layer weight bits are 2, 4 or 8, with weights='mixed'; got {dict(given)}")
    layers = [i for i, (role, _) in enumerate(roles) if role == WEIGHTED]
    sqnr = _measure(model, g, layers, ranges, feeds, per_channel)
    out = []
    for i in layers:
        node = g.nodes[i]
        s4, s8 = sqnr[node.output[0]]
        if given is not None:
            bits = given.get(node.input[1], 8)
            reason = f"int{bits} as given"
        elif int8_depthwise and is_depthwise(node, g):
            bits, reason = 8, "depthwise: int8 (int8_depthwise)"
        elif weights == "int4":
            bits, reason = 4, "--weights int4"
        elif s4 >= int4_sqnr_db:
            bits, reason = 4, f"int4 SQNR {s4:.1f} dB >= {int4_sqnr_db:g} dB"
        else:
            bits, reason = 8, f"int4 SQNR {s4:.1f} dB < {int4_sqnr_db:g} dB"
        out.append(LayerBits(node.name or node.output[0], node.op_type, node.input[1], bits, s4, s8, reason))
    return tuple(out)


def _measure(
    model: onnx.ModelProto,
    g: _Graph,
    layers: list[int],
    ranges: Mapping[str, tuple[float, float]],
    feeds: list[dict[str, np.ndarray]],
    per_channel: bool,
) -> dict[str, tuple[float, float]]:
    """(int4 SQNR, int8 SQNR) in dB of each layer's output, keyed by its first output."""
    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    names = _all_names(observed.graph)
    outputs = {o.name for o in observed.graph.output}
    watched: list[tuple[str, str, str]] = []  # (float output, int4 copy's, int8 copy's)
    for i in layers:
        node = g.nodes[i]
        s_in = activation_params(*ranges[node.input[0]])[0]
        copies = []
        for qmax in (INT4_QMAX, WEIGHT_QMAX):
            qw = quantized_weight(node, g, s_in, per_channel, qmax)
            copy = helper.make_node(
                node.op_type, list(node.input), [_fresh(names, f"{node.output[0]}_q{qmax}")]
            )
            # As the QDQ model computes it: Gemm's alpha and beta folded into the weight and bias.
            copy.attribute.extend(a for a in node.attribute if a.name not in ("alpha", "beta"))
            copy.input[1] = _fresh(names, f"{node.input[1]}_q{qmax}")
            observed.graph.initializer.append(numpy_helper.from_array(qw.dequantized(), copy.input[1]))
            if qw.bias is not None:
                copy.input[2] = _fresh(names, f"{node.input[2]}_q{qmax}")
                bias = qw.bias.astype(np.float32)
                observed.graph.initializer.append(numpy_helper.from_array(bias, copy.input[2]))
            observed.graph.node.append(copy)
            copies.append(copy.output[0])
        watched.append((node.output[0], copies[0], copies[1]))
        for name in (node.output[0], *copies):
            if name not in outputs:
                observed.graph.output.append(helper.make_empty_tensor_value_info(name))
                outputs.add(name)
    order = {o.name: k for k, o in enumerate(observed.graph.output)}
    run = _runner(observed)
    signal = dict.fromkeys((w[0] for w in watched), 0.0)
    noise4, noise8 = dict(signal), dict(signal)
    for feed in feeds:
        results = run(feed)
        for y_name, q4, q8 in watched:
            y = np.asarray(results[order[y_name]], np.float64)
            signal[y_name] += float(np.sum(y * y))
            noise4[y_name] += float(np.sum((y - np.asarray(results[order[q4]], np.float64)) ** 2))
            noise8[y_name] += float(np.sum((y - np.asarray(results[order[q8]], np.float64)) ** 2))
    return {y: (_db(signal[y], noise4[y]), _db(signal[y], noise8[y])) for y in signal}


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
