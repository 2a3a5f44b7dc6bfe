"""The quantisation plan: one rule per op type, deciding how each tensor is quantised."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import numpy_helper

from tvm_mcu.ptq.common import _DEFAULT_DOMAINS, FIXED, FLOAT, FUSED, OWN_RANGE, SAME_SCALE, WEIGHTED
from tvm_mcu.ptq.prepare import _attr

logger = logging.getLogger(__name__)


@attrs.frozen
class _Graph:
    """The read-only facts the op rules look at."""

    nodes: tuple[onnx.NodeProto, ...]
    inits: Mapping[str, np.ndarray]
    dtypes: Mapping[str, np.dtype[Any]]
    consumers: Mapping[str, tuple[int, ...]]
    outputs: frozenset[str]

    @classmethod
    def of(cls, model: onnx.ModelProto, dtypes: Mapping[str, np.dtype[Any]]) -> _Graph:
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(model.graph.node):
            for name in dict.fromkeys(n for n in node.input if n):
                consumers.setdefault(name, []).append(i)
        return cls(
            tuple(model.graph.node),
            {t.name: numpy_helper.to_array(t) for t in model.graph.initializer},
            dtypes,
            {k: tuple(v) for k, v in consumers.items()},
            frozenset(o.name for o in model.graph.output),
        )

    def const(self, node: onnx.NodeProto, k: int) -> np.ndarray | None:
        return self.inits.get(node.input[k]) if len(node.input) > k and node.input[k] else None


def _check_conv(node: onnx.NodeProto, g: _Graph) -> str | None:
    w, b = g.const(node, 1), g.const(node, 2)
    if w is None or w.dtype != np.float32 or w.ndim < 3:
        return "its weight is not a constant float32 tensor"
    if len(node.input) > 2 and node.input[2] and (b is None or b.shape != (w.shape[0],)):
        return f"its bias is not a constant of shape ({w.shape[0]},)"
    return None


def _check_gemm(node: onnx.NodeProto, g: _Graph) -> str | None:
    b, c = g.const(node, 1), g.const(node, 2)
    if _attr(node, "transA", 0):
        return "transA=1 is not quantised"
    if b is None or b.dtype != np.float32 or b.ndim != 2:
        return "its B is not a constant 2-D float32 tensor"
    n = b.shape[0] if _attr(node, "transB", 0) else b.shape[1]
    if (
        len(node.input) > 2
        and node.input[2]
        and (c is None or (c.size != 1 and c.shape not in ((n,), (1, n))))
    ):
        return f"its C is not a constant that broadcasts per output channel ({n},)"
    return None


def _check_matmul(node: onnx.NodeProto, g: _Graph) -> str | None:
    b = g.const(node, 1)
    if b is None or b.dtype != np.float32 or b.ndim != 2:
        return "its B is not a constant 2-D float32 tensor"
    return None


def _check_single_output(node: onnx.NodeProto, g: _Graph) -> str | None:
    del g
    return "its Indices output is used" if len([o for o in node.output if o]) > 1 else None


def _check_pad(node: onnx.NodeProto, g: _Graph) -> str | None:
    """Constant, reflect and edge pads move values without changing them: exact on the integers."""
    mode = _attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("constant", "reflect", "edge"):
        return f"mode '{mode}' is not quantised (constant, reflect, edge)"
    if len(node.input) > 3 and node.input[3]:
        return "an axes input is not quantised"
    if g.const(node, 1) is None or (len(node.input) > 2 and node.input[2] and g.const(node, 2) is None):
        return "its pads or value are not constants"
    return None


def _check_batch_norm(node: onnx.NodeProto, g: _Graph) -> str | None:
    if any(g.const(node, k) is None for k in range(1, 5)):
        return "its scale, bias, mean or variance is not a constant"
    if len([o for o in node.output if o]) > 1:
        return "its training-mode outputs are used"
    return None


def _check_constant_operands(node: onnx.NodeProto, g: _Graph) -> str | None:
    """An element-wise op whose other inputs (a slope, a divisor) are constants."""
    return (
        None
        if all(g.const(node, k) is not None for k in range(1, len(node.input)) if node.input[k])
        else ("an input other than the first is not a constant")
    )


@attrs.frozen
class _OpRule:
    role: str
    activation_inputs: tuple[int, ...] | None  # None: every input is an activation
    check: Callable[[onnx.NodeProto, _Graph], str | None] | None = None


_RULES: dict[str, _OpRule] = {
    "Conv": _OpRule(WEIGHTED, (0,), _check_conv),
    "Gemm": _OpRule(WEIGHTED, (0,), _check_gemm),
    "MatMul": _OpRule(WEIGHTED, (0,), _check_matmul),
    "MaxPool": _OpRule(SAME_SCALE, (0,), _check_single_output),
    "Reshape": _OpRule(SAME_SCALE, (0,)),
    "Flatten": _OpRule(SAME_SCALE, (0,)),
    "Transpose": _OpRule(SAME_SCALE, (0,)),
    "Squeeze": _OpRule(SAME_SCALE, (0,)),
    "Unsqueeze": _OpRule(SAME_SCALE, (0,)),
    "AveragePool": _OpRule(OWN_RANGE, (0,)),
    "GlobalAveragePool": _OpRule(OWN_RANGE, (0,)),
    "Relu": _OpRule(OWN_RANGE, (0,)),
    "Clip": _OpRule(OWN_RANGE, (0,)),
    "Add": _OpRule(OWN_RANGE, None),
    "Sub": _OpRule(OWN_RANGE, None),
    "Mul": _OpRule(OWN_RANGE, None),
    "Div": _OpRule(OWN_RANGE, (0,), _check_constant_operands),
    "Concat": _OpRule(OWN_RANGE, None),
    "Softmax": _OpRule(FIXED, (0,)),
    # Element-wise functions of one tensor: lowered to lookup tables of their float meaning.
    "Sigmoid": _OpRule(OWN_RANGE, (0,)),
    "Tanh": _OpRule(OWN_RANGE, (0,)),
    "LeakyRelu": _OpRule(OWN_RANGE, (0,)),
    "HardSigmoid": _OpRule(OWN_RANGE, (0,)),
    "HardSwish": _OpRule(OWN_RANGE, (0,)),
    "Elu": _OpRule(OWN_RANGE, (0,)),
    "Selu": _OpRule(OWN_RANGE, (0,)),
    "Softplus": _OpRule(OWN_RANGE, (0,)),
    "PRelu": _OpRule(OWN_RANGE, (0,), _check_constant_operands),
    "BatchNormalization": _OpRule(OWN_RANGE, (0,), _check_batch_norm),
    "ReduceMean": _OpRule(OWN_RANGE, (0,), _check_constant_operands),
    # Max reductions and constant padding move values without changing their scale.
    "GlobalMaxPool": _OpRule(SAME_SCALE, (0,)),
    "ReduceMax": _OpRule(SAME_SCALE, (0,), _check_constant_operands),
    "Pad": _OpRule(SAME_SCALE, (0,), _check_pad),
}


def _activations(node: onnx.NodeProto, rule: _OpRule) -> list[str]:
    idx = range(len(node.input)) if rule.activation_inputs is None else rule.activation_inputs
    return [node.input[k] for k in idx if k < len(node.input)]


def _decline_reason(node: onnx.NodeProto, g: _Graph) -> str | None:
    """Why ``node`` stays float, or None when it can be quantised."""
    rule = _RULES.get(node.op_type)
    if node.domain not in _DEFAULT_DOMAINS or rule is None:
        return "no quantisation rule for this operator"
    reason = rule.check(node, g) if rule.check else None
    if reason:
        return reason
    for name in _activations(node, rule):
        if g.dtypes.get(name) != np.float32:
            return f"input '{name}' is not a float32 tensor"
        if name in g.inits and rule.role != OWN_RANGE:
            return f"input '{name}' is a constant"
    for name in (o for o in node.output if o):
        if g.dtypes.get(name) != np.float32:
            return f"output '{name}' is not a float32 tensor"
    return None


def _fusable_activation(node: onnx.NodeProto, g: _Graph) -> bool:
    """Relu, or Clip(0, 6) with constant bounds: the activations int8 kernels apply while requantising."""
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    lo, hi = g.const(node, 1), g.const(node, 2)
    if lo is None or hi is None or lo.size != 1 or hi.size != 1:
        return False
    return float(lo.reshape(-1)[0]) == 0.0 and float(hi.reshape(-1)[0]) == 6.0


def _plan(g: _Graph, notes: list[str]) -> list[tuple[str, str]]:
    """(role, reason) per node, in graph order."""
    reasons = [_decline_reason(node, g) for node in g.nodes]
    roles = [(FLOAT, r) if r else (_RULES[n.op_type].role, "") for n, r in zip(g.nodes, reasons, strict=True)]
    for i, node in enumerate(g.nodes):
        if roles[i][0] != WEIGHTED or node.output[0] in g.outputs:
            continue
        users = g.consumers.get(node.output[0], ())
        if len(users) == 1 and roles[users[0]][0] != FLOAT and _fusable_activation(g.nodes[users[0]], g):
            roles[users[0]] = (FUSED, node.output[0])
    for node, (role, reason) in zip(g.nodes, roles, strict=True):
        if role == FLOAT:
            notes.append(f"{node.op_type} node '{node.name or node.output[0]}' stays float: {reason}")
            logger.info("%s '%s' stays float: %s", node.op_type, node.name, reason)
    return roles


# ------------------------------------------------------------------------------------------- numbers
