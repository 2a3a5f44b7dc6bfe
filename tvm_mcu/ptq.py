"""Post-training static quantisation: a float ONNX model plus calibration data -> a standard QDQ ONNX model.

The float model is run sample by sample in ``onnx.reference.ReferenceEvaluator`` (every intermediate
tensor made a graph output on a copy) to find the range of every activation; then a QDQ model is written
with the conventions of TFLite's int8 scheme and onnxruntime's QDQ format:

- weights (Conv: axis 0 of OIHW; Gemm: axis 0 when ``transB=1``, else 1; MatMul with a constant B: axis 1)
  are int8 initializers, symmetric per output channel (zero point 0, scale ``max|w| / 127``), each
  followed by a ``DequantizeLinear`` with ``axis``; ``per_channel=False`` gives one scale per tensor;
- biases are int32 initializers with scale ``s_input * s_weight[c]`` and zero point 0, then
  ``DequantizeLinear`` (axis 0);
- activations are int8, asymmetric per tensor: the calibrated range is widened to include 0, scale
  ``(max - min) / 255``, zero point ``round(-128 - min / scale)``; every activation a quantised op reads
  gets a ``QuantizeLinear -> DequantizeLinear`` pair, the graph inputs included (they stay float: the first
  node is a ``QuantizeLinear``) and so do the graph outputs (the model's outputs stay float and keep their
  names);
- Conv/Gemm/MatMul followed by Relu or Clip(0, 6) are fused: one Q/DQ pair after the activation, whose
  calibrated range sets the scale;
- MaxPool, Reshape, Flatten, Transpose, Squeeze and Unsqueeze reuse their input's scale and zero point
  (the very same initializers); AveragePool, GlobalAveragePool, a standalone Relu or Clip, Add and Concat
  get their own calibrated output range (each input of Add/Concat is the DQ of its own quantised tensor);
  Softmax output has the fixed scale 1/256 and zero point -128 (TFLite's convention);
- any other op stays float (DQ before it, Q after it where a quantised op reads its result) and is named in
  the result's notes. A model with no quantisable op is refused.

BatchNormalization that follows a Conv is folded into the Conv's weights and bias first (the quantised
model has none); one that cannot be folded stays float. The output has opset ``max(19, model's)``: per-axis
DequantizeLinear needs 13, but ``onnx.reference`` (onnx 1.23) implements DequantizeLinear from version 19
only, so older models are converted with ``onnx.version_converter`` first (which also avoids its
BatchNormalization-9 training-mode bug). The output passes ``onnx.checker.check_model(full_check=True)``,
runs in ``onnx.reference.ReferenceEvaluator`` and is byte-identical for the same inputs.

Calibration data is an ``.npz`` file (or a dict) holding one array per model input, keyed by the input
name or saved positionally (``arr_0``, ``arr_1``... in input order), each with a leading sample axis: shape
``(N, *input_shape[1:])`` or ``(N, *input_shape)`` (batch 1). At most ``max_samples`` samples are used.

The demo's ``tvm_mcu/data/demo/calibration.npz`` holds the first 200 images of the Fashion-MNIST *training*
set (``train-images-idx3-ubyte.gz``), normalised as the demo model expects,
``x = (pixel / 255 - 0.2860) / 0.3530`` in float32, under the key ``input`` with shape ``(200, 1, 28, 28)``
(the model input ``(1, 1, 28, 28)`` without its batch axis), saved with ``np.savez``.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_mcu import __version__
from tvm_mcu.errors import BadOptionError, ModelError, UnsupportedOpError

logger = logging.getLogger(__name__)

# Per-axis DequantizeLinear exists from opset 13, but onnx.reference implements it only from version 19
# ("No implementation for operator 'DequantizeLinear' ... version 13, found 19, 21, 23, 25"), and the
# quantised model must run in the reference: older models are converted to 19 (TVM imports Q/DQ-19).
MIN_QDQ_OPSET = 19
# onnx.reference runs BatchNormalization-9 (opsets 9 to 13) in training mode; 14 and later are correct.
BATCHNORM_FIXED_OPSET = 15
WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127], as TFLite and onnxruntime do
INT32_MAX = 2**31 - 1
SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256.0, -128
_DEFAULT_DOMAINS = ("", "ai.onnx")

# Roles of an op in the quantised graph.
WEIGHTED = "weighted"  # int8 weights per channel, int32 bias, own output range (or the fused activation's)
SAME_SCALE = "same scale"  # output reuses the input's scale and zero point
OWN_RANGE = "own range"  # output gets its own calibrated range
FIXED = "fixed"  # output scale fixed by the op (Softmax)
FUSED = "fused activation"  # Relu/Clip folded into the preceding weighted op
FLOAT = "float"


@attrs.frozen
class TensorQuant:
    """How one tensor of the quantised model is quantised (one scale per tensor, or per channel on axis)."""

    name: str
    kind: str  # "activation", "weight", "bias" or "constant"
    dtype: str  # "int8" or "int32"
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    rule: str = ""
    calibrated_range: tuple[float, float] | None = None


@attrs.frozen
class QuantizeResult:
    """What :func:`quantize_onnx` wrote: the file, the calibration size, the quantised tensors and notes.

    ``quantized_ops`` counts the nodes of the float model that run in int8, fused activations included.
    """

    out_path: Path
    n_calibration_samples: int
    quantized_ops: int
    tensors: tuple[TensorQuant, ...]
    notes: tuple[str, ...] = ()

    def tensor(self, name: str) -> TensorQuant:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def quantize_onnx(
    model_path: Path,
    calibration: Path | Mapping[str, np.ndarray],
    out_path: Path,
    *,
    per_channel: bool = True,
    max_samples: int = 256,
) -> QuantizeResult:
    """Quantise the float ONNX model at ``model_path`` with ``calibration`` data into QDQ at ``out_path``.

    Raises :class:`BadOptionError` for unusable calibration data or options, :class:`ModelError` for a
    model that cannot be read or run, :class:`UnsupportedOpError` when no op can be quantised.
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise BadOptionError(f"max_samples must be a positive integer, got {max_samples!r}")
    if not isinstance(per_channel, bool):
        raise BadOptionError(f"per_channel must be True or False, got {per_channel!r}")
    notes: list[str] = []
    model = _prepare(_load(Path(model_path)), notes)
    feeds = _calibration_feeds(calibration, model, max_samples, notes)
    ranges, dtypes = _calibrate(model, feeds)
    graph = _Graph.of(model, dtypes)
    roles = _plan(graph, notes)
    if not any(role != FLOAT for role, _ in roles):
        ops = sorted({n.op_type for n in graph.nodes})
        raise UnsupportedOpError(
            f"{model_path} has no operator that can be quantised (it has {', '.join(ops)}); "
            f"quantisable operators are {', '.join(sorted(_RULES))}"
        )
    qmodel, tensors = _write_qdq(model, graph, roles, ranges, per_channel=per_channel)
    onnx.checker.check_model(qmodel, full_check=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(qmodel.SerializeToString(deterministic=True))
    n_quantized = sum(role != FLOAT for role, _ in roles)
    logger.info("quantised %d of %d ops of %s into %s", n_quantized, len(roles), model_path, out_path)
    return QuantizeResult(out_path, len(feeds), n_quantized, tensors, tuple(notes))


def evaluate_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX model at ``model_path`` on samples ``x`` (leading axis) with labels ``y``.

    The model runs sample by sample in ``onnx.reference.ReferenceEvaluator``; its first output is the
    class scores.
    """
    from onnx.reference import ReferenceEvaluator

    model = _load(Path(model_path))
    specs = _input_specs(model)
    if len(specs) != 1:
        raise BadOptionError(f"evaluate_accuracy needs a model with one input; {model_path} has {len(specs)}")
    samples = _samples(specs[0], np.asarray(x), "the samples")
    y = np.asarray(y)
    if y.shape != (len(samples),) or not np.issubdtype(y.dtype, np.integer):
        raise BadOptionError(
            f"the labels must be integers of shape ({len(samples)},) to match the samples; "
            f"got {y.dtype} {y.shape}"
        )
    if opset_of(model) < 14 and any(n.op_type == "BatchNormalization" for n in model.graph.node):
        model = _convert(model, BATCHNORM_FIXED_OPSET)
    evaluator = ReferenceEvaluator(model)
    correct = 0
    for sample, label in zip(samples, y, strict=True):
        outputs = evaluator.run(None, {specs[0].name: sample})
        assert isinstance(outputs, list)  # run(None, ...) returns the outputs as a list
        scores = np.asarray(outputs[0])
        correct += int(int(np.argmax(scores.reshape(-1))) == int(label))
    return correct / len(samples) if samples else 0.0


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


# ------------------------------------------------------------------------------------------- loading
def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        model = onnx.load_from_string(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError and friends for a corrupt file
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (its graph has no nodes)")
    if not opset_of(model):
        raise ModelError(f"{path} declares no default-domain opset")
    return model


def _convert(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        out = version_converter.convert_version(model, opset)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(
            f"onnx.version_converter could not convert the model from opset {opset_of(model)} to {opset} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})"
        ) from exc
    out.ir_version = max(out.ir_version, helper.find_min_ir_version_for(list(out.opset_import)))
    return out


# ------------------------------------------------------------------------------------------- rewrites
def _prepare(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """The float model as calibrated and quantised: opset >= 19, constants as initializers, BN folded."""
    opset = opset_of(model)
    if opset < MIN_QDQ_OPSET:
        model = _convert(model, MIN_QDQ_OPSET)
        notes.append(
            f"converted from ONNX opset {opset} to {MIN_QDQ_OPSET} (onnx.reference runs DequantizeLinear "
            f"from version {MIN_QDQ_OPSET})"
        )
    return _fold_batchnorm(_constants_to_initializers(model), notes)


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes holding a tensor become initializers, so weights given that way are found."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    outputs = {o.name for o in out.graph.output}
    keep = []
    for node in out.graph.node:
        attr = node.attribute
        if (
            node.op_type == "Constant"
            and node.domain in _DEFAULT_DOMAINS
            and len(attr) == 1
            and attr[0].name == "value"
            and node.output[0] not in outputs
        ):
            tensor = TensorProto()
            tensor.CopyFrom(attr[0].t)
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _fold_batchnorm(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Conv -> BatchNormalization (inference, constant statistics) becomes one Conv with the BN folded in.

    ``w' = w * k``, ``b' = (b - mean) * k + beta`` with ``k = gamma / sqrt(var + eps)`` per output channel,
    computed in float64 and stored as float32 (the float model's outputs change by float32 rounding only).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers = _consumer_counts(g)
    producers = {o: node for node in g.node for o in node.output}
    graph_outputs = {o.name for o in g.output}
    names = _all_names(g)
    drop: set[int] = set()
    folded = 0
    for i, bn in enumerate(g.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in _DEFAULT_DOMAINS:
            continue
        conv = producers.get(bn.input[0])
        params = [inits.get(name) for name in bn.input[1:5]]
        if (
            conv is None
            or conv.op_type != "Conv"
            or consumers.get(bn.input[0], 0) != 1
            or bn.input[0] in graph_outputs
            or _attr(bn, "training_mode", 0)
            or any(o for o in bn.output[1:])
            or any(p is None for p in params)
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
        ):
            continue
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        k = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
        w = inits[conv.input[1]].astype(np.float64)
        b = inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
        w_name = _fresh(names, f"{conv.input[1]}_bn_folded")
        b_name = _fresh(names, f"{bn.output[0]}_bias_bn_folded")
        g.initializer.extend(
            [
                numpy_helper.from_array(
                    (w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32), w_name
                ),
                numpy_helper.from_array(((b - mean) * k + beta).astype(np.float32), b_name),
            ]
        )
        x_name = conv.input[0]
        del conv.input[:]
        conv.input.extend([x_name, w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.add(i)
        folded += 1
    if folded:
        kept = [n for i, n in enumerate(g.node) if i not in drop]
        del g.node[:]
        g.node.extend(kept)
        notes.append(f"folded {folded} BatchNormalization node(s) into the preceding Conv")
    return _drop_unused_initializers(out)


def _drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove initializers no node reads (in place: only called on copies this module made)."""
    used = _used_names(model.graph) | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    if len(kept) == len(model.graph.initializer):
        return model
    unused = {t.name for t in model.graph.initializer} - used
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    inputs = [vi for vi in model.graph.input if vi.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node, subgraphs (If/Loop/Scan bodies) included."""
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                used |= _used_names(sub) | {o.name for o in sub.output}
    return used


def _consumer_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in (i for node in graph.node for i in node.input if i):
        counts[name] = counts.get(name, 0) + 1
    return counts


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in [*graph.input, *graph.output]} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _fresh(names: set[str], base: str) -> str:
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    names.add(name)
    return name


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ------------------------------------------------------------------------------------------- calibration
@attrs.frozen
class _InputSpec:
    name: str
    shape: tuple[int | None, ...]  # None: a dynamic dimension (the batch dimension is always 1)
    dtype: np.dtype[Any]


def _input_specs(model: onnx.ModelProto) -> list[_InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type == TensorProto.UNDEFINED:
            raise ModelError(f"model input '{vi.name}' is not a tensor with a known element type")
        dims: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if dims:
            dims[0] = 1  # microcontrollers run one sample at a time
        specs.append(
            _InputSpec(vi.name, tuple(dims), np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))
        )
    return specs


def _load_arrays(calibration: Path | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(calibration, Mapping):
        return {str(k): np.asarray(v) for k, v in calibration.items()}
    path = Path(calibration)
    if not path.is_file():
        raise BadOptionError(f"calibration file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise BadOptionError(
                f"calibration file {path} is a single .npy array, not an .npz archive; save it with "
                "np.savez(path, input_name=x)"
            )
        with data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise BadOptionError(
            f"calibration file {path} is not a readable .npz archive ({type(exc).__name__}: {exc}); "
            "save the samples with np.savez(path, input_name=x)"
        ) from exc


def _calibration_feeds(
    calibration: Path | Mapping[str, np.ndarray], model: onnx.ModelProto, max_samples: int, notes: list[str]
) -> list[dict[str, np.ndarray]]:
    """One feed dict per calibration sample, each input shaped as the model takes it (batch 1)."""
    arrays = _load_arrays(calibration)
    specs = _input_specs(model)
    names = [s.name for s in specs]
    positional = [f"arr_{k}" for k in range(len(specs))]
    if all(n in arrays for n in names):
        keys = names
        extra = sorted(set(arrays) - set(names))
        if extra:
            notes.append(f"calibration arrays {extra} are not model inputs and were ignored")
    elif sorted(arrays) == sorted(positional):
        keys = positional
    else:
        missing = [n for n in names if n not in arrays]
        raise BadOptionError(
            f"the calibration data has arrays {sorted(arrays)} but the model's inputs are {names} "
            f"(missing {missing}); key each array by its input name, e.g. np.savez(path, {names[0]}=x), "
            "or save one array per input in input order"
        )
    per_input = [
        _samples(spec, arrays[key], f"calibration array '{key}'")
        for spec, key in zip(specs, keys, strict=True)
    ]
    counts = {len(s) for s in per_input}
    if len(counts) != 1:
        raise BadOptionError(
            f"calibration arrays have different sample counts {[len(s) for s in per_input]}; "
            "give every input the same number of samples"
        )
    n = counts.pop()
    if n == 0:
        raise BadOptionError("the calibration data has no samples (its leading axis has length 0)")
    if n > max_samples:
        notes.append(f"calibrated on the first {max_samples} of {n} samples")
    return [
        {name: s[i] for name, s in zip(names, per_input, strict=True)} for i in range(min(n, max_samples))
    ]


def _samples(spec: _InputSpec, array: np.ndarray, label: str) -> list[np.ndarray]:
    """The samples of ``array`` (leading sample axis) for the input ``spec``, each with batch 1."""
    array = np.asarray(array)

    def fits(shape: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
        return len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want, strict=True))

    if array.ndim >= 1 and fits(array.shape[1:], spec.shape[1:]):
        samples = [a[None] for a in array]
    elif array.ndim >= 1 and fits(array.shape[1:], spec.shape):
        samples = list(array)
    else:
        want = ", ".join(str(d) if d is not None else "?" for d in spec.shape[1:])
        raise BadOptionError(
            f"{label} for input '{spec.name}' has shape {tuple(array.shape)}; expected "
            f"(N, {want}) or (N, 1, {want}) with the samples on the leading axis"
        )
    if np.issubdtype(spec.dtype, np.floating):
        if not np.issubdtype(array.dtype, np.floating):
            raise BadOptionError(
                f"{label} is {array.dtype} but input '{spec.name}' is {spec.dtype}; "
                "give the samples exactly as the model takes them (normalised floats)"
            )
        if not np.all(np.isfinite(array)):
            raise BadOptionError(f"{label} contains NaN or infinite values")
    elif array.dtype.kind != spec.dtype.kind:
        raise BadOptionError(f"{label} is {array.dtype} but input '{spec.name}' is {spec.dtype}")
    return [np.ascontiguousarray(s, dtype=spec.dtype) for s in samples]


def _calibrate(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, tuple[float, float]], dict[str, np.dtype[Any]]]:
    """Min/max of every float tensor over the samples, and the dtype of every tensor."""
    from onnx.reference import ReferenceEvaluator

    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    outputs = {o.name for o in observed.graph.output}
    for node in observed.graph.node:
        for name in node.output:
            if name and name not in outputs:
                observed.graph.output.append(onnx.ValueInfoProto(name=name))
                outputs.add(name)
    names = [o.name for o in observed.graph.output]
    try:
        evaluator = ReferenceEvaluator(observed)
    except Exception as exc:  # onnx.reference raises several types for ops it lacks
        raise ModelError(f"onnx.reference cannot run the model ({type(exc).__name__}: {exc})") from exc
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    dtypes: dict[str, np.dtype[Any]] = {}
    for feed in feeds:
        try:
            results = evaluator.run(None, feed)
        except Exception as exc:  # onnx.reference raises several types for bad shapes or ops
            raise ModelError(
                f"onnx.reference failed on a calibration sample ({type(exc).__name__}: {exc})"
            ) from exc
        for name, value in [*feed.items(), *zip(names, results, strict=True)]:
            value = np.asarray(value)
            dtypes[name] = value.dtype
            if value.dtype != np.float32 or value.size == 0:
                continue
            if not np.all(np.isfinite(value)):
                raise ModelError(f"tensor '{name}' is NaN or infinite on a calibration sample")
            lo[name] = min(lo.get(name, np.inf), float(value.min()))
            hi[name] = max(hi.get(name, -np.inf), float(value.max()))
    for t in model.graph.initializer:
        dtypes[t.name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    return {name: (lo[name], hi[name]) for name in lo}, dtypes


# ------------------------------------------------------------------------------------------- plan
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
    "Concat": _OpRule(OWN_RANGE, None),
    "Softmax": _OpRule(FIXED, (0,)),
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
def activation_params(lo: float, hi: float) -> tuple[np.float32, int]:
    """Asymmetric int8 (scale, zero point) covering ``[lo, hi]`` widened to include 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return np.float32(1.0), 0  # an all-zero tensor: any scale represents it exactly
    scale = np.float32(max((hi - lo) / 255.0, float(np.finfo(np.float32).tiny)))
    zero_point = int(np.clip(np.round(-128.0 - lo / float(scale)), -128, 127))
    return scale, zero_point


def weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales ``max|w| / 127`` per slice along ``axis`` (one scale when ``axis`` is None).

    An all-zero channel gets scale 1/127: any scale represents it, and this one keeps its bias scale sane.
    """
    a = np.abs(w.astype(np.float64))
    amax = a.max() if axis is None else a.max(axis=tuple(k for k in range(w.ndim) if k != axis))
    return (np.where(amax > 0, amax, 1.0) / WEIGHT_QMAX).astype(np.float32)


def _broadcast(scale: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or scale.ndim == 0:
        return scale.astype(np.float64)
    shape = [1] * ndim
    shape[axis] = -1
    return scale.astype(np.float64).reshape(shape)


# ------------------------------------------------------------------------------------------- writing
@attrs.frozen
class _Act:
    scale: np.float32
    zero_point: int
    scale_name: str
    zero_point_name: str


class _Writer:
    """Collects the nodes and initializers of the QDQ graph, naming new tensors uniquely and in order."""

    def __init__(self, names: set[str], ranges: Mapping[str, tuple[float, float]]) -> None:
        self.names = names
        self.ranges = ranges
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.tensors: list[TensorQuant] = []
        self.acts: dict[str, _Act] = {}  # quantised activation -> its parameters
        self.read: dict[str, str] = {}  # quantised activation -> the DQ output its consumers read

    def init(self, base: str, value: np.ndarray) -> str:
        name = _fresh(self.names, base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, base: str, **kwargs: Any) -> None:
        self.nodes.append(helper.make_node(op, inputs, [output], name=_fresh(self.names, base), **kwargs))

    def dequantized(
        self, base: str, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None
    ) -> str:
        """``q`` stored as an initializer, followed by the DequantizeLinear that gives it back as float."""
        inputs = [self.init(f"{base}_quantized", q), self.init(f"{base}_scale", scale)]
        inputs.append(self.init(f"{base}_zero_point", zero_point))
        out = _fresh(self.names, f"{base}_DequantizeLinear_Output")
        kwargs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        self.node("DequantizeLinear", inputs, out, f"{base}_DequantizeLinear", **kwargs)
        return out

    def params(self, name: str, scale: np.float32, zero_point: int) -> _Act:
        return _Act(
            scale,
            zero_point,
            self.init(f"{name}_scale", np.array(scale, np.float32)),
            self.init(f"{name}_zero_point", np.array(zero_point, np.int8)),
        )

    def activation(self, name: str, source: str, params: _Act | None, rule: str) -> None:
        """Q -> DQ on activation ``name`` written as ``source``; calibrated parameters unless given."""
        if params is None:
            params = self.params(name, *activation_params(*self.ranges[name]))
        self.acts[name] = params
        q = _fresh(self.names, f"{name}_QuantizeLinear_Output")
        # A graph output keeps its name on the DQ output; its producer then writes ``source``.
        dq = name if source != name else _fresh(self.names, f"{name}_DequantizeLinear_Output")
        qparams = [params.scale_name, params.zero_point_name]
        self.node("QuantizeLinear", [source, *qparams], q, f"{name}_QuantizeLinear")
        self.node("DequantizeLinear", [q, *qparams], dq, f"{name}_DequantizeLinear")
        self.read[name] = dq
        scale, zp = (float(params.scale),), (params.zero_point,)
        self.tensors.append(
            TensorQuant(name, "activation", "int8", scale, zp, None, rule, self.ranges.get(name))
        )


def _qdq_tensors(g: _Graph, roles: list[tuple[str, str]]) -> set[str]:
    """Activations that get a Q -> DQ pair: every one a quantised op reads, every one it writes, except the
    output of a weighted op that its fused activation consumes."""
    fused_away = {reason for role, reason in roles if role == FUSED}
    qset: set[str] = set()
    for node, (role, _) in zip(g.nodes, roles, strict=True):
        if role == FLOAT:
            continue
        if role != FUSED:
            qset.update(n for n in _activations(node, _RULES[node.op_type]) if n not in g.inits)
        qset.update(o for o in node.output if o and o not in fused_away)
    return qset


def _write_qdq(
    model: onnx.ModelProto,
    g: _Graph,
    roles: list[tuple[str, str]],
    ranges: Mapping[str, tuple[float, float]],
    *,
    per_channel: bool,
) -> tuple[onnx.ModelProto, tuple[TensorQuant, ...]]:
    """The QDQ model, nodes in the float model's order: each op preceded by its weight DQs, followed by
    the Q/DQ pairs of its outputs; the graph inputs' pairs come first."""
    w = _Writer(_all_names(model.graph), ranges)
    qset = _qdq_tensors(g, roles)
    for vi in model.graph.input:
        if vi.name in qset:
            w.activation(vi.name, vi.name, None, "calibrated")
    for node, (role, reason) in zip(g.nodes, roles, strict=True):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(w.read.get(n, n) for n in node.input)
        if role == WEIGHTED:
            _quantize_weights(new, node, g, w, w.acts[node.input[0]].scale, per_channel)
        elif role == OWN_RANGE:
            for k, name in enumerate(node.input):
                if name in g.inits and name in _activations(node, _RULES[node.op_type]):
                    new.input[k] = _quantize_constant(name, g.inits[name], w)
        for k, o in enumerate(node.output):
            if o in qset and o in g.outputs:
                new.output[k] = _fresh(w.names, f"{o}_QuantizeLinear_Input")
        w.nodes.append(new)
        for o, src in zip(node.output, new.output, strict=True):
            if o not in qset:
                continue
            if role == SAME_SCALE:
                w.activation(o, src, w.acts[node.input[0]], f"same as '{node.input[0]}'")
            elif role == FIXED:
                params = w.params(o, np.float32(SOFTMAX_SCALE), SOFTMAX_ZERO_POINT)
                w.activation(o, src, params, f"fixed by {node.op_type} (1/256, -128)")
            elif role == FUSED:
                w.activation(o, src, None, f"calibrated, {node.op_type} fused with the op writing '{reason}'")
            else:
                w.activation(o, src, None, "calibrated")
    return _assemble(model, w), tuple(w.tensors)


def _quantize_weights(
    new: onnx.NodeProto, node: onnx.NodeProto, g: _Graph, w: _Writer, s_in: np.float32, per_channel: bool
) -> None:
    """Replace the weight (and bias) inputs of ``new`` by int8 (int32) initializers and their DQ nodes."""
    weight = g.inits[node.input[1]].astype(np.float64)
    bias = g.const(node, 2)
    if node.op_type == "Gemm":
        transb = bool(_attr(node, "transB", 0))
        axis = 0 if transb else 1
        weight = weight * float(_attr(node, "alpha", 1.0))
        n = weight.shape[axis]
        if bias is not None:
            bias = np.broadcast_to(bias.reshape(-1) * float(_attr(node, "beta", 1.0)), (n,))
        kept = [a for a in new.attribute if a.name not in ("alpha", "beta")]
        del new.attribute[:]
        new.attribute.extend(kept)
    else:
        axis = 1 if node.op_type == "MatMul" else 0
    scale = weight_scales(weight, axis if per_channel else None)
    if bias is not None:
        # Grow a weight scale when its bias would not fit int32 (w * s_in tiny, bias large).
        need = np.abs(bias.astype(np.float64)) / (float(s_in) * INT32_MAX)
        scale = np.maximum(scale, (need if per_channel else need.max()).astype(np.float32))
    q_axis = axis if per_channel else None
    q = np.clip(np.rint(weight / _broadcast(scale, weight.ndim, q_axis)), -WEIGHT_QMAX, WEIGHT_QMAX)
    zeros = np.zeros(scale.shape, np.int8)
    name = node.input[1]
    new.input[1] = w.dequantized(name, q.astype(np.int8), scale, zeros, q_axis)
    w.tensors.append(
        TensorQuant(
            name,
            "weight",
            "int8",
            tuple(map(float, scale.reshape(-1))),
            tuple(map(int, zeros.reshape(-1))),
            q_axis,
            "symmetric, max|w| / 127" + (" per channel" if per_channel else " per tensor"),
        )
    )
    if bias is None:
        return
    b_scale = (float(s_in) * scale.astype(np.float64)).astype(np.float32)
    qb = np.clip(np.rint(bias.astype(np.float64) / b_scale.astype(np.float64)), -INT32_MAX - 1, INT32_MAX)
    b_name = node.input[2]
    b_zeros = np.zeros(b_scale.shape, np.int32)
    b_axis = 0 if per_channel else None
    new.input[2] = w.dequantized(b_name, qb.astype(np.int32), b_scale, b_zeros, b_axis)
    w.tensors.append(
        TensorQuant(
            b_name,
            "bias",
            "int32",
            tuple(map(float, b_scale.reshape(-1))),
            tuple(map(int, b_zeros.reshape(-1))),
            b_axis,
            "s_input * s_weight",
        )
    )


def _quantize_constant(name: str, value: np.ndarray, w: _Writer) -> str:
    """A constant input of Add/Concat: asymmetric int8 over its own value range, then DQ."""
    scale, zp = (
        activation_params(float(value.min()), float(value.max())) if value.size else (np.float32(1), 0)
    )
    q = np.clip(np.rint(value.astype(np.float64) / float(scale)) + zp, -128, 127).astype(np.int8)
    out = w.dequantized(name, q, np.array(scale, np.float32), np.array(zp, np.int8), None)
    w.tensors.append(TensorQuant(name, "constant", "int8", (float(scale),), (zp,), None, "value range"))
    return out


def _assemble(model: onnx.ModelProto, w: _Writer) -> onnx.ModelProto:
    """The QDQ model: the float model's interface and metadata around the new nodes."""
    graph = helper.make_graph(
        w.nodes,
        model.graph.name,
        list(model.graph.input),
        list(model.graph.output),
        initializer=[*model.graph.initializer, *w.inits],
        doc_string=model.graph.doc_string,
    )
    opsets = [
        helper.make_opsetid(
            o.domain, max(o.version, MIN_QDQ_OPSET) if o.domain in _DEFAULT_DOMAINS else o.version
        )
        for o in model.opset_import
    ]
    out = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="tvm-mcu",
        producer_version=__version__,
        doc_string=model.doc_string,
    )
    out.ir_version = max(model.ir_version, helper.find_min_ir_version_for(opsets))
    out.model_version = model.model_version
    out.metadata_props.extend(model.metadata_props)
    out.metadata_props.append(
        onnx.StringStringEntryProto(key="tvm_mcu.quantization", value="int8 QDQ, post-training static")
    )
    return _drop_unused_initializers(out)
