"""Calibration: reading the calibration data and running the float model to find every activation's range."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper

from tvm_mcu.errors import BadOptionError, ModelError

logger = logging.getLogger(__name__)


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
    """Min/max of every float tensor over the samples, and the dtype of every tensor.

    The model runs in onnxruntime (graph optimisations off, so every tensor keeps its name), or in
    ``onnx.reference`` where onnxruntime cannot run it: each is wrong or missing somewhere (see
    ``tvm_mcu.reference``).
    """
    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    outputs = {o.name for o in observed.graph.output}
    for node in observed.graph.node:
        for name in node.output:
            if name and name not in outputs:
                observed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                outputs.add(name)
    names = [o.name for o in observed.graph.output]
    run = _runner(observed)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    dtypes: dict[str, np.dtype[Any]] = {}
    for feed in feeds:
        results = run(feed)
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


def _runner(observed: onnx.ModelProto) -> Any:
    """``feed -> every output`` by onnxruntime, or by onnx.reference when onnxruntime cannot load it."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            observed.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as first:  # onnxruntime lacks a kernel: onnx.reference may have it
        try:
            evaluator = ReferenceEvaluator(observed)
        except Exception as exc:  # noqa: BLE001 -- both interpreters' failures are reported together
            raise ModelError(
                f"neither onnxruntime ({type(first).__name__}: {str(first).splitlines()[0]}) nor "
                f"onnx.reference ({type(exc).__name__}: {exc}) can run the model"
            ) from exc

        def reference(feed: dict[str, np.ndarray]) -> list[Any]:
            try:
                return list(evaluator.run(None, feed))
            except Exception as exc:  # onnx.reference raises several types for bad shapes or ops
                raise ModelError(
                    f"onnx.reference failed on a calibration sample ({type(exc).__name__}: {exc})"
                ) from exc

        return reference

    def runtime(feed: dict[str, np.ndarray]) -> list[Any]:
        try:
            return list(session.run(None, feed))
        except Exception as exc:  # onnxruntime raises its own types for bad inputs
            raise ModelError(
                f"onnxruntime failed on a calibration sample ({type(exc).__name__}: {exc})"
            ) from exc

    return runtime


# ------------------------------------------------------------------------------------------- plan
