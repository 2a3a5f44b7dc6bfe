"""The numpy int8 references (tests/quant_reference.py) are bit-exact with the tflite-micro interpreter.

Every single-op model of ``tests.zoo.tflite_int8`` runs on seeded random inputs and the extremes (all -128,
all 127, alternating); the reference must equal TFLM's output exactly. Multi-op models chain the per-op
references and are compared at every intermediate tensor. Probe models, whose accumulators are exactly
their biases, pin down the requantisation details (double rounding, float32 vs double scale products).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from tests import quant_reference as qr
from tests.zoo.tflite_int8 import (
    AF,
    BO,
    MULTI_OP_MODELS,
    SINGLE_OP_MODELS,
    TFLITE_INT8_MODELS,
    Int8Writer,
    conv_options,
    fc_options,
    quantization,
)

SINGLE = [f.__name__ for f in SINGLE_OP_MODELS]
MULTI = [f.__name__ for f in MULTI_OP_MODELS]


def _cases(graph: qr.QuantGraph, seed: int) -> list[list[np.ndarray]]:
    """Input sets: 3 uniform, 2 narrow (around 0), all -128, all 127, and alternating extremes."""
    rng = np.random.default_rng(seed)
    shapes = [graph.tensors[i].shape for i in graph.inputs]
    cases = [[rng.integers(-128, 128, s, dtype=np.int8) for s in shapes] for _ in range(3)]
    cases += [
        [np.clip(rng.normal(0, 20, s).round(), -128, 127).astype(np.int8) for s in shapes] for _ in range(2)
    ]
    cases.append([np.full(s, -128, np.int8) for s in shapes])
    cases.append([np.full(s, 127, np.int8) for s in shapes])
    cases.append(
        [np.where(np.indices(s).sum(0) % 2 == k % 2, 127, -128).astype(np.int8) for k, s in enumerate(shapes)]
    )
    return cases


def _invoke(interpreter: runtime.Interpreter, inputs: Sequence[np.ndarray]) -> np.ndarray:
    for i, x in enumerate(inputs):
        interpreter.set_input(x, i)
    interpreter.invoke()
    return interpreter.get_output(0)


def _assert_exact(ref: np.ndarray, tflm: np.ndarray, what: str) -> None:
    assert ref.dtype == tflm.dtype == np.int8, (what, ref.dtype, tflm.dtype)
    assert ref.shape == tflm.shape, (what, ref.shape, tflm.shape)
    diff = np.abs(ref.astype(np.int32) - tflm.astype(np.int32))
    assert diff.max() == 0, (
        f"{what}: max |diff| {diff.max()} in {np.count_nonzero(diff)} of {diff.size} elements"
    )


# ----------------------------------------------------------------------------------- the zoo itself


@pytest.mark.parametrize("name", list(TFLITE_INT8_MODELS), ids=list(TFLITE_INT8_MODELS))
def test_model_follows_the_int8_quantisation_spec(name: str) -> None:
    graph = qr.read_graph(TFLITE_INT8_MODELS[name]())
    for index in (*graph.inputs, *graph.outputs):
        assert graph.tensors[index].dtype == np.int8 and graph.tensors[index].scales.size == 1
    for op in graph.operators:
        assert op.opcode not in ("QUANTIZE", "DEQUANTIZE")
        for t in (*op.outputs, *(t for t in op.inputs if t.data is None)):
            assert t.dtype == np.int8 and t.scales.size == 1 and t.scale > 0, (op.opcode, t.name)
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x, w, b = op.inputs
            axis = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}[op.opcode]
            channels = w.shape[axis] if op.opcode != "FULLY_CONNECTED" else 1
            assert w.dtype == np.int8 and w.quantized_dimension == axis and w.scales.size == channels
            assert not w.zero_points.any() and qr.constant_data(w).min() >= -127
            assert b.dtype == np.int32 and not b.zero_points.any()
            expected = (np.float64(x.scale) * np.broadcast_to(w.scales, b.shape).astype(np.float64)).astype(
                np.float32
            )
            np.testing.assert_array_equal(b.scales, expected)
        if op.opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "CONCATENATION"):
            for t in op.inputs[: len(op.inputs) if op.opcode == "CONCATENATION" else 1]:
                assert (t.scale, t.zero_point) == (op.outputs[0].scale, op.outputs[0].zero_point)
        if op.opcode == "SOFTMAX":
            assert (op.outputs[0].scale, op.outputs[0].zero_point) == (1.0 / 256.0, -128)


def test_tflm_refuses_rescaling_concat_and_pool() -> None:
    """TFLM's int8 CONCATENATION and pools only copy/average: different in/out parameters fail to prepare."""
    w = Int8Writer(seed=1)
    a = w.activation("a", (1, 4, 4, 3), 0.05, -4)
    b = w.activation("b", (1, 4, 4, 2), 0.07, 3)
    y = w.concat("concat", [a, b], 3, 0.07, 3)
    with pytest.raises(RuntimeError, match="failed to allocate"):
        runtime.Interpreter.from_bytes(w.finish([a, b], [y], "concat_rescale"))
    w = Int8Writer(seed=1)
    x = w.activation("x", (1, 4, 4, 3), 0.05, -4)
    o = fb.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = fb.Padding.VALID, 2, 2, 2, 2
    y = w.qop(BO.AVERAGE_POOL_2D, [x], "avgpool", (1, 2, 2, 3), 0.1, 0, o)
    with pytest.raises(RuntimeError, match="failed to allocate"):
        runtime.Interpreter.from_bytes(w.finish([x], [y], "avgpool_rescale"))


# ------------------------------------------------------------------------------- fixed-point units


def test_quantize_multiplier_known_values() -> None:
    assert qr.quantize_multiplier(0.5) == (2**30, 0)
    assert qr.quantize_multiplier(0.75) == (3 * 2**29, 0)
    assert qr.quantize_multiplier(1.0) == (2**30, 1)
    assert qr.quantize_multiplier(3.0) == (3 * 2**29, 2)
    assert qr.quantize_multiplier(1.0 - 2.0**-40) == (2**30, 1)  # rounds to 2**31: halved, shift + 1
    assert qr.quantize_multiplier(2.0**-40) == (0, 0)  # shift < -31 flushes to zero
    assert qr.quantize_multiplier(0.0) == (0, 0)
    assert qr.quantize_multiplier((2**30 + 0.5) / 2**31) == (2**30 + 1, 0)  # half rounds away from zero


def test_fixed_point_primitive_rounding() -> None:
    """RoundingDivideByPOT rounds ties away from zero; SRDHM rounds ties up (toward +inf)."""
    x = np.array([5, -5, 6, -6, 7, -7, 0])
    np.testing.assert_array_equal(qr.rounding_divide_by_pot(x, 1), [3, -3, 3, -3, 4, -4, 0])
    np.testing.assert_array_equal(qr.rounding_divide_by_pot(x, 2), [1, -1, 2, -2, 2, -2, 0])
    assert qr.saturating_rounding_doubling_high_mul(qr.INT32_MIN, qr.INT32_MIN) == qr.INT32_MAX
    assert qr.saturating_rounding_doubling_high_mul(2**30, 2**30) == 2**29
    assert qr.saturating_rounding_doubling_high_mul(1, 2**30) == 1  # 0.5 rounds up
    assert qr.saturating_rounding_doubling_high_mul(-1, 2**30) == 0  # -0.5 rounds up
    assert qr.saturating_rounding_doubling_high_mul(-3, 2**30) == -1  # -1.5 rounds up
    # -2 * 0.25 = -0.5: double rounding goes to -1, single rounding (half up) to 0.
    assert qr.multiply_by_quantized_multiplier(-2, 2**30, -1) == -1
    assert qr.multiply_by_quantized_multiplier_single_rounding(-2, 2**30, -1) == 0


def test_activation_range_and_pool_rounding() -> None:
    assert qr.activation_range("RELU6", 0.03, -128) == (-128, 72)
    assert qr.activation_range("RELU", 0.1, 5) == (5, 127)
    assert qr.activation_range("RELU_N1_TO_1", 0.5, 0) == (-2, 2)
    x = np.array([1, 2, -1, -2, 1, 1], np.int8).reshape(1, 1, 6, 1)
    y = qr.average_pool2d(x, filter_size=(1, 2), stride=2, padding="VALID", scale=0.1, zero_point=0)
    np.testing.assert_array_equal(y.ravel(), [2, -2, 1])  # 1.5 -> 2, -1.5 -> -2, 1 -> 1


# ------------------------------------------------------------------------------ models against TFLM


@pytest.mark.parametrize("name", SINGLE, ids=SINGLE)
def test_single_op_model_is_bit_exact_with_tflm(name: str) -> None:
    model = TFLITE_INT8_MODELS[name]()
    graph = qr.read_graph(model)
    assert len(graph.operators) == 1
    (op,) = graph.operators
    interpreter = runtime.Interpreter.from_bytes(model)
    for i, inputs in enumerate(_cases(graph, seed=sum(map(ord, name)))):
        _assert_exact(qr.apply_operator(op, inputs), _invoke(interpreter, inputs), f"{name} case {i}")


@pytest.mark.parametrize("name", MULTI, ids=MULTI)
def test_multi_op_model_chained_reference_is_bit_exact_with_tflm(name: str) -> None:
    model = TFLITE_INT8_MODELS[name]()
    graph = qr.read_graph(model)
    interpreter = runtime.Interpreter.from_bytes(
        model, intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors
    )
    for i, inputs in enumerate(_cases(graph, seed=sum(map(ord, name)))):
        out = _invoke(interpreter, inputs)
        values = dict(zip(graph.inputs, inputs, strict=True))
        for op in graph.operators:
            values[op.outputs[0].index] = qr.apply_operator(
                op, [values[t.index] for t in op.inputs if t.data is None]
            )
            tflm = interpreter.GetTensor(op.outputs[0].index, 0)["tensor_data"]
            _assert_exact(values[op.outputs[0].index], tflm, f"{name} case {i} op {op.index} {op.opcode}")
        _assert_exact(values[graph.outputs[0]], out, f"{name} case {i} output")


def _one_op_sweep(model: bytes) -> None:
    """A single-op model on random, narrow and extreme inputs against TFLM."""
    graph = qr.read_graph(model)
    (op,) = graph.operators
    interpreter = runtime.Interpreter.from_bytes(model)
    for i, inputs in enumerate(_cases(graph, seed=len(model))):
        _assert_exact(qr.apply_operator(op, inputs), _invoke(interpreter, inputs), f"{op.opcode} case {i}")


@pytest.mark.parametrize(
    ("input_scale", "beta"),
    [(0.004, 1.0), (0.0625, 1.0), (0.5, 1.0), (2.0, 1.0), (40.0, 1.0), (0.09, 0.3), (0.2, 2.5)],
    ids=["s0.004", "s0.0625", "s0.5", "s2", "s40_capped", "beta0.3", "beta2.5"],
)
def test_softmax_across_scales_and_betas(input_scale: float, beta: float) -> None:
    """Different (beta * scale) give different left shifts and diff_min; 40 hits the multiplier cap."""
    w = Int8Writer(seed=7)
    x = w.activation("x", (64, 10), input_scale, 3)
    y = w.softmax("softmax", x, beta)
    _one_op_sweep(w.finish([x], [y], "softmax_sweep"))


@pytest.mark.parametrize(
    ("s1", "s2", "s_out", "activation"),
    [
        (0.05, 0.05, 0.05, AF.NONE),
        (0.001, 0.5, 0.3, AF.NONE),
        (0.5, 0.001, 0.004, AF.RELU6),
        (0.02, 0.03, 0.5, AF.RELU),
        (0.1, 0.07, 0.01, AF.RELU_N1_TO_1),
    ],
    ids=["equal_scales", "ratio_500", "saturating_relu6", "coarse_output_relu", "relu_n1_to_1"],
)
def test_add_across_scales(s1: float, s2: float, s_out: float, activation: int) -> None:
    w = Int8Writer(seed=8)
    a = w.activation("a", (4, 8, 8), s1, -9)
    b = w.activation("b", (4, 8, 8), s2, 17)
    y = w.add("add", a, b, s_out, 6, activation)
    _one_op_sweep(w.finish([a, b], [y], "add_sweep"))


# -------------------------------------------------------------------------- requantisation probes

# float32 scales for which the double product s_in * s_w / s_out and the float32 product (s_in * s_w) / s_out
# quantise to different multipliers (1746162712 vs 1746162627, shift -12).
_PROBE_SCALES = (0.0019669023, 0.0083645675, 0.082876496)
_PROBE_ZERO_POINT = 5


def _probe(opcode: int, biases: np.ndarray, scales: tuple[float, float, float]) -> bytes:
    """One FULLY_CONNECTED or 1x1 CONV_2D with one input element and len(biases) outputs; the input is fed its
    zero point, so every accumulator equals its bias and the op's output is TFLM's requantisation of it."""
    s_in, s_w, s_out = scales
    n = len(biases)
    w = Int8Writer(seed=0)
    conv = opcode == BO.CONV_2D
    x = w.activation("x", (1, 1, 1, 1) if conv else (1, 1), s_in, _PROBE_ZERO_POINT)
    wshape = (n, 1, 1, 1) if conv else (n, 1)
    channels = n if conv else 1
    wt = w.add_tensor(
        "w",
        wshape,
        fb.TensorType.INT8,
        quantization([s_w] * channels, [0] * channels),
        np.ones(wshape, np.int8),
    )
    bias_scale = float(np.float32(np.float64(np.float32(s_in)) * np.float64(np.float32(s_w))))
    bq = quantization([bias_scale] * channels, [0] * channels)
    b = w.add_tensor("b", (n,), fb.TensorType.INT32, bq, np.asarray(biases, np.int32))
    out_shape = (1, 1, 1, n) if conv else (1, n)
    options = conv_options(1) if conv else fc_options(AF.NONE)
    y = w.qop(opcode, [x, wt, b], "y", out_shape, s_out, 0, options)
    return w.finish([x], [y], "requant_probe")


def _run_probe(model: bytes) -> np.ndarray:
    graph = qr.read_graph(model)
    x = np.full(graph.tensors[graph.inputs[0]].shape, _PROBE_ZERO_POINT, np.int8)
    return _invoke(runtime.Interpreter.from_bytes(model), [x]).ravel()


def _disagreements(a: np.ndarray, b: np.ndarray, accs: np.ndarray, count: int = 16) -> np.ndarray:
    """Up to ``count`` accumulators where requantisations ``a`` and ``b`` differ and stay within int8."""
    pick = np.flatnonzero((a != b) & (np.abs(a) < 120) & (np.abs(b) < 120))
    assert pick.size > 0
    return accs[pick[np.linspace(0, pick.size - 1, min(count, pick.size)).astype(int)]]


_ACCS = np.arange(-(2**20), 2**20)


def test_tflm_requantises_with_double_rounding() -> None:
    m, shift = qr.fully_connected_multiplier(*_PROBE_SCALES)
    double = qr.multiply_by_quantized_multiplier(_ACCS, m, shift)
    single = qr.multiply_by_quantized_multiplier_single_rounding(_ACCS, m, shift)
    accs = _disagreements(double, single, _ACCS)
    tflm = _run_probe(_probe(BO.FULLY_CONNECTED, accs, _PROBE_SCALES))
    np.testing.assert_array_equal(tflm, qr.multiply_by_quantized_multiplier(accs, m, shift))
    assert (tflm != qr.multiply_by_quantized_multiplier_single_rounding(accs, m, shift)).all()


@pytest.mark.parametrize("opcode", [BO.FULLY_CONNECTED, BO.CONV_2D], ids=["fully_connected", "conv_2d"])
def test_multiplier_takes_the_scale_product_in_double(opcode: int) -> None:
    """``s_in * s_w / s_out`` is computed in double (not with a float32 ``s_in * s_w``) for FC and conv."""
    s_in, s_w, s_out = (float(np.float32(s)) for s in _PROBE_SCALES)
    as_double = qr.quantize_multiplier(s_in * s_w / s_out)
    as_float32 = qr.quantize_multiplier(float(np.float32(s_in) * np.float32(s_w)) / s_out)
    assert as_double != as_float32
    assert qr.fully_connected_multiplier(s_in, s_w, s_out) == as_double
    by_double = qr.multiply_by_quantized_multiplier(_ACCS, *as_double)
    by_float32 = qr.multiply_by_quantized_multiplier(_ACCS, *as_float32)
    accs = _disagreements(by_double, by_float32, _ACCS)
    model = _probe(opcode, accs, _PROBE_SCALES)
    tflm = _run_probe(model)
    np.testing.assert_array_equal(tflm, qr.multiply_by_quantized_multiplier(accs, *as_double))
    assert (tflm != qr.multiply_by_quantized_multiplier(accs, *as_float32)).all()
    graph = qr.read_graph(model)
    x = np.full(graph.tensors[graph.inputs[0]].shape, _PROBE_ZERO_POINT, np.int8)
    np.testing.assert_array_equal(qr.apply_operator(graph.operators[0], [x]).ravel(), tflm)


def test_mean_is_not_an_exactly_rounded_average() -> None:
    """MEAN folds 1/count into an un-normalised multiplier: the reference reproduces TFLM's off-by-one results
    where a correctly rounded mean differs (inputs sweep every sum of a 6x5 plane)."""
    model = TFLITE_INT8_MODELS["mean_hw"]()
    graph = qr.read_graph(model)
    (op,) = graph.operators
    n = 30
    sums = np.arange(-128 * n, 127 * n + 1, 7)
    sums = np.pad(sums, (0, -len(sums) % 8))
    base, rem = np.divmod(sums, n)
    planes = base[:, None] + (np.arange(n)[None, :] < rem[:, None])  # rows sum to `sums`
    x = planes.reshape(-1, 8, 6, 5).transpose(0, 2, 3, 1).astype(np.int8)
    interpreter = runtime.Interpreter.from_bytes(model)
    tflm = np.concatenate([_invoke(interpreter, [xi[None]]) for xi in x]).ravel()
    reference = np.concatenate([qr.apply_operator(op, [xi[None]]) for xi in x]).ravel()
    np.testing.assert_array_equal(reference, tflm)
    (s_in, z_in), (s_out, z_out) = ((t.scale, t.zero_point) for t in (op.inputs[0], op.outputs[0]))
    exact = (sums - z_in * n).astype(np.float64) * s_in / (s_out * n)
    rounded = np.clip(np.sign(exact) * np.floor(np.abs(exact) + 0.5) + z_out, -128, 127)
    assert (rounded != tflm).sum() > 10
