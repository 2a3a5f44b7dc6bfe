"""The supported-operator tables: one rule per operator, whose docstring is what the user is told.

A rule returns None when the node can be compiled exactly, or the reason it cannot. An operator with
no rule is unsupported. Adding an operator is one row here, one lowering (TVM legalisation) and a test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from tvm_mcu.errors import UnsupportedOpError

Rule = Callable[[Any], "str | None"]


@attrs.frozen
class Problem:
    op: str
    node: str
    reason: str


def _ok(_node: Any) -> str | None:
    """Supported."""
    return None


# ----------------------------------------------------------------------------------------- ONNX
def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _onnx_2d_kernel(node: Any) -> str | None:
    """2-D only (NCHW input, two spatial kernel dimensions)."""
    ks = _attr(node, "kernel_shape")
    if ks is not None and len(ks) != 2:
        return f"{len(ks)}-D kernels are not supported (2-D only)"
    return None


def _onnx_conv(node: Any) -> str | None:
    """Conv: 2-D, including depthwise and grouped, with strides, pads, dilations and auto_pad."""
    return _onnx_2d_kernel(node)


def _onnx_pool(node: Any) -> str | None:
    """MaxPool / AveragePool: 2-D, with strides, pads, ceil_mode and count_include_pad; one output."""
    if len(node.output) > 1 and node.output[1]:
        return "the Indices output of MaxPool is not supported"
    if _attr(node, "storage_order", 0) != 0:
        return "storage_order=1 is not supported"
    return _onnx_2d_kernel(node)


def _onnx_gemm(node: Any) -> str | None:
    """Gemm: alpha, beta, transA and transB supported."""
    return None


def _onnx_pad(node: Any) -> str | None:
    """Pad: constant, reflect and edge modes."""
    mode = _attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "reflect", "edge"):
        return f"Pad mode '{mode}' is not supported (constant, reflect, edge)"
    return None


def _onnx_softmax(node: Any) -> str | None:
    """Softmax along one axis."""
    return None


def _onnx_dequantize(node: Any) -> str | None:
    """DequantizeLinear: per tensor or per axis (``axis``); int8, uint8, int32 and, as weights, int4,
    uint4, int2 and uint2 integers. Blocked quantisation (``block_size``) is not supported."""
    block = int(_attr(node, "block_size", 0) or 0)
    if block:
        return (
            f"block_size={block} (blocked quantisation: a scale per block of {block} values along the axis) "
            "is not supported; quantise the weights per channel (axis) or per tensor"
        )
    return None


def _onnx_quantize(node: Any) -> str | None:
    """QuantizeLinear: per tensor, to int8 or uint8 (activations are 8-bit)."""
    block = int(_attr(node, "block_size", 0) or 0)
    if block:
        return f"block_size={block} (blocked quantisation) is not supported; quantise per tensor"
    return None


ONNX_RULES: dict[str, Rule] = {
    "Conv": _onnx_conv,
    "Gemm": _onnx_gemm,
    "MatMul": _ok,
    "Relu": _ok,
    "LeakyRelu": _ok,
    "Clip": _ok,
    "Sigmoid": _ok,
    "Tanh": _ok,
    "HardSigmoid": _ok,
    "HardSwish": _ok,
    "MaxPool": _onnx_pool,
    "AveragePool": _onnx_pool,
    "GlobalAveragePool": _ok,
    "GlobalMaxPool": _ok,
    "ReduceMean": _ok,
    "Add": _ok,
    "Sub": _ok,
    "Mul": _ok,
    "Div": _ok,
    "Concat": _ok,
    "Pad": _onnx_pad,
    "Reshape": _ok,
    "Flatten": _ok,
    "Transpose": _ok,
    "Squeeze": _ok,
    "Unsqueeze": _ok,
    "Softmax": _onnx_softmax,
    "BatchNormalization": _ok,
    "Identity": _ok,
    "Dropout": _ok,
    "Constant": _ok,
    "Shape": _ok,
    "Gather": _ok,
    "PRelu": _ok,
    "LogSoftmax": _ok,
    "ReduceSum": _ok,
    "ReduceMax": _ok,
    "Tile": _ok,
    "Selu": _ok,
    "Elu": _ok,
    "Pow": _ok,
    "Sqrt": _ok,
    "Exp": _ok,
    "Log": _ok,
    "Abs": _ok,
    "Neg": _ok,
    "Erf": _ok,
    "ConvTranspose": _onnx_2d_kernel,
    "InstanceNormalization": _ok,
    "Max": _ok,
    "Min": _ok,
    "QuantizeLinear": _onnx_quantize,
    "DequantizeLinear": _onnx_dequantize,
}

# ----------------------------------------------------------------------------------------- TFLite
TFLITE_RULES: dict[str, Rule] = {
    "CONV_2D": _ok,
    "DEPTHWISE_CONV_2D": _ok,
    "FULLY_CONNECTED": _ok,
    "AVERAGE_POOL_2D": _ok,
    "MAX_POOL_2D": _ok,
    "MEAN": _ok,
    "RELU": _ok,
    "RELU6": _ok,
    "LOGISTIC": _ok,
    "TANH": _ok,
    "ADD": _ok,
    "SUB": _ok,
    "MUL": _ok,
    "CONCATENATION": _ok,
    "PAD": _ok,
    "RESHAPE": _ok,
    "SQUEEZE": _ok,
    "TRANSPOSE": _ok,
    "SOFTMAX": _ok,
    "QUANTIZE": _ok,
    "DEQUANTIZE": _ok,
}


# ----------------------------------------------------------------------------------------- PyTorch
def _fx_arg(node: Any, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` (or keyword ``name``) of an ``torch.export`` graph node."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _aten_conv(node: Any) -> str | None:
    """conv2d: 2-D, including depthwise and grouped, with stride, padding and dilation."""
    weight = node.args[1].meta.get("val") if len(node.args) > 1 and hasattr(node.args[1], "meta") else None
    if weight is not None and weight.dim() != 4:
        return f"{weight.dim() - 2}-D kernels are not supported (2-D only)"
    return None


def _aten_adaptive_pool(node: Any) -> str | None:
    """adaptive_avg_pool2d: to 1x1 (a global average) only."""
    size = tuple(_fx_arg(node, 1, "output_size", ()))
    return None if size in ((1, 1), (1,)) else f"output size {list(size)} (only 1x1, a global average)"


def _aten_hardtanh(node: Any) -> str | None:
    """hardtanh: any bounds (ReLU6 is hardtanh(0, 6))."""
    return None


def _aten_max_pool(node: Any) -> str | None:
    """max_pool2d: 2-D with stride, padding and ceil_mode; no dilation."""
    dilation = tuple(_fx_arg(node, 4, "dilation", (1, 1)))
    return None if all(d == 1 for d in dilation) else f"dilation {list(dilation)} (only 1)"


# ATen operators of a ``torch.export``-ed float program, by their overload's name, as the program holds
# them before decomposition (what the user's module called; export has made in-place calls functional).
# Each is exercised by tests/e2e/test_pt2.py.
ATEN_RULES: dict[str, Rule] = {
    "aten.conv2d.default": _aten_conv,
    "aten.linear.default": _ok,
    "aten.batch_norm.default": _ok,
    "aten.relu.default": _ok,
    "aten.hardtanh.default": _aten_hardtanh,
    "aten.sigmoid.default": _ok,
    "aten.tanh.default": _ok,
    "aten.max_pool2d.default": _aten_max_pool,
    "aten.avg_pool2d.default": _ok,
    "aten.adaptive_avg_pool2d.default": _aten_adaptive_pool,
    "aten.mean.dim": _ok,
    "aten.flatten.using_ints": _ok,
    "aten.view.default": _ok,
    "aten.reshape.default": _ok,
    "aten.add.Tensor": _ok,
    "aten.mul.Tensor": _ok,
    "aten.cat.default": _ok,
    "aten.softmax.int": _ok,
    "aten.dropout.default": _ok,
}


def check(problems: list[Problem], *, fmt: str, supported: dict[str, Rule]) -> None:
    """Raise one UnsupportedOpError that lists every problem, or return when there is none."""
    if not problems:
        return
    listed = "; ".join(f"{p.op} (node '{p.node}'): {p.reason}" for p in problems)
    raise UnsupportedOpError(
        f"the {fmt} model has {len(problems)} operator(s) tvm-mcu cannot compile exactly: {listed}. "
        f"Supported {fmt} operators: {', '.join(sorted(supported))}"
    )
