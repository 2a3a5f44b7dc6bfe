"""Weight bitwidths in ``tvm-mcu prune``: ``--weights int4`` (every layer int4, trained as quantised),
``--weights int2`` (every layer int2, ternary, where the compiler stores it four per byte; the others
int4 or int8) and ``--method udc`` (UDC's joint search: DiffPrune's channel gates and a bit gate per layer,
trained together under the budget losses; :mod:`tvm_mcu.train.bits`).

The compiler stores a layer's int4 weights two per byte where its kernels read them blocked
(``passes/tir/pack_weights.py``: convolutions and dense layers with enough input channels) and a
depthwise convolution's where they are few enough to unpack into the workspace once per call
(``passes/tir/unpack_int4_weights.py``). :func:`packable` is that rule as the resource model prices it;
the compiled figures (the unpacked copy's SRAM included) are what the budget is held to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from tvm_mcu import _tvm, resource_model
from tvm_mcu.analysis.channels import ChannelPlan, bindings
from tvm_mcu.errors import BadOptionError

# ``prune --weights``: the widths of the deployed weights.
WEIGHTS = ("int8", "int4", "int2")
# The blocked kernels read a reduction of 8 values a step; fewer input channels stay unblocked.
MIN_PACKED_INPUTS = 8
# With int4 weights, every pruned group keeps a multiple of this many channels: the blocked kernels
# (the only readers of packed weights) take four output channels at a time and input runs of a
# multiple of 8 values, so a layer between such counts keeps its weights a byte each.
QUANTUM = 8

Key = tuple[int, int]


class WeightShape(NamedTuple):
    """A constant weight of a convolution or matmul: the op, the weight's shape (OIHW; a matmul's
    (in, out)) and whether the convolution is depthwise (a group per output channel, one input each)."""

    op: str
    shape: tuple[int, ...]
    depthwise: bool = False


def check(method: str, weights: str, int8: bool, granularity: str, data: str | None, epochs: int) -> None:
    """BadOptionError for a combination the bit widths cannot take."""
    if weights not in WEIGHTS:
        raise BadOptionError(f"--weights is one of {', '.join(WEIGHTS)}, got {weights!r}")
    wants_bits = method == "udc" or weights != "int8"
    if not wants_bits:
        return
    what = "--method udc" if method == "udc" else f"--weights {weights}"
    if not int8:
        raise BadOptionError(f"{what} sets the width of int8 deployment's weights: drop --float")
    if granularity != "channel":
        raise BadOptionError(f"{what} prunes channels (--granularity channel) for now")
    if method == "udc" and weights != "int8":
        raise BadOptionError("--method udc searches each layer's width itself: drop --weights")
    if data is None:
        raise BadOptionError(f"{what} writes the quantised model, calibrated on --data: give --data")
    if method == "udc" and epochs < 2:
        raise BadOptionError(
            "--method udc trains its gates: it needs --data and --epochs 2 or more (half searching, "
            "half training the network found at its bits)"
        )


def weight_shapes(mod: _tvm.IRModule) -> dict[Key, WeightShape]:
    """The constant weights of ``mod``'s convolutions and matmuls, by (binding, argument)."""
    out: dict[Key, WeightShape] = {}
    for i, b in enumerate(bindings(mod["main"])):
        op = _tvm.op_name(b.value) if isinstance(b.value, _tvm.relax.Call) else ""
        if op in ("relax.nn.conv2d", "relax.matmul") and isinstance(b.value.args[1], _tvm.RelaxConst):
            value = _tvm.const_value(b.value.args[1])
            if value.ndim >= 2:
                shape = tuple(int(d) for d in value.shape)
                groups = int(b.value.attrs.groups) if op == "relax.nn.conv2d" else 1
                out[(i, 1)] = WeightShape(op, shape, groups > 1 and groups == shape[0] and shape[1] == 1)
    return out


def packable(op: str, shape: tuple[int, ...], depthwise: bool = False) -> bool:
    """Whether the compiler stores these int4 weights two per byte: a depthwise convolution's when they
    are at most ``unpack_int4_weights.MAX_VALUES`` (unpacked into the workspace once per call); another's
    when at least MIN_PACKED_INPUTS input channels and outputs in whole blocks of four feed its blocked
    kernels (a matmul's weights are (in, out)). Pruned counts are multiples of QUANTUM, so the full
    shape says for the blocked kernels; pruning only shrinks a depthwise weight."""
    if depthwise:
        from tvm_mcu.passes.tir.unpack_int4_weights import MAX_VALUES

        return int(np.prod(shape)) <= MAX_VALUES
    inputs, outputs = (shape[1], shape[0]) if op == "relax.nn.conv2d" else (shape[0], shape[-1])
    return inputs >= MIN_PACKED_INPUTS and outputs % 4 == 0


def all_int4(mod: _tvm.IRModule) -> dict[Key, int]:
    """Every weight of ``mod`` int4 (``--weights int4``) that the compiler stores two per byte
    (:func:`packable`), depthwise ones included, as the quantiser's ``--weights int4`` makes them."""
    return {k: 4 if packable(*w) else 8 for k, w in weight_shapes(mod).items()}


def all_int2(mod: _tvm.IRModule) -> dict[Key, int]:
    """Every weight of ``mod`` int2 (``--weights int2``) that the blocked kernels read four per byte
    (:func:`packable`, not depthwise); a depthwise one int4 (unpacked as int4: int2 would save nothing),
    the rest int8."""
    return {k: (4 if w.depthwise else 2) if packable(*w) else 8 for k, w in weight_shapes(mod).items()}


def fixed_widths(weights: str, mod: _tvm.IRModule) -> dict[Key, int]:
    """``prune --weights``' widths of ``mod``'s weights: none given for "int8"."""
    if weights == "int8":
        return {}
    return all_int4(mod) if weights == "int4" else all_int2(mod)


def gated_model(
    module: Any,
    plan: ChannelPlan,
    model: resource_model.ResourceModel,
    mod: _tvm.IRModule,
    fixed: Mapping[Key, int] | None,
) -> tuple[Any, resource_model.BitsModel]:
    """Bit gates on ``module``'s weights and ``model`` pricing them: free gates (``--method udc``), or
    fixed at ``fixed``'s widths (``--weights int4`` or ``int2``: the channels are then searched for that
    network)."""
    from tvm_mcu.train.bits import BitGates, sensitivity_prior, weight_keys

    keys = weight_keys(module)
    shapes = weight_shapes(mod)
    packed = frozenset(k for k in keys if k in shapes and packable(*shapes[k]))
    # int2 where the crumb kernels read the weights four per byte: not a depthwise layer's.
    two_bit = frozenset(k for k in packed if not shapes[k].depthwise)
    init = sensitivity_prior(module, {k: keys[k] for k in packed}) if fixed is None else None
    gates = BitGates(keys, init, two_bit=two_bit)
    if fixed is not None:
        gates.fix({k: fixed.get(k, 8) if k in packed else 8 for k in keys})
    elements = resource_model.site_weights(
        plan, model.groups, {k: shapes[k].shape for k in keys if k in shapes}
    )
    return gates, resource_model.with_bits(model, elements, packed, gates)


def describe(mod: _tvm.IRModule, bits: Mapping[Key, int]) -> dict[str, int]:
    """``bits`` by layer: the op and the name of its value (``conv2d lv12``)."""
    names = [_tvm.var_name(b.var) for b in bindings(mod["main"])]
    ops = weight_shapes(mod)
    return {
        f"{ops[k].op.removeprefix('relax.').removeprefix('nn.')} {names[k[0]]}": int(b)
        for k, b in sorted(bits.items())
        if k in ops
    }


def calibration(x: np.ndarray, samples: int = 256) -> np.ndarray:
    """The first ``samples`` training inputs: calibration of the written model."""
    return np.ascontiguousarray(x[:samples], dtype=np.float32)
