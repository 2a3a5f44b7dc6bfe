"""The operator registry: one record per Relax operator, saying what every part of tvm-mcu does with it.

A record names, for one Relax op, the function that implements it in each part, or why that part has
none:

- ``channels``: its channel rule in :mod:`tvm_mcu.analysis.channels` (how channels flow through it);
- ``train``: its torch rule in :mod:`tvm_mcu.train.torch_rules` (the training bridge);
- ``export``: its rule in :mod:`tvm_mcu.frontend.onnx_export` (Relax back to ONNX);
- ``int8``: its handler in :mod:`tvm_mcu.passes.relax.integer.handlers` (the integer lowering);
- ``layout``: its rule in :mod:`tvm_mcu.passes.relax.channels_last` (how it computes channels-last;
  ``_boundary``: it reads NCHW, so its operands are moved back).

Each part builds its own lookup table from this one (:func:`rules`), so the four cannot drift apart:
adding an operator is one record here and its functions in the parts. A part that meets an op with a
:class:`Refused` rule, or with no record, refuses the model naming the op and the reason; ``prune``
checks every op of a model before it starts (:func:`refusals`). ``tests/test_ops.py`` checks that every
name resolves and that every Relax op the ONNX frontend produces has a record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

PARTS = ("channels", "train", "export", "int8", "layout")


@attrs.frozen
class Refused:
    """Why a part has no rule for an op (the message the user sees)."""

    reason: str


Rule = str | Refused  # the name of the implementing function in the part's module, or why there is none


@attrs.frozen
class Op:
    name: str
    channels: Rule
    train: Rule
    export: Rule
    int8: Rule
    layout: Rule = "_boundary"  # data movement and anything without a rule reads NCHW


_NO_INT8_SUM = Refused("a sum of quantised values has no integer lowering (its output range is the sum's)")
_QUANTISED = Refused("it belongs to a quantised model; prune and train float models")
_CHANNELS_ONLY_FLOAT = Refused("it has no float rule (quantisation is an int8 lowering concern)")


def _elementwise(name: str, train: str, export: str, int8: str = "_elementwise") -> Op:
    """An element-wise function of one tensor: channels pass through; int8 by lookup table."""
    return Op(name, "_same", train, export, int8, "_same")


def _binary(name: str, rule: str, int8: str) -> Op:
    return Op(name, "_binary", rule, rule, int8, "_binary")


_OPS = (
    # ---------------------------------------------------------------- the layers that hold weights
    Op("relax.nn.conv2d", "_conv2d", "_conv2d", "_conv2d", "_conv2d", "_conv2d"),
    Op("relax.matmul", "_matmul", "_matmul", "_matmul", "_matmul"),
    Op(
        "relax.nn.conv2d_transpose",
        Refused("transposed convolution has no channel rule"),
        Refused("transposed convolution has no training rule"),
        Refused("transposed convolution has no ONNX rule"),
        Refused("transposed convolution has no integer lowering"),
    ),
    # ---------------------------------------------------------------- element-wise, two operands
    _binary("relax.add", "_add", "_add"),
    _binary("relax.subtract", "_subtract", "_subtract"),
    _binary("relax.multiply", "_multiply", "_multiply"),
    _binary("relax.divide", "_divide", "_divide"),
    _binary("relax.maximum", "_maximum", "_elementwise"),
    _binary("relax.minimum", "_minimum", "_elementwise"),
    _binary("relax.power", "_power", "_elementwise"),
    # ---------------------------------------------------------------- element-wise, one operand
    _elementwise("relax.nn.relu", "_relu", "_relu", "_activation"),
    _elementwise("relax.clip", "_clip", "_clip", "_activation"),
    _elementwise("relax.nn.leakyrelu", "_leakyrelu", "_leakyrelu"),
    _elementwise("relax.sigmoid", "_sigmoid", "_sigmoid"),
    _elementwise("relax.tanh", "_tanh", "_tanh"),
    _elementwise("relax.exp", "_exp", "_exp"),
    _elementwise("relax.log", "_log", "_log"),
    _elementwise("relax.sqrt", "_sqrt", "_sqrt"),
    _elementwise("relax.abs", "_abs", "_abs"),
    _elementwise("relax.negative", "_negative", "_negative"),
    _elementwise("relax.erf", "_erf", "_erf"),
    _elementwise("relax.nn.silu", "_silu", "_silu"),
    _elementwise("relax.nn.gelu", "_gelu", "_gelu"),
    Op("relax.nn.prelu", "_prelu", "_prelu", "_prelu", "_elementwise", "_axis"),
    # ---------------------------------------------------------------- pooling and reductions
    Op("relax.nn.max_pool2d", "_pool", "_max_pool2d", "_max_pool2d", "_pool", "_pool"),
    Op("relax.nn.avg_pool2d", "_pool", "_avg_pool2d", "_avg_pool2d", "_pool", "_pool"),
    Op(
        "relax.nn.adaptive_avg_pool2d",
        "_pool",
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool2d",
        Refused("adaptive average pooling has no integer lowering"),
        "_pool",
    ),
    Op("relax.mean", "_reduce", "_mean", "_mean", "_pool", "_reduce"),
    Op("relax.max", "_reduce", "_max", "_reduce_max", "_pool", "_reduce"),
    Op("relax.min", "_reduce", "_min", "_reduce_min", "_pool", "_reduce"),
    Op("relax.sum", "_reduce", "_sum", "_reduce_sum", _NO_INT8_SUM, "_reduce"),
    Op("relax.nn.softmax", "_softmax", "_softmax", "_softmax", "_softmax", "_axis"),
    Op(
        "relax.nn.log_softmax",
        "_softmax",
        "_log_softmax",
        "_log_softmax",
        Refused("log-softmax has no integer lowering"),
        "_axis",
    ),
    # ---------------------------------------------------------------- data movement
    Op("relax.nn.pad", "_pad", "_pad", "_pad", "_pad", "_pad"),
    Op("relax.reshape", "_reshape", "_reshape", "_reshape", "_layout_op"),
    Op("relax.permute_dims", "_permute", "_permute_dims", "_permute_dims", "_layout_op"),
    Op("relax.squeeze", "_squeeze", "_squeeze", "_squeeze", "_layout_op"),
    Op("relax.expand_dims", "_expand_dims", "_expand_dims", "_expand_dims", "_layout_op"),
    Op("relax.concat", "_concat", "_concat", "_concat", "_concat", "_concat"),
    Op(
        "relax.take",
        Refused("gather (take) has no channel rule"),
        Refused("gather (take) has no training rule"),
        Refused("gather (take) has no ONNX rule"),
        Refused("gather (take) has no integer lowering"),
    ),
    *(
        Op(name, Refused(why), Refused(why), Refused(why), Refused(why))
        for name, why in (
            ("relax.variance", "a variance (instance normalisation) has no rule"),
            ("relax.stack", "stacking tensors (Max/Min of three or more operands) has no rule"),
            ("relax.broadcast_to", "broadcast_to (Max/Min of three or more operands) has no rule"),
            ("relax.call_tir", "an operator TVM's importer wrote as a TIR kernel (e.g. Tile) has no rule"),
            ("relax.nn.dropout", "dropout in training mode has no rule"),
        )
    ),
    # ---------------------------------------------------------------- quantisation and types
    Op("relax.quantize", _QUANTISED, _QUANTISED, _QUANTISED, "_quantize", "_axis"),
    Op("relax.dequantize", _QUANTISED, _QUANTISED, _QUANTISED, "_dequantize", "_axis"),
    Op("relax.astype", _CHANNELS_ONLY_FLOAT, _CHANNELS_ONLY_FLOAT, _CHANNELS_ONLY_FLOAT, "_astype", "_same"),
    Op(
        "relax.nn.batch_norm",
        Refused("batch norm is folded into constants before the channel analysis"),
        Refused("batch norm is folded into constants before training"),
        Refused("batch norm is folded into constants before export"),
        "_batch_norm",
        "_axis",
    ),
)

OPS: dict[str, Op] = {op.name: op for op in _OPS}


def rules(part: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """{op name: function} of ``part``, each function looked up by name in ``namespace`` (the part's
    module globals). A name missing there is a bug in this table: KeyError at import."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; parts are {', '.join(PARTS)}")
    table = {}
    for op in _OPS:
        rule = getattr(op, part)
        if isinstance(rule, str):
            if rule not in namespace:
                raise KeyError(f"ops.py: the {part} rule '{rule}' of {op.name} is not defined")
            table[op.name] = namespace[rule]
    return table


def refusal(part: str, op: str) -> str | None:
    """Why ``part`` cannot take ``op``, or None when it has a rule."""
    record = OPS.get(op)
    if record is None:
        return f"{op} is not in tvm-mcu's operator registry"
    rule = getattr(record, part)
    return rule.reason if isinstance(rule, Refused) else None


def refusals(part_list: Iterable[str], ops: Iterable[str]) -> list[tuple[str, str, str]]:
    """(op, part, reason) for every op some part of ``part_list`` cannot take, sorted."""
    found = {
        (op, part, reason) for op in ops for part in part_list if (reason := refusal(part, op)) is not None
    }
    return sorted(found)
